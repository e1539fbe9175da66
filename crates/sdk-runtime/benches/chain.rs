//! In-process throughput of a chain of moving-average nodes: one stream feeds SMA 1, which
//! feeds SMA 2, ... (every node computes on every bar, with its metrics recorded). Offline
//! runner, events from a pre-built feed; the figure is input events per second.
//!
//! Run: `cargo bench -p sdk-runtime --bench chain [-- NODES WINDOW EVENTS ROUNDS]`

use kit::shutdown::Shutdown;
use sdk_runtime::{ReplayFeed, Runner, SdkMetrics, SdkSettings, Strategy, Value};
use serde_json::json;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn chain(nodes: usize, window: usize, events: usize) -> anyhow::Result<Strategy> {
    let mut s = Strategy::new("chain");
    let feed = ReplayFeed::new((0..events).map(|i| {
        let price = 100.0 + (i as f64 * 0.01).sin();
        (60 * (i as i64 + 1), Value::Number(price))
    }));
    let mut upstream = s.stream_input("price").interval(60).live(feed).build()?;
    for level in 0..nodes {
        let input = upstream;
        upstream = s
            .node("SMA")
            .name(format!("sma{level}"))
            .input(input)
            .period(window)
            .params(json!({"window": window, "level": level}))
            .code("sma", "1")
            .compute(move |v| v.window(input).mean())?;
    }
    Ok(s)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let nodes = args.first().copied().unwrap_or(20);
    let window = args.get(1).copied().unwrap_or(20);
    let events = args.get(2).copied().unwrap_or(500_000);
    let rounds = args.get(3).copied().unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("{}", test_support::bench::machine_facts());
    let metrics = SdkMetrics::new()?;
    let runner = Runner::offline(SdkSettings::default(), metrics.clone());
    let mut rates = Vec::new();
    for round in 0..rounds {
        let strategy = chain(nodes, window, events)?;
        let started = Instant::now();
        let report = runtime.block_on(runner.run(strategy, Shutdown::new()))?;
        let elapsed = started.elapsed();
        anyhow::ensure!(report.events as usize == events, "every event was taken");
        let rate = events as f64 / elapsed.as_secs_f64();
        println!(
            "round {round}: {events} events through {nodes} SMA({window}) nodes in {:.3} s: {rate:.0} events/s ({:.0} node runs/s)",
            elapsed.as_secs_f64(),
            rate * nodes as f64
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let processed: f64 = metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("node_processed_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    println!(
        "chain of {nodes} SMA({window}): median {:.0} input events/s over {rounds} rounds (node_processed_total across rounds: {processed})",
        rates[rates.len() / 2]
    );
    Ok(())
}
