//! Strategies submitted through a real Gateway and DAG Manager (in process): queues applied,
//! a shared node read from the queue its first runner produces.

use kit::shutdown::Shutdown;
use sdk_runtime::{
    InProcessTransport, Mode, NodeRef, RunError, Runner, SdkMetrics, SdkSettings, Strategy,
    SubmitError, Transport, Value,
};
use std::sync::Arc;
use std::time::Duration;
use test_support::assert_eventually;

use crate::support::{channel_feed, collector, rounded, scrape, serve, sma, stack, taken};

fn settings(gateway: std::net::SocketAddr) -> SdkSettings {
    SdkSettings {
        gateway_url: format!("http://{gateway}"),
        world_id: "w1".into(),
        execution_domain: "backtest".into(),
        as_of: "2025-01-01".into(),
        submit_timeout_ms: 10_000,
        poll_interval_ms: 20,
        ..SdkSettings::default()
    }
}

pub(crate) fn with_sma(
    name: &str,
    window: usize,
    feed: crate::support::ChannelFeed,
) -> (Strategy, NodeRef, NodeRef) {
    let mut s = Strategy::new(name);
    let price = s
        .stream_input("price")
        .tags(["btc", "price"])
        .interval(60)
        .live(feed)
        .build()
        .unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)));
    let mean = sma(&mut s, price, window);
    (s, price, mean)
}

#[tokio::test]
async fn a_shared_stream_is_produced_once_and_read_from_its_queue_by_the_second_strategy()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stack = stack(dir.path()).await?;
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let transport: Arc<dyn Transport> = Arc::new(InProcessTransport::default());
    let runner = Runner::new(settings(stack.gateway), metrics.clone(), transport);

    let (bars_in, feed_a) = channel_feed();
    let (unused, feed_b) = channel_feed();
    let (a, _, fast) = with_sma("fast", 2, feed_a);
    let (mut b, _, slow) = with_sma("slow", 3, feed_b);
    let (slow_means, observe) = collector();
    b.observe(slow, observe)?;
    let fast_id = a.node_id(fast).unwrap_or_default().to_owned();
    let slow_id = b.node_id(slow).unwrap_or_default().to_owned();

    let first = runner.start(a).await?;
    let second = runner.start(b).await?;
    let (pa, pb) = (first.plan(), second.plan());
    assert!(pa.strategy_id.is_some() && pa.strategy_id != pb.strategy_id);
    assert_eq!(pa.nodes[0].node_id, pb.nodes[0].node_id, "one price node");
    assert_eq!(pa.nodes[0].topic, pb.nodes[0].topic, "one price queue");
    assert!(
        pa.nodes[0]
            .topic
            .as_deref()
            .is_some_and(|t| t.starts_with("w1.backtest.btc_"))
    );
    assert_eq!(
        (pa.nodes[0].mode, pa.nodes[1].mode),
        (Mode::Local, Mode::Local)
    );
    assert_eq!(
        (pb.nodes[0].mode, pb.nodes[1].mode),
        (Mode::Read, Mode::Local)
    );

    for k in 1..=5 {
        bars_in.send((60 * k, Value::Number(k as f64)))?;
    }
    assert_eventually!(
        taken(&slow_means).len() == 3,
        Duration::from_secs(5),
        "slow means"
    );
    // The first strategy's feed ends, it leaves the queue, and the reader's queue ends with it.
    drop(bars_in);
    let first = first.join().await?;
    let second = tokio::time::timeout(Duration::from_secs(5), second.join()).await??;
    drop(unused);
    assert_eq!(first.events, 5);
    assert_eq!(second.events, 5, "the second strategy read every price bar");
    assert_eq!(
        rounded(taken(&slow_means)),
        vec![(180, 2.0), (240, 3.0), (300, 4.0)]
    );

    let scraped = scrape(address).await?;
    assert_eq!(
        scraped.value("node_processed_total", &[("node_id", &fast_id)]),
        Some(4.0)
    );
    assert_eq!(
        scraped.value("node_processed_total", &[("node_id", &slow_id)]),
        Some(3.0)
    );
    assert_eq!(
        scraped.value("runtime_events_total", &[("source", "queue")]),
        Some(5.0)
    );
    // Every node computed here is published: 5 price bars, 4 fast and 3 slow means.
    assert_eq!(scraped.value("runtime_published_total", &[]), Some(12.0));
    assert_eq!(scraped.value("gatewayclient_breaker_state", &[]), Some(0.0));

    the_same_dag_is_the_same_strategy_and_another_world_another(
        &runner,
        stack.gateway,
        &metrics,
        &first.plan.strategy_id,
    )
    .await?;
    stack.stop().await;
    Ok(())
}

