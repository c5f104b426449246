//! One writer among the replicas of a PostgreSQL log, the others forwarding to it.
//!
//! Every instance may append on its own: the head lock keeps positions dense whoever
//! writes. But a commit holds that lock through its fsync, so instances in several
//! processes take turns, each committing only its own group. With forwarding on (a
//! shared secret), one instance holds the `log-writer` lease and takes the others'
//! appends over the authenticated link of [`forward`](crate::store::forward); they find
//! it at the address it records in `log_writer`. All appends then share its groups.
//!
//! Forwarding only makes appends faster; nothing depends on it. An instance that cannot
//! reach the writer appends directly, and an append retried that way carries the same
//! event ids, so one the writer recorded before the link failed is answered as
//! recorded, not written twice.

use super::{advisory_lease, db_err, lease_is_free, BACKEND};
use crate::error::StoreError;
use crate::store::forward::{self, Forwarder};
use crate::store::queue::AppendRequest;
use crate::store::Lease;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How a PostgreSQL store forwards its appends. Its `Debug` form leaves the secret out.
#[derive(Clone)]
pub struct ForwardConfig {
    /// The secret every replica of the log holds (at least 32 bytes).
    pub secret: Vec<u8>,
    /// Where this instance takes forwarded appends while it is the writer.
    pub listen: SocketAddr,
    /// The address the others dial (default: the address `listen` bound).
    pub advertise: Option<String>,
}

impl std::fmt::Debug for ForwardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardConfig")
            .field("secret", &"<redacted>")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .finish()
    }
}

/// The name of the lease its holder writes for the others under.
const WRITER_LEASE: &str = "log-writer";
/// How often an instance that is not the writer tries for the lease and reads where the
/// writer is.
const ELECTION_EVERY: Duration = Duration::from_millis(500);
/// How long an address that could not be reached is not tried again (unless the
/// writer's record changes).
const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// What one store knows of its log's writer.
pub(super) struct Forwarding {
    forwarder: Forwarder,
    /// The writer's address while another instance is it and answers.
    target: Mutex<Option<String>>,
    /// An address that failed, and when: not tried again for [`UNREACHABLE_FOR`].
    failed: Mutex<Option<(String, Instant)>>,
    writing: AtomicBool,
    /// Appends this instance had the writer make.
    forwarded: AtomicU64,
    election: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        if let Some(task) = self.election.lock().expect("election").take() {
            task.abort();
        }
    }
}

/// The lease this instance writes under, and the listener it serves forwarded appends on.
struct Writing {
    lease: Lease,
    serving: JoinHandle<()>,
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

impl Forwarding {
    /// Takes part in the election of `pool`'s log (scoped by `scope`): becomes the writer
    /// if no instance is, else finds the one that is. The first round is run before this
    /// returns, so that a listener that cannot be opened is an error of the caller's.
    pub(super) async fn start(
        pool: PgPool,
        scope: &str,
        config: ForwardConfig,
        queue: &mpsc::Sender<AppendRequest>,
    ) -> Result<Arc<Self>, StoreError> {
        if config.secret.len() < MIN_SECRET_BYTES {
            return Err(StoreError::unavailable(
                BACKEND,
                format!("the forwarding secret is {} bytes, fewer than {MIN_SECRET_BYTES}", config.secret.len()),
            ));
        }
        let this = Arc::new(Forwarding {
            forwarder: Forwarder::new(BACKEND, config.secret.clone()),
            target: Mutex::new(None),
            failed: Mutex::new(None),
            writing: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            election: Mutex::new(None),
        });
        let key = format!("perfect21.lease.{scope}.{WRITER_LEASE}");
        let held = this.round(&pool, &key, &config, queue.downgrade()).await?;
        let task = tokio::spawn(elect(Arc::downgrade(&this), pool, key, config, queue.downgrade(), held));
        *this.election.lock().expect("election") = Some(task);
        Ok(this)
    }

    /// Where to send an append: the writer's address, unless this instance is the writer
    /// or none answers.
    pub(super) fn target(&self) -> Option<String> {
        self.target.lock().expect("target").clone()
    }

    pub(super) fn is_writer(&self) -> bool {
        self.writing.load(Ordering::Relaxed)
    }

