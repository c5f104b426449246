//! What the broker tests share: the broker's address and a data directory the
//! test and the `perfect21` processes it starts both use.

#![allow(dead_code)] // each test binary uses its own part of this

pub mod serve;

use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::{Identity, IdentityConfig, LiveModels};
use perfect21_events::EventStore;
use std::sync::Arc;

pub fn amqp_url() -> String {
    std::env::var("PERFECT21_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A data directory with a server secret (shared with the processes a test starts,
/// e.g. the relay deriving verification tokens), its SQLite log, and identity
/// commands over it with cheap password hashing.
pub struct DataDir {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn EventStore>,
    pub id: Identity,
}

impl DataDir {
    pub async fn new(config: IdentityConfig) -> DataDir {
        let dir = tempfile::tempdir().unwrap();
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/secret.key"), key).unwrap();
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        let store = perfect21_events::store::open(&url).await.unwrap();
        // The broker tests log users in straight after registering them.
        let config = IdentityConfig { password_cost: PasswordCost::TEST, allow_unverified_login: true, ..config };
        let id = Identity::new(store.clone(), LiveModels::start(store.clone()), SecretBox::new(key), config).unwrap();
        DataDir { dir, store, id }
    }

    pub fn path(&self) -> String {
        self.dir.path().to_str().unwrap().to_string()
    }
}

/// A child process, killed (SIGKILL) when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
