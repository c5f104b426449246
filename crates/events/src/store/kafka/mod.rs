//! The log on Apache Kafka: one partition of one topic, so that the topic's order is
//! the log's.
//!
//! - **One writer.** Expected versions need one place that decides them: the writer.
//!   It holds the log's transactional id (`perfect21-<topic>`); a new writer's
//!   `init_transactions` fences the old one, whose appends then fail with
//!   [`StoreError::Fenced`] instead of interleaving. Other instances (`serve` replicas)
//!   forward their appends to the writer the log names, over an authenticated TCP link
//!   ([`forward`](super::forward)), and read the topic themselves.
//! - **Group commit as transactions.** The writer takes every append waiting and writes
//!   them in one Kafka transaction (`acks=all`, idempotent): an append is all or nothing,
//!   and readers (`isolation.level=read_committed`) never see an aborted or open one.
//! - **Dense positions.** Transaction markers take offsets, so positions are not
//!   offsets: the writer stamps each record's position in a header, and every instance
//!   keeps an index of position → offset, stream → positions and event id → position,
//!   rebuilt from the topic when it opens and followed live after that.
//! - **The writer's address** is itself a record of the topic (a header marks it as not
//!   an event), written when a writer takes over, so forwarders find the current one.
//! - **Nothing is rewritten**: [`EventStore::redact`] is refused; personal fields are
//!   sealed at append and erased by deleting their subject's key (see [`crate::seal`]).

mod config;

pub use config::{KafkaConfig, Role};

use super::forward;
use super::queue::{serve_groups_lingering, submit, AppendRequest};
use super::tail::Tail;
use super::{classify_existing, read_bounds, validate_append, EventStore, Existing, Redaction, StoreStats};
use crate::chain::{self, ChainRecord, Digest};
use crate::envelope::{
    from_micros, to_micros, AppendResult, EventData, ExpectedVersion, Metadata, RecordedEvent, StreamId,
};
use crate::error::StoreError;
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

const BACKEND: &str = "kafka";
/// Header naming what a record is: [`EVENT`] or [`WRITER`].
const KIND: &str = "perfect21-kind";
const EVENT: &[u8] = b"event";
const WRITER: &[u8] = b"writer";
/// Header holding an event's position (8 bytes, big-endian).
const POSITION: &str = "perfect21-position";
/// Largest record the topic is made to take: the largest event and its envelope.
const MAX_RECORD_BYTES: usize = crate::limits::MAX_EVENT_BYTES + 64 * 1024;
/// Positions apart that one read still fetches as one run.
const READ_GAP: u64 = 256;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(BACKEND, e)
}

/// An event as the topic holds it (the record's value).
#[derive(Serialize, Deserialize)]
struct Stored {
    event_id: Uuid,
    stream_id: String,
    stream_version: u64,
    event_type: String,
    schema_version: u16,
    recorded_at: i64,
    metadata: Vec<u8>,
    payload: Vec<u8>,
    link: Digest,
}

impl Stored {
    fn content(&self) -> Digest {
        chain::content_digest(
            &self.event_id,
            &self.stream_id,
            self.stream_version,
            &self.event_type,
            self.schema_version,
            from_micros(self.recorded_at),
            &self.metadata,
            &self.payload,
        )
    }

    fn recorded(&self, position: u64) -> Result<RecordedEvent, StoreError> {
        let metadata = Metadata::decode(&self.metadata)
            .map_err(|e| StoreError::Corrupt { position, reason: format!("metadata does not decode: {e}") })?;
        Ok(RecordedEvent {
            event_id: self.event_id,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            position,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            recorded_at: from_micros(self.recorded_at),
            metadata,
            payload: self.payload.clone(),
        })
    }
}

/// A writer's record: where forwarders reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Announcement {
    writer_id: Uuid,
    /// `host:port` of its forwarding listener; `None`: it takes no forwarded appends.
    address: Option<String>,
    started_at: i64,
}

/// What one record of the topic is.
enum Record {
    Event(u64, Stored),
    Writer(Announcement),
    /// Not ours (another producer's record in the topic): skipped.
    Foreign,
}

/// The position an event record's header gives, without decoding the record.
fn position_of(message: &impl Message) -> Option<u64> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == POSITION)
        .and_then(|h| h.value)
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_be_bytes)
}

fn parse(message: &impl Message) -> Result<Record, StoreError> {
    let Some(headers) = message.headers() else { return Ok(Record::Foreign) };
    let header = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value);
    let offset = message.offset();
    let corrupt = |reason: String| StoreError::Corrupt { position: 0, reason: format!("offset {offset}: {reason}") };
    match header(KIND) {
        Some(EVENT) => {
            let position = header(POSITION)
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("an event without a position header".into()))?;
            let stored: Stored = postcard::from_bytes(message.payload().unwrap_or_default())
                .map_err(|e| StoreError::Corrupt { position, reason: format!("the record does not decode: {e}") })?;
            Ok(Record::Event(position, stored))
        }
        Some(WRITER) => postcard::from_bytes(message.payload().unwrap_or_default())
            .map(Record::Writer)
            .map_err(|e| corrupt(format!("a writer record that does not decode: {e}"))),
        _ => Ok(Record::Foreign),
    }
}

