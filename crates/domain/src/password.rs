//! argon2id hashing on a bounded blocking pool, never on the async workers.

use crate::error::{DomainError, Result};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl PasswordCost {
    /// OWASP's recommendation for argon2id: 19 MiB, 2 iterations, 1 lane.
    pub const OWASP: PasswordCost = PasswordCost { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };
    /// Cheap parameters for tests only.
    pub const TEST: PasswordCost = PasswordCost { memory_kib: 64, iterations: 1, parallelism: 1 };
}

/// Hashes and verifies passwords; at most `workers` at a time, each on a blocking thread.
#[derive(Clone)]
pub struct Passwords {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// A hash of a random password: verified against when the user is unknown, so that
    /// an unknown user costs the same time as a known one.
    dummy: Arc<str>,
}

/// Shortest and longest accepted passwords, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 256;

impl Passwords {
    pub fn new(cost: PasswordCost, workers: usize) -> Result<Self> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| DomainError::Internal(format!("argon2 parameters {cost:?}: {e}")))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let dummy = argon
            .hash_password(crate::secrets::random_token().as_bytes(), &salt)
            .map_err(|e| DomainError::Internal(e.to_string()))?
            .to_string();
        Ok(Passwords { argon, permits: Arc::new(Semaphore::new(workers.max(1))), dummy: dummy.into() })
    }

    /// Checks length rules; the error names them.
    pub fn validate(password: &str) -> Result<()> {
        let n = password.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
            return Err(DomainError::InvalidArgument {
                field: "password",
                reason: format!("must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters, got {n}"),
            });
        }
        Ok(())
    }

    /// The argon2id PHC string of `password`.
    pub async fn hash(&self, password: String) -> Result<String> {
        let argon = self.argon.clone();
        self.blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon.hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
        })
        .await
    }

    /// Whether `password` matches `phc`; with `None` it checks against a dummy hash
    /// (same cost) and answers false.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool> {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.to_string());
        let argon = self.argon.clone();
        let ok = self
            .blocking(move || {
                let parsed = PasswordHash::new(&phc).map_err(|e| e.to_string())?;
                Ok(argon.verify_password(password.as_bytes(), &parsed).is_ok())
            })
            .await?;
        Ok(ok && known)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::result::Result<T, String> + Send + 'static,
    ) -> Result<T> {
        let _permit = self.permits.acquire().await.map_err(|e| DomainError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| DomainError::Internal(e.to_string()))?
            .map_err(DomainError::Internal)
    }
}
