//! The relay against the machine's real RabbitMQ: the seed's envelope and
//! properties, log order, and nothing lost across a relay `kill -9`, a broker
//! dropping every connection, and a broker restart (`rabbitmqctl stop_app` /
//! `start_app`; `.config/nextest.toml` runs the RabbitMQ tests one at a time).

use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use perfect21_domain::{IdentityConfig, LoginRequest, Registration, RequestContext};
use serde_json::Value;
use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::Duration;

mod common;
use common::{amqp_url, DataDir};

struct Received {
    routing_key: String,
    priority: Option<u8>,
    delivery_mode: Option<u8>,
    message_id: String,
    headers: HashMap<String, String>,
    body: Value,
}

/// A queue bound to every routing key, that outlives our connection.
struct Tap {
    queue: String,
}

impl Tap {
    async fn declare() -> Tap {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("RabbitMQ reachable");
        let ch = conn.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare("perfect21.events".into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .unwrap();
        let queue = format!("relay-test-{}", uuid::Uuid::new_v4().simple());
        // No x-max-priority: a priority queue would deliver a failed login (priority 5) before
        // earlier events on purpose. The seed's queues are plain, so they keep log order.
        // Durable, so that it (and the persistent messages in it) survive the broker restart.
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(queue.as_str().into(), durable, FieldTable::default()).await.unwrap();
        ch.queue_bind(
            queue.as_str().into(),
            "perfect21.events".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        conn.close(200, "bound".into()).await.unwrap();
        Tap { queue }
    }

    /// Reads until `want(received)` is true (reconnecting if the broker drops us).
    async fn read_until(&self, seen: &mut Vec<Received>, want: impl Fn(&[Received]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !want(seen) {
            assert!(tokio::time::Instant::now() < deadline, "messages did not arrive ({} so far)", seen.len());
            let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let ch = conn.create_channel().await.unwrap();
            let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
            let mut consumer =
                ch.basic_consume(self.queue.as_str().into(), "tap".into(), opts, FieldTable::default()).await.unwrap();
            while !want(seen) {
                match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                    Ok(Some(Ok(d))) => {
                        let p = &d.properties;
                        let headers = p
                            .headers()
                            .as_ref()
                            .map(|h| {
                                h.inner()
                                    .iter()
                                    .filter_map(|(k, v)| match v {
                                        AMQPValue::LongString(s) => Some((k.to_string(), s.to_string())),
                                        _ => None,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        seen.push(Received {
                            routing_key: d.routing_key.to_string(),
                            priority: *p.priority(),
                            delivery_mode: *p.delivery_mode(),
                            message_id: p.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default(),
                            headers,
                            body: serde_json::from_slice(&d.data).unwrap(),
                        });
                    }
                    _ => break, // dropped or idle: reconnect and look again
                }
            }
            let _ = conn.close(200, "done".into()).await;
        }
    }

    /// Reads whatever arrives within `window` (nothing more is expected).
    async fn read_for(&self, seen: &mut Vec<Received>, window: Duration) {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let mut consumer =
            ch.basic_consume(self.queue.as_str().into(), "tap".into(), opts, FieldTable::default()).await.unwrap();
        while let Ok(Some(Ok(d))) = tokio::time::timeout(window, consumer.next()).await {
            seen.push(Received {
                routing_key: d.routing_key.to_string(),
                priority: *d.properties.priority(),
                delivery_mode: *d.properties.delivery_mode(),
                message_id: d.properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default(),
                headers: HashMap::new(),
                body: serde_json::from_slice(&d.data).unwrap(),
            });
        }
        let _ = conn.close(200, "done".into()).await;
    }

    async fn delete(self) {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let _ = ch.queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
}

/// A relay process, killed (SIGKILL) when dropped.
struct Relay(Child);

impl Relay {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_relay(data: &str) -> Relay {
    Relay(
        Command::new(env!("CARGO_BIN_EXE_perfect21"))
            .args(["relay", "--data-dir", data, "--amqp-url", &amqp_url(), "--insecure-fast-passwords"])
            .spawn()
            .expect("start the relay"),
    )
}

/// Distinct positions received, in first-arrival order.
fn sorted(mut positions: Vec<u64>) -> Vec<u64> {
    positions.sort_unstable();
    positions
}

fn positions(seen: &[Received]) -> Vec<u64> {
    let mut ids = std::collections::HashSet::new();
    seen.iter()
        .filter(|r| ids.insert(r.message_id.clone()))
        .map(|r| r.body["metadata"]["position"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_the_seed_envelope_in_order_and_loses_nothing() {
    let world = DataDir::new(IdentityConfig::default()).await;
    let (data, store, id, dir) = (world.path(), world.store.clone(), &world.id, &world.dir);
    let ctx = RequestContext {
        client_ip: Some("198.51.100.7".into()),
        user_agent: Some("relay-test".into()),
        ..RequestContext::service("auth")
    };

    let tap = Tap::declare().await;
    let mut relay = start_relay(&data);
    let reg = id
        .register(
            &ctx,
            Registration {
                email: "relay@example.com".into(),
                username: "relayed".into(),
                password: "password-123".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let login =
        |password: &str| LoginRequest { identifier: "relayed".into(), password: password.into(), ..Default::default() };
    let _ = id.login(&ctx, login("wrong-password")).await;
    id.login(&ctx, login("password-123")).await.unwrap();
    let head = store.head_position().await.unwrap();
    let mut seen = Vec::new();
    tap.read_until(&mut seen, |s| positions(s).len() as u64 >= head).await;

    let registered = seen.iter().find(|r| r.routing_key == "user.events.registered").expect("registration relayed");
    let b = &registered.body;
    assert_eq!(b["message_type"], "user.registered");
    assert_eq!(b["user_id"], reg.user_id.to_string());
    assert_eq!(b["data"]["email"], "relay@example.com");
    assert_eq!(b["data"]["verification_token"], reg.verification_token, "derived again by the relay");
    assert_eq!(b["data"]["registration_ip"], "198.51.100.7");
    assert_eq!(registered.message_id, b["message_id"].as_str().unwrap());
    assert_eq!(registered.delivery_mode, Some(2), "persistent");
    assert_eq!(registered.headers["message_type"], "user.registered");
    assert_eq!(registered.headers["source_service"], "auth");
    assert_eq!(registered.headers["user_id"], reg.user_id.to_string());
    let failed = seen
        .iter()
        .find(|r| r.routing_key == "user.events.login" && r.body["data"]["login_successful"] == false)
        .unwrap();
    assert_eq!(failed.priority, Some(5));
    assert_eq!(failed.body["data"]["email"], "relay@example.com");
    let events = store.read_all(1, 1000).await.unwrap();
    for r in &seen {
        let p = r.body["metadata"]["position"].as_u64().unwrap() as usize;
        assert_eq!(r.message_id, events[p - 1].event_id.to_string(), "message_id is the event id");
    }
    assert_eq!(positions(&seen), (1..=head).collect::<Vec<_>>(), "log order");

    // kill -9 the relay mid-stream, while a writer keeps appending; a new one resumes from
    // the checkpoint: nothing lost (duplicates allowed), in order, and the checkpoint reaches the head.
    let before = head;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..400 {
                let user_id = uuid::Uuid::now_v7();
                let e = perfect21_events::Event::UserEmailVerified(perfect21_events::catalog::UserEmailVerified {
                    user_id,
                });
                let data = perfect21_events::EventData::new(&e, perfect21_events::Metadata::default()).unwrap();
                let s = perfect21_events::StreamId::of("user", user_id).unwrap();
                store.append(&s, perfect21_events::ExpectedVersion::Any, vec![data]).await.unwrap();
                // Paced, so that the relay dies with events still coming.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tap.read_until(&mut seen, |s| positions(s).len() as u64 >= before + 20).await;
    relay.kill();
    assert!(!writer.is_finished(), "the writer was still appending when the relay died");
    writer.await.unwrap();
    let mut relay = start_relay(&data);
    let head = store.head_position().await.unwrap();
    assert_eq!(head, before + 400);
    tap.read_until(&mut seen, |s| positions(s).len() as u64 >= head).await;
    // At least once: the new relay republishes from the checkpoint, so what the dead one
    // published after it arrives again (and, at the tap, may interleave with the resumed stream).
    assert_eq!(sorted(positions(&seen)), (1..=head).collect::<Vec<_>>(), "nothing lost across a kill -9 mid-stream");
    let checkpoint_file = dir.path().join("relay.checkpoint");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let at: u64 = std::fs::read_to_string(&checkpoint_file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        if at == head {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the checkpoint stopped at {at}, the head is {head}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The broker drops every connection: the relay reconnects and goes on.
    let closed = Command::new("rabbitmqctl").args(["close_all_connections", "relay test"]).output().unwrap();
    assert!(closed.status.success(), "{}", String::from_utf8_lossy(&closed.stderr));
    for _ in 0..3 {
        id.login(&ctx, login("password-123")).await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    tap.read_until(&mut seen, |s| positions(s).len() as u64 >= head).await;
    assert_eq!(sorted(positions(&seen)), (1..=head).collect::<Vec<_>>());
    // A real broker restart.
    let stop = Command::new("rabbitmqctl").arg("stop_app").output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    id.login(&ctx, login("password-123")).await.unwrap();
    let start = Command::new("rabbitmqctl").arg("start_app").output().unwrap();
    assert!(start.status.success(), "{}", String::from_utf8_lossy(&start.stderr));
    // Fully up (not just accepting connections) before this or the next test goes on.
    let up = Command::new("rabbitmqctl").args(["await_startup", "--timeout", "60"]).output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    id.login(&ctx, login("password-123")).await.unwrap();
    let head = store.head_position().await.unwrap();
    tap.read_until(&mut seen, |s| positions(s).len() as u64 >= head).await;
    assert_eq!(sorted(positions(&seen)), (1..=head).collect::<Vec<_>>(), "nothing lost across a broker restart");

    let checkpoint: u64 = std::fs::read_to_string(dir.path().join("relay.checkpoint")).unwrap().trim().parse().unwrap();
    assert!(checkpoint <= head);

    relay.kill();
    tap.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_aio_pika_consumer_accepts_the_envelope_as_the_seeds_pydantic_models() {
    let world = DataDir::new(IdentityConfig { lockout_threshold: 2, ..Default::default() }).await;
    let (data, id) = (world.path(), &world.id);
    let ctx = RequestContext {
        client_ip: Some("198.51.100.8".into()),
        user_agent: Some("py".into()),
        ..RequestContext::service("auth")
    };

    let queue = format!("python-seed-{}", uuid::Uuid::new_v4().simple());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/seed_consumer.py");
    let mut python = Command::new("python3")
        .args([script, &amqp_url(), &queue, "7"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with aio-pika and pydantic");
    let mut out = std::io::BufReader::new(python.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let _relay = start_relay(&data);

    let reg = id
        .register(
            &ctx,
            Registration {
                email: "py@example.com".into(),
                username: "pyuser".into(),
                password: "password-123".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    id.verify_email(&ctx, &reg.verification_token).await.unwrap();
    for _ in 0..2 {
        let _ = id
            .login(
                &ctx,
                LoginRequest { identifier: "pyuser".into(), password: "wrong-password".into(), ..Default::default() },
            )
            .await;
    }
    // 7 messages on the bound keys: registered, email_verified, status_changed, 2 × login, locked, alert.
    let status = tokio::task::spawn_blocking(move || python.wait()).await.unwrap().unwrap();
    let mut validated = String::new();
    std::io::BufRead::read_line(&mut out, &mut validated).unwrap();
    assert!(status.success(), "the python consumer refused a message");
    let types: Vec<String> = serde_json::from_str(validated.trim()).unwrap();
    assert_eq!(types, ["security.account_locked", "security.alert", "user.login", "user.registered"]);
}

/// Two relays on one log: one publishes (every message once), the other stands by;
/// `kill -9` the active one and the standby takes the lease over and goes on from the
/// checkpoint: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_over_when_the_active_one_is_killed() {
    let world = DataDir::new(IdentityConfig::default()).await;
    let (data, store) = (world.path(), world.store.clone());
    let tap = Tap::declare().await;
    let mut first = start_relay(&data);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = start_relay(&data);
    let mut ours = std::collections::HashSet::new();
    let append = |n: usize, ours: &mut std::collections::HashSet<String>| {
        let users: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
        ours.extend(users.iter().map(|u| u.to_string()));
        let store = store.clone();
        async move {
            for user_id in users {
                let e = perfect21_events::Event::UserEmailVerified(perfect21_events::catalog::UserEmailVerified {
                    user_id,
                });
                let data = perfect21_events::EventData::new(&e, perfect21_events::Metadata::default()).unwrap();
                let s = perfect21_events::StreamId::of("user", user_id).unwrap();
                store.append(&s, perfect21_events::ExpectedVersion::Any, vec![data]).await.unwrap();
            }
        }
    };
    let mine = |seen: &[Received], ours: &std::collections::HashSet<String>| -> Vec<Received> {
        seen.iter()
            .filter(|r| r.body["user_id"].as_str().is_some_and(|u| ours.contains(u)))
            .map(|r| Received {
                routing_key: r.routing_key.clone(),
                priority: r.priority,
                delivery_mode: r.delivery_mode,
                message_id: r.message_id.clone(),
                headers: r.headers.clone(),
                body: r.body.clone(),
            })
            .collect()
    };
    append(50, &mut ours).await;
    let mut seen = Vec::new();
    tap.read_until(&mut seen, |s| positions(&mine(s, &ours)).len() >= 50).await;
    // Give a second publisher (there must be none) time to show.
    tap.read_for(&mut seen, Duration::from_secs(2)).await;
    let received = mine(&seen, &ours);
    assert_eq!(received.len(), 50, "one relay publishes; the other stands by (no message twice)");

    first.kill();
    append(50, &mut ours).await;
    let head = store.head_position().await.unwrap();
    tap.read_until(&mut seen, |s| positions(&mine(s, &ours)).len() as u64 >= head).await;
    assert_eq!(sorted(positions(&mine(&seen, &ours))), (1..=head).collect::<Vec<_>>(), "the standby went on");
    tap.delete().await;
}

/// Two relays on one PostgreSQL log, whose lease is a session advisory lock. When the
/// session holding it ends under the active relay (a database restart, a network
/// failure; here `pg_terminate_backend`), the standby takes the lease and the relay that
/// lost it stops publishing: every later message goes out once, not once per relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_lease_session_ends_stops_publishing() {
    use perfect21_events::store::{PostgresConfig, PostgresStore};
    use perfect21_events::EventStore;
    let world = DataDir::new(IdentityConfig::default()).await;
    let base = std::env::var("PERFECT21_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let schema = format!("p21t_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::connect(PostgresConfig::new(&base).with_schema(&schema)).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let tap = Tap::declare().await;
    let relay = |data: &str| {
        Relay(
            Command::new(env!("CARGO_BIN_EXE_perfect21"))
                .args(["relay", "--data-dir", data, "--store", &url, "--amqp-url", &amqp_url()])
                .args(["--insecure-fast-passwords"])
                .spawn()
                .expect("start the relay"),
        )
    };
    let _first = relay(&world.path());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = relay(&world.path());
    let append = |n: usize| {
        let users: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let store = &store;
        let appended = users.clone();
        async move {
            for user in appended {
                let user_id = user.parse().unwrap();
                let e = perfect21_events::Event::UserEmailVerified(perfect21_events::catalog::UserEmailVerified {
                    user_id,
                });
                let data = perfect21_events::EventData::new(&e, perfect21_events::Metadata::default()).unwrap();
                let s = perfect21_events::StreamId::of("user", user_id).unwrap();
                store.append(&s, perfect21_events::ExpectedVersion::Any, vec![data]).await.unwrap();
            }
            users.into_iter().collect::<std::collections::HashSet<_>>()
        }
    };
    let of = |seen: &[Received], users: &std::collections::HashSet<String>| -> Vec<String> {
        seen.iter()
            .filter(|r| r.body["user_id"].as_str().is_some_and(|u| users.contains(u)))
            .map(|r| r.message_id.clone())
            .collect()
    };
    let before = append(20).await;
    let mut seen = Vec::new();
    tap.read_until(&mut seen, |s| of(s, &before).len() >= 20).await;

    let key = format!("perfect21.lease.{schema}.relay-amqp");
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0)",
    )
    .bind(&key)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(ended, [true], "the active relay's lease session, and only it, was ended");
    // The one that lost it notices within a second, the standby takes it within another.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let after = append(30).await;
    let mut seen = Vec::new();
    tap.read_until(&mut seen, |s| of(s, &after).iter().collect::<std::collections::HashSet<_>>().len() >= 30).await;
    // Give a second publisher (there must be none now) time to show.
    tap.read_for(&mut seen, Duration::from_secs(2)).await;
    let mut ids = of(&seen, &after);
    ids.sort();
    let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
    assert_eq!((ids.len(), distinct), (30, 30), "every message after the takeover went out once");
    tap.delete().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
}
