//! The server's watch over the log's hash chain: it walks the whole log once at
//! start-up, then follows the head, so `/status` can say how far the log is proven
//! unedited and `/metrics` can alert on a break.

use perfect21_events::chain::{self, ChainBreak, Verifier, PAGE};
use perfect21_events::EventStore;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The walk follows the head at most this often, so that a burst of appends costs one read.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// The walk looks for commits the head watch did not announce this often.
const LOOK_AGAIN: Duration = Duration::from_secs(30);
/// After a read error, the walk tries again this much later.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How far the chain is verified, for `/status`.
#[derive(Default)]
pub struct ChainWatch(Mutex<State>);

#[derive(Default)]
struct State {
    verified_through: u64,
    last_link: Option<chain::Digest>,
    redacted: u64,
    broken: Option<ChainBreak>,
    error: Option<String>,
}

impl ChainWatch {
    /// Starts the walk over `store` on a task of its own.
    pub fn start(store: Arc<dyn EventStore>) -> Arc<ChainWatch> {
        let watch = Arc::new(ChainWatch::default());
        metrics::gauge!("perfect21_chain_verified_position").set(0.0);
        metrics::gauge!("perfect21_chain_broken").set(0.0);
        tokio::spawn(watch.clone().walk(store));
        watch
    }

    /// The JSON `/status` shows under `chain`.
    pub fn status(&self) -> Value {
        let s = self.0.lock().expect("chain status");
        json!({
            "verified_through": s.verified_through,
            "last_link": s.last_link.as_ref().map(chain::hex),
            "redacted": s.redacted,
            "broken": s.broken,
            "error": s.error,
        })
    }

    async fn walk(self: Arc<Self>, store: Arc<dyn EventStore>) {
        let mut verifier = Verifier::new();
        let mut head = store.head_watch();
        loop {
            let page = match store.read_chain(verifier.next_position(), PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    self.0.lock().expect("chain status").error = Some(e.to_string());
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            };
            let outcome = page.iter().try_for_each(|r| verifier.check(r));
            {
                let mut s = self.0.lock().expect("chain status");
                s.verified_through = verifier.next_position() - 1;
                s.last_link = (s.verified_through > 0).then(|| verifier.last_link());
                s.redacted = verifier.redacted();
                s.error = None;
                metrics::gauge!("perfect21_chain_verified_position").set(s.verified_through as f64);
                if let Err(b) = outcome {
                    tracing::error!(position = b.position, reason = %b.reason, "the event log's hash chain is broken: the log was edited");
                    metrics::gauge!("perfect21_chain_broken").set(1.0);
                    s.broken = Some(b);
                    // Nothing after a break is proven; the walk stops there.
                    return;
                }
            }
            if page.len() < PAGE {
                // Caught up: wait for new commits, then take them all in one read.
                // The watch may not hear of other processes' commits: look again now and then.
                let behind = |h: &u64| *h >= verifier.next_position();
                if let Ok(Err(_)) = tokio::time::timeout(LOOK_AGAIN, head.wait_for(behind)).await {
                    return;
                }
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        }
    }
}
