//! The right of access: `GET /api/v1/users/{id}/export` and `perfect21 admin
//! export-user` give everything perfect21 holds about a user, and nothing secret.

mod common;

use common::serve::{gateway_token, login, register, run, start};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_exports_everything_held_about_them_and_no_secret() {
    let server = start();
    let http = reqwest::Client::builder().user_agent("export-test-agent/7").build().unwrap();
    let id = register(&http, &server, "exporter", "export password 1").await;
    let other = register(&http, &server, "bystander", "export password 1").await;
    let session = login(&http, &server, "exporter", "export password 1").await;
    let token = session["access_token"].as_str().unwrap();

    let (status, export) = common::serve::get(&http, format!("{}/users/{id}/export", server.api()), Some(token)).await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["user"]["email"], "exporter@example.com");
    assert_eq!(export["sessions"].as_array().unwrap().len(), 1, "{export}");
    let events = export["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    for t in ["user.registered", "user.email_verified", "user.login_succeeded"] {
        assert!(types.contains(&t), "{t} in the history: {types:?}");
    }
    assert!(
        events.iter().any(|e| e["user_agent"] == "export-test-agent/7" && e["client_ip"] == "127.0.0.1"),
        "where each event came from is personal data too: {export}"
    );
    let text = export.to_string();
    for secret in ["password_hash", "$argon2", "refresh_token_hash", "verification_token_hash"] {
        assert!(!text.contains(secret), "the export holds no secret ({secret})");
    }
    assert!(!text.contains(session["refresh_token"].as_str().unwrap()));

    // Someone else's data needs perfect21.users:export; an administrator has it.
    let (status, body) = common::serve::get(&http, format!("{}/users/{other}/export", server.api()), Some(token)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("perfect21.users:export"), "{body}");
    let admin = gateway_token(&http, &server).await;
    let (status, theirs) =
        common::serve::get(&http, format!("{}/users/{other}/export", server.api()), Some(&admin)).await;
    assert_eq!((status, theirs["user"]["username"].as_str()), (200, Some("bystander")));
    let nobody = uuid::Uuid::now_v7();
    let (status, _) = common::serve::get(&http, format!("{}/users/{nobody}/export", server.api()), Some(&admin)).await;
    assert_eq!(status, 404);

    // The operator's command, by email, into a file.
    let out = server.dir.as_ref().unwrap().path().join("export.json");
    run(&[
        "admin",
        "export-user",
        "exporter@example.com",
        "--data-dir",
        &server.data,
        "--output",
        out.to_str().unwrap(),
    ]);
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(file["user"]["id"], id.as_str());
    assert_eq!(file["events"].as_array().unwrap().len(), events.len());
    let missing = common::serve::perfect21()
        .args(["admin", "export-user", "nobody@example.com", "--data-dir", &server.data])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no user 'nobody@example.com'"));
}
