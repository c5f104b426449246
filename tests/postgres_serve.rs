//! `perfect21 serve` on one PostgreSQL log, as two replicas sharing a forwarding secret:
//! the first becomes the log's writer, the second forwards its appends to it. A user
//! registered through one logs in through the other, and the CLI verifies the chain.
//! Needs the server named by `PERFECT21_TEST_POSTGRES` (`scripts/test` starts it).

mod common;

use common::serve::{self, post, run};
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
    let user_id = serve::register(&http, &b, "pg-user", "postgres password 1").await;
    let tokens = serve::login(&http, &a, "pg-user", "postgres password 1").await;
    let (status, me) = serve::get(&http, format!("{}/users/me", a.api()), tokens["access_token"].as_str()).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["username"].as_str(), me["user_id"].as_str().or(me["id"].as_str())),
        (Some("pg-user"), Some(user_id.as_str()))
    );
    // And the other way round: a login through the forwarding replica.
    let tokens = serve::login(&http, &b, "pg-user", "postgres password 1").await;
    let (status, me) = serve::get(&http, format!("{}/users/me", b.api()), tokens["access_token"].as_str()).await;
    assert_eq!(status, 200, "{me}");
    let (status, body) = post(
        &http,
        format!("{}/auth/login", b.api()),
        None,
        json!({"identifier": "pg-user", "password": "wrong password 1"}),
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // The replicas elected one writer, which recorded where it listens; /status says so.
    let pool = sqlx::PgPool::connect(&base).await.unwrap();
    let writer: String =
        sqlx::query_scalar(&format!("SELECT address FROM {schema}.log_writer")).fetch_one(&pool).await.unwrap();
    let admin = serve::login(&http, &a, "root", serve::ROOT_PASSWORD).await;
    let token = admin["access_token"].as_str();
    let (_, status_a) = serve::get(&http, format!("{}/status", a.http), token).await;
    let (_, status_b) = serve::get(&http, format!("{}/status", b.http), token).await;
    assert_eq!(status_a["appends"], json!({"role": "writer"}), "{status_a}");
    assert_eq!(status_b["appends"], json!({"role": "forwards_to", "writer": writer}), "{status_b}");

    drop((a, b));
    let verified = run(&["events", "verify", "--store", &url, "--data-dir", a_data]);
    assert!(verified.contains("chain verified"), "{verified}");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
}
