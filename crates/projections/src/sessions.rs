//! Active sessions and revoked access tokens.
//!
//! Only what validation and session listing need is kept: a session leaves the
//! model when it ends (an access token of an unknown session is not valid), and
//! a revoked token id is forgotten once the token would have expired anyway.
//! Refresh-token rotation is decided from the session's own stream, not from here.

use crate::digest::{sorted, Digest};
use crate::IdMap;
use perfect21_events::Event;
use std::collections::HashMap;
use uuid::Uuid;

/// Revoked token ids are pruned of expired entries every this many revocations.
const PRUNE_EVERY: u64 = 4096;

/// One active login session.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionView {
    pub id: Uuid,
    pub user_id: Uuid,
    /// Unix seconds; the refresh token's expiry.
    pub expires_at: i64,
    /// Microseconds since the Unix epoch.
    pub started_at: i64,
    /// Microseconds since the Unix epoch of the last refresh (or the start).
    pub refreshed_at: i64,
    pub device_id: Option<Box<str>>,
}

impl SessionView {
    pub fn is_active(&self, now_unix: i64) -> bool {
        self.expires_at > now_unix
    }
}

/// The sessions & tokens read model.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Sessions {
    by_id: IdMap<Uuid, SessionView>,
    by_user: IdMap<Uuid, Vec<Uuid>>,
    /// Revoked access-token ids, with the token's expiry (Unix seconds).
    revoked_jtis: HashMap<String, i64>,
    revocations: u64,
    /// Sessions of OpenID Connect clients: the client and the browser session they
    /// were started from (ended together with it).
    client_sessions: IdMap<Uuid, ClientSession>,
    /// The client sessions of each browser session (derived from `client_sessions`).
    by_browser: IdMap<Uuid, Vec<Uuid>>,
}

/// Who a client's session belongs to.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientSession {
    pub client_id: Uuid,
    pub browser_session_id: Uuid,
    /// Granted scopes, space-separated.
    pub scope: Box<str>,
    /// When the user authenticated (Unix seconds) and how (`pwd`, `otp`).
    pub auth_time: i64,
    pub amr: Vec<Box<str>>,
}

impl Sessions {
    /// A session that has not ended.
    pub fn get(&self, id: Uuid) -> Option<&SessionView> {
        self.by_id.get(&id)
    }

    /// The user's sessions that have not ended, oldest first.
    pub fn of_user(&self, user: Uuid) -> Vec<&SessionView> {
        let mut v: Vec<_> = self.by_user.get(&user).into_iter().flatten().filter_map(|id| self.by_id.get(id)).collect();
        v.sort_by_key(|s| (s.started_at, s.id));
        v
    }

    /// Whether an access token is revoked: by its id, or because its session ended (or is unknown).
    pub fn is_revoked(&self, jti: &str, session: Uuid) -> bool {
        self.revoked_jtis.contains_key(jti) || !self.by_id.contains_key(&session)
    }

    /// The client and browser session of a client's session (`None` for other sessions).
    pub fn client_session(&self, session: Uuid) -> Option<&ClientSession> {
        self.client_sessions.get(&session)
    }

    /// The client sessions started from a browser session, that have not ended.
    pub fn children_of(&self, browser_session: Uuid) -> Vec<Uuid> {
        self.by_browser.get(&browser_session).cloned().unwrap_or_default()
    }

    pub fn active_count(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn apply(&mut self, event: &Event, at: i64) {
        match event {
            Event::SessionStarted(e) => {
                self.by_user.entry(e.user_id).or_default().push(e.session_id);
                self.by_id.insert(
                    e.session_id,
                    SessionView {
                        id: e.session_id,
                        user_id: e.user_id,
                        expires_at: e.expires_at,
                        started_at: at,
                        refreshed_at: at,
                        device_id: e.device_id.as_deref().map(Into::into),
                    },
                );
            }
            Event::SessionRefreshed(e) => {
                if let Some(s) = self.by_id.get_mut(&e.session_id) {
                    s.expires_at = e.expires_at;
                    s.refreshed_at = at;
                }
            }
            Event::AuthorizationCodeRedeemed(e) => {
                let link = ClientSession {
                    client_id: e.client_id,
                    browser_session_id: e.browser_session_id,
                    scope: e.scope.as_str().into(),
                    auth_time: e.auth_time,
                    amr: e.amr.iter().map(|m| m.as_str().into()).collect(),
                };
                self.by_browser.entry(e.browser_session_id).or_default().push(e.session_id);
                self.client_sessions.insert(e.session_id, link);
            }
            Event::SessionRevoked(e) => self.end(e.user_id, e.session_id),
            Event::SessionExpired(e) => self.end(e.user_id, e.session_id),
            Event::SessionTokenRevoked(e) => {
                self.revoked_jtis.insert(e.jti.clone(), e.expires_at);
                self.revocations += 1;
                if self.revocations.is_multiple_of(PRUNE_EVERY) {
                    // Event time, not wall-clock time: replay prunes exactly as live did.
                    let now = at / 1_000_000;
                    self.revoked_jtis.retain(|_, expires_at| *expires_at > now);
                }
            }
            _ => {}
        }
    }

    fn end(&mut self, user: Uuid, session: Uuid) {
        self.by_id.remove(&session);
        if let Some(link) = self.client_sessions.remove(&session) {
            if let Some(children) = self.by_browser.get_mut(&link.browser_session_id) {
                children.retain(|c| *c != session);
                if children.is_empty() {
                    self.by_browser.remove(&link.browser_session_id);
                }
            }
        }
        if let Some(list) = self.by_user.get_mut(&user) {
            list.retain(|s| *s != session);
            if list.is_empty() {
                self.by_user.remove(&user);
            }
        }
    }

    pub(crate) fn digest(&self, d: &mut Digest) {
        for (id, s) in sorted(self.by_id.iter()) {
            d.bytes(id.as_bytes());
            d.bytes(s.user_id.as_bytes());
            d.i64(s.expires_at);
            d.i64(s.started_at);
            d.i64(s.refreshed_at);
            d.opt_str(s.device_id.as_deref());
        }
        for (user, sessions) in sorted(self.by_user.iter()) {
            d.bytes(user.as_bytes());
            sessions.iter().for_each(|s| d.bytes(s.as_bytes()));
        }
        for (jti, exp) in sorted(self.revoked_jtis.iter()) {
            d.str(jti);
            d.i64(*exp);
        }
        d.u64(self.revocations);
        for (id, c) in sorted(self.client_sessions.iter()) {
            d.bytes(id.as_bytes());
            d.bytes(c.client_id.as_bytes());
            d.bytes(c.browser_session_id.as_bytes());
            d.str(&c.scope);
            d.i64(c.auth_time);
            c.amr.iter().for_each(|m| d.str(m));
        }
    }
}
