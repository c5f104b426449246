//! What only the Kafka backend does: one writer fencing another, forwarders following
//! the writer the log names, and the checks of the topic at start-up. Needs the broker
//! named by `PERFECT21_TEST_KAFKA` (default `127.0.0.1:19092`, `scripts/kafka start`).
#![cfg(feature = "kafka")]

use perfect21_events::catalog::*;
use perfect21_events::store::{KafkaConfig, KafkaRole, KafkaStore};
use perfect21_events::{chain, EventData, EventStore, ExpectedVersion, Metadata, StoreError, StreamId};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use uuid::Uuid;

fn bootstrap() -> String {
    std::env::var("PERFECT21_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

fn topic() -> String {
    format!("p21t-{}", Uuid::new_v4().simple())
}

fn config(topic: &str, role: KafkaRole, secret: Option<&[u8]>) -> KafkaConfig {
    let mut c = KafkaConfig::new(bootstrap(), topic);
    c.role = role;
    c.forward_secret = secret.map(<[u8]>::to_vec);
    c
}

fn events(n: usize) -> Vec<EventData> {
    (0..n)
        .map(|_| {
            let e = Event::UserEmailVerified(UserEmailVerified { user_id: Uuid::now_v7() });
            EventData::new(&e, Metadata::default()).unwrap()
        })
        .collect()
}

fn stream() -> StreamId {
    StreamId::of("user", Uuid::now_v7()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_fences_the_first_whose_appends_then_fail_cleanly() {
    let topic = topic();
    let first = KafkaStore::open(config(&topic, KafkaRole::Writer, None)).await.unwrap();
    assert!(first.is_writer());
    first.append(&stream(), ExpectedVersion::NoStream, events(3)).await.unwrap();

    let second = KafkaStore::open(config(&topic, KafkaRole::Writer, None)).await.unwrap();
    assert_eq!(second.head_position().await.unwrap(), 3, "the new writer starts from what the old one committed");
    let refused = first.append(&stream(), ExpectedVersion::Any, events(2)).await.unwrap_err();
    assert!(matches!(refused, StoreError::Fenced { .. }), "{refused:?}");
    assert!(refused.to_string().contains("another writer took over"), "{refused}");
    // Fenced for good: later appends fail the same way, without touching the log.
    let again = first.append(&stream(), ExpectedVersion::Any, events(1)).await.unwrap_err();
    assert!(matches!(again, StoreError::Fenced { .. }), "{again:?}");

    let r = second.append(&stream(), ExpectedVersion::Any, events(2)).await.unwrap();
    assert_eq!((r.first_position, r.position), (4, 5), "positions stay dense: nothing of the fenced appends");
    let all = second.read_all(1, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=5).collect::<Vec<_>>());
    assert_eq!(chain::verify(&second, 1, |_| {}).await.unwrap().through, 5);
    // The old instance still reads: it follows the topic.
    tokio::time::timeout(std::time::Duration::from_secs(20), first.head_watch().wait_for(|h| *h >= 5))
        .await
        .expect("the fenced instance follows the new writer's commits")
        .unwrap();
    assert_eq!(first.read_all(1, 100).await.unwrap(), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarders_need_the_secret_and_follow_a_new_writer() {
    let topic = topic();
    let secret = [7u8; 32];
    let writer = KafkaStore::open(config(&topic, KafkaRole::Auto, Some(&secret))).await.unwrap();
    assert!(writer.is_writer(), "the first instance of a log becomes its writer");
    let forwarder = KafkaStore::open(config(&topic, KafkaRole::Auto, Some(&secret))).await.unwrap();
    assert!(!forwarder.is_writer(), "a later one forwards to the writer that answers");
    let r = forwarder.append(&stream(), ExpectedVersion::NoStream, events(2)).await.unwrap();
    assert_eq!(r.position, 2);
    assert_eq!(forwarder.read_all(1, 10).await.unwrap().len(), 2, "a forwarder reads its own appends at once");

    // Without the secret, or with another one, no instance appends through the writer.
    let err = KafkaStore::open(config(&topic, KafkaRole::Auto, None)).await.err().expect("refused");
    assert!(err.to_string().contains("needs the shared secret"), "{err}");
    let err = KafkaStore::open(config(&topic, KafkaRole::Forwarder, Some(&[8u8; 32]))).await.err();
    let wrong = match err {
        Some(e) => e.to_string(),
        None => panic!("a forwarder with the wrong secret must not open as one"),
    };
    assert!(wrong.contains("does not hold") || wrong.contains("cannot reach"), "{wrong}");

    // A new writer takes over: the forwarder sends its next append there.
    let successor = KafkaStore::open(config(&topic, KafkaRole::Writer, Some(&secret))).await.unwrap();
    let moved = successor.writer_address().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while forwarder.writer_address().as_deref() != Some(moved.as_str()) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the forwarder reads the new writer's address from the log");
    let r = forwarder.append(&stream(), ExpectedVersion::Any, events(1)).await.unwrap();
    assert_eq!(r.position, 3);
    let fenced = writer.append(&stream(), ExpectedVersion::Any, events(1)).await.unwrap_err();
    assert!(matches!(fenced, StoreError::Fenced { .. }), "{fenced:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_cannot_hold_a_log_is_refused_at_start_with_the_reason() {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).create().unwrap();
    let options = AdminOptions::new();
    let (partitioned, expiring, compacted) = (topic(), topic(), topic());
    let topics = [
        NewTopic::new(&partitioned, 3, TopicReplication::Fixed(1)).set("retention.ms", "-1"),
        NewTopic::new(&expiring, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&compacted, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact"),
    ];
    for created in admin.create_topics(&topics, &options).await.unwrap() {
        created.unwrap();
    }
    for (topic, says) in [
        (&partitioned, "it has 3 partitions; a log needs exactly 1"),
        (&expiring, "retention.ms is 604800000"),
        (&compacted, "it is compacted"),
    ] {
        let err = KafkaStore::open(config(topic, KafkaRole::Writer, None)).await.err().expect("refused");
        assert!(err.to_string().contains(says), "{topic}: {err}");
    }
    // Replication asked for that the topic does not have.
    let mut three = config(&topic(), KafkaRole::Writer, None);
    three.replication_factor = 3;
    three.min_insync_replicas = 2;
    let err = KafkaStore::open(three).await.err().expect("one broker cannot hold three replicas");
    assert!(err.to_string().contains("replication 3"), "{err}");
    // A made topic is checked like any other when opened again.
    let made = topic();
    drop(KafkaStore::open(config(&made, KafkaRole::Writer, None)).await.unwrap());
    let mut two = config(&made, KafkaRole::Writer, None);
    two.min_insync_replicas = 2;
    two.replication_factor = 2;
    let err = KafkaStore::open(two).await.err().expect("refused");
    assert!(err.to_string().contains("replication factor is 1"), "{err}");
}

#[tokio::test]
async fn a_kafka_url_without_a_key_store_is_refused_and_one_with_keys_seals() {
    let err = perfect21_events::store::open(&format!("kafka://{}/{}", bootstrap(), topic())).await.err().unwrap();
    assert!(err.to_string().contains("needs a key store"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.db");
    let url = format!("kafka://{}/{}?keys={}", bootstrap(), topic(), keys.display());
    let store = perfect21_events::store::open(&url).await.unwrap();
    assert!(store.seals() && !store.rewrites_in_place());
    let user_id = Uuid::now_v7();
    let failed = Event::UserLoginFailed(UserLoginFailed {
        user_id,
        reason: "typed-on-a-kafka-keyboard".into(),
        failure_count: 1,
        risk_score: 0.5,
    });
    let s = StreamId::of("user", user_id).unwrap();
    let meta = Metadata { client_ip: Some("198.51.100.77".into()), ..Metadata::default() };
    store.append(&s, ExpectedVersion::NoStream, vec![EventData::new(&failed, meta).unwrap()]).await.unwrap();
    assert_eq!(store.read_stream(&s, 0, 10).await.unwrap()[0].decode().unwrap(), failed);
    // The topic's bytes hold neither the reason nor the address.
    let raw = raw_topic(&topic_of(&url)).await;
    for secret in ["typed-on-a-kafka-keyboard", "198.51.100.77"] {
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} is in the topic in clear");
    }
    assert!(store.erase_subject(user_id).await.unwrap(), "the key is deleted");
    let reopened = perfect21_events::store::open(&url).await.unwrap();
    match reopened.read_stream(&s, 0, 10).await.unwrap()[0].decode().unwrap() {
        Event::UserLoginFailed(f) => assert!(f.reason.is_empty(), "erased: {f:?}"),
        other => panic!("{other:?}"),
    }
}

fn topic_of(url: &str) -> String {
    url.split('/').nth(3).unwrap().split('?').next().unwrap().to_string()
}

/// Every byte of the topic's records (values, keys and headers), read with a plain consumer.
async fn raw_topic(topic: &str) -> Vec<u8> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", "p21t-raw")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning).unwrap();
        consumer.assign(&list).unwrap();
        let mut bytes = Vec::new();
        loop {
            match consumer.poll(std::time::Duration::from_secs(10)) {
                Some(Ok(m)) => {
                    bytes.extend_from_slice(m.payload().unwrap_or_default());
                    bytes.extend_from_slice(m.key().unwrap_or_default());
                    for h in m.headers().iter().flat_map(|h| h.iter()) {
                        bytes.extend_from_slice(h.value.unwrap_or_default());
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return bytes,
                Some(Err(e)) => panic!("{e}"),
                None => panic!("no end of the topic in 10 s"),
            }
        }
    })
    .await
    .unwrap()
}

/// Error-level log lines, as text, from the moment it is installed (for this process).
fn errors_logged() -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use tracing_subscriber::layer::{Context, SubscriberExt};
    struct Errors(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Errors {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if *event.metadata().level() == tracing::Level::ERROR {
                self.0.lock().unwrap().push(format!("{event:?}"));
            }
        }
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Errors(seen.clone()));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test process");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_to_the_end_of_the_log_is_not_logged_as_an_error() {
    let errors = errors_logged();
    let topic = topic();
    let store = KafkaStore::open(config(&topic, KafkaRole::Writer, None)).await.unwrap();
    let s = stream();
    for i in 0..5u64 {
        let expected = if i == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(i * 10 - 1) };
        store.append(&s, expected, events(10)).await.unwrap();
        // Every read ends at the end of the partition, as does the follower's each poll.
        assert_eq!(store.read_stream(&s, 0, 1000).await.unwrap().len() as u64, (i + 1) * 10);
    }
    assert_eq!(store.read_all(0, 1000).await.unwrap().len(), 50);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let errors = errors.lock().unwrap();
    let eof: Vec<_> = errors.iter().filter(|e| e.contains("PartitionEOF") || e.contains("end of partition")).collect();
    assert!(eof.is_empty(), "reaching the end of the log was logged as an error: {eof:#?}");
}
