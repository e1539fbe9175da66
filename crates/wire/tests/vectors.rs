//! Every compatibility vector the Python reference computed, reproduced byte for byte.

use serde_json::Value;
use wire::{
    DagLimits, QueueNamespace, compute_key, crc32_chain, node_id_of, parse_dag, queue_name,
};

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/qmtl-compat.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("testdata/qmtl-compat.json"))
        .expect("vectors parse")
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

#[test]
fn node_ids_match_every_python_vector() {
    let vectors = vectors();
    let cases = vectors["nodeid"].as_array().expect("nodeid cases");
    assert!(cases.len() >= 60);
    for (i, case) in cases.iter().enumerate() {
        let computed = node_id_of(&case["node"]).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(
            computed,
            text(&case["node_id"]),
            "nodeid case {i}: {}",
            case["node"]
        );
    }
}

#[test]
fn crc32_chains_match_every_python_vector() {
    let vectors = vectors();
    for (i, case) in vectors["crc32"]
        .as_array()
        .expect("crc32 cases")
        .iter()
        .enumerate()
    {
        let ids: Vec<&str> = case["node_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(text)
            .collect();
        assert_eq!(
            u64::from(crc32_chain(ids)),
            case["crc32"].as_u64().unwrap(),
            "crc32 case {i}"
        );
    }
}

#[test]
fn compute_keys_match_every_python_vector() {
    let vectors = vectors();
    for (i, case) in vectors["compute_key"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let key = compute_key(
            text(&case["node_hash"]),
            text(&case["world_id"]),
            text(&case["execution_domain"]),
            text(&case["as_of"]),
            text(&case["partition"]),
        );
        assert_eq!(key, text(&case["compute_key"]), "compute_key case {i}");
    }
}

#[test]
fn queue_names_match_every_python_vector() {
    let vectors = vectors();
    for (i, case) in vectors["topic_name"].as_array().unwrap().iter().enumerate() {
        let namespace = match &case["namespace"] {
            Value::String(prefix) => Some(QueueNamespace::Prefix(prefix.clone())),
            Value::Object(map) => Some(QueueNamespace::WorldDomain {
                world: text(&map["world"]).to_owned(),
                domain: text(&map["domain"]).to_owned(),
            }),
            _ => None,
        };
        let existing: Vec<&str> = case["existing"]
            .as_array()
            .unwrap()
            .iter()
            .map(text)
            .collect();
        let name = queue_name(
            text(&case["asset"]),
            text(&case["node_type"]),
            text(&case["node_id"]),
            text(&case["version"]),
            false,
            namespace.as_ref(),
            |candidate| existing.contains(&candidate),
        );
        assert_eq!(name, text(&case["topic"]), "topic case {i}");
    }
}

#[test]
fn sdk_serialised_dags_parse_verify_and_order() {
    for file in ["sdk-dag-10.json", "sdk-dag-100.json"] {
        let path = format!("{}/../../testdata/{file}", env!("CARGO_MANIFEST_DIR"));
        let dag = parse_dag(
            &std::fs::read_to_string(path).unwrap(),
            DagLimits::default(),
            true,
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        let order = wire::topological_order(&dag).unwrap();
        assert_eq!(order.len(), dag.nodes.len(), "{file}");
    }
}

#[test]
fn a_cycle_is_refused_naming_the_nodes_on_it() {
    let a = "blake3:aa";
    let b = "blake3:bb";
    let doc = serde_json::json!({"schema_version": "v1", "nodes": [
        {"node_type": "X", "node_id": a, "inputs": [b]},
        {"node_type": "Y", "node_id": b, "inputs": [a]},
    ]});
    let dag = parse_dag(&doc.to_string(), DagLimits::default(), false).unwrap();
    let err = wire::topological_order(&dag).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(a) && message.contains(b), "{message}");
    assert_eq!(err.code().as_str(), "E_CYCLE");
}

#[test]
fn a_field_of_the_wrong_type_is_refused_naming_the_node_and_field() {
    use wire::{DagError, ErrorCode};
    let parse = |doc: serde_json::Value| parse_dag(&doc.to_string(), DagLimits::default(), false);
    let node = |extra: serde_json::Value| {
        let mut node = serde_json::json!({"node_type": "SMA", "node_id": "blake3:aa"});
        node.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::json!({"schema_version": "v1", "nodes": [node]})
    };
    for (extra, field) in [
        (serde_json::json!({"interval": "soon"}), "interval"),
        (serde_json::json!({"period": [1]}), "period"),
        (serde_json::json!({"inputs": "blake3:bb"}), "inputs"),
        (serde_json::json!({"dependencies": [1, 2]}), "dependencies"),
        (serde_json::json!({"code_hash": 7}), "code_hash"),
        (serde_json::json!({"tags": {"a": 1}}), "tags"),
    ] {
        match parse(node(extra.clone())) {
            Err(DagError::NodeIdFields {
                node, field: got, ..
            }) => {
                assert_eq!((node.as_str(), got), ("blake3:aa", field), "{extra}");
            }
            other => panic!("{extra}: {other:?}"),
        }
    }
    let not_object =
        parse(serde_json::json!({"nodes": [{"node_type": "A", "node_id": "x"}, 5]})).unwrap_err();
    assert!(
        not_object.to_string().contains("nodes[1] is not an object"),
        "{not_object}"
    );
    assert_eq!(
        parse(serde_json::json!([1, 2])).unwrap_err().code(),
        ErrorCode::SchemaInvalid
    );
    assert_eq!(
        parse(serde_json::json!({"nodes": "many"}))
            .unwrap_err()
            .code(),
        ErrorCode::SchemaInvalid
    );
    let truncated = parse_dag("{\"nodes\": [", DagLimits::default(), false).unwrap_err();
    assert_eq!(truncated.code(), ErrorCode::InvalidJson);
}

#[test]
fn integers_arrive_as_numbers_numeric_strings_or_integral_floats() {
    let base = serde_json::json!({"node_type": "SMA", "interval": 60, "period": 5, "params": {}});
    let id = node_id_of(&base).unwrap();
    for variant in [
        serde_json::json!({"node_type": "SMA", "interval": "60", "period": " 5 ", "params": {}}),
        serde_json::json!({"node_type": "SMA", "interval": 60.0, "period": 5, "params": {}}),
    ] {
        assert_eq!(node_id_of(&variant).unwrap(), id, "{variant}");
    }
}

/// Of several nodes whose ids do not match, the first in document order is named.
#[test]
fn a_dag_with_bad_nodes_reports_the_first_in_document_order() {
    let node = |i: usize| {
        let mut node = serde_json::json!({
            "node_type": "SMA", "interval": 60, "period": i, "params": {"i": i},
            "inputs": [], "code_hash": "c", "schema_hash": "s", "schema_compat_id": "s1",
        });
        node["node_id"] = Value::from(node_id_of(&node).unwrap());
        node
    };
    let mut nodes: Vec<Value> = (0..600).map(node).collect();
    let dag = |nodes: &[Value]| serde_json::json!({"schema_version": "v1", "nodes": nodes});
    assert_eq!(
        parse_dag(&dag(&nodes).to_string(), DagLimits::default(), true)
            .unwrap()
            .nodes
            .len(),
        600
    );
    let forge = |node: &mut Value| node["period"] = Value::from(9999);
    forge(&mut nodes[550]);
    let late = parse_dag(&dag(&nodes).to_string(), DagLimits::default(), true).unwrap_err();
    assert!(
        late.to_string()
            .contains(nodes[550]["node_id"].as_str().unwrap()),
        "{late}"
    );
    forge(&mut nodes[10]);
    let early = parse_dag(&dag(&nodes).to_string(), DagLimits::default(), true).unwrap_err();
    assert!(
        early
            .to_string()
            .contains(nodes[10]["node_id"].as_str().unwrap()),
        "{early}"
    );
}

/// Nodes are checked as they are read, yet a syntax error anywhere still wins over a bad node,
/// and of a node with a bad field and an earlier node with a wrong id, the earlier is named.
#[test]
fn a_bad_node_is_reported_only_after_the_whole_document_reads() {
    let good = |period: i64| {
        let mut node = serde_json::json!({
            "node_type": "SMA", "interval": 60, "period": period, "params": {},
            "inputs": [], "code_hash": "c", "schema_compat_id": "s1",
        });
        node["node_id"] = Value::from(node_id_of(&node).unwrap());
        node
    };
    let missing_type = serde_json::json!({"node_id": "blake3:aa", "interval": 60});
    let text = serde_json::json!({"nodes": [good(1), missing_type.clone(), good(2)]}).to_string();
    assert_eq!(
        parse_dag(&text, DagLimits::default(), true)
            .unwrap_err()
            .code(),
        wire::ErrorCode::NodeIdFields
    );
    let truncated = &text[..text.len() - 3];
    assert_eq!(
        parse_dag(truncated, DagLimits::default(), true)
            .unwrap_err()
            .code(),
        wire::ErrorCode::InvalidJson
    );
    let mut forged = good(3);
    forged["period"] = Value::from(4);
    let text = serde_json::json!({"nodes": [good(1), forged.clone(), missing_type]});
    match parse_dag(&text.to_string(), DagLimits::default(), true) {
        Err(wire::DagError::NodeIdMismatch { node, .. }) => {
            assert_eq!(node, forged["node_id"].as_str().unwrap())
        }
        other => panic!("{other:?}"),
    }
    let too_many = serde_json::json!({"nodes": [good(1), good(2), 5]}).to_string();
    let limits = DagLimits {
        max_nodes: 2,
        ..DagLimits::default()
    };
    assert_eq!(
        parse_dag(&too_many, limits, true).unwrap_err().code(),
        wire::ErrorCode::TooLarge
    );
}