/// What every instance knows of the log, from the topic.
#[derive(Default)]
struct Index {
    /// `offsets[p - 1]`: the offset of position `p`.
    offsets: Vec<i64>,
    /// Per position: its stream (an index into `names`) and stream version.
    stream_of: Vec<u32>,
    version_of: Vec<u64>,
    names: Vec<Arc<str>>,
    /// Per stream: its number in `names` and its positions in version order.
    streams: HashMap<Arc<str>, (u32, Vec<u64>)>,
    ids: HashMap<Uuid, u64>,
    by_type: BTreeMap<(String, u16), u64>,
    last_link: Digest,
    writer: Option<Announcement>,
    /// The next offset to read from the topic.
    next_offset: i64,
}

impl Index {
    fn head(&self) -> u64 {
        self.offsets.len() as u64
    }

    fn stream_version(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).and_then(|(_, p)| p.len().checked_sub(1)).map(|v| v as u64)
    }

    /// Where `id` is recorded: (stream, version, position).
    fn locate(&self, id: &Uuid) -> Option<(String, u64, u64)> {
        let position = *self.ids.get(id)?;
        let i = (position - 1) as usize;
        Some((self.names[self.stream_of[i] as usize].to_string(), self.version_of[i], position))
    }

    /// Records `stored`, the event at `position` (the next one) and `offset`.
    fn push(&mut self, position: u64, offset: i64, stored: &Stored) {
        debug_assert_eq!(position, self.head() + 1);
        let stream = stored.stream_id.as_str();
        let number = match self.streams.get_mut(stream) {
            Some((n, positions)) => {
                positions.push(position);
                *n
            }
            None => {
                let name: Arc<str> = stream.into();
                let n = self.names.len() as u32;
                self.names.push(name.clone());
                self.streams.insert(name, (n, vec![position]));
                n
            }
        };
        self.offsets.push(offset);
        self.stream_of.push(number);
        self.version_of.push(stored.stream_version);
        self.ids.insert(stored.event_id, position);
        *self.by_type.entry((stored.event_type.clone(), stored.schema_version)).or_default() += 1;
        self.last_link = stored.link;
        self.next_offset = self.next_offset.max(offset + 1);
    }

    /// Takes one record read from the topic at `offset`; returns the event it recorded,
    /// if it is one this index did not hold yet.
    fn take(&mut self, offset: i64, record: Record) -> Result<Option<(u64, Stored)>, StoreError> {
        self.next_offset = self.next_offset.max(offset + 1);
        match record {
            Record::Event(position, stored) => {
                let head = self.head();
                if position <= head {
                    // This instance's own commit, indexed when it was made.
                    return Ok(None);
                }
                if position != head + 1 {
                    return Err(StoreError::Corrupt {
                        position,
                        reason: format!("offset {offset} holds position {position}, after position {head}"),
                    });
                }
                self.push(position, offset, &stored);
                Ok(Some((position, stored)))
            }
            Record::Writer(announcement) => {
                self.writer = Some(announcement);
                Ok(None)
            }
            Record::Foreign => Ok(None),
        }
    }
}

/// The state the follower, the writer and the readers share.
struct Shared {
    config: KafkaConfig,
    index: RwLock<Index>,
    head: watch::Sender<u64>,
    tail: Tail,
    readers: Mutex<Vec<BaseConsumer>>,
    stop: AtomicBool,
}

impl Shared {
    fn announce_head(&self) {
        let head = self.index.read().expect("index").head();
        self.head.send_if_modified(|h| {
            let moved = head > *h;
            *h = (*h).max(head);
            moved
        });
    }

    fn consumer(&self) -> Result<BaseConsumer, StoreError> {
        if let Some(c) = self.readers.lock().expect("reader pool").pop() {
            return Ok(c);
        }
        consumer(&self.config)
    }
}

/// A consumer of the log: told where each read is to end (`enable.partition.eof`).
type BaseConsumer = rdkafka::consumer::BaseConsumer<Readers>;

/// The log's consumers' context. librdkafka raises "reached the end of the partition"
/// as an error event, which rdkafka's default context logs at ERROR level on every
/// read that ends (several a second on a busy log); here it is what the readers wait
/// for, handed to them by `poll`, and logged nowhere. Other errors are logged as the
/// default context does.
struct Readers;

