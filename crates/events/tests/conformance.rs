//! One conformance suite, run unchanged against every backend.
//!
//! Each case takes a `TestLog`: a fresh, empty log that can be opened more than
//! once (a second instance stands for another process writing the same log).
//! The PostgreSQL cases need the server named by `PERFECT21_TEST_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432/test`); they fail, not skip, without it.

use perfect21_events::catalog::*;
use perfect21_events::chain;
use perfect21_events::store::{ForwardConfig, PostgresConfig, PostgresStore, SqliteConfig, SqliteStore};
use perfect21_events::{
    subscribe_all, CodecError, EventData, EventStore, ExpectedVersion, Metadata, StoreError, StreamId,
};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

type Open = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn EventStore>> + Send>> + Send + Sync>;

/// A fresh log, openable several times.
struct TestLog {
    open: Open,
    _dir: Option<tempfile::TempDir>,
}

impl TestLog {
    async fn open(&self) -> Arc<dyn EventStore> {
        (self.open)().await
    }
}

async fn sqlite_log() -> TestLog {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    TestLog {
        open: Box::new(move || {
            let path = path.clone();
            Box::pin(async move {
                Arc::new(SqliteStore::open(SqliteConfig::new(path)).await.unwrap()) as Arc<dyn EventStore>
            })
        }),
        _dir: Some(dir),
    }
}

