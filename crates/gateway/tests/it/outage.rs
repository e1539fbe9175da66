//! A DAG Manager outage: submissions are still accepted durably, the breaker opens after three
//! failures, and when the DAG Manager returns the probe closes it and every queued strategy
//! completes.

use crate::support::{
    gateway_settings, get, metrics, post, spawn_dagmanager, spawn_gateway, submission,
};
use std::time::Duration;
use test_support::{assert_eventually, synthetic_dag};

#[tokio::test]
async fn submissions_wait_out_a_dagmanager_outage_and_complete_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let dagmanager = spawn_dagmanager(dir.path(), 0).await;
    let port = dagmanager.addr.port();
    let mut settings = gateway_settings(dir.path(), dagmanager.addr);
    settings.diff_budget_ms = 300;
    let gateway = spawn_gateway(settings).await;
    let (_, first) = post(
        gateway.addr,
        "/strategies",
        &submission(&synthetic_dag(3, "before"), &["w1"]),
    )
    .await;
    assert_eq!(first["status"], "completed");
    dagmanager.stop().await;

    let mut queued = Vec::new();
    for i in 0..3 {
        let (status, ack) = post(
            gateway.addr,
            "/strategies",
            &submission(&synthetic_dag(3, &format!("during-{i}")), &["w1"]),
        )
        .await;
        assert_eq!(status, 202, "{ack}");
        assert_eq!(ack["status"], "queued", "{ack}");
        assert!(ack["queue_map"].as_object().unwrap().is_empty());
        queued.push(ack["strategy_id"].as_str().unwrap().to_owned());
    }
    assert_eventually!(
        metrics(gateway.addr)
            .await
            .value("dagclient_breaker_state", &[])
            == Some(1.0),
        Duration::from_secs(10),
        "the breaker never opened"
    );
    let exposition = metrics(gateway.addr).await;
    assert_eq!(
        exposition.value("dagclient_breaker_open_total", &[]),
        Some(1.0)
    );
    assert!(exposition.value("dagclient_breaker_failures", &[]).unwrap() >= 3.0);
    let (status, busy) = post(
        gateway.addr,
        "/strategies/dry-run",
        &submission(&synthetic_dag(2, "dry"), &["w1"]),
    )
    .await;
    assert_eq!(status, 503, "{busy}");
    assert_eq!(busy["code"], "E_DAGMANAGER_UNAVAILABLE");
    let (_, health) = get(gateway.addr, "/status").await;
    assert_eq!(health["dagmanager"]["breaker"], "open");
    assert_eq!(health["status"], "degraded");

    let dagmanager = spawn_dagmanager(dir.path(), port).await;
    for strategy_id in &queued {
        assert_eventually!(
            get(gateway.addr, &format!("/strategies/{strategy_id}/status"))
                .await
                .1["status"]
                == "completed",
            Duration::from_secs(10),
            "strategy {strategy_id} never completed"
        );
        let (_, full) = get(gateway.addr, &format!("/strategies/{strategy_id}")).await;
        assert_eq!(full["queue_map"].as_object().unwrap().len(), 3);
    }
    let exposition = metrics(gateway.addr).await;
    assert_eq!(exposition.value("dagclient_breaker_state", &[]), Some(0.0));
    assert_eq!(
        exposition.value("gateway_submissions_total", &[("outcome", "completed")]),
        Some(4.0)
    );
    assert_eq!(exposition.value("lost_requests_total", &[]), Some(0.0));
    gateway.stop().await;
    dagmanager.stop().await;
}

#[tokio::test]
async fn a_restarted_gateway_carries_what_it_had_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = gateway_settings(dir.path(), "127.0.0.1:9".parse().unwrap());
    settings.diff_budget_ms = 50;
    let gateway = spawn_gateway(settings.clone()).await;
    let (status, ack) = post(
        gateway.addr,
        "/strategies",
        &submission(&synthetic_dag(2, "restart"), &["w1"]),
    )
    .await;
    assert_eq!((status, ack["status"].as_str()), (202, Some("queued")));
    let strategy_id = ack["strategy_id"].as_str().unwrap().to_owned();
    gateway.stop().await;

    let dagmanager = spawn_dagmanager(dir.path(), 0).await;
    settings.dagmanager_url = dagmanager.addr.to_string();
    let gateway = spawn_gateway(settings).await;
    assert_eventually!(
        get(gateway.addr, &format!("/strategies/{strategy_id}/status"))
            .await
            .1["status"]
            == "completed",
        Duration::from_secs(10),
        "the accepted strategy was not carried after the restart"
    );
    gateway.stop().await;
    dagmanager.stop().await;
}