impl ClientContext for Readers {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!(error = %error, reason, "librdkafka");
        }
    }
}

impl ConsumerContext for Readers {}

fn consumer(config: &KafkaConfig) -> Result<BaseConsumer, StoreError> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap)
        .set("group.id", format!("perfect21-reader-{}", config.topic))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.max.bytes", "67108864")
        .set("max.partition.fetch.bytes", "16777216")
        .create_with_context(Readers)
        .map_err(|e| err(format!("cannot make a Kafka consumer for {}: {e}", config.bootstrap)))
}

fn assign(consumer: &BaseConsumer, topic: &str, offset: i64) -> Result<(), StoreError> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(offset)).map_err(err)?;
    consumer.assign(&list).map_err(err)
}

/// Reads the topic from `index.next_offset` to its end (the last committed record),
/// indexing what it finds; returns the events that were new, in order.
fn catch_up(consumer: &BaseConsumer, shared: &Shared, deadline: Instant) -> Result<Vec<(u64, Stored)>, StoreError> {
    let topic = &shared.config.topic;
    let start = shared.index.read().expect("index").next_offset;
    assign(consumer, topic, start)?;
    let mut fresh = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(err(format!(
                "reading topic '{topic}' from {} did not reach its end within {:?}",
                shared.config.bootstrap, shared.config.timeout
            )));
        }
        match consumer.poll(left.min(Duration::from_millis(200))) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(fresh),
            Some(Err(e)) => return Err(err(format!("reading topic '{topic}': {e}"))),
            Some(Ok(message)) => {
                let record = parse(&message)?;
                if let Some(event) = shared.index.write().expect("index").take(message.offset(), record)? {
                    fresh.push(event);
                }
            }
        }
    }
}

/// Follows the topic for good, so that this instance learns of every commit (its own
/// writer indexes its own commits itself; they are skipped here).
fn follow(consumer: BaseConsumer, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = match polled {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => continue,
            Err(e) => {
                tracing::warn!(topic = %shared.config.topic, error = %e, "following the Kafka log");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        // This instance's own commits, indexed when they were made, need no decoding.
        if position_of(&message).is_some_and(|p| p <= shared.index.read().expect("index").head()) {
            continue;
        }
        let taken = parse(&message).and_then(|r| shared.index.write().expect("index").take(message.offset(), r));
        match taken {
            Ok(Some((position, stored))) => {
                match stored.recorded(position) {
                    Ok(event) => drop(shared.tail.push(vec![event])),
                    Err(_) => shared.tail.clear(),
                }
                shared.announce_head();
            }
            Ok(None) => {}
            Err(e) => {
                // Never index past a record that does not fit: readers would see a hole.
                tracing::error!(topic = %shared.config.topic, error = %e, "the Kafka log is damaged; this instance stops following it");
                return;
            }
        }
    }
}

/// Makes the topic if it is missing, and checks that it can hold a log.
async fn ensure_topic(config: &KafkaConfig) -> Result<(), StoreError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap)
        .create()
        .map_err(|e| err(format!("cannot make a Kafka admin client for {}: {e}", config.bootstrap)))?;
    let topic = config.topic.clone();
    let timeout = config.timeout;
    let metadata = {
        let probe = consumer(config)?;
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || probe.fetch_metadata(Some(&topic), timeout))
            .await
            .map_err(err)?
            .map_err(|e| err(format!("cannot reach the Kafka brokers at {}: {e}", config.bootstrap)))?
    };
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    let missing = found.is_none_or(|t| {
        matches!(t.error(), Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART))
            || t.partitions().is_empty()
    });
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let (replication, min_insync, max_bytes) =
        (config.replication_factor.to_string(), config.min_insync_replicas.to_string(), MAX_RECORD_BYTES.to_string());
    if missing {
        let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(config.replication_factor))
            .set("min.insync.replicas", &min_insync)
            .set("retention.ms", "-1")
            .set("retention.bytes", "-1")
            .set("cleanup.policy", "delete")
            .set("max.message.bytes", &max_bytes);
        let results = admin.create_topics([&new], &options).await.map_err(err)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(err(format!(
                        "cannot create topic '{topic}' (1 partition, replication {replication}, min.insync.replicas {min_insync}): {code}"
                    )))
                }
            }
        }
        return Ok(());
    }
    let found = found.expect("not missing");
    let misconfigured = |what: String| err(format!("topic '{topic}' cannot hold a perfect21 log: {what}"));
    if found.partitions().len() != 1 {
        return Err(misconfigured(format!(
            "it has {} partitions; a log needs exactly 1, so that its order is global",
            found.partitions().len()
        )));
    }
    let replicas = found.partitions()[0].replicas().len() as i32;
    if replicas != config.replication_factor {
        return Err(misconfigured(format!(
            "its replication factor is {replicas}, the store was told {} (replication=…)",
            config.replication_factor
        )));
    }
    let configs = admin.describe_configs([&ResourceSpecifier::Topic(&topic)], &options).await.map_err(err)?;
    let resource = configs
        .into_iter()
        .next()
        .ok_or_else(|| misconfigured("the brokers describe no configuration for it".into()))?
        .map_err(|e| misconfigured(format!("its configuration cannot be read: {e}")))?;
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone()).unwrap_or_default();
    if value("min.insync.replicas") != min_insync {
        return Err(misconfigured(format!(
            "its min.insync.replicas is {}, the store was told {min_insync} (min_insync=…)",
            value("min.insync.replicas")
        )));
    }
    if value("cleanup.policy").split(',').any(|p| p.trim() == "compact") {
        return Err(misconfigured("it is compacted, which drops events that share a stream".into()));
    }
    for limit in ["retention.ms", "retention.bytes"] {
        if value(limit) != "-1" {
            return Err(misconfigured(format!(
                "its {limit} is {}: the log would lose its oldest events (set it to -1)",
                value(limit)
            )));
        }
    }
    Ok(())
}

