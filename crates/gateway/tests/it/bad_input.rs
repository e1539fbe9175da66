//! Every kind of bad request gets a JSON error with its code and status, is counted where the
//! spec says, and the Gateway keeps serving.

use crate::support::{
    gateway_settings, metrics, post, spawn_dagmanager, spawn_gateway, submission,
};
use serde_json::{Value, json};
use test_support::{http, synthetic_dag};

#[tokio::test]
async fn each_kind_of_bad_request_gets_its_code_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let dagmanager = spawn_dagmanager(dir.path(), 0).await;
    let mut settings = gateway_settings(dir.path(), dagmanager.addr);
    settings.max_body_bytes = 64 * 1024;
    let gateway = spawn_gateway(settings).await;
    let url = |path: &str| format!("http://{}{path}", gateway.addr);
    let dag = synthetic_dag(3, "bad");
    let good = submission(&dag, &["w1"]);
    for (what, body, status, code) in bad_requests(&dag) {
        let (got, text) = http("POST", &url("/strategies"), &body).await.unwrap();
        let answer: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{what}: {answer}"
        );
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    let (status, text) = http("GET", &url("/no/such/route"), "").await.unwrap();
    assert_eq!(status, 404);
    assert!(text.contains("E_NOT_FOUND"));
    let (status, text) = http("DELETE", &url("/strategies"), "").await.unwrap();
    assert_eq!(status, 405);
    assert!(text.contains("E_METHOD_NOT_ALLOWED"));
    let (status, text) = http("GET", &url("/strategies/unknown/status"), "")
        .await
        .unwrap();
    assert_eq!(status, 404, "{text}");

    let exposition = metrics(gateway.addr).await;
    assert_eq!(
        exposition.value("nodeid_checksum_mismatch_total", &[("source", "gateway")]),
        Some(1.0)
    );
    assert_eq!(
        exposition.value("nodeid_mismatch_total", &[("node_type", "Indicator")]),
        Some(1.0)
    );
    assert_eq!(
        exposition.value("nodeid_missing_fields_total", &[("field", "node_type")]),
        Some(1.0)
    );
    let (status, ack) = post(gateway.addr, "/strategies", &good).await;
    assert_eq!(
        (status, ack["status"].as_str()),
        (202, Some("completed")),
        "the Gateway keeps serving"
    );

    let (_, text) = test_support::http_get(&url("/metrics")).await.unwrap();
    assert_the_catalogue_is_complete(&text);
    gateway.stop().await;
    dagmanager.stop().await;
}

/// Each kind of bad `POST /strategies` body, built from a good `dag`: what it is, the body, the
/// status and the code it gets.
fn bad_requests(dag: &Value) -> Vec<(&'static str, String, u16, &'static str)> {
    let good = submission(dag, &["w1"]);
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let mut wrong_id = dag.clone();
    wrong_id["nodes"][1]["period"] = json!(99);
    let mut missing_type = dag.clone();
    missing_type["nodes"][2]["node_type"] = Value::Null;
    let mut legacy = good.clone();
    legacy["world_id"] = json!("w1");
    legacy.as_object_mut().unwrap().remove("world_ids");

    vec![
        ("not JSON", "{\"dag_json\": ".into(), 400, "E_INVALID_JSON"),
        (
            "bad base64",
            with("dag_json", json!("%%% not base64 %%%")).to_string(),
            400,
            "E_DAG_DECODE",
        ),
        (
            "missing world_ids",
            {
                let mut body = good.clone();
                body.as_object_mut().unwrap().remove("world_ids");
                body.to_string()
            },
            422,
            "E_WORLD_IDS_REQUIRED",
        ),
        (
            "empty world_ids",
            with("world_ids", json!([])).to_string(),
            422,
            "E_WORLD_IDS_REQUIRED",
        ),
        (
            "legacy world_id",
            legacy.to_string(),
            422,
            "E_WORLD_ID_DEPRECATED",
        ),
        (
            "node id mismatch",
            {
                let mut body = submission(&wrong_id, &["w1"]);
                body["node_ids_crc32"] = good["node_ids_crc32"].clone();
                body.to_string()
            },
            400,
            "E_NODE_ID_MISMATCH",
        ),
        (
            "missing node field",
            submission(&missing_type, &["w1"]).to_string(),
            400,
            "E_NODE_ID_FIELDS",
        ),
        (
            "CRC mismatch",
            with("node_ids_crc32", json!(7)).to_string(),
            400,
            "E_CHECKSUM_MISMATCH",
        ),
        (
            "unknown schema version",
            {
                let mut doc = dag.clone();
                doc["schema_version"] = json!("v7");
                submission(&doc, &["w1"]).to_string()
            },
            400,
            "E_SCHEMA_INVALID",
        ),
        (
            "oversized body",
            with("padding", json!("x".repeat(70 * 1024))).to_string(),
            413,
            "E_PAYLOAD_TOO_LARGE",
        ),
    ]
}

/// Every family of the Gateway's catalogue, now that each has a series; the control-bus
/// families belong to a world service this system does not have yet.
fn assert_the_catalogue_is_complete(text: &str) {
    let exposition = test_support::Exposition::parse(text).unwrap();
    test_support::assert_catalogue(
        &exposition,
        &[
            ("gateway_e2e_latency_p95", "gauge", &[]),
            (
                "gateway_request_duration_seconds",
                "histogram",
                &["route", "method", "status"],
            ),
            ("lost_requests_total", "counter", &[]),
            ("dagclient_breaker_open_total", "counter", &[]),
            ("dagclient_breaker_state", "gauge", &[]),
            ("dagclient_breaker_failures", "gauge", &[]),
            ("nodeid_checksum_mismatch_total", "counter", &["source"]),
            ("nodeid_mismatch_total", "counter", &["node_type"]),
            (
                "nodeid_missing_fields_total",
                "counter",
                &["field", "node_type"],
            ),
            ("gateway_submissions_total", "counter", &["outcome"]),
            ("gateway_strategies", "gauge", &["state"]),
        ],
    );
    test_support::assert_process_and_build_info(&exposition, "gateway");
    test_support::assert_promtool_clean(text);
}
