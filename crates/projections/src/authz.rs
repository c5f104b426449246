//! Roles, permissions and who holds them; permission checks.

use crate::digest::{sorted, Digest};
use crate::intern;
use crate::IdMap;
use perfect21_events::catalog::{PermissionSpec, UserStatus};
use perfect21_events::Event;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// A role and its permissions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoleView {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub priority: i32,
    pub permissions: BTreeMap<String, PermissionSpec>,
}

/// The answer to "may this user do this?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
    /// The grants that allowed it, highest role priority first: `role:<id>:<permission id>` or `direct:<permission id>`.
    pub applied_policies: Vec<String>,
}

/// The roles & permissions read model.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Authz {
    roles: BTreeMap<String, RoleView>,
    /// Role assignments of each principal, sorted by role id (a principal has few: a
    /// small vector beats a tree).
    user_roles: IdMap<Uuid, Vec<Assignment>>,
    /// Direct grants of each user, sorted by permission id.
    direct: IdMap<Uuid, Vec<PermissionSpec>>,
    /// One copy of each role id, shared by every user holding the role.
    #[serde(skip)]
    interned: HashSet<Arc<str>>,
}

/// One role held by a principal, until `expires_at` (Unix seconds) if set.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Assignment {
    role: Arc<str>,
    expires_at: Option<i64>,
}

/// Whether a role assignment ending at `expires_at` (Unix seconds; `None`: until
/// revoked) still grants at `now`: it stops at `expires_at`.
pub fn assignment_grants(expires_at: Option<i64>, now: i64) -> bool {
    expires_at.is_none_or(|at| now < at)
}

impl Assignment {
    fn grants_at(&self, now: i64) -> bool {
        assignment_grants(self.expires_at, now)
    }
}

fn field_matches(granted: &str, wanted: &str) -> bool {
    granted == "*"
        || granted == wanted
        || granted.strip_suffix(".*").is_some_and(|p| wanted.starts_with(p) && wanted[p.len()..].starts_with('.'))
}

/// Whether a granted permission covers the requested resource, action and scope (`*` matches anything).
pub fn covers(p: &PermissionSpec, resource: &str, action: &str, scope: &str) -> bool {
    field_matches(&p.resource, resource) && field_matches(&p.action, action) && field_matches(&p.scope, scope)
}

/// Where a permission a user holds comes from; displayed as `role:<role>:<permission>`
/// or `direct:<permission>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    Role { role: &'a str, permission: &'a str },
    Direct { permission: &'a str },
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Role { role, permission } => write!(f, "role:{role}:{permission}"),
            Source::Direct { permission } => write!(f, "direct:{permission}"),
        }
    }
}

impl serde::Serialize for Source<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a user of this status holds no permission (`None`: an unknown user), or `None`
/// when the status grants what the user's roles and grants give.
fn refusal(status: Option<UserStatus>) -> Option<&'static str> {
    match status {
        None => Some("unknown user"),
        Some(UserStatus::Locked) => Some("user is locked"),
        Some(UserStatus::Suspended) => Some("user is suspended"),
        Some(UserStatus::Deleted) => Some("user is deleted"),
        Some(UserStatus::PendingVerification | UserStatus::Active) => None,
    }
}

impl Authz {
    pub fn role(&self, id: &str) -> Option<&RoleView> {
        self.roles.get(id)
    }

    pub fn roles(&self) -> impl Iterator<Item = &RoleView> {
        self.roles.values()
    }

    /// The roles the user holds at `now` (Unix seconds; an assignment stops granting
    /// at its `expires_at`), highest priority first. The clock is the caller's, so
    /// folds stay free of it.
    pub fn user_roles(&self, user: Uuid, now: i64) -> Vec<&RoleView> {
        let mut roles: Vec<_> = self
            .user_roles
            .get(&user)
            .into_iter()
            .flatten()
            .filter(|a| a.grants_at(now))
            .filter_map(|a| self.roles.get(&*a.role))
            .collect();
        roles.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        roles
    }

    /// Every permission the user holds at `now`, with where it comes from, highest
    /// role priority first, direct grants last.
    pub fn effective_permissions(&self, user: Uuid, now: i64) -> Vec<(Source<'_>, &PermissionSpec)> {
        let mut out = Vec::new();
        for role in self.user_roles(user, now) {
            out.extend(role.permissions.values().map(|p| (Source::Role { role: &role.id, permission: &p.id }, p)));
        }
        out.extend(self.direct.get(&user).into_iter().flatten().map(|p| (Source::Direct { permission: &p.id }, p)));
        out
    }

    /// [`Authz::check`]'s verdict without its reasons (nothing formatted, nothing kept).
    pub fn holds(
        &self,
        user: Uuid,
        status: Option<UserStatus>,
        resource: &str,
        action: &str,
        scope: &str,
        now: i64,
    ) -> bool {
        refusal(status).is_none()
            && self.effective_permissions(user, now).iter().any(|(_, p)| covers(p, resource, action, scope))
    }

