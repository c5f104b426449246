//! `perfect21 events …`: look at the log.

use crate::config::StoreArgs;
use perfect21_events::{subscribe_all, EventData, ExpectedVersion, Metadata, RecordedEvent, StreamId};
use serde_json::json;
use std::io::Write;

#[derive(clap::Subcommand)]
pub enum EventsCommand {
    /// Print events as JSON lines, payloads decoded.
    Tail {
        #[command(flatten)]
        store: StoreArgs,
        /// First position to print (positions start at 1).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep printing new events as they are committed.
        #[arg(long)]
        follow: bool,
        /// Only events whose type starts with this, e.g. `security.` or `user.login`.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Print payloads as recorded, hashes and sealed secrets included (operators only;
        /// by default payloads are shown in their public view).
        #[arg(long)]
        raw: bool,
    },
    /// Walk the log's hash chain and report the first position where it breaks (exit 1),
    /// or the last link, to record elsewhere: a rewrite of history changes it.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// First position to check; the link recorded just before it is trusted.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Print one JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Counts of the log: head position, events, streams, per event type, size.
    Stats {
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::Tail { store, from, follow, event_type, limit, raw } => {
            tail(store, from, follow, event_type, limit, raw).await
        }
        EventsCommand::Stats { store, json } => stats(store, json).await,
        EventsCommand::Verify { store, from, json } => verify(store, from, json).await,
    }
}

/// The JSON form of a recorded event, with the payload decoded (or why it could not be):
/// its public view, or with `raw` every field as recorded.
pub fn event_json(e: &RecordedEvent, raw: bool) -> serde_json::Value {
    let mut v = json!({
        "position": e.position,
        "event_id": e.event_id,
        "stream_id": e.stream_id,
        "stream_version": e.stream_version,
        "event_type": e.event_type,
        "schema_version": e.schema_version,
        "recorded_at": e.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "metadata": e.metadata,
    });
    match e.decode() {
        Ok(event) => v["payload"] = if raw { event.payload_json() } else { event.public_view() },
        Err(err) => {
            v["payload"] = serde_json::Value::Null;
            v["payload_error"] = json!(err.to_string());
        }
    }
    v
}

async fn tail(
    store: StoreArgs,
    from: u64,
    follow: bool,
    prefix: Option<String>,
    limit: Option<u64>,
    raw: bool,
) -> anyhow::Result<()> {
    let store = store.open_existing().await?;
    let head = store.head_position().await?;
    let mut sub = subscribe_all(store, from);
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    loop {
        if limit.is_some_and(|l| printed >= l) {
            break;
        }
        let event = if follow {
            sub.next().await?
        } else if sub.next_position() > head {
            break;
        } else {
            match sub.try_next().await? {
                Some(e) => e,
                None => break,
            }
        };
        if prefix.as_deref().is_some_and(|p| !event.event_type.starts_with(p)) {
            continue;
        }
        if writeln!(out, "{}", event_json(&event, raw)).is_err() {
            break; // the reader went away (e.g. `| head`)
        }
        if follow {
            let _ = out.flush();
        }
        printed += 1;
    }
    Ok(())
}

async fn verify(store: StoreArgs, from: u64, as_json: bool) -> anyhow::Result<()> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use perfect21_events::chain::{self, VerifyError};
    let store = store.open_existing().await?;
    let head = store.head_position().await?;
    let progress = ProgressBar::with_draw_target(Some(head), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("verifying {bar:40} {pos}/{len} events ({per_sec}, {eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let outcome = chain::verify(&*store, from, |p| progress.set_position(p)).await;
    progress.finish_and_clear();
    match outcome {
        Ok(v) => {
            if as_json {
                let report = json!({
                    "ok": true, "from": v.from, "through": v.through,
                    "last_link": chain::hex(&v.last_link), "redacted": v.redacted,
                });
                println!("{report}");
            } else {
                println!("chain verified: positions {}..={} ({} events)", v.from, v.through, v.through + 1 - v.from);
                println!("last link      {}", chain::hex(&v.last_link));
                if v.redacted > 0 {
                    println!("redacted       {} events rewritten in place by erasure, checked against the digests they were appended with", v.redacted);
                }
            }
            Ok(())
        }
        Err(VerifyError::Break(b)) => {
            if as_json {
                println!("{}", json!({"ok": false, "broken_at": b.position, "reason": b.reason}));
            }
            anyhow::bail!("{b}; every event from there on is unproven")
        }
        Err(e) => Err(e.into()),
    }
}

async fn stats(store: StoreArgs, as_json: bool) -> anyhow::Result<()> {
    let store = store.open_existing().await?;
    let stats = store.stats().await?;
    if as_json {
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(());
    }
    println!("backend        {}", stats.backend);
    println!("head position  {}", stats.head_position);
    println!("events         {}", stats.events);
    println!("streams        {}", stats.streams);
    if let Some(size) = stats.size_bytes {
        println!("size           {:.1} MiB", size as f64 / (1024.0 * 1024.0));
    }
    if !stats.by_type.is_empty() {
        println!();
        println!("{:<42} {:>7} {:>12}", "event type", "version", "events");
        for (t, v, n) in &stats.by_type {
            println!("{t:<42} {v:>7} {n:>12}");
        }
    }
    Ok(())
}

/// Appends `batch` events at a time from `writers` tasks until killed, printing
/// `<position> <event_id>` for every event of every acknowledged append. Crash tests kill
/// it with SIGKILL and check the log.
pub async fn append_forever(store: StoreArgs, writers: usize, batch: usize) -> anyhow::Result<()> {
    let store = store.open().await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for w in 0..writers {
        let (store, tx) = (store.clone(), tx.clone());
        tokio::spawn(async move {
            let shared = StreamId::of("crash", format!("{}-{w}", std::process::id())).expect("valid stream id");
            for n in 0u64.. {
                let stream = if batch == 1 {
                    shared.clone()
                } else {
                    StreamId::of("crash", format!("{}-{w}-{n}", std::process::id())).expect("valid stream id")
                };
                let data: Vec<EventData> = (0..batch)
                    .map(|_| {
                        let user_id = uuid::Uuid::now_v7();
                        let event =
                            perfect21_events::Event::UserEmailVerified(perfect21_events::catalog::UserEmailVerified {
                                user_id,
                            });
                        EventData::new(&event, Metadata::default()).expect("encodes")
                    })
                    .collect();
                let ids: Vec<uuid::Uuid> = data.iter().map(|d| d.event_id).collect();
                match store.append(&stream, ExpectedVersion::Any, data).await {
                    Ok(r) => {
                        for (i, id) in ids.into_iter().enumerate() {
                            if tx.send((r.first_position + i as u64, id)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => eprintln!("append failed: {e}"),
                }
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some((position, id)) = rx.recv().await {
        writeln!(out, "{position} {id}")?;
        out.flush()?;
    }
    Ok(())
}
