//! The three-strike circuit breaker that guards every remote call (observability.md, "Circuit
//! breakers"): it opens after consecutive failures, fails fast while open, and closes only
//! through an explicit `reset()` that a health probe outside the breaker calls on success.

use metrics::{Counter, Gauge};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::metrics::MetricsRegistry;

/// Consecutive failures that open a breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// The metric names a breaker's user chooses, e.g. `kafka_breaker_open_total`.
#[derive(Debug, Clone, Copy)]
pub struct BreakerMetricNames {
    pub open_total: &'static str,
    pub state: &'static str,
    pub failures: &'static str,
}

impl BreakerMetricNames {
    pub fn describe(&self, registry: &MetricsRegistry) {
        registry.describe_counter(self.open_total, None, "Times the circuit breaker opened.");
        registry.describe_gauge(self.state, None, "Circuit breaker state: 1 open, 0 closed.");
        registry.describe_gauge(
            self.failures,
            None,
            "Consecutive failures the circuit breaker has counted.",
        );
    }
}

/// Whether calls currently reach the dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
        }
    }
}

/// A point-in-time view for status endpoints.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub open_for: Option<Duration>,
}

/// What a guarded call returns when it does not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    #[error("circuit breaker for {dependency} is open; the call was not made")]
    Open { dependency: &'static str },
    #[error(transparent)]
    Call(E),
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    opened_at: Option<Instant>,
}

/// A three-strike breaker. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    dependency: &'static str,
    threshold: u32,
    inner: Arc<Mutex<Inner>>,
    clock: Arc<dyn Clock>,
    open_total: Counter,
    state_gauge: Gauge,
    failures_gauge: Gauge,
}

impl CircuitBreaker {
    pub fn new(
        dependency: &'static str,
        names: BreakerMetricNames,
        registry: &MetricsRegistry,
        clock: Arc<dyn Clock>,
    ) -> CircuitBreaker {
        names.describe(registry);
        let breaker = CircuitBreaker {
            dependency,
            threshold: DEFAULT_FAILURE_THRESHOLD,
            inner: Arc::new(Mutex::new(Inner {
                consecutive_failures: 0,
                opened_at: None,
            })),
            clock,
            open_total: registry.counter(names.open_total, &[]),
            state_gauge: registry.gauge(names.state, &[]),
            failures_gauge: registry.gauge(names.failures, &[]),
        };
        breaker.open_total.increment(0);
        breaker.state_gauge.set(0.0);
        breaker.failures_gauge.set(0.0);
        breaker
    }

    pub fn dependency(&self) -> &'static str {
        self.dependency
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_open(&self) -> bool {
        self.lock().opened_at.is_some()
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let inner = self.lock();
        BreakerSnapshot {
            state: if inner.opened_at.is_some() {
                BreakerState::Open
            } else {
                BreakerState::Closed
            },
            consecutive_failures: inner.consecutive_failures,
            open_for: inner
                .opened_at
                .map(|at| self.clock.now().saturating_duration_since(at)),
        }
    }