/// How this instance appends.
enum Appender {
    Writer { queue: mpsc::Sender<AppendRequest> },
    Forwarder(forward::Forwarder),
}

/// The Kafka event store. Cheap to share behind an `Arc`.
pub struct KafkaStore {
    shared: Arc<Shared>,
    head: watch::Receiver<u64>,
    appender: Appender,
}

impl Drop for KafkaStore {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl KafkaStore {
    /// Opens the log of `config.topic`, making the topic if it is missing; becomes its
    /// writer or a forwarder to it as `config.role` says.
    pub async fn open(config: KafkaConfig) -> Result<Self, StoreError> {
        ensure_topic(&config).await?;
        let (head_tx, head_rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            config: config.clone(),
            index: RwLock::new(Index::default()),
            head: head_tx,
            tail: Tail::default(),
            readers: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let follower = consumer(&config)?;
        let (follower, scanned) = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                let scanned = catch_up(&follower, &shared, Instant::now() + shared.config.timeout);
                (follower, scanned)
            })
            .await
            .map_err(err)?
        };
        scanned?;
        let announced = shared.index.read().expect("index").writer.clone();
        let target = announced.as_ref().and_then(|a| a.address.clone());
        let forwarder = config.forward_secret.clone().map(|secret| forward::Forwarder::new(BACKEND, secret));
        let forward = match (config.role, target, forwarder) {
            (Role::Writer, _, _) => None,
            (Role::Forwarder, Some(address), Some(f)) => {
                if !f.reaches(&address).await {
                    return Err(err(format!(
                        "cannot forward to the log's writer at {address}: it does not answer, or does not hold \
                         the same forwarding secret"
                    )));
                }
                Some(f)
            }
            (Role::Forwarder, None, _) => {
                return Err(err(format!(
                "topic '{}' names no writer that takes forwarded appends: start one (role=writer with secret_file=…)",
                config.topic
            )))
            }
            (Role::Forwarder, Some(_), None) => {
                return Err(err("role=forwarder needs the forwarding secret (secret_file=…)"))
            }
            (Role::Auto, Some(address), Some(f)) => f.reaches(&address).await.then_some(f),
            (Role::Auto, Some(address), None) => {
                if tokio::net::TcpStream::connect(&address).await.is_ok() {
                    return Err(err(format!(
                        "the log's writer answers at {address}: forwarding to it needs the shared secret \
                         (secret_file=…); role=writer would take over from it"
                    )));
                }
                None
            }
            (Role::Auto, None, _) => None,
        };
        let appender = match forward {
            Some(f) => Appender::Forwarder(f),
            None => Appender::Writer { queue: become_writer(&shared).await? },
        };
        shared.announce_head();
        let following = shared.clone();
        std::thread::Builder::new()
            .name("perfect21-kafka-follower".into())
            .spawn(move || follow(follower, following))
            .map_err(err)?;
        Ok(KafkaStore { shared, head: head_rx, appender })
    }

    /// Whether this instance is the log's writer (else it forwards its appends).
    pub fn is_writer(&self) -> bool {
        matches!(self.appender, Appender::Writer { .. })
    }

    /// The address of the writer the log names, as far as this instance has read.
    pub fn writer_address(&self) -> Option<String> {
        self.shared.index.read().expect("index").writer.as_ref().and_then(|a| a.address.clone())
    }

    /// The events at `positions` (ascending, each held by the index), as stored.
    async fn fetch(&self, positions: Vec<u64>) -> Result<Vec<(u64, Stored)>, StoreError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        // Runs of nearby positions, each read in one pass.
        let mut runs: Vec<(u64, u64, i64)> = Vec::new();
        {
            let index = self.shared.index.read().expect("index");
            for &p in &positions {
                match runs.last_mut() {
                    Some((_, last, _)) if p - *last <= READ_GAP => *last = p,
                    _ => runs.push((p, p, index.offsets[(p - 1) as usize])),
                }
            }
        }
        let wanted: HashSet<u64> = positions.iter().copied().collect();
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let consumer = shared.consumer()?;
            let deadline = Instant::now() + shared.config.timeout;
            let mut out = Vec::with_capacity(wanted.len());
            let result = (|| {
                for (first, last, offset) in runs {
                    assign(&consumer, &shared.config.topic, offset)?;
                    let mut next = first;
                    let mut restarts = 0;
                    while next <= last {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(err(format!("reading positions {first}..={last} timed out")));
                        }
                        match consumer.poll(left.min(Duration::from_millis(200))) {
                            None | Some(Err(KafkaError::PartitionEOF(_))) => continue,
                            Some(Err(e)) => return Err(err(e)),
                            Some(Ok(message)) if message.offset() < offset => continue,
                            Some(Ok(message)) => {
                                if let Record::Event(position, stored) = parse(&message)? {
                                    if position < next {
                                        continue;
                                    }
                                    if position != next {
                                        // A record fetched for an earlier read of this consumer, or a damaged log.
                                        restarts += 1;
                                        if restarts > 3 {
                                            return Err(StoreError::Corrupt {
                                                position: next,
                                                reason: format!(
                                                    "offset {} holds position {position}",
                                                    message.offset()
                                                ),
                                            });
                                        }
                                        let at = shared.index.read().expect("index").offsets[(next - 1) as usize];
                                        assign(&consumer, &shared.config.topic, at)?;
                                        continue;
                                    }
                                    next += 1;
                                    if wanted.contains(&position) {
                                        out.push((position, stored));
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(())
            })();
            if result.is_ok() {
                shared.readers.lock().expect("reader pool").push(consumer);
            }
            result.map(|()| out)
        })
        .await
        .map_err(err)?
    }

    /// Positions `from..` (at most `limit`) that the index holds.
    fn range(&self, from: u64, limit: usize) -> Vec<u64> {
        let head = self.shared.index.read().expect("index").head();
        let from = from.max(1);
        if from > head {
            return Vec::new();
        }
        let count = (head - from + 1).min(limit as u64);
        (from..from + count).collect()
    }

    /// Waits until this instance has read through `position` (a forwarded append's).
    async fn wait_for(&self, position: u64) -> Result<(), StoreError> {
        let mut head = self.head.clone();
        tokio::time::timeout(self.shared.config.timeout, head.wait_for(|h| *h >= position))
            .await
            .map_err(|_| err(format!("the append is recorded at {position}, but this instance has not read it yet")))?
            .map_err(err)?;
        Ok(())
    }
}

/// Takes the log's transactional id (fencing any other writer), reads what the last
/// writer committed, opens the forwarding listener and announces it; returns the queue
/// of the writer thread.
async fn become_writer(shared: &Arc<Shared>) -> Result<mpsc::Sender<AppendRequest>, StoreError> {
    let config = &shared.config;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap)
        .set("transactional.id", format!("perfect21-{}", config.topic))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("message.max.bytes", MAX_RECORD_BYTES.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("transaction.timeout.ms", "60000")
        .create()
        .map_err(|e| err(format!("cannot make a Kafka producer for {}: {e}", config.bootstrap)))?;
    let producer = {
        let timeout = config.timeout;
        tokio::task::spawn_blocking(move || producer.init_transactions(timeout).map(|()| producer))
            .await
            .map_err(err)?
            .map_err(|e| err(format!("cannot take the log's transactional id: {e}")))?
    };
    // The old writer is fenced now: whatever it committed is in the topic.
    {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let consumer = shared.consumer()?;
            catch_up(&consumer, &shared, Instant::now() + shared.config.timeout)?;
            shared.readers.lock().expect("reader pool").push(consumer);
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(err)??;
    }
    let (queue, requests) = mpsc::channel(4096);
    let address = match &config.forward_secret {
        Some(secret) => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| err(format!("cannot listen for forwarded appends on {}: {e}", config.listen)))?;
            let bound = listener.local_addr().map_err(err)?;
            tokio::spawn(forward::serve(BACKEND, listener, Arc::new(secret.clone()), queue.downgrade()));
            Some(config.advertise.clone().unwrap_or_else(|| bound.to_string()))
        }
        None => None,
    };
    let announcement = Announcement { writer_id: Uuid::now_v7(), address, started_at: to_micros(chrono::Utc::now()) };
    let mut writer = Writer { shared: shared.clone(), producer, failed: None };
    let writer =
        tokio::task::spawn_blocking(move || writer.announce(announcement).map(|()| writer)).await.map_err(err)??;
    std::thread::Builder::new()
        .name("perfect21-kafka-writer".into())
        .spawn(move || writer.run(requests))
        .map_err(err)?;
    Ok(queue)
}

