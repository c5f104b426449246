//! `perfect21 serve` on a Kafka log, as two replicas: the first becomes the log's writer,
//! the second forwards its appends to it. A user registered through one logs in through
//! the other, and the CLI verifies the log's chain. Needs the broker of `scripts/kafka`.
#![cfg(feature = "kafka")]

mod common;

use common::serve::{self, post, run};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_kafka_log_and_the_second_forwards_to_the_first() {
    let bootstrap = std::env::var("PERFECT21_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("forward.secret");
    std::fs::write(&secret, rand::random::<[u8; 32]>()).unwrap();
    let topic = format!("p21t-{}", uuid::Uuid::new_v4().simple());
    let url = format!(
        "kafka://{bootstrap}/{topic}?keys={}&secret_file={}",
        shared.path().join("data-keys.db").display(),
        secret.display()
    );
    let keys = shared.path().join("keys");
    let keys = keys.to_str().unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_data, b_data) = (a_dir.path().to_str().unwrap(), b_dir.path().to_str().unwrap());
    run(&[
        "admin",
        "bootstrap",
        "--data-dir",
        a_data,
        "--store",
        &url,
        "--keys-dir",
        keys,
        "--insecure-fast-passwords",
        "--email",
        "root@example.com",
        "--username",
        "root",
        "--password",
        serve::ROOT_PASSWORD,
    ]);
    let a = serve::serve_on(a_data, &["--store", &url, "--keys-dir", keys]);
    let b = serve::serve_on(b_data, &["--store", &url, "--keys-dir", keys]);

    let http = reqwest::Client::new();
    // Registered through the second replica: its appends go to the first.
    let user_id = serve::register(&http, &b, "kafka-user", "kafka password 1").await;
    let tokens = serve::login(&http, &a, "kafka-user", "kafka password 1").await;
    let (status, me) = serve::get(&http, format!("{}/users/me", a.api()), tokens["access_token"].as_str()).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["username"].as_str(), me["user_id"].as_str().or(me["id"].as_str())),
        (Some("kafka-user"), Some(user_id.as_str()))
    );
    // A wrong password through the forwarding replica: refused, and recorded through the writer.
    let (status, body) = post(
        &http,
        format!("{}/auth/login", b.api()),
        None,
        json!({"identifier": "kafka-user", "password": "wrong password 1"}),
    )
    .await;
    assert_eq!(status, 401, "{body}");

    drop((a, b));
    let verified = run(&["events", "verify", "--store", &url, "--data-dir", a_data]);
    assert!(verified.contains("chain verified"), "{verified}");
}