/// The PostgreSQL server the suite uses.
fn postgres_url() -> String {
    std::env::var("PERFECT21_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn postgres_log() -> TestLog {
    let url = postgres_url();
    let schema = format!("p21t_{}", Uuid::new_v4().simple());
    TestLog {
        open: Box::new(move || {
            let config = PostgresConfig::new(url.clone()).with_schema(schema.clone());
            Box::pin(async move {
                Arc::new(PostgresStore::connect(config).await.expect("PostgreSQL reachable")) as Arc<dyn EventStore>
            })
        }),
        _dir: None,
    }
}

/// A PostgreSQL log whose instances share a forwarding secret: the first one opened
/// becomes the writer, the others forward their appends to it.
async fn postgres_forwarding_log() -> TestLog {
    let url = postgres_url();
    let schema = format!("p21t_{}", Uuid::new_v4().simple());
    let forward = ForwardConfig {
        secret: rand::random::<[u8; 32]>().to_vec(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise: None,
    };
    TestLog {
        open: Box::new(move || {
            let mut config = PostgresConfig::new(url.clone()).with_schema(schema.clone());
            config.forward = Some(forward.clone());
            Box::pin(async move {
                Arc::new(PostgresStore::connect(config).await.expect("PostgreSQL reachable")) as Arc<dyn EventStore>
            })
        }),
        _dir: None,
    }
}

/// The Kafka broker the suite uses (`scripts/kafka` starts one).
#[cfg(feature = "kafka")]
fn kafka_bootstrap() -> String {
    std::env::var("PERFECT21_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// A fresh topic; the first instance opened becomes its writer, the others forward to it.
#[cfg(feature = "kafka")]
async fn kafka_log() -> TestLog {
    use perfect21_events::store::{KafkaConfig, KafkaStore};
    let mut config = KafkaConfig::new(kafka_bootstrap(), format!("p21t-{}", Uuid::new_v4().simple()));
    config.forward_secret = Some(rand::random::<[u8; 32]>().to_vec());
    TestLog {
        open: Box::new(move || {
            let config = config.clone();
            Box::pin(async move {
                Arc::new(KafkaStore::open(config).await.expect("Kafka reachable")) as Arc<dyn EventStore>
            })
        }),
        _dir: None,
    }
}

fn stream(category: &str) -> StreamId {
    StreamId::of(category, Uuid::new_v4()).unwrap()
}

fn verified(user_id: Uuid) -> EventData {
    EventData::new(&Event::UserEmailVerified(UserEmailVerified { user_id }), meta()).unwrap()
}

fn meta() -> Metadata {
    Metadata {
        correlation_id: Some(Uuid::now_v7()),
        actor: Some("service:conformance".into()),
        client_ip: Some("127.0.0.1".into()),
        user_agent: Some("conformance/1".into()),
        ..Metadata::default()
    }
}

fn batch(n: usize) -> Vec<EventData> {
    (0..n).map(|_| verified(Uuid::new_v4())).collect()
}

/// `events` made one at a time, as `EventStore::append_made` takes them.
fn made(events: &[EventData]) -> std::vec::IntoIter<Result<EventData, StoreError>> {
    events.iter().cloned().map(Ok).collect::<Vec<_>>().into_iter()
}

/// A maker that says it makes more events than it does.
struct Short<I>(I, usize);

impl<I: Iterator> Iterator for Short<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        self.0.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

impl<I: Iterator> ExactSizeIterator for Short<I> {}

mod cases {
    use super::*;

    pub async fn a_bad_append_in_a_group_fails_alone(log: TestLog) {
        let store = log.open().await;
        let taken = stream("user");
        store.append(&taken, ExpectedVersion::NoStream, batch(1)).await.unwrap();
        // Submitted together, so that the writer groups them.
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = store.clone();
            let taken = taken.clone();
            tasks.push(tokio::spawn(async move {
                match i {
                    7 => {
                        let e = verified(Uuid::new_v4());
                        store.append(&stream("user"), ExpectedVersion::Any, vec![e.clone(), e]).await
                    }
                    13 => store.append(&taken, ExpectedVersion::NoStream, batch(1)).await,
                    _ => store.append(&stream("user"), ExpectedVersion::NoStream, batch(2)).await,
                }
            }));
        }
        let mut ok = 0;
        for (i, t) in tasks.into_iter().enumerate() {
            match (i, t.await.unwrap()) {
                (7, Err(StoreError::DuplicateEventId { .. })) | (13, Err(StoreError::WrongExpectedVersion { .. })) => {}
                (7 | 13, other) => panic!("append {i} should have failed alone: {other:?}"),
                (_, Ok(_)) => ok += 1,
                (_, Err(e)) => panic!("a good append failed with the bad ones: {e}"),
            }
        }
        assert_eq!(ok, 38);
        assert_eq!(store.head_position().await.unwrap(), 1 + 38 * 2);
    }

    /// A lease is held by one instance at a time (instances stand for processes), and
    /// given up when its holder drops it; a store without leases never grants one.
    pub async fn leases_are_exclusive_and_end_with_their_holder(log: TestLog) {
        let (a, b) = (log.open().await, log.open().await);
        if !a.leases() {
            assert!(a.try_lease("relay-amqp").await.unwrap().is_none());
            return;
        }
        let held = a.try_lease("relay-amqp").await.unwrap().expect("a free lease is granted");
        assert!(b.try_lease("relay-amqp").await.unwrap().is_none(), "held by a");
        assert!(a.try_lease("relay-amqp").await.unwrap().is_none(), "held, even by the same instance's other caller");
        let other = b.try_lease("relay-kafka").await.unwrap().expect("another name is another lease");
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(l) = b.try_lease("relay-amqp").await.unwrap() {
                    return l;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("a lease given up is free again");
        drop((again, other));
        assert!(a.try_lease("Relay AMQP").await.is_err(), "names are checked");
    }

    pub async fn reads_beyond_the_range_of_positions_are_refused_and_huge_limits_mean_all(log: TestLog) {
        let store = log.open().await;
        let s = stream("user");
        store
            .append(&s, ExpectedVersion::NoStream, vec![verified(Uuid::new_v4()), verified(Uuid::new_v4())])
            .await
            .unwrap();
        for from in [i64::MAX as u64 + 1, u64::MAX] {
            let err = store.read_all(from, 10).await.unwrap_err();
            assert!(matches!(err, StoreError::OutOfRange { what: "position", .. }), "read_all({from}): {err}");
            let err = store.read_stream(&s, from, 10).await.unwrap_err();
            assert!(matches!(err, StoreError::OutOfRange { what: "stream version", .. }), "read_stream({from}): {err}");
        }
        assert_eq!(store.read_all(1, usize::MAX).await.unwrap().len(), 2, "a huge limit means no limit");
        assert_eq!(store.read_stream(&s, 0, usize::MAX).await.unwrap().len(), 2);
        assert_eq!(store.read_all(i64::MAX as u64, 10).await.unwrap().len(), 0);
    }

    pub async fn append_and_read_back(log: TestLog) {
        let store = log.open().await;
        assert_eq!(store.head_position().await.unwrap(), 0);
        let s = stream("user");
        let user_id = Uuid::now_v7();
        let events = [
            Event::RoleAssigned(RoleAssigned { user_id, role_id: "admin".into(), expires_at: None }),
            Event::UserLoginFailed(UserLoginFailed {
                user_id,
                reason: "bad_password".into(),
                failure_count: 1,
                risk_score: 0.25,
            }),
            Event::UserEmailVerified(UserEmailVerified { user_id }),
        ];
        let data: Vec<_> = events.iter().map(|e| EventData::new(e, meta()).unwrap()).collect();
        let r = store.append(&s, ExpectedVersion::NoStream, data.clone()).await.unwrap();
        assert_eq!((r.first_position, r.position, r.stream_version), (1, 3, 2));
        assert_eq!(store.head_position().await.unwrap(), 3);

        let read = store.read_stream(&s, 0, 100).await.unwrap();
        assert_eq!(read.len(), 3);
        for (i, (rec, sent)) in read.iter().zip(&data).enumerate() {
            assert_eq!(rec.stream_version, i as u64);
            assert_eq!(rec.position, 1 + i as u64);
            assert_eq!(rec.event_id, sent.event_id);
            assert_eq!(rec.stream_id, s.as_str());
            assert_eq!(rec.metadata, sent.metadata);
            assert_eq!(rec.decode().unwrap(), events[i]);
            assert!((chrono::Utc::now() - rec.recorded_at).num_seconds().abs() < 60);
        }
        assert_eq!(store.read_all(0, 100).await.unwrap(), read);
        assert_eq!(store.read_stream(&s, 2, 100).await.unwrap(), read[2..]);
        assert!(store.read_stream(&stream("user"), 0, 10).await.unwrap().is_empty());
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.events, stats.streams, stats.head_position), (3, 1, 3));
        assert_eq!(stats.by_type.len(), 3);
    }

    pub async fn expected_version_is_enforced(log: TestLog) {
        let store = log.open().await;
        let s = stream("user");
        let missing = store.append(&s, ExpectedVersion::StreamExists, batch(1)).await.unwrap_err();
        assert!(
            matches!(
                &missing,
                StoreError::WrongExpectedVersion { actual: None, expected: ExpectedVersion::StreamExists, .. }
            ),
            "{missing:?}"
        );
        let missing = store.append(&s, ExpectedVersion::Exact(0), batch(1)).await.unwrap_err();
        assert!(matches!(missing, StoreError::WrongExpectedVersion { actual: None, .. }));
        store.append(&s, ExpectedVersion::NoStream, batch(3)).await.unwrap();

        let err = store.append(&s, ExpectedVersion::NoStream, batch(2)).await.unwrap_err();
        match &err {
            StoreError::WrongExpectedVersion { stream, expected, actual } => {
                assert_eq!(stream, s.as_str());
                assert_eq!(*expected, ExpectedVersion::NoStream);
                assert_eq!(*actual, Some(2));
            }
            other => panic!("expected WrongExpectedVersion, got {other:?}"),
        }
        assert!(err.to_string().contains("at version 2"), "{err}");
        let err = store.append(&s, ExpectedVersion::Exact(1), batch(2)).await.unwrap_err();
        assert!(matches!(
            err,
            StoreError::WrongExpectedVersion { actual: Some(2), expected: ExpectedVersion::Exact(1), .. }
        ));
        assert_eq!(store.head_position().await.unwrap(), 3, "failed appends wrote nothing");

        let r = store.append(&s, ExpectedVersion::Exact(2), batch(1)).await.unwrap();
        assert_eq!(r.stream_version, 3);
        let r = store.append(&s, ExpectedVersion::StreamExists, batch(1)).await.unwrap();
        assert_eq!(r.stream_version, 4);
        let r = store.append(&s, ExpectedVersion::Any, batch(2)).await.unwrap();
        assert_eq!((r.stream_version, r.position), (6, 7));
        let r = store.append(&stream("session"), ExpectedVersion::Any, batch(1)).await.unwrap();
        assert_eq!((r.stream_version, r.position), (0, 8));
    }

    pub async fn concurrent_appends_with_one_expected_version_one_wins(log: TestLog) {
        let store = log.open().await;
        let other = log.open().await;
        let s = stream("role");
        for round in 0..5u64 {
            let expected = if round == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(round - 1) };
            let tasks: Vec<_> = (0..24)
                .map(|i| {
                    let store = if i % 2 == 0 { store.clone() } else { other.clone() };
                    let s = s.clone();
                    tokio::spawn(async move { store.append(&s, expected, batch(1)).await })
                })
                .collect();
            let mut wins = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(r) => {
                        wins += 1;
                        assert_eq!(r.stream_version, round);
                    }
                    Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                        assert_eq!(actual, Some(round))
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            assert_eq!(wins, 1, "round {round}: exactly one append may win");
        }
        assert_eq!(store.read_stream(&s, 0, 100).await.unwrap().len(), 5);
        assert_eq!(store.head_position().await.unwrap(), 5);
    }

    /// Two instances (as two replicas would) appending to the same streams at once (3
    /// streams, so that both write to each): every append lands, each stream's versions
    /// and the log's positions stay dense, and each answer names where its events are.
    /// On PostgreSQL this drives the optimistic group commit into its locked retry.
    pub async fn writers_sharing_streams_keep_versions_and_positions_dense(log: TestLog) {
        let (a, b) = (log.open().await, log.open().await);
        let streams: Vec<StreamId> = (0..3).map(|_| stream("user")).collect();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let s = streams[i % streams.len()].clone();
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for n in 1..=20 {
                        let events = batch(1 + (i + n) % 3);
                        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                        let r = store.append(&s, ExpectedVersion::Any, events).await.expect("append lands");
                        answers.push((s.clone(), ids, r));
                    }
                    answers
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.extend(t.await.unwrap());
        }
        let total: usize = answers.iter().map(|(_, ids, _)| ids.len()).sum();
        assert_eq!(a.head_position().await.unwrap(), total as u64);
        let all = a.read_all(1, usize::MAX).await.unwrap();
        assert!(all.iter().enumerate().all(|(i, e)| e.position == i as u64 + 1), "positions are dense");
        for s in &streams {
            let events = a.read_stream(s, 0, usize::MAX).await.unwrap();
            assert!(events.iter().enumerate().all(|(i, e)| e.stream_version == i as u64), "versions of {s} are dense");
        }
        for (s, ids, r) in answers {
            assert_eq!(r.position - r.first_position + 1, ids.len() as u64);
            for (i, id) in ids.iter().enumerate() {
                let e = &all[(r.first_position - 1) as usize + i];
                assert_eq!((&e.event_id, e.stream_id.as_str()), (id, s.as_str()), "the answer names the events");
            }
            assert_eq!(all[(r.position - 1) as usize].stream_version, r.stream_version);
        }
    }

    /// Every event is linked in position order whichever instance appended it, refused
    /// and repeated appends leave no trace in the chain, a walk from the middle ends on
    /// the same link, and a new instance continues the chain.
    pub async fn the_chain_links_every_event_in_order_under_concurrent_writers(log: TestLog) {
        let (a, b) = (log.open().await, log.open().await);
        let shared = stream("user");
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let shared = shared.clone();
                tokio::spawn(async move {
                    for n in 0..10 {
                        let s = if n % 3 == 0 { shared.clone() } else { stream("session") };
                        let events = batch(1 + (i + n) % 3);
                        store.append(&s, ExpectedVersion::Any, events.clone()).await.expect("append lands");
                        // A retry and a refused append write nothing.
                        store.append(&s, ExpectedVersion::Any, events).await.expect("retry is idempotent");
                        assert!(store.append(&s, ExpectedVersion::NoStream, batch(1)).await.is_err());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let head = a.head_position().await.unwrap();
        let whole = chain::verify(&*a, 1, |_| {}).await.expect("the chain holds");
        assert_eq!((whole.from, whole.through, whole.redacted), (1, head, 0));
        let records = a.read_chain(1, usize::MAX).await.unwrap();
        assert_eq!(records.len() as u64, head);
        let links: HashSet<_> = records.iter().map(|r| r.link.expect("every event is linked")).collect();
        assert_eq!(links.len() as u64, head, "links are distinct");
        assert_eq!(records.last().unwrap().link, Some(whole.last_link));
        let middle = chain::verify(&*b, head / 2, |_| {}).await.unwrap();
        assert_eq!((middle.through, middle.last_link), (head, whole.last_link));

        let c = log.open().await;
        c.append(&stream("role"), ExpectedVersion::Any, batch(2)).await.unwrap();
        let longer = chain::verify(&*c, 1, |_| {}).await.expect("a new instance continues the chain");
        assert_eq!(longer.through, head + 2);
        let continued = c.read_chain(head + 1, 1).await.unwrap();
        let content = continued[0].content;
        assert_eq!(continued[0].link, Some(chain::link(&whole.last_link, head + 1, &content)));
        let past = chain::verify(&*c, head + 10, |_| {}).await.unwrap_err();
        assert!(past.to_string().contains("no event at position"), "{past}");
    }

    pub async fn appends_are_atomic(log: TestLog) {
        let store = log.open().await;
        let s = stream("user");
        let first = batch(5);
        let r = store.append(&s, ExpectedVersion::NoStream, first.clone()).await.unwrap();
        assert_eq!((r.first_position, r.position), (1, 5));

        // A duplicate id in the middle of an append: nothing of it is written.
        let mut mixed = batch(4);
        mixed[2].event_id = first[0].event_id;
        let err = store.append(&s, ExpectedVersion::Exact(4), mixed).await.unwrap_err();
        assert!(matches!(err, StoreError::DuplicateEventId { position: 1, .. }), "{err:?}");
        // The same id twice inside one append.
        let mut twice = batch(3);
        twice[2].event_id = twice[0].event_id;
        let err = store.append(&s, ExpectedVersion::Any, twice).await.unwrap_err();
        assert!(matches!(err, StoreError::DuplicateEventId { .. }), "{err:?}");
        assert_eq!(store.head_position().await.unwrap(), 5);
        assert_eq!(store.read_stream(&s, 0, 100).await.unwrap().len(), 5);

        // A large append lands whole, with consecutive positions and versions.
        let r = store.append(&s, ExpectedVersion::Exact(4), batch(2000)).await.unwrap();
        assert_eq!((r.first_position, r.position, r.stream_version), (6, 2005, 2004));
        let all = store.read_all(1, 5000).await.unwrap();
        assert!(all.iter().enumerate().all(|(i, e)| e.position == i as u64 + 1 && e.stream_version == i as u64));
    }

    /// Appends whose events are made while the store writes (`append_made`; SQLite
    /// writes the first while the rest are made, the others make them all first): each
    /// lands whole amid other appends, or fails with nothing of it written.
    pub async fn appends_of_events_being_made_land_whole_or_not_at_all(log: TestLog) {
        let store = log.open().await;
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (s, events) = (stream("session"), batch(1 + i * 37));
                    let result = if i % 2 == 0 {
                        store.append_made(&s, ExpectedVersion::NoStream, &mut made(&events)).await
                    } else {
                        store.append(&s, ExpectedVersion::NoStream, events.clone()).await
                    };
                    (s, events, result.expect("append lands"))
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            let (s, events, result) = t.await.unwrap();
            let read = store.read_stream(&s, 0, usize::MAX).await.unwrap();
            let ids = |e: &[EventData]| e.iter().map(|e| e.event_id).collect::<Vec<_>>();
            assert_eq!(read.iter().map(|r| r.event_id).collect::<Vec<_>>(), ids(&events));
            assert!(read.iter().zip(&events).all(|(r, e)| r.payload == e.payload && r.metadata == e.metadata));
            let positions: Vec<_> = read.iter().map(|r| r.position).collect();
            assert_eq!(
                positions,
                (result.first_position..=result.position).collect::<Vec<_>>(),
                "one run of positions"
            );
            total += events.len() as u64;
        }
        let head = store.head_position().await.unwrap();
        assert_eq!(head, total);
        // A retry of a made append is answered as it was.
        let (s, events) = (stream("user"), batch(40));
        let first = store.append_made(&s, ExpectedVersion::NoStream, &mut made(&events)).await.unwrap();
        assert_eq!(first.position, head + 40);
        assert_eq!(store.append_made(&s, ExpectedVersion::NoStream, &mut made(&events)).await.unwrap(), first);
        let head = first.position;

        // Each of these fails whole, and the next append lands right after the head.
        let err = store.append_made(&s, ExpectedVersion::NoStream, &mut made(&batch(50))).await.unwrap_err();
        assert!(matches!(err, StoreError::WrongExpectedVersion { .. }), "{err:?}");
        let failing = batch(60).into_iter().enumerate().map(|(i, e)| {
            if i == 45 {
                Err(StoreError::Unsealable {
                    event_id: e.event_id,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    reason: "made to fail".into(),
                })
            } else {
                Ok(e)
            }
        });
        let err = store.append_made(&s, ExpectedVersion::Any, &mut failing.collect::<Vec<_>>().into_iter()).await;
        assert!(matches!(err, Err(StoreError::Unsealable { ref reason, .. }) if reason == "made to fail"), "{err:?}");
        let mut too_large = batch(50);
        too_large[33].payload = vec![0; perfect21_events::limits::MAX_EVENT_BYTES + 1];
        let err = store.append_made(&s, ExpectedVersion::Any, &mut made(&too_large)).await.unwrap_err();
        assert!(matches!(err, StoreError::PayloadTooLarge { .. }), "{err:?}");
        let mut repeats = batch(50);
        repeats[44].event_id = repeats[3].event_id;
        let err = store.append_made(&s, ExpectedVersion::Any, &mut made(&repeats)).await.unwrap_err();
        assert!(matches!(err, StoreError::DuplicateEventId { .. }), "{err:?}");
        let mut recorded = batch(50);
        recorded[30].event_id = events[0].event_id;
        let err = store.append_made(&s, ExpectedVersion::Any, &mut made(&recorded)).await.unwrap_err();
        assert!(matches!(err, StoreError::DuplicateEventId { position, .. } if position == head - 39), "{err:?}");
        // A maker that makes fewer events than it said it would.
        let err = store.append_made(&s, ExpectedVersion::Any, &mut Short(made(&batch(30)), 50)).await.unwrap_err();
        assert!(matches!(err, StoreError::IncompleteAppend { made: 30, count: 50 }), "{err:?}");
        let err = store.append_made(&s, ExpectedVersion::Any, &mut made(&[])).await.unwrap_err();
        assert!(matches!(err, StoreError::EmptyAppend), "{err:?}");
        // A maker that panics part-way: its appender ends there.
        let panicking = tokio::spawn({
            let (store, s) = (store.clone(), s.clone());
            async move {
                let mut events = batch(50).into_iter().enumerate().map(|(i, e)| {
                    assert!(i < 40, "the maker fails");
                    Ok(e)
                });
                store.append_made(&s, ExpectedVersion::Any, &mut events).await
            }
        });
        assert!(panicking.await.unwrap_err().is_panic());
        assert_eq!(store.head_position().await.unwrap(), head, "nothing of a failed append is written");

        let last = store.append_made(&s, ExpectedVersion::Exact(39), &mut made(&batch(20))).await.unwrap();
        assert_eq!((last.first_position, last.position, last.stream_version), (head + 1, head + 20, 59));
        let whole = chain::verify(&*store, 1, |_| {}).await.expect("the chain holds");
        assert_eq!(whole.through, head + 20);
    }

    pub async fn paging_covers_everything_once(log: TestLog) {
        let store = log.open().await;
        let streams: Vec<_> = (0..3).map(|_| stream("session")).collect();
        for i in 0..75 {
            store.append(&streams[i % 3], ExpectedVersion::Any, batch(1 + i % 4)).await.unwrap();
        }
        let head = store.head_position().await.unwrap();
        let mut from = 0;
        let mut seen = Vec::new();
        loop {
            let page = store.read_all(from, 37).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 37);
            from = page.last().unwrap().position + 1;
            seen.extend(page.into_iter().map(|e| e.position));
        }
        assert_eq!(seen, (1..=head).collect::<Vec<_>>());
        for s in &streams {
            let mut versions = Vec::new();
            let mut from = 0;
            loop {
                let page = store.read_stream(s, from, 10).await.unwrap();
                if page.is_empty() {
                    break;
                }
                from = page.last().unwrap().stream_version + 1;
                versions.extend(page.into_iter().map(|e| e.stream_version));
            }
            assert_eq!(versions, (0..versions.len() as u64).collect::<Vec<_>>());
        }
    }

    pub async fn subscription_sees_every_event_once_in_order_while_writers_run(log: TestLog) {
        let store = log.open().await;
        let other = log.open().await;
        store.append(&stream("user"), ExpectedVersion::Any, batch(10)).await.unwrap();
        let mut sub = subscribe_all(store.clone(), 0);
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let store = if w % 2 == 0 { store.clone() } else { other.clone() };
                tokio::spawn(async move {
                    let mut written = 0;
                    for i in 0..60 {
                        let n = 1 + (i + w) % 3;
                        store.append(&stream("user"), ExpectedVersion::NoStream, batch(n)).await.unwrap();
                        written += n;
                    }
                    written
                })
            })
            .collect();
        let mut expected_total = 10;
        for w in writers {
            expected_total += w.await.unwrap();
        }
        let mut positions = Vec::new();
        let mut ids = HashSet::new();
        while positions.len() < expected_total {
            let e =
                tokio::time::timeout(Duration::from_secs(20), sub.next()).await.expect("subscription stalled").unwrap();
            assert!(ids.insert(e.event_id), "duplicate event {}", e.event_id);
            positions.push(e.position);
        }
        assert_eq!(positions, (1..=expected_total as u64).collect::<Vec<_>>());
        // Nothing more, and live events still arrive.
        assert!(sub.try_next().await.unwrap().is_none());
        let r = other.append(&stream("user"), ExpectedVersion::Any, batch(1)).await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap();
        assert_eq!(e.position, r.position);

        // A subscription from the middle starts exactly there.
        let mut mid = subscribe_all(store.clone(), 42);
        assert_eq!(mid.next().await.unwrap().position, 42);
        assert_eq!(mid.next().await.unwrap().position, 43);
    }

    pub async fn reappending_the_same_event_ids_is_idempotent(log: TestLog) {
        let store = log.open().await;
        let s = stream("user");
        let events = batch(3);
        let first = store.append(&s, ExpectedVersion::NoStream, events.clone()).await.unwrap();
        // A retry after a lost answer: same ids, same expectation.
        let again = store.append(&s, ExpectedVersion::NoStream, events.clone()).await.unwrap();
        assert_eq!(again, first);
        let again = store.append(&s, ExpectedVersion::Any, events.clone()).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(store.head_position().await.unwrap(), 3);
        // Not an exact re-append: reordered, or mixed with new ids, or into another stream.
        let reordered = vec![events[1].clone(), events[0].clone()];
        assert!(matches!(
            store.append(&s, ExpectedVersion::Any, reordered).await,
            Err(StoreError::DuplicateEventId { .. })
        ));
        let mixed = vec![events[0].clone(), verified(Uuid::new_v4())];
        assert!(matches!(
            store.append(&s, ExpectedVersion::Any, mixed).await,
            Err(StoreError::DuplicateEventId { .. })
        ));
        let elsewhere = store.append(&stream("user"), ExpectedVersion::Any, events.clone()).await.unwrap_err();
        assert!(matches!(elsewhere, StoreError::DuplicateEventId { position: 1, .. }), "{elsewhere:?}");
        assert_eq!(store.head_position().await.unwrap(), 3);
        // Concurrent retries of one append record it once.
        let fresh = batch(2);
        let s2 = stream("user");
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (store, s2, fresh) = (store.clone(), s2.clone(), fresh.clone());
                tokio::spawn(async move { store.append(&s2, ExpectedVersion::NoStream, fresh).await.unwrap() })
            })
            .collect();
        let mut results = HashSet::new();
        for t in tasks {
            results.insert(t.await.unwrap().position);
        }
        assert_eq!(results.len(), 1);
        assert_eq!(store.head_position().await.unwrap(), 5);
    }

    pub async fn bad_input_gets_typed_errors_and_writes_nothing(log: TestLog) {
        let store = log.open().await;
        store.append(&stream("user"), ExpectedVersion::Any, batch(1)).await.unwrap();

        for bad in ["", "user", "-42", "User-1", "user-", "user 1", &format!("user-{}", "x".repeat(200))] {
            let err = StreamId::new(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidStreamId { .. }), "{bad:?}: {err:?}");
            assert!(err.to_string().contains("expected 'category-id'"), "{err}");
        }
        let s = stream("user");
        let mut big = verified(Uuid::new_v4());
        big.payload = vec![0; perfect21_events::limits::MAX_EVENT_BYTES + 1];
        let err = store.append(&s, ExpectedVersion::Any, vec![verified(Uuid::new_v4()), big]).await.unwrap_err();
        assert!(
            matches!(err, StoreError::PayloadTooLarge { max, .. } if max == perfect21_events::limits::MAX_EVENT_BYTES)
        );
        assert!(matches!(store.append(&s, ExpectedVersion::Any, vec![]).await, Err(StoreError::EmptyAppend)));
        let mut bad_type = verified(Uuid::new_v4());
        bad_type.event_type = "User Registered".into();
        let err = store.append(&s, ExpectedVersion::Any, vec![bad_type]).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidEventType { .. }), "{err:?}");
        let err = store.append(&s, ExpectedVersion::Any, batch(10_001)).await.unwrap_err();
        assert!(matches!(err, StoreError::TooManyEvents { count: 10_001, .. }));
        assert_eq!(store.head_position().await.unwrap(), 1, "nothing written");
        assert!(store.read_stream(&s, 0, 10).await.unwrap().is_empty());
    }

    pub async fn unknown_event_types_fail_on_read_with_a_typed_error(log: TestLog) {
        let store = log.open().await;
        let s = stream("user");
        // Written by a newer build: a type, and a version, that this build does not know.
        let mut newer = verified(Uuid::new_v4());
        newer.schema_version = 99;
        newer.event_type = "user.registered".into();
        let mut foreign = verified(Uuid::new_v4());
        foreign.event_type = "billing.invoice_paid".into();
        store.append(&s, ExpectedVersion::Any, vec![newer, foreign, verified(Uuid::new_v4())]).await.unwrap();
        let read = store.read_stream(&s, 0, 10).await.unwrap();
        assert_eq!(read.len(), 3, "the log keeps and returns what it cannot decode");
        match read[0].decode().unwrap_err() {
            CodecError::UnknownEventType { event_type, schema_version, known } => {
                assert_eq!((event_type.as_str(), schema_version), ("user.registered", 99));
                assert!(known.contains("v1") && known.contains("v2"), "{known}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(read[1].decode(), Err(CodecError::UnknownEventType { schema_version: 1, .. })));
        // Garbage under a known type is a decode error, not a panic.
        let mut garbage = verified(Uuid::new_v4());
        garbage.event_type = "role.created".into();
        garbage.payload = vec![0xff; 3];
        store.append(&s, ExpectedVersion::Any, vec![garbage]).await.unwrap();
        let read = store.read_stream(&s, 3, 10).await.unwrap();
        assert!(matches!(read[0].decode(), Err(CodecError::Decode { .. })));
        assert!(read[0].decode().unwrap_err().to_string().contains("role.created"));
    }
}

mod redaction {
    use super::*;
    use perfect21_events::Redaction;

    pub async fn redaction_rewrites_content_and_keeps_the_envelope(log: TestLog) {
        let store = log.open().await;
        let s = stream("user");
        let user_id = Uuid::now_v7();
        let login = Event::UserLoginFailed(UserLoginFailed {
            user_id,
            reason: "bad_password".into(),
            failure_count: 1,
            risk_score: 0.5,
        });
        store.append(&s, ExpectedVersion::NoStream, vec![EventData::new(&login, meta()).unwrap(); 1]).await.unwrap();
        store.append(&stream("user"), ExpectedVersion::Any, batch(1)).await.unwrap();
        let before = store.read_stream(&s, 0, 10).await.unwrap();
        let blank = Event::UserLoginFailed(UserLoginFailed {
            user_id,
            reason: String::new(),
            failure_count: 0,
            risk_score: 0.0,
        });
        let redaction =
            Redaction { position: 1, payload: blank.encode_payload().unwrap(), metadata: Metadata::default() };
        // A position of another stream: refused, nothing changed.
        let wrong = Redaction { position: 2, ..redaction.clone() };
        let err = store.redact(&s, vec![redaction.clone(), wrong]).await.unwrap_err();
        assert!(matches!(err, StoreError::NotInStream { position: 2, .. }), "{err:?}");
        assert_eq!(store.read_stream(&s, 0, 10).await.unwrap(), before);
        // A payload of another type: refused, nothing changed.
        let other = Event::UserEmailVerified(UserEmailVerified { user_id });
        let wrong_type = Redaction { payload: other.encode_payload().unwrap(), ..redaction.clone() };
        let err = store.redact(&s, vec![wrong_type]).await.unwrap_err();
        assert!(matches!(err, StoreError::RedactionMismatch { position: 1, .. }), "{err:?}");
        assert_eq!(store.read_stream(&s, 0, 10).await.unwrap(), before);

        assert_eq!(store.redact(&s, vec![redaction]).await.unwrap(), 1);
        let after = store.read_stream(&s, 0, 10).await.unwrap();
        assert_eq!(after[0].decode().unwrap(), blank);
        assert_eq!(after[0].metadata, Metadata::default());
        assert_eq!(
            (after[0].event_id, after[0].position, &after[0].event_type, after[0].stream_version),
            (before[0].event_id, before[0].position, &before[0].event_type, before[0].stream_version)
        );
        assert_eq!(store.head_position().await.unwrap(), 2);
        // A subscriber from the start sees the rewritten bytes, not what was appended.
        let mut sub = perfect21_events::subscribe_all(store.clone(), 1);
        assert_eq!(sub.next().await.unwrap().decode().unwrap(), blank);
        // The chain still holds: the link covers the digest the event was appended with.
        let verified = chain::verify(&*store, 1, |_| {}).await.expect("a redaction keeps the chain");
        assert_eq!((verified.through, verified.redacted), (2, 1));
    }

    /// An append-only log refuses a redaction with an error that says why, and every
    /// event reads back as it was appended.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only an append-only backend runs it
    pub async fn redaction_is_refused_and_changes_nothing(log: TestLog) {
        let store = log.open().await;
        assert!(!store.rewrites_in_place());
        let s = stream("user");
        store.append(&s, ExpectedVersion::NoStream, batch(2)).await.unwrap();
        let before = store.read_stream(&s, 0, 10).await.unwrap();
        let blank = Redaction {
            position: 1,
            payload: Event::UserEmailVerified(UserEmailVerified { user_id: Uuid::nil() }).encode_payload().unwrap(),
            metadata: Metadata::default(),
        };
        let err = store.redact(&s, vec![blank]).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        assert_eq!(store.read_stream(&s, 0, 10).await.unwrap(), before);
        assert_eq!(chain::verify(&*store, 1, |_| {}).await.unwrap().through, 2);
    }

    /// What a live subscriber is given is exactly what a read returns (a backend may serve
    /// its own recent commits from memory).
    pub async fn subscribers_get_exactly_what_a_read_returns(log: TestLog) {
        let store = log.open().await;
        let mut sub = perfect21_events::subscribe_all(store.clone(), 1);
        let s = stream("user");
        store.append(&s, ExpectedVersion::NoStream, batch(3)).await.unwrap();
        let (session, again) = (stream("session"), batch(2));
        store.append(&session, ExpectedVersion::Any, again.clone()).await.unwrap();
        // A retry of the same events (idempotent) and a refused append write nothing.
        store.append(&session, ExpectedVersion::Any, again).await.unwrap();
        assert!(store.append(&s, ExpectedVersion::NoStream, batch(1)).await.is_err());
        let concurrent: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.append(&stream("role"), ExpectedVersion::Any, batch(1)).await })
            })
            .collect();
        for c in concurrent {
            c.await.unwrap().unwrap();
        }
        let head = store.head_position().await.unwrap();
        assert_eq!(head, 3 + 2 + 16);
        let mut seen = Vec::new();
        while seen.len() < head as usize {
            seen.push(sub.next().await.unwrap());
        }
        assert_eq!(seen, store.read_all(1, usize::MAX).await.unwrap());
    }
}

