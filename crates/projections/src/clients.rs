//! OAuth 2.0 / OpenID Connect clients (relying parties).

use crate::digest::{sorted, Digest};
use crate::IdMap;
use perfect21_events::catalog::ClientSettings;
use perfect21_events::Event;
use uuid::Uuid;

/// A client as readers see it (with its secret's hash, which never leaves the process).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientView {
    pub id: Uuid,
    pub name: String,
    pub confidential: bool,
    /// Empty for a public client.
    pub secret_hash: String,
    pub settings: ClientSettings,
    /// Unix microseconds.
    pub created_at: i64,
}

impl ClientView {
    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.settings.grant_types.iter().any(|g| g == grant_type)
    }
}

/// Every client that is not deleted.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Clients {
    by_id: IdMap<Uuid, ClientView>,
}

impl Clients {
    pub fn get(&self, id: Uuid) -> Option<&ClientView> {
        self.by_id.get(&id)
    }

    /// Every client, by name then id.
    pub fn all(&self) -> Vec<&ClientView> {
        let mut all: Vec<_> = self.by_id.values().collect();
        all.sort_by(|a, b| (&a.name, a.id).cmp(&(&b.name, b.id)));
        all
    }

    pub(crate) fn apply(&mut self, event: &Event, at: i64) {
        match event {
            Event::ClientRegistered(e) => {
                self.by_id.insert(
                    e.client_id,
                    ClientView {
                        id: e.client_id,
                        name: e.name.clone(),
                        confidential: e.confidential,
                        secret_hash: e.secret_hash.clone(),
                        settings: e.settings.clone(),
                        created_at: at,
                    },
                );
            }
            Event::ClientUpdated(e) => {
                if let Some(c) = self.by_id.get_mut(&e.client_id) {
                    c.name = e.name.clone();
                    c.settings = e.settings.clone();
                }
            }
            Event::ClientSecretRotated(e) => {
                if let Some(c) = self.by_id.get_mut(&e.client_id) {
                    c.secret_hash = e.secret_hash.clone();
                }
            }
            Event::ClientDeleted(e) => {
                self.by_id.remove(&e.client_id);
            }
            _ => {}
        }
    }

    pub(crate) fn digest(&self, d: &mut Digest) {
        for (id, c) in sorted(self.by_id.iter()) {
            d.bytes(id.as_bytes());
            d.str(&c.name);
            d.u64(c.confidential as u64);
            d.str(&c.secret_hash);
            let s = &c.settings;
            for list in [&s.redirect_uris, &s.post_logout_redirect_uris, &s.grant_types, &s.scopes] {
                d.u64(list.len() as u64);
                list.iter().for_each(|v| d.str(v));
            }
            d.str(&s.id_token_signed_response_alg);
            d.i64(c.created_at);
        }
    }
}
