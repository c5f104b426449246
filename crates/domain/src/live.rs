//! Read models kept up to date by following the log, and reads that wait for a
//! consistency token.

use crate::error::{DomainError, Result};
use perfect21_events::{subscribe_all, EventStore};
use perfect21_projections::ReadModels;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Events folded under one write lock at most, so readers are never held off long.
const MAX_FOLD_BATCH: usize = 1000;

/// The read models of this process, following the log.
pub struct LiveModels {
    models: RwLock<ReadModels>,
    checkpoint: watch::Sender<u64>,
    last_error: Mutex<Option<String>>,
    follower: Mutex<Option<JoinHandle<()>>>,
}

impl LiveModels {
    /// Starts following `store` from its first event.
    pub fn start(store: Arc<dyn EventStore>) -> Arc<Self> {
        Self::start_from(store, ReadModels::default())
    }

    /// Starts from already-built models (a snapshot) and follows from their checkpoint.
    pub fn start_from(store: Arc<dyn EventStore>, models: ReadModels) -> Arc<Self> {
        let (checkpoint, _) = watch::channel(models.checkpoint());
        let live = Arc::new(LiveModels {
            models: RwLock::new(models),
            checkpoint,
            last_error: Mutex::new(None),
            follower: Mutex::new(None),
        });
        let task = tokio::spawn(follow(Arc::downgrade(&live), store));
        *live.follower.lock().expect("follower lock") = Some(task);
        live
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

async fn follow(live: std::sync::Weak<LiveModels>, store: Arc<dyn EventStore>) {
    let from = match live.upgrade() {
        Some(l) => l.checkpoint() + 1,
        None => return,
    };
    let mut sub = subscribe_all(store, from);
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
        while batch.len() < MAX_FOLD_BATCH {
            match sub.try_next().await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        let Some(live) = live.upgrade() else { return };
        let checkpoint = {
            let mut models = live.models.write().expect("read models lock");
            for e in &batch {
                if let Err(err) = models.apply(e) {
                    // A damaged event must not be skipped silently: stop here and say so.
                    tracing::error!(error = %err, "read models stopped");
                    *live.last_error.lock().expect("error lock") = Some(err.to_string());
                    return;
                }
            }
            models.checkpoint()
        };
        live.checkpoint.send_replace(checkpoint);
    }
}
