//! Appends forwarded to a log's single writer over TCP.
//!
//! Both ends hold the same secret. On connecting, the writer sends a random nonce;
//! the forwarder answers with an HMAC-SHA-256 of it under the secret and the writer
//! with one of its own, so each knows the other holds the secret. Every frame after
//! that is `length ‖ body ‖ tag`, the tag an HMAC of the direction, the nonce, the
//! frame's sequence number and the body: a frame changed, replayed, reordered or
//! moved to another connection fails its tag and ends the connection. The link is
//! not encrypted: personal fields arrive sealed already (the sealing store sits
//! above this one), and the rest is what the log itself holds.
//!
//! A request frame carries the appends waiting in the forwarder when it was sent (the
//! appenders of a replica, answered together, come back together), and its answer one
//! result for each, in order. The handshake's labels name this version of the link, so
//! that replicas of another version fail at the handshake, not on a frame.

use crate::envelope::{AppendResult, EventData, ExpectedVersion, Metadata, StreamId};
use crate::error::StoreError;
use crate::store::queue::{submit, AppendRequest};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Largest frame either end reads: an append's events and their metadata, encoded.
const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const NONCE_BYTES: usize = 16;
/// The handshake's labels, each end's: they name the link's version (2: frames of
/// several appends).
const CLIENT: &[u8] = b"client/2";
const SERVER: &[u8] = b"server/2";
/// Most appends, and bytes of events, a forwarder puts in one frame.
const MAX_FRAME_APPENDS: usize = 256;
const MAX_FRAME_CONTENT: usize = 8 * 1024 * 1024;

type HmacSha256 = Hmac<Sha256>;

#[derive(Serialize, Deserialize)]
struct WireAppend {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<WireEvent>,
}

#[derive(Serialize, Deserialize)]
struct WireEvent {
    event_id: Uuid,
    event_type: String,
    schema_version: u16,
    metadata: Vec<u8>,
    payload: Vec<u8>,
}

/// The errors of an append the writer refused, as they cross the wire.
#[derive(Serialize, Deserialize)]
enum WireError {
    WrongExpectedVersion { stream: String, expected: ExpectedVersion, actual: Option<u64> },
    DuplicateEventId { event_id: Uuid, stream: String, position: u64 },
    Fenced(String),
    Unavailable(String),
    Refused(String),
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongExpectedVersion { stream, expected, actual } => {
                WireError::WrongExpectedVersion { stream, expected, actual }
            }
            StoreError::DuplicateEventId { event_id, stream, position } => {
                WireError::DuplicateEventId { event_id, stream, position }
            }
            StoreError::Fenced { message, .. } => WireError::Fenced(message),
            StoreError::Unavailable { message, .. } => WireError::Unavailable(message),
            other => WireError::Refused(other.to_string()),
        }
    }
}

impl WireError {
    fn into_store_error(self, backend: &'static str, writer: &str) -> StoreError {
        match self {
            WireError::WrongExpectedVersion { stream, expected, actual } => {
                StoreError::WrongExpectedVersion { stream, expected, actual }
            }
            WireError::DuplicateEventId { event_id, stream, position } => {
                StoreError::DuplicateEventId { event_id, stream, position }
            }
            WireError::Fenced(message) => StoreError::Fenced { backend, message },
            WireError::Unavailable(message) => {
                StoreError::Unavailable { backend, message: format!("the writer at {writer}: {message}") }
            }
            WireError::Refused(message) => {
                StoreError::Unavailable { backend, message: format!("the writer at {writer} refused: {message}") }
            }
        }
    }
}

fn proof(secret: &[u8], label: &[u8], nonce: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(label);
    mac.update(nonce);
    mac
}

/// One authenticated connection, either end.
struct Conn {
    /// Read through a buffer: a frame's length, body and tag in one read where they
    /// arrived together (writes pass straight through; a frame is one write).
    stream: BufReader<TcpStream>,
    secret: Arc<Vec<u8>>,
    nonce: [u8; NONCE_BYTES],
    sent: u64,
    received: u64,
    /// `c` on the forwarder's end, `s` on the writer's: the direction of what it sends.
    side: u8,
}

