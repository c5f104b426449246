//! `append-kafka`: the Kafka log against a raw transactional producer on the same broker.

use super::Measurement;
use std::time::Duration;

#[cfg(not(feature = "kafka"))]
pub async fn append(_brokers: &str, _duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    anyhow::bail!("this build has no Kafka backend: build perfect21 with `--features kafka`")
}

#[cfg(not(feature = "kafka"))]
pub async fn relay(_scratch: &super::Scratch, _brokers: &str) -> anyhow::Result<Vec<Measurement>> {
    anyhow::bail!("this build has no Kafka sink: build perfect21 with `--features kafka`")
}

/// `relay --sink kafka`: the relay to a Kafka topic against a raw idempotent producer
/// sending the same records (keys, bodies, headers) with the same window, in rounds
/// alternating with it; medians.
#[cfg(feature = "kafka")]
pub async fn relay(scratch: &super::Scratch, brokers: &str) -> anyhow::Result<Vec<Measurement>> {
    use super::relay::ROUNDS;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    // Five times the RabbitMQ run's events: at this rate 20k would be over before a
    // topic's first metadata settles.
    const EVENTS: usize = 100_000;
    use crate::relay::{RelayConfig, RelayStatus, SinkConfig};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;
    const S: &str = "relay-kafka";
    let super::relay::Relayable { store, live, secrets, head, messages } =
        super::relay::relayable(scratch, "relay-kafka.db", EVENTS).await?;
    let messages = Arc::new(messages);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    // Both sides' topics are made before either is timed.
    let made = |name: &str| {
        let name = format!("p21bench-{name}-{}", uuid::Uuid::now_v7().simple());
        let admin = &admin;
        async move {
            let topic = NewTopic::new(&name, 1, TopicReplication::Fixed(1));
            for r in admin.create_topics([&topic], &AdminOptions::new()).await? {
                r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
            }
            Ok::<_, anyhow::Error>(name)
        }
    };
    let (mut raw_rates, mut relay_rates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let topic = made("raw").await?;
        let relay_topic = made("relay").await?;
        let (b, m) = (brokers.to_string(), messages.clone());
        raw_rates.push(tokio::task::spawn_blocking(move || raw_produce(&b, &topic, &m)).await??);

        let status = Arc::new(RelayStatus::default());
        let sink = SinkConfig::Kafka { brokers: brokers.to_string(), topic: relay_topic };
        let config = RelayConfig { sink, checkpoint: scratch.file(&format!("relay-kafka-{round}.checkpoint")) };
        let start = Instant::now();
        let relay =
            tokio::spawn(crate::relay::run(config, store.clone(), live.clone(), secrets.clone(), status.clone()));
        while status.confirmed.load(Ordering::Relaxed) < head {
            anyhow::ensure!(!relay.is_finished(), "the relay stopped");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        relay_rates.push(head as f64 / start.elapsed().as_secs_f64());
        relay.abort();
    }
    let (raw, ours) = (super::median(&mut raw_rates), super::median(&mut relay_rates));
    Ok(vec![Measurement::rate(S, "events_published", ours, raw, "msgs/s")])
}

/// The same records the Kafka sink sends, through an idempotent producer with the
/// relay's window: messages per second.
#[cfg(feature = "kafka")]
fn raw_produce(brokers: &str, topic: &str, messages: &[crate::relay::message::Outgoing]) -> anyhow::Result<f64> {
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::collections::VecDeque;
    use std::time::Instant;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()?;
    let start = Instant::now();
    let mut in_flight = VecDeque::new();
    for m in messages {
        if in_flight.len() >= crate::relay::WINDOW {
            let d: rdkafka::producer::DeliveryFuture = in_flight.pop_front().expect("in flight");
            futures::executor::block_on(d)?.map_err(|(e, _)| e)?;
        }
        let priority = m.priority.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "message_type", value: Some(m.message_type.as_str()) })
            .insert(Header { key: "source_service", value: Some(m.source_service.as_str()) });
        for (key, value) in [("user_id", &m.user_id), ("correlation_id", &m.correlation_id)] {
            if let Some(v) = value {
                headers = headers.insert(Header { key, value: Some(v.as_str()) });
            }
        }
        headers = headers
            .insert(Header { key: "message_id", value: Some(m.message_id.as_str()) })
            .insert(Header { key: "routing_key", value: Some(m.routing_key.as_str()) })
            .insert(Header { key: "priority", value: Some(priority.as_str()) })
            .insert(Header { key: "content_type", value: Some("application/json") });
        let key = m.user_id.as_deref().unwrap_or("perfect21");
        let record =
            FutureRecord::to(topic).key(key).payload(&m.body).headers(headers).timestamp((m.timestamp * 1000) as i64);
        in_flight.push_back(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for d in in_flight {
        futures::executor::block_on(d)?.map_err(|(e, _)| e)?;
    }
    Ok(messages.len() as f64 / start.elapsed().as_secs_f64())
}

/// Rounds of `append-kafka`: each alternates which goes first, ours or the raw
/// producer (the broker shares the two cores; a side measured alone once read
/// anywhere from 0.3 to 1.4 of the other), and the medians are reported.
#[cfg(feature = "kafka")]
const ROUNDS: usize = 4;

#[cfg(feature = "kafka")]
pub async fn append(brokers: &str, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    use super::append::{drive, sample_event, APPENDERS, BATCH};
    use perfect21_events::store::{KafkaConfig, KafkaRole, KafkaStore};
    use std::sync::Arc;
    const S: &str = "append-kafka";
    let topic = |side: &str| format!("p21bench-{side}-{}", uuid::Uuid::now_v7().simple());
    let open = |side: &str| {
        let mut config = KafkaConfig::new(brokers, topic(side));
        config.role = KafkaRole::Writer;
        KafkaStore::open(config)
    };
    // Our record for the sample event: its payload and metadata, the envelope (ids, stream,
    // type, version, time) and the link, about 110 bytes more.
    let sample = sample_event();
    let record_bytes = sample.payload.len() + sample.metadata.encode().len() + 110;
    let raw = |per_transaction: usize| {
        let (brokers, topic) = (brokers.to_string(), topic("raw"));
        tokio::task::spawn_blocking(move || RawTransactions::new(&brokers, &topic, record_bytes, per_transaction))
    };
    // 100-event appends against 100 per transaction; 64 appenders against 64 per
    // transaction, the most 64 appenders waiting on their answers can share.
    let mut sides = [
        Side::new(Arc::new(open("batch").await?), 1, BATCH, raw(100).await??),
        Side::new(Arc::new(open("concurrent").await?), APPENDERS, 1, raw(APPENDERS).await??),
    ];
    let round = duration / 2;
    for i in 0..ROUNDS {
        eprintln!("append-kafka: round {} of {ROUNDS}", i + 1);
        for side in &mut sides {
            for raw_first in [i % 2 == 1, i % 2 == 0] {
                if raw_first {
                    let rate = side.run_raw(round).await?;
                    side.raw_rates.push(rate);
                } else {
                    let run = drive(side.store.clone(), side.appenders, side.per_append, round).await?;
                    side.rates.push(run.events_per_sec);
                }
            }
        }
    }
    let [(ours_batch, raw_batch), (ours_concurrent, raw_concurrent)] =
        sides.map(|mut s| (super::median(&mut s.rates), super::median(&mut s.raw_rates)));
    Ok(vec![
        Measurement::rate(S, "batch_100", ours_batch, raw_batch, "events/s"),
        Measurement::rate(S, "concurrent_64", ours_concurrent, raw_batch, "events/s"),
        Measurement::rate(S, "concurrent_64_vs_64_per_transaction", ours_concurrent, raw_concurrent, "events/s"),
    ])
}

/// One workload of `append-kafka`: our store driven by `appenders` appending
/// `per_append` events at a time, and the raw producer it is measured against.
#[cfg(feature = "kafka")]
struct Side {
    store: std::sync::Arc<dyn perfect21_events::EventStore>,
    appenders: usize,
    per_append: usize,
    /// Between rounds; taken while a round of it runs on the blocking pool.
    raw: Option<RawTransactions>,
    rates: Vec<f64>,
    raw_rates: Vec<f64>,
}

#[cfg(feature = "kafka")]
impl Side {
    fn new(
        store: std::sync::Arc<dyn perfect21_events::EventStore>,
        appenders: usize,
        per_append: usize,
        raw: RawTransactions,
    ) -> Self {
        Side { store, appenders, per_append, raw: Some(raw), rates: Vec::new(), raw_rates: Vec::new() }
    }

    /// A round of the raw producer: events per second.
    async fn run_raw(&mut self, duration: Duration) -> anyhow::Result<f64> {
        let mut raw = self.raw.take().expect("the raw producer is back after each round");
        let (raw, rate) = tokio::task::spawn_blocking(move || {
            let rate = raw.run(duration);
            (raw, rate)
        })
        .await?;
        self.raw = Some(raw);
        rate
    }
}

/// A raw transactional producer of records of our size with our two headers, a given
/// number per transaction, to a topic of its own.
#[cfg(feature = "kafka")]
struct RawTransactions {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    value: Vec<u8>,
    per_transaction: usize,
    position: u64,
}

#[cfg(feature = "kafka")]
impl RawTransactions {
    /// The producer, its transactions initialised and one committed (the topic made and
    /// its metadata known before anything is timed).
    fn new(brokers: &str, topic: &str, bytes: usize, per_transaction: usize) -> anyhow::Result<Self> {
        use rdkafka::config::ClientConfig;
        use rdkafka::producer::Producer;
        let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("transactional.id", format!("raw-{topic}"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()?;
        producer.init_transactions(Duration::from_secs(30))?;
        let mut raw = RawTransactions {
            producer,
            topic: topic.to_string(),
            value: vec![0x5au8; bytes],
            per_transaction,
            position: 0,
        };
        raw.transaction()?;
        Ok(raw)
    }

    /// Transactions for `duration`: events per second.
    fn run(&mut self, duration: Duration) -> anyhow::Result<f64> {
        let start = std::time::Instant::now();
        let mut events = 0u64;
        while start.elapsed() < duration {
            self.transaction()?;
            events += self.per_transaction as u64;
        }
        Ok(events as f64 / start.elapsed().as_secs_f64())
    }

    fn transaction(&mut self) -> anyhow::Result<()> {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureRecord, Producer};
        let key = b"bench-0191f3a0-0000-7000-8000-000000000000";
        let producer = &self.producer;
        producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(self.per_transaction);
        for _ in 0..self.per_transaction {
            self.position += 1;
            let p = self.position.to_be_bytes();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header { key: "perfect21-kind", value: Some(&b"event"[..]) })
                .insert(Header { key: "perfect21-position", value: Some(&p[..]) });
            let record =
                FutureRecord::to(&self.topic).partition(0).key(&key[..]).payload(&self.value[..]).headers(headers);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        // Acknowledged before the commit, as the store does (the commit's own flush polls in
        // steps of 100 ms while anything is queued).
        for d in deliveries {
            futures::executor::block_on(d)?.map_err(|(e, _)| e)?;
        }
        while producer.in_flight_count() > 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
        producer.commit_transaction(Duration::from_secs(30))?;
        Ok(())
    }
}
