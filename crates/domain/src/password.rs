//! argon2id hashing on a bounded blocking pool, never on the async workers.

use crate::error::{DomainError, Result};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;

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

/// Hashes and verifies passwords on `workers` dedicated threads, never on the
/// async workers. Each thread keeps its argon2 memory (19 MiB with OWASP
/// parameters) between jobs instead of asking the allocator (and the kernel,
/// page by page) for it every time.
#[derive(Clone)]
pub struct Passwords {
    jobs: tokio::sync::mpsc::Sender<Job>,
    /// A hash of a random password: verified against when the user is unknown, so that
    /// an unknown user costs the same time as a known one.
    dummy: Arc<str>,
}

type Reply<T> = tokio::sync::oneshot::Sender<std::result::Result<T, String>>;

enum Job {
    Hash(String, Reply<String>),
    Verify(String, String, Reply<bool>),
}

/// Shortest and longest accepted passwords, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 256;

/// One worker: its argon2 instance and the memory it reuses.
struct Worker {
    argon: Argon2<'static>,
    blocks: Vec<argon2::Block>,
}

impl Worker {
    fn hash(&mut self, password: &str) -> std::result::Result<String, String> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon.hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
    }

    fn verify(&mut self, password: &str, phc: &str) -> std::result::Result<bool, String> {
        let parsed = PasswordHash::new(phc).map_err(|e| format!("stored hash: {e}"))?;
        if parsed.algorithm != argon2::ARGON2ID_IDENT {
            // Not ours to speed up; the crate's own path handles it.
            return Ok(self.argon.verify_password(password.as_bytes(), &parsed).is_ok());
        }
        let params = Params::try_from(&parsed).map_err(|e| format!("stored hash parameters: {e}"))?;
        let expected = parsed.hash.ok_or("stored hash has no output")?;
        let mut salt = [0u8; 64];
        let salt = parsed.salt.ok_or("stored hash has no salt")?.decode_b64(&mut salt).map_err(|e| e.to_string())?;
        let version = parsed.version.map(Version::try_from).transpose().map_err(|e| e.to_string())?;
        let argon = Argon2::new(Algorithm::Argon2id, version.unwrap_or(Version::V0x13), params.clone());
        if self.blocks.len() < params.block_count() {
            self.blocks.resize(params.block_count(), argon2::Block::default());
        }
        let mut out = vec![0u8; expected.len()];
        argon
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt,
                &mut out,
                &mut self.blocks[..params.block_count()],
            )
            .map_err(|e| e.to_string())?;
        Ok(crate::secrets::constant_time_eq_bytes(expected.as_bytes(), &out))
    }
}

/// Runs this thread in Linux's idle scheduling class (`SCHED_IDLE`): argon2id is meant
/// to be slow, and a login flood must not take the CPU from token validation and
/// permission checks. A thread of the idle class gives way the moment a normal thread
/// wakes (a niced thread does not: it keeps the CPU for the rest of its time slice,
/// which showed as milliseconds added to validation p99 during a flood). When nothing
/// else wants the CPU the workers still get all of it; under a load of other requests
/// that saturates every core, logins slow down first. Where the class cannot be set,
/// nice 10.
fn lower_priority() {
    // SAFETY: sched_setscheduler and setpriority on the calling thread have no memory
    // effects; failure only leaves the scheduling as it was.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        }
    }
}

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
        // A short queue: callers wait (asynchronously) rather than pile up work.
        let (jobs, rx) = tokio::sync::mpsc::channel::<Job>(workers.max(1) * 4);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let mut worker = Worker { argon: argon.clone(), blocks: Vec::new() };
            std::thread::Builder::new()
                .name(format!("perfect21-argon2-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = match rx.lock() {
                            Ok(mut rx) => rx.blocking_recv(),
                            Err(_) => return,
                        };
                        match job {
                            Some(Job::Hash(password, reply)) => drop(reply.send(worker.hash(&password))),
                            Some(Job::Verify(password, phc, reply)) => drop(reply.send(worker.verify(&password, &phc))),
                            // Every Passwords handle is gone.
                            None => return,
                        }
                    }
                })
                .map_err(|e| DomainError::Internal(format!("cannot start password worker: {e}")))?;
        }
        Ok(Passwords { jobs, dummy: dummy.into() })
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
        self.run(|reply| Job::Hash(password, reply)).await
    }

    /// Whether `password` matches `phc`; with `None` it checks against a dummy hash
    /// (same cost) and answers false.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool> {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.to_string());
        let ok = self.run(|reply| Job::Verify(password, phc, reply)).await?;
        Ok(ok && known)
    }

    async fn run<T: Send + 'static>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        // A short, bounded queue: callers wait for room without blocking an async worker.
        self.jobs.send(job(reply)).await.map_err(|_| DomainError::Internal("password workers stopped".into()))?;
        answer
            .await
            .map_err(|_| DomainError::Internal("password worker stopped".into()))?
            .map_err(DomainError::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of this process's threads named `name`.
    fn policies_of(name: &str) -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .expect("procfs")
            .filter_map(|t| t.ok())
            .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
            .filter_map(|t| t.file_name().to_str()?.parse::<libc::pid_t>().ok())
            // SAFETY: sched_getscheduler only reads the policy of a thread id.
            .map(|tid| unsafe { libc::sched_getscheduler(tid) })
            .collect()
    }

    #[tokio::test]
    async fn hashing_runs_in_the_idle_class_and_still_completes() {
        let passwords = Passwords::new(PasswordCost::TEST, 1).unwrap();
        let phc = passwords.hash("correct horse battery".into()).await.unwrap();
        assert!(passwords.verify("correct horse battery".into(), Some(phc)).await.unwrap());
        // Thread names are cut to 15 bytes by the kernel.
        let policies = policies_of("perfect21-argon");
        assert!(!policies.is_empty(), "the worker thread is found");
        assert!(policies.iter().all(|p| *p == libc::SCHED_IDLE), "argon2 workers give way to request handling");
    }
}
