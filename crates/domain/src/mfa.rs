//! TOTP multi-factor authentication with single-use recovery codes.

use crate::error::{DomainError, Result};
use crate::secrets::{random_token, token_hash};
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
}

fn totp(secret: &[u8]) -> Option<TOTP> {
    // SHA-1, 6 digits, 30 s steps, one step of clock skew either way: what authenticator apps expect.
    TOTP::new(Algorithm::SHA1, 6, 1, 30, secret.to_vec()).ok()
}

/// Whether `code` is the current TOTP code of `secret` (one step of skew allowed).
pub(crate) fn check_totp(secret: &[u8], code: &str, _issuer: &str) -> bool {
    code.len() == 6 && totp(secret).is_some_and(|t| t.check_current(code).unwrap_or(false))
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

impl Identity {
    /// Starts MFA enrollment: a fresh secret, not yet active.
    #[tracing::instrument(name = "command", skip_all, fields(command = "begin_mfa"))]
    pub async fn begin_mfa(&self, user_id: Uuid) -> Result<MfaEnrollment> {
        let state = self.existing_user(user_id).await?;
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
        let mut sealed = user_id.as_bytes().to_vec();
        sealed.extend_from_slice(&secret);
        Ok(MfaEnrollment { secret: base32, otpauth_url, enrollment_token: self.secrets.seal_text(&sealed) })
    }

    /// Confirms enrollment with a first code; returns the recovery codes (shown once) and the position.
    #[tracing::instrument(name = "command", skip_all, fields(command = "confirm_mfa"))]
    pub async fn confirm_mfa(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
        enrollment_token: &str,
        code: &str,
    ) -> Result<(Vec<String>, u64)> {
        let bad = || DomainError::InvalidToken { what: "enrollment token" };
        let opened = self.secrets.open_text(enrollment_token).ok_or_else(bad)?;
        if opened.len() != 36 || opened[..16] != *user_id.as_bytes() {
            return Err(bad());
        }
        let secret = &opened[16..];
        if !check_totp(secret, code.trim(), &self.config.totp_issuer) {
            return Err(DomainError::InvalidArgument {
                field: "code",
                reason: "is not the current code of the authenticator".into(),
            });
        }
        let state = self.existing_user(user_id).await?;
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

    /// Turns MFA off; needs the password.
    #[tracing::instrument(name = "command", skip_all, fields(command = "disable_mfa"))]
    pub async fn disable_mfa(&self, ctx: &RequestContext, user_id: Uuid, password: &str) -> Result<u64> {
        let state = self.existing_user(user_id).await?;
        if state.mfa_secret.is_none() {
            return Err(DomainError::FailedPrecondition("multi-factor authentication is not enabled".into()));
        }
        if !self.passwords.verify(password.to_string(), Some(state.password_hash.clone())).await? {
            return Err(DomainError::InvalidCredentials);
        }
        let event = Event::UserMfaDisabled(UserMfaDisabled { user_id, reason: "user".into() });
        Ok(self
            .append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(state.version), &[event])
            .await?
            .position)
    }
}
