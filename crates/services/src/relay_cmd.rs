//! `perfect21 relay`: the relay alone, over the app `serve` would open.

use perfect21_relay::{run, RelayStatus};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// `perfect21 relay`: only the relay, reporting its lag every ten seconds.
pub async fn run_alone(args: crate::server::ServeArgs) -> anyhow::Result<()> {
    let configs = args.relays();
    anyhow::ensure!(
        !configs.is_empty(),
        "the relay needs a broker: --amqp-url (PERFECT21_AMQP_URL) or --kafka-brokers (PERFECT21_KAFKA_BROKERS)"
    );
    let app = crate::server::open_app(&args).await?;
    let store = app.identity.store().clone();
    let mut relays = tokio::task::JoinSet::new();
    let mut reporters = Vec::new();
    for config in configs {
        let status = Arc::new(RelayStatus::default());
        let sink = config.sink.kind();
        reporters.push({
            let (store, status) = (store.clone(), status.clone());
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tick.tick().await;
                    if status.standby.load(Ordering::Relaxed) {
                        tracing::info!(sink, "relay on standby");
                        continue;
                    }
                    let head = store.head_position().await.unwrap_or(0);
                    let confirmed = status.confirmed.load(Ordering::Relaxed);
                    tracing::info!(
                        sink,
                        confirmed,
                        head,
                        lag = head.saturating_sub(confirmed),
                        reconnects = status.reconnects.load(Ordering::Relaxed),
                        "relay progress"
                    );
                }
            }))
        });
        relays.spawn(run(config, store.clone(), app.identity.live().clone(), app.identity.secrets().clone(), status));
    }
    tokio::select! {
        Some(r) = relays.join_next() => r?,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
