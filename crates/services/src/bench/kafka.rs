//! `append-kafka`: the Kafka log against a raw transactional producer on the same broker.

use super::Measurement;
use std::time::Duration;

#[cfg(not(feature = "kafka"))]
pub async fn append(_brokers: &str, _duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    anyhow::bail!("this build has no Kafka backend: build perfect21 with `--features kafka`")
}

#[cfg(feature = "kafka")]
pub async fn append(brokers: &str, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    use super::append::{drive, sample_event};
    use perfect21_events::store::{KafkaConfig, KafkaRole, KafkaStore};
    use std::sync::Arc;
    const S: &str = "append-kafka";
    let topic = |side: &str| format!("p21bench-{side}-{}", uuid::Uuid::now_v7().simple());
    let open = |side: &str| {
        let mut config = KafkaConfig::new(brokers, topic(side));
        config.role = KafkaRole::Writer;
        KafkaStore::open(config)
    };
    let batched = drive(Arc::new(open("batch").await?), 1, super::append::BATCH, duration).await?;
    let concurrent = drive(Arc::new(open("concurrent").await?), super::append::APPENDERS, 1, duration).await?;
    // Our record for the sample event: its payload and metadata, the envelope (ids, stream,
    // type, version, time) and the link, about 110 bytes more.
    let sample = sample_event();
    let record_bytes = sample.payload.len() + sample.metadata.encode().len() + 110;
    let raw = |per_transaction: usize| {
        let (brokers, topic) = (brokers.to_string(), topic("raw"));
        tokio::task::spawn_blocking(move || raw_transactions(&brokers, &topic, record_bytes, per_transaction, duration))
    };
    let raw_100 = raw(100).await??;
    // The most 64 appenders waiting on their answers can put in one transaction.
    let raw_64 = raw(super::append::APPENDERS).await??;
    Ok(vec![
        Measurement::rate(S, "batch_100", batched.events_per_sec, raw_100, "events/s"),
        Measurement::rate(S, "concurrent_64", concurrent.events_per_sec, raw_100, "events/s"),
        Measurement::rate(S, "concurrent_64_vs_64_per_transaction", concurrent.events_per_sec, raw_64, "events/s"),
    ])
}

/// Records of `bytes` bytes with our two headers, `per_transaction` per transaction, for
/// `duration`: events per second.
#[cfg(feature = "kafka")]
fn raw_transactions(
    brokers: &str,
    topic: &str,
    bytes: usize,
    per_transaction: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    use std::time::Instant;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", format!("raw-{topic}"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("retry.backoff.ms", "5")
        .create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    let value = vec![0x5au8; bytes];
    let key = b"bench-0191f3a0-0000-7000-8000-000000000000";
    let start = Instant::now();
    let mut events = 0u64;
    let mut position = 0u64;
    while start.elapsed() < duration {
        producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(per_transaction);
        for _ in 0..per_transaction {
            position += 1;
            let p = position.to_be_bytes();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header { key: "perfect21-kind", value: Some(&b"event"[..]) })
                .insert(Header { key: "perfect21-position", value: Some(&p[..]) });
            let record = FutureRecord::to(topic).partition(0).key(&key[..]).payload(&value[..]).headers(headers);
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
        events += per_transaction as u64;
    }
    Ok(events as f64 / start.elapsed().as_secs_f64())
}
