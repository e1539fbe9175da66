//! Every kind of bad input gets its status and a message naming the node or field, is counted
//! in `diff_failures_total`, and the server keeps serving.

use crate::support::{request, spawn_app, temp_dir, test_settings};
use dagclient::ClientError;
use proto::DiffRequest;
use serde_json::{Value, json};
use test_support::{node, synthetic_dag, with_field};
use tonic::Code;

fn with_top(mut dag: Value, key: &str, value: Value) -> Value {
    dag[key] = value;
    dag
}

/// One bad request: what it is, the request, the status code it gets, and fragments its message
/// carries.
type BadRequest = (&'static str, DiffRequest, Code, Vec<String>);

/// Each kind of bad DAG or request, built from `good` (a valid three-node DAG), for a server
/// with a 64 KiB and 40-node limit.
fn bad_requests(good: &Value) -> Vec<BadRequest> {
    let id = |i: usize| good["nodes"][i]["node_id"].as_str().unwrap().to_owned();
    let orphan = node("X", 60, 1, json!({}), &["blake3:ffff".to_owned()], &[], "");
    let cycle = json!({"schema_version": "v1", "nodes": [
        {"node_type": "X", "node_id": "blake3:aaaa", "inputs": ["blake3:bbbb"]},
        {"node_type": "Y", "node_id": "blake3:bbbb", "inputs": ["blake3:aaaa"]},
    ]});
    let huge =
        json!({"schema_version": "v1", "nodes": [], "meta": {"padding": "x".repeat(70 * 1024)}});

    vec![
        (
            "malformed JSON",
            DiffRequest {
                dag_json: "{\"nodes\": [".into(),
                ..request("s", good)
            },
            Code::InvalidArgument,
            vec!["E_INVALID_JSON".into()],
        ),
        (
            "unknown schema_version",
            request("s", &with_top(good.clone(), "schema_version", json!("v9"))),
            Code::InvalidArgument,
            vec!["E_SCHEMA_INVALID".into(), "v9".into()],
        ),
        (
            "node id that does not match its fields",
            request("s", &with_field(good.clone(), 1, "period", json!(99))),
            Code::InvalidArgument,
            vec!["E_NODE_ID_MISMATCH".into(), id(1)],
        ),
        (
            "missing node field",
            request("s", &with_field(good.clone(), 2, "node_type", json!(null))),
            Code::InvalidArgument,
            vec!["E_NODE_ID_FIELDS".into(), id(2), "node_type".into()],
        ),
        (
            "CRC mismatch",
            request("s", &with_top(good.clone(), "node_ids_crc32", json!(12345))),
            Code::InvalidArgument,
            vec!["E_CHECKSUM_MISMATCH".into(), "12345".into()],
        ),
        (
            "cycle",
            request("s", &cycle),
            Code::InvalidArgument,
            vec!["E_CYCLE".into(), "blake3:aaaa".into(), "blake3:bbbb".into()],
        ),
        (
            "dependency not in the DAG",
            request(
                "s",
                &json!({"schema_version": "v1", "nodes": [orphan.clone()]}),
            ),
            Code::InvalidArgument,
            vec![
                "E_MISSING_DEPENDENCY".into(),
                "blake3:ffff".into(),
                orphan["node_id"].as_str().unwrap().to_owned(),
            ],
        ),
        (
            "DAG over the byte limit",
            request("s", &huge),
            Code::ResourceExhausted,
            vec!["E_TOO_LARGE".into(), "65536".into()],
        ),
        (
            "DAG over the node limit",
            request("s", &synthetic_dag(41, "many")),
            Code::ResourceExhausted,
            vec!["E_TOO_LARGE".into(), "node count".into()],
        ),
        (
            "empty strategy id",
            request("", good),
            Code::InvalidArgument,
            vec!["E_STRATEGY_ID_REQUIRED".into()],
        ),
        (
            "unknown execution domain",
            DiffRequest {
                world_id: "w".into(),
                execution_domain: "moon".into(),
                ..request("s", good)
            },
            Code::InvalidArgument,
            vec!["E_EXECUTION_DOMAIN_INVALID".into(), "moon".into()],
        ),
    ]
}

#[tokio::test]
async fn each_kind_of_bad_dag_is_refused_with_its_code_and_counted_and_serving_goes_on() {
    let (_dir, path) = temp_dir();
    let mut settings = test_settings(&path);
    settings.max_dag_bytes = 64 * 1024;
    settings.max_nodes = 40;
    let app = spawn_app(settings).await;

    let good = synthetic_dag(3, "bad");
    let cases = bad_requests(&good);
    let count = cases.len();
    for (what, req, code, fragments) in cases {
        let error = app.diff_request(req).await.expect_err(what);
        let ClientError::Status(status) = error else {
            panic!("{what}: expected a status, got {error}");
        };
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        for fragment in fragments {
            assert!(
                status.message().contains(&fragment),
                "{what}: {:?} lacks {fragment:?}",
                status.message()
            );
        }
    }

    let metrics = app.metrics().await;
    assert_eq!(
        metrics.value("diff_requests_total", &[]),
        Some(count as f64)
    );
    assert_eq!(
        metrics.value("diff_failures_total", &[]),
        Some(count as f64)
    );
    assert!(
        app.diff("s", &good).await.is_ok(),
        "the server keeps serving"
    );
    assert_eq!(
        app.metrics().await.value("diff_failures_total", &[]),
        Some(count as f64)
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_tag_query_modes_and_queue_filters_are_invalid_arguments() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    let mut tags = proto::tag_query_client::TagQueryClient::new(app.channel().await);
    let status = tags
        .get_queues(proto::TagQueryRequest {
            tags: vec!["btc".into()],
            interval: 60,
            match_mode: "some".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .admin_client()
        .await
        .get_queue_stats(proto::QueueStatsRequest {
            filter: "tag=btc;interval=1h".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("1h"), "{}", status.message());
    app.stop().await;
}
