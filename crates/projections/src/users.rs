//! Users by id, email and username.

use crate::digest::{sorted, Digest};
use crate::IdMap;
use perfect21_events::catalog::UserStatus;
use perfect21_events::Event;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A user as the services answer it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserView {
    pub id: Uuid,
    pub email: Box<str>,
    pub username: Box<str>,
    pub first_name: Option<Box<str>>,
    pub last_name: Option<Box<str>>,
    pub phone_number: Option<Box<str>>,
    pub locale: std::sync::Arc<str>,
    pub status: UserStatus,
    pub email_verified: bool,
    pub mfa_enabled: bool,
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

/// The index key of a normalized email or username: 64 bits of its SHA-256.
/// Eight bytes instead of a copy of the string; a lookup checks the user it finds,
/// and nobody can aim a collision at a given user (that takes a 2^64 preimage search).
fn key(normalized: &str) -> u64 {
    let digest = Sha256::digest(normalized.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The users read model.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Users {
    /// Boxed: a hash table keeps spare slots (up to half of them empty), and an
    /// empty slot should cost a pointer, not a whole view.
    by_id: IdMap<Uuid, Box<UserView>>,
    /// Locales repeat: one copy each.
    #[serde(skip)]
    locales: std::collections::HashSet<std::sync::Arc<str>>,
    by_email: IdMap<u64, Uuid>,
    by_username: IdMap<u64, Uuid>,
}

impl Users {
    pub fn get(&self, id: Uuid) -> Option<&UserView> {
        self.by_id.get(&id).map(|u| &**u)
    }

    pub fn by_email(&self, email: &str) -> Option<&UserView> {
        let email = normalize_email(email);
        let user = self.by_email.get(&key(&email)).and_then(|id| self.get(*id))?;
        (normalize_email(&user.email) == email).then_some(user)
    }

    pub fn by_username(&self, username: &str) -> Option<&UserView> {
        let username = normalize_username(username);
        let user = self.by_username.get(&key(&username)).and_then(|id| self.get(*id))?;
        (normalize_username(&user.username) == username).then_some(user)
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
                // The first owner keeps an index entry; uniqueness itself is enforced by reservations.
                self.by_email.entry(key(&normalize_email(&e.email))).or_insert(e.user_id);
                self.by_username.entry(key(&normalize_username(&e.username))).or_insert(e.user_id);
                let locale = crate::intern(&mut self.locales, &e.locale);
                self.by_id.insert(
                    e.user_id,
                    Box::new(UserView {
                        id: e.user_id,
                        email: e.email.as_str().into(),
                        username: e.username.as_str().into(),
                        first_name: e.first_name.as_deref().map(Into::into),
                        last_name: e.last_name.as_deref().map(Into::into),
                        phone_number: e.phone_number.as_deref().map(Into::into),
                        locale,
                        status: UserStatus::PendingVerification,
                        email_verified: false,
                        mfa_enabled: false,
                        created_at: at,
                        last_login_at: None,
                        profile: BTreeMap::new(),
                    }),
                );
            }
            Event::UserEmailVerified(e) => self.update(e.user_id, |u| u.email_verified = true),
            Event::UserProfileUpdated(e) => self.update(e.user_id, |u| {
                if let Some(v) = &e.first_name {
                    u.first_name = Some(v.as_str().into());
                }
                if let Some(v) = &e.last_name {
                    u.last_name = Some(v.as_str().into());
                }
                if let Some(v) = &e.phone_number {
                    u.phone_number = Some(v.as_str().into());
                }
                u.profile.extend(e.profile.iter().cloned());
            }),
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
                    for (index, k) in [
                        (&mut self.by_email, key(&normalize_email(&u.email))),
                        (&mut self.by_username, key(&normalize_username(&u.username))),
                    ] {
                        if index.get(&k) == Some(&e.user_id) {
                            index.remove(&k);
                        }
                    }
                    **u = UserView {
                        id: u.id,
                        email: "".into(),
                        username: "".into(),
                        first_name: None,
                        last_name: None,
                        phone_number: None,
                        locale: "".into(),
                        status: UserStatus::Deleted,
                        email_verified: false,
                        mfa_enabled: false,
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
            d.i64(u.created_at);
            d.i64(u.last_login_at.unwrap_or(-1));
            for (k, v) in &u.profile {
                d.str(k);
                d.str(v);
            }
        }
        for (k, id) in sorted(self.by_email.iter()) {
            d.u64(*k);
            d.bytes(id.as_bytes());
        }
        for (k, id) in sorted(self.by_username.iter()) {
            d.u64(*k);
            d.bytes(id.as_bytes());
        }
    }
}
