//! The health probe that closes a breaker: a check run on an interval, outside the breaker, that
//! resets the breaker when the dependency answers again, and stops on shutdown.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::breaker::CircuitBreaker;
use crate::shutdown::Shutdown;

/// When the probe runs its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeWhen {
    /// At every tick: the check also feeds readiness or a health gauge.
    Always,
    /// Only while the breaker is open: nothing else needs the answer.
    BreakerOpen,
}

/// A health probe's schedule and the breaker it closes. Build it, then [`HealthProbe::run`] it
/// on a task of its own.
pub struct HealthProbe {
    interval: Duration,
    when: ProbeWhen,
    breaker: Option<CircuitBreaker>,
    on_reset: Option<Box<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for HealthProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthProbe")
            .field("interval", &self.interval)
            .field("when", &self.when)
            .field("breaker", &self.breaker.as_ref().map(|b| b.dependency()))
            .field("on_reset", &self.on_reset.is_some())
            .finish()
    }
}

impl HealthProbe {
    /// A probe that checks every `interval`, the first time at once.
    pub fn every(interval: Duration) -> HealthProbe {
        HealthProbe {
            interval,
            when: ProbeWhen::Always,
            breaker: None,
            on_reset: None,
        }
    }

    /// The breaker a healthy check closes. Without one the probe only reports.
    pub fn closing(mut self, breaker: CircuitBreaker) -> HealthProbe {
        self.breaker = Some(breaker);
        self
    }

    /// Checks only while the breaker is open.
    pub fn when(mut self, when: ProbeWhen) -> HealthProbe {
        self.when = when;
        self
    }

    /// Called after a healthy check closed an open breaker (to wake callers that wait for it).
    pub fn on_reset(mut self, hook: impl Fn() + Send + Sync + 'static) -> HealthProbe {
        self.on_reset = Some(Box::new(hook));
        self
    }

    /// Runs `check` on the schedule until `shutdown` fires. A check answering `true` closes an
    /// open breaker through [`CircuitBreaker::reset`]; `false` leaves the breaker as it is (the
    /// probe is outside the breaker and never counts as one of its failures).
    pub async fn run<C, F>(self, shutdown: Shutdown, mut check: C)
    where
        C: FnMut() -> F + Send,
        F: Future<Output = bool> + Send,
    {
        let stop = shutdown.triggered();
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticker.tick() => {}
            }
            let open = self.breaker.as_ref().is_some_and(CircuitBreaker::is_open);
            if self.when == ProbeWhen::BreakerOpen && !open {
                continue;
            }
            let healthy = tokio::select! {
                _ = &mut stop => return,
                healthy = check() => healthy,
            };
            if healthy && open {
                self.close_breaker();
            }
        }
    }

    fn close_breaker(&self) {
        if let Some(breaker) = &self.breaker {
            breaker.reset();
        }
        if let Some(hook) = &self.on_reset {
            hook();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerMetricNames;
    use crate::clock::SystemClock;
    use crate::metrics::MetricsRegistry;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    const NAMES: BreakerMetricNames = BreakerMetricNames {
        open_total: "probed_breaker_open_total",
        state: "probed_breaker_state",
        failures: "probed_breaker_failures",
    };

    fn open_breaker() -> CircuitBreaker {
        let registry = MetricsRegistry::builder().build().unwrap();
        let breaker = CircuitBreaker::new("probed", NAMES, &registry, Arc::new(SystemClock));
        for _ in 0..3 {
            breaker.record_failure();
        }
        assert!(breaker.is_open());
        breaker
    }

    #[tokio::test]
    async fn a_healthy_check_closes_the_open_breaker_and_calls_the_hook() {
        let breaker = open_breaker();
        let checks = Arc::new(AtomicU32::new(0));
        let hooked = Arc::new(AtomicBool::new(false));
        let shutdown = Shutdown::new();
        let probe = HealthProbe::every(Duration::from_millis(10))
            .closing(breaker.clone())
            .on_reset({
                let hooked = hooked.clone();
                move || hooked.store(true, Ordering::SeqCst)
            });
        let task = tokio::spawn(probe.run(shutdown.clone(), {
            let checks = checks.clone();
            move || {
                // Unhealthy twice, then healthy.
                let n = checks.fetch_add(1, Ordering::SeqCst);
                async move { n >= 2 }
            }
        }));
        test_support::assert_eventually!(
            !breaker.is_open(),
            Duration::from_secs(5),
            "timed out: the breaker closes"
        );
        assert!(checks.load(Ordering::SeqCst) >= 3);
        assert!(hooked.load(Ordering::SeqCst));
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the probe stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn an_unhealthy_check_leaves_the_breaker_open_and_counts_no_failure() {
        let breaker = open_breaker();
        let checks = Arc::new(AtomicU32::new(0));
        let shutdown = Shutdown::new();
        let task = tokio::spawn(
            HealthProbe::every(Duration::from_millis(5))
                .closing(breaker.clone())
                .run(shutdown.clone(), {
                    let checks = checks.clone();
                    move || {
                        checks.fetch_add(1, Ordering::SeqCst);
                        async { false }
                    }
                }),
        );
        test_support::assert_eventually!(
            checks.load(Ordering::SeqCst) >= 5,
            Duration::from_secs(5),
            "timed out: five checks"
        );
        assert!(breaker.is_open());
        assert_eq!(breaker.snapshot().consecutive_failures, 3);
        shutdown.trigger();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_probe_for_open_breakers_only_does_not_check_a_closed_one() {
        let registry = MetricsRegistry::builder().build().unwrap();
        let breaker = CircuitBreaker::new("probed", NAMES, &registry, Arc::new(SystemClock));
        let checks = Arc::new(AtomicU32::new(0));
        let ticks_seen = Arc::new(AtomicU32::new(0));
        let shutdown = Shutdown::new();
        let task = tokio::spawn(
            HealthProbe::every(Duration::from_millis(5))
                .closing(breaker.clone())
                .when(ProbeWhen::BreakerOpen)
                .run(shutdown.clone(), {
                    let checks = checks.clone();
                    move || {
                        checks.fetch_add(1, Ordering::SeqCst);
                        async { true }
                    }
                }),
        );
        // A second probe on the same schedule shows that ticks went by meanwhile.
        let counter = tokio::spawn(HealthProbe::every(Duration::from_millis(5)).run(
            shutdown.clone(),
            {
                let ticks_seen = ticks_seen.clone();
                move || {
                    ticks_seen.fetch_add(1, Ordering::SeqCst);
                    async { true }
                }
            },
        ));
        test_support::assert_eventually!(
            ticks_seen.load(Ordering::SeqCst) >= 10,
            Duration::from_secs(5),
            "timed out: ten ticks"
        );
        assert_eq!(
            checks.load(Ordering::SeqCst),
            0,
            "a closed breaker was probed"
        );
        for _ in 0..3 {
            breaker.record_failure();
        }
        test_support::assert_eventually!(
            !breaker.is_open(),
            Duration::from_secs(5),
            "timed out: the breaker closes"
        );
        assert!(checks.load(Ordering::SeqCst) >= 1);
        shutdown.trigger();
        task.await.unwrap();
        counter.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_a_check_that_hangs() {
        let shutdown = Shutdown::new();
        let task = tokio::spawn(
            HealthProbe::every(Duration::from_millis(5))
                .run(shutdown.clone(), std::future::pending::<bool>),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the probe stops on shutdown")
            .unwrap();
    }
}
