//! Who may call what: one table for every gRPC method and every REST route,
//! enforced before any handler runs (a gRPC tower layer and an axum middleware).
//!
//! A method or route missing from its table is refused (deny by default); the
//! end-to-end tests check that every method the server offers and every route
//! of the router is listed here, and drive each with anonymous, unprivileged,
//! self and service-account callers. `docs/SECURITY.md` prints the same table.

use super::app::{App, Principal};
use perfect21_domain::DomainError;

/// A permission `resource:action` (any scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub resource: &'static str,
    pub action: &'static str,
}

const fn perm(resource: &'static str, action: &'static str) -> Perm {
    Perm { resource, action }
}

impl std::fmt::Display for Perm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.resource, self.action)
    }
}

/// Who may call a method or route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, unauthenticated (the credential is in the request, or nothing is revealed).
    Public,
    /// Any signed-in user, about themselves only (service accounts are refused).
    User,
    /// A user about themselves, or any principal holding the permission.
    SelfOr(Perm),
    /// A principal (user or service account) holding the permission.
    Needs(Perm),
    /// A service account holding the permission; users are refused whatever they hold.
    ServiceOnly(Perm),
}

impl Rule {
    /// The permission the rule asks about, if any.
    pub fn perm(self) -> Option<Perm> {
        match self {
            Rule::Public | Rule::User => None,
            Rule::SelfOr(p) | Rule::Needs(p) | Rule::ServiceOnly(p) => Some(p),
        }
    }
}

pub const TOKENS_VALIDATE: Perm = perm("perfect21.tokens", "validate");
pub const TOKENS_REVOKE: Perm = perm("perfect21.tokens", "revoke");
pub const USERS_READ: Perm = perm("perfect21.users", "read");
pub const PERMISSIONS_READ: Perm = perm("perfect21.permissions", "read");
pub const SESSIONS_REVOKE: Perm = perm("perfect21.sessions", "revoke");

/// Every gRPC method the server offers, by its full path.
pub const GRPC: &[(&str, Rule)] = &[
    ("/grpc.health.v1.Health/Check", Rule::Public),
    ("/grpc.health.v1.Health/Watch", Rule::Public),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Rule::Public),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Rule::Public),
    ("/perfect21.auth.AuthService/ValidateToken", Rule::SelfOr(TOKENS_VALIDATE)),
    ("/perfect21.auth.AuthService/BatchValidateTokens", Rule::Needs(TOKENS_VALIDATE)),
    ("/perfect21.auth.AuthService/RefreshToken", Rule::Public),
    ("/perfect21.auth.AuthService/RevokeToken", Rule::SelfOr(TOKENS_REVOKE)),
    (
        "/perfect21.auth.AuthService/ValidateCredentials",
        Rule::ServiceOnly(perm("perfect21.auth", "validate_credentials")),
    ),
    ("/perfect21.user.UserService/GetUser", Rule::SelfOr(USERS_READ)),
    ("/perfect21.user.UserService/BatchGetUsers", Rule::SelfOr(USERS_READ)),
    ("/perfect21.user.UserService/VerifyPassword", Rule::Needs(perm("perfect21.users", "verify_password"))),
    ("/perfect21.user.UserService/UpdateUserStatus", Rule::Needs(perm("perfect21.users", "update_status"))),
    ("/perfect21.user.UserService/RecordLoginHistory", Rule::ServiceOnly(perm("perfect21.users", "record_login"))),
    ("/perfect21.permission.PermissionService/CheckPermission", Rule::SelfOr(PERMISSIONS_READ)),
    ("/perfect21.permission.PermissionService/BatchCheckPermissions", Rule::SelfOr(PERMISSIONS_READ)),
    ("/perfect21.permission.PermissionService/GetUserPermissions", Rule::SelfOr(PERMISSIONS_READ)),
    ("/perfect21.permission.PermissionService/GetUserRoles", Rule::SelfOr(PERMISSIONS_READ)),
    ("/perfect21.account.AccountService/Register", Rule::Public),
    ("/perfect21.account.AccountService/VerifyEmail", Rule::Public),
    ("/perfect21.account.AccountService/Logout", Rule::User),
    ("/perfect21.account.AccountService/ListSessions", Rule::User),
    ("/perfect21.account.AccountService/RevokeSession", Rule::SelfOr(SESSIONS_REVOKE)),
    ("/perfect21.account.AccountService/RevokeAllSessions", Rule::SelfOr(SESSIONS_REVOKE)),
    ("/perfect21.admin.AdminService/CreateRole", Rule::Needs(perm("perfect21.roles", "create"))),
    ("/perfect21.admin.AdminService/UpdateRole", Rule::Needs(perm("perfect21.roles", "update"))),
    ("/perfect21.admin.AdminService/DeleteRole", Rule::Needs(perm("perfect21.roles", "delete"))),
    ("/perfect21.admin.AdminService/GrantRolePermission", Rule::Needs(perm("perfect21.roles", "update"))),
    ("/perfect21.admin.AdminService/RevokeRolePermission", Rule::Needs(perm("perfect21.roles", "update"))),
    ("/perfect21.admin.AdminService/AssignRole", Rule::Needs(perm("perfect21.roles", "assign"))),
    ("/perfect21.admin.AdminService/RevokeRole", Rule::Needs(perm("perfect21.roles", "assign"))),
    ("/perfect21.admin.AdminService/GrantPermission", Rule::Needs(perm("perfect21.permissions", "grant"))),
    ("/perfect21.admin.AdminService/RevokePermission", Rule::Needs(perm("perfect21.permissions", "grant"))),
    ("/perfect21.admin.AdminService/GetAuditTrail", Rule::Needs(perm("perfect21.audit", "read"))),
    ("/perfect21.admin.AdminService/CreateServiceAccount", Rule::Needs(perm("perfect21.service_accounts", "create"))),
    ("/perfect21.admin.AdminService/ListServiceAccounts", Rule::Needs(perm("perfect21.service_accounts", "read"))),
    (
        "/perfect21.admin.AdminService/RotateServiceAccountSecret",
        Rule::Needs(perm("perfect21.service_accounts", "update")),
    ),
    ("/perfect21.admin.AdminService/DisableServiceAccount", Rule::Needs(perm("perfect21.service_accounts", "update"))),
    ("/perfect21.admin.AdminService/DeleteServiceAccount", Rule::Needs(perm("perfect21.service_accounts", "delete"))),
    ("/perfect21.admin.AdminService/RegisterClient", Rule::Needs(perm("perfect21.clients", "create"))),
    ("/perfect21.admin.AdminService/ListClients", Rule::Needs(perm("perfect21.clients", "read"))),
    ("/perfect21.admin.AdminService/UpdateClient", Rule::Needs(perm("perfect21.clients", "update"))),
    ("/perfect21.admin.AdminService/RotateClientSecret", Rule::Needs(perm("perfect21.clients", "update"))),
    ("/perfect21.admin.AdminService/DeleteClient", Rule::Needs(perm("perfect21.clients", "delete"))),
    ("/perfect21.events.EventService/Subscribe", Rule::Needs(perm("perfect21.events", "subscribe"))),
];

