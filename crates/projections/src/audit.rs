//! A per-user index of security-relevant events, and the login history.

use crate::digest::{sorted, Digest};
use perfect21_events::{Event, RecordedEvent};
use std::collections::{HashMap, VecDeque};
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
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub risk_score: f32,
    pub failure_reason: Option<String>,
}

/// The audit read model: positions of each user's security events, and recent logins.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Audit {
    positions: HashMap<Uuid, Vec<u64>>,
    logins: HashMap<Uuid, VecDeque<LoginRecord>>,
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
        _ => return None,
    })
}

impl Audit {
    /// Log positions of the user's security events, oldest first.
    pub fn positions(&self, user: Uuid) -> &[u64] {
        self.positions.get(&user).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The user's most recent logins, newest last.
    pub fn logins(&self, user: Uuid) -> impl Iterator<Item = &LoginRecord> {
        self.logins.get(&user).into_iter().flatten()
    }

    pub(crate) fn apply(&mut self, recorded: &RecordedEvent, event: &Event) {
        let Some(user) = audited_user(event) else {
            return;
        };
        self.positions.entry(user).or_default().push(recorded.position);
        if let Event::UserDeleted(_) = event {
            // Where a deleted user logged in from is personal data: forget it (the log forgets it too).
            for login in self.logins.get_mut(&user).into_iter().flatten() {
                login.client_ip = None;
                login.user_agent = None;
            }
        }
        let login = match event {
            Event::UserLoginSucceeded(e) => Some((true, e.risk_score, None)),
            Event::UserLoginFailed(e) => Some((false, e.risk_score, Some(e.reason.clone()))),
            _ => None,
        };
        if let Some((success, risk_score, failure_reason)) = login {
            let history = self.logins.entry(user).or_default();
            if history.len() == LOGIN_HISTORY_LEN {
                history.pop_front();
            }
            history.push_back(LoginRecord {
                position: recorded.position,
                at: recorded.recorded_at.timestamp_micros(),
                success,
                client_ip: recorded.metadata.client_ip.clone(),
                user_agent: recorded.metadata.user_agent.clone(),
                risk_score,
                failure_reason,
            });
        }
    }

    pub(crate) fn digest(&self, d: &mut Digest) {
        for (user, positions) in sorted(self.positions.iter()) {
            d.bytes(user.as_bytes());
            positions.iter().for_each(|p| d.u64(*p));
        }
        for (user, logins) in sorted(self.logins.iter()) {
            d.bytes(user.as_bytes());
            for l in logins {
                d.u64(l.position);
                d.i64(l.at);
                d.u64(l.success as u64);
                d.opt_str(l.client_ip.as_deref());
                d.opt_str(l.user_agent.as_deref());
                d.u64(l.risk_score.to_bits() as u64);
                d.opt_str(l.failure_reason.as_deref());
            }
        }
    }
}
