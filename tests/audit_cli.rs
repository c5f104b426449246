//! `perfect21 audit user` and `perfect21 replay` against a log written by the identity commands.

use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::*;
use std::process::Command;

fn perfect21(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_perfect21")).args(args).output().expect("run perfect21")
}

#[tokio::test]
async fn audit_and_replay_read_what_the_commands_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let store = perfect21_events::store::open(&url).await.unwrap();
    let live = LiveModels::start(store.clone());
    let config =
        IdentityConfig { password_cost: PasswordCost::TEST, allow_unverified_login: true, ..Default::default() };
    // The server secret in <dir>/keys, where `serve` keeps it: it keys the reservation
    // streams the CLI finds users by.
    let key = [9u8; 32];
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/secret.key"), key).unwrap();
    let keys = dir.path().join("keys").display().to_string();
    let id = Identity::new(store.clone(), live, SecretBox::new(key), config).unwrap();
    let ctx = RequestContext { client_ip: Some("203.0.113.5".into()), ..Default::default() };
    let reg = id
        .register(
            &ctx,
            Registration {
                email: "cli@example.com".into(),
                username: "cli_user".into(),
                password: "a long password".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let _ = id
        .login(&ctx, LoginRequest { identifier: "cli_user".into(), password: "nope nope".into(), ..Default::default() })
        .await;
    id.login(
        &ctx,
        LoginRequest { identifier: "cli_user".into(), password: "a long password".into(), ..Default::default() },
    )
    .await
    .unwrap();

    // Without the secret only the user's id finds the user, and the error says why.
    let out = perfect21(&["audit", "user", "cli@example.com", "--store", &url, "--keys-dir", "/nonexistent"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no server secret at /nonexistent/secret.key"), "{err}");
    let out = perfect21(&["audit", "user", &reg.user_id.to_string(), "--store", &url, "--keys-dir", "/nonexistent"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let out = perfect21(&["audit", "user", "cli@example.com", "--store", &url, "--keys-dir", &keys]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&reg.user_id.to_string()));
    assert!(text.contains("user.login_failed") && text.contains("203.0.113.5") && text.contains("bad_password"));
    assert!(!text.contains("argon2"), "no hashes in the audit output");

    let out = perfect21(&[
        "audit",
        "user",
        "cli_user",
        "--store",
        &url,
        "--keys-dir",
        &keys,
        "--type",
        "user.login",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event_type"], "user.login_failed");
    assert_eq!(lines[1]["client_ip"], "203.0.113.5");

    let out = perfect21(&["audit", "user", "ghost@example.com", "--store", &url, "--keys-dir", &keys]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("no user is registered as 'ghost@example.com'"));
    let out = perfect21(&["audit", "user", "cli_user", "--store", &url, "--keys-dir", &keys, "--since", "yesterday"]);
    assert!(String::from_utf8(out.stderr).unwrap().contains("expected RFC 3339 or a duration"));

    // Replay prints the same digest as the live read models.
    let head = store.head_position().await.unwrap();
    let live_digest = id.read(Some(head), |m| m.digest()).await.unwrap();
    let out = perfect21(&["replay", "--store", &url, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replay: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replay["digest"], live_digest);
    assert_eq!(replay["position"], head);
    assert_eq!(replay["users"], 1);

    // Snapshots: none yet, then one written by replay, then verified after more events.
    let data_dir = dir.path().to_str().unwrap();
    let out = perfect21(&["replay", "--store", &url, "--data-dir", data_dir, "--verify"]);
    assert_eq!(out.status.code(), Some(3), "no snapshot is its own outcome, not a mismatch");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("nothing to compare") && !text.contains("MISMATCH"), "{text}");
    let out = perfect21(&["replay", "--store", &url, "--data-dir", data_dir, "--write-snapshot"]);
    assert!(out.status.success());
    assert!(dir.path().join("snapshots/read-models.snap").exists());
    id.login(
        &ctx,
        LoginRequest { identifier: "cli_user".into(), password: "a long password".into(), ..Default::default() },
    )
    .await
    .unwrap();
    let out = perfect21(&["replay", "--store", &url, "--data-dir", data_dir, "--verify", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], true, "{v}");
    assert!(v["verify_detail"].as_str().unwrap().contains("catch-up of 2 events"), "{v}");
}

#[test]
fn commands_that_only_read_create_nothing_and_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nothing-here");
    let data = data.to_str().unwrap();
    for args in [
        vec!["events", "stats", "--data-dir", data],
        vec!["events", "tail", "--data-dir", data],
        vec!["audit", "user", "ada", "--data-dir", data],
        vec!["replay", "--data-dir", data],
    ] {
        let out = perfect21(&args);
        assert!(!out.status.success(), "{args:?} succeeded on a missing log");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no event log at") && err.contains("nothing-here"), "{args:?}: {err}");
        assert!(!std::path::Path::new(data).exists(), "{args:?} created {data}");
    }
}

#[test]
fn an_unreachable_postgres_is_named_with_its_cause() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://someone@127.0.0.1:{port}/somedb");
    let out = perfect21(&["events", "stats", "--store", &url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("somedb"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "the cause is named: {err}");
}

#[test]
fn doctor_reports_what_is_reachable_and_the_fix_for_what_is_not() {
    // A fresh directory: nothing fails, nothing is created.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    let out = perfect21(&["doctor", "--data-dir", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("store") && text.contains("no log yet"), "{text}");
    assert!(!data.exists(), "doctor created {}", data.display());

    // A broker and an SMTP server that do not answer: FAIL lines with a fix, exit 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = perfect21(&[
        "doctor",
        "--data-dir",
        data.to_str().unwrap(),
        "--amqp-url",
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        "--smtp-url",
        &format!("smtp://127.0.0.1:{port}"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let broker = text.lines().find(|l| l.contains("broker")).unwrap();
    assert!(broker.starts_with("FAIL") && broker.contains("fix:") && !broker.contains("guest:guest"), "{broker}");
    let smtp = text.lines().find(|l| l.contains("smtp")).unwrap();
    assert!(smtp.starts_with("FAIL") && smtp.contains("fix:"), "{smtp}");

    // A log and keys that exist: ok lines.
    let served = tempfile::tempdir().unwrap();
    let d = served.path().to_str().unwrap();
    let out = perfect21(&["admin", "service-account", "list", "--data-dir", d]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = perfect21(&["doctor", "--data-dir", d]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ok") && l.contains("store") && l.contains("0 events")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ok") && l.contains("owner-only")), "{text}");
}