/// Every REST route, by method and route template.
pub const REST: &[(&str, &str, Rule)] = &[
    ("GET", "/healthz", Rule::Public),
    ("GET", "/readyz", Rule::Public),
    ("GET", "/status", Rule::Needs(perm("perfect21.status", "read"))),
    ("GET", "/metrics", Rule::Needs(perm("perfect21.metrics", "read"))),
    ("GET", "/.well-known/jwks.json", Rule::Public),
    ("POST", "/oauth2/token", Rule::Public),
    ("GET", "/.well-known/openid-configuration", Rule::Public),
    ("GET", "/oauth2/authorize", Rule::Public),
    ("POST", "/oauth2/authorize", Rule::Public),
    ("GET", "/oauth2/userinfo", Rule::User),
    ("POST", "/oauth2/userinfo", Rule::User),
    ("POST", "/oauth2/introspect", Rule::Public),
    ("POST", "/oauth2/revoke", Rule::Public),
    ("GET", "/oauth2/logout", Rule::Public),
    ("POST", "/oauth2/logout", Rule::Public),
    ("GET", "/verify-email", Rule::Public),
    ("POST", "/verify-email", Rule::Public),
    ("GET", "/assets/perfect21.css", Rule::Public),
    ("GET", "/api/v1/openapi.json", Rule::Public),
    ("GET", "/api/v1/users/{id}/export", Rule::SelfOr(perm("perfect21.users", "export"))),
    ("GET", "/api/v1/clients", Rule::Needs(perm("perfect21.clients", "read"))),
    ("POST", "/api/v1/clients", Rule::Needs(perm("perfect21.clients", "create"))),
    ("PUT", "/api/v1/clients/{id}", Rule::Needs(perm("perfect21.clients", "update"))),
    ("DELETE", "/api/v1/clients/{id}", Rule::Needs(perm("perfect21.clients", "delete"))),
    ("POST", "/api/v1/clients/{id}/secret", Rule::Needs(perm("perfect21.clients", "update"))),
    ("POST", "/api/v1/auth/register", Rule::Public),
    ("POST", "/api/v1/auth/verify-email", Rule::Public),
    ("POST", "/api/v1/auth/login", Rule::Public),
    ("POST", "/api/v1/auth/refresh", Rule::Public),
    ("POST", "/api/v1/auth/logout", Rule::User),
    ("POST", "/api/v1/auth/validate", Rule::SelfOr(TOKENS_VALIDATE)),
    ("POST", "/api/v1/auth/revoke", Rule::User),
    ("POST", "/api/v1/auth/mfa/enroll", Rule::User),
    ("POST", "/api/v1/auth/mfa/confirm", Rule::User),
    ("POST", "/api/v1/auth/mfa/disable", Rule::User),
    ("GET", "/api/v1/sessions", Rule::User),
    ("DELETE", "/api/v1/sessions/{id}", Rule::SelfOr(SESSIONS_REVOKE)),
    ("GET", "/api/v1/ws", Rule::User),
    ("GET", "/api/v1/users/me", Rule::User),
    ("GET", "/api/v1/users/{id}", Rule::SelfOr(USERS_READ)),
    ("GET", "/api/v1/audit/users/{id}", Rule::Needs(perm("perfect21.audit", "read"))),
    ("GET", "/api/v1/permissions/users/{id}", Rule::SelfOr(PERMISSIONS_READ)),
    ("POST", "/api/v1/permissions/check", Rule::SelfOr(PERMISSIONS_READ)),
    ("POST", "/api/v1/roles", Rule::Needs(perm("perfect21.roles", "create"))),
    ("POST", "/api/v1/roles/{id}/permissions", Rule::Needs(perm("perfect21.roles", "update"))),
    ("POST", "/api/v1/users/{id}/roles", Rule::Needs(perm("perfect21.roles", "assign"))),
    ("DELETE", "/api/v1/users/{id}/roles/{role}", Rule::Needs(perm("perfect21.roles", "assign"))),
    ("GET", "/api/v1/service-accounts", Rule::Needs(perm("perfect21.service_accounts", "read"))),
    ("POST", "/api/v1/service-accounts", Rule::Needs(perm("perfect21.service_accounts", "create"))),
    ("POST", "/api/v1/service-accounts/{id}/secret", Rule::Needs(perm("perfect21.service_accounts", "update"))),
    ("POST", "/api/v1/service-accounts/{id}/disable", Rule::Needs(perm("perfect21.service_accounts", "update"))),
    ("DELETE", "/api/v1/service-accounts/{id}", Rule::Needs(perm("perfect21.service_accounts", "delete"))),
];

