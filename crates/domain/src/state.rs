//! Aggregate state folded from one stream: what the commands decide from.
//! These folds are pure, like the projections, but they hold what a decision
//! needs (hashes, counters) rather than what a reader wants.

use perfect21_events::catalog::{AuthorizationCodeIssued, AuthorizationCodeRedeemed, UserStatus};
use perfect21_events::{Event, RecordedEvent};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// How many recent client IPs and user agents a user's risk scoring remembers.
const KNOWN_CLIENTS: usize = 10;

/// A user, as its `user-<id>` stream tells.
#[derive(Debug, Clone, Default)]
pub struct UserState {
    pub version: Option<u64>,
    pub exists: bool,
    pub user_id: Uuid,
    pub email: String,
    pub username: String,
    pub status: Option<UserStatus>,
    pub password_hash: String,
    pub email_verified: bool,
    pub verification: Option<(String, i64)>,
    /// The hash of the verification token that was used (to tell a reused link from a bad one).
    pub used_verification: Option<String>,
    pub mfa_secret: Option<Vec<u8>>,
    /// The last TOTP time step accepted (or the step MFA was enabled in): codes of it
    /// and earlier steps are refused.
    pub last_totp_step: Option<u64>,
    pub recovery_codes: Vec<String>,
    /// Unix seconds of failed logins since the last success.
    pub failures: Vec<i64>,
    pub locked_until: Option<i64>,
    pub known_ips: Vec<String>,
    pub known_agents: Vec<String>,
    /// Assigned roles and when each assignment stops granting (Unix seconds).
    pub roles: BTreeMap<String, Option<i64>>,
    pub grants: BTreeSet<String>,
    pub logins: u64,
    /// Every session the user logged in with (for erasure).
    pub sessions: Vec<Uuid>,
}

fn remember(list: &mut Vec<String>, value: Option<&String>) {
    if let Some(v) = value {
        list.retain(|x| x != v);
        list.push(v.clone());
        if list.len() > KNOWN_CLIENTS {
            list.remove(0);
        }
    }
}

impl UserState {
    pub fn is_deleted(&self) -> bool {
        self.status == Some(UserStatus::Deleted)
    }

    pub fn apply(&mut self, recorded: &RecordedEvent, event: &Event) {
        self.version = Some(recorded.stream_version);
        let at = recorded.recorded_at.timestamp();
        match event {
            Event::UserRegistered(e) => {
                self.exists = true;
                self.user_id = e.user_id;
                self.email = e.email.clone();
                self.username = e.username.clone();
                self.status = Some(UserStatus::PendingVerification);
                self.password_hash = e.password_hash.clone();
                self.verification = Some((e.verification_token_hash.clone(), e.verification_expires_at));
            }
            Event::UserEmailVerified(_) => {
                self.email_verified = true;
                self.used_verification = self.verification.take().map(|(hash, _)| hash);
            }
            Event::UserPasswordChanged(e) => self.password_hash = e.password_hash.clone(),
            Event::UserStatusChanged(e) => {
                self.status = Some(e.to);
                if e.to != UserStatus::Locked {
                    self.locked_until = None;
                }
            }
            Event::UserMfaEnabled(e) => {
                self.mfa_secret = Some(e.secret_ciphertext.clone());
                self.recovery_codes = e.recovery_code_hashes.clone();
                // The confirming code was of (about) this step: it cannot log in afterwards.
                let enabled_step = u64::try_from(at).unwrap_or(0) / 30;
                self.last_totp_step = Some(self.last_totp_step.unwrap_or(0).max(enabled_step));
            }
            Event::UserMfaDisabled(_) => {
                self.mfa_secret = None;
                self.recovery_codes.clear();
            }
            Event::UserRecoveryCodeUsed(e) => self.recovery_codes.retain(|c| c != &e.code_hash),
            Event::UserLoginSucceeded(e) => {
                if let Some(step) = e.totp_step {
                    self.last_totp_step = Some(self.last_totp_step.unwrap_or(0).max(step));
                }
                self.sessions.push(e.session_id);
                self.failures.clear();
                self.logins += 1;
                remember(&mut self.known_ips, recorded.metadata.client_ip.as_ref());
                remember(&mut self.known_agents, recorded.metadata.user_agent.as_ref());
            }
            Event::UserLoginFailed(_) => self.failures.push(at),
            Event::AccountLocked(e) => {
                self.status = Some(UserStatus::Locked);
                self.locked_until = e.locked_until;
            }
            Event::AccountUnlocked(_) => {
                self.status =
                    Some(if self.email_verified { UserStatus::Active } else { UserStatus::PendingVerification });
                self.locked_until = None;
                self.failures.clear();
            }
            Event::UserDeleted(_) => {
                self.status = Some(UserStatus::Deleted);
                self.password_hash.clear();
                self.mfa_secret = None;
                self.recovery_codes.clear();
                self.roles.clear();
                self.grants.clear();
            }
            Event::RoleAssigned(e) => {
                self.roles.insert(e.role_id.clone(), e.expires_at);
            }
            Event::RoleRevoked(e) => {
                self.roles.remove(&e.role_id);
            }
            Event::PermissionGranted(e) => {
                self.grants.insert(e.permission.id.clone());
            }
            Event::PermissionRevoked(e) => {
                self.grants.remove(&e.permission_id);
            }
            _ => {}
        }
    }
}

/// A session, as its `session-<id>` stream tells.
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    pub version: Option<u64>,
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub current_hash: String,
    pub rotated: Vec<String>,
    pub access_jti: String,
    pub expires_at: i64,
    pub ended: bool,
}

impl SessionState {
    pub fn exists(&self) -> bool {
        self.version.is_some()
    }

