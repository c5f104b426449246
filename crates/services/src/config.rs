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

    /// Opens a log that must already exist, for commands that only read: a missing
    /// SQLite file is an error naming it, and nothing is created.
    pub async fn open_existing(&self) -> anyhow::Result<Arc<dyn EventStore>> {
        let url = self.url();
        if let Some(path) = url.strip_prefix("sqlite://") {
            anyhow::ensure!(
                std::path::Path::new(path).exists(),
                "no event log at {path}: start `perfect21 serve` there first, or name another with --data-dir or --store"
            );
        }
        self.open().await
    }
}

/// Settings a config file may hold, and the environment variable each one feeds.
const FILE_KEYS: &[(&str, &str)] = &[
    ("data_dir", "PERFECT21_DATA_DIR"),
    ("store", "PERFECT21_STORE"),
    ("grpc_addr", "PERFECT21_GRPC_ADDR"),
    ("http_addr", "PERFECT21_HTTP_ADDR"),
    ("keys_dir", "PERFECT21_KEYS_DIR"),
    ("snapshot_every", "PERFECT21_SNAPSHOT_EVERY"),
    ("dev", "PERFECT21_DEV"),
    ("only", "PERFECT21_ONLY"),
];

/// Reads the TOML config file named by `--config FILE` or `PERFECT21_CONFIG`, if any.
/// Precedence: flags, then environment variables, then the file, then defaults — the
/// file's values become environment variables only where none is set.
pub fn apply_config_file(args: &[String]) -> anyhow::Result<()> {
    let from_flag = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| args.iter().find_map(|a| a.strip_prefix("--config=").map(String::from)));
    let Some(path) = from_flag.or_else(|| std::env::var("PERFECT21_CONFIG").ok()) else { return Ok(()) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {path}"))?;
    let table: toml::Table = text.parse().with_context(|| format!("config file {path} is not valid TOML"))?;
    for (key, value) in &table {
        let Some((_, var)) = FILE_KEYS.iter().find(|(k, _)| k == key) else {
            let known: Vec<_> = FILE_KEYS.iter().map(|(k, _)| *k).collect();
            anyhow::bail!("config file {path}: unknown setting '{key}'; settings are {}", known.join(", "));
        };
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => anyhow::bail!(
                "config file {path}: '{key}' must be a string, integer or boolean, not {}",
                other.type_str()
            ),
        };
        if std::env::var_os(var).is_none() {
            // SAFETY: called once at start-up, before any other thread exists.
            unsafe { std::env::set_var(var, value) };
        }
    }
    Ok(())
}
