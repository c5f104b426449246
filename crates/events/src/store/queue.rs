//! The group-commit queue both backends share: callers submit appends, one writer
//! takes every append waiting (up to a bound) and commits them together.

use crate::chain::ContentPrefix;
use crate::envelope::{AppendResult, EventData, ExpectedVersion, StreamId};
use crate::error::StoreError;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most events one group commit gathers.
pub(crate) const MAX_BATCH_EVENTS: usize = 20_000;
/// Most payload and metadata bytes one group commit gathers: a PostgreSQL group is one
/// statement whose array parameters must stay far below a parameter's 1 GB limit, so
/// appends that each fit never fail because they were grouped.
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// One append waiting for the writer.
pub(crate) struct AppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<EventData>,
    /// What the appender prepared of each event, in the same order.
    pub encoded: Vec<Encoded>,
    /// An append whose events are still being made: the rest of them, as they come
    /// ([`submit_made`]; only SQLite's writer takes such appends).
    pub rest: Option<Rest>,
    pub reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

impl AppendRequest {
    /// The events of the append, those still being made included.
    pub(crate) fn count(&self) -> usize {
        self.rest.as_ref().map_or(self.events.len(), |r| r.count)
    }

    /// Waits for the next part of the rest of the events and adds it to the request's;
    /// `false` once they are all here. An error: the appender failed to make them (its
    /// error), or stopped making them.
    pub(crate) fn receive(&mut self) -> Result<bool, StoreError> {
        let Some(rest) = &mut self.rest else { return Ok(false) };
        if self.events.len() >= rest.count {
            self.rest = None;
            return Ok(false);
        }
        let (events, encoded) = match rest.parts.blocking_recv() {
            Some(part) => part?,
            None => return Err(StoreError::IncompleteAppend { made: self.events.len(), count: rest.count }),
        };
        self.events.extend(events);
        self.encoded.extend(encoded);
        Ok(true)
    }

