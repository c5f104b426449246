//! Append benchmarks: group commit, batched appends, and the PostgreSQL store.

use super::{percentile, BenchArgs, Measurement, Scratch};
use anyhow::Context;
use perfect21_events::catalog::UserLoginSucceeded;
use perfect21_events::store::{PostgresConfig, PostgresStore, SqliteConfig, SqliteStore};
use perfect21_events::{Event, EventData, EventStore, ExpectedVersion, Metadata, StreamId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub(super) const APPENDERS: usize = 64;
pub(super) const BATCH: usize = 100;

/// Users the sample events are about: logins of known users, whose data keys exist
/// after their first (as a registration would have made them).
const USERS: usize = 1000;

fn some_user() -> Uuid {
    static USERS_POOL: std::sync::OnceLock<Vec<Uuid>> = std::sync::OnceLock::new();
    let pool = USERS_POOL.get_or_init(|| (0..USERS).map(|_| Uuid::now_v7()).collect());
    pool[rand::random::<usize>() % pool.len()]
}

/// A representative event: a successful login with full request metadata.
pub(super) fn sample_event() -> EventData {
    let user_id = some_user();
    let event = Event::UserLoginSucceeded(UserLoginSucceeded {
        user_id,
        session_id: Uuid::now_v7(),
        mfa_used: false,
        risk_score: 0.1,
        device_id: Some("device-7f3a".into()),
        totp_step: None,
    });
    let metadata = Metadata {
        correlation_id: Some(Uuid::now_v7()),
        actor: Some(format!("user:{user_id}")),
        source_service: Some("auth".into()),
        client_ip: Some("203.0.113.7".into()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
        ..Metadata::default()
    };
    EventData::new(&event, metadata).expect("encodes")
}

fn batch_of(n: usize) -> Vec<EventData> {
    (0..n).map(|_| sample_event()).collect()
}

pub(super) struct Run {
    pub events: usize,
    pub events_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// `tasks` appenders, each appending `per_append` events at a time to its own stream, for `duration`.
pub(super) async fn drive(
    store: Arc<dyn EventStore>,
    tasks: usize,
    per_append: usize,
    duration: Duration,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::of("bench", Uuid::now_v7()).expect("valid");
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let events = batch_of(per_append);
                    let t = Instant::now();
                    store.append(&stream, ExpectedVersion::Any, events).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                }
                Ok::<_, perfect21_events::StoreError>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(Run {
        events: all.len() * per_append,
        events_per_sec: (all.len() * per_append) as f64 / elapsed,
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
    })
}

async fn open_for(
    args: &BenchArgs,
    scratch: &Scratch,
    name: &str,
    group_commit: bool,
) -> anyhow::Result<Arc<dyn EventStore>> {
    let url = args.store.url();
    if url.starts_with("postgres") {
        let schema = format!("p21bench_{name}_{}", std::process::id());
        let mut config = PostgresConfig::new(url).with_schema(schema);
        config.group_commit = group_commit;
        Ok(Arc::new(PostgresStore::connect(config).await?))
    } else {
        let mut config = SqliteConfig::new(scratch.file(&format!("{name}.db")));
        config.group_commit = group_commit;
        Ok(Arc::new(SqliteStore::open(config).await?))
    }
}

pub async fn concurrent(args: &BenchArgs, scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    const S: &str = "append-concurrent";
    let ours = drive(open_for(args, scratch, "grouped", true).await?, APPENDERS, 1, duration).await?;
    let single = drive(open_for(args, scratch, "single", false).await?, APPENDERS, 1, duration).await?;
    // The physical limit: the same rows, 100 per transaction, written raw into the same
    // schema: spread over 64 streams as the appenders write them, and into one stream
    // (the kindest case for the indexes, for reference).
    let url = args.store.url();
    let raw = raw_rate(&url, scratch, "raw", APPENDERS, duration).await?;
    let raw_one_stream = raw_rate(&url, scratch, "raw1", 1, duration).await?;
    if url.starts_with("postgres") {
        drop_schemas(&url, &["grouped", "single"]).await?;
    }
    Ok(vec![
        Measurement::rate(S, "durable_appends", ours.events_per_sec, raw, "events/s"),
        Measurement::rate(S, "vs_raw_one_stream", ours.events_per_sec, raw_one_stream, "events/s"),
        Measurement::rate(S, "vs_commit_per_event", ours.events_per_sec, single.events_per_sec, "events/s"),
        Measurement::latency(S, "append_p50", ours.p50_us, single.p50_us, "us"),
        Measurement::latency(S, "append_p99", ours.p99_us, single.p99_us, "us"),
    ])
}

/// The raw batched-INSERT rate over `streams` streams, in a scratch log of the configured backend.
async fn raw_rate(url: &str, scratch: &Scratch, name: &str, streams: usize, duration: Duration) -> anyhow::Result<f64> {
    if url.starts_with("postgres") {
        let store = PostgresStore::connect(
            PostgresConfig::new(url).with_schema(format!("p21bench_{name}_{}", std::process::id())),
        )
        .await?;
        let rate = raw_postgres(store.pool(), streams, duration).await?;
        drop(store);
        drop_schemas(url, &[name]).await?;
        Ok(rate)
    } else {
        let path = scratch.file(&format!("{name}.db"));
        tokio::task::spawn_blocking(move || raw_sqlite(&path, streams, duration)).await?
    }
}

/// Processes of `append-processes`, and appenders in each (64 in all, as `append-concurrent`).
const PROCESSES: usize = 4;

/// The worker side of `append-processes`: one process of the multi-replica layout.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The PostgreSQL server.
    #[arg(long)]
    url: String,
    /// The shared scratch schema.
    #[arg(long)]
    schema: String,
    #[arg(long)]
    appenders: usize,
    /// Start at this Unix time (milliseconds), so that every process runs the same window.
    #[arg(long)]
    start_at_ms: u64,
    #[arg(long)]
    duration: f64,
    /// The replicas' forwarding secret: with it, they forward their appends to one writer.
    #[arg(long)]
    secret_file: Option<std::path::PathBuf>,
}

/// Runs `appenders` single-event appenders from `start_at_ms` for `duration` seconds and
/// prints the events acknowledged (one line: the count).
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut config = PostgresConfig::new(&args.url).with_schema(&args.schema);
    if let Some(secret) = &args.secret_file {
        config.forward = Some(perfect21_events::store::ForwardConfig {
            secret: std::fs::read(secret)?,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
        });
    }
    let store = PostgresStore::connect(config).await?;
    let start_at = std::time::UNIX_EPOCH + Duration::from_millis(args.start_at_ms);
    if let Ok(wait) = start_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let run = drive(Arc::new(store), args.appenders, 1, Duration::from_secs_f64(args.duration)).await?;
    println!("{}", run.events);
    Ok(())
}

