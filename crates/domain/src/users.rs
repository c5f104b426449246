//! User lifecycle: register (with event-sourced uniqueness), verify email,
//! profile, password, status, delete.

use crate::error::{DomainError, Result};
use crate::secrets::{constant_time_eq, token_hash, SecretBox};
use crate::state::{ReservationState, UserState};
use crate::{stream, Identity, RequestContext};
use perfect21_events::catalog::*;
use perfect21_events::{Event, ExpectedVersion};
use perfect21_projections::users::{normalize_email, normalize_username};
use uuid::Uuid;

/// A claim older than this whose owner never got registered was abandoned (a crash mid-registration).
const ABANDONED_CLAIM_SECS: i64 = 60;

/// What a verification link would do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationState {
    /// Valid and unused: confirming verifies the address.
    Pending,
    /// Already used to verify the address.
    AlreadyUsed,
    /// Right token, past its expiry.
    Expired,
    /// Not a token of this server, or of a user that no longer exists.
    Invalid,
}

/// What a new user sends.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub email: String,
    pub username: String,
    pub password: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone_number: Option<String>,
    pub locale: Option<String>,
}

/// A registration that happened.
#[derive(Debug, Clone)]
pub struct Registered {
    pub user_id: Uuid,
    /// Single-use; the only copy (the log holds its hash). Goes into the welcome email.
    pub verification_token: String,
    pub position: u64,
}

/// Profile fields to change (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone_number: Option<String>,
    pub profile: Vec<(String, String)>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::InvalidArgument { field, reason: reason.into() }
}

fn validate_email(email: &str) -> Result<()> {
    let e = email.trim();
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(invalid("email", format!("'{e}' is not an address like name@example.com (at most 254 characters)")))
    }
}

fn validate_username(username: &str) -> Result<()> {
    let ok = (3..=32).contains(&username.len())
        && username.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid("username", "must be 3 to 32 characters of [A-Za-z0-9_.-]"))
    }
}

fn optional_text(field: &'static str, value: &Option<String>, max: usize) -> Result<()> {
    match value {
        Some(v) if v.chars().count() > max || v.chars().any(char::is_control) => {
            Err(invalid(field, format!("must be at most {max} printable characters")))
        }
        _ => Ok(()),
    }
}

/// The reservation streams of a unique value (an email address, a username, a service
/// account's name).
///
/// Claims are made on the **keyed** stream, named by an HMAC of the value under the
/// server secret: without the secret, a stream id says nothing about the value (a bare
/// hash of an email address can be reversed by hashing candidate addresses). Logs
/// written before keyed ids named the stream by a bare SHA-256 of the value: that
/// **legacy** stream is still read, so a value reserved there stays taken and its owner
/// is still found, but nothing new is claimed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub keyed: perfect21_events::StreamId,
    pub legacy: perfect21_events::StreamId,
}

impl Reservation {
    /// The streams of `normalized` (see [`normalize_email`], [`normalize_username`]).
    pub fn of(secrets: &SecretBox, kind: &str, normalized: &str) -> Result<Self> {
        let mac = secrets.derive("reservation-stream", &[kind.as_bytes(), normalized.as_bytes()]);
        Ok(Reservation { keyed: stream(kind, &mac[..40])?, legacy: Self::legacy(kind, normalized)? })
    }

    /// The legacy stream alone, for readers without the server secret.
    pub fn legacy(kind: &str, normalized: &str) -> Result<perfect21_events::StreamId> {
        stream(kind, &token_hash(normalized)[..40])
    }

    /// Both streams, keyed first.
    pub fn streams(&self) -> [&perfect21_events::StreamId; 2] {
        [&self.keyed, &self.legacy]
    }
}