macro_rules! suite {
    ($backend:ident, $log:path) => {
        suite!(@backend $backend, $log, redaction_rewrites_content_and_keeps_the_envelope);
    };
    // A log that cannot rewrite what it recorded.
    ($backend:ident, $log:path, append_only) => {
        suite!(@backend $backend, $log, redaction_is_refused_and_changes_nothing);
    };
    (@backend $backend:ident, $log:path, $redaction:ident) => {
        mod $backend {
            use super::*;
            suite!(@case $log, append_and_read_back, expected_version_is_enforced,
                concurrent_appends_with_one_expected_version_one_wins, appends_are_atomic,
                writers_sharing_streams_keep_versions_and_positions_dense,
                paging_covers_everything_once, appends_of_events_being_made_land_whole_or_not_at_all,
                subscription_sees_every_event_once_in_order_while_writers_run,
                reappending_the_same_event_ids_is_idempotent,
                bad_input_gets_typed_errors_and_writes_nothing,
                unknown_event_types_fail_on_read_with_a_typed_error,
                reads_beyond_the_range_of_positions_are_refused_and_huge_limits_mean_all,
                a_bad_append_in_a_group_fails_alone, leases_are_exclusive_and_end_with_their_holder,
                the_chain_links_every_event_in_order_under_concurrent_writers);
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $redaction() {
                redaction::$redaction($log().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn subscribers_get_exactly_what_a_read_returns() {
                redaction::subscribers_get_exactly_what_a_read_returns($log().await).await
            }
        }
    };
    (@case $log:path, $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                cases::$case($log().await).await
            }
        )*
    };
}