/// The rest of the test above, once `runner` has submitted the strategy `first_id`.
async fn the_same_dag_is_the_same_strategy_and_another_world_another(
    runner: &Runner,
    gateway: std::net::SocketAddr,
    metrics: &Arc<SdkMetrics>,
    first_id: &Option<String>,
) -> anyhow::Result<()> {
    // The same DAG again is the same strategy (409 at the Gateway), with its queue map, and
    // its context cannot be switched under it.
    let (_, feed_c) = channel_feed();
    let (again, _, _) = with_sma("fast", 2, feed_c);
    let handle = runner.start(again).await?;
    assert!(handle.plan().duplicate);
    assert_eq!(handle.plan().strategy_id, *first_id);
    let switched = handle.switch_context(wire::ComputeContext::default()).await;
    assert!(
        matches!(switched, Err(RunError::ContextFixedOnline)),
        "{switched:?}"
    );
    handle.stop();
    handle.join().await?;

    // In another world it is another strategy, with that world's queues.
    let elsewhere = Runner::new(
        SdkSettings {
            world_id: "w2".into(),
            ..settings(gateway)
        },
        metrics.clone(),
        Arc::new(InProcessTransport::default()),
    );
    let (_, feed_d) = channel_feed();
    let (moved, _, _) = with_sma("fast", 2, feed_d);
    let handle = elsewhere.start(moved).await?;
    assert!(!handle.plan().duplicate);
    assert_ne!(handle.plan().strategy_id, *first_id);
    assert!(handle.plan().nodes.iter().all(|n| {
        n.topic
            .as_deref()
            .is_some_and(|t| t.starts_with("w2.backtest."))
    }));
    handle.stop();
    handle.join().await?;
    Ok(())
}

#[tokio::test]
async fn a_gateway_refusal_is_a_clear_error_and_a_missing_gateway_opens_the_breaker()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stack = stack(dir.path()).await?;
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let transport: Arc<dyn Transport> = Arc::new(InProcessTransport::default());

    // No world: the Gateway answers 422 E_WORLD_IDS_REQUIRED.
    let refused = Runner::new(
        SdkSettings {
            world_id: String::new(),
            ..settings(stack.gateway)
        },
        metrics.clone(),
        transport.clone(),
    );
    let (_, feed) = channel_feed();
    let (s, _, _) = with_sma("refused", 2, feed);
    match refused.run(s, Shutdown::new()).await {
        Err(RunError::Submit(SubmitError::Rejected { status, code, .. })) => {
            assert_eq!((status, code.as_str()), (422, "E_WORLD_IDS_REQUIRED"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        scrape(address)
            .await?
            .value("gatewayclient_breaker_failures", &[]),
        Some(0.0)
    );
    let gateway = stack.gateway;
    stack.stop().await;

    // The Gateway is gone: three failures open the breaker, and the submission gives up.
    let away = Runner::new(
        SdkSettings {
            submit_timeout_ms: 500,
            ..settings(gateway)
        },
        metrics.clone(),
        transport,
    );
    let (_, feed) = channel_feed();
    let (s, _, _) = with_sma("away", 2, feed);
    let result = away.run(s, Shutdown::new()).await;
    assert!(
        matches!(
            result,
            Err(RunError::Submit(SubmitError::Unavailable { .. }))
        ),
        "{result:?}"
    );
    let scraped = scrape(address).await?;
    assert_eq!(scraped.value("gatewayclient_breaker_state", &[]), Some(1.0));
    assert_eq!(
        scraped.value("gatewayclient_breaker_open_total", &[]),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn a_tag_query_reads_every_queue_its_tags_match_whoever_produces_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stack = stack(dir.path()).await?;
    let metrics = SdkMetrics::new()?;
    let transport: Arc<dyn Transport> = Arc::new(InProcessTransport::default());
    let runner = Runner::new(settings(stack.gateway), metrics.clone(), transport);

    let (btc_in, btc_feed) = channel_feed();
    let (eth_in, eth_feed) = channel_feed();
    let mut feeds = Strategy::new("feeds");
    feeds
        .stream_input("btc")
        .tags(["btc", "price"])
        .live(btc_feed)
        .build()?;
    feeds
        .stream_input("eth")
        .tags(["eth", "price"])
        .live(eth_feed)
        .build()?;
    let producer = runner.start(feeds).await?;

    let mut basket = Strategy::new("basket");
    let query = basket
        .tag_query("basket")
        .tags(["price"])
        .code("basket", "1")
        .compute(|v| {
            let lasts: Vec<f64> = v
                .windows()
                .filter_map(|(_, w)| w.last()?.as_f64())
                .collect();
            Some(lasts.iter().sum::<f64>())
        })?;
    let (sums, observe) = collector();
    basket.observe(query, observe)?;
    let reader = runner.start(basket).await?;
    assert_eq!(reader.plan().nodes[0].mode, Mode::Local);

    btc_in.send((60, Value::Number(10.0)))?;
    eth_in.send((60, Value::Number(2.0)))?;
    assert_eventually!(taken(&sums).len() == 1, Duration::from_secs(5), "one sum");
    btc_in.send((120, Value::Number(11.0)))?;
    assert_eventually!(taken(&sums).len() == 2, Duration::from_secs(5), "two sums");
    assert_eq!(taken(&sums), vec![(60, 12.0), (120, 13.0)]);
    drop((btc_in, eth_in));
    producer.join().await?;
    let report = tokio::time::timeout(Duration::from_secs(5), reader.join()).await??;
    assert_eq!(report.events, 3);
    stack.stop().await;
    Ok(())
}
