//! The relay: log → a broker, at least once: the RabbitMQ topic exchange
//! `perfect21.events`, or a Kafka topic ([`sink`]).
//!
//! It follows the log from its checkpoint, publishes each event with a bounded
//! window of messages the broker has not confirmed yet, and moves its checkpoint
//! only past events the broker confirmed. Everything goes out on one channel (one
//! producer) in log order, so no consumer sees a user's events reordered. On any
//! broker error it reconnects and resumes from the checkpoint: messages published
//! but not confirmed go out again (consumers dedupe on message_id).

pub mod message;
pub mod sink;

use anyhow::Context;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use message::{outgoing, Contact, Outgoing};
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::LiveModels;
use perfect21_events::{subscribe_all, EventStore, RecordedEvent};
pub use sink::publish;
pub use sink::SinkConfig;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Unconfirmed messages in flight at most.
pub const WINDOW: usize = 1000;
/// The checkpoint file is rewritten at most this often.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// Where the relay publishes and keeps its place.
#[derive(Clone)]
pub struct RelayConfig {
    pub sink: SinkConfig,
    /// One per sink: each relay moves its own.
    pub checkpoint: PathBuf,
}

/// A running relay's progress.
#[derive(Default)]
pub struct RelayStatus {
    /// Last position the broker confirmed (and everything before it).
    pub confirmed: AtomicU64,
    pub published: AtomicU64,
    pub reconnects: AtomicU64,
    /// Whether the relay holds a broker connection now.
    pub connected: std::sync::atomic::AtomicBool,
    /// Whether it waits for another relay of this log to end (which holds the lease).
    pub standby: std::sync::atomic::AtomicBool,
}

