//! Several writer processes append to one log while a subscriber follows it:
//! the subscriber must see every position exactly once, in order — on
//! PostgreSQL, where commits of different processes race, and on SQLite.

use perfect21_events::store::{PostgresConfig, PostgresStore};
use perfect21_events::{subscribe_all, EventStore};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Starts `n` appender processes, each with several tasks, and waits until each has acknowledged an append.
fn start_writers(url: &str, n: usize) -> Vec<Child> {
    (0..n)
        .map(|_| {
            let mut child = Command::new(env!("CARGO_BIN_EXE_perfect21"))
                .args(["append-forever", "--writers", "4", "--store", url])
                .stdout(Stdio::piped())
                .spawn()
                .expect("start perfect21");
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            // Each writer has appended before the race is watched.
            lines.next().expect("writer acknowledged an append").unwrap();
            std::thread::spawn(move || lines.map_while(Result::ok).count());
            child
        })
        .collect()
}

/// Waits for whatever the killed writers left behind to settle before the head is read. `None` on
/// SQLite, where a killed writer's transaction dies with it; on PostgreSQL, a COMMIT the server
/// already received completes after the client is gone, so the test waits until every server
/// session of the writers (named by `application_name`) has ended.
type Settle = Option<(sqlx::PgPool, String)>;

async fn settle(settle: &Settle) {
    let Some((pool, name)) = settle else { return };
    for _ in 0..200 {
        let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(name)
            .fetch_one(pool)
            .await
            .unwrap();
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the killed writers' PostgreSQL sessions did not end");
}

async fn follow_while_writing(store: Arc<dyn EventStore>, url: &str, after_kill: Settle) {
    let mut sub = subscribe_all(store.clone(), 1);
    let mut writers = start_writers(url, 3);
    let mut seen = Vec::new();
    // Follow live while all writers race, until enough events went by (writers may start slowly on a busy machine).
    while seen.len() < 500 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("stalled").unwrap();
        seen.push(e.position);
    }
    for w in &mut writers {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    settle(&after_kill).await;
    let head = store.head_position().await.unwrap();
    while (seen.len() as u64) < head {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("stalled").unwrap();
        seen.push(e.position);
    }
    assert!(head >= 500);
    assert_eq!(seen, (1..=head).collect::<Vec<_>>(), "every position once, in order");
    assert!(sub.try_next().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_subscriber_sees_every_event_of_racing_processes() {
    let base = std::env::var("PERFECT21_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let schema = format!("p21t_{}", Uuid::new_v4().simple());
    let store = PostgresStore::connect(PostgresConfig::new(&base).with_schema(&schema)).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}&application_name={schema}");
    let watcher = sqlx::PgPool::connect(&base).await.unwrap();
    follow_while_writing(Arc::new(store), &url, Some((watcher, schema))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_subscriber_sees_every_event_of_racing_processes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let store = perfect21_events::store::open(&url).await.unwrap();
    follow_while_writing(store, &url, None).await;
}