/// The writer thread: the one place that decides versions and positions.
struct Writer {
    shared: Arc<Shared>,
    producer: FutureProducer,
    /// Set once this writer may write no more (fenced, or a transaction it could not end).
    failed: Option<StoreError>,
}

/// An append's outcome before the commit.
enum Planned {
    Done(Result<AppendResult, StoreError>),
    /// Written at this result if the transaction commits.
    Written(AppendResult),
}

/// How long the writer waits for as many appends as its last transaction held: a
/// transaction costs milliseconds whatever it holds, an append a few microseconds.
const LINGER: Duration = Duration::from_millis(1);

impl Writer {
    fn run(mut self, requests: mpsc::Receiver<AppendRequest>) {
        serve_groups_lingering(requests, true, LINGER, |batch| self.commit(batch));
    }

    fn announce(&mut self, announcement: Announcement) -> Result<(), StoreError> {
        let value = postcard::to_stdvec(&announcement).map_err(err)?;
        let headers = OwnedHeaders::new().insert(Header { key: KIND, value: Some(WRITER) });
        self.producer.begin_transaction().map_err(err)?;
        let record =
            FutureRecord::<[u8], [u8]>::to(&self.shared.config.topic).partition(0).payload(&value).headers(headers);
        let delivery = self.producer.send_result(record).map_err(|(e, _)| err(e))?;
        self.producer
            .commit_transaction(self.shared.config.timeout)
            .map_err(|e| err(format!("announcing the writer: {e}")))?;
        let offset = match futures::executor::block_on(delivery) {
            Ok(Ok(d)) => d.offset,
            Ok(Err((e, _))) => return Err(err(e)),
            Err(e) => return Err(err(e)),
        };
        let mut index = self.shared.index.write().expect("index");
        index.writer = Some(announcement);
        index.next_offset = index.next_offset.max(offset + 1);
        Ok(())
    }

