//! `perfect21 serve` on one PostgreSQL log, as two replicas sharing a forwarding secret:
//! the first becomes the log's writer, the second forwards its appends to it. A user
//! registered through one logs in through the other, and the CLI verifies the chain.
//! Needs the server named by `PERFECT21_TEST_POSTGRES` (`scripts/test` starts it).

mod common;

use common::serve::{self, run, Replicas};
use perfect21_events::store::{PostgresConfig, PostgresStore};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres_log_and_the_second_forwards_to_the_first() {
    let base = std::env::var("PERFECT21_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let schema = format!("p21t_{}", uuid::Uuid::new_v4().simple());
    // Create the schema, then point the replicas at it through the search_path option.
    drop(PostgresStore::connect(PostgresConfig::new(&base).with_schema(&schema)).await.unwrap());
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("forward.secret");
    std::fs::write(&secret, rand::random::<[u8; 32]>()).unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}&secret_file={}", secret.display());
    let keys = shared.path().join("keys");
    let replicas = Replicas::start(&url, keys.to_str().unwrap());
    let (a, b) = (&replicas.a, &replicas.b);
    let http = reqwest::Client::new();
    replicas.one_user_across_both(&http, "pg-user", "postgres password 1").await;

    // The replicas elected one writer, which recorded where it listens; /status says so.
    let pool = sqlx::PgPool::connect(&base).await.unwrap();
    let writer: String =
        sqlx::query_scalar(&format!("SELECT address FROM {schema}.log_writer")).fetch_one(&pool).await.unwrap();
    let admin = serve::login(&http, a, "root", serve::ROOT_PASSWORD).await;
    let token = admin["access_token"].as_str();
    let (_, status_a) = serve::get(&http, format!("{}/status", a.http), token).await;
    let (_, status_b) = serve::get(&http, format!("{}/status", b.http), token).await;
    assert_eq!(status_a["appends"], json!({"role": "writer"}), "{status_a}");
    assert_eq!(status_b["appends"], json!({"role": "forwards_to", "writer": writer}), "{status_b}");

    let a_data = replicas.stop();
    let verified = run(&["events", "verify", "--store", &url, "--data-dir", a_data.path().to_str().unwrap()]);
    assert!(verified.contains("chain verified"), "{verified}");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
}
