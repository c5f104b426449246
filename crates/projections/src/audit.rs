//! A per-user index of security-relevant events, and the login history.

use crate::digest::{sorted, Digest};
use crate::IdMap;
use crate::{intern, Read};
use perfect21_events::Event;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use uuid::Uuid;

/// Logins remembered per user in the login history.
pub const LOGIN_HISTORY_LEN: usize = 20;

/// One login attempt.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoginRecord {
    pub position: u64,
    /// Microseconds since the Unix epoch.
    pub at: i64,
    pub success: bool,
    /// The client address, when the request carried a parseable one.
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<Arc<str>>,
    pub risk_score: f32,
    pub failure_reason: Option<Arc<str>>,
}

/// Log positions, ascending, stored as varint deltas (a few bytes each).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "StoredPositions")]
struct PositionList {
    bytes: Vec<u8>,
    last: u64,
}

/// A [`PositionList`] as a snapshot holds it, before it is checked.
#[derive(serde::Deserialize)]
struct StoredPositions {
    bytes: Vec<u8>,
    last: u64,
}

impl TryFrom<StoredPositions> for PositionList {
    type Error = String;

    /// A snapshot's list must be what `push` writes: whole varints of at most 64 bits,
    /// positions strictly ascending, the last one `last`. Anything else is a damaged
    /// snapshot, refused (the models then replay from the log).
    fn try_from(s: StoredPositions) -> Result<Self, String> {
        let (mut at, mut delta, mut shift, mut open) = (0u64, 0u64, 0u32, false);
        for &b in &s.bytes {
            let part = u64::from(b & 0x7f);
            if shift > 63 || (shift == 63 && part > 1) {
                return Err("an audit position does not fit in 64 bits".into());
            }
            delta |= part << shift;
            shift += 7;
            open = b & 0x80 != 0;
            if !open {
                if delta == 0 {
                    return Err("audit positions are not strictly ascending".into());
                }
                at = at.checked_add(delta).ok_or("an audit position does not fit in 64 bits")?;
                (delta, shift) = (0, 0);
            }
        }
        if open {
            return Err("the audit positions end inside a number".into());
        }
        if at != s.last {
            return Err(format!("the audit positions end at {at}, but the list says {}", s.last));
        }
        Ok(PositionList { bytes: s.bytes, last: s.last })
    }
}

impl PositionList {
    fn push(&mut self, position: u64) {
        let mut delta = position - self.last;
        self.last = position;
        loop {
            let byte = (delta & 0x7f) as u8;
            delta >>= 7;
            if delta == 0 {
                self.bytes.push(byte);
                return;
            }
            self.bytes.push(byte | 0x80);
        }
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut bytes = self.bytes.iter();
        let mut at = 0u64;
        std::iter::from_fn(move || {
            let (mut delta, mut shift) = (0u64, 0);
            loop {
                let b = *bytes.next()?;
                delta |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    at += delta;
                    return Some(at);
                }
            }
        })
    }
}

/// What the audit model keeps of one user.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct UserAudit {
    positions: PositionList,
    /// Newest last; at most [`LOGIN_HISTORY_LEN`], allocated exactly.
    logins: Vec<LoginRecord>,
}

/// The audit read model: positions of each user's security events, and recent logins.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Audit {
    /// Boxed, so that a hash table's spare slots cost a pointer each.
    users: IdMap<Uuid, Box<UserAudit>>,
    /// User agents and failure reasons repeat: one copy each.
    #[serde(skip)]
    interned: HashSet<Arc<str>>,
}

