//! WebSocket push: 10k connections, latency from commit to the client, against
//! the ping→pong round trip of the same connections in the same run.
//!
//! The clients run in a child process (`perfect21 bench-ws-clients`), so that
//! neither side needs more than 10k descriptors. Each pushed event carries its
//! send time (wall clock, same machine), so the child measures latency itself.

use super::{percentile, Measurement, Scratch};
use crate::server::app::App;
use crate::server::hub::Hub;
use crate::server::rest::{router, RestShared};
use crate::server::tokens::KeySet;
use futures::{SinkExt, StreamExt};
use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::{Identity, IdentityConfig, LiveModels, LoginRequest, Registration, RequestContext};
use perfect21_events::store::{SqliteConfig, SqliteStore};
use perfect21_events::EventStore;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

const USERS: usize = 1000;
const PER_USER: usize = 10;

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

pub async fn websocket(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    websocket_with(scratch, duration, PER_USER).await
}

/// `USERS` users with `per_user` connections each.
pub async fn websocket_with(
    scratch: &Scratch,
    duration: Duration,
    per_user: usize,
) -> anyhow::Result<Vec<Measurement>> {
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(SqliteConfig::new(scratch.file("ws.db"))).await?);
    let live = LiveModels::start(store.clone());
    // Password hashing is not what this measures.
    let config =
        IdentityConfig { password_cost: PasswordCost::TEST, allow_unverified_login: true, ..Default::default() };
    let identity = Identity::new(store.clone(), live, SecretBox::random(), config)?;
    let app = App::new(identity.clone(), Arc::new(KeySet::load_or_create(&scratch.file("keys"))?));
    let ctx = RequestContext::service("bench");
    let mut users = Vec::with_capacity(USERS);
    let mut tokens = String::new();
    for i in 0..USERS {
        let reg = Registration {
            email: format!("ws{i}@example.com"),
            username: format!("ws{i}"),
            password: "password-123".into(),
            ..Default::default()
        };
        let user = identity.register(&ctx, reg).await?.user_id;
        let grant = identity
            .login(
                &ctx,
                LoginRequest { identifier: format!("ws{i}"), password: "password-123".into(), ..Default::default() },
            )
            .await?;
        tokens.push_str(&app.access_token(&grant)?);
        tokens.push('\n');
        users.push(user);
    }
    let hub = Hub::start(store.clone()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = router(RestShared { app, hub, relay: None, chain: None, openapi: Default::default() }, None)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });

    let tokens_file = scratch.file("tokens.txt");
    std::fs::write(&tokens_file, tokens)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["bench-ws-clients", "--url", &format!("ws://{addr}/api/v1/ws"), "--per-token", &per_user.to_string()])
        .args(["--duration", &duration.as_secs_f64().to_string(), "--tokens"])
        .arg(&tokens_file)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let ready = tokio::task::spawn_blocking(move || {
        let first = lines.next();
        (first, lines)
    })
    .await?;
    let (first, lines) = ready;
    anyhow::ensure!(first.transpose()?.as_deref() == Some("ready"), "the client process did not get ready");
    // Let the last handshakes settle before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Push: one event per user in turn, each stamped with its send time.
    let start = Instant::now();
    let mut pushes = 0usize;
    // Send stamp → when the append was acknowledged (durable), to measure from the commit.
    let mut committed = std::collections::HashMap::new();
    while start.elapsed() < duration {
        let user = users[pushes % USERS];
        let stamp = now_micros();
        identity.record_login(&ctx, user, false, &format!("bench-{stamp}")).await?;
        committed.insert(stamp, now_micros());
        pushes += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let summary = tokio::task::spawn_blocking(move || lines.map_while(Result::ok).last()).await?;
    child.wait()?;
    let summary: serde_json::Value =
        serde_json::from_str(&summary.ok_or_else(|| anyhow::anyhow!("no client summary"))?)?;
    let f = |k: &str| summary[k].as_f64().unwrap_or(0.0);
    eprintln!(
        "{} connections; {pushes} events pushed, {} deliveries received; {} pings",
        summary["connections"], summary["received"], summary["pings"]
    );
    let mut from_commit: Vec<f64> = summary["deliveries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let (sent, received) = (d[0].as_i64()?, d[1].as_i64()?);
            Some((received - committed.get(&sent)?).max(0) as f64)
        })
        .collect();
    from_commit.sort_by(f64::total_cmp);
    Ok(vec![
        Measurement::latency("websocket", "push_p99", percentile(&from_commit, 0.99), f("ping_p99_us"), "us"),
        Measurement::latency("websocket", "push_p50", percentile(&from_commit, 0.5), f("ping_p50_us"), "us"),
        // The same deliveries timed from before the append, so with the durable write itself.
        Measurement::latency("websocket", "push_with_append_p99", f("push_p99_us"), f("ping_p99_us"), "us"),
        Measurement::latency("websocket", "push_with_append_p50", f("push_p50_us"), f("ping_p50_us"), "us"),
    ])
}

