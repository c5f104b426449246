//! The relay's Kafka sink against the broker of `scripts/kafka`: the seed's envelope
//! with its headers as record headers, keyed by user, validated by a consumer written
//! with another client (Python confluent-kafka); nothing lost across a relay `kill -9`
//! mid-stream, and the checkpoint reaches the head.
#![cfg(feature = "kafka")]

use perfect21_domain::{IdentityConfig, LoginRequest, Registration, RequestContext};
use perfect21_events::{EventData, ExpectedVersion, Metadata, StreamId};
use std::process::{Child, Command};
use std::time::Duration;

mod common;
use common::DataDir;

fn bootstrap() -> String {
    std::env::var("PERFECT21_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// A relay process, killed (SIGKILL) when dropped.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay(data: &str, topic: &str) -> Relay {
    Relay(
        Command::new(env!("CARGO_BIN_EXE_perfect21"))
            .args(["relay", "--data-dir", data, "--kafka-brokers", &bootstrap(), "--kafka-topic", topic])
            .args(["--insecure-fast-passwords"])
            .spawn()
            .expect("start the relay"),
    )
}

fn checkpoint(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("relay-kafka.checkpoint")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

async fn wait_for_checkpoint(dir: &std::path::Path, head: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while checkpoint(dir) < head {
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint stopped at {}, the head is {head}",
            checkpoint(dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_sink_publishes_the_seed_envelope_keyed_by_user_and_loses_nothing_across_a_kill() {
    let world = DataDir::new(IdentityConfig::default()).await;
    let (data, store, id) = (world.path(), world.store.clone(), &world.id);
    let topic = format!("p21t-events-{}", uuid::Uuid::new_v4().simple());
    let ctx = RequestContext {
        client_ip: Some("198.51.100.9".into()),
        user_agent: Some("kafka-relay-test".into()),
        ..RequestContext::service("auth")
    };
    let mut relay = start_relay(&data, &topic);
    id.register(
        &ctx,
        Registration {
            email: "kafka@example.com".into(),
            username: "kafka-relayed".into(),
            password: "password-123".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let login = |password: &str| LoginRequest {
        identifier: "kafka-relayed".into(),
        password: password.into(),
        ..Default::default()
    };
    let _ = id.login(&ctx, login("wrong-password")).await;
    id.login(&ctx, login("password-123")).await.unwrap();
    wait_for_checkpoint(world.dir.path(), store.head_position().await.unwrap()).await;

    // kill -9 mid-stream while a writer appends; a new relay resumes from the checkpoint.
    let before = store.head_position().await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..300 {
                let user_id = uuid::Uuid::now_v7();
                let e = perfect21_events::Event::UserEmailVerified(perfect21_events::catalog::UserEmailVerified {
                    user_id,
                });
                let data = EventData::new(&e, Metadata::default()).unwrap();
                store.append(&StreamId::of("user", user_id).unwrap(), ExpectedVersion::Any, vec![data]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    wait_for_checkpoint(world.dir.path(), before + 20).await;
    drop(relay);
    assert!(!writer.is_finished(), "the writer was still appending when the relay died");
    writer.await.unwrap();
    relay = start_relay(&data, &topic);
    let head = store.head_position().await.unwrap();
    assert_eq!(head, before + 300);
    wait_for_checkpoint(world.dir.path(), head).await;
    drop(relay);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/kafka_relay_consumer.py");
    let out = Command::new("python3").args([script, &bootstrap(), &topic]).output().expect("python3");
    assert!(out.status.success(), "the Python consumer refused the stream: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let positions: Vec<u64> = report["positions"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>(), "every event relayed, none lost across the kill");
    let types: Vec<&str> = report["types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(types.contains(&"user.registered") && types.contains(&"user.login"), "{types:?}");
}

/// The sink's broker killed (SIGKILL) and restarted under a running relay: the relay
/// waits or reconnects, and every event reaches the topic. Runs a broker of its own
/// (`scripts/kafka` on another port), so that the suite's broker stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_sink_survives_a_broker_restart_and_loses_nothing() {
    const PORT: &str = "19292";
    let kafka = |action: &str| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/kafka");
        let status = Command::new("bash").args([script, action]).env("PERFECT21_KAFKA_PORT", PORT).status().unwrap();
        assert!(status.success(), "scripts/kafka {action} on port {PORT}");
    };
    struct Broker<F: Fn(&str)>(F);
    impl<F: Fn(&str)> Drop for Broker<F> {
        fn drop(&mut self) {
            (self.0)("stop");
        }
    }
    kafka("start");
    let broker = Broker(kafka);
    let brokers = format!("127.0.0.1:{PORT}");
    let world = DataDir::new(IdentityConfig::default()).await;
    let (data, store) = (world.path(), world.store.clone());
    let topic = format!("p21t-events-{}", uuid::Uuid::new_v4().simple());
    let _relay = Relay(
        Command::new(env!("CARGO_BIN_EXE_perfect21"))
            .args(["relay", "--data-dir", &data, "--kafka-brokers", &brokers, "--kafka-topic", &topic])
            .args(["--insecure-fast-passwords"])
            .spawn()
            .expect("start the relay"),
    );
    let append = |n: usize| {
        let store = store.clone();
        async move {
            for _ in 0..n {
                let user_id = uuid::Uuid::now_v7();
                let e = perfect21_events::Event::UserEmailVerified(perfect21_events::catalog::UserEmailVerified {
                    user_id,
                });
                let data = EventData::new(&e, Metadata::default()).unwrap();
                store.append(&StreamId::of("user", user_id).unwrap(), ExpectedVersion::Any, vec![data]).await.unwrap();
            }
        }
    };
    append(100).await;
    wait_for_checkpoint(world.dir.path(), 100).await;

    let home = std::env::var("PERFECT21_KAFKA_HOME").unwrap_or_else(|_| {
        let cache =
            std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap()));
        format!("{cache}/perfect21/kafka")
    });
    let pid = std::fs::read_to_string(format!("{home}/kafka-{PORT}.pid")).unwrap();
    assert!(Command::new("kill").args(["-9", pid.trim()]).status().unwrap().success());
    while std::net::TcpStream::connect(&brokers).is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    append(100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    (broker.0)("start");
    wait_for_checkpoint(world.dir.path(), 200).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/kafka_relay_consumer.py");
    let out = Command::new("python3").args([script, &brokers, &topic]).output().expect("python3");
    assert!(out.status.success(), "the Python consumer refused the stream: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let positions: Vec<u64> = report["positions"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=200).collect::<Vec<_>>(), "nothing lost across the broker restart");
}
