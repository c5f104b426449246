//! Credentials and sessions: login (argon2id, lockout, risk, MFA), refresh-token
//! rotation with reuse detection, logout and revocation.

use crate::error::{DomainError, Result};
use crate::secrets::{constant_time_eq, random_token, token_hash};
use crate::state::{SessionState, UserState};
use crate::{stream, Identity, RequestContext};
use perfect21_events::catalog::*;
use perfect21_events::{Event, ExpectedVersion};
use uuid::Uuid;

/// Attempts of a command that lost a race on its stream before giving up.
const RETRIES: usize = 3;

/// One turn at a time per user: an async lock per user id, made on first use and
/// forgotten once nobody holds or waits for it.
#[derive(Default)]
pub(crate) struct UserTurns(std::sync::Mutex<std::collections::HashMap<Uuid, std::sync::Weak<tokio::sync::Mutex<()>>>>);

/// Users with a turn remembered before those nobody holds are swept.
const MAX_TURNS: usize = 1024;

impl UserTurns {
    /// Waits for `user`'s turn; it lasts as long as the guard.
    pub(crate) async fn take(&self, user: Uuid) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut turns = self.0.lock().expect("user turns");
            if turns.len() >= MAX_TURNS {
                turns.retain(|_, t| t.strong_count() > 0);
            }
            match turns.get(&user).and_then(std::sync::Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                    turns.insert(user, std::sync::Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// What a client sends to log in.
#[derive(Debug, Clone, Default)]
pub struct LoginRequest {
    /// Email address or username.
    pub identifier: String,
    pub password: String,
    /// A TOTP code or a recovery code, for accounts with MFA.
    pub mfa_code: Option<String>,
    pub device_id: Option<String>,
}

/// A started (or refreshed) session.
#[derive(Debug, Clone)]
pub struct LoginGrant {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// Opaque; the only copy (the log holds its hash). Rotated on every refresh.
    pub refresh_token: String,
    pub refresh_expires_at: i64,
    /// Id of the access token to issue for this grant.
    pub access_jti: String,
    pub access_expires_at: i64,
    pub risk_score: f32,
    pub mfa_used: bool,
    pub position: u64,
}

/// A live refresh token's session.
#[derive(Debug, Clone)]
pub struct RefreshStatus {
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Where an interactive login stands.
#[derive(Debug, Clone)]
pub enum LoginStep {
    Done(LoginGrant),
    /// The password was right; the account needs a second factor. The ticket (sealed,
    /// short-lived, void once the password changes) stands for the password in
    /// [`Identity::login_second_factor`].
    SecondFactor {
        ticket: String,
    },
}

/// What proves the first factor of a login.
enum FirstFactor {
    Password(String),
    /// The password fingerprint of an MFA ticket.
    Ticket(String),
}

/// A short digest of a password hash: a ticket made before a password change is void after it.
fn password_fingerprint(password_hash: &str) -> String {
    token_hash(password_hash)[..32].to_string()
}

/// The outcome of checking a password (and second factor) against a user's state.
enum Verdict {
    Ok { mfa_used: bool, recovery_code: Option<String>, totp_step: Option<u64> },
    Failed(&'static str),
    NeedMfa,
}

impl Identity {
    /// Finds the user an email or username belongs to, from the reservation streams
    /// (authoritative and never behind, unlike a read model).
    async fn owner_of(&self, identifier: &str) -> Result<Option<Uuid>> {
        if Uuid::parse_str(identifier).is_ok() {
            return Ok(None); // log in by email or username only
        }
        crate::audit::resolve_user(self.store.as_ref(), Some(&self.secrets), identifier).await
    }

    /// Logs in. Unknown users, wrong passwords and locked accounts all cost one
    /// argon2id verification and all answer [`DomainError::InvalidCredentials`].
    #[tracing::instrument(name = "command", skip_all, fields(command = "login"))]
    pub async fn login(&self, ctx: &RequestContext, req: LoginRequest) -> Result<LoginGrant> {
        match self.login_interactive(ctx, req).await? {
            LoginStep::Done(grant) => Ok(grant),
            LoginStep::SecondFactor { .. } => Err(DomainError::MfaRequired),
        }
    }

    /// Logs in like [`Identity::login`], except that a right password without the
    /// second factor an account needs answers a ticket instead of an error: the
    /// login page then asks for the code alone and finishes with
    /// [`Identity::login_second_factor`], without the password travelling again.
    pub async fn login_interactive(&self, ctx: &RequestContext, req: LoginRequest) -> Result<LoginStep> {
        if let Some(device) = &req.device_id {
            crate::context::bounded("device_id", device, crate::context::MAX_DEVICE_ID)?;
        }
        if req.identifier.is_empty() || req.identifier.len() > 254 || req.password.len() > 1024 {
            return Err(DomainError::InvalidCredentials);
        }
        let Some(user_id) = self.owner_of(&req.identifier).await? else {
            metrics::counter!("perfect21_auth_events_total", "event" => "login", "outcome" => "unknown_user")
                .increment(1);
            self.passwords.verify(req.password, None).await?;
            return Err(DomainError::InvalidCredentials);
        };
        let first = FirstFactor::Password(req.password.clone());
        self.login_as(ctx, user_id, first, req).await
    }

    /// The second step of an interactive login: the ticket of a right password and
    /// a TOTP or recovery code. A wrong code counts as a failed login (lockout applies).
    #[tracing::instrument(name = "command", skip_all, fields(command = "login"))]
    pub async fn login_second_factor(
        &self,
        ctx: &RequestContext,
        ticket: &str,
        code: &str,
        device_id: Option<String>,
    ) -> Result<LoginStep> {
        let opened = self.secrets.open_text(ticket).and_then(|b| String::from_utf8(b).ok()).unwrap_or_default();
        let mut parts = opened.split('|');
        let (Some("mfa-ticket"), Some(user), Some(expires), Some(fingerprint), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DomainError::InvalidToken { what: "sign-in ticket" });
        };
        let user_id = Uuid::parse_str(user).map_err(|_| DomainError::InvalidToken { what: "sign-in ticket" })?;
        if expires.parse::<i64>().map_or(true, |t| t <= self.now()) {
            return Err(DomainError::InvalidToken { what: "sign-in ticket" });
        }
        let req = LoginRequest { mfa_code: Some(code.to_string()), device_id, ..Default::default() };
        self.login_as(ctx, user_id, FirstFactor::Ticket(fingerprint.to_string()), req).await
    }

    /// A sealed ticket saying "this user's password was right" until `mfa_ticket_ttl`
    /// passes or the password changes.
    fn mfa_ticket(&self, user_id: Uuid, password_hash: &str) -> String {
        let expires = self.now() + self.config.mfa_ticket_ttl.as_secs() as i64;
        let plain = format!("mfa-ticket|{user_id}|{expires}|{}", password_fingerprint(password_hash));
        self.secrets.seal_text(plain.as_bytes())
    }

    async fn login_as(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
        first: FirstFactor,
        req: LoginRequest,
    ) -> Result<LoginStep> {
        let ctx = &ctx.clone().as_user(user_id);
        let user_stream = stream("user", user_id)?;
        let mut password_checked: Option<(String, bool)> = None;
        // argon2 first, side by side with other sign-ins of the same user.
        if let FirstFactor::Password(password) = &first {
            let state: UserState = self.load(&user_stream).await?;
            if state.exists && !state.is_deleted() {
                let ok = self.passwords.verify(password.clone(), Some(state.password_hash.clone())).await?;
                password_checked = Some((state.password_hash, ok));
            }
        }
        // Then the decision: each sign-in appends to the user's stream at the version it
        // read, so concurrent ones in this process take turns instead of failing each
        // other's expected version (other replicas' are rare, and covered by the retries).
        let _turn = self.sign_ins.take(user_id).await;
        for _ in 0..RETRIES {
            let state: UserState = self.load(&user_stream).await?;
            if !state.exists || state.is_deleted() {
                if let FirstFactor::Password(password) = &first {
                    self.passwords.verify(password.clone(), None).await?;
                }
                return Err(DomainError::InvalidCredentials);
            }
            let password_ok = match &first {
                // The hash only changes with a password change; a retry need not pay argon2 again.
                FirstFactor::Password(password) => match &password_checked {
                    Some((hash, ok)) if *hash == state.password_hash => *ok,
                    _ => {
                        let ok = self.passwords.verify(password.clone(), Some(state.password_hash.clone())).await?;
                        password_checked = Some((state.password_hash.clone(), ok));
                        ok
                    }
                },
                FirstFactor::Ticket(fingerprint) => {
                    constant_time_eq(fingerprint, &password_fingerprint(&state.password_hash))
                }
            };
            let now = self.now();
            let mut events = Vec::new();
            let mut status = state.status.unwrap_or(UserStatus::PendingVerification);
            if status == UserStatus::Locked && state.locked_until.is_some_and(|t| t <= now) {
                events.push(Event::AccountUnlocked(AccountUnlocked { user_id, reason: "lock expired".into() }));
                status = if state.email_verified { UserStatus::Active } else { UserStatus::PendingVerification };
            }
            let verdict = match status {
                UserStatus::Locked => Verdict::Failed("account_locked"),
                UserStatus::Suspended => Verdict::Failed("account_suspended"),
                UserStatus::Deleted => Verdict::Failed("account_deleted"),
                _ if !password_ok => Verdict::Failed("bad_password"),
                _ => self.second_factor(&state, req.mfa_code.as_deref()),
            };
            let window_start = now - self.config.lockout_window.as_secs() as i64;
            let recent_failures = state.failures.iter().filter(|t| **t >= window_start).count() as u32;
            let risk = self.risk_score(&state, ctx, recent_failures);
            match verdict {
                Verdict::NeedMfa => {
                    metrics::counter!("perfect21_auth_events_total", "event" => "login", "outcome" => "mfa_required")
                        .increment(1);
                    return Ok(LoginStep::SecondFactor { ticket: self.mfa_ticket(user_id, &state.password_hash) });
                }
                Verdict::Failed(reason) => {
                    let mut unlocked = state.clone();
                    unlocked.status = Some(status);
                    events.extend(self.failure_events(&unlocked, reason, risk));
                    match self.append(ctx, &user_stream, ExpectedVersion::from_current(state.version), &events).await {
                        Ok(_) => {
                            metrics::counter!("perfect21_auth_events_total", "event" => "login", "outcome" => reason)
                                .increment(1);
                            if events.iter().any(|e| matches!(e, Event::AccountLocked(_))) {
                                metrics::counter!("perfect21_auth_events_total", "event" => "account_locked", "outcome" => "locked").increment(1);
                            }
                            return Err(DomainError::InvalidCredentials);
                        }
                        Err(DomainError::Conflict { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Verdict::Ok { .. } if !state.email_verified && !self.config.allow_unverified_login => {
                    metrics::counter!("perfect21_auth_events_total", "event" => "login", "outcome" => "email_not_verified")
                        .increment(1);
                    return Err(DomainError::EmailNotVerified);
                }
                Verdict::Ok { mfa_used, recovery_code, totp_step } => {
                    let session_id = Uuid::now_v7();
                    if let Some(code_hash) = recovery_code {
                        events.push(Event::UserRecoveryCodeUsed(UserRecoveryCodeUsed { user_id, code_hash }));
                    }
                    if risk > self.config.risk_threshold {
                        events.push(Event::SuspiciousActivity(SuspiciousActivity {
                            user_id,
                            activity_type: "risky_login".into(),
                            risk_score: risk,
                            description: "login from an unfamiliar client after recent failures".into(),
                            details: vec![
                                ("client_ip".into(), ctx.client_ip.clone().unwrap_or_default()),
                                ("recent_failures".into(), recent_failures.to_string()),
                            ],
                        }));
                    }
                    events.push(Event::UserLoginSucceeded(UserLoginSucceeded {
                        user_id,
                        session_id,
                        mfa_used,
                        risk_score: risk,
                        device_id: req.device_id.clone(),
                        totp_step,
                    }));
                    match self.append(ctx, &user_stream, ExpectedVersion::from_current(state.version), &events).await {
                        Ok(_) => {
                            metrics::counter!("perfect21_auth_events_total", "event" => "login", "outcome" => "success").increment(1);
                            let grant =
                                self.start_session(ctx, user_id, session_id, risk, mfa_used, req.device_id).await?;
                            return Ok(LoginStep::Done(grant));
                        }
                        Err(DomainError::Conflict { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(DomainError::Conflict { stream: user_stream.to_string() })
    }

    /// A failed login (or step-up) of `state`'s user, and the lock and alert it
    /// triggers when it reaches the threshold within the window.
    pub(crate) fn failure_events(&self, state: &UserState, reason: &str, risk: f32) -> Vec<Event> {
        let user_id = state.user_id;
        let now = self.now();
        let window_start = now - self.config.lockout_window.as_secs() as i64;
        let failure_count = state.failures.iter().filter(|t| **t >= window_start).count() as u32 + 1;
        let mut events = vec![Event::UserLoginFailed(UserLoginFailed {
            user_id,
            reason: reason.into(),
            failure_count,
            risk_score: risk,
        })];
        let status = state.status.unwrap_or(UserStatus::PendingVerification);
        if status != UserStatus::Locked
            && status != UserStatus::Suspended
            && reason != "account_suspended"
            && failure_count >= self.config.lockout_threshold
        {
            let locked_until = now + self.config.lockout_duration.as_secs() as i64;
            events.push(Event::AccountLocked(AccountLocked {
                user_id,
                reason: format!("{failure_count} failed logins within {} s", self.config.lockout_window.as_secs()),
                failed_attempts: failure_count,
                locked_until: Some(locked_until),
            }));
            events.push(alert(
                user_id,
                "account_locked",
                Severity::High,
                format!("Account locked after {failure_count} failed logins"),
                vec![
                    ("failed_attempts".into(), failure_count.to_string()),
                    ("locked_until".into(), locked_until.to_string()),
                ],
            ));
        }
        events
    }

    fn second_factor(&self, state: &UserState, code: Option<&str>) -> Verdict {
        let Some(sealed) = &state.mfa_secret else {
            return Verdict::Ok { mfa_used: false, recovery_code: None, totp_step: None };
        };
        let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
            return Verdict::NeedMfa;
        };
        if let Some(secret) = self.secrets.open(sealed) {
            if let Some(step) = crate::mfa::totp_step(&secret, code, self.now()) {
                // Each time step is accepted once: a code seen on the wire cannot be replayed.
                if state.last_totp_step.is_some_and(|last| step <= last) {
                    return Verdict::Failed("totp_code_replayed");
                }
                return Verdict::Ok { mfa_used: true, recovery_code: None, totp_step: Some(step) };
            }
        }
        let hash = token_hash(&crate::mfa::normalize_recovery_code(code));
        if state.recovery_codes.iter().any(|h| constant_time_eq(h, &hash)) {
            return Verdict::Ok { mfa_used: true, recovery_code: Some(hash), totp_step: None };
        }
        Verdict::Failed("bad_mfa_code")
    }

    /// 0 (a familiar client) … 1: an unknown IP, an unknown user agent, recent failures.
    fn risk_score(&self, state: &UserState, ctx: &RequestContext, recent_failures: u32) -> f32 {
        if state.logins == 0 {
            return (recent_failures as f32 * 0.1).min(0.3);
        }
        let mut risk = 0.0;
        if ctx.client_ip.as_ref().is_some_and(|ip| !state.known_ips.contains(ip)) {
            risk += 0.4;
        }
        if ctx.user_agent.as_ref().is_some_and(|ua| !state.known_agents.contains(ua)) {
            risk += 0.3;
        }
        risk + (recent_failures as f32 * 0.1).min(0.3)
    }

    pub(crate) async fn start_session(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
        session_id: Uuid,
        risk_score: f32,
        mfa_used: bool,
        device_id: Option<String>,
    ) -> Result<LoginGrant> {
        let refresh_token = format!("{}.{}", session_id.simple(), random_token());
        let access_jti = Uuid::now_v7().to_string();
        let now = self.now();
        let refresh_expires_at = now + self.config.refresh_token_ttl.as_secs() as i64;
        let event = Event::SessionStarted(SessionStarted {
            session_id,
            user_id,
            refresh_token_hash: token_hash(&refresh_token),
            access_jti: access_jti.clone(),
            expires_at: refresh_expires_at,
            device_id,
        });
        let r = self.append(ctx, &stream("session", session_id)?, ExpectedVersion::NoStream, &[event]).await?;
        metrics::counter!("perfect21_session_operations_total", "operation" => "start").increment(1);
        Ok(LoginGrant {
            user_id,
            session_id,
            refresh_token,
            refresh_expires_at,
            access_jti,
            access_expires_at: now + self.config.access_token_ttl.as_secs() as i64,
            risk_score,
            mfa_used,
            position: r.position,
        })
    }

    /// Exchanges a refresh token for a new one (rotation). Presenting a token that
    /// was already rotated away revokes the whole session and records the reuse.
    #[tracing::instrument(name = "command", skip_all, fields(command = "refresh"))]
    pub async fn refresh(&self, ctx: &RequestContext, refresh_token: &str) -> Result<LoginGrant> {
        let bad = || DomainError::InvalidToken { what: "refresh token" };
        let session_id = crate::secrets::token_id(refresh_token).ok_or_else(bad)?;
        let s = stream("session", session_id)?;
        let state: SessionState = self.load(&s).await?;
        if !state.exists() || state.ended {
            return Err(bad());
        }
        let ctx = &ctx.clone().as_user(state.user_id);
        let expected = ExpectedVersion::from_current(state.version);
        let presented = token_hash(refresh_token);
        let user_id = state.user_id;
        if state.rotated.iter().any(|h| constant_time_eq(h, &presented)) {
            let events = [
                Event::SessionRevoked(SessionRevoked { session_id, user_id, reason: "refresh_token_reuse".into() }),
                Event::RefreshTokenReuseDetected(RefreshTokenReuseDetected {
                    user_id,
                    session_id,
                    reused_token_hash: presented,
                }),
                alert(
                    user_id,
                    "refresh_token_reuse",
                    Severity::High,
                    "A refresh token was used twice; the session was ended".into(),
                    vec![("session_id".into(), session_id.to_string())],
                ),
            ];
            self.append(ctx, &s, expected, &events).await?;
            metrics::counter!("perfect21_token_operations_total", "operation" => "refresh", "outcome" => "reuse_detected").increment(1);
            return Err(bad());
        }
        if !constant_time_eq(&state.current_hash, &presented) {
            return Err(bad());
        }
        let now = self.now();
        if state.expires_at <= now {
            self.append(ctx, &s, expected, &[Event::SessionExpired(SessionExpired { session_id, user_id })]).await?;
            return Err(bad());
        }
        let user: UserState = self.load(&stream("user", user_id)?).await?;
        if matches!(user.status, Some(UserStatus::Locked | UserStatus::Suspended | UserStatus::Deleted)) {
            return Err(bad());
        }
        let new_token = format!("{}.{}", session_id.simple(), random_token());
        let access_jti = Uuid::now_v7().to_string();
        let refresh_expires_at = now + self.config.refresh_token_ttl.as_secs() as i64;
        let event = Event::SessionRefreshed(SessionRefreshed {
            session_id,
            user_id,
            previous_token_hash: presented,
            refresh_token_hash: token_hash(&new_token),
            access_jti: access_jti.clone(),
            expires_at: refresh_expires_at,
        });
        // Two refreshes racing with the same token: only one may rotate it.
        let r = self.append(ctx, &s, expected, &[event]).await.map_err(|e| match e {
            DomainError::Conflict { .. } => bad(),
            other => other,
        })?;
        metrics::counter!("perfect21_token_operations_total", "operation" => "refresh", "outcome" => "rotated")
            .increment(1);
        Ok(LoginGrant {
            user_id,
            session_id,
            refresh_token: new_token,
            refresh_expires_at,
            access_jti,
            access_expires_at: now + self.config.access_token_ttl.as_secs() as i64,
            risk_score: 0.0,
            mfa_used: false,
            position: r.position,
        })
    }

    /// Whether a refresh token is the current one of a session that has not ended or
    /// expired (token introspection).
    pub async fn refresh_token_status(&self, refresh_token: &str) -> Result<Option<RefreshStatus>> {
        let Some(session_id) = crate::secrets::token_id(refresh_token) else {
            return Ok(None);
        };
        let state: SessionState = self.load(&stream("session", session_id)?).await?;
        let current = state.exists()
            && !state.ended
            && state.expires_at > self.now()
            && constant_time_eq(&state.current_hash, &token_hash(refresh_token));
        Ok(current.then_some(RefreshStatus { session_id, user_id: state.user_id, expires_at: state.expires_at }))
    }

    /// Ends one session.
    #[tracing::instrument(name = "command", skip_all, fields(command = "revoke_session"))]
    pub async fn revoke_session(&self, ctx: &RequestContext, session_id: Uuid, reason: &str) -> Result<u64> {
        crate::context::bounded("reason", reason, crate::context::MAX_REASON)?;
        let s = stream("session", session_id)?;
        let state: SessionState = self.load(&s).await?;
        if !state.exists() {
            return Err(DomainError::NotFound { what: "session", id: session_id.to_string() });
        }
        if state.ended {
            return Err(DomainError::FailedPrecondition(format!("session {session_id} has already ended")));
        }
        let event = Event::SessionRevoked(SessionRevoked { session_id, user_id: state.user_id, reason: reason.into() });
        let position = self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?.position;
        metrics::counter!("perfect21_session_operations_total", "operation" => "revoke").increment(1);
        Ok(position)
    }

    /// Logs out: ends the session and records `user.logged_out`.
    #[tracing::instrument(name = "command", skip_all, fields(command = "logout"))]
    pub async fn logout(&self, ctx: &RequestContext, session_id: Uuid) -> Result<u64> {
        let state: SessionState = self.load(&stream("session", session_id)?).await?;
        let position = self.revoke_session(ctx, session_id, "logout").await?;
        let user_stream = stream("user", state.user_id)?;
        let event = Event::UserLoggedOut(UserLoggedOut { user_id: state.user_id, session_id });
        Ok(self.append(ctx, &user_stream, ExpectedVersion::Any, &[event]).await?.position.max(position))
    }

    /// Revokes one access token by its id, before it expires.
    #[tracing::instrument(name = "command", skip_all, fields(command = "revoke_token"))]
    pub async fn revoke_token(
        &self,
        ctx: &RequestContext,
        session_id: Uuid,
        jti: &str,
        expires_at: i64,
    ) -> Result<u64> {
        if jti.is_empty() || jti.len() > 64 {
            return Err(DomainError::InvalidArgument { field: "jti", reason: "must be 1 to 64 characters".into() });
        }
        let s = stream("session", session_id)?;
        let state: SessionState = self.load(&s).await?;
        if !state.exists() {
            return Err(DomainError::NotFound { what: "session", id: session_id.to_string() });
        }
        let event = Event::SessionTokenRevoked(SessionTokenRevoked {
            session_id,
            user_id: state.user_id,
            jti: jti.into(),
            expires_at,
        });
        let position = self.append(ctx, &s, ExpectedVersion::Any, &[event]).await?.position;
        metrics::counter!("perfect21_token_operations_total", "operation" => "revoke", "outcome" => "revoked")
            .increment(1);
        Ok(position)
    }

    /// Ends every active session of a user; returns the last position written (or `after`).
    #[tracing::instrument(name = "command", skip_all, fields(command = "revoke_all_sessions"))]
    pub async fn revoke_all_sessions(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
        reason: &str,
        after: Option<u64>,
    ) -> Result<u64> {
        crate::context::bounded("reason", reason, crate::context::MAX_REASON)?;
        let now = self.now();
        let sessions: Vec<Uuid> = self
            .read(after, |m| {
                m.sessions.of_user(user_id).into_iter().filter(|s| s.is_active(now)).map(|s| s.id).collect()
            })
            .await?;
        let mut last = after.unwrap_or(0);
        for session_id in sessions {
            match self.revoke_session(ctx, session_id, reason).await {
                Ok(p) => last = last.max(p),
                // Ended meanwhile: nothing to do.
                Err(DomainError::FailedPrecondition(_)) | Err(DomainError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(last)
    }
}

/// A `security.alert` with the seed's recommended actions for its severity.
pub(crate) fn alert(
    user_id: Uuid,
    alert_type: &str,
    severity: Severity,
    description: String,
    details: Vec<(String, String)>,
) -> Event {
    let recommended_actions = match severity {
        Severity::Critical => vec![
            "Change your password now",
            "Enable multi-factor authentication",
            "Review account activity",
            "Contact support",
        ],
        Severity::High => {
            vec!["Review recent logins", "Consider enabling multi-factor authentication", "Update your password"]
        }
        _ => vec!["Review your security settings", "Update your password regularly"],
    };
    Event::SecurityAlert(SecurityAlert {
        user_id,
        alert_type: alert_type.into(),
        severity,
        description,
        details,
        recommended_actions: recommended_actions.into_iter().map(String::from).collect(),
    })
}
