//! Sessions, refresh-token rotation state and revoked access tokens.

use crate::digest::{sorted, Digest};
use perfect21_events::Event;
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

/// One login session.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionView {
    pub id: Uuid,
    pub user_id: Uuid,
    /// Hash of the refresh token that is valid now.
    pub refresh_token_hash: String,
    pub access_jti: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Microseconds since the Unix epoch.
    pub started_at: i64,
    pub device_id: Option<String>,
    /// Why it ended, if it did (`revoked:<reason>` or `expired`).
    pub ended: Option<String>,
}

impl SessionView {
    pub fn is_active(&self, now_unix: i64) -> bool {
        self.ended.is_none() && self.expires_at > now_unix
    }
}

/// What a refresh token hash refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RefreshTokenState {
    /// The session's current refresh token.
    Current(Uuid),
    /// Rotated away: presenting it again is reuse.
    Rotated(Uuid),
}

/// The sessions & tokens read model.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Sessions {
    by_id: HashMap<Uuid, SessionView>,
    by_user: HashMap<Uuid, BTreeSet<Uuid>>,
    tokens: HashMap<String, RefreshTokenState>,
    /// Revoked access-token ids, with the token's expiry (Unix seconds).
    revoked_jtis: HashMap<String, i64>,
}

impl Sessions {
    pub fn get(&self, id: Uuid) -> Option<&SessionView> {
        self.by_id.get(&id)
    }

    /// The user's sessions, oldest first.
    pub fn of_user(&self, user: Uuid) -> Vec<&SessionView> {
        let mut v: Vec<_> = self.by_user.get(&user).into_iter().flatten().filter_map(|id| self.by_id.get(id)).collect();
        v.sort_by_key(|s| (s.started_at, s.id));
        v
    }

    pub fn refresh_token(&self, hash: &str) -> Option<RefreshTokenState> {
        self.tokens.get(hash).copied()
    }

    /// Whether an access token was revoked: by its jti, or because its session ended.
    pub fn is_revoked(&self, jti: &str, session: Option<Uuid>) -> bool {
        self.revoked_jtis.contains_key(jti)
            || session.and_then(|s| self.by_id.get(&s)).is_some_and(|s| s.ended.is_some())
    }

    pub(crate) fn apply(&mut self, event: &Event, at: i64) {
        match event {
            Event::SessionStarted(e) => {
                self.tokens.insert(e.refresh_token_hash.clone(), RefreshTokenState::Current(e.session_id));
                self.by_user.entry(e.user_id).or_default().insert(e.session_id);
                self.by_id.insert(
                    e.session_id,
                    SessionView {
                        id: e.session_id,
                        user_id: e.user_id,
                        refresh_token_hash: e.refresh_token_hash.clone(),
                        access_jti: e.access_jti.clone(),
                        expires_at: e.expires_at,
                        started_at: at,
                        device_id: e.device_id.clone(),
                        ended: None,
                    },
                );
            }
            Event::SessionRefreshed(e) => {
                if let Some(s) = self.by_id.get_mut(&e.session_id) {
                    self.tokens.insert(e.previous_token_hash.clone(), RefreshTokenState::Rotated(e.session_id));
                    self.tokens.insert(e.refresh_token_hash.clone(), RefreshTokenState::Current(e.session_id));
                    s.refresh_token_hash = e.refresh_token_hash.clone();
                    s.access_jti = e.access_jti.clone();
                    s.expires_at = e.expires_at;
                }
            }
            Event::SessionRevoked(e) => self.end(e.session_id, format!("revoked:{}", e.reason)),
            Event::SessionExpired(e) => self.end(e.session_id, "expired".into()),
            Event::SessionTokenRevoked(e) => {
                self.revoked_jtis.insert(e.jti.clone(), e.expires_at);
            }
            _ => {}
        }
    }

    fn end(&mut self, session: Uuid, why: String) {
        if let Some(s) = self.by_id.get_mut(&session) {
            if s.ended.is_none() {
                s.ended = Some(why);
            }
        }
    }

    pub(crate) fn digest(&self, d: &mut Digest) {
        for (id, s) in sorted(self.by_id.iter()) {
            d.bytes(id.as_bytes());
            d.bytes(s.user_id.as_bytes());
            d.str(&s.refresh_token_hash);
            d.str(&s.access_jti);
            d.i64(s.expires_at);
            d.i64(s.started_at);
            d.opt_str(s.device_id.as_deref());
            d.opt_str(s.ended.as_deref());
        }
        for (hash, state) in sorted(self.tokens.iter()) {
            d.str(hash);
            let (kind, id) = match state {
                RefreshTokenState::Current(id) => (0, id),
                RefreshTokenState::Rotated(id) => (1, id),
            };
            d.u64(kind);
            d.bytes(id.as_bytes());
        }
        for (jti, exp) in sorted(self.revoked_jtis.iter()) {
            d.str(jti);
            d.i64(*exp);
        }
    }
}
