//! The runtime's scraped exposition: every family of the spec's SDK catalogue with its type and
//! labels, and an exposition promtool accepts.

use sdk_runtime::{Runner, SdkMetrics, SdkSettings, Strategy, SyntheticBars, Value};
use serde_json::json;
use std::time::Duration;
use test_support::{assert_catalogue, assert_eventually, assert_promtool_clean};

use crate::support::{channel_feed, collector, serve, taken};

#[tokio::test]
async fn every_catalogue_family_is_exposed_with_its_type_and_labels() -> anyhow::Result<()> {
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let (bars_in, feed) = channel_feed();
    let mut s = Strategy::new("catalogue");
    let price = s
        .stream_input("price")
        .history(SyntheticBars::new(1))
        .live(feed)
        .build()?;
    let mean = s
        .node("SMA")
        .input(price)
        .period(3)
        .params(json!({"window": 3}))
        .code("sma", "1")
        .compute(move |v| v.window(price).mean())?;
    let (means, observe) = collector();
    s.observe(mean, observe)?;
    let handle = Runner::offline(SdkSettings::default(), metrics)
        .history_end(6000)
        .start(s)
        .await?;
    bars_in.send((6000, Value::Number(1.0)))?;
    assert_eventually!(taken(&means).len() >= 2, Duration::from_secs(5), "means");
    let other = wire::ComputeContext {
        world_id: "w2".into(),
        ..wire::ComputeContext::default()
    };
    handle.switch_context(other).await?;

    let (status, text) = test_support::http_get(&format!("http://{address}/metrics")).await?;
    assert_eq!(status, 200);
    let exposition = test_support::Exposition::parse(&text)?;
    let node = &["node_id"][..];
    let job = &["node_id", "interval"][..];
    let upstream = &["upstream_id", "interval"][..];
    assert_catalogue(
        &exposition,
        &[
            ("cache_read_total", "counter", upstream),
            ("cache_last_read_timestamp", "gauge", upstream),
            ("backfill_last_timestamp", "gauge", job),
            ("backfill_jobs_in_progress", "gauge", &[]),
            ("backfill_failure_total", "counter", job),
            ("backfill_retry_total", "counter", job),
            ("node_processed_total", "counter", node),
            ("node_process_duration_ms", "histogram", node),
            ("node_process_failure_total", "counter", node),
            ("nodecache_resident_bytes", "gauge", &["node_id", "scope"]),
            (
                "cross_context_cache_hit_total",
                "counter",
                &[
                    "node_id",
                    "world_id",
                    "execution_domain",
                    "as_of",
                    "partition",
                ],
            ),
            ("event_recorder_errors_total", "counter", &[]),
        ],
    );
    test_support::assert_process_and_build_info(&exposition, "sdk-runtime");
    assert_promtool_clean(&text);
    drop(bars_in);
    handle.join().await?;
    Ok(())
}
