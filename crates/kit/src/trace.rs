//! W3C trace context across hops (HTTP headers, gRPC metadata, queue records): what a caller
//! sends, and how a receiver continues the trace. Without span export (no endpoint configured)
//! spans carry no context, nothing is sent, and these calls cost next to nothing.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header (and metadata key, and record header) carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: hot paths make per-event spans only then.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub(crate) fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

struct Map<'a>(&'a mut HashMap<String, String>);

impl Injector for Map<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The `traceparent` (and `tracestate`, when set) that continues `span` on the other side of a
/// hop; `None` when the span is not exported.
pub fn context_of(span: &tracing::Span) -> Option<(String, Option<String>)> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut fields = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut Map(&mut fields));
    let parent = fields.remove(TRACEPARENT)?;
    Some((parent, fields.remove(TRACESTATE).filter(|s| !s.is_empty())))
}

/// Just the `traceparent` of [`context_of`].
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    context_of(span).map(|(parent, _)| parent)
}

/// Makes `span` a child of the remote span a `traceparent` names (an invalid one is ignored).
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let context = TraceContextPropagator::new().extract(&Headers {
        traceparent,
        tracestate,
    });
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Links `span` to the remote span a `traceparent` names (a consumer to its producer).
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    let context = TraceContextPropagator::new().extract(&Headers {
        traceparent,
        tracestate: None,
    });
    let remote = context.span().span_context().clone();
    if remote.is_valid() {
        span.add_link(remote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_export_nothing_is_propagated() {
        let span = tracing::info_span!("quiet");
        assert_eq!(traceparent_of(&span), None);
        continue_from(&span, Some("not a traceparent"), None);
        link_to(&span, "00-zz");
    }
}
