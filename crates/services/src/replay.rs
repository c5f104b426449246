//! `perfect21 replay`: rebuild every read model from position 1 and print a digest.

use crate::config::StoreArgs;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use perfect21_domain::live::load_snapshot;
use perfect21_events::EventStore;
use perfect21_projections::ReadModels;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Events read per page while replaying.
const PAGE: usize = 10_000;

/// What a replay produced.
pub struct Replayed {
    pub models: ReadModels,
    pub events: u64,
    pub seconds: f64,
}

/// Folds the whole log into fresh read models. Reading runs ahead of folding
/// (a few pages in flight), so I/O and decoding overlap.
pub async fn rebuild(store: Arc<dyn EventStore>, progress: &ProgressBar) -> anyhow::Result<Replayed> {
    fold_into(store, ReadModels::default(), u64::MAX, progress).await
}

/// Folds the events after `models`' checkpoint, up to position `upto`, into `models`.
pub async fn fold_into(
    store: Arc<dyn EventStore>,
    mut models: ReadModels,
    upto: u64,
    progress: &ProgressBar,
) -> anyhow::Result<Replayed> {
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let mut from = models.checkpoint() + 1;
    let reader = tokio::spawn(async move {
        while from <= upto {
            let want = usize::try_from(upto - from + 1).unwrap_or(PAGE).min(PAGE);
            let page = store.read_all(from, want).await?;
            let Some(last) = page.last() else {
                return Ok::<_, anyhow::Error>(());
            };
            from = last.position + 1;
            if tx.send(page).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    });
    let mut events = 0u64;
    while let Some(page) = rx.recv().await {
        for e in &page {
            models.apply(e).with_context(|| format!("folding position {}", e.position))?;
        }
        events += page.len() as u64;
        progress.set_position(models.checkpoint());
    }
    reader.await??;
    Ok(Replayed { models, events, seconds: start.elapsed().as_secs_f64() })
}

/// Options of `perfect21 replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Also start from the snapshot (as a serving process would) plus catch-up, and check
    /// that it gives the same digest as the full replay. Exit status: 0 the same, 1 a
    /// mismatch (the state is not reproducible), 3 no snapshot to compare with.
    #[arg(long)]
    pub verify: bool,
    /// Save the rebuilt read models as the snapshot, so that the next start-up is fast.
    #[arg(long)]
    pub write_snapshot: bool,
    /// Snapshot file. Default: `<data-dir>/snapshots/read-models.snap`.
    #[arg(long)]
    pub snapshot: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let snapshot = args.snapshot.clone().unwrap_or_else(|| args.store.data_dir.join("snapshots/read-models.snap"));
    let json = args.json;
    let store = if args.write_snapshot { args.store.open().await? } else { args.store.open_existing().await? };
    let head = store.head_position().await?;
    let progress = ProgressBar::with_draw_target(Some(head), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{spinner} replaying [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let r = fold_into(store.clone(), ReadModels::default(), head, &progress).await?;
    progress.finish_and_clear();
    let digest = r.models.digest();
    let verified = if args.verify { Some(verify(store.clone(), &snapshot, head, &digest).await?) } else { None };
    if args.write_snapshot {
        let anchor = store.read_all(head, 1).await?.first().map(|e| e.event_id);
        perfect21_domain::live::write_atomically(&snapshot, &r.models.to_snapshot(anchor))
            .with_context(|| format!("writing {}", snapshot.display()))?;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "position": r.models.checkpoint(),
                "events": r.events,
                "users": r.models.users.len(),
                "skipped_unknown": r.models.skipped_unknown(),
                "seconds": r.seconds,
                "digest": digest,
                "verified": verified.as_ref().and_then(|v| match v {
                    Verdict::Same(_) => Some(true),
                    Verdict::Differs(_) => Some(false),
                    Verdict::NoSnapshot(_) => None,
                }),
                "verify_detail": verified.as_ref().map(Verdict::detail),
            })
        );
    } else {
        println!("replayed {} events up to position {} in {:.2} s", r.events, r.models.checkpoint(), r.seconds);
        println!("users    {}", r.models.users.len());
        if r.models.skipped_unknown() > 0 {
            println!("skipped  {} events of types this build does not know", r.models.skipped_unknown());
        }
        println!("digest   {digest}");
        match &verified {
            Some(Verdict::Same(detail)) => println!("verify   ok: {detail}"),
            Some(Verdict::Differs(detail)) => println!("verify   MISMATCH: {detail}"),
            Some(Verdict::NoSnapshot(detail)) => println!("verify   nothing to compare: {detail}"),
            None => {}
        }
        if args.write_snapshot {
            println!("snapshot {}", snapshot.display());
        }
    }
    match verified {
        Some(Verdict::Differs(_)) => std::process::exit(1),
        Some(Verdict::NoSnapshot(_)) => std::process::exit(3),
        _ => Ok(()),
    }
}

/// The outcome of `--verify`.
pub(crate) enum Verdict {
    /// Snapshot + catch-up gives the full replay's digest.
    Same(String),
    /// It does not: the state is not reproducible.
    Differs(String),
    /// There is no usable snapshot to compare with (not an error of the state).
    NoSnapshot(String),
}

impl Verdict {
    fn detail(&self) -> String {
        match self {
            Verdict::Same(d) | Verdict::Differs(d) | Verdict::NoSnapshot(d) => d.clone(),
        }
    }
}

/// Snapshot + catch-up, compared with the full replay's digest at the same head.
pub(crate) async fn verify(
    store: Arc<dyn EventStore>,
    path: &Path,
    head: u64,
    digest: &str,
) -> anyhow::Result<Verdict> {
    let Some((models, _)) = load_snapshot(store.as_ref(), path).await else {
        return Ok(Verdict::NoSnapshot(format!(
            "no usable snapshot at {} (a serving process writes one; or run replay --write-snapshot)",
            path.display()
        )));
    };
    let at = models.checkpoint();
    let caught_up = fold_into(store, models, head, &ProgressBar::hidden()).await?;
    let other = caught_up.models.digest();
    Ok(if other == digest {
        Verdict::Same(format!(
            "snapshot at position {at} + catch-up of {} events gives the same digest",
            caught_up.events
        ))
    } else {
        Verdict::Differs(format!("snapshot at position {at} + catch-up gives {other}"))
    })
}