fn read_checkpoint(path: &std::path::Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().with_context(|| format!("relay checkpoint {} is not a position", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading relay checkpoint {}", path.display())),
    }
}

fn write_checkpoint(path: &std::path::Path, position: u64) -> anyhow::Result<()> {
    perfect21_domain::live::write_atomically(path, format!("{position}\n").as_bytes())
        .with_context(|| format!("writing relay checkpoint {}", path.display()))
}

/// How often a standby relay tries the lease.
const STANDBY_POLL: Duration = Duration::from_millis(500);

/// Waits until this relay holds its sink's lease: one relay per sink publishes a log at
/// a time (a lease in the store when it has them, else a lock file beside the
/// checkpoint); the others stand by and take over within [`STANDBY_POLL`] of its end.
///
/// `after_loss`: this relay held the lease and lost it, most likely with its database,
/// so failures to reach the store are waited out instead of ending the relay.
async fn take_lease(
    config: &RelayConfig,
    store: &Arc<dyn EventStore>,
    status: &RelayStatus,
    after_loss: bool,
) -> anyhow::Result<perfect21_events::Lease> {
    let sink = config.sink.kind();
    let name = format!("relay-{sink}");
    let mut waiting = false;
    loop {
        let lease = if store.leases() {
            match store.try_lease(&name).await.with_context(|| format!("taking the {name} lease")) {
                Ok(lease) => lease,
                Err(e) if after_loss => {
                    tracing::warn!(sink, error = %format!("{e:#}"), "relay on standby: the store does not answer");
                    status.standby.store(true, Ordering::Relaxed);
                    tokio::time::sleep(STANDBY_POLL).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
        } else {
            let path = config.checkpoint.with_extension("lease");
            perfect21_events::store::file_lease(&path).with_context(|| format!("locking {}", path.display()))?
        };
        if let Some(lease) = lease {
            status.standby.store(false, Ordering::Relaxed);
            tracing::info!(sink, "relay active: it holds the {name} lease");
            return Ok(lease);
        }
        if !waiting {
            status.standby.store(true, Ordering::Relaxed);
            tracing::info!(sink, "relay on standby: another relay of this log holds the {name} lease");
            waiting = true;
        }
        tokio::time::sleep(STANDBY_POLL).await;
    }
}

/// Relays for ever while it holds its lease, reconnecting after broker failures; a
/// relay whose lease ends under it (the database session that held it ended) stops
/// publishing at once and stands by again, since another relay may hold it now.
pub async fn run(
    config: RelayConfig,
    store: Arc<dyn EventStore>,
    live: Arc<LiveModels>,
    secrets: SecretBox,
    status: Arc<RelayStatus>,
) -> anyhow::Result<()> {
    let mut after_loss = false;
    loop {
        let mut lease = take_lease(&config, &store, &status, after_loss).await?;
        // Read after the lease: the relay that held it before moved the checkpoint last.
        let start = read_checkpoint(&config.checkpoint)?;
        status.confirmed.store(start, Ordering::Relaxed);
        // The checkpoint is saved off the publishing path: a slow fsync never stalls publishing.
        let (confirmed_tx, confirmed_rx) = tokio::sync::watch::channel(start);
        let saver = tokio::spawn(save_checkpoints(config.checkpoint.clone(), confirmed_rx));
        let outcome = tokio::select! {
            result = relay_while_held(&config, &store, &live, &secrets, &status, &confirmed_tx) => Some(result),
            () = lease.lost() => None,
        };
        saver.abort();
        status.connected.store(false, Ordering::Relaxed);
        match outcome {
            Some(result) => return result,
            None => {
                tracing::error!(
                    sink = config.sink.kind(),
                    "relay lost its lease (the database session that held it ended): it stopped publishing and stands by"
                );
                status.standby.store(true, Ordering::Relaxed);
                after_loss = true;
            }
        }
    }
}

/// Publishes from `confirmed`'s position on, reconnecting after broker failures.
async fn relay_while_held(
    config: &RelayConfig,
    store: &Arc<dyn EventStore>,
    live: &Arc<LiveModels>,
    secrets: &SecretBox,
    status: &RelayStatus,
    confirmed: &tokio::sync::watch::Sender<u64>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let e = match relay_once(config, store.clone(), live, secrets, status, confirmed).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        status.connected.store(false, Ordering::Relaxed);
        status.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %format!("{e:#}"), "relay lost the broker; resuming from its checkpoint");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Writes the latest confirmed position at most every [`CHECKPOINT_EVERY`].
async fn save_checkpoints(path: PathBuf, mut confirmed: tokio::sync::watch::Receiver<u64>) {
    let mut saved = *confirmed.borrow();
    while confirmed.changed().await.is_ok() {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        let position = *confirmed.borrow_and_update();
        if position > saved {
            let p = path.clone();
            match tokio::task::spawn_blocking(move || write_checkpoint(&p, position)).await {
                Ok(Ok(())) => saved = position,
                Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "cannot save the relay checkpoint"),
                Err(e) => tracing::warn!(error = %e, "cannot save the relay checkpoint"),
            }
        }
    }
}

/// One message ready to publish.
struct Prepared {
    position: u64,
    message: Outgoing,
    traceparent: Option<String>,
    /// The `relay.publish` span, a child of the request that wrote the event; it ends once
    /// the message is handed to the broker.
    span: tracing::Span,
}

/// Messages handed from the reader to the publisher at once, at most (fewer when the
/// reader has caught up: a new event goes out alone, at once).
const CHUNK: usize = 64;

/// Follows the log from `from` and turns each event into its message, in order, ahead
/// of the publisher (decoding, contact details and JSON on one task, publishing and
/// confirms on another), in chunks of what the last page read holds. Ends with the
/// subscription's error.
async fn prepare(
    store: Arc<dyn EventStore>,
    live: Arc<LiveModels>,
    secrets: SecretBox,
    from: u64,
    ready: tokio::sync::mpsc::Sender<Vec<Prepared>>,
) -> anyhow::Result<()> {
    let mut sub = subscribe_all(store, from);
    loop {
        let first = sub.next().await?;
        let mut chunk = vec![prepare_one(&live, &secrets, first).await];
        while chunk.len() < CHUNK {
            let Some(recorded) = sub.next_buffered() else { break };
            chunk.push(prepare_one(&live, &secrets, recorded).await);
        }
        if ready.send(chunk).await.is_err() {
            return Ok(()); // the publisher is gone
        }
    }
}

async fn prepare_one(live: &LiveModels, secrets: &SecretBox, recorded: RecordedEvent) -> Prepared {
    let event = recorded.decode().ok();
    // The contact details come from the read models: let them reach this event first.
    if live.checkpoint() < recorded.position {
        let _ = live.wait_for(recorded.position, Duration::from_secs(5)).await;
    }
    let user = event.as_ref().and_then(message::user_of);
    let contact = match user {
        Some(u) => live
            .read(|m| {
                m.users.get(u).map(|v| Contact {
                    email: Some(v.email.to_string()).filter(|e| !e.is_empty()),
                    phone_number: v.phone_number.as_deref().map(String::from),
                })
            })
            .unwrap_or_default(),
        None => Contact::default(),
    };
    let message = outgoing(&recorded, event.as_ref(), &contact, secrets);
    // With traces exported, its context travels on in the AMQP headers. Without, no span
    // is made: nothing would read it, and formatting its fields costs as much as the
    // rest of the message.
    let (span, traceparent) = if perfect21_telemetry::traces_on() {
        let span =
            tracing::info_span!("relay.publish", position = recorded.position, event_type = %recorded.event_type);
        perfect21_telemetry::set_parent(&span, recorded.metadata.traceparent.as_deref(), None);
        let traceparent = span.in_scope(perfect21_telemetry::current_traceparent);
        (span, traceparent)
    } else {
        (tracing::Span::none(), None)
    };
    Prepared { position: recorded.position, message, traceparent, span }
}

async fn relay_once(
    config: &RelayConfig,
    store: Arc<dyn EventStore>,
    live: &Arc<LiveModels>,
    secrets: &SecretBox,
    status: &RelayStatus,
    confirmed_tx: &tokio::sync::watch::Sender<u64>,
) -> anyhow::Result<()> {
    let mut sink = config.sink.connect().await?;
    status.connected.store(true, Ordering::Relaxed);

    let confirmed = status.confirmed.load(Ordering::Relaxed);
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(WINDOW / CHUNK);
    // Stops the preparer however this attempt ends (the next one starts from the checkpoint).
    let preparer = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(prepare(
        store,
        live.clone(),
        secrets.clone(),
        confirmed + 1,
        ready_tx,
    )));
    let mut waiting = std::collections::VecDeque::new();
    let mut in_flight = FuturesOrdered::new();
    loop {
        while in_flight.len() < WINDOW {
            let Some(Prepared { position, message: m, traceparent, span }) = waiting.pop_front() else { break };
            let confirm = sink.publish(&m, traceparent.as_deref()).await?;
            drop(span);
            status.published.fetch_add(1, Ordering::Relaxed);
            in_flight.push_back(async move { (position, confirm.await) });
        }
        tokio::select! {
            biased;
            Some(first) = in_flight.next(), if !in_flight.is_empty() => {
                // This confirm and every one already in: the checkpoint moves once for them all.
                let mut done = Some(first);
                let mut position = 0;
                while let Some((p, confirm)) = done {
                    let confirm: anyhow::Result<()> = confirm;
                    confirm.with_context(|| format!("position {p}"))?;
                    position = p;
                    done = in_flight.next().now_or_never().flatten();
                }
                status.confirmed.store(position, Ordering::Relaxed);
                confirmed_tx.send_replace(position);
            }
            chunk = ready.recv(), if waiting.is_empty() => {
                let Some(chunk) = chunk else {
                    return match preparer.await {
                        Ok(Err(e)) => Err(e.context("reading the log")),
                        Ok(Ok(())) => Ok(()),
                        Err(e) => Err(anyhow::anyhow!("the relay's reader stopped: {e}")),
                    };
                };
                waiting.extend(chunk);
            }
        }
    }
}