/// 4 processes × 16 single-event appenders on one PostgreSQL log (the multi-replica
/// layout), forwarding their appends to one writer among them, vs the raw batched INSERT
/// over 64 streams; the same processes appending each on its own, for reference. Each
/// time the log is checked for holes.
pub async fn processes(url: &str, scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    const S: &str = "append-processes";
    let secret = scratch.file("forward.secret");
    std::fs::write(&secret, rand::random::<[u8; 32]>())?;
    // Each round runs the three sides in another order (PostgreSQL's checkpoints and
    // the disk's write-back land on whichever runs when they come); medians.
    let mut rates = [(); 3].map(|_| Vec::with_capacity(PROCESS_ROUNDS));
    for round in 0..PROCESS_ROUNDS {
        eprintln!("append-processes: round {} of {PROCESS_ROUNDS}", round + 1);
        for k in 0..3 {
            let side = (round + k) % 3;
            rates[side].push(match side {
                0 => processes_run(url, "shared", Some(&secret), duration).await?,
                1 => processes_run(url, "direct", None, duration).await?,
                _ => raw_rate(url, scratch, "raw", APPENDERS, duration).await?,
            });
        }
    }
    let [forwarding, direct, raw] = rates.map(|mut r| super::median(&mut r));
    Ok(vec![
        Measurement::rate(S, "durable_appends", forwarding, raw, "events/s"),
        Measurement::rate(S, "durable_appends_each_writing", direct, raw, "events/s"),
    ])
}

/// Rounds of `append-processes`.
const PROCESS_ROUNDS: usize = 3;

