//! Where a stream's bars come from: a history provider for backfill and a live feed.
//! Ships a CSV history, and synthetic bars that serve as both.

use async_trait::async_trait;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::bucket;
use crate::value::{Bar, Value};

/// One backfill request: the bars of a node at an interval in `[start, end)` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    pub node_id: String,
    pub interval: i64,
    pub start: i64,
    pub end: i64,
}

/// Why history could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Worth another try (a store that is down, a timeout).
    #[error("history unavailable: {0}")]
    Unavailable(String),
    /// Retrying will not help (a malformed file).
    #[error("history is malformed: {0}")]
    Malformed(String),
}

impl HistoryError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, HistoryError::Unavailable(_))
    }
}

/// Past bars of a stream, for backfill before live data flows.
#[async_trait]
pub trait HistoryProvider: Send + Sync + std::fmt::Debug {
    /// Bars in `[start, end)`, as `(timestamp, value)`. Rows out of order, repeated or leaving
    /// gaps are the backfill's to count and skip; a provider need not clean them.
    async fn fetch(&self, request: &HistoryRequest) -> Result<Vec<(i64, Value)>, HistoryError>;
}

/// Live bars of a stream. `None` ends the feed.
#[async_trait]
pub trait LiveFeed: Send + std::fmt::Debug {
    async fn next(&mut self) -> Option<(i64, Value)>;
}

/// The current unix time in whole seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// History from a CSV file with a header: `timestamp` (unix seconds) and `close` or `value`;
/// `open`, `high`, `low` and `volume` are read when present (then each row is a bar).
#[derive(Debug, Clone)]
pub struct CsvHistory {
    path: PathBuf,
}

impl CsvHistory {
    pub fn new(path: impl Into<PathBuf>) -> CsvHistory {
        CsvHistory { path: path.into() }
    }
}

#[async_trait]
impl HistoryProvider for CsvHistory {
    async fn fetch(&self, request: &HistoryRequest) -> Result<Vec<(i64, Value)>, HistoryError> {
        let path = self.path.clone();
        let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .map_err(|e| HistoryError::Unavailable(e.to_string()))?
            .map_err(|e| {
                HistoryError::Unavailable(format!("cannot read {}: {e}", self.path.display()))
            })?;
        parse_csv(&text, request)
            .map_err(|reason| HistoryError::Malformed(format!("{}: {reason}", self.path.display())))
    }
}

fn parse_csv(text: &str, request: &HistoryRequest) -> Result<Vec<(i64, Value)>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or("the file is empty")?;
    let columns: Vec<String> = header
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let find = |name: &str| columns.iter().position(|c| c == name);
    let timestamp = find("timestamp")
        .or_else(|| find("ts"))
        .ok_or("no `timestamp` column")?;
    let close = find("close")
        .or_else(|| find("value"))
        .ok_or("no `close` or `value` column")?;
    let bar_columns = match (find("open"), find("high"), find("low")) {
        (Some(open), Some(high), Some(low)) => Some((open, high, low, find("volume"))),
        _ => None,
    };
    let mut rows = Vec::new();
    for (index, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let number = |column: usize| -> Result<f64, String> {
            let cell = cells
                .get(column)
                .ok_or_else(|| format!("line {}: missing column {}", index + 1, column + 1))?;
            cell.parse::<f64>()
                .map_err(|_| format!("line {}: `{cell}` is not a number", index + 1))
        };
        let at = number(timestamp)? as i64;
        if at < request.start || at >= request.end {
            continue;
        }
        let value = match bar_columns {
            Some((open, high, low, volume)) => Value::Bar(Bar {
                open: number(open)?,
                high: number(high)?,
                low: number(low)?,
                close: number(close)?,
                volume: volume.map(number).transpose()?.unwrap_or(0.0),
            }),
            None => Value::Number(number(close)?),
        };
        rows.push((at, value));
    }
    Ok(rows)
}

/// Deterministic synthetic bars: a price that wanders in slow waves with noise, the same bar
/// for the same (seed, timestamp), so backfilled history and live bars join without a seam.
/// Serves as a history provider and, through [`SyntheticBars::feed`], as a live feed.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticBars {
    seed: u64,
}

impl SyntheticBars {
    pub fn new(seed: u64) -> SyntheticBars {
        SyntheticBars { seed }
    }

    /// The bar closing at `timestamp` for bars of `interval` seconds.
    pub fn bar(&self, timestamp: i64, interval: i64) -> Bar {
        let open = self.price(timestamp - interval.max(1), interval);
        let close = self.price(timestamp, interval);
        let wiggle = (noise(self.seed ^ 0x5bd1, timestamp) + 1.0) * 0.001 * close;
        Bar {
            open,
            high: open.max(close) + wiggle,
            low: open.min(close) - wiggle,
            close,
            volume: 1000.0 + 500.0 * (noise(self.seed ^ 0x7f4a, timestamp) + 1.0),
        }
    }

