//! `bench kill-loop`: `serve` killed with SIGKILL at random moments while clients
//! register users through it, restarted, over and over. After each kill the log is
//! opened directly and checked:
//! - every registration the server acknowledged (HTTP 201) is in the log;
//! - the log holds exactly positions 1..=head and every event decodes;
//! - the hash chain verifies from the first event to the head, and the links of the
//!   last check are unchanged (a commit cut off by the kill left no half-linked event);
//! - the read-model snapshot the server left (written atomically) plus catch-up
//!   gives the same digest as a full replay.
//!
//! The figure is the number of acknowledged events lost, which must be 0.

use super::{Measurement, Scratch};
use anyhow::Context;
use perfect21_events::{Event, EventStore};
use rand::Rng;
use std::collections::HashSet;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// Clients registering users at once.
const WRITERS: usize = 8;

/// A `serve` process, killed when dropped.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` on free ports; returns it and its HTTP address.
fn start(data_dir: &std::path::Path, store: &str) -> anyhow::Result<(Serving, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--store", store])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        // Registrations answer their verification token; argon2 at test cost, so that a
        // cycle writes many events (what is measured is durability, not hashing).
        .args(["--dev", "--insecure-fast-passwords", "--snapshot-every", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perfect21 serve")?;
    let stdout = child.stdout.take().expect("piped");
    let serving = Serving(child);
    let mut http = None;
    for line in std::io::BufReader::new(stdout).lines() {
        if let Some(addr) = line?.strip_prefix("perfect21 HTTP listening on ") {
            http = Some(addr.to_string());
            break;
        }
    }
    let http = http.context("serve stopped before listening")?;
    Ok((serving, http))
}

/// Registers users until the server goes away; records every acknowledged user id.
async fn register_until_gone(http: String, writer: usize, acked: Arc<Mutex<Vec<Uuid>>>) {
    let client = reqwest::Client::new();
    let url = format!("http://{http}/api/v1/auth/register");
    loop {
        // Unique, and within the 32 characters a username may have.
        let name = format!("k{writer}{}", &Uuid::now_v7().simple().to_string()[..28]);
        let body = serde_json::json!({ "email": format!("{name}@example.com"), "username": name, "password": "kill-loop-password" });
        let Ok(res) = client.post(&url).json(&body).send().await else { return };
        if res.status() != reqwest::StatusCode::CREATED {
            continue;
        }
        let Ok(answer) = res.json::<serde_json::Value>().await else { return };
        if let Some(id) = answer["user_id"].as_str().and_then(|s| s.parse().ok()) {
            acked.lock().expect("acknowledged").push(id);
        }
    }
}

/// What one check after a kill found.
struct Checked {
    lost: usize,
    snapshot_compared: bool,
    /// The position and link the chain walk ended on.
    chain: (u64, perfect21_events::chain::Digest),
}

/// Opens the log the killed server left and checks it (see the module docs).
async fn check(
    store: Arc<dyn EventStore>,
    data_dir: &std::path::Path,
    acked: &[Uuid],
    before: Option<(u64, perfect21_events::chain::Digest)>,
) -> anyhow::Result<Checked> {
    let head = store.head_position().await?;
    let verified = perfect21_events::chain::verify(&*store, 1, |_| {}).await?;
    anyhow::ensure!(verified.through == head, "the chain ends at {}, the head is {head}", verified.through);
    if let Some((position, link)) = before {
        let then = store.read_chain(position, 1).await?;
        anyhow::ensure!(
            position == 0 || then.first().and_then(|r| r.link) == Some(link),
            "the link at position {position} changed since the last check"
        );
    }
    let all = store.read_all(1, usize::MAX).await?;
    anyhow::ensure!(all.len() as u64 == head, "the log holds {} events but its head is {head}", all.len());
    let mut registered = HashSet::new();
    for (i, e) in all.iter().enumerate() {
        anyhow::ensure!(e.position == i as u64 + 1, "hole or disorder at position {}", i + 1);
        let event = e.decode().with_context(|| format!("position {} does not decode", e.position))?;
        if let Event::UserRegistered(r) = event {
            registered.insert(r.user_id);
        }
    }
    let lost = acked.iter().filter(|id| !registered.contains(id)).count();
    let snapshot = data_dir.join("snapshots/read-models.snap");
    let full = crate::replay::fold_into(
        store.clone(),
        perfect21_projections::ReadModels::default(),
        head,
        &indicatif::ProgressBar::hidden(),
    )
    .await?;
    let snapshot_compared = match crate::replay::verify(store, &snapshot, head, &full.models.digest()).await? {
        crate::replay::Verdict::Same(_) => true,
        crate::replay::Verdict::NoSnapshot(_) => false,
        crate::replay::Verdict::Differs(detail) => anyhow::bail!("replay is not reproducible after a kill: {detail}"),
    };
    Ok(Checked { lost, snapshot_compared, chain: (verified.through, verified.last_link) })
}

/// `cycles` kills of `serve` on SQLite (or `postgres`, in a scratch schema).
pub async fn kill_loop(scratch: &Scratch, postgres: Option<&str>, cycles: usize) -> anyhow::Result<Vec<Measurement>> {
    let data_dir = scratch.file("kill-loop");
    std::fs::create_dir_all(&data_dir)?;
    let schema = format!("p21bench_kill_{}", std::process::id());
    // The log's URL, for the server and for the checks.
    let url = match postgres {
        Some(base) => {
            // The schema first; the server runs the migrations into it.
            drop(
                perfect21_events::store::PostgresStore::connect(
                    perfect21_events::store::PostgresConfig::new(base).with_schema(&schema),
                )
                .await?,
            );
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options=-c%20search_path%3D{schema}")
        }
        None => format!("sqlite://{}", data_dir.join("events.db").display()),
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (mut lost, mut compared, mut chain) = (0, 0, None);
    for cycle in 0..cycles {
        let (serving, http) = start(&data_dir, &url)?;
        let writers: Vec<_> =
            (0..WRITERS).map(|w| tokio::spawn(register_until_gone(http.clone(), w, acked.clone()))).collect();
        let run_for = Duration::from_millis(rand::thread_rng().gen_range(100..700));
        tokio::time::sleep(run_for).await;
        drop(serving); // SIGKILL, at whatever point the writers and the server are
        for w in writers {
            let _ = w.await;
        }
        let store = perfect21_events::store::open(&url).await?;
        let acked = acked.lock().expect("acknowledged").clone();
        let checked =
            check(store, &data_dir, &acked, chain).await.with_context(|| format!("after kill {}", cycle + 1))?;
        lost = checked.lost;
        chain = Some(checked.chain);
        compared += usize::from(checked.snapshot_compared);
        eprintln!(
            "kill {:>3}/{cycles}: {} registrations acknowledged so far, {lost} lost; chain verified to {}; snapshot {}",
            cycle + 1,
            acked.len(),
            checked.chain.0,
            if checked.snapshot_compared { "+ catch-up = full replay" } else { "not written yet" }
        );
    }
    if let Some(base) = postgres {
        let pool = sqlx::PgPool::connect(base).await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&pool).await?;
    }
    let acknowledged = acked.lock().expect("acknowledged").len();
    eprintln!(
        "{cycles} kills, {acknowledged} acknowledged registrations, {lost} lost, {compared} snapshot checks, chain verified after every kill"
    );
    Ok(vec![
        // Lost acknowledged events: the goal is 0 (ratio: kept / acknowledged).
        Measurement::rate(
            "kill-loop",
            "acknowledged_kept",
            (acknowledged - lost) as f64,
            acknowledged as f64,
            "events",
        ),
        Measurement::rate("kill-loop", "kills", cycles as f64, cycles as f64, "cycles"),
    ])
}