/// The user a security-relevant event is about, if the event is security-relevant.
pub fn audited_user(event: &Event) -> Option<Uuid> {
    Some(match event {
        Event::UserRegistered(e) => e.user_id,
        Event::UserEmailVerified(e) => e.user_id,
        Event::UserPasswordChanged(e) => e.user_id,
        Event::UserStatusChanged(e) => e.user_id,
        Event::UserMfaEnabled(e) => e.user_id,
        Event::UserMfaDisabled(e) => e.user_id,
        Event::UserLoginSucceeded(e) => e.user_id,
        Event::UserLoginFailed(e) => e.user_id,
        Event::UserLoggedOut(e) => e.user_id,
        Event::UserDeleted(e) => e.user_id,
        Event::UserErased(e) => e.user_id,
        Event::SessionRevoked(e) => e.user_id,
        Event::SessionTokenRevoked(e) => e.user_id,
        Event::RoleAssigned(e) => e.user_id,
        Event::RoleRevoked(e) => e.user_id,
        Event::PermissionGranted(e) => e.user_id,
        Event::PermissionRevoked(e) => e.user_id,
        Event::SuspiciousActivity(e) => e.user_id,
        Event::AccountLocked(e) => e.user_id,
        Event::AccountUnlocked(e) => e.user_id,
        Event::SecurityAlert(e) => e.user_id,
        Event::RefreshTokenReuseDetected(e) => e.user_id,
        Event::UserRegistrationAttempted(e) => e.user_id,
        Event::ServiceAccountCreated(e) => e.service_account_id,
        Event::ServiceAccountSecretRotated(e) => e.service_account_id,
        Event::ServiceAccountDisabled(e) => e.service_account_id,
        Event::ServiceAccountDeleted(e) => e.service_account_id,
        Event::AuthorizationCodeIssued(e) => e.user_id,
        Event::AuthorizationCodeRedeemed(e) => e.user_id,
        _ => return None,
    })
}

impl Audit {
    /// Log positions of the user's security events, oldest first.
    pub fn positions(&self, user: Uuid) -> Vec<u64> {
        self.users.get(&user).map(|a| a.positions.iter().collect()).unwrap_or_default()
    }

    /// The user's most recent logins, newest last.
    pub fn logins(&self, user: Uuid) -> impl Iterator<Item = &LoginRecord> {
        self.users.get(&user).into_iter().flat_map(|a| a.logins.iter())
    }

    pub(crate) fn apply(&mut self, read: Read<'_>, event: &Event) {
        let Some(user) = audited_user(event) else {
            return;
        };
        let audit = self.users.entry(user).or_default();
        audit.positions.push(read.position);
        let (success, risk_score, failure_reason) = match event {
            Event::UserLoginSucceeded(e) => (true, e.risk_score, None),
            Event::UserLoginFailed(e) => (false, e.risk_score, Some(intern(&mut self.interned, &e.reason))),
            Event::UserDeleted(_) => {
                // Where a deleted user logged in from, and why logins failed, are personal
                // data: forget them (the log forgets them too).
                for login in &mut audit.logins {
                    login.client_ip = None;
                    login.user_agent = None;
                    login.failure_reason = None;
                }
                return;
            }
            _ => return,
        };
        if audit.logins.len() == LOGIN_HISTORY_LEN {
            audit.logins.remove(0);
        }
        audit.logins.reserve_exact(1);
        audit.logins.push(LoginRecord {
            position: read.position,
            at: read.at,
            success,
            client_ip: read.client_ip.and_then(|ip| ip.parse().ok()),
            user_agent: read.user_agent.map(|ua| intern(&mut self.interned, ua)),
            risk_score,
            failure_reason,
        });
    }

    pub(crate) fn digest(&self, d: &mut Digest) {
        for (user, audit) in sorted(self.users.iter()) {
            d.bytes(user.as_bytes());
            audit.positions.iter().for_each(|p| d.u64(p));
            for l in &audit.logins {
                d.u64(l.position);
                d.i64(l.at);
                d.u64(l.success as u64);
                d.opt_str(l.client_ip.map(|ip| ip.to_string()).as_deref());
                d.opt_str(l.user_agent.as_deref());
                d.u64(l.risk_score.to_bits() as u64);
                d.opt_str(l.failure_reason.as_deref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(bytes: &[u8], last: u64) -> Result<PositionList, String> {
        PositionList::try_from(StoredPositions { bytes: bytes.to_vec(), last })
    }

    #[test]
    fn a_written_list_reads_back_and_a_damaged_one_is_refused() {
        let mut list = PositionList::default();
        for p in [1, 2, 300, 70_000, u64::MAX / 2] {
            list.push(p);
        }
        let again = stored(&list.bytes, list.last).unwrap();
        assert_eq!(again.iter().collect::<Vec<_>>(), [1, 2, 300, 70_000, u64::MAX / 2]);
        assert!(stored(&[0xff; 11], 0).unwrap_err().contains("64 bits"), "an overlong varint");
        assert!(stored(&[0x81], 1).unwrap_err().contains("inside a number"));
        assert!(stored(&[0x01, 0x00], 1).unwrap_err().contains("ascending"));
        assert!(stored(&[0x01], 2).unwrap_err().contains("the list says 2"));
        assert!(
            stored(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01], 0).is_err(),
            "sum overflows"
        );
    }
}
