//! Read models kept up to date by following the log, and reads that wait for a
//! consistency token.

use crate::error::{DomainError, Result};
use perfect21_events::{subscribe_all, EventStore, RecordedEvent};
use perfect21_projections::ReadModels;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Makes the span of one fold of the read models (given the events folded).
pub type UpdateSpan = fn(&[RecordedEvent]) -> tracing::Span;

static UPDATE_SPAN: std::sync::OnceLock<UpdateSpan> = std::sync::OnceLock::new();

/// Installs how folds are traced: a front end that exports traces makes each fold
/// continue the trace of the events it folds (their metadata's `traceparent`), which
/// this crate, free of OpenTelemetry, cannot do itself. The first call wins.
pub fn trace_updates_with(span: UpdateSpan) {
    let _ = UPDATE_SPAN.set(span);
}

fn update_span(batch: &[RecordedEvent]) -> tracing::Span {
    match UPDATE_SPAN.get() {
        Some(make) => make(batch),
        None => tracing::info_span!("projection.update", events = batch.len()),
    }
}

/// Events folded under one write lock at most, so readers are never held off long.
const MAX_FOLD_BATCH: usize = 1000;

/// The event after which the snapshot is rewritten at once (see [`SnapshotPolicy`]).
const ERASES: &str = "user.deleted";

/// Where and how often the live models save snapshots: every `every_events` new
/// events, and at once after a user's deletion.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    pub path: PathBuf,
    /// Save after this many new events.
    pub every_events: u64,
}

/// The read models of this process, following the log.
pub struct LiveModels {
    models: RwLock<ReadModels>,
    checkpoint: watch::Sender<u64>,
    /// Id of the event at the checkpoint (a snapshot's anchor).
    anchor: Mutex<Option<uuid::Uuid>>,
    last_error: Mutex<Option<String>>,
    follower: Mutex<Option<JoinHandle<()>>>,
    /// The checkpoint these models started from (a snapshot's, or 0).
    started_from: u64,
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the old or the
/// new content, never a mix: a temporary file, fsync'd, then renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Loads the snapshot at `path` if it belongs to this log; `None` (and a log line saying why) otherwise.
pub async fn load_snapshot(store: &dyn EventStore, path: &Path) -> Option<(ReadModels, Option<uuid::Uuid>)> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read snapshot; replaying");
            return None;
        }
    };
    let (models, anchor) = match ReadModels::from_snapshot(&bytes) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "discarding snapshot; replaying");
            return None;
        }
    };
    let checkpoint = models.checkpoint();
    if checkpoint > 0 {
        let at = store.read_all(checkpoint, 1).await.ok()?.into_iter().next();
        if at.as_ref().map(|e| (e.position, e.event_id)) != Some((checkpoint, anchor?)) {
            tracing::warn!(path = %path.display(), checkpoint, "snapshot does not match this log; replaying");
            return None;
        }
    }
    Some((models, anchor))
}

impl LiveModels {
    /// Starts following `store` from its first event.
    pub fn start(store: Arc<dyn EventStore>) -> Arc<Self> {
        Self::start_from(store, ReadModels::default(), None, None)
    }

    /// Start-up: the snapshot of `policy` if it fits this log (else nothing), then
    /// catch-up and follow, saving snapshots as the policy says.
    pub async fn open(store: Arc<dyn EventStore>, policy: Option<SnapshotPolicy>) -> Arc<Self> {
        let loaded = match &policy {
            Some(p) => load_snapshot(store.as_ref(), &p.path).await,
            None => None,
        };
        let (models, anchor) = loaded.unwrap_or_default();
        Self::start_from(store, models, anchor, policy)
    }

    /// Starts from already-built models and follows from their checkpoint.
    pub fn start_from(
        store: Arc<dyn EventStore>,
        models: ReadModels,
        anchor: Option<uuid::Uuid>,
        policy: Option<SnapshotPolicy>,
    ) -> Arc<Self> {
        let (checkpoint, _) = watch::channel(models.checkpoint());
        let started_from = models.checkpoint();
        let live = Arc::new(LiveModels {
            started_from,
            models: RwLock::new(models),
            checkpoint,
            anchor: Mutex::new(anchor),
            last_error: Mutex::new(None),
            follower: Mutex::new(None),
        });
        let task = tokio::spawn(follow(Arc::downgrade(&live), store, policy));
        *live.follower.lock().expect("follower lock") = Some(task);
        live
    }

