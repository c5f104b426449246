//! Users by id, email and username.

use crate::digest::{sorted, Digest};
use perfect21_events::catalog::UserStatus;
use perfect21_events::Event;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// A user as the services answer it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub username: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone_number: Option<String>,
    pub locale: String,
    pub status: UserStatus,
    pub email_verified: bool,
    pub mfa_enabled: bool,
    /// argon2id PHC string of the current password (empty once deleted).
    pub password_hash: String,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    pub last_login_at: Option<i64>,
    pub profile: BTreeMap<String, String>,
}

/// Emails are unique regardless of case.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Usernames are unique regardless of case.
pub fn normalize_username(username: &str) -> String {
    username.trim().to_lowercase()
}

/// The users read model.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Users {
    by_id: HashMap<Uuid, UserView>,
    by_email: HashMap<String, Uuid>,
    by_username: HashMap<String, Uuid>,
}

impl Users {
    pub fn get(&self, id: Uuid) -> Option<&UserView> {
        self.by_id.get(&id)
    }

    pub fn by_email(&self, email: &str) -> Option<&UserView> {
        self.by_email.get(&normalize_email(email)).and_then(|id| self.by_id.get(id))
    }

    pub fn by_username(&self, username: &str) -> Option<&UserView> {
        self.by_username.get(&normalize_username(username)).and_then(|id| self.by_id.get(id))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn apply(&mut self, event: &Event, at: i64) {
        match event {
            Event::UserRegistered(e) => {
                self.by_email.insert(normalize_email(&e.email), e.user_id);
                self.by_username.insert(normalize_username(&e.username), e.user_id);
                self.by_id.insert(
                    e.user_id,
                    UserView {
                        id: e.user_id,
                        email: e.email.clone(),
                        username: e.username.clone(),
                        first_name: e.first_name.clone(),
                        last_name: e.last_name.clone(),
                        phone_number: e.phone_number.clone(),
                        locale: e.locale.clone(),
                        status: UserStatus::PendingVerification,
                        email_verified: false,
                        mfa_enabled: false,
                        password_hash: e.password_hash.clone(),
                        created_at: at,
                        last_login_at: None,
                        profile: BTreeMap::new(),
                    },
                );
            }
            Event::UserEmailVerified(e) => self.update(e.user_id, |u| u.email_verified = true),
            Event::UserProfileUpdated(e) => self.update(e.user_id, |u| {
                if let Some(v) = &e.first_name {
                    u.first_name = Some(v.clone());
                }
                if let Some(v) = &e.last_name {
                    u.last_name = Some(v.clone());
                }
                if let Some(v) = &e.phone_number {
                    u.phone_number = Some(v.clone());
                }
                u.profile.extend(e.profile.iter().cloned());
            }),
            Event::UserPasswordChanged(e) => self.update(e.user_id, |u| u.password_hash = e.password_hash.clone()),
            Event::UserStatusChanged(e) => self.update(e.user_id, |u| u.status = e.to),
            Event::UserMfaEnabled(e) => self.update(e.user_id, |u| u.mfa_enabled = true),
            Event::UserMfaDisabled(e) => self.update(e.user_id, |u| u.mfa_enabled = false),
            Event::UserLoginSucceeded(e) => self.update(e.user_id, |u| u.last_login_at = Some(at)),
            Event::AccountLocked(e) => self.update(e.user_id, |u| u.status = UserStatus::Locked),
            Event::AccountUnlocked(e) => self.update(e.user_id, |u| {
                if u.status == UserStatus::Locked {
                    u.status = if u.email_verified { UserStatus::Active } else { UserStatus::PendingVerification };
                }
            }),
            Event::UserDeleted(e) => {
                // Personal data leaves the read model; the id stays, so the account reads as deleted.
                if let Some(u) = self.by_id.get_mut(&e.user_id) {
                    self.by_email.remove(&normalize_email(&u.email));
                    self.by_username.remove(&normalize_username(&u.username));
                    *u = UserView {
                        id: u.id,
                        email: String::new(),
                        username: String::new(),
                        first_name: None,
                        last_name: None,
                        phone_number: None,
                        locale: String::new(),
                        status: UserStatus::Deleted,
                        email_verified: false,
                        mfa_enabled: false,
                        password_hash: String::new(),
                        created_at: u.created_at,
                        last_login_at: u.last_login_at,
                        profile: BTreeMap::new(),
                    };
                }
            }
            _ => {}
        }
    }

    fn update(&mut self, id: Uuid, f: impl FnOnce(&mut UserView)) {
        if let Some(u) = self.by_id.get_mut(&id) {
            f(u);
        }
    }

    pub(crate) fn digest(&self, d: &mut Digest) {
        d.u64(self.by_id.len() as u64);
        for (id, u) in sorted(self.by_id.iter()) {
            d.bytes(id.as_bytes());
            d.str(&u.email);
            d.str(&u.username);
            d.opt_str(u.first_name.as_deref());
            d.opt_str(u.last_name.as_deref());
            d.opt_str(u.phone_number.as_deref());
            d.str(&u.locale);
            d.u64(u.status as u64);
            d.u64(u.email_verified as u64 | (u.mfa_enabled as u64) << 1);
            d.str(&u.password_hash);
            d.i64(u.created_at);
            d.i64(u.last_login_at.unwrap_or(-1));
            for (k, v) in &u.profile {
                d.str(k);
                d.str(v);
            }
        }
        for (email, id) in sorted(self.by_email.iter()) {
            d.str(email);
            d.bytes(id.as_bytes());
        }
        for (name, id) in sorted(self.by_username.iter()) {
            d.str(name);
            d.bytes(id.as_bytes());
        }
    }
}