    fn plan(&self, batch: &[AppendRequest], recorded_at: i64) -> (Vec<Planned>, Vec<(u64, Stored)>) {
        let index = self.shared.index.read().expect("index");
        let mut head = index.head();
        let mut link = index.last_link;
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let mut pending: HashMap<Uuid, (String, u64, u64)> = HashMap::new();
        let mut plans = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        for request in batch {
            let stream = request.stream.as_str();
            let found: Vec<(Uuid, String, u64, u64)> = request
                .events
                .iter()
                .filter_map(|e| {
                    pending
                        .get(&e.event_id)
                        .cloned()
                        .or_else(|| index.locate(&e.event_id))
                        .map(|(s, v, p)| (e.event_id, s, v, p))
                })
                .collect();
            let existing = classify_existing(&request.stream, &request.events, &found);
            let actual = versions.get(stream).copied().or_else(|| index.stream_version(stream));
            let plan = match existing {
                Ok(Existing::Replay(result)) if result.position <= index.head() => Planned::Done(Ok(result)),
                Ok(Existing::Replay(result)) => Planned::Written(result),
                Err(e) => Planned::Done(Err(e)),
                Ok(Existing::New) if !request.expected.admits(actual) => {
                    Planned::Done(Err(StoreError::WrongExpectedVersion {
                        stream: stream.to_string(),
                        expected: request.expected,
                        actual,
                    }))
                }
                Ok(Existing::New) => {
                    let mut seen = HashSet::with_capacity(request.events.len());
                    if let Some((i, e)) = request.events.iter().enumerate().find(|(_, e)| !seen.insert(e.event_id)) {
                        plans.push(Planned::Done(Err(StoreError::DuplicateEventId {
                            event_id: e.event_id,
                            stream: stream.to_string(),
                            position: head + 1 + i as u64,
                        })));
                        continue;
                    }
                    let first_version = actual.map_or(0, |v| v + 1);
                    for (i, (event, encoded)) in request.events.iter().zip(&request.encoded).enumerate() {
                        let position = head + 1 + i as u64;
                        let stored = Stored {
                            event_id: event.event_id,
                            stream_id: stream.to_string(),
                            stream_version: first_version + i as u64,
                            event_type: event.event_type.clone(),
                            schema_version: event.schema_version,
                            recorded_at,
                            metadata: encoded.metadata.clone(),
                            payload: event.payload.clone(),
                            link: chain::GENESIS,
                        };
                        let content = encoded.content.finish(stored.stream_version, from_micros(recorded_at));
                        link = chain::link(&link, position, &content);
                        pending.insert(event.event_id, (stream.to_string(), stored.stream_version, position));
                        records.push((position, Stored { link, ..stored }));
                    }
                    let n = request.events.len() as u64;
                    let result = AppendResult {
                        first_position: head + 1,
                        position: head + n,
                        stream_version: first_version + n - 1,
                    };
                    head += n;
                    versions.insert(stream, result.stream_version);
                    Planned::Written(result)
                }
            };
            plans.push(plan);
        }
        (plans, records)
    }

