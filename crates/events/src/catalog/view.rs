//! The public view of an event: the only shape in which an event leaves the
//! process (REST audit, WebSocket, the gRPC event stream, the relay, `events
//! tail`). Hashes of passwords, tokens and recovery codes and sealed secrets
//! stay in the log.
//!
//! Every event type states its secret fields in [`Event::secret_fields`], an
//! exhaustive match: a new event type does not compile until someone decides
//! what of it is secret, and `tests/views.rs` fails if a field that looks like a
//! secret reaches a view.

use super::Event;
use serde_json::Value;

impl Event {
    /// The payload fields of this event type that never leave the process.
    pub fn secret_fields(&self) -> &'static [&'static str] {
        match self {
            Event::UserRegistered(_) => &["password_hash", "verification_token_hash"],
            Event::UserPasswordChanged(_) => &["password_hash"],
            Event::UserMfaEnabled(_) => &["secret_ciphertext", "recovery_code_hashes"],
            Event::UserRecoveryCodeUsed(_) => &["code_hash"],
            Event::SessionStarted(_) => &["refresh_token_hash"],
            Event::SessionRefreshed(_) => &["previous_token_hash", "refresh_token_hash"],
            Event::RefreshTokenReuseDetected(_) => &["reused_token_hash"],
            Event::ServiceAccountCreated(_) | Event::ServiceAccountSecretRotated(_) => &["secret_hash"],
            Event::ClientRegistered(_) | Event::ClientSecretRotated(_) => &["secret_hash"],
            Event::AuthorizationCodeIssued(_) => &["code_hash"],
            Event::UserEmailVerified(_)
            | Event::UserProfileUpdated(_)
            | Event::UserStatusChanged(_)
            | Event::UserMfaDisabled(_)
            | Event::UserLoginSucceeded(_)
            | Event::UserLoginFailed(_)
            | Event::UserLoggedOut(_)
            | Event::UserDeleted(_)
            | Event::UserErased(_)
            | Event::SessionRevoked(_)
            | Event::SessionExpired(_)
            | Event::SessionTokenRevoked(_)
            | Event::RoleCreated(_)
            | Event::RoleUpdated(_)
            | Event::RoleDeleted(_)
            | Event::RolePermissionGranted(_)
            | Event::RolePermissionRevoked(_)
            | Event::RoleAssigned(_)
            | Event::RoleRevoked(_)
            | Event::PermissionGranted(_)
            | Event::PermissionRevoked(_)
            | Event::SuspiciousActivity(_)
            | Event::AccountLocked(_)
            | Event::AccountUnlocked(_)
            | Event::SecurityAlert(_)
            | Event::ReservationClaimed(_)
            | Event::ReservationReleased(_)
            | Event::ServiceAccountDisabled(_)
            | Event::ServiceAccountDeleted(_)
            | Event::UserRegistrationAttempted(_)
            | Event::ClientUpdated(_)
            | Event::ClientDeleted(_)
            | Event::AuthorizationCodeRedeemed(_) => &[],
        }
    }

    /// The payload as JSON without its secret fields: what the outside may see.
    pub fn public_view(&self) -> Value {
        let mut value = self.payload_json();
        if let Value::Object(map) = &mut value {
            for field in self.secret_fields() {
                map.remove(*field);
            }
        }
        value
    }
}
