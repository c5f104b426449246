//! Payloads of `session-*` streams.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `session.started` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStarted {
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// SHA-256 (hex) of the opaque refresh token; never the token.
    pub refresh_token_hash: String,
    pub access_jti: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub device_id: Option<String>,
}

/// `session.refreshed` v1: refresh-token rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRefreshed {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub previous_token_hash: String,
    pub refresh_token_hash: String,
    pub access_jti: String,
    pub expires_at: i64,
}

/// `session.revoked` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRevoked {
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// `logout`, `admin`, `refresh_token_reuse`, `password_changed`, …
    pub reason: String,
}

/// `session.expired` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionExpired {
    pub session_id: Uuid,
    pub user_id: Uuid,
}

/// `session.token_revoked` v1: one access token (by jti) revoked before its expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionTokenRevoked {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub jti: String,
    /// Unix seconds; after it the revocation need not be remembered.
    pub expires_at: i64,
}
