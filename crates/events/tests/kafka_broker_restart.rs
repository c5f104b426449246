//! A broker killed (SIGKILL) and restarted under a writer: appends wait for it and then
//! land, nothing acknowledged is lost, and a new instance reads the whole log. Runs its
//! own broker (`scripts/kafka` on another port), so that the suite's broker stays up.
#![cfg(feature = "kafka")]

use perfect21_events::catalog::*;
use perfect21_events::store::{KafkaConfig, KafkaRole, KafkaStore};
use perfect21_events::{chain, EventData, EventStore, ExpectedVersion, Metadata, StreamId};
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;

const PORT: &str = "19192";

fn kafka(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/kafka");
    let status = Command::new("bash").args([script, action]).env("PERFECT21_KAFKA_PORT", PORT).status().unwrap();
    assert!(status.success(), "scripts/kafka {action} on port {PORT}");
}

fn kill_broker() {
    let home = std::env::var("PERFECT21_KAFKA_HOME").unwrap_or_else(|_| {
        let cache =
            std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap()));
        format!("{cache}/perfect21/kafka")
    });
    let pid = std::fs::read_to_string(format!("{home}/kafka-{PORT}.pid")).unwrap();
    assert!(Command::new("kill").args(["-9", pid.trim()]).status().unwrap().success());
    while std::net::TcpStream::connect(format!("127.0.0.1:{PORT}")).is_ok() {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn events(n: usize) -> Vec<EventData> {
    (0..n)
        .map(|_| {
            let e = Event::UserEmailVerified(UserEmailVerified { user_id: Uuid::now_v7() });
            EventData::new(&e, Metadata::default()).unwrap()
        })
        .collect()
}

/// Stops this test's broker however the test ends.
struct Broker;

impl Drop for Broker {
    fn drop(&mut self) {
        kafka("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_acknowledged_append_and_the_writer_goes_on() {
    kafka("start");
    let _broker = Broker;
    let mut config = KafkaConfig::new(format!("127.0.0.1:{PORT}"), format!("p21t-{}", Uuid::new_v4().simple()));
    config.role = KafkaRole::Writer;
    let store = std::sync::Arc::new(KafkaStore::open(config.clone()).await.unwrap());
    let mut acked = Vec::new();
    for _ in 0..20 {
        let s = StreamId::of("user", Uuid::now_v7()).unwrap();
        let batch = events(5);
        let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
        let r = store.append(&s, ExpectedVersion::NoStream, batch).await.unwrap();
        acked.push((r.first_position, ids));
    }

    tokio::task::spawn_blocking(kill_broker).await.unwrap();
    // Appends made while the broker is away wait for it.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let batch = events(3);
                let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
                let s = StreamId::of("user", Uuid::now_v7()).unwrap();
                (store.append(&s, ExpectedVersion::NoStream, batch).await, ids)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(|| kafka("start")).await.unwrap();
    for w in waiting {
        let (result, ids) = w.await.unwrap();
        let r = result.expect("an append made during the restart lands once the broker is back");
        acked.push((r.first_position, ids));
    }
    let r = store.append(&StreamId::of("user", Uuid::now_v7()).unwrap(), ExpectedVersion::Any, events(1)).await;
    assert!(r.is_ok(), "the writer goes on after the restart: {r:?}");

    drop(store);
    let reader = KafkaStore::open(config).await.unwrap();
    let all = reader.read_all(1, usize::MAX).await.unwrap();
    assert_eq!(all.len() as u64, reader.head_position().await.unwrap());
    for (first, ids) in acked {
        for (i, id) in ids.iter().enumerate() {
            let e = &all[(first - 1) as usize + i];
            assert_eq!(e.event_id, *id, "acknowledged event at position {} lost", first + i as u64);
        }
    }
    assert_eq!(chain::verify(&reader, 1, |_| {}).await.unwrap().through, all.len() as u64);
}
