//! One suite for every sink, against the real brokers (RabbitMQ of `scripts/test`, and
//! with the `kafka` feature the broker of `scripts/kafka`): every message a sink
//! confirmed is in the broker, once, with its body and headers, each user's messages
//! in the order they were published.

use futures::StreamExt;
use perfect21_relay::message::{Outgoing, EXCHANGE};
use perfect21_relay::SinkConfig;
use std::collections::HashMap;
use std::time::Duration;

/// A message as a consumer read it back.
#[derive(Debug, PartialEq)]
struct Got {
    message_id: String,
    user_id: Option<String>,
    message_type: String,
    body: Vec<u8>,
}

fn messages(routing_key: &str, n: usize) -> Vec<Outgoing> {
    let users: Vec<String> = (0..3).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    (0..n)
        .map(|i| {
            let message_id = uuid::Uuid::now_v7().to_string();
            let user_id = (i % 4 != 3).then(|| users[i % 3].clone());
            Outgoing {
                routing_key: routing_key.to_string(),
                message_type: "user.login".into(),
                priority: (i % 10) as u8,
                message_id: message_id.clone(),
                timestamp: 1_767_225_600 + i as u64,
                user_id: user_id.clone(),
                correlation_id: Some(uuid::Uuid::now_v7().to_string()),
                source_service: "sink-suite".into(),
                body: serde_json::to_vec(&serde_json::json!({"message_id": message_id, "n": i, "user_id": user_id}))
                    .unwrap(),
            }
        })
        .collect()
}

/// Publishes `sent` through the sink and waits for every confirmation.
async fn publish_all(config: &SinkConfig, sent: &[Outgoing]) {
    let mut sink = config.connect().await.expect("the sink connects");
    let mut confirms = Vec::new();
    for m in sent {
        confirms.push(sink.publish(m, Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")).await.unwrap());
    }
    for c in confirms {
        c.await.expect("the broker confirms");
    }
}

/// What every sink must do, given a reader of what it published.
fn check(sent: &[Outgoing], got: &[Got]) {
    assert_eq!(got.len(), sent.len(), "each confirmed message once");
    let by_id: HashMap<&str, &Got> = got.iter().map(|g| (g.message_id.as_str(), g)).collect();
    for m in sent {
        let g = by_id.get(m.message_id.as_str()).unwrap_or_else(|| panic!("{} lost", m.message_id));
        assert_eq!((&g.body, &g.user_id, &g.message_type), (&m.body, &m.user_id, &m.message_type));
    }
    // Per user, the order of publication.
    let mut order: HashMap<Option<&str>, Vec<&str>> = HashMap::new();
    for m in sent {
        order.entry(m.user_id.as_deref()).or_default().push(&m.message_id);
    }
    let mut seen: HashMap<Option<&str>, Vec<&str>> = HashMap::new();
    for g in got {
        seen.entry(g.user_id.as_deref()).or_default().push(&g.message_id);
    }
    assert_eq!(seen, order, "each user's messages in publication order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_sink_delivers_every_confirmed_message_once_in_order() {
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable};
    let url = std::env::var("PERFECT21_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let key = format!("sinksuite.{}", uuid::Uuid::new_v4().simple());
    let config = SinkConfig::Amqp { url: url.clone() };
    // The sink declares the exchange; bind a queue to this test's key before publishing.
    drop(config.connect().await.expect("RabbitMQ reachable"));
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let queue = format!("relay-test-{}", uuid::Uuid::new_v4().simple());
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        EXCHANGE.into(),
        key.as_str().into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let sent = messages(&key, 300);
    publish_all(&config, &sent).await;
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut consumer =
        ch.basic_consume(queue.as_str().into(), "suite".into(), opts, FieldTable::default()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let d =
            tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.expect("delivered").unwrap().unwrap();
        let header = |name: &str| {
            d.properties.headers().as_ref().and_then(|h| match h.inner().get(name) {
                Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                _ => None,
            })
        };
        assert_eq!(header("traceparent").as_deref(), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        got.push(Got {
            message_id: d.properties.message_id().as_ref().unwrap().to_string(),
            user_id: header("user_id"),
            message_type: header("message_type").unwrap(),
            body: d.data.clone(),
        });
    }
    check(&sent, &got);
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_sink_delivers_every_confirmed_message_once_in_order() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let brokers = std::env::var("PERFECT21_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let topic = format!("p21t-sink-{}", uuid::Uuid::new_v4().simple());
    let config = SinkConfig::Kafka { brokers: brokers.clone(), topic: topic.clone() };
    let sent = messages("user.events.login", 300);
    publish_all(&config, &sent).await;
    let got = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "p21t-sink-suite")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
        let partitions = metadata.topics()[0].partitions().len();
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(&topic, p as i32, rdkafka::Offset::Beginning).unwrap();
        }
        consumer.assign(&list).unwrap();
        let (mut got, mut ended) = (Vec::new(), 0);
        while ended < partitions {
            match consumer.poll(Duration::from_secs(10)).expect("the topic ends") {
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => ended += 1,
                Err(e) => panic!("{e}"),
                Ok(m) => {
                    let header = |name: &str| {
                        m.headers()
                            .and_then(|h| h.iter().find(|x| x.key == name))
                            .and_then(|x| x.value)
                            .map(|v| String::from_utf8(v.to_vec()).unwrap())
                    };
                    let user_id = header("user_id");
                    assert_eq!(m.key(), Some(user_id.as_deref().unwrap_or("perfect21").as_bytes()), "keyed by user");
                    assert!(header("traceparent").is_some() && header("routing_key").is_some());
                    got.push(Got {
                        message_id: header("message_id").unwrap(),
                        user_id,
                        message_type: header("message_type").unwrap(),
                        body: m.payload().unwrap().to_vec(),
                    });
                }
            }
        }
        got
    })
    .await
    .unwrap();
    check(&sent, &got);
}