/// One run of `append-processes` in the scratch schema `name`; the events per second
/// acknowledged to the appenders of all processes.
async fn processes_run(
    url: &str,
    name: &str,
    secret: Option<&std::path::Path>,
    duration: Duration,
) -> anyhow::Result<f64> {
    let schema = format!("p21bench_{name}_{}", std::process::id());
    // Create the schema and tables once, before the processes race to.
    let shared = PostgresStore::connect(PostgresConfig::new(url).with_schema(&schema))
        .await
        .context("connecting to PostgreSQL for append-processes (set --postgres)")?;
    let start_at = std::time::SystemTime::now() + Duration::from_secs(3);
    let start_at_ms = start_at.duration_since(std::time::UNIX_EPOCH)?.as_millis().to_string();
    let children = (0..PROCESSES)
        .map(|_| {
            let mut worker = std::process::Command::new(std::env::current_exe()?);
            worker
                .args(["bench-append-worker", "--url", url, "--schema", &schema])
                .args(["--appenders", &(APPENDERS / PROCESSES).to_string(), "--start-at-ms", &start_at_ms])
                .args(["--duration", &duration.as_secs_f64().to_string()])
                .stdout(std::process::Stdio::piped());
            if let Some(secret) = secret {
                worker.arg("--secret-file").arg(secret);
            }
            worker.spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = tokio::task::spawn_blocking(move || {
        children.into_iter().map(|c| c.wait_with_output()).collect::<Result<Vec<_>, _>>()
    })
    .await??;
    let mut acknowledged = 0u64;
    for out in &outputs {
        anyhow::ensure!(out.status.success(), "an append-processes worker failed ({})", out.status);
        acknowledged += String::from_utf8_lossy(&out.stdout).trim().parse::<u64>()?;
    }
    // Hole-free: the log holds exactly positions 1..=head, and at least every acknowledged event.
    let (count, max, head): (i64, Option<i64>, i64) =
        sqlx::query_as("SELECT count(*), max(position), (SELECT position FROM log_head) FROM events")
            .fetch_one(shared.pool())
            .await?;
    anyhow::ensure!(
        max.unwrap_or(0) == head && count == head && count as u64 >= acknowledged,
        "the shared log is not dense: {count} events, highest position {max:?}, head {head}, {acknowledged} acknowledged"
    );
    drop(shared);
    drop_schemas(url, &[name]).await?;
    Ok(acknowledged as f64 / duration.as_secs_f64())
}

/// Rounds of `append-batch`. Whichever side runs second in a round was measured
/// 25-40 % slower than when it ran first (on this machine's disk, whichever the side),
/// so the rounds alternate which goes first (ours, raw; raw, ours; …) and the medians
/// are reported.
const BATCH_ROUNDS: usize = 4;

pub async fn batch(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    const S: &str = "append-batch";
    // As `serve` opens it: chained and sealing.
    let store = perfect21_events::store::open(&format!("sqlite://{}", scratch.file("ours.db").display())).await?;
    let raw_path = scratch.file("raw.db");
    let mut raw = Some(tokio::task::spawn_blocking(move || RawSqlite::open(&raw_path, 1)).await??);
    let round = duration / BATCH_ROUNDS as u32;
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for i in 0..BATCH_ROUNDS {
        for side in [i % 2, 1 - i % 2] {
            if side == 0 {
                ours.push(drive(store.clone(), 1, BATCH, round).await?.events_per_sec);
            } else {
                let mut writer = raw.take().expect("the raw writer is back after each round");
                let (writer, rate) = tokio::task::spawn_blocking(move || {
                    let rate = writer.run(round);
                    (writer, rate)
                })
                .await?;
                raw = Some(writer);
                base.push(rate?);
            }
        }
    }
    Ok(vec![Measurement::rate(S, "events_appended", super::median(&mut ours), super::median(&mut base), "events/s")])
}

/// Where the raw baselines put their rows: `streams` streams, row `i` in stream
/// `i % streams` at that stream's next version, so that the indexes see the same
/// key pattern as the measured appends (64 appenders: 64 streams growing side by side).
struct RawRows {
    streams: Vec<String>,
    versions: Vec<i64>,
    position: i64,
}

/// One raw row: (position, stream, stream version, event).
type RawRow<'a> = (i64, &'a str, i64, EventData);

impl RawRows {
    fn new(streams: usize) -> Self {
        RawRows {
            streams: (0..streams).map(|_| format!("bench-{}", Uuid::now_v7())).collect(),
            versions: vec![-1; streams],
            position: 0,
        }
    }

    fn next_batch(&mut self) -> Vec<RawRow<'_>> {
        let mut placed = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let i = self.position as usize % self.streams.len();
            self.position += 1;
            self.versions[i] += 1;
            placed.push((self.position, i, self.versions[i]));
        }
        placed.into_iter().map(|(p, i, v)| (p, self.streams[i].as_str(), v, sample_event())).collect()
    }
}

