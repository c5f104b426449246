//! Where the relay publishes: a [`Sink`] takes messages in log order and says, for each,
//! when the broker holds it. RabbitMQ (publisher confirms) and, built with the `kafka`
//! feature, a Kafka topic (idempotent producer).

use super::message::{Outgoing, EXCHANGE};
use anyhow::Context;
use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

/// Resolves once the broker holds the message (an error: it refused it, or was lost).
pub type Confirm = BoxFuture<'static, anyhow::Result<()>>;

/// One connection to a broker, publishing in the order it is given messages.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Hands `m` to the broker; the answer resolves when the broker holds it.
    async fn publish(&mut self, m: &Outgoing, traceparent: Option<&str>) -> anyhow::Result<Confirm>;
}

/// Which broker a relay publishes to.
#[derive(Clone, Debug)]
pub enum SinkConfig {
    /// The `perfect21.events` topic exchange of this RabbitMQ.
    Amqp { url: String },
    /// A Kafka topic, each message keyed by its user (per-user order).
    Kafka { brokers: String, topic: String },
}

impl SinkConfig {
    /// A short name for logs and checkpoint files: `amqp` or `kafka`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Amqp { .. } => "amqp",
            SinkConfig::Kafka { .. } => "kafka",
        }
    }

    /// Connects, declaring what the sink needs (the exchange, the topic).
    pub async fn connect(&self) -> anyhow::Result<Box<dyn Sink>> {
        match self {
            SinkConfig::Amqp { url } => Ok(Box::new(Rabbit::connect(url).await?)),
            SinkConfig::Kafka { brokers, topic } => kafka(brokers, topic).await,
        }
    }
}

struct Rabbit {
    _conn: Connection,
    channel: lapin::Channel,
}

impl Rabbit {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connecting to {}", redact(url)))?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
        Ok(Rabbit { _conn: conn, channel })
    }
}

#[async_trait::async_trait]
impl Sink for Rabbit {
    async fn publish(&mut self, m: &Outgoing, traceparent: Option<&str>) -> anyhow::Result<Confirm> {
        let confirm = publish(&self.channel, m, traceparent).await?;
        Ok(async move {
            match confirm.await? {
                lapin::Confirmation::Nack(_) => anyhow::bail!("the broker refused (nack) the message"),
                _ => Ok(()),
            }
        }
        .boxed())
    }
}

/// The AMQP properties and headers of a message (docs/wire.md).
fn properties(m: &Outgoing, traceparent: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in headers_of(m, traceparent) {
        headers.insert(k.into(), v.map_or(AMQPValue::Void, |v| AMQPValue::LongString(v.into())));
    }
    let mut p = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_priority(m.priority)
        .with_message_id(ShortString::from(m.message_id.as_str()))
        .with_timestamp(m.timestamp)
        .with_type(ShortString::from(m.message_type.as_str()))
        .with_headers(headers);
    if let Some(c) = &m.correlation_id {
        p = p.with_correlation_id(ShortString::from(c.as_str()));
    }
    p
}

/// The headers every sink sends (docs/wire.md): AMQP headers, and Kafka record headers.
fn headers_of<'a>(m: &'a Outgoing, traceparent: Option<&'a str>) -> Vec<(&'static str, Option<&'a str>)> {
    let mut headers = vec![
        ("message_type", Some(m.message_type.as_str())),
        ("source_service", Some(m.source_service.as_str())),
        ("user_id", m.user_id.as_deref()),
        ("correlation_id", m.correlation_id.as_deref()),
    ];
    if traceparent.is_some() {
        headers.push(("traceparent", traceparent));
    }
    headers
}

/// Publishes one message to the exchange, with its properties and headers; the
/// returned confirmation resolves when the broker has it.
pub async fn publish(
    channel: &lapin::Channel,
    m: &Outgoing,
    traceparent: Option<&str>,
) -> lapin::Result<lapin::PublisherConfirm> {
    let props = properties(m, traceparent);
    channel
        .basic_publish(EXCHANGE.into(), m.routing_key.as_str().into(), BasicPublishOptions::default(), &m.body, props)
        .await
}

pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(not(feature = "kafka"))]
async fn kafka(_brokers: &str, _topic: &str) -> anyhow::Result<Box<dyn Sink>> {
    anyhow::bail!("this build has no Kafka sink: build perfect21 with `--features kafka`")
}

#[cfg(feature = "kafka")]
async fn kafka(brokers: &str, topic: &str) -> anyhow::Result<Box<dyn Sink>> {
    Ok(Box::new(kafka_sink::KafkaSink::connect(brokers, topic).await?))
}

#[cfg(feature = "kafka")]
mod kafka_sink {
    use super::{headers_of, Confirm, Outgoing, Sink};
    use anyhow::Context;
    use futures::FutureExt;
    use rdkafka::config::ClientConfig;
    use rdkafka::error::KafkaError;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    use rdkafka::types::RDKafkaErrorCode;
    use std::time::Duration;

    /// An idempotent producer (`acks=all`): retries never duplicate or reorder a record
    /// within its partition, and a message's key is its user, so each user's messages
    /// keep log order.
    pub struct KafkaSink {
        producer: FutureProducer,
        topic: String,
    }

    impl KafkaSink {
        pub async fn connect(brokers: &str, topic: &str) -> anyhow::Result<Self> {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "1")
                .set("message.timeout.ms", "30000")
                .create()
                .with_context(|| format!("a Kafka producer for {brokers}"))?;
            // Reach the brokers now, so that a wrong address fails here, by name.
            let probe = producer.clone();
            let (t, b) = (topic.to_string(), brokers.to_string());
            tokio::task::spawn_blocking(move || probe.client().fetch_metadata(Some(&t), Duration::from_secs(10)))
                .await?
                .with_context(|| format!("reaching the Kafka brokers at {b}"))?;
            Ok(KafkaSink { producer, topic: topic.to_string() })
        }
    }

    #[async_trait::async_trait]
    impl Sink for KafkaSink {
        async fn publish(&mut self, m: &Outgoing, traceparent: Option<&str>) -> anyhow::Result<Confirm> {
            let mut headers = OwnedHeaders::new();
            for (key, value) in headers_of(m, traceparent) {
                if let Some(value) = value {
                    headers = headers.insert(Header { key, value: Some(value) });
                }
            }
            let priority = m.priority.to_string();
            headers = headers
                .insert(Header { key: "message_id", value: Some(m.message_id.as_str()) })
                .insert(Header { key: "routing_key", value: Some(m.routing_key.as_str()) })
                .insert(Header { key: "priority", value: Some(priority.as_str()) })
                .insert(Header { key: "content_type", value: Some("application/json") });
            // Events about no user (a role's definition) share one key: their own order.
            let key = m.user_id.as_deref().unwrap_or("perfect21");
            let mut record = FutureRecord::to(&self.topic)
                .key(key)
                .payload(&m.body)
                .headers(headers)
                .timestamp((m.timestamp * 1000) as i64);
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(d) => break d,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        record = back;
                    }
                    Err((e, _)) => return Err(anyhow::anyhow!("producing to Kafka topic {}: {e}", self.topic)),
                }
            };
            let message_id = m.message_id.clone();
            Ok(async move {
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(anyhow::anyhow!("Kafka did not take message {message_id}: {e}")),
                    Err(_) => Err(anyhow::anyhow!("the Kafka producer dropped message {message_id}")),
                }
            }
            .boxed())
        }
    }
}
