//! Which fields of which events are personal data, whose they are, and the sealed
//! versions that carry them encrypted (see [`crate::seal`]).
//!
//! An event type with personal fields has a *plain* version (the struct in this
//! catalog, what readers see) and a *sealed* version (what the log stores since
//! sealing): a [`SealedPayload`] whose `clear` part is the plain payload with the
//! personal fields blanked, and whose seal holds the whole plain payload encrypted
//! with the subject's data key. Without the key (the subject was erased), the sealed
//! version reads as its `clear` part: the tombstone.

use super::*;
use crate::seal::Seal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// (event type, sealed version, plain version it seals).
pub const SEALED_VERSIONS: &[(&str, u16, u16)] = &[
    ("user.registered", 3, 2),
    ("user.profile_updated", 2, 1),
    ("user.password_changed", 2, 1),
    ("user.status_changed", 2, 1),
    ("user.mfa_enabled", 2, 1),
    ("user.login_succeeded", 3, 2),
    ("user.login_failed", 2, 1),
    ("user.deleted", 2, 1),
    ("session.started", 2, 1),
    ("session.revoked", 2, 1),
    ("security.suspicious_activity", 2, 1),
];

/// The sealed version that carries `event_type` v`plain`, if that version has personal fields.
pub fn sealed_version_of(event_type: &str, plain: u16) -> Option<u16> {
    SEALED_VERSIONS.iter().find(|(t, _, p)| *t == event_type && *p == plain).map(|(_, s, _)| *s)
}

/// The plain version a sealed (`event_type`, `version`) carries; `None` if it is not a sealed version.
pub fn plain_version_of(event_type: &str, version: u16) -> Option<u16> {
    SEALED_VERSIONS.iter().find(|(t, s, _)| *t == event_type && *s == version).map(|(_, _, p)| *p)
}

/// The payload of a sealed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPayload {
    /// The plain version's bytes with every personal field blanked ([`blanked`]): what
    /// the event reads as without its subject's key. One run of bytes (encoded as a
    /// sequence of bytes is).
    #[serde(with = "serde_bytes")]
    pub clear: Vec<u8>,
    /// The plain version's bytes, whole, sealed with the subject's key.
    pub seal: Seal,
}

impl SealedPayload {
    pub fn decode(event_type: &str, version: u16, bytes: &[u8]) -> Result<Self, crate::CodecError> {
        super::decode_as(event_type, version, bytes)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Two byte strings with their lengths (at most ten bytes each), a UUID and a nonce.
        let room = self.clear.len() + self.seal.ciphertext.len() + 20 + 16 + 12;
        // Two byte strings, a UUID and an array: encoding into a Vec cannot fail.
        postcard::to_extend(self, Vec::with_capacity(room)).expect("sealed payload encodes")
    }
}

/// A [`SealedPayload`] read in place from the bytes that hold it (the same encoding).
#[derive(Debug, Deserialize)]
pub(crate) struct SealedPayloadRef<'a> {
    #[serde(borrow)]
    pub clear: &'a [u8],
    #[serde(borrow)]
    pub seal: crate::seal::SealRef<'a>,
}

