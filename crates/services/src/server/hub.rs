//! WebSocket push: one subscription to the log fans each user's events out to
//! that user's open connections.

use super::rest::{Authenticated, Problem, RestState};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use perfect21_events::{subscribe_all, Event, EventStore};
use perfect21_projections::audit::audited_user;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Heartbeat interval (a ping; clients answer with a pong).
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Messages queued per connection; a client that falls this far behind is disconnected.
const QUEUE: usize = 256;
/// Close code for a connection whose token or session was revoked.
pub const CLOSE_REVOKED: u16 = 4001;
/// Close code for a connection whose token expired.
pub const CLOSE_EXPIRED: u16 = 4002;

/// One message for one user: an event of the log, or a notification.
pub struct Push {
    pub json: String,
    /// The event, if the push is one (it may end the connection).
    pub event: Option<Event>,
}

type Connections = HashMap<Uuid, Vec<(u64, mpsc::Sender<Arc<Push>>)>>;

/// Open connections by user.
#[derive(Default)]
pub struct Hub {
    connections: Mutex<Connections>,
    next_id: AtomicU64,
}

impl Hub {
    /// Starts following the log from its current head.
    pub async fn start(store: Arc<dyn EventStore>) -> anyhow::Result<Arc<Hub>> {
        let hub = Arc::new(Hub::default());
        let head = store.head_position().await?;
        let pump = hub.clone();
        tokio::spawn(async move {
            let mut sub = subscribe_all(store, head + 1);
            loop {
                match sub.next().await {
                    Ok(recorded) => {
                        let Ok(event) = recorded.decode() else { continue };
                        let Some(user) = audited_user(&event) else { continue };
                        let json = serde_json::json!({
                            "type": "event",
                            "event_type": recorded.event_type,
                            "position": recorded.position,
                            "recorded_at": recorded.recorded_at,
                            "payload": event.public_view(),
                        })
                        .to_string();
                        pump.deliver(user, Arc::new(Push { json, event: Some(event) }));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "websocket hub cannot follow the log; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(hub)
    }

    /// Queues `push` on every open connection of `user`.
    pub fn deliver(&self, user: Uuid, push: Arc<Push>) {
        let mut conns = self.connections.lock().expect("hub lock");
        if let Some(list) = conns.get_mut(&user) {
            // A full queue means a stuck client: drop it rather than stall everyone.
            list.retain(|(_, tx)| tx.try_send(push.clone()).is_ok());
            if list.is_empty() {
                conns.remove(&user);
            }
        }
    }

    fn register(&self, user: Uuid) -> (u64, mpsc::Receiver<Arc<Push>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.connections.lock().expect("hub lock").entry(user).or_default().push((id, tx));
        (id, rx)
    }

    fn unregister(&self, user: Uuid, id: u64) {
        let mut conns = self.connections.lock().expect("hub lock");
        if let Some(list) = conns.get_mut(&user) {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                conns.remove(&user);
            }
        }
    }
}

/// The `access_token` of a WebSocket URL's query (browsers cannot set headers on an upgrade).
pub fn query_token(query: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct WsQuery {
        access_token: Option<String>,
    }
    serde_urlencoded::from_str::<WsQuery>(query).ok().and_then(|q| q.access_token)
}

/// The query of `GET /api/v1/ws`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct WsParams {
    /// The access token, for clients (browsers) that cannot set `Authorization` on an upgrade.
    access_token: Option<String>,
}

/// The headers of a WebSocket upgrade (RFC 6455 §4.1).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct UpgradeHeaders {
    /// `websocket`, in any case.
    #[param(rename = "Upgrade", pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$")]
    upgrade: String,
    /// A list holding the token `Upgrade`, in any case.
    #[param(rename = "Connection", pattern = r"^(.*,)?[ \t]*[Uu][Pp][Gg][Rr][Aa][Dd][Ee][ \t]*(,.*)?$")]
    connection: String,
    /// Base64 of 16 random bytes.
    #[param(rename = "Sec-WebSocket-Key", pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$")]
    sec_websocket_key: String,
    #[param(rename = "Sec-WebSocket-Version", pattern = "^13$")]
    sec_websocket_version: String,
}

/// `GET /api/v1/ws`: a signed-in user (`Authorization: Bearer` or `?access_token=`,
/// checked by the access middleware) receives their own events.
#[utoipa::path(get, path = "/api/v1/ws", tag = "sessions",
    summary = "WebSocket: the caller's own events, pushed (Bearer header or access_token query)",
    description = "A WebSocket upgrade (RFC 6455). After `101` the server sends text frames: first         `{\"type\":\"hello\",\"user_id\",\"session_id\"}`, then each of the caller's events as the seed         envelope, with pings every 30 s; it closes with 4001 when the session or token is revoked and 4002 when         the token expires. A request that is not an upgrade gets 400.",
    params(WsParams, UpgradeHeaders),
    responses((status = 101, description = "Switching Protocols: the connection is a WebSocket")))]
