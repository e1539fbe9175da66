//! `qmtl submit`: builds the body an SDK sends to `POST /strategies` and sends it.

use anyhow::Context as _;
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// The submission body for a DAG text: base64 of it, the CRC32 of its node ids in submission
/// order, the worlds and the compute context.
pub fn body(
    dag_json: &str,
    world_ids: &[String],
    execution_domain: &str,
    as_of: &str,
) -> anyhow::Result<Value> {
    let dag = wire::parse_dag(dag_json, wire::DagLimits::default(), true)
        .context("the DAG file is not a valid DAG")?;
    Ok(json!({
        "dag_json": base64::engine::general_purpose::STANDARD.encode(dag_json),
        "meta": null,
        "node_ids_crc32": dag.crc32(),
        "world_ids": world_ids,
        "context": {"execution_domain": execution_domain, "as_of": as_of},
    }))
}

/// GETs a path from the Gateway; the status and the answer's text.
pub async fn get(gateway: &str, path: &str) -> anyhow::Result<(u16, String)> {
    send(gateway, hyper::Method::GET, path, None).await
}

/// POSTs JSON to the Gateway; the status and the answer's text.
pub async fn post(gateway: &str, path: &str, body: &Value) -> anyhow::Result<(u16, String)> {
    send(gateway, hyper::Method::POST, path, Some(body)).await
}

async fn send(
    gateway: &str,
    method: hyper::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let base = if gateway.contains("://") {
        gateway.to_owned()
    } else {
        format!("http://{gateway}")
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(Value::to_string).unwrap_or_default(),
        )))?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("could not reach {base}"))?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
