//! The happy path: a submission is carried to `completed` with its queue map.

use crate::support::{
    gateway_settings, get, metrics, post, spawn_dagmanager, spawn_gateway, submission,
};
use serde_json::{Value, json};
use test_support::{node, synthetic_dag, testdata};

#[tokio::test]
async fn a_submission_completes_with_its_queue_map_in_the_202() {
    let dir = tempfile::tempdir().unwrap();
    let dagmanager = spawn_dagmanager(dir.path(), 0).await;
    let gateway = spawn_gateway(gateway_settings(dir.path(), dagmanager.addr)).await;
    let dag = synthetic_dag(5, "submit");
    let (status, ack) = post(gateway.addr, "/strategies", &submission(&dag, &["w1"])).await;
    assert_eq!(status, 202, "{ack}");
    assert_eq!(ack["status"], "completed", "{ack}");
    let strategy_id = ack["strategy_id"].as_str().unwrap().to_owned();
    assert_eq!(ack["sentinel_id"], format!("{strategy_id}-sentinel"));
    let queue_map = ack["queue_map"].as_object().unwrap();
    assert_eq!(queue_map.len(), 5);
    for node in dag["nodes"].as_array().unwrap() {
        let queues = queue_map[node["node_id"].as_str().unwrap()]
            .as_array()
            .unwrap();
        assert_eq!(queues.len(), 1);
        assert!(
            queues[0]["queue"]
                .as_str()
                .unwrap()
                .starts_with("w1.backtest."),
            "{queues:?}"
        );
        assert_eq!(queues[0]["global"], false);
    }
    assert_eq!(ack["downgraded"], false);

    let (code, state) = get(gateway.addr, &format!("/strategies/{strategy_id}/status")).await;
    assert_eq!((code, state["status"].as_str()), (200, Some("completed")));
    let (code, full) = get(gateway.addr, &format!("/strategies/{strategy_id}")).await;
    assert_eq!(code, 200);
    assert_eq!(full["queue_map"], ack["queue_map"]);

    let exposition = metrics(gateway.addr).await;
    assert_eq!(
        exposition.value("gateway_submissions_total", &[("outcome", "completed")]),
        Some(1.0)
    );
    assert_eq!(exposition.value("lost_requests_total", &[]), Some(0.0));
    assert_eq!(exposition.value("dagclient_breaker_state", &[]), Some(0.0));
    assert!(exposition.value("gateway_e2e_latency_p95", &[]).unwrap() > 0.0);
    assert_eq!(
        exposition.value(
            "gateway_request_duration_seconds_count",
            &[
                ("route", "/strategies"),
                ("method", "POST"),
                ("status", "202")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        exposition.value(
            "gateway_request_duration_seconds_count",
            &[
                ("route", "/strategies/{strategy_id}/status"),
                ("method", "GET"),
                ("status", "200")
            ]
        ),
        Some(1.0),
        "routes are labelled by template, never by raw path"
    );
    gateway.stop().await;
    dagmanager.stop().await;
}

#[tokio::test]
async fn two_strategies_sharing_a_node_get_the_same_queue_and_a_duplicate_gets_409() {
    let dir = tempfile::tempdir().unwrap();
    let dagmanager = spawn_dagmanager(dir.path(), 0).await;
    let gateway = spawn_gateway(gateway_settings(dir.path(), dagmanager.addr)).await;
    let price = node(
        "PriceFeed",
        60,
        20,
        json!({"symbol": "BTC"}),
        &[],
        &["btc"],
        "price-v1",
    );
    let price_id = price["node_id"].as_str().unwrap().to_owned();
    let fast = node(
        "SMA",
        60,
        5,
        json!({"window": 5}),
        std::slice::from_ref(&price_id),
        &["btc"],
        "sma-v1",
    );
    let slow = node(
        "SMA",
        60,
        20,
        json!({"window": 20}),
        std::slice::from_ref(&price_id),
        &["btc"],
        "sma-v1",
    );
    let first = json!({"schema_version": "v1", "nodes": [price.clone(), fast]});
    let second = json!({"schema_version": "v1", "nodes": [price, slow]});
    let (_, a) = post(gateway.addr, "/strategies", &submission(&first, &["w1"])).await;
    let (_, b) = post(gateway.addr, "/strategies", &submission(&second, &["w1"])).await;
    assert_eq!(
        (a["status"].as_str(), b["status"].as_str()),
        (Some("completed"), Some("completed"))
    );
    assert_ne!(a["strategy_id"], b["strategy_id"]);
    assert_eq!(a["queue_map"][&price_id], b["queue_map"][&price_id]);

    let (status, duplicate) = post(gateway.addr, "/strategies", &submission(&first, &["w2"])).await;
    assert_eq!(status, 409, "{duplicate}");
    assert_eq!(duplicate["code"], "E_DUPLICATE");
    assert_eq!(duplicate["strategy_id"], a["strategy_id"]);
    let exposition = metrics(gateway.addr).await;
    assert_eq!(
        exposition.value(
            "gateway_request_duration_seconds_count",
            &[
                ("route", "/strategies"),
                ("method", "POST"),
                ("status", "409")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        exposition.value("gateway_submissions_total", &[("outcome", "completed")]),
        Some(2.0)
    );
    gateway.stop().await;
    dagmanager.stop().await;
}

#[tokio::test]
async fn the_python_sdk_submission_is_accepted_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let dagmanager = spawn_dagmanager(dir.path(), 0).await;
    let gateway = spawn_gateway(gateway_settings(dir.path(), dagmanager.addr)).await;
    let body: Value = serde_json::from_str(&testdata("sdk-submit-10.json")).unwrap();
    let (status, ack) = post(gateway.addr, "/strategies", &body).await;
    assert_eq!(status, 202, "{ack}");
    assert_eq!(ack["status"], "completed", "{ack}");
    assert_eq!(ack["node_ids_crc32"], body["node_ids_crc32"]);
    let (status, dry) = post(gateway.addr, "/strategies/dry-run", &body).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        dry["queue_map"].as_object().unwrap().len(),
        ack["queue_map"].as_object().unwrap().len()
    );
    gateway.stop().await;
    dagmanager.stop().await;
}

#[tokio::test]
async fn queues_by_tag_answers_the_queues_of_the_world_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let dagmanager = spawn_dagmanager(dir.path(), 0).await;
    let gateway = spawn_gateway(gateway_settings(dir.path(), dagmanager.addr)).await;
    let dag = synthetic_dag(3, "tags");
    post(
        gateway.addr,
        "/strategies",
        &submission(&dag, &["w1", "w2"]),
    )
    .await;
    let (status, answer) = get(gateway.addr, "/queues/by_tag?tags=ohlcv&interval=60&match_mode=any&world_id=w1&execution_domain=backtest").await;
    assert_eq!(status, 200, "{answer}");
    let queues = answer["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 1, "{answer}");
    assert!(
        queues[0]["queue"]
            .as_str()
            .unwrap()
            .starts_with("w1.backtest.")
    );
    let (status, health) = get(gateway.addr, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["dagmanager"]["breaker"], "closed");
    gateway.stop().await;
    dagmanager.stop().await;
}

#[tokio::test]
async fn a_tag_query_node_gets_the_queues_of_the_nodes_its_tags_match() {
    let dir = tempfile::tempdir().unwrap();
    let dagmanager = spawn_dagmanager(dir.path(), 0).await;
    let gateway = spawn_gateway(gateway_settings(dir.path(), dagmanager.addr)).await;
    let producer = synthetic_dag(2, "producer");
    let (_, produced) = post(gateway.addr, "/strategies", &submission(&producer, &["w1"])).await;
    assert_eq!(produced["status"], "completed", "{produced}");
    let price_id = producer["nodes"][0]["node_id"].as_str().unwrap();
    let price_queue = produced["queue_map"][price_id][0]["queue"].clone();

    let query = node(
        "TagQueryNode",
        60,
        10,
        json!({"query_tags": ["ohlcv"], "match_mode": "any"}),
        &[],
        &["consumer"],
        "tq-v1",
    );
    let query_id = query["node_id"].as_str().unwrap().to_owned();
    let consumer = json!({"schema_version": "v1", "nodes": [query]});
    let (status, ack) = post(gateway.addr, "/strategies", &submission(&consumer, &["w1"])).await;
    assert_eq!(
        (status, ack["status"].as_str()),
        (202, Some("completed")),
        "{ack}"
    );
    let resolved = ack["queue_map"][&query_id].as_array().unwrap();
    assert!(
        resolved.iter().any(|q| q["queue"] == price_queue),
        "the tag query resolves to the ohlcv price feed's queue: {resolved:?}"
    );
    gateway.stop().await;
    dagmanager.stop().await;
}
