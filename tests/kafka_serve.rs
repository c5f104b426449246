//! `perfect21 serve` on a Kafka log, as two replicas: the first becomes the log's writer,
//! the second forwards its appends to it. A user registered through one logs in through
//! the other, and the CLI verifies the log's chain. Needs the broker of `scripts/kafka`.
#![cfg(feature = "kafka")]

mod common;

use common::serve::{run, Replicas};

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
    let replicas = Replicas::start(&url, keys.to_str().unwrap());
    let http = reqwest::Client::new();
    replicas.one_user_across_both(&http, "kafka-user", "kafka password 1").await;

    let a_data = replicas.stop();
    let verified = run(&["events", "verify", "--store", &url, "--data-dir", a_data.path().to_str().unwrap()]);
    assert!(verified.contains("chain verified"), "{verified}");
}
