//! Replay and read-model memory benchmarks.

use super::{Measurement, Scratch};
use crate::replay::rebuild;
use indicatif::ProgressBar;
use perfect21_events::catalog::*;
use perfect21_events::{Event, EventData, EventStore, ExpectedVersion, Metadata, RecordedEvent, StreamId};
use perfect21_projections::ReadModels;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// The life of one user in ten events: registration to logout, with a role and a failed login.
fn user_life(user_id: Uuid) -> (Vec<Event>, Uuid, Vec<Event>) {
    let session_id = Uuid::now_v7();
    let user = vec![
        UserRegistered {
            user_id,
            email: format!("{}@example.com", user_id.simple()),
            username: format!("u{}", user_id.simple()),
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            phone_number: None,
            locale: "en".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo".into(),
            verification_token_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            verification_expires_at: 1_767_225_600,
        }
        .into(),
        UserEmailVerified { user_id }.into(),
        UserStatusChanged {
            user_id,
            from: UserStatus::PendingVerification,
            to: UserStatus::Active,
            reason: "email verified".into(),
        }
        .into(),
        RoleAssigned { user_id, role_id: "member".into(), expires_at: None }.into(),
        UserLoginFailed { user_id, reason: "bad_password".into(), failure_count: 1, risk_score: 0.2 }.into(),
        UserLoginSucceeded { user_id, session_id, mfa_used: false, risk_score: 0.1, device_id: None, totp_step: None }
            .into(),
        UserLoggedOut { user_id, session_id }.into(),
    ];
    let session = vec![
        SessionStarted {
            session_id,
            user_id,
            refresh_token_hash: format!("r1{}", session_id.simple()),
            access_jti: "j1".into(),
            expires_at: 1_767_225_600,
            device_id: None,
        }
        .into(),
        SessionRefreshed {
            session_id,
            user_id,
            previous_token_hash: format!("r1{}", session_id.simple()),
            refresh_token_hash: format!("r2{}", session_id.simple()),
            access_jti: "j2".into(),
            expires_at: 1_767_229_200,
        }
        .into(),
        SessionRevoked { session_id, user_id, reason: "logout".into() }.into(),
    ];
    (user, session_id, session)
}

fn meta() -> Metadata {
    Metadata {
        correlation_id: Some(Uuid::now_v7()),
        source_service: Some("auth".into()),
        client_ip: Some("203.0.113.7".into()),
        user_agent: Some("Mozilla/5.0".into()),
        ..Metadata::default()
    }
}

