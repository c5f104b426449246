//! Replicas of one PostgreSQL log forwarding their appends to one writer: the first
//! instance opened writes for the others; an instance that cannot reach it (the writer
//! gone, another secret) appends directly, and one of the others takes its place.
//!
//! Needs the server named by `PERFECT21_TEST_POSTGRES` (`scripts/test` starts it).

use perfect21_events::catalog::*;
use perfect21_events::store::{ForwardConfig, PostgresConfig, PostgresStore};
use perfect21_events::{EventData, EventStore, ExpectedVersion, Metadata, StoreError, StreamId};
use std::time::Duration;
use uuid::Uuid;

fn url() -> String {
    std::env::var("PERFECT21_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn open(schema: &str, secret: &[u8]) -> PostgresStore {
    let mut config = PostgresConfig::new(url()).with_schema(schema);
    config.forward = Some(ForwardConfig {
        secret: secret.to_vec(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise: None,
    });
    PostgresStore::connect(config).await.expect("PostgreSQL reachable")
}

fn verified() -> Vec<EventData> {
    vec![EventData::new(&Event::UserEmailVerified(UserEmailVerified { user_id: Uuid::now_v7() }), Metadata::default())
        .unwrap()]
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test]
async fn replicas_forward_to_one_writer_and_another_takes_over_when_it_goes() {
    let schema = format!("p21t_{}", Uuid::new_v4().simple());
    let secret = rand::random::<[u8; 32]>();
    let writer = open(&schema, &secret).await;
    let replica = open(&schema, &secret).await;
    assert!(writer.is_writer() && !replica.is_writer());
    assert!(replica.writer_address().is_some(), "the replica found the writer");

    // Appends through the replica are the writer's: read back at once, positions dense,
    // expected versions decided by the writer.
    let s = StreamId::of("user", Uuid::now_v7()).unwrap();
    for version in 0..5u64 {
        let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version - 1) };
        let r = replica.append(&s, expected, verified()).await.unwrap();
        assert_eq!(r.stream_version, version);
        assert_eq!(replica.head_position().await.unwrap(), r.position, "visible to the replica at once");
        assert!(*replica.head_watch().borrow() >= r.position, "its subscribers hear of it at once");
    }
    let err = replica.append(&s, ExpectedVersion::NoStream, verified()).await.unwrap_err();
    assert!(matches!(err, StoreError::WrongExpectedVersion { actual: Some(4), .. }), "{err}");
    assert_eq!(replica.forwarded_appends(), 5);
    let again = verified();
    let first = replica.append(&s, ExpectedVersion::Any, again.clone()).await.unwrap();
    assert_eq!(
        replica.append(&s, ExpectedVersion::Any, again).await.unwrap(),
        first,
        "a retry is answered as recorded"
    );
    assert_eq!(writer.forwarded_appends(), 0, "the writer appends on its own");
    writer.append(&s, ExpectedVersion::Exact(5), verified()).await.unwrap();

    // The writer goes: the replica's next append is made directly, and the replica
    // becomes the writer; a new instance forwards to it.
    drop(writer);
    let r = replica.append(&s, ExpectedVersion::Exact(6), verified()).await.unwrap();
    assert_eq!((r.stream_version, r.position), (7, 8), "appended directly, nothing lost or doubled");
    eventually("the replica taking over", || replica.is_writer()).await;
    let newcomer = open(&schema, &secret).await;
    assert!(!newcomer.is_writer());
    assert!(newcomer.writer_address().is_some());
    newcomer.append(&s, ExpectedVersion::Exact(7), verified()).await.unwrap();
    assert_eq!(newcomer.forwarded_appends(), 1);
    let all = newcomer.read_all(1, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_replica_with_another_secret_appends_directly() {
    let schema = format!("p21t_{}", Uuid::new_v4().simple());
    let writer = open(&schema, &rand::random::<[u8; 32]>()).await;
    let stranger = open(&schema, &rand::random::<[u8; 32]>()).await;
    assert!(writer.is_writer());
    assert_eq!(stranger.writer_address(), None, "the writer does not prove the stranger's secret");
    let s = StreamId::of("user", Uuid::now_v7()).unwrap();
    stranger.append(&s, ExpectedVersion::NoStream, verified()).await.unwrap();
    writer.append(&s, ExpectedVersion::Exact(0), verified()).await.unwrap();
    assert_eq!(stranger.forwarded_appends(), 0);
    assert_eq!(stranger.read_stream(&s, 0, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn urls_carry_the_forwarding_options_apart_from_what_postgres_reads() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("forward.secret");
    std::fs::write(&secret, [7u8; 32]).unwrap();
    let short = dir.path().join("short.secret");
    std::fs::write(&short, [7u8; 8]).unwrap();
    let base = url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let with = format!("{base}{sep}secret_file={}&listen=127.0.0.1:0&advertise=localhost:7070", secret.display());
    let config = PostgresConfig::from_url(&with).unwrap();
    assert_eq!(config.url, base, "the forwarding options are not passed to PostgreSQL");
    let forward = config.forward.clone().expect("a secret turns forwarding on");
    assert_eq!((forward.secret, forward.advertise.as_deref()), (vec![7u8; 32], Some("localhost:7070")));
    assert!(!format!("{config:?}").contains("7, 7, 7"), "the Debug form leaves the secret out");
    let store = PostgresStore::connect(config).await.unwrap();
    assert!(store.is_writer());
    assert!(PostgresConfig::from_url(&base).unwrap().forward.is_none());
    for (bad, says) in [
        (format!("{base}{sep}secret_file=/nonexistent/secret"), "cannot read the forwarding secret"),
        (format!("{base}{sep}secret_file={}", short.display()), "fewer than 32"),
        (format!("{base}{sep}listen=nowhere"), "not an ip:port"),
        (format!("{base}{sep}advertise=h:1"), "needs secret_file"),
    ] {
        let err = PostgresConfig::from_url(&bad).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}