    fn commit(&mut self, batch: Vec<AppendRequest>) {
        if let Some(failed) = &self.failed {
            for request in batch {
                let _ = request.reply.send(Err(failed.copied(BACKEND)));
            }
            return;
        }
        let recorded_at = to_micros(chrono::Utc::now());
        let (plans, records) = self.plan(&batch, recorded_at);
        let outcome = if records.is_empty() { Ok(Vec::new()) } else { self.write(&records) };
        match outcome {
            Ok(offsets) => {
                let mut fresh = Vec::with_capacity(records.len());
                {
                    let mut index = self.shared.index.write().expect("index");
                    for ((position, stored), offset) in records.into_iter().zip(offsets) {
                        // The follower may have read (and indexed) the commit first.
                        if position <= index.head() {
                            continue;
                        }
                        index.push(position, offset, &stored);
                        if let Ok(event) = stored.recorded(position) {
                            fresh.push(event);
                        }
                    }
                }
                // Into the tail before subscribers hear of the new head.
                let evicted = self.shared.tail.push(fresh);
                self.shared.announce_head();
                for (request, plan) in batch.into_iter().zip(plans) {
                    let _ = request.reply.send(match plan {
                        Planned::Done(r) => r,
                        Planned::Written(r) => Ok(r),
                    });
                }
                drop(evicted);
            }
            Err(e) => {
                for (request, plan) in batch.into_iter().zip(plans) {
                    let _ = request.reply.send(match plan {
                        Planned::Done(Err(refused)) => Err(refused),
                        _ => Err(e.copied(BACKEND)),
                    });
                }
            }
        }
    }