    fn price(&self, timestamp: i64, interval: i64) -> f64 {
        let step = timestamp as f64 / interval.max(1) as f64;
        let waves = 0.04 * (step * std::f64::consts::TAU / 97.0).sin()
            + 0.015 * (step * std::f64::consts::TAU / 23.0).sin();
        100.0 * (waves + 0.003 * noise(self.seed, timestamp)).exp()
    }

    /// A live feed of these bars from the bucket holding now, one bar per interval of
    /// market time, `pace` apart in wall time (none: as fast as they are taken).
    pub fn feed(&self, interval: i64) -> SyntheticFeed {
        SyntheticFeed {
            bars: *self,
            interval: interval.max(1),
            next: None,
            remaining: None,
            pace: None,
        }
    }
}

/// Uniform noise in [-1, 1] from a seed and a timestamp (splitmix64).
fn noise(seed: u64, timestamp: i64) -> f64 {
    let mut z = seed
        .wrapping_add(timestamp as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

#[async_trait]
impl HistoryProvider for SyntheticBars {
    async fn fetch(&self, request: &HistoryRequest) -> Result<Vec<(i64, Value)>, HistoryError> {
        let interval = request.interval.max(1);
        let mut at = bucket(request.start, interval);
        if at < request.start {
            at += interval;
        }
        let mut rows = Vec::new();
        while at < request.end {
            rows.push((at, Value::Bar(self.bar(at, interval))));
            at += interval;
        }
        Ok(rows)
    }
}

/// Live synthetic bars (see [`SyntheticBars::feed`]).
#[derive(Debug, Clone)]
pub struct SyntheticFeed {
    bars: SyntheticBars,
    interval: i64,
    next: Option<i64>,
    remaining: Option<u64>,
    pace: Option<Duration>,
}

impl SyntheticFeed {
    /// Start at this timestamp instead of now.
    pub fn starting_at(mut self, timestamp: i64) -> SyntheticFeed {
        self.next = Some(bucket(timestamp, self.interval));
        self
    }

    /// End after this many bars.
    pub fn take(mut self, count: u64) -> SyntheticFeed {
        self.remaining = Some(count);
        self
    }

    /// Wait this long between bars.
    pub fn pace(mut self, every: Duration) -> SyntheticFeed {
        self.pace = Some(every);
        self
    }
}

#[async_trait]
impl LiveFeed for SyntheticFeed {
    async fn next(&mut self) -> Option<(i64, Value)> {
        if let Some(remaining) = &mut self.remaining {
            if *remaining == 0 {
                return None;
            }
            *remaining -= 1;
        }
        if let Some(pace) = self.pace {
            tokio::time::sleep(pace).await;
        }
        let at = *self
            .next
            .get_or_insert_with(|| bucket(unix_now(), self.interval));
        self.next = Some(at + self.interval);
        Some((at, Value::Bar(self.bars.bar(at, self.interval))))
    }
}

/// A live feed from a fixed list of `(timestamp, value)`, in order; for tests and replays.
#[derive(Debug, Clone)]
pub struct ReplayFeed {
    rows: std::collections::VecDeque<(i64, Value)>,
}

impl ReplayFeed {
    pub fn new(rows: impl IntoIterator<Item = (i64, Value)>) -> ReplayFeed {
        ReplayFeed {
            rows: rows.into_iter().collect(),
        }
    }
}

#[async_trait]
impl LiveFeed for ReplayFeed {
    async fn next(&mut self) -> Option<(i64, Value)> {
        self.rows.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(start: i64, end: i64) -> HistoryRequest {
        HistoryRequest {
            node_id: "n".into(),
            interval: 60,
            start,
            end,
        }
    }

    #[test]
    fn csv_rows_are_read_as_numbers_or_bars_within_the_range() {
        let numbers = "timestamp,value\n60,1.5\n120,2.5\n180,3.5\n";
        let rows = parse_csv(numbers, &request(100, 180)).unwrap_or_default();
        assert_eq!(rows, vec![(120, Value::Number(2.5))]);
        let bars = "ts,open,high,low,close,volume\n60,1,2,0.5,1.5,10\n";
        let rows = parse_csv(bars, &request(0, 1000)).unwrap_or_default();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1.as_f64(), Some(1.5));
    }

    #[test]
    fn a_malformed_csv_names_its_line() {
        let error = parse_csv("timestamp,close\n60,abc\n", &request(0, 1000)).err();
        assert_eq!(error.as_deref(), Some("line 2: `abc` is not a number"));
        let error = parse_csv("time,close\n", &request(0, 1000)).err();
        assert_eq!(error.as_deref(), Some("no `timestamp` column"));
    }

    #[tokio::test]
    async fn synthetic_history_and_feed_agree_on_every_bar() {
        let bars = SyntheticBars::new(7);
        let history = bars.fetch(&request(6000, 6300)).await.unwrap_or_default();
        let mut feed = bars.feed(60).starting_at(6000).take(5);
        let mut live = Vec::new();
        while let Some(row) = feed.next().await {
            live.push(row);
        }
        assert_eq!(history, live);
        assert_eq!(history.len(), 5);
    }
}
