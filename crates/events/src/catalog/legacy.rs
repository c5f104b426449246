//! Released payload versions that are no longer written, and their upcasters.
//! Readers only ever see the newest version: [`upcast`] turns old bytes into it.

use super::user::{UserLoginSucceeded, UserRegistered};
use super::Event;
use crate::error::CodecError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `user.registered` v1, as released first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRegisteredV1 {
    pub user_id: Uuid,
    pub email: String,
    pub username: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub password_hash: String,
    pub verification_token_hash: String,
    pub verification_expires_at: i64,
}

/// Locale given to accounts registered before v2 recorded one.
pub const DEFAULT_LOCALE: &str = "en";

impl From<UserRegisteredV1> for UserRegistered {
    fn from(v1: UserRegisteredV1) -> Self {
        UserRegistered {
            user_id: v1.user_id,
            email: v1.email,
            username: v1.username,
            first_name: v1.first_name,
            last_name: v1.last_name,
            phone_number: None,
            locale: DEFAULT_LOCALE.to_string(),
            password_hash: v1.password_hash,
            verification_token_hash: v1.verification_token_hash,
            verification_expires_at: v1.verification_expires_at,
        }
    }
}

/// `user.login_succeeded` v1, before the TOTP step was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserLoginSucceededV1 {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub mfa_used: bool,
    pub risk_score: f32,
    pub device_id: Option<String>,
}

impl From<UserLoginSucceededV1> for UserLoginSucceeded {
    fn from(v1: UserLoginSucceededV1) -> Self {
        UserLoginSucceeded {
            user_id: v1.user_id,
            session_id: v1.session_id,
            mfa_used: v1.mfa_used,
            risk_score: v1.risk_score,
            device_id: v1.device_id,
            totp_step: None,
        }
    }
}

/// `event` encoded as schema `version` of its type: the current one, or a legacy
/// version it can be written back as (redaction keeps a record's version).
pub fn encode_as(event: &Event, version: u16) -> Result<Vec<u8>, CodecError> {
    if version == event.schema_version() {
        return event.encode_payload();
    }
    let unknown = || CodecError::UnknownEventType {
        event_type: event.event_type().to_string(),
        schema_version: version,
        known: "this build cannot write that version".into(),
    };
    match (event, version) {
        (Event::UserRegistered(e), 1) => super::encode_as(
            "user.registered",
            &UserRegisteredV1 {
                user_id: e.user_id,
                email: e.email.clone(),
                username: e.username.clone(),
                first_name: e.first_name.clone(),
                last_name: e.last_name.clone(),
                password_hash: e.password_hash.clone(),
                verification_token_hash: e.verification_token_hash.clone(),
                verification_expires_at: e.verification_expires_at,
            },
        ),
        (Event::UserLoginSucceeded(e), 1) => super::encode_as(
            "user.login_succeeded",
            &UserLoginSucceededV1 {
                user_id: e.user_id,
                session_id: e.session_id,
                mfa_used: e.mfa_used,
                risk_score: e.risk_score,
                device_id: e.device_id.clone(),
            },
        ),
        _ => Err(unknown()),
    }
}

/// Every released (event_type, schema_version) that is older than the current one.
pub const LEGACY_VERSIONS: &[(&str, u16)] = &[("user.registered", 1), ("user.login_succeeded", 1)];

/// Decodes an old version and upcasts it; `None` if (`event_type`, `version`) is not a legacy version.
pub(super) fn upcast(event_type: &str, version: u16, bytes: &[u8]) -> Option<Result<Event, CodecError>> {
    match (event_type, version) {
        ("user.registered", 1) => Some(
            super::decode_as::<UserRegisteredV1>(event_type, version, bytes).map(|v1| Event::UserRegistered(v1.into())),
        ),
        ("user.login_succeeded", 1) => Some(
            super::decode_as::<UserLoginSucceededV1>(event_type, version, bytes)
                .map(|v1| Event::UserLoginSucceeded(v1.into())),
        ),
        _ => None,
    }
}
