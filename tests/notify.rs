//! The notification service end to end: identity commands → log → relay →
//! RabbitMQ → `perfect21 notify` → a real SMTP server process (aiosmtpd) and an
//! HTTP SMS webhook, all over loopback. Also: delayed delivery, no double
//! sends on redelivery, and the dead-letter queue.

use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use perfect21_domain::{IdentityConfig, LoginRequest, Registration, RequestContext};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{amqp_url, DataDir, Killed};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Undoes quoted-printable (soft line breaks and =XX escapes).
fn unquote(text: &str) -> String {
    let joined = text.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'=', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mails the SMTP sink received, bodies decoded.
fn mails(maildir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(entries) = std::fs::read_dir(maildir.join(sub)) {
            for e in entries.flatten() {
                out.push(unquote(&std::fs::read_to_string(e.path()).unwrap_or_default()));
            }
        }
    }
    out
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deliveries the notification service has received so far (its own metric).
async fn deliveries_received(http_addr: &str) -> u64 {
    let text = reqwest::get(format!("http://{http_addr}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("perfect21_notifications_total{") && l.contains("outcome=\"received\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

async fn publish(ch: &lapin::Channel, routing_key: &str, msg: &Value) {
    ch.basic_publish(
        "perfect21.events".into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        msg.to_string().as_bytes(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_smtp_and_webhooks_once_on_time_or_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let service = format!("notify-test-{}", uuid::Uuid::new_v4().simple());

    // A real SMTP server process.
    let maildir = dir.path().join("maildir");
    let smtp_port = free_port();
    let _smtp = Killed(
        Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{smtp_port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .spawn()
            .expect("aiosmtpd (pip install aiosmtpd)"),
    );
    // An SMS webhook.
    let sms: Arc<Mutex<Vec<Value>>> = Arc::default();
    let received = sms.clone();
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let received = received.clone();
            async move {
                received.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(hook, app).await });

    // The log, the relay, and the notification service.
    let world = DataDir::new(IdentityConfig { lockout_threshold: 2, ..Default::default() }).await;
    let (data, id) = (world.path(), &world.id);
    let exe = env!("CARGO_BIN_EXE_perfect21");
    let _relay = Killed(
        Command::new(exe)
            .args(["relay", "--data-dir", &data, "--amqp-url", &amqp_url(), "--insecure-fast-passwords"])
            .spawn()
            .unwrap(),
    );
    // Started from an empty directory, with no templates around: the built-ins serve.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut notify = Command::new(exe)
        .current_dir(elsewhere.path())
        .args(["notify", "--amqp-url", &amqp_url(), "--service-name", &service])
        .args([
            "--smtp-url",
            &format!("smtp://127.0.0.1:{smtp_port}"),
            "--sms-webhook",
            &format!("http://{hook_addr}/sms"),
        ])
        .args([
            "--data-dir",
            &format!("{data}/notify"),
            "--http-addr",
            "127.0.0.1:0",
            "--public-url",
            "https://id.example.com",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first = std::io::BufRead::lines(std::io::BufReader::new(notify.stdout.take().unwrap())).next();
    let notify_http = first.expect("notify printed its address").unwrap().replace("perfect21 notify listening on ", "");
    let _notify = Killed(notify);

    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    // Wait for the service's queues (messages published before they exist would go nowhere).
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = conn.create_channel().await.unwrap();
        let q = format!("{service}.notification_requests");
        if probe.queue_declare(q.as_str().into(), passive, FieldTable::default()).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the notification queues never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Registration → welcome email with the verification link.
    let ctx = RequestContext { client_ip: Some("203.0.113.1".into()), ..RequestContext::service("auth") };
    let reg = id
        .register(
            &ctx,
            Registration {
                email: "ada@example.com".into(),
                username: "ada".into(),
                password: "password-123".into(),
                first_name: Some("Ada".into()),
                phone_number: Some("+15555550123".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let welcome =
        wait_for("the welcome email", || mails(&maildir).into_iter().find(|m| m.contains("Welcome to perfect21")))
            .await;
    assert!(welcome.contains("To: ada@example.com"));
    assert!(welcome.contains("Hello Ada"));
    assert!(welcome.contains("expires within 24 hours"), "{welcome}");

    // Follow the link of the email as its reader would: the page on a running server, its
    // button, then a login.
    let link = welcome
        .split_whitespace()
        .find(|w| w.starts_with("https://id.example.com/verify-email?token="))
        .expect("a verification link")
        .trim_start_matches("https://id.example.com")
        .to_string();
    let serve = common::serve::serve_on(&data, &[]);
    let web = reqwest::Client::new();
    let page = web.get(format!("{}{link}", serve.http)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Confirm my email address"), "{page}");
    let token = link.trim_start_matches("/verify-email?token=");
    let done = web.post(format!("{}/verify-email", serve.http)).form(&[("token", token)]).send().await.unwrap();
    assert!(done.text().await.unwrap().contains("Your email address is verified"));
    let login = web
        .post(format!("{}/auth/login", serve.api()))
        .json(&json!({"identifier": "ada", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 200, "{}", login.text().await.unwrap());
    drop(serve);
    assert!(welcome.contains(&format!("https://id.example.com/verify-email?token={}", reg.verification_token)));

    // Registering with the same address answers like a registration, and tells the owner.
    let stranger = RequestContext { client_ip: Some("198.51.100.66".into()), ..RequestContext::service("auth") };
    let again = id
        .register(
            &stranger,
            Registration {
                email: "ADA@example.com".into(),
                username: "not_ada".into(),
                password: "password-456".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(again.user_id, reg.user_id);
    let attempt = wait_for("the registration-attempt email", || {
        mails(&maildir).into_iter().find(|m| m.contains("Someone tried to create an account"))
    })
    .await;
    assert!(attempt.contains("To: ada@example.com"));
    assert!(attempt.contains("198.51.100.66"), "{attempt}");

    // Two failed logins → a login notice each, then a lock with a high alert: email and SMS.
    for _ in 0..2 {
        let _ = id
            .login(
                &ctx,
                LoginRequest { identifier: "ada".into(), password: "wrong-password".into(), ..Default::default() },
            )
            .await;
    }
    wait_for("login notices", || {
        (mails(&maildir).iter().filter(|m| m.contains("A failed sign-in")).count() == 2).then_some(())
    })
    .await;
    let alert =
        wait_for("the alert email", || mails(&maildir).into_iter().find(|m| m.contains("Security alert (high)"))).await;
    assert!(alert.contains("What we recommend"));
    let text = wait_for("the alert SMS", || sms.lock().unwrap().first().cloned()).await;
    assert_eq!(text["to"], "+15555550123");
    assert!(text["message"].as_str().unwrap().contains("account_locked"));

    // A template email, delayed by send_at; sent once although delivered twice.
    let message_id = uuid::Uuid::now_v7().to_string();
    let send_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let request = json!({
        "message_id": message_id, "message_type": "notification.email.send",
        "timestamp": chrono::Utc::now().to_rfc3339(), "source_service": "test", "data": {
            "recipient": "grace@example.com", "template_name": "notice", "subject": "Scheduled maintenance",
            "template_data": {"body": "The service pauses at midnight."}, "send_at": send_at,
        }
    });
    let received_before = deliveries_received(&notify_http).await;
    let published = Instant::now();
    publish(&ch, "notification.email.send", &request).await;
    publish(&ch, "notification.email.send", &request).await;
    let mail =
        wait_for("the scheduled email", || mails(&maildir).into_iter().find(|m| m.contains("Scheduled maintenance")))
            .await;
    assert!(published.elapsed() >= Duration::from_millis(1500), "sent before send_at");
    assert!(mail.contains("The service pauses at midnight."));
    // Both deliveries reached the service (each counted as received) before the one
    // scheduled message went out: the duplicate was absorbed, not merely late.
    let mut both = false;
    for _ in 0..300 {
        if deliveries_received(&notify_http).await >= received_before + 2 {
            both = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(both, "the second delivery never reached the notification service");
    assert_eq!(mails(&maildir).iter().filter(|m| m.contains("Scheduled maintenance")).count(), 1, "never sent twice");

    // A push with no push webhook configured keeps failing → the dead-letter queue.
    let push = json!({
        "message_id": uuid::Uuid::now_v7().to_string(), "message_type": "notification.push.send",
        "timestamp": chrono::Utc::now().to_rfc3339(), "source_service": "test",
        "data": {"user_id": reg.user_id, "title": "Hi", "body": "there"}
    });
    publish(&ch, "notification.push.send", &push).await;
    let dlq = format!("{service}.dead_letter");
    let mut consumer = ch
        .basic_consume(
            dlq.as_str().into(),
            "dlq-check".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let dead =
        tokio::time::timeout(Duration::from_secs(30), consumer.next()).await.expect("dead-lettered").unwrap().unwrap();
    let body: Value = serde_json::from_slice(&dead.data).unwrap();
    assert_eq!(body["message_id"], push["message_id"]);
    let error = dead
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-error").cloned())
        .and_then(|v| match v {
            lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        })
        .expect("x-error header");
    assert!(error.contains("no push webhook configured") && error.contains("after 3 attempts"), "{error}");

    for suffix in ["user_events", "security_events", "notification_requests", "dead_letter"] {
        let _ = ch.queue_delete(format!("{service}.{suffix}").as_str().into(), QueueDeleteOptions::default()).await;
    }
    let _ = ch.exchange_delete(format!("{service}.dlx").as_str().into(), ExchangeDeleteOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_notifications_reach_the_users_websockets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    // An operator's service account, to read /status.
    common::serve::bootstrap(&data);
    let (ops_id, ops_secret) = common::serve::create_service_account(&data, "ops", &["admin"]);
    let exe = env!("CARGO_BIN_EXE_perfect21");
    let mut child = Command::new(exe)
        .args(["serve", "--data-dir", &data, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--dev", "--insecure-fast-passwords", "--amqp-url", &amqp_url()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let _serve = Killed(child);
    let _grpc = lines.next().unwrap().unwrap();
    let http = lines.next().unwrap().unwrap().replace("perfect21 HTTP listening on ", "");
    let client = reqwest::Client::new();
    let api = format!("http://{http}/api/v1");
    let reg: Value = client
        .post(format!("{api}/auth/register"))
        .json(&json!({"email": "push@example.com", "username": "pushed", "password": "password-123"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verified = client
        .post(format!("{api}/auth/verify-email"))
        .json(&json!({"token": reg["verification_token"]}))
        .send()
        .await
        .unwrap();
    assert!(verified.status().is_success());
    let login: Value = client
        .post(format!("{api}/auth/login"))
        .json(&json!({"identifier": "pushed", "password": "password-123"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{http}/api/v1/ws?access_token={token}")).await.unwrap();
    ws.next().await.unwrap().unwrap(); // hello

    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        assert!(Instant::now() < deadline, "no push reached the WebSocket");
        // Until the server's push queue is bound, a push goes nowhere: send again.
        let push = json!({
            "message_id": uuid::Uuid::now_v7().to_string(), "message_type": "notification.push.send",
            "timestamp": chrono::Utc::now().to_rfc3339(), "source_service": "test",
            "data": {"user_id": reg["user_id"], "title": "Parcel", "body": "Your parcel is on its way"}
        });
        publish(&ch, "notification.push.send", &push).await;
        let next = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(Ok(msg)) = ws.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                    if t.contains("\"notification\"") {
                        return Some(t.to_string());
                    }
                }
            }
            None
        })
        .await;
        if let Ok(Some(text)) = next {
            break text;
        }
    };
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["title"], "Parcel");
    assert_eq!(v["body"], "Your parcel is on its way");

    // The relay inside serve reports its progress (to a caller holding perfect21.status:read).
    let ops = common::serve::client_token(&client, &format!("http://{http}"), &ops_id, &ops_secret).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: Value =
            client.get(format!("http://{http}/status")).bearer_auth(&ops).send().await.unwrap().json().await.unwrap();
        if status["relay"]["lag"] == 0 && status["relay"]["confirmed"].as_u64() == status["head_position"].as_u64() {
            break;
        }
        assert!(Instant::now() < deadline, "relay never caught up: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
