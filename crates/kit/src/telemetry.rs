//! Logs and traces: a `tracing` subscriber for logs, and, when `telemetry.otel_exporter_endpoint`
//! is set, OpenTelemetry spans exported over OTLP/HTTP (or to stdout with `console`). Export runs
//! on a background batch with a bounded queue and timeout, so a collector that is down or slow
//! costs dropped spans, never a blocked request or start-up.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;

/// The `telemetry` section of `qmtl.yml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// OTLP/HTTP traces URL (`http://localhost:4318/v1/traces`), `console`, or unset for no export.
    pub otel_exporter_endpoint: Option<String>,
    /// `tracing` filter directives, e.g. `info` or `info,dagmanager=debug`; `RUST_LOG` wins.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Longest a single export to the collector may take.
    pub export_timeout_ms: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otel_exporter_endpoint: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            export_timeout_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "telemetry.otel_exporter_endpoint {endpoint:?} is neither an http(s) URL nor `console`"
    )]
    BadEndpoint { endpoint: String },
    #[error("the OTLP exporter could not be built")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing::dispatcher::SetGlobalDefaultError),
}

/// Flushes and shuts the span exporter down when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(error = %error, "Span exporter did not shut down cleanly.");
        }
    }
}

/// Builds the tracer provider for `service_name`, or `None` when export is off.
pub fn tracer_provider(
    service_name: &'static str,
    settings: &TelemetrySettings,
) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let Some(endpoint) = settings.otel_exporter_endpoint.as_deref().map(str::trim) else {
        return Ok(None);
    };
    if endpoint.is_empty() {
        return Ok(None);
    }
    let resource = Resource::builder().with_service_name(service_name).build();
    let processor = if endpoint.eq_ignore_ascii_case("console") {
        batched(opentelemetry_stdout::SpanExporter::default())
    } else if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_millis(settings.export_timeout_ms))
            .with_headers(Default::default())
            .build()
            .map_err(TelemetryError::Exporter)?;
        batched(exporter)
    } else {
        return Err(TelemetryError::BadEndpoint {
            endpoint: endpoint.to_owned(),
        });
    };
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(processor)
        .build();
    Ok(Some(provider))
}

/// Exports on a background thread from a bounded queue: when the collector is slow or down,
/// spans beyond the queue are dropped and no caller ever waits.
/// Spans the exporter failed to deliver (a collector that is down or slow), since start.
static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Unix seconds of the last warning about dropped spans.
static LAST_DROP_WARNING: AtomicU64 = AtomicU64::new(0);
/// At most one warning per this many seconds; every dropped span is counted.
const DROP_WARNING_EVERY_SECS: u64 = 60;

/// Spans dropped because the collector could not take them, since the process started. Each
/// service exports it as `otel_spans_dropped_total`.
pub fn spans_dropped() -> u64 {
    SPANS_DROPPED.load(Ordering::Relaxed)
}

/// Counts what the wrapped exporter could not deliver and warns once per interval.
#[derive(Debug)]
struct Counted<E>(E);

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans = batch.len() as u64;
        let export = self.0.export(batch);
        async move {
            let result = export.await;
            if let Err(error) = &result {
                let total = SPANS_DROPPED.fetch_add(spans, Ordering::Relaxed) + spans;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let last = LAST_DROP_WARNING.load(Ordering::Relaxed);
                if now >= last + DROP_WARNING_EVERY_SECS
                    && LAST_DROP_WARNING
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(%error, dropped = total, "The trace collector is unavailable; spans are dropped (counted in otel_spans_dropped_total).");
                }
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

fn batched<E: SpanExporter + 'static>(exporter: E) -> BatchSpanProcessor {
    let exporter = Counted(exporter);
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(4096)
        .with_scheduled_delay(Duration::from_millis(500))
        .build();
    BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build()
}

/// Installs the global log subscriber (and span export when configured) for one service process.
pub fn init(
    service_name: &'static str,
    settings: &TelemetrySettings,
) -> Result<TelemetryGuard, TelemetryError> {
    let provider = tracer_provider(service_name, settings)?;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name)));
    let dispatch_cell: Arc<OnceLock<tracing::dispatcher::WeakDispatch>> = Arc::default();
    let (text, json) = match settings.log_format {
        LogFormat::Text => (
            Some(tracing_subscriber::fmt::layer().event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format().with_target(false),
                json: false,
                dispatch: dispatch_cell.clone(),
            })),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(WithTraceIds {
                        inner: tracing_subscriber::fmt::format().json(),
                        json: true,
                        dispatch: dispatch_cell.clone(),
                    }),
            ),
        ),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel_layer);
    let dispatch = tracing::Dispatch::new(subscriber);
    let _ = dispatch_cell.set(dispatch.downgrade());
    tracing::dispatcher::set_global_default(dispatch).map_err(TelemetryError::AlreadyInstalled)?;
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        crate::trace::set_exporting(true);
    }
    Ok(TelemetryGuard { provider })
}

