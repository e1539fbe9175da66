//! Strategies run offline: every node here, outputs and metrics checked.

use async_trait::async_trait;
use kit::shutdown::Shutdown;
use sdk_runtime::{
    BackfillOutcome, CsvHistory, HistoryError, HistoryProvider, HistoryRequest, ReplayFeed, Runner,
    SdkMetrics, SdkSettings, Strategy, Value,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use test_support::assert_eventually;

use crate::support::{channel_feed, collector, rounded, scrape, serve, sma, taken};

fn settings() -> SdkSettings {
    SdkSettings {
        world_id: "w1".into(),
        backfill_backoff_ms: 1,
        ..SdkSettings::default()
    }
}

fn bars(values: &[(i64, f64)]) -> ReplayFeed {
    ReplayFeed::new(values.iter().map(|(t, v)| (*t, Value::Number(*v))))
}

#[tokio::test]
async fn a_chain_computes_the_hand_computed_values_once_per_bar() -> anyhow::Result<()> {
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let mut s = Strategy::new("spread");
    let feed: Vec<(i64, f64)> = (1..=10).map(|k| (60 * k, k as f64)).collect();
    let price = s
        .stream_input("price")
        .interval(60)
        .live(bars(&feed))
        .build()?;
    let mean = sma(&mut s, price, 3);
    let spread = s
        .node("Spread")
        .input(price)
        .input(mean)
        .code("spread", "1")
        .compute(move |v| {
            Some(v.window(price).last()?.as_f64()? - v.window(mean).last()?.as_f64()?)
        })?;
    let (means, observe) = collector();
    s.observe(mean, observe)?;
    let (spreads, observe) = collector();
    s.observe(spread, observe)?;
    let price_id = s.node_id(price).unwrap_or_default().to_owned();
    let mean_id = s.node_id(mean).unwrap_or_default().to_owned();
    let spread_id = s.node_id(spread).unwrap_or_default().to_owned();

    let report = Runner::offline(settings(), metrics.clone())
        .run(s, Shutdown::new())
        .await?;

    assert_eq!(report.events, 10);
    let expected: Vec<(i64, f64)> = (3..=10).map(|k| (60 * k, (k - 1) as f64)).collect();
    assert_eq!(rounded(taken(&means)), expected);
    let ones: Vec<(i64, f64)> = (3..=10).map(|k| (60 * k, 1.0)).collect();
    assert_eq!(rounded(taken(&spreads)), ones, "one computation per bar");

    let scraped = scrape(address).await?;
    assert_eq!(
        scraped.value("node_processed_total", &[("node_id", &mean_id)]),
        Some(8.0)
    );
    assert_eq!(
        scraped.value("node_processed_total", &[("node_id", &spread_id)]),
        Some(8.0)
    );
    assert_eq!(
        scraped.value("node_process_failure_total", &[("node_id", &mean_id)]),
        Some(0.0)
    );
    assert_eq!(scraped.kind("node_process_duration_ms"), Some("histogram"));
    for le in ["0.05", "500", "10000"] {
        assert!(
            scraped
                .value(
                    "node_process_duration_ms_bucket",
                    &[("node_id", &mean_id), ("le", le)]
                )
                .is_some(),
            "bucket le={le}"
        );
    }
    assert_eq!(
        scraped.value("node_process_duration_ms_count", &[("node_id", &mean_id)]),
        Some(8.0)
    );
    // SMA reads price 8 times, Spread reads price and SMA 8 times each.
    assert_eq!(
        scraped.value(
            "cache_read_total",
            &[("upstream_id", &price_id), ("interval", "60")]
        ),
        Some(16.0)
    );
    let last_read = scraped.value(
        "cache_last_read_timestamp",
        &[("upstream_id", &mean_id), ("interval", "60")],
    );
    assert!(last_read.is_some_and(|t| t > 1.7e9), "{last_read:?}");
    assert_eq!(
        scraped.value("runtime_events_total", &[("source", "feed")]),
        Some(10.0)
    );
    // The run is over, its caches are gone.
    assert_eq!(
        scraped.value(
            "nodecache_resident_bytes",
            &[("node_id", "all"), ("scope", "total")]
        ),
        Some(0.0)
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_or_panicking_compute_function_is_counted_and_the_run_goes_on()
-> anyhow::Result<()> {
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let mut s = Strategy::new("fragile");
    let feed: Vec<(i64, f64)> = (1..=10).map(|k| (60 * k, k as f64)).collect();
    let price = s.stream_input("price").live(bars(&feed)).build()?;
    let fragile = s
        .node("Fragile")
        .input(price)
        .code("fragile", "1")
        .compute(move |v| {
            let x = v
                .window(price)
                .last()
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            if x == 5.0 {
                panic!("five");
            }
            if x == 7.0 {
                return Err("seven".to_owned());
            }
            Ok(x)
        })?;
    let (outputs, observe) = collector();
    s.observe(fragile, observe)?;
    let id = s.node_id(fragile).unwrap_or_default().to_owned();
    Runner::offline(settings(), metrics)
        .run(s, Shutdown::new())
        .await?;
    let values: Vec<f64> = taken(&outputs).into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 9.0, 10.0]);
    let scraped = scrape(address).await?;
    assert_eq!(
        scraped.value("node_process_failure_total", &[("node_id", &id)]),
        Some(2.0)
    );
    assert_eq!(
        scraped.value("node_processed_total", &[("node_id", &id)]),
        Some(8.0)
    );
    Ok(())
}

#[tokio::test]
async fn backfill_skips_bad_history_rows_and_the_nodes_are_ready_when_live_data_starts()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("price.csv");
    // 180 is missing (a gap), 120 comes again out of order, 300 twice.
    std::fs::write(
        &csv,
        "timestamp,close\n60,1\n120,2\n240,4\n120,2\n300,5\n300,5.5\n",
    )?;
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let mut s = Strategy::new("backfilled");
    let price = s
        .stream_input("price")
        .history(CsvHistory::new(&csv))
        .live(bars(&[(360, 6.0), (420, 7.0)]))
        .build()?;
    let mean = sma(&mut s, price, 3);
    let (means, observe) = collector();
    s.observe(mean, observe)?;
    let price_id = s.node_id(price).unwrap_or_default().to_owned();
    let mean_id = s.node_id(mean).unwrap_or_default().to_owned();
    let runner = Runner::offline(
        SdkSettings {
            backfill_bars: 5,
            ..settings()
        },
        metrics,
    )
    .history_end(360);
    let report = runner.run(s, Shutdown::new()).await?;

    assert_eq!(
        rounded(taken(&means)),
        rounded(vec![
            (240, 7.0 / 3.0),
            (300, 11.0 / 3.0),
            (360, 5.0),
            (420, 6.0)
        ])
    );
    assert_eq!(report.plan.backfill.len(), 1);
    assert_eq!(
        report.plan.backfill[0].outcome,
        BackfillOutcome::Completed {
            rows: 4,
            skipped: 2
        }
    );
    assert_eq!(
        (report.plan.backfill[0].start, report.plan.backfill[0].end),
        (60, 360)
    );
    let scraped = scrape(address).await?;
    let job = [("node_id", price_id.as_str()), ("interval", "60")];
    assert_eq!(scraped.value("backfill_last_timestamp", &job), Some(300.0));
    assert_eq!(scraped.value("backfill_completed_total", &job), Some(1.0));
    assert_eq!(scraped.value("backfill_failure_total", &job), Some(0.0));
    assert_eq!(scraped.value("backfill_jobs_in_progress", &[]), Some(0.0));
    for reason in ["out_of_order", "duplicate"] {
        let labels = [
            ("node_id", price_id.as_str()),
            ("interval", "60"),
            ("reason", reason),
        ];
        assert_eq!(
            scraped.value("backfill_rows_skipped_total", &labels),
            Some(1.0),
            "{reason}"
        );
    }
    assert_eq!(
        scraped.value("nodecache_gaps_total", &[("node_id", &mean_id)]),
        Some(1.0)
    );
    assert_eq!(
        scraped.value("runtime_events_total", &[("source", "backfill")]),
        Some(4.0)
    );
    Ok(())
}

