//! TagQuery, AdminService, HealthCheck and the admin HTTP endpoints.

use crate::support::{spawn_app, temp_dir, test_settings};
use serde_json::{Value, json};
use test_support::{http, http_get, node, synthetic_dag};

#[tokio::test]
async fn tag_queries_match_any_or_all_tags_at_an_interval() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let btc = node(
        "PriceFeed",
        60,
        1,
        json!({"s": "btc"}),
        &[],
        &["btc", "spot"],
        "p",
    );
    let eth = node(
        "PriceFeed",
        60,
        1,
        json!({"s": "eth"}),
        &[],
        &["eth", "spot"],
        "p",
    );
    let slow = node(
        "PriceFeed",
        3600,
        1,
        json!({"s": "btc"}),
        &[],
        &["btc", "spot"],
        "p",
    );
    let diff = app
        .diff(
            "t",
            &json!({"schema_version": "v1", "nodes": [btc, eth, slow]}),
        )
        .await
        .unwrap();
    let mut client = proto::tag_query_client::TagQueryClient::new(app.channel().await);
    let mut ask = async |tags: &[&str], interval: i64, mode: &str| -> Vec<String> {
        let reply = client
            .get_queues(proto::TagQueryRequest {
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                interval,
                match_mode: mode.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            reply.queues.iter().all(|q| q.global),
            "no world, so the queues are global"
        );
        reply.queues.into_iter().map(|q| q.queue).collect()
    };
    assert_eq!(ask(&["spot"], 60, "any").await.len(), 2);
    assert_eq!(ask(&["btc", "spot"], 60, "all").await.len(), 1);
    assert_eq!(ask(&["btc", "eth"], 60, "").await.len(), 2);
    assert_eq!(ask(&["btc"], 3600, "any").await.len(), 1);
    assert!(ask(&["sol"], 60, "any").await.is_empty());
    let btc_queues = ask(&["btc"], 60, "all").await;
    assert!(diff.queue_map.values().any(|t| *t == btc_queues[0]));
    app.stop().await;
}

#[tokio::test]
async fn queue_stats_filter_by_tag_and_interval() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    app.diff("q", &synthetic_dag(5, "stats")).await.unwrap();
    let mut admin = app.admin_client().await;
    let all = admin
        .get_queue_stats(proto::QueueStatsRequest {
            filter: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.sizes.len(), 5);
    let ohlcv = admin
        .get_queue_stats(proto::QueueStatsRequest {
            filter: "tag=ohlcv;interval=60".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ohlcv.sizes.len(),
        1,
        "only the price feed carries the ohlcv tag"
    );
    let none = admin
        .get_queue_stats(proto::QueueStatsRequest {
            filter: "tag=ohlcv;interval=3600".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.sizes.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn redo_diff_answers_the_whole_queue_map_for_the_sentinels_strategy() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let dag = synthetic_dag(150, "redo");
    let first = app.diff("r", &dag).await.unwrap();
    let redo = app
        .admin_client()
        .await
        .redo_diff(proto::RedoDiffRequest {
            sentinel_id: "r-sentinel".into(),
            dag_json: dag.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redo.sentinel_id, "r-sentinel");
    assert_eq!(redo.version, "v1");
    assert_eq!(
        redo.queue_map
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
        first.queue_map
    );
    app.stop().await;
}

#[tokio::test]
async fn health_status_and_admin_endpoints_answer() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let reply = proto::health_check_client::HealthCheckClient::new(app.channel().await)
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.neo4j.as_str(), reply.state.as_str()),
        ("ok", "running")
    );

    assert_eq!(http_get(&app.admin_url("/healthz")).await.unwrap().0, 200);
    test_support::assert_eventually!(
        http_get(&app.admin_url("/readyz")).await.unwrap().0 == 200,
        std::time::Duration::from_secs(5),
        "the service never became ready"
    );
    app.diff("h", &synthetic_dag(2, "status")).await.unwrap();
    let (code, body) = http_get(&app.admin_url("/status")).await.unwrap();
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["graph_store"], "ok");
    assert_eq!(status["compute_nodes"], 2);
    let (code, body) = http("POST", &app.admin_url("/admin/gc-trigger"), "")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["orphans"], 0);
    let (code, body) = http_get(&app.admin_url("/no-such-route")).await.unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("E_NOT_FOUND"));
    app.stop().await;
}