    /// Writes a snapshot of the models as they are now (atomically: temp file, fsync, rename).
    pub async fn save_snapshot(&self, path: &Path) -> std::io::Result<u64> {
        let (bytes, checkpoint) = {
            let models = self.models.read().expect("read models lock");
            let anchor = *self.anchor.lock().expect("anchor lock");
            (models.to_snapshot(anchor), models.checkpoint())
        };
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes).map(|()| checkpoint))
            .await
            .map_err(std::io::Error::other)?
    }

    /// The checkpoint the models started from: a snapshot's, or 0 for a full replay.
    /// Events folded since start-up: `checkpoint() - started_from()`.
    pub fn started_from(&self) -> u64 {
        self.started_from
    }

    /// Position of the last event folded.
    pub fn checkpoint(&self) -> u64 {
        *self.checkpoint.borrow()
    }

    /// The last error the follower met, if it is stuck.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }

    /// A receiver that changes whenever the checkpoint moves.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.checkpoint.subscribe()
    }

    /// Waits until the models have folded `position`, at most `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<()> {
        // Most reads find the models there already: no subscription, no timer.
        if *self.checkpoint.borrow() >= position {
            return Ok(());
        }
        let mut rx = self.checkpoint.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= position)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(DomainError::ConsistencyTimeout {
                wanted: position,
                at: self.checkpoint(),
                waited_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Runs `f` on the models as they are now.
    pub fn read<T>(&self, f: impl FnOnce(&ReadModels) -> T) -> T {
        f(&self.models.read().expect("read models lock"))
    }

    /// Runs `f` once the models have reached `min_position` (if given).
    pub async fn read_at<T>(
        &self,
        min_position: Option<u64>,
        timeout: Duration,
        f: impl FnOnce(&ReadModels) -> T,
    ) -> Result<T> {
        if let Some(p) = min_position {
            self.wait_for(p, timeout).await?;
        }
        Ok(self.read(f))
    }
}

impl Drop for LiveModels {
    fn drop(&mut self) {
        if let Some(task) = self.follower.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

async fn follow(live: std::sync::Weak<LiveModels>, store: Arc<dyn EventStore>, policy: Option<SnapshotPolicy>) {
    let from = match live.upgrade() {
        Some(l) => l.checkpoint() + 1,
        None => return,
    };
    let mut saved_at = from - 1;
    // The folds need only some seals opened; the others stay shut.
    let mut sub = subscribe_all(store, from).opening(&ReadModels::OPENING);
    loop {
        let first = match sub.next().await {
            Ok(e) => e,
            Err(e) => {
                let Some(live) = live.upgrade() else { return };
                tracing::warn!(error = %e, "read models cannot follow the log; retrying");
                *live.last_error.lock().expect("error lock") = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut batch = vec![first];
        // What the same read brought along; no further query just to find nothing new.
        while batch.len() < MAX_FOLD_BATCH {
            match sub.next_buffered() {
                Some(e) => batch.push(e),
                None => break,
            }
        }
        let Some(live) = live.upgrade() else { return };
        let checkpoint = {
            let _span = update_span(&batch).entered();
            let mut models = live.models.write().expect("read models lock");
            for e in &batch {
                if let Err(err) = models.apply(e) {
                    // A damaged event must not be skipped silently: stop here and say so.
                    tracing::error!(error = %err, "read models stopped");
                    *live.last_error.lock().expect("error lock") = Some(err.to_string());
                    return;
                }
            }
            // Under the write lock, so a snapshot never pairs these models with another anchor.
            *live.anchor.lock().expect("anchor lock") = batch.last().map(|e| e.event_id);
            models.checkpoint()
        };
        live.checkpoint.send_replace(checkpoint);
        // A deleted user's data leaves the models when they fold `user.deleted`: rewrite the
        // snapshot then, so the file on disk does not keep it until the next periodic save.
        let erased = batch.iter().any(|e| e.event_type == ERASES);
        if let Some(p) = policy.as_ref().filter(|p| erased || checkpoint - saved_at >= p.every_events) {
            match live.save_snapshot(&p.path).await {
                Ok(at) => saved_at = at,
                Err(e) => tracing::warn!(path = %p.path.display(), error = %e, "cannot save snapshot"),
            }
        }
    }
}