suite!(sqlite, sqlite_log);
suite!(postgres, postgres_log);
suite!(postgres_forwarding, postgres_forwarding_log);
#[cfg(feature = "kafka")]
suite!(kafka, kafka_log, append_only);

/// PostgreSQL-only settings the store must not depend on.
mod postgres_settings {
    use super::*;

    fn url() -> String {
        postgres_url()
    }

    fn with_query(url: &str, query: &str) -> String {
        if url.contains('?') {
            format!("{url}&{query}")
        } else {
            format!("{url}?{query}")
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_serializable_default_isolation_does_not_fail_concurrent_writers() {
        // Two store instances (two processes) whose sessions default to SERIALIZABLE.
        let url = with_query(&url(), "options=-c%20default_transaction_isolation%3Dserializable");
        let schema = format!("p21t_{}", Uuid::new_v4().simple());
        let open = || PostgresStore::connect(PostgresConfig::new(url.clone()).with_schema(schema.clone()));
        let (a, b) = (Arc::new(open().await.unwrap()), Arc::new(open().await.unwrap()));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    store.append(&stream("user"), ExpectedVersion::NoStream, vec![verified(Uuid::new_v4())]).await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for t in tasks {
            t.await.unwrap().expect("no serialization failure under a SERIALIZABLE default");
        }
        assert_eq!(a.head_position().await.unwrap(), 160);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_pool_of_one_still_appends_while_subscribers_listen() {
        let schema = format!("p21t_{}", Uuid::new_v4().simple());
        let config = PostgresConfig { max_connections: 1, ..PostgresConfig::new(url()).with_schema(schema) };
        let store: Arc<dyn EventStore> = Arc::new(PostgresStore::connect(config).await.unwrap());
        let mut sub = subscribe_all(store.clone(), 1);
        let appended = tokio::time::timeout(
            Duration::from_secs(5),
            store.append(&stream("user"), ExpectedVersion::NoStream, vec![verified(Uuid::new_v4())]),
        )
        .await
        .expect("an append with a pool of one does not wait on the LISTEN connection")
        .unwrap();
        assert_eq!(appended.position, 1);
        let first = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap();
        assert_eq!(first.position, 1);
    }
}

/// SQLite-only faults mid-group: the database refusing to grow (SQLITE_FULL through
/// `max_page_count`, where SQLite rolls back the failing statement), and SQLite
/// rolling back the whole group's transaction by itself (here a trigger raising
/// ROLLBACK, as a full disk, an I/O error or a failed allocation may do).
mod sqlite_faults {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_transaction_rolled_back_by_sqlite_aborts_its_whole_group_without_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).await.unwrap());
        let poisoned = stream("user");
        let fault = format!(
            "CREATE TRIGGER fault BEFORE INSERT ON events WHEN NEW.stream_id = '{poisoned}' \
             BEGIN SELECT RAISE(ROLLBACK, 'injected fault'); END;"
        );
        rusqlite::Connection::open(&path).unwrap().execute_batch(&fault).unwrap();

        let (mut acknowledged, mut collateral) = (Vec::new(), 0);
        // Rounds of 32 concurrent appenders, one of them poisoned, until a group held
        // the poisoned append together with others (the writer groups what is waiting).
        for _ in 0..100 {
            let tasks: Vec<_> = (0..32)
                .map(|i| {
                    let store = store.clone();
                    let target = if i == 16 { poisoned.clone() } else { stream("user") };
                    tokio::spawn(async move {
                        let event = verified(Uuid::new_v4());
                        let id = event.event_id;
                        (i == 16, id, store.append(&target, ExpectedVersion::Any, vec![event]).await)
                    })
                })
                .collect();
            for t in tasks {
                match t.await.unwrap() {
                    (true, _, result) => assert!(result.is_err(), "the poisoned append cannot succeed"),
                    (false, id, Ok(r)) => acknowledged.push((id, r.first_position)),
                    (false, _, Err(e)) => {
                        assert!(e.to_string().contains("rolled the transaction back"), "{e}");
                        collateral += 1;
                    }
                }
            }
            if collateral > 0 {
                break;
            }
        }
        assert!(collateral > 0, "the poisoned append never shared a group with another");
        // Nothing of an aborted group is in the log, everything acknowledged is, without holes.
        store.append(&stream("user"), ExpectedVersion::NoStream, vec![verified(Uuid::new_v4())]).await.unwrap();
        let all = store.read_all(1, usize::MAX).await.unwrap();
        let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>(), "positions have a hole");
        for (id, position) in &acknowledged {
            assert_eq!(all[*position as usize - 1].event_id, *id, "acknowledged event missing at {position}");
        }
        assert_eq!(all.len(), acknowledged.len() + 1, "only acknowledged appends are in the log");
    }

    fn big(user_id: Uuid) -> EventData {
        let e = Event::UserProfileUpdated(UserProfileUpdated {
            user_id,
            first_name: Some("x".repeat(3000)),
            last_name: None,
            phone_number: None,
            profile: vec![],
        });
        EventData::new(&e, meta()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_full_database_refuses_appends_without_holes_or_lost_acknowledged_events() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig { max_pages: Some(60), ..SqliteConfig::new(dir.path().join("events.db")) };
        let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(config).await.unwrap());
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut failures = 0;
                for _ in 0..40 {
                    let events = vec![big(Uuid::new_v4()), big(Uuid::new_v4())];
                    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                    match store.append(&stream("user"), ExpectedVersion::NoStream, events).await {
                        Ok(r) => acknowledged.push((ids, r.first_position)),
                        Err(StoreError::Unavailable { .. }) => failures += 1,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                (acknowledged, failures)
            }));
        }
        let (mut acknowledged, mut failures) = (Vec::new(), 0);
        for t in tasks {
            let (a, f) = t.await.unwrap();
            acknowledged.extend(a);
            failures += f;
        }
        assert!(failures > 0, "the database never filled up: raise the load or lower max_pages");
        let all = store.read_all(1, usize::MAX).await.unwrap();
        let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>(), "positions have a hole");
        assert_eq!(store.head_position().await.unwrap(), all.len() as u64);
        for (ids, first) in &acknowledged {
            for (i, id) in ids.iter().enumerate() {
                let e = &all[(*first as usize) - 1 + i];
                assert_eq!(e.event_id, *id, "acknowledged event missing at position {}", first + i as u64);
            }
        }
        assert_eq!(all.len(), acknowledged.len() * 2, "only acknowledged appends are in the log");
    }
}