    /// Runs `call` unless the breaker is open; every error counts as a dependency failure.
    pub async fn call<T, E, F>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.call_classified(call, |_| true).await
    }

    /// Runs `call` unless the breaker is open; `is_dependency_failure` decides which errors
    /// count (a caller's own mistake, such as a 4xx or a config mismatch, does not).
    pub async fn call_classified<T, E, F>(
        &self,
        call: F,
        is_dependency_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        if self.is_open() {
            return Err(BreakerError::Open {
                dependency: self.dependency,
            });
        }
        match call.await {
            Ok(value) => {
                self.record_success();
                Ok(value)
            }
            Err(error) => {
                if is_dependency_failure(&error) {
                    self.record_failure();
                }
                Err(BreakerError::Call(error))
            }
        }
    }

    /// A success while closed clears the consecutive-failure count. It never closes an open breaker.
    pub fn record_success(&self) {
        let mut inner = self.lock();
        if inner.opened_at.is_none() {
            inner.consecutive_failures = 0;
            self.failures_gauge.set(0.0);
        }
    }

    pub fn record_failure(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        self.failures_gauge
            .set(f64::from(inner.consecutive_failures));
        if inner.opened_at.is_none() && inner.consecutive_failures >= self.threshold {
            inner.opened_at = Some(self.clock.now());
            self.open_total.increment(1);
            self.state_gauge.set(1.0);
            tracing::warn!(
                dependency = self.dependency,
                failures = inner.consecutive_failures,
                "Circuit breaker opened."
            );
        }
    }

    /// Closes the breaker. Called by a health probe that reached the dependency outside it.
    pub fn reset(&self) {
        let mut inner = self.lock();
        let was_open = inner.opened_at.take().is_some();
        inner.consecutive_failures = 0;
        self.state_gauge.set(0.0);
        self.failures_gauge.set(0.0);
        if was_open {
            tracing::info!(
                dependency = self.dependency,
                "Circuit breaker closed by a healthy probe."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::SystemTime;

    const NAMES: BreakerMetricNames = BreakerMetricNames {
        open_total: "dep_breaker_open_total",
        state: "dep_breaker_state",
        failures: "dep_breaker_failures",
    };

    /// A dependency whose answers the test scripts, counting the calls that reach it.
    #[derive(Default)]
    struct FakeDependency {
        calls: AtomicU32,
    }

    impl FakeDependency {
        async fn answer(&self, ok: bool) -> Result<u32, &'static str> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if ok { Ok(7) } else { Err("down") }
        }
    }

    fn setup() -> (CircuitBreaker, MetricsRegistry, Arc<ManualClock>) {
        let registry = MetricsRegistry::builder().build().unwrap();
        let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
        let breaker = CircuitBreaker::new("dep", NAMES, &registry, clock.clone());
        (breaker, registry, clock)
    }

    #[tokio::test]
    async fn three_consecutive_failures_open_it_and_then_calls_fail_without_reaching_the_dependency()
     {
        let (breaker, registry, clock) = setup();
        let dependency = FakeDependency::default();
        for _ in 0..3 {
            assert!(matches!(
                breaker.call(dependency.answer(false)).await,
                Err(BreakerError::Call(_))
            ));
        }
        assert!(breaker.is_open());
        let before = dependency.calls.load(Ordering::SeqCst);
        let result = breaker.call(dependency.answer(true)).await;
        assert!(matches!(
            result,
            Err(BreakerError::Open { dependency: "dep" })
        ));
        assert_eq!(dependency.calls.load(Ordering::SeqCst), before);
        clock.advance(Duration::from_secs(3600));
        assert!(breaker.is_open(), "time alone never closes it");
        assert_eq!(breaker.snapshot().open_for, Some(Duration::from_secs(3600)));
        let text = registry.render();
        assert!(text.contains("dep_breaker_open_total 1"), "{text}");
        assert!(text.contains("dep_breaker_state 1"), "{text}");
        assert!(text.contains("dep_breaker_failures 3"), "{text}");
    }

    #[tokio::test]
    async fn a_success_between_failures_restarts_the_count() {
        let (breaker, _, _) = setup();
        let dependency = FakeDependency::default();
        for ok in [false, false, true, false, false] {
            let _ = breaker.call(dependency.answer(ok)).await;
        }
        assert!(!breaker.is_open());
        assert_eq!(breaker.snapshot().consecutive_failures, 2);
    }

    #[tokio::test]
    async fn reset_closes_it_and_calls_reach_the_dependency_again() {
        let (breaker, registry, _) = setup();
        let dependency = FakeDependency::default();
        for _ in 0..3 {
            let _ = breaker.call(dependency.answer(false)).await;
        }
        breaker.reset();
        assert_eq!(breaker.call(dependency.answer(true)).await.ok(), Some(7));
        let text = registry.render();
        assert!(text.contains("dep_breaker_state 0"), "{text}");
        assert!(text.contains("dep_breaker_open_total 1"), "{text}");
    }

    #[tokio::test]
    async fn a_callers_own_mistake_does_not_count() {
        let (breaker, _, _) = setup();
        let dependency = FakeDependency::default();
        for _ in 0..5 {
            let _ = breaker
                .call_classified(dependency.answer(false), |_| false)
                .await;
        }
        assert!(!breaker.is_open());
    }
}
