//! Diff semantics: reuse, restarts, buffering, sentinels, chunking, acks and compute contexts.

use crate::support::{request, spawn_app, temp_dir, test_settings};
use proto::DiffRequest;
use serde_json::json;
use std::collections::BTreeSet;
use test_support::{synthetic_dag, testdata};

fn queue_names(diff: &dagclient::CollectedDiff) -> BTreeSet<String> {
    diff.queue_map.values().cloned().collect()
}

#[tokio::test]
async fn a_repeated_diff_reuses_every_queue_and_a_second_strategy_shares_them() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let dag = synthetic_dag(20, "share");
    let first = app.diff("alpha", &dag).await.unwrap();
    assert_eq!(first.queue_map.len(), 20);
    assert_eq!(first.sentinel_id, "alpha-sentinel");
    let again = app.diff("alpha", &dag).await.unwrap();
    assert_eq!(again.queue_map, first.queue_map);
    let other = app.diff("beta", &dag).await.unwrap();
    assert_eq!(queue_names(&other), queue_names(&first));
    let metrics = app.metrics().await;
    assert_eq!(metrics.value("queues_total", &[]), Some(20.0));
    assert_eq!(metrics.value("compute_nodes_total", &[]), Some(20.0));
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_server_reuses_every_queue() {
    let (_dir, path) = temp_dir();
    let dag = synthetic_dag(50, "restart");
    let app = spawn_app(test_settings(&path)).await;
    let before = app.diff("gamma", &dag).await.unwrap();
    let settings = app.stop().await;

    let app = spawn_app(settings).await;
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.value("queues_total", &[]),
        Some(50.0),
        "the store survived the restart"
    );
    let after = app.diff("gamma", &dag).await.unwrap();
    assert_eq!(after.queue_map, before.queue_map);
    let other = app.diff("delta", &dag).await.unwrap();
    assert_eq!(queue_names(&other), queue_names(&before));
    assert_eq!(app.metrics().await.value("queues_total", &[]), Some(50.0));
    app.stop().await;
}

/// Diffs share durable commits: a diff may reuse nodes another diff staged but has not yet
/// committed. Every strategy with the same DAG must still get the same queues, and all of it
/// must be on disk once the answers are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_diffs_sharing_nodes_agree_on_queues_and_all_survive_a_restart() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let dags = [synthetic_dag(30, "even"), synthetic_dag(30, "odd")];
    let mut diffs = tokio::task::JoinSet::new();
    for i in 0..16 {
        let client = app.diff_client().await;
        let dag = dags[i % 2].clone();
        diffs.spawn(async move {
            let mut client = client;
            let diff = dagclient::collect_diff(&mut client, request(&format!("s{i}"), &dag))
                .await
                .expect("every concurrent diff completes");
            (i, diff)
        });
    }
    let mut maps = [None, None];
    while let Some(joined) = diffs.join_next().await {
        let (i, diff) = joined.unwrap();
        let first = maps[i % 2].get_or_insert_with(|| diff.queue_map.clone());
        assert_eq!(&diff.queue_map, first, "strategy s{i} got other queues");
    }
    let metrics = app.metrics().await;
    assert_eq!(metrics.value("queues_total", &[]), Some(60.0));
    assert_eq!(metrics.value("diff_requests_total", &[]), Some(16.0));
    assert_eq!(metrics.value("diff_failures_total", &[]), Some(0.0));
    let settings = app.stop().await;

    let app = spawn_app(settings).await;
    assert_eq!(app.metrics().await.value("queues_total", &[]), Some(60.0));
    for (i, dag) in dags.iter().enumerate() {
        let again = app.diff(&format!("s{i}"), dag).await.unwrap();
        assert_eq!(Some(&again.queue_map), maps[i].as_ref());
    }
    assert_eq!(app.metrics().await.value("queues_total", &[]), Some(60.0));
    app.stop().await;
}

#[tokio::test]
async fn a_changed_schema_hash_reuses_the_queue_and_asks_for_a_rebuffer_of_period_bars() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let dag = synthetic_dag(3, "schema");
    let first = app.diff("s", &dag).await.unwrap();
    assert!(first.buffer_nodes.is_empty());
    let changed = test_support::with_field(dag, 1, "schema_hash", json!("schema-2"));
    let second = app.diff("s", &changed).await.unwrap();
    assert_eq!(second.queue_map, first.queue_map);
    assert_eq!(second.buffer_nodes.len(), 1);
    let buffer = &second.buffer_nodes[0];
    assert_eq!(
        buffer.node_id,
        changed["nodes"][1]["node_id"].as_str().unwrap()
    );
    assert_eq!(
        i64::from(buffer.lag),
        changed["nodes"][1]["period"].as_i64().unwrap()
    );
    assert_eq!(buffer.schema_hash, "schema-2");
    app.stop().await;
}

