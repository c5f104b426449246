//! Identity commands. Each command loads the state of the streams it touches,
//! decides which events follow, and appends them with the expected version it
//! decided from — so two commands racing on one stream cannot both win.
//! Every command returns the position of its last event: the consistency token
//! a client passes to a later read to see its own write.
//!
//! ```text
//! register -> reservation.claimed (email-*, username-*) -> user.registered
//! login    -> user.login_succeeded | user.login_failed [+ security.account_locked, security.alert]
//!          -> session.started
//! refresh  -> session.refreshed | session.revoked + security.refresh_token_reuse_detected
//! ```

pub mod audit;
mod auth;
mod authz;
pub mod clients;
pub mod context;
pub mod counters;
pub mod erase;
pub mod error;
pub mod live;
mod mfa;
pub mod password;
pub mod secrets;
pub mod service_accounts;
pub mod state;
mod users;

pub use auth::{LoginGrant, LoginRequest, LoginStep, RefreshStatus};
pub use authz::RoleSpec;
pub use context::RequestContext;
pub use error::{DomainError, Result};
pub use live::{LiveModels, SnapshotPolicy};
pub use mfa::MfaEnrollment;
pub use service_accounts::CreatedServiceAccount;
pub use users::{ProfileUpdate, Registered, Registration, Reservation, VerificationState};

use password::{PasswordCost, Passwords};
use perfect21_events::{AppendResult, Event, EventData, EventStore, ExpectedVersion, StoreError, StreamId};
use secrets::SecretBox;
use state::StreamState;
use std::sync::Arc;
use std::time::Duration;

/// Tunables of the identity commands, with defaults an operator would expect.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Failed logins within `lockout_window` that lock the account.
    pub lockout_threshold: u32,
    pub lockout_window: Duration,
    /// How long a lockout lasts.
    pub lockout_duration: Duration,
    /// A login riskier than this records `security.suspicious_activity`.
    pub risk_threshold: f32,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub verification_ttl: Duration,
    /// How long a read waits for the read models to reach a consistency token.
    pub consistency_timeout: Duration,
    pub password_cost: PasswordCost,
    /// argon2 computations running at once (each on a blocking thread).
    pub password_workers: usize,
    /// Issuer shown in authenticator apps.
    pub totp_issuer: String,
    /// Let users whose email address is not verified log in (off by default: they are
    /// refused after the password check with [`DomainError::EmailNotVerified`]).
    pub allow_unverified_login: bool,
    /// How long an MFA enrollment may wait for its confirming code.
    pub mfa_enrollment_ttl: Duration,
    /// How long an OpenID Connect authorization code may wait for its exchange.
    pub authorization_code_ttl: Duration,
    /// How long the password step of an interactive login stays good for its second factor.
    pub mfa_ticket_ttl: Duration,
    /// Where the commands read the time.
    pub clock: Clock,
}

/// Where the identity commands read the time (Unix seconds): the system clock,
/// optionally shifted, so that tests move time forward instead of sleeping.
#[derive(Clone, Default)]
pub struct Clock {
    offset: Option<Arc<std::sync::atomic::AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The system clock plus an offset in seconds the caller may move forward.
    pub fn shifted() -> (Clock, Arc<std::sync::atomic::AtomicI64>) {
        let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
        (Clock { offset: Some(offset.clone()) }, offset)
    }

