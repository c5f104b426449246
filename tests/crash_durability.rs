//! An acknowledged append survives `kill -9`: a child process appends from
//! several tasks and prints every acknowledged position; we SIGKILL it mid-stream,
//! reopen the log and check that every acknowledged event is there, in order,
//! that the log has no hole, and that it still takes appends.

use perfect21_events::store::{PostgresConfig, PostgresStore};
use perfect21_events::{EventStore, ExpectedVersion, StreamId};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use uuid::Uuid;

/// Runs the appender against `url`, kills it after `acks` acknowledgements, returns them.
fn append_then_kill(url: &str, acks: usize) -> HashMap<u64, Uuid> {
    append_then_kill_with(url, acks, &[])
}

fn append_then_kill_with(url: &str, acks: usize, options: &[&str]) -> HashMap<u64, Uuid> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_perfect21"))
        .args(["append-forever", "--writers", "8", "--store", url])
        .args(options)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start perfect21");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = HashMap::new();
    while acked.len() < acks {
        let line = lines.next().expect("appender exited early").unwrap();
        let (position, id) = line.split_once(' ').unwrap();
        acked.insert(position.parse().unwrap(), id.parse().unwrap());
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    // Acknowledgements already on the pipe when the child died count too.
    for line in lines.map_while(Result::ok) {
        if let Some((p, id)) = line.split_once(' ') {
            acked.insert(p.parse().unwrap(), id.parse().unwrap());
        }
    }
    acked
}

async fn check(store: Arc<dyn EventStore>, acked: &HashMap<u64, Uuid>) {
    let head = store.head_position().await.unwrap();
    let all = store.read_all(1, head as usize + 10).await.unwrap();
    assert_eq!(all.len() as u64, head, "the log holds exactly positions 1..=head");
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "hole or disorder at {}", i + 1);
        e.decode().expect("every recorded event decodes");
    }
    for (position, id) in acked {
        let e = all.get(*position as usize - 1).unwrap_or_else(|| panic!("acknowledged position {position} lost"));
        assert_eq!(e.event_id, *id, "position {position} holds another event");
    }
    let r = store.append(&StreamId::new("crash-after").unwrap(), ExpectedVersion::Any, vec![]).await;
    assert!(r.is_err(), "empty appends are refused");
    let event = perfect21_events::Event::UserEmailVerified(perfect21_events::catalog::UserEmailVerified {
        user_id: Uuid::now_v7(),
    });
    let data = perfect21_events::EventData::new(&event, Default::default()).unwrap();
    let r = store.append(&StreamId::new("crash-after").unwrap(), ExpectedVersion::Any, vec![data]).await.unwrap();
    assert_eq!(r.position, head + 1);
}

#[tokio::test]
async fn sqlite_acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let mut acked = append_then_kill(&url, 400);
    // Kill it a second time, on a log that already went through one crash.
    acked.extend(append_then_kill(&url, 300));
    let store = perfect21_events::store::open(&url).await.unwrap();
    check(store, &acked).await;
}

#[tokio::test]
async fn postgres_acknowledged_appends_survive_sigkill() {
    let base = std::env::var("PERFECT21_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let schema = format!("p21t_{}", Uuid::new_v4().simple());
    // Create the schema, then point the child at it through the search_path option.
    let store = PostgresStore::connect(PostgresConfig::new(&base).with_schema(&schema)).await.unwrap();
    drop(store);
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let acked = append_then_kill(&url, 400);
    let store = PostgresStore::connect(PostgresConfig::new(&base).with_schema(&schema)).await.unwrap();
    check(Arc::new(store), &acked).await;
}

/// The kill loop of `perfect21 bench kill-loop` (README: fault figures), a few cycles:
/// `serve` itself killed mid-traffic, nothing acknowledged lost, no hole, and the
/// snapshot it leaves agrees with a full replay.
fn kill_loop(store: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_perfect21"));
    command.args(["bench", "kill-loop", "--cycles", "4", "--json", "--data-dir", dir.path().to_str().unwrap()]);
    if let Some(url) = store {
        command.args(["--store", url]);
    }
    let out = command.stderr(Stdio::inherit()).output().expect("run the kill loop");
    assert!(out.status.success(), "the kill loop failed");
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kept = rows.iter().find(|r| r["metric"] == "acknowledged_kept").expect("the kept figure");
    assert!(kept["baseline"].as_f64().unwrap() > 0.0, "registrations were acknowledged: {kept}");
    assert_eq!(kept["ours"], kept["baseline"], "no acknowledged registration lost");
}

#[test]
fn sqlite_serve_killed_in_a_loop_loses_nothing() {
    kill_loop(None);
}

#[test]
fn postgres_serve_killed_in_a_loop_loses_nothing() {
    let base = std::env::var("PERFECT21_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    kill_loop(Some(&base));
}

/// The Kafka writer killed mid-transaction, three times: every acknowledged append is in
/// the log, no append is there in part (each went to a stream of its own, 20 events), and
/// the next writer continues the chain.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_acknowledged_appends_survive_sigkill_and_no_append_is_partial() {
    let bootstrap = std::env::var("PERFECT21_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("p21t-{}", Uuid::new_v4().simple());
    let url = format!("kafka://{bootstrap}/{topic}?keys={}", dir.path().join("keys.db").display());
    let mut acked = HashMap::new();
    for _ in 0..3 {
        acked.extend(append_then_kill_with(&url, 400, &["--batch", "20"]));
    }
    let store = perfect21_events::store::open(&url).await.unwrap();
    let head = store.head_position().await.unwrap();
    let all = store.read_all(1, usize::MAX).await.unwrap();
    let mut per_stream: HashMap<&str, usize> = HashMap::new();
    for e in &all {
        *per_stream.entry(e.stream_id.as_str()).or_default() += 1;
    }
    let partial: Vec<_> = per_stream.iter().filter(|(_, n)| **n != 20).collect();
    assert!(partial.is_empty(), "appends recorded in part: {partial:?}");
    check(store.clone(), &acked).await;
    let verified = perfect21_events::chain::verify(&*store, 1, |_| {}).await.expect("the chain holds");
    assert_eq!(verified.through, head + 1);
}