impl Identity {
    /// Registers a user. Email and username are unique across all users even under
    /// concurrent registrations: each is claimed by appending to its own
    /// reservation stream with the version the claimer saw, so only one claim wins.
    #[tracing::instrument(name = "command", skip_all, fields(command = "register"))]
    pub async fn register(&self, ctx: &RequestContext, r: Registration) -> Result<Registered> {
        validate_email(&r.email)?;
        validate_username(&r.username)?;
        crate::password::Passwords::validate(&r.password)?;
        optional_text("first_name", &r.first_name, 100)?;
        optional_text("last_name", &r.last_name, 100)?;
        optional_text("phone_number", &r.phone_number, 32)?;
        optional_text("locale", &r.locale, 35)?;
        let user_id = Uuid::now_v7();
        let attempt_ctx = ctx;
        let ctx = &ctx.clone().as_user(user_id);
        let password_hash = self.passwords.hash(r.password.clone()).await?;
        let verification_expires_at = self.now() + self.config.verification_ttl.as_secs() as i64;

        let email_stream = Reservation::of(&self.secrets, "email", &normalize_email(&r.email))?;
        let username_stream = Reservation::of(&self.secrets, "username", &normalize_username(&r.username))?;
        match self.claim(ctx, &email_stream, "email", user_id, "user").await {
            Ok(()) => {}
            // A taken email answers like a new registration (no enumeration of addresses);
            // its owner is told through the notification path.
            Err(DomainError::AlreadyRegistered { kind: "email" }) => {
                return self.registration_attempted(attempt_ctx, &email_stream, user_id, verification_expires_at).await;
            }
            Err(e) => return Err(e),
        }
        if let Err(e) = self.claim(ctx, &username_stream, "username", user_id, "user").await {
            self.release(ctx, &email_stream, "email", user_id).await?;
            return Err(e);
        }
        let verification_token = self.secrets.verification_token(user_id, verification_expires_at);
        let event = Event::UserRegistered(UserRegistered {
            user_id,
            email: r.email.trim().to_string(),
            username: r.username.clone(),
            first_name: r.first_name,
            last_name: r.last_name,
            phone_number: r.phone_number,
            locale: r.locale.unwrap_or_else(|| "en".into()),
            password_hash,
            verification_token_hash: token_hash(&verification_token),
            verification_expires_at,
        });
        let appended = self.append(ctx, &stream("user", user_id)?, ExpectedVersion::NoStream, &[event]).await?;
        metrics::counter!("perfect21_auth_events_total", "event" => "register", "outcome" => "success").increment(1);
        Ok(Registered { user_id, verification_token, position: appended.position })
    }

    /// Someone registered with an email address that is taken: record it for the
    /// address's owner (on the reservation stream, which the owner's stream need not
    /// wait for) and answer as a registration would, with an id and a verification
    /// token that belong to no one.
    async fn registration_attempted(
        &self,
        ctx: &RequestContext,
        email: &Reservation,
        unused_id: Uuid,
        expires_at: i64,
    ) -> Result<Registered> {
        let mut position = None;
        // On the stream that holds the owner (the legacy one for an address reserved there).
        for s in email.streams() {
            let state: ReservationState = self.load(s).await?;
            if let Some((owner, _)) = state.owner {
                let event = Event::UserRegistrationAttempted(UserRegistrationAttempted { user_id: owner });
                position = Some(self.append(ctx, s, ExpectedVersion::Any, &[event]).await?.position);
                break;
            }
        }
        // Released meanwhile: nothing to tell anyone.
        let position = position.unwrap_or_else(|| self.last_write());
        metrics::counter!("perfect21_auth_events_total", "event" => "register", "outcome" => "email_taken")
            .increment(1);
        Ok(Registered {
            user_id: unused_id,
            verification_token: self.secrets.verification_token(unused_id, expires_at),
            position,
        })
    }

    /// Claims the unique value of `reservation` for `owner`, whose own stream is
    /// `<owner_category>-<owner>`: on its keyed stream, unless its legacy stream holds it.
    pub(crate) async fn claim(
        &self,
        ctx: &RequestContext,
        reservation: &Reservation,
        kind: &'static str,
        owner: Uuid,
        owner_category: &str,
    ) -> Result<()> {
        // Claims on legacy streams ended with keyed ids, so this reading cannot go stale.
        let legacy: ReservationState = self.load(&reservation.legacy).await?;
        if self.holds(&legacy, owner_category).await? {
            return Err(DomainError::AlreadyRegistered { kind });
        }
        let s = &reservation.keyed;
        let state: ReservationState = self.load(s).await?;
        if self.holds(&state, owner_category).await? {
            return Err(DomainError::AlreadyRegistered { kind });
        }
        let event = Event::ReservationClaimed(ReservationClaimed { owner, kind: kind.into() });
        match self.append(ctx, s, ExpectedVersion::from_current(state.version), &[event]).await {
            Err(DomainError::Conflict { .. }) => Err(DomainError::AlreadyRegistered { kind }),
            other => other.map(|_| ()),
        }
    }

    /// Whether a reservation's holder still holds it. A claim whose owner never got
    /// created (a crash between the steps) is abandoned after a while.
    async fn holds(&self, state: &ReservationState, owner_category: &str) -> Result<bool> {
        let Some((holder, since)) = state.owner else { return Ok(false) };
        let holder_state: crate::state::Existence = self.load(&stream(owner_category, holder)?).await?;
        Ok(holder_state.exists || self.now() - since < ABANDONED_CLAIM_SECS)
    }

