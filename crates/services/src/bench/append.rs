//! Append benchmarks: group commit, batched appends, and the PostgreSQL store.

use super::{percentile, BenchArgs, Measurement, Scratch};
use anyhow::Context;
use perfect21_events::catalog::UserLoginSucceeded;
use perfect21_events::store::{PostgresConfig, PostgresStore, SqliteConfig, SqliteStore};
use perfect21_events::{Event, EventData, EventStore, ExpectedVersion, Metadata, StreamId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const APPENDERS: usize = 64;
const BATCH: usize = 100;

/// A representative event: a successful login with full request metadata.
fn sample_event() -> EventData {
    let user_id = Uuid::now_v7();
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

struct Run {
    events_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `tasks` appenders, each appending `per_append` events at a time to its own stream, for `duration`.
async fn drive(store: Arc<dyn EventStore>, tasks: usize, per_append: usize, duration: Duration) -> anyhow::Result<Run> {
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
    // The physical limit: the same rows, 100 per transaction, written raw into the same schema.
    let url = args.store.url();
    let raw = if url.starts_with("postgres") {
        let raw_store = PostgresStore::connect(
            PostgresConfig::new(&url).with_schema(format!("p21bench_raw_{}", std::process::id())),
        )
        .await?;
        let rate = raw_postgres(raw_store.pool(), duration).await?;
        drop(raw_store);
        drop_schemas(&url, &["grouped", "single", "raw"]).await?;
        rate
    } else {
        let raw_path = scratch.file("raw.db");
        tokio::task::spawn_blocking(move || raw_sqlite(&raw_path, duration)).await??
    };
    Ok(vec![
        Measurement::rate(S, "durable_appends", ours.events_per_sec, raw, "events/s"),
        Measurement::rate(S, "vs_commit_per_event", ours.events_per_sec, single.events_per_sec, "events/s"),
        Measurement::latency(S, "append_p50", ours.p50_us, single.p50_us, "us"),
        Measurement::latency(S, "append_p99", ours.p99_us, single.p99_us, "us"),
    ])
}

pub async fn batch(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    const S: &str = "append-batch";
    let store = Arc::new(SqliteStore::open(SqliteConfig::new(scratch.file("ours.db"))).await?);
    let ours = drive(store, 1, BATCH, duration).await?;
    let raw_path = scratch.file("raw.db");
    let base = tokio::task::spawn_blocking(move || raw_sqlite(&raw_path, duration)).await??;
    Ok(vec![Measurement::rate(S, "events_appended", ours.events_per_sec, base, "events/s")])
}

/// Baseline: the same rows, 100 per transaction, straight through rusqlite into
/// the same schema with the same durability settings.
fn raw_sqlite(path: &std::path::Path, duration: Duration) -> anyhow::Result<f64> {
    // Let the store create the file with its schema and pragmas, then write around it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    drop(rt.block_on(SqliteStore::open(SqliteConfig::new(path)))?);
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
    let stream = format!("bench-{}", Uuid::now_v7());
    let start = Instant::now();
    let (mut position, mut written) = (0i64, 0usize);
    while start.elapsed() < duration {
        let events = batch_of(BATCH);
        let recorded_at = chrono::Utc::now().timestamp_micros();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
                 recorded_at, metadata, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for e in &events {
                position += 1;
                insert.execute(rusqlite::params![
                    position,
                    e.event_id.as_bytes().as_slice(),
                    stream,
                    position - 1,
                    e.event_type,
                    e.schema_version,
                    recorded_at,
                    e.metadata.encode(),
                    e.payload,
                ])?;
            }
        }
        tx.commit()?;
        written += events.len();
    }
    Ok(written as f64 / start.elapsed().as_secs_f64())
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
    let base = raw_postgres(raw_store.pool(), duration).await?;
    drop(raw_store);
    drop_schemas(url, &["ours", "raw"]).await?;
    Ok(vec![Measurement::rate(S, "events_appended", ours.events_per_sec, base, "events/s")])
}

/// Baseline: the same rows, 100 per transaction, one batched `INSERT … UNNEST` through sqlx.
async fn raw_postgres(pool: &sqlx::PgPool, duration: Duration) -> anyhow::Result<f64> {
    let stream = format!("bench-{}", Uuid::now_v7());
    let start = Instant::now();
    let (mut position, mut written) = (0i64, 0usize);
    while start.elapsed() < duration {
        let events = batch_of(BATCH);
        let n = events.len() as i64;
        let positions: Vec<i64> = (position + 1..=position + n).collect();
        let versions = positions.iter().map(|p| p - 1).collect::<Vec<_>>();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
             recorded_at, metadata, payload) SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], \
             $4::bigint[], $5::text[], $6::smallint[], $7::timestamptz[], $8::bytea[], $9::bytea[])",
        )
        .bind(&positions)
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(vec![stream.clone(); events.len()])
        .bind(&versions)
        .bind(events.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.schema_version as i16).collect::<Vec<_>>())
        .bind(vec![chrono::Utc::now(); events.len()])
        .bind(events.iter().map(|e| e.metadata.encode()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        position += n;
        written += events.len();
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