/// Fails with a retryable error `failures` times, then serves `rows`.
#[derive(Debug)]
struct Flaky {
    failures: u32,
    calls: AtomicU32,
}

#[async_trait]
impl HistoryProvider for Flaky {
    async fn fetch(&self, request: &HistoryRequest) -> Result<Vec<(i64, Value)>, HistoryError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(HistoryError::Unavailable("the store is down".into()));
        }
        Ok((request.start..request.end)
            .step_by(request.interval as usize)
            .map(|t| (t, Value::Number(1.0)))
            .collect())
    }
}

#[tokio::test]
async fn backfill_retries_then_completes_or_gives_up_and_live_data_still_flows()
-> anyhow::Result<()> {
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let mut s = Strategy::new("retries");
    let flaky = s
        .stream_input("flaky")
        .tags(["a"])
        .history(Flaky {
            failures: 2,
            calls: AtomicU32::new(0),
        })
        .build()?;
    let down = s
        .stream_input("down")
        .tags(["b"])
        .history(Flaky {
            failures: u32::MAX,
            calls: AtomicU32::new(0),
        })
        .live(bars(&[(600, 2.0), (660, 4.0)]))
        .build()?;
    let mean = sma(&mut s, down, 2);
    let (means, observe) = collector();
    s.observe(mean, observe)?;
    let ids = [s.node_id(flaky), s.node_id(down)].map(|id| id.unwrap_or_default().to_owned());
    let settings = SdkSettings {
        backfill_retries: 2,
        ..settings()
    };
    let report = Runner::offline(settings, metrics)
        .history_end(600)
        .run(s, Shutdown::new())
        .await?;

    let outcomes: Vec<&BackfillOutcome> = report.plan.backfill.iter().map(|r| &r.outcome).collect();
    assert!(
        matches!(outcomes[0], BackfillOutcome::Completed { rows: 2, .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], BackfillOutcome::Failed { .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        taken(&means),
        vec![(660, 3.0)],
        "live data flows without history"
    );
    let scraped = scrape(address).await?;
    let flaky_job = [("node_id", ids[0].as_str()), ("interval", "60")];
    let down_job = [("node_id", ids[1].as_str()), ("interval", "60")];
    assert_eq!(scraped.value("backfill_retry_total", &flaky_job), Some(2.0));
    assert_eq!(
        scraped.value("backfill_completed_total", &flaky_job),
        Some(1.0)
    );
    assert_eq!(scraped.value("backfill_retry_total", &down_job), Some(2.0));
    assert_eq!(
        scraped.value("backfill_failure_total", &down_job),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn a_new_compute_context_clears_caches_that_hold_data_and_is_counted() -> anyhow::Result<()> {
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let (bars_in, feed) = channel_feed();
    let mut s = Strategy::new("contexts");
    let price = s.stream_input("price").live(feed).build()?;
    let mean = sma(&mut s, price, 3);
    let (means, observe) = collector();
    s.observe(mean, observe)?;
    let mean_id = s.node_id(mean).unwrap_or_default().to_owned();
    let handle = Runner::offline(settings(), metrics).start(s).await?;
    for k in 1..=3 {
        bars_in.send((60 * k, Value::Number(k as f64)))?;
    }
    assert_eventually!(
        taken(&means).len() == 1,
        Duration::from_secs(5),
        "the first mean"
    );
    let total = [("node_id", "all"), ("scope", "total")];
    let resident = scrape(address)
        .await?
        .value("nodecache_resident_bytes", &total);
    assert!(resident.is_some_and(|b| b > 0.0), "{resident:?}");
    assert_eq!(
        scrape(address).await?.value(
            "nodecache_resident_bytes",
            &[("node_id", &mean_id), ("scope", "node")]
        ),
        resident
    );

    let w2 = wire::ComputeContext {
        world_id: "w2".into(),
        execution_domain: "backtest".into(),
        ..wire::ComputeContext::default()
    };
    assert_eq!(handle.switch_context(w2.clone()).await?, 1);
    assert_eq!(
        handle.switch_context(w2).await?,
        0,
        "the same context clears nothing"
    );
    let labels = [
        ("node_id", mean_id.as_str()),
        ("world_id", "w2"),
        ("execution_domain", "backtest"),
        ("as_of", "__unset__"),
        ("partition", "__unset__"),
    ];
    let scraped = scrape(address).await?;
    assert_eq!(
        scraped.value("cross_context_cache_hit_total", &labels),
        Some(1.0)
    );
    assert_eq!(scraped.value("nodecache_resident_bytes", &total), Some(0.0));

    // The window starts over: two bars are not enough, the third is.
    for k in 4..=6 {
        bars_in.send((60 * k, Value::Number(k as f64)))?;
    }
    drop(bars_in);
    let report = handle.join().await?;
    assert_eq!(report.events, 6);
    assert_eq!(taken(&means), vec![(180, 2.0), (360, 5.0)]);
    Ok(())
}

#[tokio::test]
async fn offline_a_tag_query_reads_the_earlier_streams_whose_tags_match() -> anyhow::Result<()> {
    let metrics = SdkMetrics::new()?;
    let mut s = Strategy::new("basket");
    let btc = s
        .stream_input("btc")
        .tags(["btc", "price"])
        .live(bars(&[(60, 10.0), (120, 12.0)]))
        .build()?;
    let eth = s
        .stream_input("eth")
        .tags(["eth", "price"])
        .live(bars(&[(60, 2.0), (120, 4.0)]))
        .build()?;
    s.stream_input("volume")
        .tags(["btc", "volume"])
        .live(bars(&[(60, 1000.0)]))
        .build()?;
    let basket = s
        .tag_query("basket")
        .tags(["price"])
        .code("basket", "1")
        .compute(|v| {
            let lasts: Vec<f64> = v
                .windows()
                .filter_map(|(_, w)| w.last()?.as_f64())
                .collect();
            Some(lasts.iter().sum::<f64>() / lasts.len() as f64)
        })?;
    let (outputs, observe) = collector();
    s.observe(basket, observe)?;
    let _ = (btc, eth);
    Runner::offline(settings(), metrics)
        .run(s, Shutdown::new())
        .await?;
    // Ready once both price streams have a bar (the feeds interleave freely, so the first
    // mean is 6 or 7); the volume stream does not match, or the means would be near 1000.
    let values: Vec<f64> = taken(&outputs).into_iter().map(|(_, v)| v).collect();
    assert!(
        values.iter().all(|v| [6.0, 7.0, 8.0].contains(v)),
        "{values:?}"
    );
    assert_eq!(values.last(), Some(&8.0));
    Ok(())
}

#[tokio::test]
async fn a_panicking_observer_is_counted_and_values_still_flow() -> anyhow::Result<()> {
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let mut s = Strategy::new("observed");
    let feed: Vec<(i64, f64)> = (1..=4).map(|k| (60 * k, k as f64)).collect();
    let price = s.stream_input("price").live(bars(&feed)).build()?;
    let mean = sma(&mut s, price, 2);
    s.observe(price, |at, _| assert!(at != 120, "observer refuses 120"))?;
    let (means, observe) = collector();
    s.observe(mean, observe)?;
    let price_id = s.node_id(price).unwrap_or_default().to_owned();
    let report = Runner::offline(settings(), metrics)
        .run(s, Shutdown::new())
        .await?;
    assert_eq!(report.events, 4);
    assert_eq!(taken(&means), vec![(120, 1.5), (180, 2.5), (240, 3.5)]);
    let scraped = scrape(address).await?;
    assert_eq!(
        scraped.value("node_observer_failure_total", &[("node_id", &price_id)]),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn a_node_shared_by_two_running_strategies_reports_the_bytes_both_hold() -> anyhow::Result<()>
{
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let runner = Runner::offline(settings(), metrics);
    let mut handles = Vec::new();
    let mut senders = Vec::new();
    let mut mean_id = String::new();
    // One strategy at a time, so that what one holds is known before the second adds its own.
    let mut single = None;
    for name in ["one", "two"] {
        let (bars_in, feed) = channel_feed();
        let mut s = Strategy::new(name);
        let price = s.stream_input("price").live(feed).build()?;
        let mean = sma(&mut s, price, 2);
        mean_id = s.node_id(mean).unwrap_or_default().to_owned();
        handles.push(runner.start(s).await?);
        bars_in.send((60, Value::Number(1.0)))?;
        senders.push(bars_in);
        let node = [("node_id", mean_id.as_str()), ("scope", "node")];
        let held_now = |e: &test_support::Exposition| e.value("nodecache_resident_bytes", &node);
        match single {
            None => {
                assert_eventually!(
                    held_now(&scrape(address).await?).is_some_and(|n| n > 0.0),
                    Duration::from_secs(5),
                    "the first strategy's cache counts"
                );
                single = held_now(&scrape(address).await?);
            }
            Some(one) => assert_eventually!(
                held_now(&scrape(address).await?) == Some(one * 2.0),
                Duration::from_secs(5),
                "the second strategy's cache counts as much again"
            ),
        }
    }
    let node = [("node_id", mean_id.as_str()), ("scope", "node")];
    let total = [("node_id", "all"), ("scope", "total")];
    let held = |e: &test_support::Exposition| {
        (
            e.value("nodecache_resident_bytes", &node),
            e.value("nodecache_resident_bytes", &total),
        )
    };
    let (both, both_total) = held(&scrape(address).await?);
    assert_eq!(
        both, both_total,
        "the shared node is all the strategies hold"
    );
    drop(senders.remove(0));
    handles.remove(0).join().await?;
    let (one, _) = held(&scrape(address).await?);
    assert_eq!(
        one.map(|b| b * 2.0),
        both,
        "the other strategy still holds its bytes"
    );
    drop(senders);
    handles.remove(0).join().await?;
    assert_eq!(held(&scrape(address).await?), (Some(0.0), Some(0.0)));
    Ok(())
}
