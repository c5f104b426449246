//! `perfect21 events tail`, `stats` and `verify` against a real log file, and the
//! chain's state in a running server's `/status` and `/metrics`.

mod common;

use perfect21_events::catalog::*;
use perfect21_events::{EventData, ExpectedVersion, Metadata, StreamId};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

fn perfect21(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_perfect21")).args(args).output().expect("run perfect21")
}

async fn seeded(path: &std::path::Path) -> (Uuid, std::sync::Arc<dyn perfect21_events::EventStore>) {
    let store = perfect21_events::store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    let user_id = Uuid::now_v7();
    let meta =
        Metadata { client_ip: Some("198.51.100.4".into()), actor: Some("anonymous".into()), ..Metadata::default() };
    let events = [
        Event::UserEmailVerified(UserEmailVerified { user_id }),
        Event::UserLoginFailed(UserLoginFailed {
            user_id,
            reason: "bad_password".into(),
            failure_count: 1,
            risk_score: 0.5,
        }),
        Event::AccountLocked(AccountLocked {
            user_id,
            reason: "too many failures".into(),
            failed_attempts: 5,
            locked_until: None,
        }),
    ];
    let data = events.iter().map(|e| EventData::new(e, meta.clone()).unwrap()).collect();
    store.append(&StreamId::of("user", user_id).unwrap(), ExpectedVersion::NoStream, data).await.unwrap();
    let mut unknown = EventData::new(&events[0], Metadata::default()).unwrap();
    unknown.schema_version = 42;
    store.append(&StreamId::of("user", user_id).unwrap(), ExpectedVersion::Any, vec![unknown]).await.unwrap();
    (user_id, store)
}