    /// Whether the append has an `i`th event (from 0), waiting for it while it is being made.
    pub(crate) fn has(&mut self, i: usize) -> Result<bool, StoreError> {
        while self.events.len() <= i {
            if !self.receive()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits for every event of the append still being made.
    pub(crate) fn receive_all(&mut self) -> Result<(), StoreError> {
        while self.receive()? {}
        Ok(())
    }
}

/// The events of an append still being made, sent in parts as they are.
pub(crate) struct Rest {
    /// Events of the whole append.
    count: usize,
    /// Received on the writer's thread, which is no runtime's (a blocking receive).
    parts: mpsc::UnboundedReceiver<Result<Part, StoreError>>,
}

/// Events of an append made and prepared for the writer, in order.
type Part = (Vec<EventData>, Vec<Encoded>);

/// One event of an append as its appender prepared it for the writer.
pub(crate) struct Encoded {
    pub metadata: Vec<u8>,
    /// Its content digest hashed as far as it can be before the writer places the
    /// event ([`ContentPrefix`]): the writer finishes it.
    pub content: ContentPrefix,
}

/// Pairs each event's encoded metadata with its content digest's prefix in `stream`.
fn encode(stream: &StreamId, events: &[EventData], metadata: Vec<Vec<u8>>) -> Vec<Encoded> {
    events
        .iter()
        .zip(metadata)
        .map(|(e, metadata)| {
            let content = ContentPrefix::new(
                &e.event_id,
                stream.as_str(),
                &e.event_type,
                e.schema_version,
                &metadata,
                &e.payload,
            );
            Encoded { metadata, content }
        })
        .collect()
}

/// Makes the next `n` (at most) of `events` and prepares them for the writer.
fn make_part(
    stream: &StreamId,
    events: &mut (dyn ExactSizeIterator<Item = Result<EventData, StoreError>> + Send),
    n: usize,
) -> Result<Part, StoreError> {
    let made = events.take(n).collect::<Result<Vec<_>, _>>()?;
    let metadata = made.iter().map(EventData::validate).collect::<Result<Vec<_>, _>>()?;
    let encoded = encode(stream, &made, metadata);
    Ok((made, encoded))
}

/// Events the appender makes and hands over at a time while its writer writes; the
/// first part is smaller, so that the writer starts sooner.
const PART: usize = 16;
const FIRST_PART: usize = 4;

/// [`submit`] of events still being made: queues the append with its first events, then
/// makes the rest a part at a time and hands each over, while `writer` writes those it has.
pub(crate) async fn submit_made(
    writer: &mpsc::Sender<AppendRequest>,
    backend: &'static str,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &mut (dyn ExactSizeIterator<Item = Result<EventData, StoreError>> + Send),
) -> Result<AppendResult, StoreError> {
    let count = events.len();
    super::check_count(count)?;
    let (first, encoded) = make_part(stream, events, FIRST_PART.min(count))?;
    let (parts, rest) = mpsc::unbounded_channel();
    let first_len = first.len();
    let rest = (count > first_len).then_some(Rest { count, parts: rest });
    let (reply, answer) = oneshot::channel();
    let request = AppendRequest { stream: stream.clone(), expected, events: first, encoded, rest, reply };
    let gone = || StoreError::unavailable(backend, "the writer has stopped");
    writer.send(request).await.map_err(|_| gone())?;
    // No await until every part is handed over: the writer waits for them.
    let mut made = first_len;
    while made < count {
        let n = PART.min(count - made);
        let part = make_part(stream, events, n);
        made += n;
        let failed = part.is_err();
        // Gone: the writer stopped taking this append's events (its answer says why).
        if parts.send(part).is_err() || failed {
            break;
        }
    }
    drop(parts);
    answer.await.map_err(|_| gone())?
}

/// Validates an append, queues it for `writer` and waits for its commit.
pub(crate) async fn submit(
    writer: &mpsc::Sender<AppendRequest>,
    backend: &'static str,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<EventData>,
) -> Result<AppendResult, StoreError> {
    let encoded = encode(stream, &events, super::validate_append(&events)?);
    let (reply, answer) = oneshot::channel();
    let request = AppendRequest { stream: stream.clone(), expected, events, encoded, rest: None, reply };
    let gone = || StoreError::unavailable(backend, "the writer has stopped");
    writer.send(request).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// A writer thread's loop: takes the next group of appends waiting on `requests` (see
/// [`gather`]) and hands it to `commit`, until every sender is gone.
pub(crate) fn serve_groups(
    requests: mpsc::Receiver<AppendRequest>,
    group: bool,
    commit: impl FnMut(Vec<AppendRequest>),
) {
    serve_groups_lingering(requests, group, Duration::ZERO, commit)
}

/// [`serve_groups`] for a writer whose every commit costs much more than an append
/// (a Kafka transaction): when fewer appends wait than the last group held, it waits up
/// to `linger` for as many (see [`Groups`]).
pub(crate) fn serve_groups_lingering(
    requests: mpsc::Receiver<AppendRequest>,
    group: bool,
    linger: Duration,
    mut commit: impl FnMut(Vec<AppendRequest>),
) {
    let mut groups = Groups::new(requests, group, linger);
    while let Some(batch) = groups.next_blocking() {
        commit(batch);
    }
}

/// A writer's groups of appends, one at a time. With a linger, when fewer appends wait
/// than the last group held, it waits up to the linger for as many: appenders that wait
/// on their answers come back together once a group is committed, but not at once, and
/// without the wait the first few back would make a small group of their own.
pub(crate) struct Groups {
    requests: mpsc::Receiver<AppendRequest>,
    group: bool,
    linger: Duration,
    carried: Option<AppendRequest>,
    last: usize,
}

impl Groups {
    pub(crate) fn new(requests: mpsc::Receiver<AppendRequest>, group: bool, linger: Duration) -> Self {
        Groups { requests, group, linger, carried: None, last: 0 }
    }

    /// The next group, for a writer that is a task; `None` once every sender is gone.
    /// While it lingers it takes each append as it comes.
    pub(crate) async fn next(&mut self) -> Option<Vec<AppendRequest>> {
        let first = match self.carried.take() {
            Some(request) => request,
            None => self.requests.recv().await?,
        };
        let (mut batch, mut rest) = gather(first, self.group, || self.requests.try_recv().ok());
        let deadline = tokio::time::Instant::now() + self.linger;
        while self.lingers(&batch, &rest) {
            let Ok(Some(next)) = tokio::time::timeout_at(deadline, self.requests.recv()).await else { break };
            let mut next = Some(next);
            rest = gather_more(&mut batch, || next.take().or_else(|| self.requests.try_recv().ok()));
        }
        Some(self.taken(batch, rest))
    }

    /// [`Groups::next`] for a writer that is a thread: while it lingers it looks for more
    /// appends every [`LINGER_STEP`].
    pub(crate) fn next_blocking(&mut self) -> Option<Vec<AppendRequest>> {
        let first = match self.carried.take() {
            Some(request) => request,
            None => self.requests.blocking_recv()?,
        };
        let (mut batch, mut rest) = gather(first, self.group, || self.requests.try_recv().ok());
        let deadline = Instant::now() + self.linger;
        while self.lingers(&batch, &rest) && Instant::now() < deadline {
            std::thread::sleep(LINGER_STEP);
            rest = gather_more(&mut batch, || self.requests.try_recv().ok());
        }
        Some(self.taken(batch, rest))
    }

    /// Whether to wait for more appends: fewer came than the last group held, and the
    /// group has room.
    fn lingers(&self, batch: &[AppendRequest], rest: &Option<AppendRequest>) -> bool {
        self.group && !self.linger.is_zero() && rest.is_none() && batch.len() < self.last
    }

    fn taken(&mut self, batch: Vec<AppendRequest>, rest: Option<AppendRequest>) -> Vec<AppendRequest> {
        self.last = batch.len();
        self.carried = rest;
        batch
    }
}

/// How often a lingering writer looks for more appends.
const LINGER_STEP: Duration = Duration::from_micros(50);

fn bytes(request: &AppendRequest) -> usize {
    request.events.iter().map(|e| e.payload.len()).sum::<usize>()
        + request.encoded.iter().map(|e| e.metadata.len()).sum::<usize>()
}

/// `first` plus the requests already waiting (with `group`), up to [`MAX_BATCH_EVENTS`]
/// events and [`MAX_BATCH_BYTES`] bytes. A request taken that does not fit is handed
/// back, to start the next group.
pub(crate) fn gather(
    first: AppendRequest,
    group: bool,
    waiting: impl FnMut() -> Option<AppendRequest>,
) -> (Vec<AppendRequest>, Option<AppendRequest>) {
    let mut batch = vec![first];
    if !group {
        return (batch, None);
    }
    let rest = gather_more(&mut batch, waiting);
    (batch, rest)
}

/// Adds the requests waiting to `batch` within the bounds of one group (see [`gather`]);
/// returns a request taken that does not fit.
fn gather_more(
    batch: &mut Vec<AppendRequest>,
    mut waiting: impl FnMut() -> Option<AppendRequest>,
) -> Option<AppendRequest> {
    let mut events: usize = batch.iter().map(AppendRequest::count).sum();
    let mut size: usize = batch.iter().map(bytes).sum();
    while events < MAX_BATCH_EVENTS {
        let Some(request) = waiting() else { break };
        let (more_events, more_bytes) = (request.count(), bytes(&request));
        if events + more_events > MAX_BATCH_EVENTS || size + more_bytes > MAX_BATCH_BYTES {
            return Some(request);
        }
        events += more_events;
        size += more_bytes;
        batch.push(request);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(events: usize, payload: usize) -> AppendRequest {
        let (reply, _) = oneshot::channel();
        let data: Vec<EventData> = (0..events)
            .map(|_| EventData {
                event_id: uuid::Uuid::now_v7(),
                event_type: "user.email_verified".into(),
                schema_version: 1,
                metadata: Default::default(),
                payload: vec![0; payload],
            })
            .collect();
        let stream = StreamId::new("user-x").unwrap();
        let encoded = encode(&stream, &data, vec![Vec::new(); events]);
        AppendRequest { stream, expected: ExpectedVersion::Any, events: data, encoded, rest: None, reply }
    }

    #[test]
    fn groups_are_bounded_by_bytes_and_what_does_not_fit_starts_the_next() {
        // Three appends of 40 events of 1 MiB: each fits alone, two together do not.
        let mut waiting = vec![request(40, 1 << 20), request(40, 1 << 20)].into_iter();
        let (batch, rest) = gather(request(40, 1 << 20), true, || waiting.next());
        assert_eq!(batch.len(), 1, "a second 40 MiB append would pass the 64 MiB bound");
        let rest = rest.expect("the append that did not fit is handed back");
        let (batch, rest) = gather(rest, true, || waiting.next());
        assert_eq!((batch.len(), rest.is_some()), (1, true));
        // Small appends group up to the event bound.
        let mut small = (0..30).map(|_| request(1_000, 10)).collect::<Vec<_>>().into_iter();
        let (batch, rest) = gather(request(1_000, 10), true, || small.next());
        assert_eq!(batch.iter().map(|r| r.events.len()).sum::<usize>(), MAX_BATCH_EVENTS);
        assert!(rest.is_none(), "at the bound exactly, nothing more was taken");
        assert_eq!(small.len(), 11, "the rest still wait for the next group");
        // Without group commit, one at a time.
        let (batch, rest) = gather(request(1, 10), false, || panic!("not asked"));
        assert_eq!((batch.len(), rest.is_none()), (1, true));
    }

    #[test]
    fn a_lingering_writer_waits_for_as_many_appends_as_its_last_group_and_no_longer_than_its_linger() {
        let (tx, rx) = mpsc::channel(100);
        // The first group: ten appends waiting when the writer starts.
        for _ in 0..10 {
            tx.try_send(request(1, 10)).ok().unwrap();
        }
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let writer = std::thread::spawn(move || {
            serve_groups_lingering(rx, true, Duration::from_millis(500), |batch| {
                seen.lock().unwrap().push(batch.len());
            })
        });
        let groups = |n: usize| {
            let waited = Instant::now();
            while sizes.lock().unwrap().len() < n {
                assert!(waited.elapsed() < Duration::from_secs(10), "group {n} never came");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        groups(1);
        // Ten more, one a millisecond: one group, as the last one was.
        for _ in 0..10 {
            tx.blocking_send(request(1, 10)).ok().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        groups(2);
        // Only three come: they are committed once the linger is over.
        for _ in 0..3 {
            tx.blocking_send(request(1, 10)).ok().unwrap();
        }
        groups(3);
        drop(tx);
        writer.join().unwrap();
        assert_eq!(*sizes.lock().unwrap(), vec![10, 10, 3]);
    }

    #[tokio::test]
    async fn a_writer_task_lingers_as_a_writer_thread_does() {
        let (tx, rx) = mpsc::channel(100);
        let mut groups = Groups::new(rx, true, Duration::from_millis(500));
        for _ in 0..10 {
            tx.send(request(1, 10)).await.ok().unwrap();
        }
        assert_eq!(groups.next().await.map(|g| g.len()), Some(10));
        // Ten more, one a millisecond: one group, as the last one was.
        let sender = tx.clone();
        let late = tokio::spawn(async move {
            for _ in 0..10 {
                sender.send(request(1, 10)).await.ok().unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert_eq!(groups.next().await.map(|g| g.len()), Some(10));
        late.await.unwrap();
        // Only three come: they are a group once the linger is over.
        for _ in 0..3 {
            tx.send(request(1, 10)).await.ok().unwrap();
        }
        assert_eq!(groups.next().await.map(|g| g.len()), Some(3));
        drop(tx);
        assert!(groups.next().await.is_none());
    }

    #[tokio::test]
    async fn a_writer_task_without_grouping_takes_one_append_at_a_time() {
        let (tx, rx) = mpsc::channel(100);
        let mut groups = Groups::new(rx, false, Duration::from_millis(500));
        for _ in 0..3 {
            tx.send(request(1, 10)).await.ok().unwrap();
        }
        for _ in 0..3 {
            assert_eq!(groups.next().await.map(|g| g.len()), Some(1));
        }
    }
}