/// The rule of a gRPC method, if the table lists it.
pub fn grpc_rule(path: &str) -> Option<Rule> {
    GRPC.iter().find(|(p, _)| *p == path).map(|(_, r)| *r)
}

/// The rule of a REST route, if the table lists it.
pub fn rest_rule(method: &str, template: &str) -> Option<Rule> {
    REST.iter().find(|(m, t, _)| *m == method && *t == template).map(|(_, _, r)| *r)
}

/// Why a call was refused before its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No or a bad credential (401 / UNAUTHENTICATED).
    Unauthenticated(String),
    /// A credential without the right (403 / PERMISSION_DENIED).
    Denied(String),
}

/// The authenticated caller of a call that passed its rule, as handlers see it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// For `SelfOr` rules: whether the caller holds the permission (may act on others).
    pub privileged: bool,
    /// The permission of the rule, to name it when refusing.
    pub perm: Option<Perm>,
}

impl Caller {
    /// Refuses unless `target` is the caller itself or the caller holds the rule's permission.
    pub fn require_self_or_privileged(&self, target: uuid::Uuid) -> Result<(), DomainError> {
        if self.privileged || target == self.principal.id() {
            return Ok(());
        }
        Err(self.not_on_others())
    }

    /// The refusal of acting on another principal without the rule's permission.
    pub fn not_on_others(&self) -> DomainError {
        DomainError::PermissionDenied(match self.perm {
            Some(p) => format!("{p} is required to act on another principal"),
            None => "a principal may act on itself only".into(),
        })
    }

    /// The user id, or a refusal for a service account.
    pub fn user(&self) -> Result<uuid::Uuid, DomainError> {
        match &self.principal {
            Principal::User { id, .. } => Ok(*id),
            Principal::Service { .. } => {
                Err(DomainError::PermissionDenied("this operation is for users, not service accounts".into()))
            }
        }
    }
}

/// Applies `rule` to a call carrying `bearer` (the token after `Bearer `, if any).
/// `None` for a public call; otherwise the caller, or why it is refused.
pub async fn admit(app: &App, rule: Rule, bearer: Option<&str>) -> Result<Option<Caller>, Refusal> {
    if rule == Rule::Public {
        return Ok(None);
    }
    let token = bearer
        .ok_or_else(|| Refusal::Unauthenticated("this call needs 'authorization: Bearer <access token>'".into()))?;
    let (principal, holds) = app.authenticate(token, rule.perm()).await.map_err(Refusal::Unauthenticated)?;
    let denied = |p: Perm| Refusal::Denied(format!("{p} is required"));
    let (privileged, perm) = match rule {
        Rule::Public => unreachable!("handled above"),
        Rule::User => {
            if principal.is_service() {
                return Err(Refusal::Denied("this call is for users, not service accounts".into()));
            }
            (false, None)
        }
        Rule::SelfOr(p) => (holds, Some(p)),
        Rule::Needs(p) => {
            if !holds {
                return Err(denied(p));
            }
            (true, Some(p))
        }
        Rule::ServiceOnly(p) => {
            if !principal.is_service() {
                return Err(Refusal::Denied(format!("this call is for service accounts holding {p}")));
            }
            if !holds {
                return Err(denied(p));
            }
            (true, Some(p))
        }
    };
    Ok(Some(Caller { principal, privileged, perm }))
}

/// The token of an `authorization: Bearer …` header value.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    header.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))).map(str::trim)
}