/// Edits made behind the store's back, straight in the database, are found by the chain
/// walk at the position edited. The same statements run on both backends (`$1` is a
/// parameter in both dialects).
mod chain_tampering {
    use super::*;
    use chain::VerifyError;

    /// A log of 6 events, with `edit` then run on its database.
    #[async_trait::async_trait]
    trait Database: Send + Sync {
        async fn store(&self) -> Arc<dyn EventStore>;
        async fn execute(&self, sql: &str, bytes: Vec<u8>);
    }

    struct Sqlite(tempfile::TempDir);

    #[async_trait::async_trait]
    impl Database for Sqlite {
        async fn store(&self) -> Arc<dyn EventStore> {
            Arc::new(SqliteStore::open(SqliteConfig::new(self.0.path().join("events.db"))).await.unwrap())
        }
        async fn execute(&self, sql: &str, bytes: Vec<u8>) {
            let conn = rusqlite::Connection::open(self.0.path().join("events.db")).unwrap();
            let n = if sql.contains("$1") { conn.execute(sql, [bytes]) } else { conn.execute(sql, []) };
            assert_eq!(n.unwrap(), 1, "{sql}");
        }
    }

    struct Postgres(String);

    impl Postgres {
        fn url() -> String {
            postgres_url()
        }
    }

