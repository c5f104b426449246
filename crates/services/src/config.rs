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
    /// Event store URL: `sqlite://<file>`, `postgres://user@host/db` or (built with the
    /// `kafka` feature) `kafka://host:port/topic`, whose data keys default to
    /// `<data-dir>/<topic>.keys.db` (`?keys=` names another file or a `postgres://` URL).
    /// Default: `<data-dir>/events.db`.
    #[arg(long, env = "PERFECT21_STORE")]
    pub store: Option<String>,
}

impl StoreArgs {
    /// The store URL these options name.
    pub fn url(&self) -> String {
        match &self.store {
            Some(url) if url.starts_with("kafka://") && !has_option(url, "keys") => {
                let topic = url.split('/').nth(3).unwrap_or_default().split('?').next().unwrap_or_default();
                let keys = self.data_dir.join(format!("{topic}.keys.db"));
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}keys={}", keys.display())
            }
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("events.db").display()),
        }
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

fn has_option(url: &str, name: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| query.split('&').any(|kv| kv.split('=').next() == Some(name)))
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

/// The settings a config file's text holds, as (environment variable, value): TOML
/// with only the keys of [`FILE_KEYS`], each a string, integer or boolean.
fn settings(text: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    table
        .iter()
        .map(|(key, value)| {
            let Some((_, var)) = FILE_KEYS.iter().find(|(k, _)| k == key) else {
                let known: Vec<_> = FILE_KEYS.iter().map(|(k, _)| *k).collect();
                anyhow::bail!("unknown setting '{key}'; settings are {}", known.join(", "));
            };
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => anyhow::bail!("'{key}' must be a string, integer or boolean, not {}", other.type_str()),
            };
            Ok((*var, value))
        })
        .collect()
}

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
    for (var, value) in settings(&text).with_context(|| format!("config file {path}"))? {
        if std::env::var_os(var).is_none() {
            // SAFETY: called once at start-up, before any other thread exists.
            unsafe { std::env::set_var(var, value) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_file_sets_known_settings_and_names_what_is_wrong() {
        let set = settings("data_dir = \"/var/lib/p21\"\nsnapshot_every = 500\ndev = true").unwrap();
        assert_eq!(
            set,
            vec![
                ("PERFECT21_DATA_DIR", "/var/lib/p21".to_string()),
                ("PERFECT21_DEV", "true".to_string()),
                ("PERFECT21_SNAPSHOT_EVERY", "500".to_string()),
            ]
        );
        let err = settings("datadir = 1").unwrap_err().to_string();
        assert!(err.contains("unknown setting 'datadir'") && err.contains("data_dir"), "{err}");
        let err = settings("dev = [1]").unwrap_err().to_string();
        assert!(err.contains("'dev' must be a string, integer or boolean, not array"), "{err}");
        assert!(format!("{:#}", settings("dev = ").unwrap_err()).contains("not valid TOML"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any text is settings or a named refusal, never a panic.
        #[test]
        fn any_text_is_read_or_refused(text in "\\PC{0,200}") {
            let _ = settings(&text);
        }

        /// Files of the known keys with any scalar values read back what they say.
        #[test]
        fn known_keys_read_back(entries in prop::collection::btree_map(
            prop::sample::select(FILE_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>()),
            prop_oneof![any::<i64>().prop_map(|i| i.to_string()), "[a-zA-Z0-9 /:._-]{0,20}".prop_map(|s| format!("{s:?}"))],
            0..6,
        )) {
            let text: String = entries.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            let read = settings(&text).unwrap();
            prop_assert_eq!(read.len(), entries.len());
            for ((key, raw), (var, value)) in entries.iter().zip(&read) {
                let expected = FILE_KEYS.iter().find(|(k, _)| k == key).unwrap().1;
                prop_assert_eq!(*var, expected);
                prop_assert_eq!(value, &raw.trim_matches('"').to_string());
            }
        }
    }
}
