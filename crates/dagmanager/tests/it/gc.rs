//! Garbage collection: releasing a strategy orphans its queues, and each tag's policy decides
//! when an orphan is dropped or archived, by the queue's creation time.

use crate::support::{spawn_app, temp_dir, test_settings};
use dagmanager::gc::GarbageCollector;
use dagmanager::metrics::DagManagerMetrics;
use dagmanager::queues::{EmbeddedQueueAdmin, QueueAdmin};
use dagmanager::settings::{GcAction, GcPolicy, GcSettings};
use dagmanager::store::{EmbeddedGraphStore, GraphStore};
use kit::clock::{Clock, ManualClock};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use test_support::{http, synthetic_dag};

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test]
async fn orphans_are_dropped_only_after_ttl_plus_grace_from_their_creation() {
    let (_dir, path) = temp_dir();
    let app = spawn_app(test_settings(&path)).await;
    // Both strategies use the kept DAG; only the released strategy's other nodes lose owners.
    let kept = synthetic_dag(3, "gc");
    app.diff("keep", &kept).await.unwrap();
    app.diff("drop", &kept).await.unwrap();
    app.diff("drop", &synthetic_dag(4, "gc-own")).await.unwrap();
    let settings = app.stop().await;

    let store: Arc<dyn GraphStore> =
        Arc::new(EmbeddedGraphStore::open(&settings.data_dir).unwrap());
    let queues: Arc<dyn QueueAdmin> =
        Arc::new(EmbeddedQueueAdmin::open(&settings.data_dir).unwrap());
    let metrics = DagManagerMetrics::new().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let gc = GarbageCollector::new(
        store.clone(),
        queues.clone(),
        metrics.clone(),
        settings.gc.clone(),
        clock.clone(),
    );

    let orphaned = store
        .release_strategy("drop", clock.unix_seconds())
        .await
        .unwrap();
    assert_eq!(
        orphaned.len(),
        4,
        "the released strategy's own 4 nodes lose their queues"
    );
    let report = gc.run_once().await.unwrap();
    assert_eq!(
        (report.orphans, report.dropped.len()),
        (4, 0),
        "too young to drop"
    );

    clock.advance(8 * DAY + Duration::from_secs(1));
    let report = gc.run_once().await.unwrap();
    assert_eq!(
        report.dropped.len(),
        1,
        "the raw price feed is past 7 d + 1 d: {report:?}"
    );
    clock.advance(25 * DAY);
    let report = gc.run_once().await.unwrap();
    assert_eq!(
        report.dropped.len(),
        3,
        "the indicators are past 30 d + 3 d: {report:?}"
    );
    assert_eq!(
        store.counts().await.unwrap(),
        (3, 3),
        "the kept strategy's nodes and queues stay"
    );
    assert_eq!(queues.list_queues().await.unwrap().len(), 3);
    let text = metrics.registry().render();
    assert!(text.contains("gc_queues_dropped_total 4"), "{text}");
}

#[tokio::test]
async fn archive_policies_write_the_queue_out_then_drop_it() {
    let (_dir, path) = temp_dir();
    let mut settings = test_settings(&path);
    settings.gc = GcSettings {
        policies: [(
            "indicator".to_owned(),
            GcPolicy {
                ttl_secs: 0,
                grace_secs: 0,
                action: GcAction::Archive,
            },
        )]
        .into(),
        ..settings.gc
    };
    let app = spawn_app(settings.clone()).await;
    app.diff("arch", &synthetic_dag(3, "archive"))
        .await
        .unwrap();
    app.admin_client()
        .await
        .cleanup(proto::CleanupRequest {
            strategy_id: "arch".into(),
        })
        .await
        .unwrap();
    let archived: Vec<_> = std::fs::read_dir(&settings.gc.archive_dir)
        .unwrap()
        .collect();
    assert_eq!(archived.len(), 2, "the two indicator queues were archived");
    let metrics = app.metrics().await;
    assert_eq!(metrics.value("gc_queues_archived_total", &[]), Some(2.0));
    assert_eq!(metrics.value("gc_queues_dropped_total", &[]), Some(2.0));
    assert_eq!(
        metrics.value("orphan_queue_total", &[]),
        Some(3.0),
        "three orphans seen, the raw one kept"
    );
    assert!(metrics.value("gc_last_run_timestamp", &[]).unwrap() > 1.7e9);
    let (_, body) = http("POST", &app.admin_url("/admin/gc-trigger"), "")
        .await
        .unwrap();
    assert!(body.contains("\"orphans\":1"), "{body}");
    app.stop().await;
}