/// Prefixes each log line with the `trace_id` and `span_id` of the span it was logged in (as
/// fields of the JSON object, or as `trace_id=… span_id=…` in text), when spans are exported.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
    /// The subscriber this formatter is part of: while an event is dispatched the current
    /// dispatcher cannot be looked up, so the span's context is read through this one.
    dispatch: Arc<OnceLock<tracing::dispatcher::WeakDispatch>>,
}

/// The exported trace and span ids of a span.
fn ids_of(
    span: &tracing::span::Id,
    dispatch: &OnceLock<tracing::dispatcher::WeakDispatch>,
) -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt as _;
    if !crate::trace::exporting() {
        return None;
    }
    let dispatch = dispatch.get()?.upgrade()?;
    let context = tracing_opentelemetry::get_otel_context(span, &dispatch)?;
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid()
        .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let current = ctx.lookup_current().map(|span| span.id());
        let Some((trace_id, span_id)) = current.and_then(|id| ids_of(&id, &self.dispatch)) else {
            return self.inner.format_event(ctx, writer, event);
        };
        if self.json {
            let mut line = String::new();
            self.inner.format_event(
                ctx,
                tracing_subscriber::fmt::format::Writer::new(&mut line),
                event,
            )?;
            match line.strip_prefix('{') {
                Some(rest) => write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
                ),
                None => writer.write_str(&line),
            }
        } else {
            write!(writer, "trace_id={trace_id} span_id={span_id} ")?;
            self.inner.format_event(ctx, writer, event)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut held) = self.0.lock() {
                held.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_carry_the_trace_and_span_ids_of_their_span() {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let provider = SdkTracerProvider::builder().build();
        let (text, json) = (Buffer::default(), Buffer::default());
        let (text_out, json_out) = (text.clone(), json.clone());
        let cell: Arc<OnceLock<tracing::dispatcher::WeakDispatch>> = Arc::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || text_out.clone())
                    .with_ansi(false)
                    .event_format(WithTraceIds {
                        inner: tracing_subscriber::fmt::format().with_target(false),
                        json: false,
                        dispatch: cell.clone(),
                    }),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(move || json_out.clone())
                    .event_format(WithTraceIds {
                        inner: tracing_subscriber::fmt::format().json(),
                        json: true,
                        dispatch: cell.clone(),
                    }),
            );
        crate::trace::set_exporting(true);
        let dispatch = tracing::Dispatch::new(subscriber);
        let _ = cell.set(dispatch.downgrade());
        let ids = tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::info!("inside");
            let context = span.context();
            let ids = context.span().span_context().clone();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let read = |b: &Buffer| {
            String::from_utf8(b.0.lock().map(|v| v.clone()).unwrap_or_default()).unwrap_or_default()
        };
        let text = read(&text);
        assert!(
            text.starts_with(&format!("trace_id={} span_id={} ", ids.0, ids.1)),
            "{text}"
        );
        let line: serde_json::Value = serde_json::from_str(read(&json).trim()).unwrap_or_default();
        assert_eq!(line["trace_id"], ids.0.as_str());
        assert_eq!(line["span_id"], ids.1.as_str());
        assert_eq!(line["fields"]["message"], "inside");
    }

    #[test]
    fn no_endpoint_means_no_export_and_a_bad_one_is_refused() {
        let off = TelemetrySettings::default();
        assert!(tracer_provider("svc", &off).unwrap().is_none());
        let bad = TelemetrySettings {
            otel_exporter_endpoint: Some("localhost:4318".into()),
            ..TelemetrySettings::default()
        };
        assert!(matches!(
            tracer_provider("svc", &bad),
            Err(TelemetryError::BadEndpoint { .. })
        ));
    }

    #[test]
    fn a_closed_collector_port_neither_blocks_nor_fails_span_creation() {
        use opentelemetry::trace::{Tracer, TracerProvider as _};
        let settings = TelemetrySettings {
            otel_exporter_endpoint: Some("http://127.0.0.1:9/v1/traces".into()),
            export_timeout_ms: 200,
            ..TelemetrySettings::default()
        };
        let provider = tracer_provider("svc", &settings).unwrap().unwrap();
        let tracer = provider.tracer("svc");
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            tracer.in_span("work", |_| {});
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "span creation must not wait on export"
        );
        let _ = provider.shutdown();
    }
}