/// Fills `store` with about `events` events (ten per user) from several concurrent writers.
pub(crate) async fn populate(store: Arc<dyn EventStore>, events: u64) -> anyhow::Result<()> {
    let users = events.div_ceil(10);
    let writers = 8;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in (w..users).step_by(writers as usize) {
                    let user_id = Uuid::now_v7();
                    let (user, session_id, session) = user_life(user_id);
                    let encode = |events: Vec<Event>| -> Vec<EventData> {
                        events.iter().map(|e| EventData::new(e, meta()).expect("encodes")).collect()
                    };
                    store.append(&StreamId::of("user", user_id)?, ExpectedVersion::NoStream, encode(user)).await?;
                    store
                        .append(&StreamId::of("session", session_id)?, ExpectedVersion::NoStream, encode(session))
                        .await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Rounds of `replay`: each side runs once per round. Five, so that a second of the
/// machine's own slowness during one round moves neither median.
const REPLAY_ROUNDS: usize = 5;

pub async fn replay(scratch: &Scratch, events: u64) -> anyhow::Result<Vec<Measurement>> {
    const S: &str = "replay";
    let path = scratch.file("replay.db");
    // As `serve` opens it: chained and sealing.
    let url = format!("sqlite://{}", path.display());
    let store = perfect21_events::store::open(&url).await?;
    eprintln!("writing {events} events to a scratch log…");
    populate(store.clone(), events).await?;
    drop(store);
    // The kernel writes the new log back to disk for seconds after: let it finish, so
    // that neither side below is measured while it competes for the processors.
    let files = scratch.files()?;
    tokio::task::spawn_blocking(move || files.iter().try_for_each(|f| std::fs::File::open(f)?.sync_all())).await??;
    // Both sides are timed several times, each first in turn, and their medians compared:
    // on a shared machine the same scan was measured 0.7 s and 1.2 s minutes apart.
    eprintln!("replaying it and scanning it, {REPLAY_ROUNDS} times each…");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let mut folded = 0;
    for round in 0..REPLAY_ROUNDS {
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                // Replayed as after a restart: a fresh instance, no key in memory yet.
                let store = perfect21_events::store::open(&url).await?;
                let replayed = rebuild(store, &ProgressBar::hidden()).await?;
                folded = replayed.events;
                ours.push(replayed.seconds);
            } else {
                let path = path.clone();
                let (rows, seconds) = tokio::task::spawn_blocking(move || raw_scan(&path)).await??;
                anyhow::ensure!(
                    rows == folded || folded == 0,
                    "the raw scan read {rows} rows, the replay {folded} events"
                );
                base.push(seconds);
            }
        }
    }
    let (ours_seconds, base_seconds) = (super::median(&mut ours), super::median(&mut base));
    let ours_rate = folded as f64 / ours_seconds;
    Ok(vec![
        Measurement::rate(S, "events_folded", ours_rate, folded as f64 / base_seconds, "events/s"),
        Measurement::latency(S, "seconds_for_log", ours_seconds, base_seconds, "s"),
    ])
}

/// Baseline: read every row and touch every column, decoding nothing.
fn raw_scan(path: &std::path::Path) -> anyhow::Result<(u64, f64)> {
    // Opened as the store opens its readers: read-only, without SQLite's connection mutex
    // (one thread uses it), which would otherwise be taken for every column read.
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    let start = Instant::now();
    let mut stmt = conn.prepare(
        "SELECT position, event_id, stream_id, stream_version, event_type, schema_version, recorded_at, metadata, payload \
         FROM events ORDER BY position",
    )?;
    let mut rows = stmt.query([])?;
    let (mut n, mut bytes) = (0u64, 0usize);
    while let Some(row) = rows.next()? {
        for i in 0..9 {
            bytes += match row.get_ref(i)? {
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b.len(),
                _ => 8,
            };
        }
        n += 1;
    }
    std::hint::black_box(bytes);
    Ok((n, start.elapsed().as_secs_f64()))
}

/// Resident memory of this process, in bytes.
fn rss() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("bad /proc/self/statm"))?.parse()?;
    Ok(pages * 4096)
}

/// Budget per user in the read models (docs/benchmarks.md).
const BYTES_PER_USER_BUDGET: f64 = 1024.0;

pub async fn memory(users: u64) -> anyhow::Result<Vec<Measurement>> {
    const S: &str = "memory";
    let before = rss()?;
    let mut models = ReadModels::default();
    let mut position = 0;
    for _ in 0..users {
        let (events, _, session) = user_life(Uuid::now_v7());
        for event in events.into_iter().chain(session) {
            position += 1;
            let recorded = RecordedEvent {
                event_id: Uuid::now_v7(),
                stream_id: String::new(),
                stream_version: 0,
                position,
                event_type: event.event_type().into(),
                schema_version: event.schema_version(),
                recorded_at: chrono::Utc::now(),
                metadata: meta(),
                payload: event.encode_payload()?,
            };
            models.apply(&recorded)?;
        }
    }
    let per_user = rss()?.saturating_sub(before) as f64 / users as f64;
    std::hint::black_box(&models);
    Ok(vec![Measurement::latency(S, "read_model_bytes_per_user", per_user, BYTES_PER_USER_BUDGET, "bytes")])
}