    /// Releases `owner`'s claim of `reservation`, on whichever of its streams holds it.
    pub(crate) async fn release(
        &self,
        ctx: &RequestContext,
        reservation: &Reservation,
        kind: &str,
        owner: Uuid,
    ) -> Result<()> {
        for s in reservation.streams() {
            let state: ReservationState = self.load(s).await?;
            if state.owner.map(|(o, _)| o) == Some(owner) {
                let event = Event::ReservationReleased(ReservationReleased { owner, kind: kind.into() });
                self.append(ctx, s, ExpectedVersion::from_current(state.version), &[event]).await?;
            }
        }
        Ok(())
    }

    /// Loads a user that exists and is not deleted.
    pub(crate) async fn existing_user(&self, user_id: Uuid) -> Result<UserState> {
        let state: UserState = self.load(&stream("user", user_id)?).await?;
        if !state.exists || state.is_deleted() {
            return Err(DomainError::NotFound { what: "user", id: user_id.to_string() });
        }
        Ok(state)
    }

    /// Verifies the email address with the single-use token from the welcome email.
    #[tracing::instrument(name = "command", skip_all, fields(command = "verify_email"))]
    pub async fn verify_email(&self, ctx: &RequestContext, token: &str) -> Result<u64> {
        let bad = DomainError::InvalidToken { what: "verification token" };
        let user_id = crate::secrets::token_id(token).ok_or(bad)?;
        let bad = || DomainError::InvalidToken { what: "verification token" };
        let state = self.existing_user(user_id).await.map_err(|_| bad())?;
        let Some((hash, expires_at)) = &state.verification else {
            return Err(bad());
        };
        if !constant_time_eq(hash, &token_hash(token)) || *expires_at < self.now() {
            return Err(bad());
        }
        let mut events = vec![Event::UserEmailVerified(UserEmailVerified { user_id })];
        if state.status == Some(UserStatus::PendingVerification) {
            events.push(Event::UserStatusChanged(UserStatusChanged {
                user_id,
                from: UserStatus::PendingVerification,
                to: UserStatus::Active,
                reason: "email verified".into(),
            }));
        }
        let ctx = ctx.clone().as_user(user_id);
        let r =
            self.append(&ctx, &stream("user", user_id)?, ExpectedVersion::from_current(state.version), &events).await?;
        Ok(r.position)
    }

