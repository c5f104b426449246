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
    let id = Identity::new(store.clone(), live, SecretBox::random(), config).unwrap();
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

    let out = perfect21(&["audit", "user", "cli@example.com", "--store", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&reg.user_id.to_string()));
    assert!(text.contains("user.login_failed") && text.contains("203.0.113.5") && text.contains("bad_password"));
    assert!(!text.contains("argon2"), "no hashes in the audit output");

    let out = perfect21(&["audit", "user", "cli_user", "--store", &url, "--type", "user.login", "--json"]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event_type"], "user.login_failed");
    assert_eq!(lines[1]["client_ip"], "203.0.113.5");

    let out = perfect21(&["audit", "user", "ghost@example.com", "--store", &url]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("no user is registered as 'ghost@example.com'"));
    let out = perfect21(&["audit", "user", "cli_user", "--store", &url, "--since", "yesterday"]);
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
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains("no usable snapshot"));
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
