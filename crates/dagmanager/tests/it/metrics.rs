//! The scraped exposition carries every family of this service's catalogue, with the spec's
//! names, types and labels.

use crate::support::{spawn_app, temp_dir, test_settings};
use test_support::synthetic_dag;

#[tokio::test]
async fn every_catalogue_family_is_exposed_with_its_type_and_labels() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    app.diff("m", &synthetic_dag(5, "metrics")).await.unwrap();
    app.diff("m", &synthetic_dag(5, "metrics")).await.unwrap();
    let metrics = app.metrics().await;
    let expected = [
        ("diff_requests_total", "counter"),
        ("diff_failures_total", "counter"),
        ("diff_duration_ms_p95", "gauge"),
        ("diff_duration_seconds", "histogram"),
        ("queue_create_error_total", "counter"),
        ("sentinel_gap_count", "gauge"),
        ("orphan_queue_total", "gauge"),
        ("gc_last_run_timestamp", "gauge"),
        ("gc_queues_dropped_total", "counter"),
        ("gc_queues_archived_total", "counter"),
        ("gc_failures_total", "counter"),
        ("compute_nodes_total", "gauge"),
        ("queues_total", "gauge"),
    ];
    for (family, kind) in expected {
        assert_eq!(metrics.kind(family), Some(kind), "{family}");
    }
    assert_eq!(metrics.value("diff_requests_total", &[]), Some(2.0));
    assert_eq!(metrics.value("diff_duration_seconds_count", &[]), Some(2.0));
    assert!(metrics.value("diff_duration_ms_p95", &[]).unwrap() > 0.0);
    assert_eq!(
        metrics.value("diff_duration_seconds_bucket", &[("le", "0.2")]),
        Some(2.0)
    );
    assert_eq!(
        metrics.label_names("gc_failures_total"),
        Some(vec!["stage".to_owned()])
    );
    assert_eq!(metrics.label_names("diff_requests_total"), Some(vec![]));
    test_support::assert_catalogue(
        &metrics,
        &[
            ("diff_duration_seconds", "histogram", &[]),
            ("gc_failures_total", "counter", &["stage"]),
        ],
    );
    // The Kafka and Neo4j breakers and the lag gauges belong to those back ends; with the
    // embedded stores there is no such dependency to break or lag, so they are not exposed.
    for absent in [
        "kafka_breaker_open_total",
        "neo4j_breaker_open_total",
        "queue_lag_seconds",
    ] {
        assert_eq!(metrics.kind(absent), None, "{absent}");
    }
    test_support::assert_process_and_build_info(&metrics, "dagmanager");
    test_support::assert_promtool_clean(&app.metrics_text().await);
    app.stop().await;
}

/// The standalone exporter, pointed at a running DAG Manager (an address with a trailing slash,
/// as operators write it), shows its live figures beside `dagmanager_up`.
#[tokio::test]
async fn the_standalone_exporter_shows_a_running_dag_managers_figures() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    app.diff("e", &synthetic_dag(3, "exported")).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}/metrics", listener.local_addr().expect("bound"));
    let shutdown = kit::shutdown::Shutdown::new();
    let exporter = tokio::spawn(dagmanager::exporter::serve_exporter(
        dagmanager::exporter::ExporterSettings {
            target: format!("{}/", app.admin_addr),
            scrape_timeout: std::time::Duration::from_secs(5),
            kafka: None,
            lag_interval: std::time::Duration::from_secs(1),
            lag_threshold_secs: 30.0,
        },
        listener,
        shutdown.clone(),
    ));
    let metrics = test_support::scrape(&url).await.expect("a scrape");
    assert_eq!(metrics.value("dagmanager_up", &[]), Some(1.0));
    assert_eq!(metrics.value("diff_requests_total", &[]), Some(1.0));
    assert_eq!(
        metrics.value("dagmanager_scrape_failures_total", &[]),
        Some(0.0)
    );
    // Process and build figures are the exporter's own: the DAG Manager's are left out, so
    // each family appears once (promtool refuses a family declared twice).
    test_support::assert_process_and_build_info(&metrics, "dagmanager-metrics");
    let (_, text) = test_support::http_get(&url).await.expect("a scrape");
    assert_eq!(
        text.matches("# TYPE process_resident_memory_bytes ")
            .count(),
        1,
        "{text}"
    );
    test_support::assert_promtool_clean(&text);
    shutdown.trigger();
    exporter.await.unwrap().expect("the exporter stops cleanly");
    app.stop().await;
}