    pub fn apply(&mut self, recorded: &RecordedEvent, event: &Event) {
        self.version = Some(recorded.stream_version);
        match event {
            Event::SessionStarted(e) => {
                self.session_id = e.session_id;
                self.user_id = e.user_id;
                self.current_hash = e.refresh_token_hash.clone();
                self.access_jti = e.access_jti.clone();
                self.expires_at = e.expires_at;
            }
            Event::SessionRefreshed(e) => {
                self.rotated.push(std::mem::take(&mut self.current_hash));
                self.current_hash = e.refresh_token_hash.clone();
                self.access_jti = e.access_jti.clone();
                self.expires_at = e.expires_at;
            }
            Event::SessionRevoked(_) | Event::SessionExpired(_) => self.ended = true,
            _ => {}
        }
    }
}

/// A role, as its `role-<id>` stream tells.
#[derive(Debug, Clone, Default)]
pub struct RoleState {
    pub version: Option<u64>,
    pub deleted: bool,
    pub permissions: BTreeSet<String>,
}

impl RoleState {
    pub fn is_live(&self) -> bool {
        self.version.is_some() && !self.deleted
    }

    pub fn apply(&mut self, recorded: &RecordedEvent, event: &Event) {
        self.version = Some(recorded.stream_version);
        match event {
            Event::RoleCreated(_) => {
                self.deleted = false;
                self.permissions.clear();
            }
            Event::RoleDeleted(_) => self.deleted = true,
            Event::RolePermissionGranted(e) => {
                self.permissions.insert(e.permission.id.clone());
            }
            Event::RolePermissionRevoked(e) => {
                self.permissions.remove(&e.permission_id);
            }
            _ => {}
        }
    }
}

/// A reservation (`email-<hash>` / `username-<hash>`), as its stream tells.
#[derive(Debug, Clone, Default)]
pub struct ReservationState {
    pub version: Option<u64>,
    /// The owner and the claim time (Unix seconds), if claimed.
    pub owner: Option<(Uuid, i64)>,
}

impl ReservationState {
    pub fn apply(&mut self, recorded: &RecordedEvent, event: &Event) {
        self.version = Some(recorded.stream_version);
        match event {
            Event::ReservationClaimed(e) => self.owner = Some((e.owner, recorded.recorded_at.timestamp())),
            Event::ReservationReleased(_) => self.owner = None,
            _ => {}
        }
    }
}

/// A service account, as its `service_account-<id>` stream tells.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccountState {
    pub version: Option<u64>,
    pub exists: bool,
    pub name: String,
    pub disabled: bool,
    pub deleted: bool,
    /// Assigned roles and when each assignment stops granting (Unix seconds).
    pub roles: BTreeMap<String, Option<i64>>,
}

impl ServiceAccountState {
    /// Created and not deleted.
    pub fn is_live(&self) -> bool {
        self.exists && !self.deleted
    }

    pub fn apply(&mut self, recorded: &RecordedEvent, event: &Event) {
        self.version = Some(recorded.stream_version);
        match event {
            Event::ServiceAccountCreated(e) => {
                self.exists = true;
                self.name = e.name.clone();
            }
            Event::ServiceAccountDisabled(_) => self.disabled = true,
            Event::ServiceAccountDeleted(_) => {
                self.deleted = true;
                self.roles.clear();
            }
            Event::RoleAssigned(e) => {
                self.roles.insert(e.role_id.clone(), e.expires_at);
            }
            Event::RoleRevoked(e) => {
                self.roles.remove(&e.role_id);
            }
            _ => {}
        }
    }
}

/// One OpenID Connect client.
#[derive(Debug, Clone, Default)]
pub struct ClientState {
    pub version: Option<u64>,
    pub exists: bool,
    pub deleted: bool,
}

impl ClientState {
    pub fn apply(&mut self, recorded: &RecordedEvent, event: &Event) {
        self.version = Some(recorded.stream_version);
        match event {
            Event::ClientRegistered(_) => self.exists = true,
            Event::ClientDeleted(_) => self.deleted = true,
            _ => {}
        }
    }
}

/// One authorization code: issued, then redeemed at most once.
#[derive(Debug, Clone, Default)]
pub struct AuthorizationCodeState {
    pub version: Option<u64>,
    pub issued: Option<AuthorizationCodeIssued>,
    pub redeemed: Option<AuthorizationCodeRedeemed>,
}

impl AuthorizationCodeState {
    pub fn apply(&mut self, recorded: &RecordedEvent, event: &Event) {
        self.version = Some(recorded.stream_version);
        match event {
            Event::AuthorizationCodeIssued(e) => self.issued = Some(e.clone()),
            Event::AuthorizationCodeRedeemed(e) => self.redeemed = Some(e.clone()),
            _ => {}
        }
    }
}

/// Whether a stream has any event (the owner of a reservation exists).
#[derive(Debug, Clone, Default)]
pub struct Existence {
    pub exists: bool,
}

impl Existence {
    pub fn apply(&mut self, _: &RecordedEvent, _: &Event) {
        self.exists = true;
    }
}

/// Anything foldable from one stream.
pub trait StreamState: Default {
    fn apply(&mut self, recorded: &RecordedEvent, event: &Event);
}

macro_rules! stream_state {
    ($($t:ty),*) => { $(impl StreamState for $t {
        fn apply(&mut self, recorded: &RecordedEvent, event: &Event) { <$t>::apply(self, recorded, event) }
    })* };
}
stream_state!(
    UserState,
    SessionState,
    RoleState,
    ReservationState,
    ServiceAccountState,
    ClientState,
    AuthorizationCodeState,
    Existence
);