impl<'a> SealedPayloadRef<'a> {
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

impl Event {
    /// The user this event is about, if any: whose key seals its personal fields, and
    /// (when no user acted) the client address in its metadata.
    pub fn subject(&self) -> Option<Uuid> {
        use Event::*;
        Some(match self {
            UserRegistered(e) => e.user_id,
            UserEmailVerified(e) => e.user_id,
            UserProfileUpdated(e) => e.user_id,
            UserPasswordChanged(e) => e.user_id,
            UserStatusChanged(e) => e.user_id,
            UserMfaEnabled(e) => e.user_id,
            UserMfaDisabled(e) => e.user_id,
            UserLoginSucceeded(e) => e.user_id,
            UserLoginFailed(e) => e.user_id,
            UserLoggedOut(e) => e.user_id,
            UserDeleted(e) => e.user_id,
            UserErased(e) => e.user_id,
            UserRecoveryCodeUsed(e) => e.user_id,
            UserRegistrationAttempted(e) => e.user_id,
            SessionStarted(e) => e.user_id,
            SessionRefreshed(e) => e.user_id,
            SessionRevoked(e) => e.user_id,
            SessionExpired(e) => e.user_id,
            SessionTokenRevoked(e) => e.user_id,
            RoleAssigned(e) => e.user_id,
            RoleRevoked(e) => e.user_id,
            PermissionGranted(e) => e.user_id,
            PermissionRevoked(e) => e.user_id,
            SuspiciousActivity(e) => e.user_id,
            AccountLocked(e) => e.user_id,
            AccountUnlocked(e) => e.user_id,
            SecurityAlert(e) => e.user_id,
            RefreshTokenReuseDetected(e) => e.user_id,
            ReservationClaimed(e) => e.owner,
            ReservationReleased(e) => e.owner,
            AuthorizationCodeIssued(e) => e.user_id,
            AuthorizationCodeRedeemed(e) => e.user_id,
            RoleCreated(_) | RoleUpdated(_) | RoleDeleted(_) | RolePermissionGranted(_) | RolePermissionRevoked(_) => {
                return None
            }
            ServiceAccountCreated(_)
            | ServiceAccountSecretRotated(_)
            | ServiceAccountDisabled(_)
            | ServiceAccountDeleted(_) => return None,
            ClientRegistered(_) | ClientUpdated(_) | ClientSecretRotated(_) | ClientDeleted(_) => return None,
        })
    }
}

/// The event with its personal data blanked (names, email, username, phone, device,
/// free-text reasons, password and MFA material); `None` if it holds none. What a
/// sealed event reads as once its subject is erased, and what in-place redaction
/// writes over events recorded before sealing.
pub fn blanked(event: &Event) -> Option<Event> {
    Some(match event {
        Event::UserRegistered(e) => Event::UserRegistered(UserRegistered {
            email: String::new(),
            username: String::new(),
            first_name: None,
            last_name: None,
            phone_number: None,
            password_hash: String::new(),
            verification_token_hash: String::new(),
            ..e.clone()
        }),
        Event::UserProfileUpdated(e) => Event::UserProfileUpdated(UserProfileUpdated {
            user_id: e.user_id,
            first_name: None,
            last_name: None,
            phone_number: None,
            profile: vec![],
        }),
        Event::UserPasswordChanged(e) => {
            Event::UserPasswordChanged(UserPasswordChanged { password_hash: String::new(), ..e.clone() })
        }
        Event::UserMfaEnabled(e) => Event::UserMfaEnabled(UserMfaEnabled {
            secret_ciphertext: vec![],
            recovery_code_hashes: vec![],
            ..e.clone()
        }),
        Event::SuspiciousActivity(e) => Event::SuspiciousActivity(SuspiciousActivity { details: vec![], ..e.clone() }),
        // Devices and free-text reasons say something about the person too.
        Event::UserLoginSucceeded(e) => Event::UserLoginSucceeded(UserLoginSucceeded { device_id: None, ..e.clone() }),
        Event::SessionStarted(e) => Event::SessionStarted(SessionStarted { device_id: None, ..e.clone() }),
        Event::UserLoginFailed(e) => Event::UserLoginFailed(UserLoginFailed { reason: String::new(), ..e.clone() }),
        Event::UserStatusChanged(e) => {
            Event::UserStatusChanged(UserStatusChanged { reason: String::new(), ..e.clone() })
        }
        Event::UserDeleted(e) => Event::UserDeleted(UserDeleted { reason: String::new(), ..e.clone() }),
        Event::SessionRevoked(e) => Event::SessionRevoked(SessionRevoked { reason: String::new(), ..e.clone() }),
        _ => return None,
    })
}

/// Decodes a sealed version without its key: the tombstone (`None` if it is not a sealed version).
pub(super) fn read_clear(event_type: &str, version: u16, bytes: &[u8]) -> Option<Result<Event, crate::CodecError>> {
    let plain = plain_version_of(event_type, version)?;
    Some(SealedPayload::decode(event_type, version, bytes).and_then(|s| Event::decode(event_type, plain, &s.clear)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_with_personal_fields_has_a_sealed_version_of_its_current_one() {
        for (t, v) in Event::CURRENT_VERSIONS {
            let sealed = sealed_version_of(t, *v);
            if let Some(s) = sealed {
                assert_eq!(plain_version_of(t, s), Some(*v));
                assert!(!Event::CURRENT_VERSIONS.contains(&(t, s)), "{t} v{s} is both sealed and plain");
            }
        }
        assert_eq!(SEALED_VERSIONS.len(), 11);
    }

    #[test]
    fn a_sealed_payload_encodes_as_released() {
        /// As first released: the clear bytes a sequence of bytes.
        #[derive(Serialize)]
        struct Released<'a> {
            clear: Vec<u8>,
            seal: &'a Seal,
        }
        let seal = Seal { subject: uuid::Uuid::now_v7(), nonce: [3; 12], ciphertext: vec![9; 200] };
        let sealed = SealedPayload { clear: vec![5; 150], seal: seal.clone() };
        let bytes = sealed.encode();
        assert_eq!(bytes, postcard::to_stdvec(&Released { clear: sealed.clear.clone(), seal: &seal }).unwrap());
        assert_eq!(postcard::from_bytes::<SealedPayload>(&bytes).unwrap(), sealed);
        let borrowed = SealedPayloadRef::decode(&bytes).expect("reads in place");
        assert_eq!((borrowed.clear, borrowed.seal.ciphertext), (&sealed.clear[..], &seal.ciphertext[..]));
    }
}
