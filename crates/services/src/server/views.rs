//! The outward views of domain state and events: the one place that decides what
//! a caller of the REST or gRPC front end sees. Both front ends build their
//! answers from these (gRPC converts them to its messages, REST serialises them),
//! and events leave only in [`perfect21_events::Event::public_view`].

use perfect21_domain::audit::AuditEntry;
use perfect21_events::catalog::{PermissionSpec, UserStatus};
use perfect21_projections::users::UserView;
use perfect21_projections::ReadModels;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A user as callers see it (no hashes, no secrets).
#[derive(Debug, Clone, Serialize)]
pub struct PublicUser {
    pub id: Uuid,
    pub email: String,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    pub phone_number: String,
    #[serde(skip)]
    pub status: UserStatus,
    /// `PENDING_VERIFICATION`, `ACTIVE`, `LOCKED`, `SUSPENDED`, `DELETED`.
    #[serde(rename = "status")]
    pub status_name: &'static str,
    pub is_active: bool,
    pub is_verified: bool,
    pub mfa_enabled: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, 0: never.
    pub last_login_at: i64,
    pub profile: BTreeMap<String, String>,
}

/// The wire name of a user status.
pub fn status_name(s: UserStatus) -> &'static str {
    match s {
        UserStatus::PendingVerification => "PENDING_VERIFICATION",
        UserStatus::Active => "ACTIVE",
        UserStatus::Locked => "LOCKED",
        UserStatus::Suspended => "SUSPENDED",
        UserStatus::Deleted => "DELETED",
    }
}

pub fn user(u: &UserView) -> PublicUser {
    PublicUser {
        id: u.id,
        email: u.email.to_string(),
        username: u.username.to_string(),
        first_name: u.first_name.as_deref().unwrap_or_default().to_string(),
        last_name: u.last_name.as_deref().unwrap_or_default().to_string(),
        phone_number: u.phone_number.as_deref().unwrap_or_default().to_string(),
        status: u.status,
        status_name: status_name(u.status),
        is_active: u.status == UserStatus::Active,
        is_verified: u.email_verified,
        mfa_enabled: u.mfa_enabled,
        created_at: u.created_at / 1_000_000,
        last_login_at: u.last_login_at.unwrap_or(0) / 1_000_000,
        profile: u.profile.clone(),
    }
}

/// A permission as callers see it.
#[derive(Debug, Clone, Serialize)]
pub struct PublicPermission {
    pub id: String,
    pub resource: String,
    pub action: String,
    pub scope: String,
    pub name: String,
    pub description: String,
}

pub fn permission(p: &PermissionSpec) -> PublicPermission {
    PublicPermission {
        id: p.id.clone(),
        resource: p.resource.clone(),
        action: p.action.clone(),
        scope: p.scope.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
    }
}

/// A service account as administrators see it (never its secret or the secret's hash).
#[derive(Debug, Clone, Serialize)]
pub struct PublicServiceAccount {
    pub client_id: Uuid,
    pub name: String,
    pub description: String,
    pub disabled: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Roles held now.
    pub roles: Vec<String>,
}

/// Every service account, by name, with the roles it holds at `now`.
pub fn service_accounts(m: &ReadModels, now: i64) -> Vec<PublicServiceAccount> {
    m.service_accounts
        .all()
        .into_iter()
        .map(|a| PublicServiceAccount {
            client_id: a.id,
            name: a.name.clone(),
            description: a.description.clone(),
            disabled: a.disabled,
            created_at: a.created_at / 1_000_000,
            roles: m.authz.user_roles(a.id, now).iter().map(|r| r.id.clone()).collect(),
        })
        .collect()
}

/// An OpenID Connect client as admins see it (never its secret's hash).
#[derive(Debug, serde::Serialize)]
pub struct PublicClient {
    pub client_id: uuid::Uuid,
    pub name: String,
    /// `confidential` (has a secret) or `public` (PKCE only).
    pub client_type: &'static str,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    pub id_token_signed_response_alg: String,
    /// Unix seconds.
    pub created_at: i64,
}

pub fn client(c: &perfect21_projections::clients::ClientView) -> PublicClient {
    let s = &c.settings;
    PublicClient {
        client_id: c.id,
        name: c.name.clone(),
        client_type: if c.confidential { "confidential" } else { "public" },
        redirect_uris: s.redirect_uris.clone(),
        post_logout_redirect_uris: s.post_logout_redirect_uris.clone(),
        grant_types: s.grant_types.clone(),
        scopes: s.scopes.clone(),
        id_token_signed_response_alg: s.id_token_signed_response_alg.clone(),
        created_at: c.created_at / 1_000_000,
    }
}

pub fn clients(m: &ReadModels) -> Vec<PublicClient> {
    m.clients.all().into_iter().map(client).collect()
}

/// One entry of a security history, as JSON (the event in its public view).
pub fn audit_entry(e: &AuditEntry) -> Value {
    json!({
        "position": e.position,
        "recorded_at": e.recorded_at,
        "event_type": e.event_type,
        "actor": e.actor,
        "client_ip": e.client_ip,
        "user_agent": e.user_agent,
        "correlation_id": e.correlation_id,
        "payload": e.event.public_view(),
    })
}

/// A live session as its user sees it (times in Unix seconds; the OpenID client
/// whose session it is, if any).
pub fn session(m: &ReadModels, v: &perfect21_projections::sessions::SessionView) -> Value {
    json!({
        "session_id": v.id,
        "started_at": v.started_at / 1_000_000,
        "refreshed_at": v.refreshed_at / 1_000_000,
        "expires_at": v.expires_at,
        "device_id": v.device_id,
        "client_id": m.sessions.client_session(v.id).map(|c| c.client_id),
    })
}

/// Everything perfect21 holds about a user, for the user's right of access: the
/// user record, live sessions, roles and permissions from the read models, and every
/// event of the user's history (public views, with the address and user agent each
/// came from). Hashes and secrets stay out, as everywhere else. `None`: no such user.
pub fn export(m: &ReadModels, user_id: Uuid, now: i64, history: &[AuditEntry]) -> Option<Value> {
    let user = m.users.get(user_id).map(user)?;
    let sessions: Vec<Value> = m.sessions.of_user(user_id).into_iter().map(|v| session(m, v)).collect();
    let roles: Vec<String> = m.authz.user_roles(user_id, now).iter().map(|r| r.id.clone()).collect();
    let permissions: Vec<String> = m
        .authz
        .effective_permissions(user_id, now)
        .into_iter()
        .map(|(_, p)| format!("{}:{}:{}", p.resource, p.action, p.scope))
        .collect();
    Some(json!({
        "exported_at": now,
        "user": user,
        "sessions": sessions,
        "roles": roles,
        "permissions": permissions,
        "events": history.iter().map(audit_entry).collect::<Vec<_>>(),
    }))
}