#[tokio::test]
async fn tail_prints_decoded_json_and_stats_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let (user_id, _store) = seeded(&db).await;
    let url = format!("sqlite://{}", db.display());

    let out = perfect21(&["events", "tail", "--store", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["position"], 1);
    assert_eq!(lines[1]["event_type"], "user.login_failed");
    assert_eq!(lines[1]["payload"]["reason"], "bad_password");
    assert_eq!(lines[1]["payload"]["user_id"], user_id.to_string());
    assert_eq!(lines[1]["metadata"]["client_ip"], "198.51.100.4");
    assert_eq!(lines[2]["payload"]["failed_attempts"], 5);
    assert!(lines[3]["payload_error"].as_str().unwrap().contains("unknown event type"), "{}", lines[3]);

    let out = perfect21(&["events", "tail", "--store", &url, "--from", "2", "--type", "security."]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("security.account_locked"));

    let out = perfect21(&["events", "stats", "--store", &url, "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["head_position"], 4);
    assert_eq!(stats["events"], 4);
    assert_eq!(stats["streams"], 1);
    let out = perfect21(&["events", "stats", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(String::from_utf8(out.stdout).unwrap().contains("security.account_locked"));
}

#[tokio::test]
async fn tail_follow_prints_new_events_as_they_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let (user_id, store) = seeded(&db).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_perfect21"))
        .args(["events", "tail", "--follow", "--from", "4", "--store", &format!("sqlite://{}", db.display())])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Lines arrive on a thread, so that a silent child is a failure, not a hang.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(10)).expect("events tail --follow printed nothing in 10 s");
    assert!(next().contains("\"position\":4"));
    let event = Event::UserLoggedOut(UserLoggedOut { user_id, session_id: Uuid::now_v7() });
    store
        .append(
            &StreamId::of("user", user_id).unwrap(),
            ExpectedVersion::Any,
            vec![EventData::new(&event, Metadata::default()).unwrap()],
        )
        .await
        .unwrap();
    let line = next();
    assert!(line.contains("user.logged_out"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bad_store_url_is_a_clear_error() {
    let out = perfect21(&["events", "stats", "--store", "mysql://localhost/x"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("expected sqlite://<file>, postgres://user@host/db or kafka://host:port/topic"), "{err}");
}

#[tokio::test]
async fn a_config_file_sets_defaults_that_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    seeded(&db).await;
    let config = dir.path().join("perfect21.toml");
    std::fs::write(&config, format!("store = \"sqlite://{}\"\nsnapshot_every = 5\n", db.display())).unwrap();
    let out = perfect21(&["events", "stats", "--json", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["events"], 4);
    // A flag wins over the file (an empty log of its own: read-only commands create none).
    let empty = dir.path().join("other.db");
    drop(perfect21_events::store::open(&format!("sqlite://{}", empty.display())).await.unwrap());
    let out = perfect21(&[
        "events",
        "stats",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--store",
        &format!("sqlite://{}", empty.display()),
    ]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["events"], 0);
    // Mistakes are named.
    std::fs::write(&config, "stroe = \"x\"\n").unwrap();
    let out = perfect21(&["events", "stats", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("unknown setting 'stroe'"));
}

#[test]
fn logs_are_json_lines_and_never_carry_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_perfect21"))
        .args(["relay", "--data-dir", dir.path().to_str().unwrap(), "--insecure-fast-passwords"])
        .args(["--amqp-url", "amqp://relay-user:s3cret-pass@127.0.0.1:1/%2f"])
        .env("PERFECT21_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Every line is JSON; the relay complains, without the credentials, that the broker is away.
    let warning = loop {
        let line = lines.next().expect("a warning").unwrap();
        let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(!line.contains("s3cret-pass") && !line.contains("relay-user"), "{line}");
        if log["level"] == "WARN" {
            break log;
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(warning["target"], "perfect21_relay");
}

/// `events verify` proves a served log unedited, a running server reports how far it has
/// verified, and a byte flipped behind the store's back is found at its position by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_an_edit_made_in_the_database_at_its_position() {
    use common::serve::{gateway_token, register, serve_on, start};
    let mut server = start();
    let http = reqwest::Client::new();
    for name in ["chain_a", "chain_b", "chain_c"] {
        register(&http, &server, name, "chain password 1").await;
    }
    let token = gateway_token(&http, &server).await;
    let status = || async {
        let res = http.get(format!("{}/status", server.http)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.json::<serde_json::Value>().await.unwrap()
    };
    // The server walks the log at start-up and follows the head.
    let mut seen = status().await;
    for _ in 0..100 {
        if seen["chain"]["verified_through"] == seen["head_position"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = status().await;
    }
    assert_eq!(seen["chain"]["verified_through"], seen["head_position"], "{seen}");
    assert!(seen["chain"]["broken"].is_null(), "{seen}");
    let head = seen["head_position"].as_u64().unwrap();
    assert!(head > 5, "{seen}");

    let (data, dir) = (server.data.clone(), server.dir.take());
    let (sa_id, sa_secret) = (server.sa_id.clone(), server.sa_secret.clone());
    let out = perfect21(&["events", "verify", "--data-dir", &data, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["ok"].as_bool(), report["through"].as_u64()), (Some(true), Some(head)), "{report}");
    assert_eq!(report["last_link"], seen["chain"]["last_link"], "the CLI and the server agree on the link");
    drop(server);

    // One bit of one event's payload, flipped straight in the file.
    let edited = head - 2;
    let conn = rusqlite::Connection::open(format!("{data}/events.db")).unwrap();
    let mut payload: Vec<u8> =
        conn.query_row("SELECT payload FROM events WHERE position = ?1", [edited as i64], |r| r.get(0)).unwrap();
    payload[0] ^= 0x10;
    conn.execute("UPDATE events SET payload = ?1 WHERE position = ?2", rusqlite::params![payload, edited as i64])
        .unwrap();
    drop(conn);
    let out = perfect21(&["events", "verify", "--data-dir", &data]);
    assert!(!out.status.success(), "an edited log does not verify");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("the chain breaks at position {edited}")), "{err}");
    let out = perfect21(&["events", "verify", "--data-dir", &data, "--from", &(edited + 1).to_string()]);
    assert!(
        out.status.success(),
        "from after the edit, the rest still links: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let server = serve_on(&data, &[]);
    let token = common::serve::client_token(&http, &server.http, &sa_id, &sa_secret).await;
    let mut seen = serde_json::Value::Null;
    for _ in 0..100 {
        let res = http.get(format!("{}/status", server.http)).bearer_auth(&token).send().await.unwrap();
        seen = res.json().await.unwrap();
        if !seen["chain"]["broken"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen["chain"]["broken"]["position"], edited, "{seen}");
    assert_eq!(seen["chain"]["verified_through"], edited - 1, "{seen}");
    let metrics =
        http.get(format!("{}/metrics", server.http)).bearer_auth(&token).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "perfect21_chain_broken 1"), "{metrics}");
    drop((server, dir));
}
