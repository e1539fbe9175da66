//! The admin routes merged into the API: `/healthz` answers while the process runs, `/readyz`
//! while the store can take submissions (whatever the DAG Manager's state), `/health` as before.

use crate::support::{gateway_settings, get, spawn_gateway};
use std::time::Duration;
use test_support::assert_eventually;

#[tokio::test]
async fn healthz_and_readyz_answer_200_while_the_dagmanager_is_down() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: submissions are still accepted, so the Gateway is ready.
    let gateway = spawn_gateway(gateway_settings(dir.path(), "127.0.0.1:9".parse().unwrap())).await;
    let (status, body) = get(gateway.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, Some("ok\n")));
    let (status, body) = get(gateway.addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, Some("ready\n")));
    let (status, health) = get(gateway.addr, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["service"], "gateway");
    assert_eq!(health["status"], "degraded");
    gateway.stop().await;
}

#[tokio::test]
async fn readyz_answers_503_once_the_submission_store_cannot_take_writes_and_healthz_stays_200() {
    let dir = tempfile::tempdir().unwrap();
    let settings = gateway_settings(dir.path(), "127.0.0.1:9".parse().unwrap());
    let log = settings.data_dir.join("submissions.log");
    let gateway = spawn_gateway(settings).await;
    let (status, _) = get(gateway.addr, "/readyz").await;
    assert_eq!(status, 200);

    std::fs::remove_file(&log).unwrap();
    assert_eventually!(
        get(gateway.addr, "/readyz").await == (503, "not ready\n".into()),
        Duration::from_secs(10),
        "/readyz still answers ready without the store's log"
    );
    let (status, body) = get(gateway.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, Some("ok\n")));
    gateway.stop().await;
}
