//! The event catalog: every event type this build knows, its current schema
//! version, and the codec (postcard) that turns payloads into bytes and back.
//!
//! A released payload never changes shape. To change one, copy the current
//! struct into [`legacy`] as `…V<n>`, bump the version in the table below, add an
//! upcaster to [`legacy::upcast`], and check in a golden fixture for the new
//! version (`crates/events/fixtures`).

pub mod authz;
pub mod client;
pub mod legacy;
pub mod personal;
pub mod reservation;
pub mod security;
pub mod service_account;
pub mod session;
pub mod user;
pub mod view;

pub use authz::*;
pub use client::*;
pub use reservation::*;
pub use security::*;
pub use service_account::*;
pub use session::*;
pub use user::*;

use crate::error::CodecError;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn decode_as<T: DeserializeOwned>(event_type: &str, version: u16, bytes: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(|source| CodecError::Decode {
        event_type: event_type.to_string(),
        schema_version: version,
        source,
    })
}

fn encode_as<T: Serialize>(event_type: &'static str, payload: &T) -> Result<Vec<u8>, CodecError> {
    // Room for most payloads at once (a vector grown from empty is copied four or five times).
    postcard::to_extend(payload, Vec::with_capacity(PAYLOAD_ROOM))
        .map_err(|source| CodecError::Encode { event_type, source })
}

/// Bytes an encoded payload is given room for before it is written (most take fewer).
const PAYLOAD_ROOM: usize = 192;

macro_rules! catalog {
    ($( $variant:ident = $name:literal v $version:literal ),* $(,)?) => {
        /// One event of the catalog, always in its newest schema version.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $( $variant($variant), )*
        }

        impl Event {
            /// Every event type with its current schema version.
            pub const CURRENT_VERSIONS: &'static [(&'static str, u16)] = &[ $( ($name, $version), )* ];

            /// The dotted event type name, e.g. `user.registered`.
            pub fn event_type(&self) -> &'static str {
                match self { $( Event::$variant(_) => $name, )* }
            }

            /// The schema version this build writes for this event type.
            pub fn schema_version(&self) -> u16 {
                match self { $( Event::$variant(_) => $version, )* }
            }

            /// The payload as postcard bytes.
            pub fn encode_payload(&self) -> Result<Vec<u8>, CodecError> {
                match self { $( Event::$variant(p) => encode_as($name, p), )* }
            }

            /// The payload as JSON, for people and tools.
            pub fn payload_json(&self) -> serde_json::Value {
                let value = match self { $( Event::$variant(p) => serde_json::to_value(p), )* };
                // Payloads are plain data (strings, numbers, maps with string keys).
                value.unwrap_or(serde_json::Value::Null)
            }

            /// Decodes `bytes` recorded as (`event_type`, `schema_version`), upcasting older versions.
            pub fn decode(event_type: &str, schema_version: u16, bytes: &[u8]) -> Result<Event, CodecError> {
                match (event_type, schema_version) {
                    $( ($name, $version) => return decode_as(event_type, schema_version, bytes).map(Event::$variant), )*
                    _ => {}
                }
                legacy::upcast(event_type, schema_version, bytes)
                    .or_else(|| personal::read_clear(event_type, schema_version, bytes))
                    .unwrap_or_else(|| {
                    Err(CodecError::UnknownEventType {
                        event_type: event_type.to_string(),
                        schema_version,
                        known: known_versions_of(event_type),
                    })
                })
            }
        }

        $( impl From<$variant> for Event {
            fn from(p: $variant) -> Event { Event::$variant(p) }
        } )*
    };
}

catalog! {
    UserRegistered = "user.registered" v 2,
    UserEmailVerified = "user.email_verified" v 1,
    UserProfileUpdated = "user.profile_updated" v 1,
    UserPasswordChanged = "user.password_changed" v 1,
    UserStatusChanged = "user.status_changed" v 1,
    UserMfaEnabled = "user.mfa_enabled" v 1,
    UserMfaDisabled = "user.mfa_disabled" v 1,
    UserLoginSucceeded = "user.login_succeeded" v 2,
    UserLoginFailed = "user.login_failed" v 1,
    UserLoggedOut = "user.logged_out" v 1,
    UserDeleted = "user.deleted" v 1,
    SessionStarted = "session.started" v 1,
    SessionRefreshed = "session.refreshed" v 1,
    SessionRevoked = "session.revoked" v 1,
    SessionExpired = "session.expired" v 1,
    SessionTokenRevoked = "session.token_revoked" v 1,
    RoleCreated = "role.created" v 1,
    RoleUpdated = "role.updated" v 1,
    RoleDeleted = "role.deleted" v 1,
    RolePermissionGranted = "role.permission_granted" v 1,
    RolePermissionRevoked = "role.permission_revoked" v 1,
    RoleAssigned = "permission.role_assigned" v 1,
    RoleRevoked = "permission.role_revoked" v 1,
    PermissionGranted = "permission.granted" v 1,
    PermissionRevoked = "permission.revoked" v 1,
    SuspiciousActivity = "security.suspicious_activity" v 1,
    AccountLocked = "security.account_locked" v 1,
    AccountUnlocked = "security.account_unlocked" v 1,
    SecurityAlert = "security.alert" v 1,
    RefreshTokenReuseDetected = "security.refresh_token_reuse_detected" v 1,
    ReservationClaimed = "reservation.claimed" v 1,
    ReservationReleased = "reservation.released" v 1,
    UserRecoveryCodeUsed = "user.recovery_code_used" v 1,
    ServiceAccountCreated = "service_account.created" v 1,
    ServiceAccountSecretRotated = "service_account.secret_rotated" v 1,
    ServiceAccountDisabled = "service_account.disabled" v 1,
    ServiceAccountDeleted = "service_account.deleted" v 1,
    UserRegistrationAttempted = "user.registration_attempted" v 1,
    ClientRegistered = "client.registered" v 1,
    ClientUpdated = "client.updated" v 1,
    ClientSecretRotated = "client.secret_rotated" v 1,
    ClientDeleted = "client.deleted" v 1,
    AuthorizationCodeIssued = "authorization_code.issued" v 1,
    AuthorizationCodeRedeemed = "authorization_code.redeemed" v 1,
    UserErased = "user.erased" v 1,
}

/// Every (event_type, schema_version) this build can read: current, legacy and sealed.
pub fn readable_versions() -> impl Iterator<Item = (&'static str, u16)> {
    let sealed = personal::SEALED_VERSIONS.iter().map(|(t, s, _)| (*t, *s));
    Event::CURRENT_VERSIONS.iter().chain(legacy::LEGACY_VERSIONS).copied().chain(sealed)
}

fn known_versions_of(event_type: &str) -> String {
    let versions: Vec<String> =
        readable_versions().filter(|(t, _)| *t == event_type).map(|(_, v)| format!("v{v}")).collect();
    if versions.is_empty() {
        format!("no event type of that name ({} types in all)", Event::CURRENT_VERSIONS.len())
    } else {
        format!("{event_type} {}", versions.join(", "))
    }
}