pub async fn websocket(
    State(s): State<RestState>,
    a: Authenticated,
    headers: axum::http::HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    const EXPECTED: &str =
        "send a WebSocket upgrade: Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Key, Sec-WebSocket-Version: 13";
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            let detail = format!("{} ({EXPECTED})", e.body_text());
            return Problem::new(e.status(), "not a websocket upgrade", detail).into_response();
        }
    };
    // RFC 6455 §4.1: the key is 16 bytes, base64-encoded.
    let key = headers.get("sec-websocket-key").map(|k| k.as_bytes()).unwrap_or_default();
    if base64::engine::general_purpose::STANDARD.decode(key).map_or(true, |k| k.len() != 16) {
        let detail = format!("Sec-WebSocket-Key must be the base64 of 16 bytes ({EXPECTED})");
        return Problem::new(axum::http::StatusCode::BAD_REQUEST, "not a websocket upgrade", detail).into_response();
    }
    let hub = s.hub.clone();
    ws.on_upgrade(move |socket| connection(socket, hub, a.user, a.session, a.jti, a.exp))
}

/// Whether `event` ends the connection of (`user`, `session`, `jti`).
fn ends(event: &Event, session: Uuid, jti: &str) -> Option<(u16, &'static str)> {
    match event {
        Event::SessionRevoked(e) if e.session_id == session => Some((CLOSE_REVOKED, "session revoked")),
        Event::SessionTokenRevoked(e) if e.jti == jti => Some((CLOSE_REVOKED, "token revoked")),
        Event::UserDeleted(_) => Some((CLOSE_REVOKED, "user deleted")),
        Event::AccountLocked(_) => Some((CLOSE_REVOKED, "account locked")),
        _ => None,
    }
}

async fn connection(mut socket: WebSocket, hub: Arc<Hub>, user: Uuid, session: Uuid, jti: String, exp: i64) {
    let (id, mut rx) = hub.register(user);
    let _active = crate::telemetry::Active::start("rest", "websocket");
    let hello = serde_json::json!({"type": "hello", "user_id": user, "session_id": session}).to_string();
    let mut open = socket.send(Message::Text(hello.into())).await.is_ok();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let expires_in = (exp - chrono::Utc::now().timestamp()).max(0) as u64;
    let expiry = tokio::time::sleep(Duration::from_secs(expires_in));
    tokio::pin!(expiry);
    while open {
        tokio::select! {
            push = rx.recv() => {
                let Some(push) = push else { break };
                if socket.send(Message::Text(push.json.clone().into())).await.is_err() {
                    break;
                }
                if let Some((code, reason)) = push.event.as_ref().and_then(|e| ends(e, session, &jti)) {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
            }
            _ = heartbeat.tick() => open = socket.send(Message::Ping(Vec::new().into())).await.is_ok(),
            _ = &mut expiry => {
                let frame = CloseFrame { code: CLOSE_EXPIRED, reason: "token expired".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                break;
            }
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    hub.unregister(user, id);
}

/// Delivers `notification.push.send` messages to the user's WebSockets on this
/// replica: each replica has its own queue (server-named, exclusive), so every
/// replica sees every push and delivers it to the connections it holds.
pub async fn consume_pushes(amqp_url: String, hub: Arc<Hub>) {
    use lapin::options::*;
    use lapin::types::FieldTable;
    loop {
        let run = async {
            let conn = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
            ch.exchange_declare(
                crate::relay::message::EXCHANGE.into(),
                lapin::ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
            let own = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
            let queue = ch.queue_declare("".into(), own, FieldTable::default()).await?;
            let name = queue.name().clone();
            ch.queue_bind(
                name.clone(),
                crate::relay::message::EXCHANGE.into(),
                "notification.push.send".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
            let mut deliveries = ch.basic_consume(name, "websocket-push".into(), opts, FieldTable::default()).await?;
            use futures::StreamExt;
            while let Some(delivery) = deliveries.next().await {
                let delivery = delivery?;
                let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&delivery.data) else { continue };
                let Some(user) = msg["data"]["user_id"].as_str().and_then(|u| Uuid::parse_str(u).ok()) else {
                    continue;
                };
                let json = serde_json::json!({
                    "type": "notification",
                    "message_id": msg["message_id"],
                    "title": msg["data"]["title"],
                    "body": msg["data"]["body"],
                    "data": msg["data"]["data"],
                })
                .to_string();
                hub.deliver(user, Arc::new(Push { json, event: None }));
            }
            Ok::<_, lapin::Error>(())
        };
        if let Err(e) = run.await {
            tracing::warn!(error = %e, "websocket push consumer lost the broker; reconnecting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
