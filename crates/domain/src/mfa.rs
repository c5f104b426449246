//! TOTP multi-factor authentication with single-use recovery codes.

use crate::error::{DomainError, Result};
use crate::secrets::{random_token, token_hash};
use crate::state::UserState;
use crate::{stream, Identity, RequestContext};
use perfect21_events::catalog::*;
use perfect21_events::{Event, ExpectedVersion};
use rand::RngCore;
use totp_rs::{Algorithm, Secret, TOTP};
use uuid::Uuid;

/// Recovery codes handed out when MFA is enabled.
const RECOVERY_CODES: usize = 10;

/// What a user needs to add the account to an authenticator app.
#[derive(Debug, Clone)]
pub struct MfaEnrollment {
    /// Base32 secret, for manual entry.
    pub secret: String,
    /// `otpauth://` URL, for a QR code.
    pub otpauth_url: String,
    /// Pass back with the first code to confirm. Sealed: it holds the secret.
    pub enrollment_token: String,
    /// Unix seconds after which the enrollment token is refused.
    pub expires_at: i64,
}

fn totp(secret: &[u8]) -> Option<TOTP> {
    // SHA-1, 6 digits, 30 s steps, one step of clock skew either way: what authenticator apps expect.
    TOTP::new(Algorithm::SHA1, 6, 1, 30, secret.to_vec()).ok()
}

/// The time step (Unix seconds / 30) whose TOTP code of `secret` is `code`, among the
/// current step and one either side (clock skew); `None` if it is none of them.
pub(crate) fn totp_step(secret: &[u8], code: &str, now: i64) -> Option<u64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret)?;
    let now = u64::try_from(now).ok()?;
    let current = now / t.step;
    // Every candidate is computed and compared, so the time taken does not depend on which matched.
    let mut found = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = t.generate(step * t.step);
        if crate::secrets::constant_time_eq(&expected, code) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// Recovery codes are compared without case, spaces or dashes.
pub(crate) fn normalize_recovery_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Bytes of an opened enrollment token: user id, secret, expiry (Unix seconds, LE).
const ENROLLMENT_LEN: usize = 16 + 20 + 8;

impl Identity {
    /// Checks the current password before an MFA change (step-up). A wrong one is
    /// recorded as a failed login and counts toward lockout, like any other guess.
    async fn step_up(&self, ctx: &RequestContext, user_id: Uuid, password: &str) -> Result<UserState> {
        for _ in 0..3 {
            let state = self.existing_user(user_id).await?;
            if password.len() <= 1024
                && self.passwords.verify(password.to_string(), Some(state.password_hash.clone())).await?
            {
                return Ok(state);
            }
            let events = self.failure_events(&state, "step_up_bad_password", 0.0);
            match self
                .append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(state.version), &events)
                .await
            {
                Ok(_) => return Err(DomainError::InvalidCredentials),
                Err(DomainError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(DomainError::Conflict { stream: format!("user-{user_id}") })
    }

    /// Starts MFA enrollment (needs the current password): a fresh secret, not yet
    /// active; the enrollment token expires after `mfa_enrollment_ttl`.
    #[tracing::instrument(name = "command", skip_all, fields(command = "begin_mfa"))]
    pub async fn begin_mfa(&self, ctx: &RequestContext, user_id: Uuid, password: &str) -> Result<MfaEnrollment> {
        let state = self.step_up(ctx, user_id, password).await?;
        if state.mfa_secret.is_some() {
            return Err(DomainError::FailedPrecondition("multi-factor authentication is already enabled".into()));
        }
        let mut secret = [0u8; 20];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let base32 = Secret::Raw(secret.to_vec()).to_encoded().to_string();
        let issuer = &self.config.totp_issuer;
        let otpauth_url = format!(
            "otpauth://totp/{}:{}?secret={base32}&issuer={}&algorithm=SHA1&digits=6&period=30",
            percent_encode(issuer),
            percent_encode(&state.email),
            percent_encode(issuer)
        );
        let expires_at = self.now() + self.config.mfa_enrollment_ttl.as_secs() as i64;
        let mut sealed = user_id.as_bytes().to_vec();
        sealed.extend_from_slice(&secret);
        sealed.extend_from_slice(&expires_at.to_le_bytes());
        Ok(MfaEnrollment { secret: base32, otpauth_url, enrollment_token: self.secrets.seal_text(&sealed), expires_at })
    }

    /// Confirms enrollment with a first code and the current password; returns the
    /// recovery codes (shown once) and the position.
    #[tracing::instrument(name = "command", skip_all, fields(command = "confirm_mfa"))]
    pub async fn confirm_mfa(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
        enrollment_token: &str,
        code: &str,
        password: &str,
    ) -> Result<(Vec<String>, u64)> {
        let bad = || DomainError::InvalidToken { what: "enrollment token" };
        let opened = self.secrets.open_text(enrollment_token).ok_or_else(bad)?;
        if opened.len() != ENROLLMENT_LEN || opened[..16] != *user_id.as_bytes() {
            return Err(bad());
        }
        let secret = &opened[16..36];
        let expires_at = i64::from_le_bytes(opened[36..].try_into().map_err(|_| bad())?);
        if expires_at <= self.now() {
            return Err(DomainError::InvalidToken { what: "enrollment token (it expired: enroll again)" });
        }
        let state = self.step_up(ctx, user_id, password).await?;
        if totp_step(secret, code.trim(), self.now()).is_none() {
            return Err(DomainError::InvalidArgument {
                field: "code",
                reason: "is not the current code of the authenticator".into(),
            });
        }
        if state.mfa_secret.is_some() {
            return Err(DomainError::FailedPrecondition("multi-factor authentication is already enabled".into()));
        }
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| random_token()[..12].to_ascii_lowercase()).collect();
        let event = Event::UserMfaEnabled(UserMfaEnabled {
            user_id,
            method: "totp".into(),
            secret_ciphertext: self.secrets.seal(secret),
            recovery_code_hashes: codes.iter().map(|c| token_hash(&normalize_recovery_code(c))).collect(),
        });
        let r =
            self.append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(state.version), &[event]).await?;
        Ok((codes, r.position))
    }

    /// Turns MFA off; needs the current password (a wrong one counts toward lockout).
    #[tracing::instrument(name = "command", skip_all, fields(command = "disable_mfa"))]
    pub async fn disable_mfa(&self, ctx: &RequestContext, user_id: Uuid, password: &str) -> Result<u64> {
        let state = self.step_up(ctx, user_id, password).await?;
        if state.mfa_secret.is_none() {
            return Err(DomainError::FailedPrecondition("multi-factor authentication is not enabled".into()));
        }
        let event = Event::UserMfaDisabled(UserMfaDisabled { user_id, reason: "user".into() });
        Ok(self
            .append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(state.version), &[event])
            .await?
            .position)
    }
}