#[tokio::test]
async fn a_sentinel_diff_that_creates_no_node_counts_a_sentinel_gap() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let mut dag = synthetic_dag(3, "gap");
    dag["nodes"].as_array_mut().unwrap().push(
        json!({"node_type": "VersionSentinel", "node_id": "g-sentinel", "version": "2025.1"}),
    );
    let first = app.diff("g", &dag).await.unwrap();
    assert_eq!(first.version, "2025.1");
    assert!(
        first.queue_map.values().all(|t| t.ends_with("_2025.1")),
        "{:?}",
        first.queue_map
    );
    assert_eq!(
        app.metrics().await.value("sentinel_gap_count", &[]),
        Some(0.0)
    );
    app.diff("g", &dag).await.unwrap();
    assert_eq!(
        app.metrics().await.value("sentinel_gap_count", &[]),
        Some(1.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_large_diff_streams_chunks_of_at_most_one_hundred_nodes_with_one_crc() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let dag = synthetic_dag(250, "chunks");
    let parsed = wire::parse_dag(&dag.to_string(), wire::DagLimits::default(), true).unwrap();
    let diff = app.diff("c", &dag).await.unwrap();
    assert_eq!(diff.chunks, 3);
    assert_eq!(diff.queue_map.len(), 250);
    assert_eq!(diff.crc32, Some(parsed.crc32()));
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_never_acks_gets_the_chunks_again_then_deadline_exceeded() {
    let (_dir, path) = temp_dir();
    let mut settings = test_settings(&path);
    settings.chunk_size = 2;
    settings.ack_window = 1;
    settings.ack_timeout_ms = 50;
    settings.ack_retries = 1;
    let app = spawn_app(settings).await;
    let mut client = app.diff_client().await;
    let mut stream = client
        .diff(request("n", &synthetic_dag(5, "noack")))
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    let error = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended although the window never moved"),
            Err(status) => break status,
        }
    };
    assert_eq!(received, 2, "the unacknowledged chunk is sent once more");
    assert_eq!(error.code(), tonic::Code::DeadlineExceeded);
    app.stop().await;
}

#[tokio::test]
async fn an_acking_client_moves_a_one_chunk_window_through_the_whole_diff() {
    let (_dir, path) = temp_dir();
    let mut settings = test_settings(&path);
    settings.chunk_size = 10;
    settings.ack_window = 1;
    settings.ack_timeout_ms = 5_000;
    let app = spawn_app(settings).await;
    let diff = app.diff("w", &synthetic_dag(35, "window")).await.unwrap();
    assert_eq!(diff.chunks, 4);
    assert_eq!(diff.queue_map.len(), 35);
    app.stop().await;
}

#[tokio::test]
async fn the_python_sdk_dags_are_accepted_as_they_are() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    for file in ["sdk-dag-10.json", "sdk-dag-100.json"] {
        let dag: serde_json::Value = serde_json::from_str(&testdata(file)).unwrap();
        let diff = app
            .diff(file, &dag)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let compute_nodes = dag["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["node_type"] != "VersionSentinel")
            .count();
        assert_eq!(diff.queue_map.len(), compute_nodes, "{file}");
    }
    app.stop().await;
}

fn in_world(strategy_id: &str, dag: &serde_json::Value, world: &str, as_of: &str) -> DiffRequest {
    DiffRequest {
        world_id: world.to_owned(),
        execution_domain: "backtest".to_owned(),
        as_of: as_of.to_owned(),
        ..request(strategy_id, dag)
    }
}

#[tokio::test]
async fn each_world_gets_its_own_queues_keyed_by_compute_key() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let dag = synthetic_dag(4, "worlds");
    let w1 = app
        .diff_request(in_world("a", &dag, "w1", "2025-01-01"))
        .await
        .unwrap();
    let w2 = app
        .diff_request(in_world("b", &dag, "W2", "2025-01-01"))
        .await
        .unwrap();
    assert!(
        w1.queue_map.values().all(|t| t.starts_with("w1.backtest.")),
        "{:?}",
        w1.queue_map
    );
    assert!(
        w2.queue_map.values().all(|t| t.starts_with("w2.backtest.")),
        "{:?}",
        w2.queue_map
    );
    let node_id = dag["nodes"][0]["node_id"].as_str().unwrap();
    let expected_key = wire::compute_key(node_id, "w1", "backtest", "2025-01-01", "");
    assert!(
        w1.queue_map
            .contains_key(&format!("{node_id}:60:0#ck={expected_key}"))
    );
    app.stop().await;
}

#[tokio::test]
async fn reusing_a_queue_under_another_compute_context_fails_and_is_counted() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let dag = synthetic_dag(2, "isolation");
    app.diff_request(in_world("a", &dag, "w1", "2025-01-01"))
        .await
        .unwrap();
    let error = app
        .diff_request(in_world("b", &dag, "w1", "2025-06-01"))
        .await
        .unwrap_err();
    let dagclient::ClientError::Status(status) = error else {
        panic!("expected a gRPC status, got {error}");
    };
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("E_CROSS_CONTEXT"),
        "{}",
        status.message()
    );
    let node_id = dag["nodes"][0]["node_id"].as_str().unwrap();
    let metrics = app.metrics().await;
    let labels = [
        ("node_id", node_id),
        ("world_id", "w1"),
        ("execution_domain", "backtest"),
        ("as_of", "2025-06-01"),
        ("partition", "__unset__"),
    ];
    assert_eq!(
        metrics.value("cross_context_cache_hit_total", &labels),
        Some(1.0)
    );
    assert_eq!(metrics.value("diff_failures_total", &[]), Some(1.0));
    app.stop().await;
}

#[tokio::test]
async fn queues_the_registry_lost_are_re_created_from_the_graph_at_start() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let before = app.diff("lost", &synthetic_dag(4, "lost")).await.unwrap();
    let settings = app.stop().await;
    // The registry writes creations without a flush; losing its file stands for a crash.
    std::fs::remove_file(settings.data_dir.join("queues.log")).unwrap();

    let app = spawn_app(settings).await;
    let sizes = app
        .admin_client()
        .await
        .get_queue_stats(proto::QueueStatsRequest {
            filter: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .sizes;
    let mut known: Vec<&String> = sizes.keys().collect();
    known.sort();
    let mut expected: Vec<&String> = before.queue_map.values().collect();
    expected.sort();
    assert_eq!(known, expected, "every queue the graph names exists again");
    let after = app.diff("lost", &synthetic_dag(4, "lost")).await.unwrap();
    assert_eq!(after.queue_map, before.queue_map);
    app.stop().await;
}
