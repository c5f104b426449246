//! Relay throughput against raw lapin confirmed publishing of the same bodies,
//! and commit → consumer latency against raw publish → consumer latency.

use super::{median, percentile, Measurement, Scratch};
use crate::relay::message::{outgoing, Contact, EXCHANGE};
use crate::relay::{RelayConfig, RelayStatus, WINDOW};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::LiveModels;
use perfect21_events::catalog::UserLoginFailed;
use perfect21_events::store::{SqliteConfig, SqliteStore};
use perfect21_events::{Event, EventData, EventStore, ExpectedVersion, Metadata, StreamId};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const EVENTS: usize = 20_000;
const LATENCY_SAMPLES: usize = 300;
pub(super) const ROUNDS: usize = 3;

fn event() -> Event {
    Event::UserLoginFailed(UserLoginFailed {
        user_id: Uuid::now_v7(),
        reason: "bad_password".into(),
        failure_count: 1,
        risk_score: 0.3,
    })
}

fn meta() -> Metadata {
    Metadata {
        correlation_id: Some(Uuid::now_v7()),
        client_ip: Some("203.0.113.9".into()),
        source_service: Some("auth".into()),
        ..Default::default()
    }
}

/// A consumer on its own queue bound to `#`, recording when each message id arrives.
async fn tap(amqp: &str) -> anyhow::Result<(Connection, Arc<Mutex<HashMap<String, Instant>>>)> {
    let conn = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    let own = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let q = ch.queue_declare("".into(), own, FieldTable::default()).await?;
    ch.queue_bind(q.name().clone(), EXCHANGE.into(), "#".into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            "bench".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let record = arrivals.clone();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            if let Some(id) = d.properties.message_id() {
                record.lock().expect("arrivals").insert(id.to_string(), Instant::now());
            }
        }
    });
    Ok((conn, arrivals))
}

async fn wait_arrival(arrivals: &Mutex<HashMap<String, Instant>>, id: &str) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(at) = arrivals.lock().expect("arrivals").get(id) {
            return Ok(*at);
        }
        anyhow::ensure!(Instant::now() < deadline, "message {id} never arrived");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// A scratch log for a relay benchmark, its read models caught up, and the messages the
/// relay would make of its events (what a baseline publishes).
pub(super) struct Relayable {
    pub store: Arc<dyn EventStore>,
    pub live: Arc<LiveModels>,
    pub secrets: SecretBox,
    pub head: u64,
    pub messages: Vec<crate::relay::message::Outgoing>,
}

/// `events` failed logins (100 per append) in the scratch log `file`.
pub(super) async fn relayable(scratch: &Scratch, file: &str, events: usize) -> anyhow::Result<Relayable> {
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(SqliteConfig::new(scratch.file(file))).await?);
    for chunk in 0..events / 100 {
        let batch = (0..100).map(|_| EventData::new(&event(), meta())).collect::<Result<Vec<_>, _>>()?;
        store.append(&StreamId::of("user", chunk)?, ExpectedVersion::Any, batch).await?;
    }
    let live = LiveModels::start(store.clone());
    let secrets = SecretBox::random();
    let head = store.head_position().await?;
    live.wait_for(head, Duration::from_secs(30)).await?;
    let recorded = store.read_all(1, events).await?;
    let messages =
        recorded.iter().map(|r| outgoing(r, r.decode().ok().as_ref(), &Contact::default(), &secrets)).collect();
    Ok(Relayable { store, live, secrets, head, messages })
}

pub async fn relay(scratch: &Scratch, amqp: &str) -> anyhow::Result<Vec<Measurement>> {
    const S: &str = "relay";
    // Baseline: the same messages (bodies, properties and headers), published with
    // confirms and the same window, nothing else.
    let Relayable { store, live, secrets, head, messages: bodies } = relayable(scratch, "relay.db", EVENTS).await?;
    let conn = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    // Rounds of raw then ours, alternating, so that both sides see the same drift of a
    // shared machine; the medians are reported.
    let (mut raw_rates, mut relay_rates) = (Vec::new(), Vec::new());
    let mut relay = None;
    for round in 0..ROUNDS {
        let start = Instant::now();
        let mut in_flight = FuturesOrdered::new();
        for m in &bodies {
            if in_flight.len() >= WINDOW {
                in_flight.next().await.expect("in flight")?;
            }
            in_flight.push_back(crate::relay::publish(&ch, m, None).await?);
        }
        while let Some(c) = in_flight.next().await {
            c?;
        }
        raw_rates.push(bodies.len() as f64 / start.elapsed().as_secs_f64());

        // Ours: a relay from position 1 (a checkpoint of its own) until the broker confirmed the head.
        if let Some(previous) = relay.take() {
            tokio::task::JoinHandle::abort(&previous);
        }
        let status = Arc::new(RelayStatus::default());
        let checkpoint = scratch.file(&format!("relay-{round}.checkpoint"));
        let config = RelayConfig { sink: crate::relay::SinkConfig::Amqp { url: amqp.to_string() }, checkpoint };
        let start = Instant::now();
        relay =
            Some(tokio::spawn(crate::relay::run(config, store.clone(), live.clone(), secrets.clone(), status.clone())));
        while status.confirmed.load(Ordering::Relaxed) < head {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        relay_rates.push(head as f64 / start.elapsed().as_secs_f64());
    }
    let (raw_rate, relay_rate) = (median(&mut raw_rates), median(&mut relay_rates));
    let relay = relay.expect("a relay runs");

    // Latency: commit → consumer through the running relay, against publish → consumer raw.
    let (_tap, arrivals) = tap(amqp).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ours = Vec::new();
    for i in 0..LATENCY_SAMPLES {
        let data = EventData::new(&event(), meta())?;
        let id = data.event_id.to_string();
        store.append(&StreamId::of("latency", i)?, ExpectedVersion::Any, vec![data]).await?;
        let committed = Instant::now();
        let at = wait_arrival(&arrivals, &id).await?;
        ours.push(at.saturating_duration_since(committed).as_secs_f64() * 1e6);
    }
    let mut raw = Vec::new();
    for m in bodies.iter().take(LATENCY_SAMPLES) {
        let id = format!("raw-{}", m.message_id);
        let props = BasicProperties::default().with_delivery_mode(2).with_message_id(id.as_str().into());
        let sent = Instant::now();
        ch.basic_publish(
            EXCHANGE.into(),
            m.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &m.body,
            props,
        )
        .await?
        .await?;
        let at = wait_arrival(&arrivals, &id).await?;
        raw.push(at.saturating_duration_since(sent).as_secs_f64() * 1e6);
    }
    relay.abort();
    ours.sort_by(f64::total_cmp);
    raw.sort_by(f64::total_cmp);
    Ok(vec![
        Measurement::rate(S, "events_published", relay_rate, raw_rate, "msgs/s"),
        Measurement::latency(S, "commit_to_consumer_p50", percentile(&ours, 0.5), percentile(&raw, 0.5), "us"),
        Measurement::latency(S, "commit_to_consumer_p99", percentile(&ours, 0.99), percentile(&raw, 0.99), "us"),
    ])
}