    #[async_trait::async_trait]
    impl Database for Postgres {
        async fn store(&self) -> Arc<dyn EventStore> {
            Arc::new(PostgresStore::connect(PostgresConfig::new(Self::url()).with_schema(&self.0)).await.unwrap())
        }
        async fn execute(&self, sql: &str, bytes: Vec<u8>) {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&Self::url()).await.unwrap();
            sqlx::query(&format!("SET search_path TO {}", self.0)).execute(&mut conn).await.unwrap();
            let q = sqlx::query(sql);
            let q = if sql.contains("$1") { q.bind(bytes) } else { q };
            assert_eq!(q.execute(&mut conn).await.unwrap().rows_affected(), 1, "{sql}");
        }
    }

    async fn broken_at(db: &dyn Database, sql: &str, bytes: impl FnOnce(&[u8]) -> Vec<u8>) -> (u64, String) {
        let store = db.store().await;
        for _ in 0..3 {
            store.append(&stream("user"), ExpectedVersion::Any, batch(2)).await.unwrap();
        }
        chain::verify(&*store, 1, |_| {}).await.expect("untouched, the chain holds");
        let payload = store.read_all(3, 1).await.unwrap().remove(0).payload;
        db.execute(sql, bytes(&payload)).await;
        match chain::verify(&*db.store().await, 1, |_| {}).await {
            Err(VerifyError::Break(b)) => (b.position, b.reason),
            other => panic!("{sql}: expected a break, got {other:?}"),
        }
    }

    async fn every_edit_is_found(db: impl Fn() -> Box<dyn Database>) {
        let flip = |p: &[u8]| {
            let mut p = p.to_vec();
            let last = p.len() - 1;
            p[last] ^= 0x01;
            p
        };
        let (at, _) = broken_at(&*db(), "UPDATE events SET payload = $1 WHERE position = 3", flip).await;
        assert_eq!(at, 3, "one bit flipped in a payload");
        // SQLite makes `blob || blob` TEXT: a row of the wrong type is a break, not a read error.
        let (at, _) =
            broken_at(&*db(), "UPDATE events SET payload = payload || $1 WHERE position = 3", |_| vec![0]).await;
        assert_eq!(at, 3, "a byte appended to a payload");
        let (at, _) =
            broken_at(&*db(), "UPDATE events SET stream_version = stream_version + 7 WHERE position = 4", |_| vec![])
                .await;
        assert_eq!(at, 4, "an envelope field changed");
        let (at, reason) = broken_at(&*db(), "DELETE FROM events WHERE position = 2", |_| vec![]).await;
        assert_eq!(at, 2, "a deleted event");
        assert!(reason.contains("found 3"), "{reason}");
        let (at, reason) = broken_at(&*db(), "DELETE FROM events WHERE position = 6", |_| vec![]).await;
        assert_eq!(at, 6, "the last event deleted: {reason}");
        let (at, _) =
            broken_at(&*db(), "UPDATE events SET chain_hash = $1 WHERE position = 5", |_| vec![7u8; 32]).await;
        assert_eq!(at, 5, "a replaced link");
        let (at, _) = broken_at(
            &*db(),
            "INSERT INTO redactions (position, content_digest, redacted_at) SELECT 3, $1, recorded_at FROM events \
             WHERE position = 3",
            |_| vec![1u8; 32],
        )
        .await;
        assert_eq!(at, 3, "a forged redaction record");
    }

    /// The last event replaced and its link recomputed, as someone who knows the scheme
    /// would: the link the writer recorded for the head gives it away.
    async fn a_recomputed_last_link_is_found(db: &dyn Database) {
        let store = db.store().await;
        store.append(&stream("user"), ExpectedVersion::Any, batch(3)).await.unwrap();
        let mut last = store.read_all(3, 1).await.unwrap().remove(0);
        let before = store.read_chain(2, 1).await.unwrap().remove(0).link.unwrap();
        last.payload = EventData::new(&Event::UserEmailVerified(UserEmailVerified { user_id: Uuid::nil() }), meta())
            .unwrap()
            .payload;
        let content = chain::content_digest(
            &last.event_id,
            &last.stream_id,
            last.stream_version,
            &last.event_type,
            last.schema_version,
            last.recorded_at,
            &last.metadata.encode(),
            &last.payload,
        );
        db.execute("UPDATE events SET payload = $1 WHERE position = 3", last.payload.clone()).await;
        db.execute("UPDATE events SET chain_hash = $1 WHERE position = 3", chain::link(&before, 3, &content).to_vec())
            .await;
        match chain::verify(&*db.store().await, 1, |_| {}).await {
            Err(VerifyError::Break(b)) => assert_eq!(b.position, 3, "{b}"),
            other => panic!("expected a break at the head, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_a_recomputed_last_link_is_found() {
        a_recomputed_last_link_is_found(&Sqlite(tempfile::tempdir().unwrap())).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_a_recomputed_last_link_is_found() {
        a_recomputed_last_link_is_found(&Postgres(format!("p21t_{}", Uuid::new_v4().simple()))).await
    }

    /// A writer does not append to a SQLite log whose last events were deleted behind its
    /// back (it would chain new events onto the cut and hide it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_refuses_to_append_to_a_log_cut_short() {
        let db = Sqlite(tempfile::tempdir().unwrap());
        let store = db.store().await;
        store.append(&stream("user"), ExpectedVersion::Any, batch(3)).await.unwrap();
        drop(store);
        db.execute("DELETE FROM events WHERE position = 3", vec![]).await;
        let store = db.store().await;
        let err = store.append(&stream("user"), ExpectedVersion::Any, batch(1)).await.unwrap_err();
        assert!(err.to_string().contains("events were removed from its end"), "{err}");
        assert_eq!(store.head_position().await.unwrap(), 2, "nothing was appended");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_edits_are_found_at_their_position() {
        every_edit_is_found(|| Box::new(Sqlite(tempfile::tempdir().unwrap()))).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_edits_are_found_at_their_position() {
        every_edit_is_found(|| Box::new(Postgres(format!("p21t_{}", Uuid::new_v4().simple())))).await
    }

    /// A file written before the chain existed is linked when it is opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_log_from_before_the_chain_is_linked_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
            store.append(&stream("user"), ExpectedVersion::Any, batch(3)).await.unwrap();
        }
        // Back to the first schema: no links, no redactions table.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE redactions; ALTER TABLE events DROP COLUMN chain_hash; PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
        store.append(&stream("user"), ExpectedVersion::Any, batch(1)).await.unwrap();
        let verified = chain::verify(&store, 1, |_| {}).await.expect("linked on open");
        assert_eq!(verified.through, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_postgres_log_from_before_the_chain_is_linked_on_connect() {
        let db = Postgres(format!("p21t_{}", Uuid::new_v4().simple()));
        let store = db.store().await;
        store.append(&stream("user"), ExpectedVersion::Any, batch(3)).await.unwrap();
        drop(store);
        db.execute("UPDATE log_head SET chain_hash = NULL", vec![]).await;
        for p in 1..=3 {
            db.execute(&format!("UPDATE events SET chain_hash = NULL WHERE position = {p}"), vec![]).await;
        }
        let store = db.store().await;
        store.append(&stream("user"), ExpectedVersion::Any, batch(1)).await.unwrap();
        let verified = chain::verify(&*store, 1, |_| {}).await.expect("linked on connect");
        assert_eq!(verified.through, 4);
    }
}
