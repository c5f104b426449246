//! Service accounts: machine principals of the OAuth 2.0 client-credentials grant.

use crate::digest::{sorted, Digest};
use crate::IdMap;
use perfect21_events::Event;
use std::collections::HashMap;
use uuid::Uuid;

/// A service account as readers see it (with its secret's hash, which never leaves the process).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceAccountView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub secret_hash: String,
    pub disabled: bool,
    /// Unix microseconds.
    pub created_at: i64,
    /// Unix microseconds of the last secret change (creation or rotation).
    pub secret_changed_at: i64,
}

/// Every service account that is not deleted, by id and by name.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceAccounts {
    by_id: IdMap<Uuid, ServiceAccountView>,
    by_name: HashMap<String, Uuid>,
}

impl ServiceAccounts {
    pub fn get(&self, id: Uuid) -> Option<&ServiceAccountView> {
        self.by_id.get(&id)
    }

    pub fn by_name(&self, name: &str) -> Option<&ServiceAccountView> {
        self.by_name.get(name).and_then(|id| self.by_id.get(id))
    }

    /// Every service account, by name.
    pub fn all(&self) -> Vec<&ServiceAccountView> {
        let mut all: Vec<_> = self.by_id.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub(crate) fn apply(&mut self, event: &Event, at: i64) {
        match event {
            Event::ServiceAccountCreated(e) => {
                self.by_name.insert(e.name.clone(), e.service_account_id);
                self.by_id.insert(
                    e.service_account_id,
                    ServiceAccountView {
                        id: e.service_account_id,
                        name: e.name.clone(),
                        description: e.description.clone(),
                        secret_hash: e.secret_hash.clone(),
                        disabled: false,
                        created_at: at,
                        secret_changed_at: at,
                    },
                );
            }
            Event::ServiceAccountSecretRotated(e) => {
                if let Some(a) = self.by_id.get_mut(&e.service_account_id) {
                    a.secret_hash = e.secret_hash.clone();
                    a.secret_changed_at = at;
                }
            }
            Event::ServiceAccountDisabled(e) => {
                if let Some(a) = self.by_id.get_mut(&e.service_account_id) {
                    a.disabled = true;
                }
            }
            Event::ServiceAccountDeleted(e) => {
                if let Some(a) = self.by_id.remove(&e.service_account_id) {
                    self.by_name.remove(&a.name);
                }
            }
            _ => {}
        }
    }

    pub(crate) fn digest(&self, d: &mut Digest) {
        for (id, a) in sorted(self.by_id.iter()) {
            d.bytes(id.as_bytes());
            for f in [&a.name, &a.description, &a.secret_hash] {
                d.str(f);
            }
            d.u64(a.disabled as u64);
            d.i64(a.created_at);
            d.i64(a.secret_changed_at);
        }
    }
}