    /// Checks one permission at `now` (Unix seconds). `status` is the user's status,
    /// `None` for an unknown user.
    pub fn check(
        &self,
        user: Uuid,
        status: Option<UserStatus>,
        resource: &str,
        action: &str,
        scope: &str,
        now: i64,
    ) -> Decision {
        let deny = |reason: String| Decision { allowed: false, reason, applied_policies: vec![] };
        if let Some(reason) = refusal(status) {
            return deny(reason.into());
        }
        let applied: Vec<String> = self
            .effective_permissions(user, now)
            .into_iter()
            .filter(|(_, p)| covers(p, resource, action, scope))
            .map(|(source, _)| source.to_string())
            .collect();
        if applied.is_empty() {
            deny(format!("no role or grant of the user covers {resource}:{action}:{scope}"))
        } else {
            Decision { allowed: true, reason: format!("granted by {}", applied[0]), applied_policies: applied }
        }
    }

    pub(crate) fn apply(&mut self, event: &Event) {
        match event {
            Event::RoleCreated(e) => {
                self.roles.insert(
                    e.role_id.clone(),
                    RoleView {
                        id: e.role_id.clone(),
                        name: e.name.clone(),
                        display_name: e.display_name.clone(),
                        description: e.description.clone(),
                        priority: e.priority,
                        permissions: BTreeMap::new(),
                    },
                );
            }
            Event::RoleUpdated(e) => {
                if let Some(r) = self.roles.get_mut(&e.role_id) {
                    r.display_name = e.display_name.clone();
                    r.description = e.description.clone();
                    r.priority = e.priority;
                }
            }
            Event::RoleDeleted(e) => {
                self.roles.remove(&e.role_id);
                for roles in self.user_roles.values_mut() {
                    roles.retain(|a| *a.role != *e.role_id);
                }
            }
            Event::RolePermissionGranted(e) => {
                if let Some(r) = self.roles.get_mut(&e.role_id) {
                    r.permissions.insert(e.permission.id.clone(), e.permission.clone());
                }
            }
            Event::RolePermissionRevoked(e) => {
                if let Some(r) = self.roles.get_mut(&e.role_id) {
                    r.permissions.remove(&e.permission_id);
                }
            }
            Event::RoleAssigned(e) => {
                // A new assignment of a held role replaces the old one (and its expiry).
                let roles = self.user_roles.entry(e.user_id).or_default();
                match roles.binary_search_by(|a| (*a.role).cmp(e.role_id.as_str())) {
                    Ok(at) => roles[at].expires_at = e.expires_at,
                    Err(at) => roles.insert(
                        at,
                        Assignment { role: intern(&mut self.interned, &e.role_id), expires_at: e.expires_at },
                    ),
                }
            }
            Event::RoleRevoked(e) => {
                if let Some(roles) = self.user_roles.get_mut(&e.user_id) {
                    roles.retain(|a| *a.role != *e.role_id);
                }
            }
            Event::PermissionGranted(e) => {
                let grants = self.direct.entry(e.user_id).or_default();
                match grants.binary_search_by(|p| p.id.cmp(&e.permission.id)) {
                    Ok(at) => grants[at] = e.permission.clone(),
                    Err(at) => grants.insert(at, e.permission.clone()),
                }
            }
            Event::PermissionRevoked(e) => {
                if let Some(grants) = self.direct.get_mut(&e.user_id) {
                    grants.retain(|p| p.id != e.permission_id);
                }
            }
            Event::UserDeleted(e) => {
                self.user_roles.remove(&e.user_id);
                self.direct.remove(&e.user_id);
            }
            Event::ServiceAccountDeleted(e) => {
                self.user_roles.remove(&e.service_account_id);
                self.direct.remove(&e.service_account_id);
            }
            _ => {}
        }
    }

    pub(crate) fn digest(&self, d: &mut Digest) {
        let perm = |d: &mut Digest, p: &PermissionSpec| {
            for f in [&p.id, &p.resource, &p.action, &p.scope, &p.name, &p.description] {
                d.str(f);
            }
        };
        for r in self.roles.values() {
            for f in [&r.id, &r.name, &r.display_name, &r.description] {
                d.str(f);
            }
            d.i64(r.priority as i64);
            r.permissions.values().for_each(|p| perm(d, p));
        }
        for (user, roles) in sorted(self.user_roles.iter()) {
            d.bytes(user.as_bytes());
            for a in roles {
                d.str(&a.role);
                d.i64(a.expires_at.unwrap_or(i64::MIN));
            }
        }
        for (user, grants) in sorted(self.direct.iter()) {
            d.bytes(user.as_bytes());
            grants.iter().for_each(|p| perm(d, p));
        }
    }
}