    /// Unix seconds now.
    pub fn now(&self) -> i64 {
        let shift = self.offset.as_ref().map_or(0, |o| o.load(std::sync::atomic::Ordering::Relaxed));
        chrono::Utc::now().timestamp() + shift
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.offset {
            None => f.write_str("Clock(system)"),
            Some(o) => write!(f, "Clock(system {:+} s)", o.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            lockout_threshold: 5,
            lockout_window: Duration::from_secs(15 * 60),
            lockout_duration: Duration::from_secs(15 * 60),
            risk_threshold: 0.7,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            verification_ttl: Duration::from_secs(24 * 3600),
            consistency_timeout: Duration::from_secs(5),
            password_cost: PasswordCost::OWASP,
            password_workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            totp_issuer: "perfect21".into(),
            allow_unverified_login: false,
            mfa_enrollment_ttl: Duration::from_secs(10 * 60),
            authorization_code_ttl: Duration::from_secs(60),
            mfa_ticket_ttl: Duration::from_secs(5 * 60),
            clock: Clock::system(),
        }
    }
}

/// The identity commands over one event store, with this process's live read models.
#[derive(Clone)]
pub struct Identity {
    store: Arc<dyn EventStore>,
    live: Arc<LiveModels>,
    passwords: Passwords,
    secrets: SecretBox,
    config: Arc<IdentityConfig>,
    /// The highest position this process has written: reads after a local write wait for it.
    last_write: Arc<std::sync::atomic::AtomicU64>,
    /// The highest position of a write that takes access away (revocation, lock, deletion…).
    last_revocation: Arc<std::sync::atomic::AtomicU64>,
    /// Sign-ins of one user in this process take turns (see [`auth::UserTurns`]).
    sign_ins: Arc<auth::UserTurns>,
    counters: Arc<counters::Counters>,
}

impl Identity {
    /// `secrets` seals TOTP secrets; it must be the same key on every replica and across restarts.
    pub fn new(
        store: Arc<dyn EventStore>,
        live: Arc<LiveModels>,
        secrets: SecretBox,
        config: IdentityConfig,
    ) -> Result<Self> {
        let passwords = Passwords::new(config.password_cost, config.password_workers)?;
        Ok(Identity {
            store,
            live,
            passwords,
            secrets,
            config: Arc::new(config),
            last_write: Default::default(),
            last_revocation: Default::default(),
            sign_ins: Default::default(),
            counters: Arc::new(counters::Counters::register()),
        })
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn live(&self) -> &Arc<LiveModels> {
        &self.live
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// The counters recorded on every request.
    pub fn counters(&self) -> &counters::Counters {
        &self.counters
    }

    pub fn passwords(&self) -> &Passwords {
        &self.passwords
    }

    /// Folds a whole stream into its state.
    async fn load<S: StreamState>(&self, stream: &StreamId) -> Result<S> {
        audit::load(self.store.as_ref(), stream).await
    }

    /// Appends `events` as `ctx`; a lost race becomes [`DomainError::Conflict`].
    async fn append(
        &self,
        ctx: &RequestContext,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> Result<AppendResult> {
        let metadata = ctx.metadata();
        let data = events.iter().map(|e| EventData::new(e, metadata.clone())).collect::<Result<Vec<_>, _>>()?;
        let span = tracing::info_span!("append", stream = %stream, events = events.len());
        let appended = tracing::Instrument::instrument(self.store.append(stream, expected, data), span).await.map_err(
            |e| match e {
                StoreError::WrongExpectedVersion { stream, .. } => DomainError::Conflict { stream },
                other => other.into(),
            },
        )?;
        self.last_write.fetch_max(appended.position, std::sync::atomic::Ordering::Relaxed);
        if events.iter().any(takes_access_away) {
            self.last_revocation.fetch_max(appended.position, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(appended)
    }

    /// The highest log position of a write through this process that took access away
    /// (a revocation, lock, suspension, deletion). Token validation waits for it, so a
    /// revocation is visible at once, without waiting for unrelated writes.
    pub fn last_revocation(&self) -> u64 {
        self.last_revocation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The highest log position this process has written. A read that must see every
    /// write made through this process (e.g. a revocation) waits for it.
    pub fn last_write(&self) -> u64 {
        self.last_write.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    /// Waits (bounded) until the read models have reached `min_position`, then reads them.
    pub async fn read<T>(
        &self,
        min_position: Option<u64>,
        f: impl FnOnce(&perfect21_projections::ReadModels) -> T,
    ) -> Result<T> {
        if let Some(wanted) = min_position.filter(|p| *p > self.live.checkpoint()) {
            // A position the log has not reached is no write's token: say so now (409)
            // rather than after the consistency timeout.
            let head = self.store().head_position().await?;
            if wanted > head {
                return Err(DomainError::FailedPrecondition(format!(
                    "consistency token {wanted} is beyond the log's head ({head}): pass the token a write answered"
                )));
            }
        }
        self.live.read_at(min_position, self.config.consistency_timeout, f).await
    }
}

/// Events after which some access token may no longer be valid.
fn takes_access_away(e: &Event) -> bool {
    matches!(
        e,
        Event::SessionRevoked(_)
            | Event::SessionExpired(_)
            | Event::SessionTokenRevoked(_)
            | Event::UserStatusChanged(_)
            | Event::AccountLocked(_)
            | Event::UserDeleted(_)
            | Event::RoleRevoked(_)
            | Event::PermissionRevoked(_)
            | Event::RolePermissionRevoked(_)
            | Event::RoleDeleted(_)
            | Event::ServiceAccountDisabled(_)
            | Event::ServiceAccountDeleted(_)
    )
}

impl Identity {
    /// Unix seconds now, by the configured clock.
    pub(crate) fn now(&self) -> i64 {
        self.config.clock.now()
    }
}

fn stream(category: &str, id: impl std::fmt::Display) -> Result<StreamId> {
    Ok(StreamId::of(category, id)?)
}