impl Conn {
    fn tag(&self, direction: u8, seq: u64, body: &[u8]) -> HmacSha256 {
        let mut mac = proof(&self.secret, &[b'f', direction], &self.nonce);
        mac.update(&seq.to_be_bytes());
        mac.update(body);
        mac
    }

    async fn send(&mut self, body: &[u8]) -> std::io::Result<()> {
        let tag = self.tag(self.side, self.sent, body).finalize().into_bytes();
        self.sent += 1;
        let mut frame = Vec::with_capacity(4 + body.len() + 32);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        frame.extend_from_slice(&tag);
        self.stream.write_all(&frame).await
    }

    async fn receive(&mut self) -> std::io::Result<Vec<u8>> {
        let len = self.stream.read_u32().await? as usize;
        if len > MAX_FRAME_BYTES {
            return Err(bad(format!("a frame of {len} bytes, more than {MAX_FRAME_BYTES}")));
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await?;
        let mut tag = [0; 32];
        self.stream.read_exact(&mut tag).await?;
        let direction = if self.side == b'c' { b's' } else { b'c' };
        self.tag(direction, self.received, &body)
            .verify_slice(&tag)
            .map_err(|_| bad("a frame whose tag does not match".into()))?;
        self.received += 1;
        Ok(body)
    }
}

fn bad(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Takes forwarded appends on `listener` for the writer queue `writer` until the store
/// that owns the queue is gone. Connections that do not prove the secret are closed
/// unanswered.
pub(crate) async fn serve(
    backend: &'static str,
    listener: TcpListener,
    secret: Arc<Vec<u8>>,
    writer: mpsc::WeakSender<AppendRequest>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => Some(accepted),
            _ = tokio::time::sleep(Duration::from_secs(1)) => None,
        };
        if writer.upgrade().is_none() {
            return;
        }
        let (stream, peer) = match accepted {
            None => continue,
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "forwarding listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (secret, writer) = (secret.clone(), writer.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(backend, stream, secret, writer).await {
                tracing::debug!(%peer, error = %e, "forwarding connection closed");
            }
        });
    }
}

async fn handle(
    backend: &'static str,
    stream: TcpStream,
    secret: Arc<Vec<u8>>,
    writer: mpsc::WeakSender<AppendRequest>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let nonce: [u8; NONCE_BYTES] = rand::random();
    let mut conn = Conn { stream: BufReader::new(stream), secret, nonce, sent: 0, received: 0, side: b's' };
    conn.stream.write_all(&nonce).await?;
    let mut answer = [0; 32];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.stream.read_exact(&mut answer))
        .await
        .map_err(|_| bad("no proof within the handshake timeout".into()))??;
    proof(&conn.secret, CLIENT, &nonce)
        .verify_slice(&answer)
        .map_err(|_| bad("a wrong proof (another secret, or a replica of another version)".into()))?;
    let mine = proof(&conn.secret, SERVER, &nonce).finalize().into_bytes();
    conn.stream.write_all(&mine).await?;
    loop {
        let body = match conn.receive().await {
            Ok(body) => body,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let reply: Result<Vec<Result<AppendResult, WireError>>, WireError> =
            match postcard::from_bytes::<Vec<WireAppend>>(&body) {
                // Submitted together (in the frame's order), answered as each is committed.
                Ok(requests) => match writer.upgrade() {
                    Some(queue) => Ok(futures::future::join_all(
                        requests
                            .into_iter()
                            .map(|r| async { append(backend, &queue, r).await.map_err(WireError::from) }),
                    )
                    .await),
                    None => Err(WireError::Unavailable("this writer has closed its log".into())),
                },
                Err(e) => Err(WireError::Refused(format!("a request that does not decode: {e}"))),
            };
        let bytes = postcard::to_stdvec(&reply).map_err(|e| bad(e.to_string()))?;
        conn.send(&bytes).await?;
    }
}

