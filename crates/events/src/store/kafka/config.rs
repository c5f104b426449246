//! How to open a [`KafkaStore`](super::KafkaStore): the URL and what it may say.

use crate::error::StoreError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which part this instance plays for its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Forward to the writer the log names if it answers, else become the writer.
    Auto,
    /// Become the log's writer, fencing any other.
    Writer,
    /// Never write: forward every append to the writer the log names.
    Forwarder,
}

/// How to open a [`KafkaStore`](super::KafkaStore). Its `Debug` form leaves the
/// forwarding secret out.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]` of the brokers.
    pub bootstrap: String,
    /// The log's topic: one partition, so that its order is the log's.
    pub topic: String,
    /// Replication factor the topic must have (and is created with).
    pub replication_factor: i32,
    /// `min.insync.replicas` the topic must have (and is created with).
    pub min_insync_replicas: i32,
    pub role: Role,
    /// Where a writer takes forwarded appends.
    pub listen: SocketAddr,
    /// The address forwarders dial (default: the address `listen` bound).
    pub advertise: Option<String>,
    /// The secret writer and forwarders prove to each other (at least 32 bytes);
    /// without one, this instance neither takes nor forwards appends.
    pub forward_secret: Option<Vec<u8>>,
    /// Where subjects' data keys live when opened through [`crate::store::open`]: a
    /// SQLite file, or a `postgres://` URL (the key store must be able to delete).
    pub keys: Option<String>,
    /// How long a broker operation may take before the store calls itself unavailable.
    pub timeout: Duration,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap", &self.bootstrap)
            .field("topic", &self.topic)
            .field("replication_factor", &self.replication_factor)
            .field("min_insync_replicas", &self.min_insync_replicas)
            .field("role", &self.role)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("forward_secret", &self.forward_secret.as_ref().map(|_| "<redacted>"))
            .field("keys", &self.keys)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The shortest forwarding secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

impl KafkaConfig {
    pub fn new(bootstrap: impl Into<String>, topic: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap: bootstrap.into(),
            topic: topic.into(),
            replication_factor: 1,
            min_insync_replicas: 1,
            role: Role::Auto,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            forward_secret: None,
            keys: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Parses `kafka://host:port[,host:port…]/topic[?option=value&…]`. Options:
    /// `replication`, `min_insync`, `role` (`auto`, `writer`, `forwarder`), `listen`,
    /// `advertise`, `secret_file` (a file holding the forwarding secret), `keys`.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl { url: url.into(), reason };
        let rest = url.strip_prefix("kafka://").ok_or_else(|| invalid("expected kafka://host:port/topic".into()))?;
        let (bootstrap, rest) =
            rest.split_once('/').ok_or_else(|| invalid("no topic: expected kafka://host:port/topic".into()))?;
        let (topic, query) = rest.split_once('?').unwrap_or((rest, ""));
        if bootstrap.is_empty() || bootstrap.split(',').any(|b| b.rsplit_once(':').is_none_or(|(h, _)| h.is_empty())) {
            return Err(invalid(format!("brokers '{bootstrap}' are not host:port[,host:port…]")));
        }
        validate_topic(topic).map_err(&invalid)?;
        let mut config = KafkaConfig::new(bootstrap, topic);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let number = |what: &str| -> Result<i32, StoreError> {
                value
                    .parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid(format!("{what} '{value}' is not a whole number of at least 1")))
            };
            match &*key {
                "replication" => config.replication_factor = number("replication")?,
                "min_insync" => config.min_insync_replicas = number("min_insync")?,
                "role" => {
                    config.role = match &*value {
                        "auto" => Role::Auto,
                        "writer" => Role::Writer,
                        "forwarder" => Role::Forwarder,
                        other => return Err(invalid(format!("role '{other}': expected auto, writer or forwarder"))),
                    }
                }
                "listen" => {
                    config.listen =
                        value.parse().map_err(|_| invalid(format!("listen '{value}' is not an ip:port address")))?
                }
                "advertise" => config.advertise = Some(value.into_owned()),
                "keys" => config.keys = Some(value.into_owned()),
                "secret_file" => {
                    let path = PathBuf::from(&*value);
                    let secret = std::fs::read(&path)
                        .map_err(|e| invalid(format!("cannot read the forwarding secret {}: {e}", path.display())))?;
                    config.forward_secret = Some(secret);
                }
                other => {
                    return Err(invalid(format!(
                        "unknown option '{other}' (known: replication, min_insync, role, listen, advertise, secret_file, keys)"
                    )))
                }
            }
        }
        if config.min_insync_replicas > config.replication_factor {
            return Err(invalid(format!(
                "min_insync={} is more than replication={}: no append could ever be acknowledged",
                config.min_insync_replicas, config.replication_factor
            )));
        }
        if let Some(secret) = &config.forward_secret {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(invalid(format!(
                    "the forwarding secret is {} bytes, fewer than {MIN_SECRET_BYTES}",
                    secret.len()
                )));
            }
        }
        Ok(config)
    }
}

fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 || topic == "." || topic == ".." {
        return Err(format!("topic '{topic}' must be 1 to 249 characters"));
    }
    if !topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(format!("topic '{topic}' may only hold [a-zA-Z0-9._-]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_brokers_topic_and_options_and_bad_ones_say_what_is_wrong() {
        let c = KafkaConfig::from_url("kafka://a:9092,b:9093/perfect21.log?replication=3&min_insync=2&role=writer")
            .unwrap();
        assert_eq!((c.bootstrap.as_str(), c.topic.as_str()), ("a:9092,b:9093", "perfect21.log"));
        assert_eq!((c.replication_factor, c.min_insync_replicas, c.role), (3, 2, Role::Writer));
        let c = KafkaConfig::from_url("kafka://127.0.0.1:19092/log").unwrap();
        assert_eq!((c.replication_factor, c.min_insync_replicas, c.role), (1, 1, Role::Auto));
        for (bad, says) in [
            ("kafka://127.0.0.1:19092", "no topic"),
            ("kafka:///log", "brokers"),
            ("kafka://host/log", "brokers"),
            ("kafka://h:1/bad topic", "may only hold"),
            ("kafka://h:1/log?replication=0", "at least 1"),
            ("kafka://h:1/log?min_insync=2", "more than replication"),
            ("kafka://h:1/log?role=leader", "expected auto, writer or forwarder"),
            ("kafka://h:1/log?listen=nowhere", "ip:port"),
            ("kafka://h:1/log?colour=red", "unknown option 'colour'"),
            ("kafka://h:1/log?secret_file=/nonexistent/secret", "cannot read the forwarding secret"),
        ] {
            let err = KafkaConfig::from_url(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_debug_form_leaves_the_forwarding_secret_out() {
        let mut c = KafkaConfig::new("h:1", "log");
        c.forward_secret = Some(b"0123456789abcdef0123456789abcdef-very-secret".to_vec());
        let shown = format!("{c:?}");
        assert!(shown.contains("<redacted>") && !shown.contains("very-secret") && !shown.contains("48, 49"), "{shown}");
    }
}