    /// Sends one append to `writer`.
    pub(super) async fn append(
        &self,
        writer: &str,
        stream: &crate::envelope::StreamId,
        expected: crate::envelope::ExpectedVersion,
        events: &[crate::envelope::EventData],
    ) -> Result<crate::envelope::AppendResult, StoreError> {
        let result = self.forwarder.append(writer, stream, expected, events).await?;
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        Ok(result)
    }

    pub(super) fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// `writer` did not answer: append directly until the election finds one that does.
    pub(super) fn unreachable(&self, writer: &str) {
        let mut target = self.target.lock().expect("target");
        if target.as_deref() == Some(writer) {
            *target = None;
        }
        *self.failed.lock().expect("failed") = Some((writer.to_string(), Instant::now()));
    }

    /// One round: the lease if it is free (then listening and recorded as the writer),
    /// else the address of the instance that holds it, if it answers.
    async fn round(
        &self,
        pool: &PgPool,
        key: &str,
        config: &ForwardConfig,
        queue: mpsc::WeakSender<AppendRequest>,
    ) -> Result<Option<Writing>, StoreError> {
        // Looked at before it is tried for: trying takes a connection of its own.
        let lease = if lease_is_free(pool, key).await? { advisory_lease(pool, key).await? } else { None };
        if let Some(lease) = lease {
            let listener = TcpListener::bind(config.listen)
                .await
                .map_err(|e| db_err(format!("cannot listen for forwarded appends on {}: {e}", config.listen)))?;
            let address = match &config.advertise {
                Some(a) => a.clone(),
                None => listener.local_addr().map_err(db_err)?.to_string(),
            };
            let secret = Arc::new(config.secret.clone());
            let serving = tokio::spawn(forward::serve(BACKEND, listener, secret, queue));
            let writing = Writing { lease, serving };
            sqlx::query(
                "INSERT INTO log_writer (id, address) VALUES (true, $1) \
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address, since = now()",
            )
            .bind(&address)
            .execute(pool)
            .await
            .map_err(db_err)?;
            *self.target.lock().expect("target") = None;
            self.writing.store(true, Ordering::Relaxed);
            tracing::info!(%address, "this instance writes the log for its replicas");
            return Ok(Some(writing));
        }
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT address FROM log_writer").fetch_optional(pool).await.map_err(db_err)?;
        let Some(address) = recorded else { return Ok(None) };
        if self.target().as_deref() == Some(address.as_str()) {
            return Ok(None);
        }
        let failed_lately = matches!(&*self.failed.lock().expect("failed"),
            Some((a, at)) if *a == address && at.elapsed() < UNREACHABLE_FOR);
        if failed_lately {
            return Ok(None);
        }
        if self.forwarder.reaches(&address).await {
            tracing::info!(writer = %address, "forwarding appends to the log's writer");
            *self.target.lock().expect("target") = Some(address);
        } else {
            tracing::warn!(writer = %address, "the log's writer does not answer (or holds another secret): appending directly");
            self.unreachable(&address);
        }
        Ok(None)
    }
}

/// The shortest forwarding secret accepted.
pub(super) const MIN_SECRET_BYTES: usize = 32;

/// Rounds of the election until the store is gone: a writer holds its lease until the
/// lease ends under it (its database session ended), then stands again with the others.
async fn elect(
    this: std::sync::Weak<Forwarding>,
    pool: PgPool,
    key: String,
    config: ForwardConfig,
    queue: mpsc::WeakSender<AppendRequest>,
    mut held: Option<Writing>,
) {
    loop {
        if let Some(writing) = held.as_mut() {
            tokio::select! {
                () = writing.lease.lost() => {
                    tracing::warn!("the writer lease ended under this instance: it stands again");
                    held = None;
                    if let Some(this) = this.upgrade() {
                        this.writing.store(false, Ordering::Relaxed);
                    }
                }
                () = tokio::time::sleep(ELECTION_EVERY) => {}
            }
        } else {
            tokio::time::sleep(ELECTION_EVERY).await;
        }
        let Some(this) = this.upgrade() else { return };
        if queue.upgrade().is_none() {
            return;
        }
        if held.is_none() {
            match this.round(&pool, &key, &config, queue.clone()).await {
                Ok(writing) => held = writing,
                Err(e) => tracing::warn!(error = %e, "the writer election failed; appending directly meanwhile"),
            }
        }
    }
}
