//! The node cache: per upstream, a ring of the last `period` bars, timestamps bucketed to the
//! interval, gaps noticed, ready when every ring is full. Compute functions see it read-only.

use metrics::{Counter, Gauge};
use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::strategy::NodeRef;
use crate::value::Value;

/// The start of the interval bucket `timestamp` falls in (seconds; interval 0 keeps it as is).
pub fn bucket(timestamp: i64, interval: i64) -> i64 {
    if interval > 0 {
        timestamp - timestamp.rem_euclid(interval)
    } else {
        timestamp
    }
}

/// What happened to a value offered to a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Append {
    /// A new bucket after the last one.
    Appended,
    /// A new bucket that leaves one or more buckets empty before it.
    AppendedAfterGap,
    /// The same bucket as the last one: the newer value replaces it.
    Replaced,
    /// Older than the last bucket: dropped.
    OutOfOrder,
}

/// Turns `Instant`s into unix seconds without a system call per read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    base: Instant,
    base_unix: f64,
}

impl WallClock {
    pub(crate) fn new() -> WallClock {
        WallClock {
            base: Instant::now(),
            base_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }
    }

    pub(crate) fn unix(&self, at: Instant) -> f64 {
        self.base_unix + at.saturating_duration_since(self.base).as_secs_f64()
    }
}

/// Metric handles of one upstream ring.
#[derive(Debug, Clone)]
pub(crate) struct SlotMetrics {
    pub(crate) reads: Counter,
    pub(crate) last_read: Gauge,
}

/// One upstream's ring.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The upstream node in this strategy, when it is one (a tag query's upstreams are queues).
    pub(crate) upstream: Option<NodeRef>,
    /// The upstream's node id or queue name.
    pub(crate) label: String,
    interval: i64,
    entries: VecDeque<(i64, Value)>,
    bytes: usize,
    metrics: SlotMetrics,
}

/// Every ring of one node.
#[derive(Debug)]
pub(crate) struct NodeCache {
    period: usize,
    slots: Vec<Slot>,
    bytes: usize,
}

impl NodeCache {
    pub(crate) fn new(period: usize) -> NodeCache {
        NodeCache {
            period: period.max(1),
            slots: Vec::new(),
            bytes: 0,
        }
    }

    pub(crate) fn add_slot(
        &mut self,
        upstream: Option<NodeRef>,
        label: String,
        interval: i64,
        metrics: SlotMetrics,
    ) -> usize {
        self.slots.push(Slot {
            upstream,
            label,
            interval,
            // Grown as bars arrive: a window that never fills costs only what it holds.
            entries: VecDeque::new(),
            bytes: 0,
            metrics,
        });
        self.slots.len() - 1
    }

    /// Offers a value to one ring.
    pub(crate) fn append(&mut self, slot: usize, timestamp: i64, value: Value) -> Append {
        let period = self.period;
        let Some(ring) = self.slots.get_mut(slot) else {
            return Append::OutOfOrder;
        };
        let at = bucket(timestamp, ring.interval);
        let before = ring.bytes;
        let outcome = match ring.entries.back_mut() {
            Some((last, _)) if at < *last => return Append::OutOfOrder,
            Some((last, held)) if at == *last => {
                ring.bytes -= held.resident_bytes();
                ring.bytes += value.resident_bytes();
                *held = value;
                Append::Replaced
            }
            Some((last, _)) => {
                let gap = ring.interval > 0 && at > *last + ring.interval;
                ring.bytes += value.resident_bytes() + std::mem::size_of::<i64>();
                ring.entries.push_back((at, value));
                if gap {
                    Append::AppendedAfterGap
                } else {
                    Append::Appended
                }
            }
            None => {
                ring.bytes += value.resident_bytes() + std::mem::size_of::<i64>();
                ring.entries.push_back((at, value));
                Append::Appended
            }
        };
        while ring.entries.len() > period {
            if let Some((_, old)) = ring.entries.pop_front() {
                ring.bytes -= old.resident_bytes() + std::mem::size_of::<i64>();
            }
        }
        self.bytes = self.bytes + ring.bytes - before;
        outcome
    }

    /// Every ring holds `period` bars.
    pub(crate) fn is_ready(&self) -> bool {
        !self.slots.is_empty() && self.slots.iter().all(|s| s.entries.len() >= self.period)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| s.entries.is_empty())
    }

    pub(crate) fn clear(&mut self) {
        for slot in &mut self.slots {
            slot.entries.clear();
            slot.bytes = 0;
        }
        self.bytes = 0;
    }

    /// Bytes held by every ring.
    pub(crate) fn resident_bytes(&self) -> usize {
        self.bytes
    }
}

/// A compute function's read-only view of its node's cache.
#[derive(Debug)]
pub struct CacheView<'a> {
    cache: &'a NodeCache,
    clock: WallClock,
    now: Instant,
}

impl<'a> CacheView<'a> {
    pub(crate) fn new(cache: &'a NodeCache, clock: WallClock, now: Instant) -> CacheView<'a> {
        CacheView { cache, clock, now }
    }

    /// The window of one upstream. An upstream the node does not read gives an empty window.
    pub fn window(&self, upstream: NodeRef) -> Window<'a> {
        match self
            .cache
            .slots
            .iter()
            .find(|s| s.upstream == Some(upstream))
        {
            Some(slot) => self.read(slot),
            None => Window::EMPTY,
        }
    }

