//! Login throughput against the raw argon2id verification rate it is built on.

use super::{Measurement, Scratch};
use argon2::{Algorithm, Argon2, Params, Version};
use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::{Identity, IdentityConfig, LiveModels, LoginRequest, Registration, RequestContext};
use perfect21_events::store::{SqliteConfig, SqliteStore};
use perfect21_events::EventStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: usize = 32;
const PASSWORD: &str = "benchmark password 1";

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

pub async fn login(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    const S: &str = "login";
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(SqliteConfig::new(scratch.file("login.db"))).await?);
    let live = LiveModels::start(store.clone());
    let config = IdentityConfig {
        password_cost: PasswordCost::OWASP,
        password_workers: cores(),
        allow_unverified_login: true,
        ..Default::default()
    };
    let id = Identity::new(store, live, SecretBox::random(), config)?;
    let ctx = RequestContext { client_ip: Some("192.0.2.10".into()), ..RequestContext::service("bench") };
    for i in 0..USERS {
        let reg = Registration {
            email: format!("bench{i}@example.com"),
            username: format!("bench{i}"),
            password: PASSWORD.into(),
            ..Default::default()
        };
        id.register(&ctx, reg).await?;
    }
    // Ours: full logins (lookup, state, argon2id on the blocking pool, events, session), many clients at once.
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..cores() * 4)
        .map(|t| {
            let (id, ctx, done) = (id.clone(), ctx.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = t;
                while start.elapsed() < duration {
                    let req = LoginRequest {
                        identifier: format!("bench{}", i % USERS),
                        password: PASSWORD.into(),
                        ..Default::default()
                    };
                    id.login(&ctx, req).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 7;
                }
                Ok::<_, perfect21_domain::DomainError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let ours = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    let base = tokio::task::spawn_blocking(move || raw_argon2(duration)).await??;
    Ok(vec![Measurement::rate(S, "logins", ours, base, "per s")])
}

/// Baseline: argon2id with the same parameters on one thread per core, each reusing
/// its memory, computing and comparing the hash of the same password and nothing else.
pub(super) fn raw_argon2(duration: Duration) -> anyhow::Result<f64> {
    let c = PasswordCost::OWASP;
    let params = Params::new(c.memory_kib, c.iterations, c.parallelism, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = b"0123456789abcdef";
    let mut expected = [0u8; 32];
    argon.hash_password_into(PASSWORD.as_bytes(), salt, &mut expected).map_err(|e| anyhow::anyhow!("{e}"))?;
    let done = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..cores() {
            s.spawn(|| {
                let mut blocks = vec![argon2::Block::default(); params.block_count()];
                let mut out = [0u8; 32];
                while start.elapsed() < duration {
                    argon
                        .hash_password_into_with_memory(PASSWORD.as_bytes(), salt, &mut out, &mut blocks)
                        .expect("hashes");
                    assert_eq!(out, expected);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
