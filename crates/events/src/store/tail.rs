//! The tail of recent events a store keeps in memory for live subscribers.

use crate::envelope::RecordedEvent;
use std::sync::Mutex;

/// Events a store committed or read last, in position order without a gap, so that live
/// subscribers get them without a round trip to the log. An event it did not see (a
/// commit by another process) leaves a gap, and the tail starts over after it.
#[derive(Default)]
pub(crate) struct Tail(Mutex<std::collections::VecDeque<RecordedEvent>>);

/// Events the tail keeps at most.
const TAIL_EVENTS: usize = 4096;

impl Tail {
    /// Appends `events` and hands back those it no longer keeps, for the caller to drop
    /// when nothing more urgent waits (a writer: once it has answered its appenders).
    #[must_use = "the events let go of are for the caller to drop, out of the way"]
    pub(crate) fn push(&self, events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
        let Some(first) = events.first().map(|e| e.position) else { return events };
        let mut tail = self.0.lock().expect("tail");
        let mut gone = Vec::new();
        if tail.back().is_some_and(|last| last.position + 1 != first) {
            gone.extend(tail.drain(..));
        }
        // Positions index the tail: anything but a gap-free run (an event left out) empties it.
        if !events.windows(2).all(|w| w[1].position == w[0].position + 1) {
            gone.extend(tail.drain(..));
            gone.extend(events);
            return gone;
        }
        tail.extend(events);
        let excess = tail.len().saturating_sub(TAIL_EVENTS);
        gone.extend(tail.drain(..excess));
        gone
    }

    pub(crate) fn from(&self, position: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        let tail = self.0.lock().expect("tail");
        let start = position.checked_sub(tail.front()?.position)? as usize;
        (start < tail.len()).then(|| tail.range(start..).take(limit).cloned().collect())
    }

    pub(crate) fn clear(&self) {
        self.0.lock().expect("tail").clear();
    }
}
