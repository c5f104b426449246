//! `perfect21 events tail` and `perfect21 events stats` against a real log file.

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
    assert!(err.contains("expected sqlite://<file> or postgres://"), "{err}");
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
    assert_eq!(warning["target"], "perfect21::relay");
}