async fn append(
    backend: &'static str,
    writer: &mpsc::Sender<AppendRequest>,
    request: WireAppend,
) -> Result<AppendResult, StoreError> {
    let stream = StreamId::new(&request.stream)?;
    let events = request
        .events
        .into_iter()
        .map(|e| {
            let metadata = Metadata::decode(&e.metadata).map_err(|err| StoreError::Corrupt {
                position: 0,
                reason: format!("forwarded metadata of event {} does not decode: {err}", e.event_id),
            })?;
            Ok(EventData {
                event_id: e.event_id,
                event_type: e.event_type,
                schema_version: e.schema_version,
                metadata,
                payload: e.payload,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    submit(writer, backend, &stream, request.expected, events).await
}

/// The forwarder's end: appends gathered into frames, sent over a pool of connections
/// to the writer the log names.
pub(crate) struct Forwarder {
    link: Arc<Link>,
    waiting: mpsc::UnboundedSender<Waiting>,
}

/// What the forwarder's frames share: the secret and the idle connections.
struct Link {
    backend: &'static str,
    secret: Arc<Vec<u8>>,
    idle: Mutex<Vec<(String, Conn)>>,
    /// Frames sent (what the tests look at).
    #[cfg(test)]
    frames: std::sync::atomic::AtomicU64,
}

/// An append waiting for a frame to `writer`.
struct Waiting {
    writer: String,
    append: WireAppend,
    reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

impl Waiting {
    fn content(&self) -> usize {
        self.append.events.iter().map(|e| e.payload.len() + e.metadata.len() + 64).sum()
    }
}

impl Forwarder {
    /// A forwarder; its frames are sent by a task of the runtime it is made in.
    pub(crate) fn new(backend: &'static str, secret: Vec<u8>) -> Self {
        let link = Arc::new(Link {
            backend,
            secret: Arc::new(secret),
            idle: Mutex::new(Vec::new()),
            #[cfg(test)]
            frames: Default::default(),
        });
        let (waiting, queue) = mpsc::unbounded_channel();
        tokio::spawn(send_frames(link.clone(), queue));
        Forwarder { link, waiting }
    }

    /// Whether `writer` answers and holds the secret.
    pub(crate) async fn reaches(&self, writer: &str) -> bool {
        match self.link.connect(writer).await {
            Ok(conn) => {
                self.link.idle.lock().expect("forwarder pool").push((writer.to_string(), conn));
                true
            }
            Err(_) => false,
        }
    }

    /// Frames sent so far.
    #[cfg(test)]
    fn frames(&self) -> u64 {
        self.link.frames.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends one append to `writer`, in the next frame, and returns its answer.
    pub(crate) async fn append(
        &self,
        writer: &str,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<AppendResult, StoreError> {
        let append = WireAppend {
            stream: stream.as_str().to_string(),
            expected,
            events: events
                .iter()
                .map(|e| WireEvent {
                    event_id: e.event_id,
                    event_type: e.event_type.clone(),
                    schema_version: e.schema_version,
                    metadata: e.metadata.encode(),
                    payload: e.payload.clone(),
                })
                .collect(),
        };
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::unavailable(self.link.backend, "this instance's forwarder has stopped");
        self.waiting.send(Waiting { writer: writer.to_string(), append, reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The forwarder's task: takes the appends waiting, a frame for each writer they go
/// to, and sends each frame on a connection of its own, until the forwarder is gone.
async fn send_frames(link: Arc<Link>, mut queue: mpsc::UnboundedReceiver<Waiting>) {
    let mut carried: Option<Waiting> = None;
    loop {
        let first = match carried.take() {
            Some(w) => w,
            None => match queue.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let mut frame = vec![first];
        // The appenders answered by the last frame are woken together, but each sends its
        // next append in turn: giving way lets those already woken do so first.
        loop {
            tokio::task::yield_now().await;
            match take_waiting(&mut queue, &mut frame) {
                Taken::Some => continue,
                Taken::None => break,
                Taken::Full(rest) => {
                    carried = rest;
                    break;
                }
            }
        }
        let mut frames: Vec<(String, Vec<Waiting>)> = Vec::new();
        for w in frame {
            match frames.iter_mut().find(|(writer, _)| *writer == w.writer) {
                Some((_, frame)) => frame.push(w),
                None => frames.push((w.writer.clone(), vec![w])),
            }
        }
        for (writer, frame) in frames {
            let link = link.clone();
            tokio::spawn(async move { link.send(&writer, frame).await });
        }
    }
}

/// What [`take_waiting`] added to a frame.
enum Taken {
    /// Some appends, and there is room for more.
    Some,
    /// Nothing was waiting.
    None,
    /// The frame is full; an append taken that did not fit, if any.
    Full(Option<Waiting>),
}

/// Adds the appends waiting on `queue` to `frame`, up to [`MAX_FRAME_APPENDS`] and
/// [`MAX_FRAME_CONTENT`].
fn take_waiting(queue: &mut mpsc::UnboundedReceiver<Waiting>, frame: &mut Vec<Waiting>) -> Taken {
    let mut content: usize = frame.iter().map(Waiting::content).sum();
    let mut taken = Taken::None;
    loop {
        if frame.len() >= MAX_FRAME_APPENDS || content >= MAX_FRAME_CONTENT {
            return Taken::Full(None);
        }
        let Ok(w) = queue.try_recv() else { return taken };
        if content + w.content() > MAX_FRAME_CONTENT {
            return Taken::Full(Some(w));
        }
        content += w.content();
        frame.push(w);
        taken = Taken::Some;
    }
}

impl Link {
    /// Connects to `writer` and proves the secret both ways.
    async fn connect(&self, writer: &str) -> std::io::Result<Conn> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(writer))
            .await
            .map_err(|_| bad("connecting timed out".into()))??;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream: BufReader::new(stream),
            secret: self.secret.clone(),
            nonce: [0; NONCE_BYTES],
            sent: 0,
            received: 0,
            side: b'c',
        };
        let handshake = async {
            conn.stream.read_exact(&mut conn.nonce).await?;
            let mine = proof(&conn.secret, CLIENT, &conn.nonce).finalize().into_bytes();
            conn.stream.write_all(&mine).await?;
            let mut answer = [0; 32];
            // A writer closes the connection on a proof it cannot check.
            conn.stream.read_exact(&mut answer).await.map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    bad("the writer refused this instance's proof: it holds another forwarding secret, or runs \
                     another version of the replica link"
                        .into())
                }
                _ => e,
            })?;
            proof(&conn.secret, SERVER, &conn.nonce).verify_slice(&answer).map_err(|_| {
                bad("the writer does not hold the forwarding secret, or runs another version of the replica link"
                    .into())
            })
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| bad("the handshake timed out (a writer of another version closes it)".into()))??;
        Ok(conn)
    }

    /// Sends one frame of appends to `writer` and hands each its answer. A pooled
    /// connection that fails is replaced once: the appends carry their event ids, so a
    /// second delivery of one the writer already recorded returns the first result.
    async fn send(&self, writer: &str, frame: Vec<Waiting>) {
        let (appends, replies): (Vec<WireAppend>, Vec<_>) = frame.into_iter().map(|w| (w.append, w.reply)).unzip();
        match self.exchange(writer, &appends).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer.map_err(|e| e.into_store_error(self.backend, writer)));
                }
            }
            // What fails a frame (the link, or the writer closing) fails each of its appends.
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.copied(self.backend)));
                }
            }
        }
    }

    async fn exchange(
        &self,
        writer: &str,
        appends: &[WireAppend],
    ) -> Result<Vec<Result<AppendResult, WireError>>, StoreError> {
        let body = postcard::to_stdvec(appends).map_err(|e| StoreError::unavailable(self.backend, e))?;
        #[cfg(test)]
        self.frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let unreachable = |e: std::io::Error| StoreError::Unavailable {
            backend: self.backend,
            message: format!(
                "cannot reach the log's writer at {writer}: {e}; the append may be retried with the same event ids"
            ),
        };
        let pooled = {
            let mut idle = self.idle.lock().expect("forwarder pool");
            idle.iter().rposition(|(w, _)| w == writer).map(|i| idle.swap_remove(i).1)
        };
        let (reply, conn) = match pooled {
            Some(conn) => match self.call(conn, &body).await {
                Ok(done) => done,
                Err(_) => {
                    self.call(self.connect(writer).await.map_err(unreachable)?, &body).await.map_err(unreachable)?
                }
            },
            None => self.call(self.connect(writer).await.map_err(unreachable)?, &body).await.map_err(unreachable)?,
        };
        self.idle.lock().expect("forwarder pool").push((writer.to_string(), conn));
        let reply: Result<Vec<Result<AppendResult, WireError>>, WireError> = postcard::from_bytes(&reply)
            .map_err(|e| unreachable(bad(format!("an answer that does not decode: {e}"))))?;
        let answers = reply.map_err(|e| e.into_store_error(self.backend, writer))?;
        if answers.len() != appends.len() {
            return Err(unreachable(bad(format!("{} answers to {} appends", answers.len(), appends.len()))));
        }
        Ok(answers)
    }

    async fn call(&self, mut conn: Conn, body: &[u8]) -> std::io::Result<(Vec<u8>, Conn)> {
        let exchange = async {
            conn.send(body).await?;
            conn.receive().await
        };
        let reply =
            tokio::time::timeout(CALL_TIMEOUT, exchange).await.map_err(|_| bad("no answer in time".into()))??;
        Ok((reply, conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Event, UserEmailVerified};

    /// A writer that answers each append from its stream's name: `refused-…` streams
    /// are not at the version expected, the others are recorded at the next position.
    async fn writer() -> (String, Arc<Vec<u8>>, mpsc::Sender<AppendRequest>) {
        let secret = Arc::new(vec![7u8; 32]);
        let (queue, mut requests) = mpsc::channel::<AppendRequest>(1024);
        tokio::spawn(async move {
            let mut head = 0;
            while let Some(r) = requests.recv().await {
                let answer = if r.stream.as_str().starts_with("refused-") {
                    Err(StoreError::WrongExpectedVersion {
                        stream: r.stream.to_string(),
                        expected: r.expected,
                        actual: Some(41),
                    })
                } else {
                    head += r.events.len() as u64;
                    Ok(AppendResult {
                        first_position: head + 1 - r.events.len() as u64,
                        position: head,
                        stream_version: r.events.len() as u64 - 1,
                    })
                };
                let _ = r.reply.send(answer);
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve("test", listener, secret.clone(), queue.downgrade()));
        (address, secret, queue)
    }

    fn events(n: usize) -> Vec<EventData> {
        (0..n)
            .map(|_| {
                let e = Event::UserEmailVerified(UserEmailVerified { user_id: Uuid::now_v7() });
                EventData::new(&e, Metadata::default()).unwrap()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_waiting_together_share_a_frame_and_each_gets_its_own_answer() {
        let (address, secret, _queue) = writer().await;
        let forwarder = Arc::new(Forwarder::new("test", secret.to_vec()));
        let appends: Vec<_> = (0..64)
            .map(|i| {
                let (forwarder, address) = (forwarder.clone(), address.clone());
                tokio::spawn(async move {
                    let name = if i % 8 == 0 { format!("refused-{i}") } else { format!("user-{i}") };
                    let stream = StreamId::new(&name).unwrap();
                    (i, forwarder.append(&address, &stream, ExpectedVersion::Exact(3), &events(i % 3 + 1)).await)
                })
            })
            .collect();
        let mut positions = Vec::new();
        for append in appends {
            let (i, answer) = append.await.unwrap();
            match answer {
                Err(StoreError::WrongExpectedVersion { stream, actual: Some(41), .. }) if i % 8 == 0 => {
                    assert_eq!(stream, format!("refused-{i}"));
                }
                Ok(result) if i % 8 != 0 => {
                    assert_eq!(result.position - result.first_position, (i % 3) as u64, "append {i}");
                    assert_eq!(result.stream_version, (i % 3) as u64, "append {i}");
                    positions.extend(result.first_position..=result.position);
                }
                other => panic!("append {i}: {other:?}"),
            }
        }
        // Every event recorded once, and the answers put together cover the log.
        positions.sort_unstable();
        assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>());
        assert!(forwarder.frames() < 64, "64 appends made {} frames", forwarder.frames());
    }

    #[tokio::test]
    async fn a_writer_with_another_secret_is_unavailable_and_named() {
        let (address, _, _queue) = writer().await;
        let forwarder = Forwarder::new("test", vec![8u8; 32]);
        let stream = StreamId::new("user-1").unwrap();
        match forwarder.append(&address, &stream, ExpectedVersion::Any, &events(1)).await {
            Err(StoreError::Unavailable { message, .. }) => {
                assert!(message.contains(&address) && message.contains("another version"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
