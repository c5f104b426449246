//! Payloads of `user-*` streams. Released payloads never change shape: a change is
//! a new version (see [`super::legacy`]) plus an upcaster.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Lifecycle state of an account (the seed's `UserStatus`, same order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserStatus {
    PendingVerification,
    Active,
    Locked,
    Suspended,
    Deleted,
}

/// `user.registered` v2. v1 had no `phone_number` and no `locale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRegistered {
    pub user_id: Uuid,
    pub email: String,
    pub username: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone_number: Option<String>,
    /// BCP 47 language tag for messages to the user.
    pub locale: String,
    /// argon2id PHC string; never the password.
    pub password_hash: String,
    /// SHA-256 (hex) of the single-use email verification token.
    pub verification_token_hash: String,
    /// Unix seconds after which the verification token is refused.
    pub verification_expires_at: i64,
}

/// `user.email_verified` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserEmailVerified {
    pub user_id: Uuid,
}

/// `user.profile_updated` v1: the fields that changed (`None`: unchanged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserProfileUpdated {
    pub user_id: Uuid,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone_number: Option<String>,
    /// Free-form profile entries set by this update.
    pub profile: Vec<(String, String)>,
}

/// `user.password_changed` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserPasswordChanged {
    pub user_id: Uuid,
    /// argon2id PHC string of the new password.
    pub password_hash: String,
    /// `user`, `reset` or `admin`.
    pub reason: String,
}

/// `user.status_changed` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserStatusChanged {
    pub user_id: Uuid,
    pub from: UserStatus,
    pub to: UserStatus,
    pub reason: String,
}

/// `user.mfa_enabled` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMfaEnabled {
    pub user_id: Uuid,
    /// `totp`.
    pub method: String,
    /// The TOTP secret, encrypted (nonce ‖ ciphertext); never in clear.
    pub secret_ciphertext: Vec<u8>,
    /// Hashes of the single-use recovery codes.
    pub recovery_code_hashes: Vec<String>,
}

/// `user.mfa_disabled` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMfaDisabled {
    pub user_id: Uuid,
    pub reason: String,
}

/// `user.login_succeeded` v2. Client IP and user agent are in the event metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserLoginSucceeded {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub mfa_used: bool,
    /// 0.0 (usual) … 1.0 (almost certainly not the user).
    pub risk_score: f32,
    pub device_id: Option<String>,
    /// The TOTP time step (Unix seconds / 30) whose code this login used: each step is
    /// accepted once per user. `None`: no TOTP code (none needed, or a recovery code). New in v2.
    pub totp_step: Option<u64>,
}

/// `user.login_failed` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserLoginFailed {
    pub user_id: Uuid,
    /// `bad_password`, `bad_mfa_code`, `account_locked`, …
    pub reason: String,
    /// Failures inside the lockout window, this one included.
    pub failure_count: u32,
    pub risk_score: f32,
}

/// `user.logged_out` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserLoggedOut {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

/// `user.deleted` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDeleted {
    pub user_id: Uuid,
    pub reason: String,
}

/// `user.recovery_code_used` v1: one MFA recovery code spent (it cannot be used again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecoveryCodeUsed {
    pub user_id: Uuid,
    pub code_hash: String,
}

/// `user.registration_attempted` v1: someone tried to register with the email address
/// of this user. Recorded on the address's reservation stream; the answer to the
/// attempt looked like a successful registration, and the owner is told by email.
/// Where it came from is in the event metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRegistrationAttempted {
    pub user_id: Uuid,
}

/// The user's data key was deleted: every personal field sealed with it is unreadable
/// from now on, in every copy of the log. Carries nothing personal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserErased {
    pub user_id: Uuid,
}
