//! Start-up = snapshot + catch-up, and it equals a full replay; a snapshot of another log is discarded.

use perfect21_domain::live::load_snapshot;
use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::*;
use std::time::Duration;

#[tokio::test]
async fn start_up_from_a_snapshot_then_catch_up_equals_a_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snapshots/read-models.snap");
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let store = perfect21_events::store::open(&url).await.unwrap();
    let policy = SnapshotPolicy { path: snap.clone(), every_events: 5 };
    let live = LiveModels::open(store.clone(), Some(policy.clone())).await;
    let config = IdentityConfig { password_cost: PasswordCost::TEST, ..Default::default() };
    let id = Identity::new(store.clone(), live.clone(), SecretBox::random(), config.clone()).unwrap();
    let ctx = RequestContext::service("test");
    for i in 0..6 {
        let reg = Registration {
            email: format!("s{i}@example.com"),
            username: format!("snap{i}"),
            password: "password-123".into(),
            ..Default::default()
        };
        id.register(&ctx, reg).await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    live.wait_for(head, Duration::from_secs(5)).await.unwrap();
    // The follower saved at least once along the way; save the final state too.
    assert!(snap.exists());
    assert_eq!(live.save_snapshot(&snap).await.unwrap(), head);
    drop(id);
    drop(live);

    // More events after the snapshot.
    let live2 = LiveModels::start(store.clone());
    let id2 = Identity::new(store.clone(), live2, SecretBox::random(), config).unwrap();
    let late = Registration {
        email: "late@example.com".into(),
        username: "late".into(),
        password: "password-123".into(),
        ..Default::default()
    };
    id2.register(&ctx, late).await.unwrap();
    let head = store.head_position().await.unwrap();

    let (snapshot_models, _) = load_snapshot(store.as_ref(), &snap).await.expect("snapshot fits this log");
    assert!(snapshot_models.checkpoint() < head);
    let restarted = LiveModels::open(store.clone(), Some(policy)).await;
    restarted.wait_for(head, Duration::from_secs(5)).await.unwrap();
    // It started from the snapshot and folded only what came after it.
    assert_eq!(restarted.started_from(), snapshot_models.checkpoint());
    assert_eq!(restarted.checkpoint() - restarted.started_from(), head - snapshot_models.checkpoint());
    let mut full = perfect21_projections::ReadModels::default();
    for e in store.read_all(1, 100_000).await.unwrap() {
        full.apply(&e).unwrap();
    }
    assert_eq!(restarted.read(|m| m.digest()), full.digest());
    assert!(restarted.read(|m| m.users.by_email("late@example.com").is_some()));

    // The same snapshot against another log: discarded.
    let other = tempfile::tempdir().unwrap();
    let other_store =
        perfect21_events::store::open(&format!("sqlite://{}", other.path().join("e.db").display())).await.unwrap();
    assert!(load_snapshot(other_store.as_ref(), &snap).await.is_none());
    // A damaged file: discarded, not fatal.
    std::fs::write(&snap, b"P21SNAP\0\x01\x00garbage").unwrap();
    assert!(load_snapshot(store.as_ref(), &snap).await.is_none());
    let fresh = LiveModels::open(store.clone(), Some(SnapshotPolicy { path: snap, every_events: 1000 })).await;
    fresh.wait_for(head, Duration::from_secs(5)).await.unwrap();
    assert_eq!(fresh.started_from(), 0, "a damaged snapshot is replaced by a full replay");
    assert_eq!(fresh.read(|m| m.digest()), full.digest());
}
