//! `qmtl submit`: builds the body an SDK sends to `POST /strategies` and sends it.

use anyhow::Context as _;
use base64::Engine as _;
use kit::http::{BaseUrl, Method};
use serde_json::{Value, json};
use std::time::Duration;

/// How long one exchange with a service may take: well past the Gateway's diff budget, which
/// bounds how long `POST /strategies` waits before it answers.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The submission body for a DAG text: base64 of it, the CRC32 of its node ids in submission
/// order, the worlds and the compute context.
pub(crate) fn body(
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

/// GETs a path below a service's address (`host:port` or a URL); the status and the answer's
/// text.
pub(crate) async fn get(address: &str, path: &str) -> anyhow::Result<(u16, String)> {
    send(address, Method::GET, path, None).await
}

/// POSTs JSON to a path below the Gateway's address; the status and the answer's text.
pub(crate) async fn post(gateway: &str, path: &str, body: &Value) -> anyhow::Result<(u16, String)> {
    send(gateway, Method::POST, path, Some(body)).await
}

async fn send(
    address: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let base = BaseUrl::parse(address)?;
    let response = kit::http::client(TIMEOUT)?
        .request(method, base.join(path))
        .header("content-type", "application/json")
        .body(body.map(Value::to_string).unwrap_or_default())
        .send()
        .await
        .with_context(|| format!("could not reach {base}"))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
