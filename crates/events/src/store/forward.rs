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
use tokio::sync::mpsc;
use uuid::Uuid;

/// Largest frame either end reads: an append's events and their metadata, encoded.
const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const NONCE_BYTES: usize = 16;

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
    proof(&conn.secret, b"client", &nonce).verify_slice(&answer).map_err(|_| bad("a wrong proof".into()))?;
    let mine = proof(&conn.secret, b"server", &nonce).finalize().into_bytes();
    conn.stream.write_all(&mine).await?;
    loop {
        let body = match conn.receive().await {
            Ok(body) => body,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let reply: Result<AppendResult, WireError> = match postcard::from_bytes::<WireAppend>(&body) {
            Ok(request) => match writer.upgrade() {
                Some(queue) => append(backend, &queue, request).await.map_err(WireError::from),
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

/// The forwarder's end: a pool of connections to the writer the log names.
pub(crate) struct Forwarder {
    backend: &'static str,
    secret: Arc<Vec<u8>>,
    idle: Mutex<Vec<(String, Conn)>>,
}

impl Forwarder {
    pub(crate) fn new(backend: &'static str, secret: Vec<u8>) -> Self {
        Forwarder { backend, secret: Arc::new(secret), idle: Mutex::new(Vec::new()) }
    }

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
            let mine = proof(&conn.secret, b"client", &conn.nonce).finalize().into_bytes();
            conn.stream.write_all(&mine).await?;
            let mut answer = [0; 32];
            conn.stream.read_exact(&mut answer).await?;
            proof(&conn.secret, b"server", &conn.nonce)
                .verify_slice(&answer)
                .map_err(|_| bad("the writer does not hold the forwarding secret".into()))
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| bad("the handshake timed out".into()))??;
        Ok(conn)
    }

    /// Whether `writer` answers and holds the secret.
    pub(crate) async fn reaches(&self, writer: &str) -> bool {
        match self.connect(writer).await {
            Ok(conn) => {
                self.idle.lock().expect("forwarder pool").push((writer.to_string(), conn));
                true
            }
            Err(_) => false,
        }
    }

    /// Sends one append to `writer` and returns its answer. A pooled connection that
    /// fails is replaced once: the append carries its event ids, so a second delivery
    /// of one the writer already recorded returns the first result.
    pub(crate) async fn append(
        &self,
        writer: &str,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<AppendResult, StoreError> {
        let request = WireAppend {
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
        let body = postcard::to_stdvec(&request).map_err(|e| StoreError::unavailable(self.backend, e))?;
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
        let reply: Result<AppendResult, WireError> = postcard::from_bytes(&reply)
            .map_err(|e| unreachable(bad(format!("an answer that does not decode: {e}"))))?;
        reply.map_err(|e| e.into_store_error(self.backend, writer))
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