    /// What a verification link would do now, without doing it (for the page that asks
    /// the user to confirm, so that a mail scanner prefetching the link consumes nothing).
    pub async fn verification_state(&self, token: &str) -> Result<VerificationState> {
        let Some(user_id) = crate::secrets::token_id(token) else {
            return Ok(VerificationState::Invalid);
        };
        let Ok(state) = self.existing_user(user_id).await else {
            return Ok(VerificationState::Invalid);
        };
        let presented = token_hash(token);
        Ok(match (&state.verification, &state.used_verification) {
            (Some((hash, expires_at)), _) if constant_time_eq(hash, &presented) => {
                if *expires_at < self.now() {
                    VerificationState::Expired
                } else {
                    VerificationState::Pending
                }
            }
            (_, Some(used)) if constant_time_eq(used, &presented) => VerificationState::AlreadyUsed,
            _ => VerificationState::Invalid,
        })
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = "update_profile"))]
    pub async fn update_profile(&self, ctx: &RequestContext, user_id: Uuid, u: ProfileUpdate) -> Result<u64> {
        optional_text("first_name", &u.first_name, 100)?;
        optional_text("last_name", &u.last_name, 100)?;
        optional_text("phone_number", &u.phone_number, 32)?;
        if u.profile.len() > 50 || u.profile.iter().any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 1024) {
            return Err(invalid("profile", "at most 50 entries, keys 1-64 bytes, values up to 1024 bytes"));
        }
        let state = self.existing_user(user_id).await?;
        let event = Event::UserProfileUpdated(UserProfileUpdated {
            user_id,
            first_name: u.first_name,
            last_name: u.last_name,
            phone_number: u.phone_number,
            profile: u.profile,
        });
        let r =
            self.append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(state.version), &[event]).await?;
        Ok(r.position)
    }

    /// Changes the password after checking the current one; ends every session of the user.
    #[tracing::instrument(name = "command", skip_all, fields(command = "change_password"))]
    pub async fn change_password(&self, ctx: &RequestContext, user_id: Uuid, current: &str, new: &str) -> Result<u64> {
        crate::password::Passwords::validate(new)?;
        let state = self.existing_user(user_id).await?;
        if !self.passwords.verify(current.to_string(), Some(state.password_hash.clone())).await? {
            return Err(DomainError::InvalidCredentials);
        }
        let password_hash = self.passwords.hash(new.to_string()).await?;
        let event = Event::UserPasswordChanged(UserPasswordChanged { user_id, password_hash, reason: "user".into() });
        let r =
            self.append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(state.version), &[event]).await?;
        let revoked = self.revoke_all_sessions(ctx, user_id, "password_changed", Some(r.position)).await?;
        Ok(revoked.max(r.position))
    }

    /// Sets a user's status (an administrator's action). Deleting goes through [`Identity::delete_user`].
    #[tracing::instrument(name = "command", skip_all, fields(command = "set_status"))]
    pub async fn set_status(&self, ctx: &RequestContext, user_id: Uuid, to: UserStatus, reason: &str) -> Result<u64> {
        crate::context::bounded("reason", reason, crate::context::MAX_REASON)?;
        if to == UserStatus::Deleted {
            return self.delete_user(ctx, user_id, reason).await;
        }
        let state = self.existing_user(user_id).await?;
        let from = state.status.unwrap_or(UserStatus::PendingVerification);
        if from == to {
            return Err(DomainError::FailedPrecondition(format!("user {user_id} is already {to:?}")));
        }
        let mut events = vec![Event::UserStatusChanged(UserStatusChanged { user_id, from, to, reason: reason.into() })];
        if from == UserStatus::Locked {
            events.push(Event::AccountUnlocked(AccountUnlocked { user_id, reason: reason.into() }));
        }
        let r =
            self.append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(state.version), &events).await?;
        if matches!(to, UserStatus::Locked | UserStatus::Suspended) {
            return Ok(self
                .revoke_all_sessions(ctx, user_id, "user_status_changed", Some(r.position))
                .await?
                .max(r.position));
        }
        Ok(r.position)
    }

    /// Deletes a user: records `user.deleted`, frees its email and username, ends its
    /// sessions, and erases its personal data (see [`crate::erase`]).
    #[tracing::instrument(name = "command", skip_all, fields(command = "delete_user"))]
    pub async fn delete_user(&self, ctx: &RequestContext, user_id: Uuid, reason: &str) -> Result<u64> {
        crate::context::bounded("reason", reason, crate::context::MAX_REASON)?;
        let state = self.existing_user(user_id).await?;
        let event = Event::UserDeleted(UserDeleted { user_id, reason: reason.into() });
        let r =
            self.append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(state.version), &[event]).await?;
        let email = Reservation::of(&self.secrets, "email", &normalize_email(&state.email))?;
        let username = Reservation::of(&self.secrets, "username", &normalize_username(&state.username))?;
        self.release(ctx, &email, "email", user_id).await?;
        self.release(ctx, &username, "username", user_id).await?;
        let revoked = self.revoke_all_sessions(ctx, user_id, "user_deleted", Some(r.position)).await?;
        let mut streams = vec![stream("user", user_id)?];
        streams.extend(email.streams().into_iter().chain(username.streams()).cloned());
        for session in &state.sessions {
            streams.push(stream("session", session)?);
        }
        let erased = self.erase_user(ctx, user_id, &streams).await?;
        Ok(revoked.max(erased))
    }

    /// Records a login that happened elsewhere (single sign-on, another system) in the user's history.
    #[tracing::instrument(name = "command", skip_all, fields(command = "record_login"))]
    pub async fn record_login(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
        success: bool,
        failure_reason: &str,
    ) -> Result<u64> {
        crate::context::bounded("failure_reason", failure_reason, crate::context::MAX_REASON)?;
        let state = self.existing_user(user_id).await?;
        let event = if success {
            Event::UserLoginSucceeded(UserLoginSucceeded {
                user_id,
                session_id: Uuid::nil(),
                mfa_used: false,
                risk_score: 0.0,
                device_id: None,
                totp_step: None,
            })
        } else {
            let reason = if failure_reason.is_empty() { "external" } else { failure_reason };
            Event::UserLoginFailed(UserLoginFailed {
                user_id,
                reason: reason.chars().take(100).collect(),
                failure_count: state.failures.len() as u32 + 1,
                risk_score: 0.0,
            })
        };
        Ok(self
            .append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(state.version), &[event])
            .await?
            .position)
    }

    /// Checks a user's password without logging in (no session, no login event).
    pub async fn verify_password(&self, user_id: Uuid, password: &str) -> Result<bool> {
        let phc = match self.existing_user(user_id).await {
            Ok(state) => Some(state.password_hash),
            Err(DomainError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        self.passwords.verify(password.to_string(), phc).await
    }
}
