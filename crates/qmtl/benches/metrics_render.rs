//! How long each service's `/metrics` takes to render with about 10,000 series: the registry a
//! service builds, grown with that service's own labelled families (one series per node or per
//! request shape), rendered as the admin endpoint renders it (process figures read included).
//!
//! Run: `cargo bench -p qmtl --bench metrics_render [-- SERIES RENDERS]` (default 10000 200)

use kit::metrics::MetricsRegistry;
use std::time::{Duration, Instant};
use test_support::bench::{machine_facts, percentile_ms};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Adds counters labelled by node until the exposition has about `series` sample lines.
fn grow_with_counters(registry: &MetricsRegistry, family: &'static str, series: usize) {
    let have = sample_lines(&registry.render());
    for i in 0..series.saturating_sub(have) {
        let node = format!("blake3:{i:064x}");
        registry
            .counter(family, &[("node_id", node.as_str())])
            .increment(i as u64);
    }
}

fn sample_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

fn measure(service: &str, registry: &MetricsRegistry, renders: usize) {
    // One render first, so the exporter's caches are warm as in a running service.
    let text = registry.render();
    let mut samples: Vec<Duration> = (0..renders)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(registry.render());
            started.elapsed()
        })
        .collect();
    samples.sort();
    println!(
        "{service:<12} series={:<6} bytes={:<8} p50={:7.3} ms  p95={:7.3} ms  max={:7.3} ms",
        sample_lines(&text),
        text.len(),
        percentile_ms(&samples, 0.50),
        percentile_ms(&samples, 0.95),
        percentile_ms(&samples, 1.0),
    );
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let series = args.first().copied().unwrap_or(10_000);
    let renders = args.get(1).copied().unwrap_or(200);
    println!("{}", machine_facts());

    let dagmanager = dagmanager::metrics::DagManagerMetrics::new()?;
    grow_with_counters(
        dagmanager.registry(),
        dagmanager::metrics::CROSS_CONTEXT_CACHE_HIT_TOTAL,
        series,
    );
    measure("dagmanager", dagmanager.registry(), renders);

    let gateway = gateway::metrics::GatewayMetrics::new()?;
    // Request shapes are few; node types are the Gateway's widest label.
    grow_with_counters(
        gateway.registry(),
        gateway::metrics::NODEID_MISMATCH_TOTAL,
        series,
    );
    measure("gateway", gateway.registry(), renders);

    // The SDK runtime's widest families are per node: a counter and a histogram each.
    let sdk = sdk_runtime::SdkMetrics::new()?;
    let per_node = sdk_runtime::metrics::NODE_DURATION_BUCKETS_MS.len() + 3 + 1;
    for i in 0..series / per_node {
        let node = format!("blake3:{i:064x}");
        let labels = [("node_id", node.as_str())];
        sdk.registry()
            .counter(sdk_runtime::metrics::NODE_PROCESSED_TOTAL, &labels)
            .increment(1);
        sdk.registry()
            .histogram(sdk_runtime::metrics::NODE_PROCESS_DURATION_MS, &labels)
            .record(i as f64 % 50.0);
    }
    grow_with_counters(
        sdk.registry(),
        sdk_runtime::metrics::NODE_PROCESS_FAILURE_TOTAL,
        series,
    );
    measure("sdk-runtime", sdk.registry(), renders);
    Ok(())
}
