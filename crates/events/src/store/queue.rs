//! The group-commit queue both backends share: callers submit appends, one writer
//! takes every append waiting (up to a bound) and commits them together.

use crate::envelope::{AppendResult, EventData, ExpectedVersion, StreamId};
use crate::error::StoreError;
use tokio::sync::{mpsc, oneshot};

/// Most events one group commit gathers.
pub(crate) const MAX_BATCH_EVENTS: usize = 20_000;

/// One append waiting for the writer.
pub(crate) struct AppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<EventData>,
    /// Encoded metadata of each event.
    pub metadata: Vec<Vec<u8>>,
    pub reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// Validates an append, queues it for `writer` and waits for its commit.
pub(crate) async fn submit(
    writer: &mpsc::Sender<AppendRequest>,
    backend: &'static str,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<EventData>,
) -> Result<AppendResult, StoreError> {
    let metadata = super::validate_append(&events)?;
    let (reply, answer) = oneshot::channel();
    let request = AppendRequest { stream: stream.clone(), expected, events, metadata, reply };
    let gone = || StoreError::unavailable(backend, "the writer has stopped");
    writer.send(request).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// `first` plus every request already waiting (with `group`), up to [`MAX_BATCH_EVENTS`] events.
pub(crate) fn gather(
    first: AppendRequest,
    group: bool,
    mut waiting: impl FnMut() -> Option<AppendRequest>,
) -> Vec<AppendRequest> {
    let mut events = first.events.len();
    let mut batch = vec![first];
    while group && events < MAX_BATCH_EVENTS {
        let Some(request) = waiting() else { break };
        events += request.events.len();
        batch.push(request);
    }
    batch
}
