//! Catch-up-then-live subscription over any [`EventStore`].

use super::EventStore;
use crate::envelope::RecordedEvent;
use crate::error::StoreError;
use crate::seal::Opening;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Events read per round trip while catching up.
const PAGE: usize = 1000;
/// How long to wait for a head notification before looking anyway (covers
/// writers the backend cannot hear from, e.g. another process on the same SQLite file).
const POLL: Duration = Duration::from_millis(200);
/// How long a hole in the positions may last before it is reported as damage.
/// Positions are dense by construction, so a hole can only be a commit that is
/// not visible yet; it must not be skipped.
const HOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Yields every event from a position onwards, in position order, with no gaps
/// and no duplicates: first what the log holds, then new events as they commit.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    next: u64,
    buffer: VecDeque<RecordedEvent>,
    head: watch::Receiver<u64>,
    hole_since: Option<Instant>,
    /// The seals this subscriber needs opened (`None`: all of them).
    opening: Option<&'static Opening>,
}

impl Subscription {
    pub(crate) fn new(store: Arc<dyn EventStore>, from_position: u64) -> Self {
        let head = store.head_watch();
        Subscription {
            store,
            next: from_position.max(1),
            buffer: VecDeque::new(),
            head,
            hole_since: None,
            opening: None,
        }
    }

    /// Reads the log with only the seals `opening` names opened (see [`Opening`]); events
    /// this process has just committed may still come with every seal opened.
    pub fn opening(mut self, opening: &'static Opening) -> Self {
        self.opening = Some(opening);
        self
    }

    async fn read_page(&self) -> Result<Vec<RecordedEvent>, StoreError> {
        match self.opening {
            Some(opening) => self.store.read_all_opening(self.next, PAGE, opening).await,
            None => self.store.read_all(self.next, PAGE).await,
        }
    }

    /// The position of the next event this subscription will yield.
    pub fn next_position(&self) -> u64 {
        self.next
    }

    /// The next event, waiting for it if the subscription has caught up.
    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.next = event.position + 1;
                return Ok(event);
            }
            self.fill().await?;
        }
    }

    /// The next event already read from the store, without any I/O (to drain a page).
    pub fn next_buffered(&mut self) -> Option<RecordedEvent> {
        self.buffer.pop_front().inspect(|e| self.next = e.position + 1)
    }

    /// The next event if one is committed already, without waiting for new ones.
    pub async fn try_next(&mut self) -> Result<Option<RecordedEvent>, StoreError> {
        if self.buffer.is_empty() {
            let page = self.read_page().await?;
            self.accept(page)?;
        }
        Ok(self.buffer.pop_front().inspect(|e| self.next = e.position + 1))
    }

    async fn fill(&mut self) -> Result<(), StoreError> {
        // Mark the current head as seen before reading, so a commit racing with the read wakes us.
        self.head.borrow_and_update();
        // What this process has just committed is still in memory: no read for it.
        let page = match self.store.recent(self.next, PAGE) {
            Some(page) if !page.is_empty() => page,
            _ => self.read_page().await?,
        };
        let got = self.accept(page)?;
        if !got {
            let wait = if self.hole_since.is_some() { Duration::from_millis(5) } else { POLL };
            if tokio::time::timeout(wait, self.head.changed()).await.is_ok_and(|r| r.is_err()) {
                // The store's notifier is gone; fall back to polling.
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }

    /// Buffers the contiguous prefix of `page`; false if nothing could be taken.
    fn accept(&mut self, page: Vec<RecordedEvent>) -> Result<bool, StoreError> {
        let first = page.first().map(|e| e.position);
        for (expected, event) in (self.next..).zip(page) {
            if event.position != expected {
                break;
            }
            self.buffer.push_back(event);
        }
        if !self.buffer.is_empty() {
            self.hole_since = None;
            return Ok(true);
        }
        match first {
            // Caught up.
            None => self.hole_since = None,
            // The first event read lies past the next position: wait for the hole to fill.
            Some(position) => {
                let since = *self.hole_since.get_or_insert_with(Instant::now);
                if since.elapsed() > HOLE_TIMEOUT {
                    return Err(StoreError::Corrupt {
                        position: self.next,
                        reason: format!("position {} is missing while {position} is committed", self.next),
                    });
                }
            }
        }
        Ok(false)
    }
}