    /// The window of the node's only (or first) upstream.
    pub fn first(&self) -> Window<'a> {
        self.cache
            .slots
            .first()
            .map_or(Window::EMPTY, |slot| self.read(slot))
    }

    /// Every upstream's window with its node id (or queue name), in input order.
    pub fn windows(&self) -> impl Iterator<Item = (&'a str, Window<'a>)> + '_ {
        self.cache
            .slots
            .iter()
            .map(|slot| (slot.label.as_str(), self.read(slot)))
    }

    /// The bars each window holds when full.
    pub fn period(&self) -> usize {
        self.cache.period
    }

    fn read(&self, slot: &'a Slot) -> Window<'a> {
        slot.metrics.reads.increment(1);
        slot.metrics.last_read.set(self.clock.unix(self.now));
        Window {
            entries: Some(&slot.entries),
            interval: slot.interval,
        }
    }
}

/// One upstream's last bars, oldest first.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    entries: Option<&'a VecDeque<(i64, Value)>>,
    interval: i64,
}

impl<'a> Window<'a> {
    const EMPTY: Window<'static> = Window {
        entries: None,
        interval: 0,
    };

    pub fn len(&self) -> usize {
        self.entries.map_or(0, VecDeque::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(bucket timestamp, value)`, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (i64, &'a Value)> + 'a {
        self.entries
            .into_iter()
            .flat_map(|e| e.iter().map(|(t, v)| (*t, v)))
    }

    /// The values as numbers (bars give their close); values that are not numbers are skipped.
    pub fn numbers(&self) -> impl DoubleEndedIterator<Item = f64> + 'a {
        self.iter().filter_map(|(_, v)| v.as_f64())
    }

    pub fn last(&self) -> Option<&'a Value> {
        self.entries.and_then(|e| e.back().map(|(_, v)| v))
    }

    pub fn last_timestamp(&self) -> Option<i64> {
        self.entries.and_then(|e| e.back().map(|(t, _)| *t))
    }

    /// The mean of the values as numbers; `None` when empty or when one is not a number.
    pub fn mean(&self) -> Option<f64> {
        let mut sum = 0.0;
        let mut count = 0usize;
        for (_, value) in self.iter() {
            sum += value.as_f64()?;
            count += 1;
        }
        (count > 0).then(|| sum / count as f64)
    }

    /// Whether a bucket is missing between two bars of the window.
    pub fn has_gap(&self) -> bool {
        if self.interval <= 0 {
            return false;
        }
        let mut previous: Option<i64> = None;
        for (at, _) in self.iter() {
            if let Some(before) = previous
                && at - before > self.interval
            {
                return true;
            }
            previous = Some(at);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_metrics() -> SlotMetrics {
        SlotMetrics {
            reads: Counter::noop(),
            last_read: Gauge::noop(),
        }
    }

    fn cache(period: usize) -> NodeCache {
        let mut cache = NodeCache::new(period);
        cache.add_slot(None, "up".into(), 60, slot_metrics());
        cache
    }

    fn closes(cache: &NodeCache) -> Vec<(i64, f64)> {
        let view = CacheView::new(cache, WallClock::new(), Instant::now());
        view.first()
            .iter()
            .map(|(t, v)| (t, v.as_f64().unwrap_or(f64::NAN)))
            .collect()
    }

    #[test]
    fn timestamps_are_bucketed_and_the_ring_keeps_period_bars() {
        let mut cache = cache(3);
        for (t, v) in [(60, 1.0), (125, 2.0), (180, 3.0), (299, 4.0)] {
            assert_eq!(cache.append(0, t, Value::Number(v)), Append::Appended);
        }
        assert_eq!(closes(&cache), vec![(120, 2.0), (180, 3.0), (240, 4.0)]);
        assert!(cache.is_ready());
    }

    #[test]
    fn a_later_value_in_the_same_bucket_replaces_and_an_older_one_is_dropped() {
        let mut cache = cache(3);
        cache.append(0, 120, Value::Number(1.0));
        assert_eq!(cache.append(0, 150, Value::Number(2.0)), Append::Replaced);
        assert_eq!(cache.append(0, 60, Value::Number(0.5)), Append::OutOfOrder);
        assert_eq!(closes(&cache), vec![(120, 2.0)]);
        assert!(!cache.is_ready());
    }

    #[test]
    fn a_missing_bucket_is_a_gap_until_it_leaves_the_window() {
        let mut cache = cache(2);
        cache.append(0, 60, Value::Number(1.0));
        assert_eq!(
            cache.append(0, 240, Value::Number(2.0)),
            Append::AppendedAfterGap
        );
        let view = CacheView::new(&cache, WallClock::new(), Instant::now());
        assert!(view.first().has_gap());
        cache.append(0, 300, Value::Number(3.0));
        let view = CacheView::new(&cache, WallClock::new(), Instant::now());
        assert!(!view.first().has_gap());
        assert_eq!(view.first().mean(), Some(2.5));
    }

    #[test]
    fn resident_bytes_follow_appends_evictions_and_clears() {
        let mut cache = cache(2);
        assert_eq!(cache.resident_bytes(), 0);
        cache.append(0, 60, Value::Number(1.0));
        let one = cache.resident_bytes();
        assert!(one > 0);
        cache.append(0, 120, Value::Number(1.0));
        cache.append(0, 180, Value::Number(1.0));
        assert_eq!(cache.resident_bytes(), 2 * one);
        cache.clear();
        assert_eq!(cache.resident_bytes(), 0);
        assert!(cache.is_empty());
    }
}
