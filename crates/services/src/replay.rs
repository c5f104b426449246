//! `perfect21 replay`: rebuild every read model from position 1 and print a digest.

use crate::config::StoreArgs;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use perfect21_events::EventStore;
use perfect21_projections::ReadModels;
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
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let reader = tokio::spawn(async move {
        let mut from = 1;
        loop {
            let page = store.read_all(from, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok::<_, anyhow::Error>(());
            };
            from = last.position + 1;
            if tx.send(page).await.is_err() {
                return Ok(());
            }
        }
    });
    let mut models = ReadModels::default();
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

pub async fn run(store: StoreArgs, json: bool) -> anyhow::Result<()> {
    let store = store.open().await?;
    let head = store.head_position().await?;
    let progress = ProgressBar::with_draw_target(Some(head), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{spinner} replaying [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let r = rebuild(store, &progress).await?;
    progress.finish_and_clear();
    let digest = r.models.digest();
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
            })
        );
    } else {
        println!("replayed {} events up to position {} in {:.2} s", r.events, r.models.checkpoint(), r.seconds);
        println!("users    {}", r.models.users.len());
        if r.models.skipped_unknown() > 0 {
            println!("skipped  {} events of types this build does not know", r.models.skipped_unknown());
        }
        println!("digest   {digest}");
    }
    Ok(())
}
