//! The DAG Manager's work on a DAG text it has not seen, without gRPC or storage: the check
//! (`parse_cache::check`: parse, order, verify every node id, digest the sorted ids), then the
//! partition keys with compute keys in one context. 1000-node synthetic DAGs, a new text each
//! time, as in the fresh and "new text" cases of `diff_grpc`. Prints per-DAG percentiles and
//! the machine facts.
//!
//! Run: `cargo bench -p dagmanager --bench dag_check [-- COUNT]` (COUNT DAGs, default 200).

use dagmanager::parse_cache::check;
use std::time::{Duration, Instant};
use test_support::bench::percentile_ms;
use wire::{ComputeContext, DagLimits};

/// The same allocator as the `qmtl` binary, so the figures are the service's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn line(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "{name:<32} n={:<5} p50={:>7.3} ms  p95={:>7.3} ms  max={:>7.3} ms",
        samples.len(),
        percentile_ms(&samples, 0.50),
        percentile_ms(&samples, 0.95),
        percentile_ms(&samples, 1.0),
    );
}

fn main() {
    println!("{}", test_support::bench::machine_facts());
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let texts: Vec<String> = (0..count)
        .map(|i| test_support::synthetic_dag(1000, &format!("check-{i}")).to_string())
        .collect();
    let limits = DagLimits {
        max_bytes: 64 << 20,
        max_nodes: 100_000,
    };
    let context = ComputeContext {
        world_id: "bench".into(),
        execution_domain: "backtest".into(),
        as_of: "2025-01-01".into(),
        ..ComputeContext::default()
    };
    let (mut checks, mut keys) = (Vec::new(), Vec::new());
    for text in &texts {
        let started = Instant::now();
        let checked = check(text, limits).expect("the DAG checks");
        let checked_at = Instant::now();
        let partition_keys = checked.partition_keys(Some(&context));
        keys.push(checked_at.elapsed());
        checks.push(checked_at - started);
        assert_eq!(partition_keys.len(), 1000);
    }
    let bytes = texts.iter().map(String::len).sum::<usize>() / texts.len();
    println!("1000-node DAG texts of {bytes} bytes");
    line("check (parse, order, verify)", checks);
    line("partition keys with compute keys", keys);
}