    /// Writes `records` in one transaction; returns their offsets once it committed.
    fn write(&mut self, records: &[(u64, Stored)]) -> Result<Vec<i64>, StoreError> {
        let topic = self.shared.config.topic.clone();
        let timeout = self.shared.config.timeout;
        self.producer.begin_transaction().map_err(|e| self.fail(e))?;
        let mut deliveries = Vec::with_capacity(records.len());
        let mut failure = None;
        for (position, stored) in records {
            let value = postcard::to_stdvec(stored).map_err(err)?;
            let position = position.to_be_bytes();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header { key: KIND, value: Some(EVENT) })
                .insert(Header { key: POSITION, value: Some(&position[..]) });
            let mut record = FutureRecord::to(&topic)
                .partition(0)
                .key(stored.stream_id.as_bytes())
                .payload(&value[..])
                .headers(headers)
                .timestamp(stored.recorded_at / 1000);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        self.producer.poll(Duration::from_millis(10));
                        record = back;
                    }
                    Err((e, _)) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        // Wait for every record's acknowledgement before the commit: rust-rdkafka's commit
        // flushes first and, with anything still queued, polls in steps of 100 ms.
        let mut offsets = Vec::with_capacity(deliveries.len());
        if failure.is_none() {
            for delivery in deliveries {
                match futures::executor::block_on(delivery) {
                    Ok(Ok(d)) => offsets.push(d.offset),
                    Ok(Err((e, _))) => {
                        failure = Some(e);
                        break;
                    }
                    Err(_) => {
                        failure = Some(KafkaError::Canceled);
                        break;
                    }
                }
            }
            let settle = Instant::now();
            while failure.is_none()
                && self.producer.in_flight_count() > 0
                && settle.elapsed() < Duration::from_millis(50)
            {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        let committed = match failure {
            Some(e) => Err(e),
            // While the brokers are away (a restart), the commit times out and may be tried
            // again: the appenders wait rather than fail.
            None => retrying(|| self.producer.commit_transaction(timeout)),
        };
        if let Err(e) = committed {
            if is_fenced(&e) {
                return Err(self.fail(e));
            }
            // Nothing of an aborted transaction is ever visible: the appends failed whole.
            return match retrying(|| self.producer.abort_transaction(timeout)) {
                Ok(()) => Err(err(format!(
                    "the Kafka transaction failed and was aborted, nothing of these appends was written: {e}"
                ))),
                // A fenced producer has its queue purged: the deliveries fail first, and the
                // abort says why.
                Err(abort) if is_fenced(&abort) => Err(self.fail(abort)),
                Err(abort) => Err(self.fail_with(err(format!(
                    "a Kafka transaction failed ({e}) and could not be aborted ({abort}): its appends may be \
                     recorded, and this writer stops; restart it to resume from the topic"
                )))),
            };
        }
        Ok(offsets)
    }

    fn fail(&mut self, e: KafkaError) -> StoreError {
        if is_fenced(&e) {
            self.fail_with(StoreError::Fenced {
                backend: BACKEND,
                message: format!(
                    "another writer took over topic '{}' ({e}); this instance no longer appends to it",
                    self.shared.config.topic
                ),
            })
        } else {
            err(e)
        }
    }

    fn fail_with(&mut self, e: StoreError) -> StoreError {
        tracing::error!(topic = %self.shared.config.topic, error = %e, "the Kafka writer stops writing");
        let out = e.copied(BACKEND);
        self.failed = Some(e);
        out
    }
}

/// Attempts of a transaction's end that time out before the writer gives up on it.
const END_ATTEMPTS: usize = 10;

/// Runs `end` (a commit or an abort) again while it fails with an error Kafka calls
/// retriable, [`END_ATTEMPTS`] times at most.
fn retrying(mut end: impl FnMut() -> Result<(), KafkaError>) -> Result<(), KafkaError> {
    let mut attempt = 1;
    loop {
        match end() {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < END_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "a Kafka transaction did not end in time; trying again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn is_fenced(e: &KafkaError) -> bool {
    let code = match e {
        KafkaError::Transaction(t) => {
            if t.is_fatal() {
                return true;
            }
            t.code()
        }
        other => match other.rdkafka_error_code() {
            Some(code) => code,
            None => return false,
        },
    };
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fatal
    )
}

#[async_trait]
impl EventStore for KafkaStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        match &self.appender {
            Appender::Writer { queue } => submit(queue, BACKEND, stream, expected, events).await,
            Appender::Forwarder(forwarder) => {
                validate_append(&events)?;
                let writer =
                    self.writer_address().ok_or_else(|| err("the log names no writer that takes forwarded appends"))?;
                let result = forwarder.append(&writer, stream, expected, &events).await?;
                // Read-your-writes: answered once this instance's reads include it.
                self.wait_for(result.position).await?;
                Ok(result)
            }
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (from, limit) = read_bounds("stream version", from_version, limit)?;
        let positions: Vec<u64> = {
            let index = self.shared.index.read().expect("index");
            match index.streams.get(stream.as_str()) {
                Some((_, positions)) => positions.iter().skip(from as usize).take(limit as usize).copied().collect(),
                None => Vec::new(),
            }
        };
        self.fetch(positions).await?.into_iter().map(|(p, s)| s.recorded(p)).collect()
    }

    async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        read_bounds("position", from_position, limit)?;
        let positions = self.range(from_position, limit);
        let Some(&first) = positions.first() else { return Ok(Vec::new()) };
        if let Some(events) = self.shared.tail.from(first, positions.len()) {
            if events.len() == positions.len() {
                return Ok(events);
            }
        }
        self.fetch(positions).await?.into_iter().map(|(p, s)| s.recorded(p)).collect()
    }

    async fn redact(&self, _stream: &StreamId, _redactions: Vec<Redaction>) -> Result<usize, StoreError> {
        Err(StoreError::Unavailable {
            backend: BACKEND,
            message: "the Kafka log is append-only: recorded events cannot be rewritten (fields sealed when they \
                      were appended are erased by deleting their subject's key)"
                .into(),
        })
    }

    async fn read_chain(&self, from_position: u64, limit: usize) -> Result<Vec<ChainRecord>, StoreError> {
        read_bounds("position", from_position, limit)?;
        let positions = self.range(from_position, limit);
        Ok(self
            .fetch(positions)
            .await?
            .into_iter()
            .map(|(position, stored)| ChainRecord {
                position,
                content: stored.content(),
                link: Some(stored.link),
                redacted_from: None,
            })
            .collect())
    }

    async fn chain_head(&self) -> Result<Option<(u64, Digest)>, StoreError> {
        let index = self.shared.index.read().expect("index");
        Ok((index.head() > 0).then(|| (index.head(), index.last_link)))
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        Ok(self.shared.index.read().expect("index").head())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let index = self.shared.index.read().expect("index");
        Ok(StoreStats {
            backend: BACKEND,
            head_position: index.head(),
            events: index.head(),
            streams: index.streams.len() as u64,
            by_type: index.by_type.iter().map(|((t, v), n)| (t.clone(), *v, *n)).collect(),
            size_bytes: None,
        })
    }

    fn head_watch(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn recent(&self, from_position: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        self.shared.tail.from(from_position, limit)
    }

    fn appends(&self) -> super::Appends {
        if self.is_writer() {
            super::Appends::Writer
        } else {
            self.writer_address().map_or(super::Appends::OnItsOwn, super::Appends::ForwardsTo)
        }
    }

    fn rewrites_in_place(&self) -> bool {
        false
    }
}