/// The child process: opens the connections, prints `ready`, measures, prints a JSON summary.
#[derive(clap::Args)]
pub struct ClientArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    tokens: std::path::PathBuf,
    #[arg(long)]
    per_token: usize,
    #[arg(long)]
    duration: f64,
}

pub async fn clients(args: ClientArgs) -> anyhow::Result<()> {
    let tokens: Vec<String> = std::fs::read_to_string(&args.tokens)?.lines().map(String::from).collect();
    // (push?, sent at, received at), wall-clock microseconds.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, i64, i64)>();
    let mut sockets = Vec::new();
    let connect = futures::stream::iter(tokens.iter().flat_map(|t| std::iter::repeat_n(t.clone(), args.per_token)))
        .map(|t| {
            let url = format!("{}?access_token={t}", args.url);
            async move { tokio_tungstenite::connect_async(url).await }
        })
        .buffer_unordered(256);
    tokio::pin!(connect);
    while let Some(ws) = connect.next().await {
        sockets.push(ws?.0);
    }
    let connections = sockets.len();
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration) + Duration::from_millis(1500);
    for (i, ws) in sockets.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            // A hundred of the connections also measure ping → pong.
            let pinger = i % (connections / 100).max(1) == 0;
            // Start after the settling second the parent waits too.
            let first = tokio::time::Instant::now() + Duration::from_secs(1);
            let mut tick = tokio::time::interval_at(first, Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick(), if pinger => {
                        let stamp = now_micros().to_le_bytes().to_vec();
                        if sink.send(Message::Ping(stamp.into())).await.is_err() { return; }
                    }
                    _ = tokio::time::sleep_until(deadline.into()) => return,
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Text(t))) => {
                            if let Some(at) = t.split("bench-").nth(1).and_then(|s| s.split('"').next()).and_then(|s| s.parse::<i64>().ok()) {
                                let _ = tx.send((true, at, now_micros()));
                            }
                        }
                        Some(Ok(Message::Pong(p))) if p.len() == 8 => {
                            let at = i64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
                            let _ = tx.send((false, at, now_micros()));
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                }
            }
        });
    }
    drop(tx);
    println!("ready");
    std::io::stdout().flush()?;
    let (mut pushes, mut pings, mut deliveries) = (Vec::new(), Vec::new(), Vec::new());
    while let Some((push, sent, received)) = rx.recv().await {
        let us = (received - sent).max(0) as f64;
        if push {
            pushes.push(us);
            deliveries.push([sent, received]);
        } else {
            pings.push(us)
        }
    }
    pushes.sort_by(f64::total_cmp);
    pings.sort_by(f64::total_cmp);
    let summary = serde_json::json!({
        "connections": connections,
        "received": pushes.len(),
        "pings": pings.len(),
        "push_p50_us": percentile(&pushes, 0.5),
        "push_p99_us": percentile(&pushes, 0.99),
        "ping_p50_us": percentile(&pings, 0.5),
        "ping_p99_us": percentile(&pings, 0.99),
        "deliveries": deliveries,
    });
    println!("{summary}");
    Ok(())
}
