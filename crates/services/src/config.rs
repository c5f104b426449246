//! Where the event log lives: one typed set of options shared by every command.

use anyhow::Context;
use perfect21_events::EventStore;
use std::path::PathBuf;
use std::sync::Arc;

/// Options naming the event store.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Data directory of the embedded (SQLite) log.
    #[arg(long, env = "PERFECT21_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Event store URL: `sqlite://<file>` or `postgres://user@host/db`. Default: `<data-dir>/events.db`.
    #[arg(long, env = "PERFECT21_STORE")]
    pub store: Option<String>,
}

impl StoreArgs {
    /// The store URL these options name.
    pub fn url(&self) -> String {
        self.store.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("events.db").display()))
    }

    pub async fn open(&self) -> anyhow::Result<Arc<dyn EventStore>> {
        let url = self.url();
        perfect21_events::store::open(&url).await.with_context(|| "opening the event log")
    }
}