/// Baseline: the same rows, 100 per transaction, straight through rusqlite into
/// the same schema with the same durability settings, spread over `streams` streams.
fn raw_sqlite(path: &std::path::Path, streams: usize, duration: Duration) -> anyhow::Result<f64> {
    RawSqlite::open(path, streams)?.run(duration)
}

/// A raw writer of the baseline rows into a log file, which may run several times.
struct RawSqlite {
    conn: rusqlite::Connection,
    rows: RawRows,
}

impl RawSqlite {
    fn open(path: &std::path::Path, streams: usize) -> anyhow::Result<Self> {
        // Let the store create the file with its schema and pragmas, then write around it.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        drop(rt.block_on(SqliteStore::open(SqliteConfig::new(path)))?);
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        Ok(RawSqlite { conn, rows: RawRows::new(streams) })
    }

    /// Writes batches for `duration`; returns the rows written per second.
    fn run(&mut self, duration: Duration) -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut written = 0usize;
        while start.elapsed() < duration {
            let batch = self.rows.next_batch();
            let recorded_at = chrono::Utc::now().timestamp_micros();
            let tx = self.conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
                     recorded_at, metadata, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for (position, stream, version, e) in &batch {
                    insert.execute(rusqlite::params![
                        position,
                        e.event_id.as_bytes().as_slice(),
                        stream,
                        version,
                        e.event_type,
                        e.schema_version,
                        recorded_at,
                        e.metadata.encode(),
                        e.payload,
                    ])?;
                }
            }
            tx.commit()?;
            written += batch.len();
        }
        Ok(written as f64 / start.elapsed().as_secs_f64())
    }
}

pub async fn postgres(url: &str, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    const S: &str = "append-postgres";
    let pid = std::process::id();
    let ours_store = PostgresStore::connect(PostgresConfig::new(url).with_schema(format!("p21bench_ours_{pid}")))
        .await
        .context("connecting to PostgreSQL for append-postgres (set --postgres)")?;
    let ours = drive(Arc::new(ours_store), 1, BATCH, duration).await?;
    // The raw side writes into an identical table (same migrations, same indexes).
    let raw_store = PostgresStore::connect(PostgresConfig::new(url).with_schema(format!("p21bench_raw_{pid}"))).await?;
    let base = raw_postgres(raw_store.pool(), 1, duration).await?;
    drop(raw_store);
    drop_schemas(url, &["ours", "raw"]).await?;
    Ok(vec![Measurement::rate(S, "events_appended", ours.events_per_sec, base, "events/s")])
}

/// Baseline: the same rows, 100 per transaction, one batched `INSERT … UNNEST` through
/// sqlx, spread over `streams` streams.
async fn raw_postgres(pool: &sqlx::PgPool, streams: usize, duration: Duration) -> anyhow::Result<f64> {
    let mut rows = RawRows::new(streams);
    let start = Instant::now();
    let mut written = 0usize;
    while start.elapsed() < duration {
        let batch = rows.next_batch();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
             recorded_at, metadata, payload) SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], \
             $4::bigint[], $5::text[], $6::smallint[], $7::timestamptz[], $8::bytea[], $9::bytea[])",
        )
        .bind(batch.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|r| r.3.event_id).collect::<Vec<_>>())
        .bind(batch.iter().map(|r| r.1.to_string()).collect::<Vec<_>>())
        .bind(batch.iter().map(|r| r.2).collect::<Vec<_>>())
        .bind(batch.iter().map(|r| r.3.event_type.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(|r| r.3.schema_version as i16).collect::<Vec<_>>())
        .bind(vec![chrono::Utc::now(); batch.len()])
        .bind(batch.iter().map(|r| r.3.metadata.encode()).collect::<Vec<_>>())
        .bind(batch.iter().map(|r| r.3.payload.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        written += batch.len();
    }
    Ok(written as f64 / start.elapsed().as_secs_f64())
}

async fn drop_schemas(url: &str, names: &[&str]) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(url).await?;
    for name in names {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS p21bench_{name}_{} CASCADE", std::process::id()))
            .execute(&pool)
            .await?;
    }
    Ok(())
}
