//! The gRPC front end: perfect21.auth, perfect21.user, perfect21.permission.

use super::access::Caller;
use super::app::{App, TokenCheck};
use super::views;
use perfect21_domain::{DomainError, LoginRequest, RequestContext};
use perfect21_events::catalog::UserStatus;
use perfect21_projections::users::UserView;
use perfect21_proto::{auth, permission, user};
use std::collections::HashMap;
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// Request metadata naming the log position a read must reflect; also set on write responses.
pub const CONSISTENCY_HEADER: &str = "x-consistency-token";
/// Most items one batch call may carry.
const MAX_BATCH: usize = 1000;

/// DomainError → gRPC status, in one place.
pub fn status(e: DomainError) -> Status {
    let message = e.to_string();
    match e {
        DomainError::InvalidArgument { .. } => Status::invalid_argument(message),
        DomainError::InvalidCredentials | DomainError::MfaRequired | DomainError::InvalidToken { .. } => {
            Status::unauthenticated(message)
        }
        DomainError::AlreadyRegistered { .. } => Status::already_exists(message),
        DomainError::NotFound { .. } => Status::not_found(message),
        DomainError::FailedPrecondition(_)
        | DomainError::UserInactive { .. }
        | DomainError::Conflict { .. }
        | DomainError::EmailNotVerified => Status::failed_precondition(message),
        DomainError::PermissionDenied(_) => Status::permission_denied(message),
        DomainError::ConsistencyTimeout { .. } => Status::unavailable(message),
        DomainError::Store(
            perfect21_events::StoreError::Unavailable { .. } | perfect21_events::StoreError::Fenced { .. },
        ) => Status::unavailable(message),
        DomainError::Store(_) | DomainError::Internal(_) => Status::internal(message),
    }
}

fn min_position<T>(req: &Request<T>) -> Result<Option<u64>, Status> {
    match req.metadata().get(CONSISTENCY_HEADER) {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(|s| s.parse().ok()).map(Some).ok_or_else(|| {
            Status::invalid_argument(format!("{CONSISTENCY_HEADER} must be a log position (an integer)"))
        }),
    }
}

pub fn with_position<T>(body: T, position: u64) -> Response<T> {
    let mut r = Response::new(body);
    if let Ok(v) = position.to_string().parse() {
        r.metadata_mut().insert(CONSISTENCY_HEADER, v);
    }
    r
}

pub fn uuid(field: &'static str, s: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(s).map_err(|_| Status::invalid_argument(format!("{field} must be a UUID, got '{s}'")))
}

/// Where a call comes from: the peer (or the client a trusted proxy names), the
/// user agent, correlation id and trace; validated before any of it reaches the log.
pub fn context<T>(app: &App, req: &Request<T>) -> Result<RequestContext, Status> {
    let header = |name: &str| req.metadata().get(name).and_then(|v| v.to_str().ok()).map(String::from);
    let ctx = RequestContext {
        actor: None,
        client_ip: app.client_ip(req.remote_addr().map(|a| a.ip()), req.metadata().as_ref()),
        user_agent: header("user-agent"),
        correlation_id: header("x-correlation-id")
            .and_then(|s| Uuid::parse_str(&s).ok())
            .or_else(|| Some(Uuid::now_v7())),
        source_service: Some("grpc".into()),
        traceparent: crate::telemetry::current_traceparent().or_else(|| header("traceparent")),
    };
    ctx.validate().map_err(status)?;
    Ok(ctx)
}

/// The context of a service account reporting an end user's call: the `client_ip` and
/// `user_agent` fields of the request replace the peer's (only service accounts may).
fn on_behalf_of(
    caller: &Caller,
    mut ctx: RequestContext,
    client_ip: &str,
    user_agent: &str,
) -> Result<RequestContext, Status> {
    if !client_ip.is_empty() || !user_agent.is_empty() {
        if !caller.principal.is_service() {
            return Err(Status::permission_denied("client_ip and user_agent may be set by service accounts only"));
        }
        if !client_ip.is_empty() {
            ctx.client_ip = Some(client_ip.to_string());
        }
        if !user_agent.is_empty() {
            ctx.user_agent = Some(user_agent.to_string());
        }
        ctx.validate().map_err(status)?;
    }
    Ok(ctx)
}

/// The caller the access layer admitted (every method that is not public has one).
pub fn admitted<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("this RPC needs 'authorization: Bearer <access token>'"))
}

/// The admitted caller and a request context acting as it.
pub fn acting<T>(app: &App, req: &Request<T>) -> Result<(Caller, RequestContext), Status> {
    let caller = admitted(req)?;
    let ctx = caller.principal.context(context(app, req)?);
    Ok((caller, ctx))
}

fn token_response(c: TokenCheck) -> auth::ValidateTokenResponse {
    auth::ValidateTokenResponse {
        valid: c.valid,
        user_id: c.user_id.map(|u| u.to_string()).unwrap_or_default(),
        permissions: c.permissions,
        expires_at: c.expires_at,
        error_message: c.error.unwrap_or_default(),
        warnings: c.warnings,
    }
}

pub struct AuthService(pub App);

#[tonic::async_trait]
impl auth::auth_service_server::AuthService for AuthService {
    async fn validate_token(
        &self,
        req: Request<auth::ValidateTokenRequest>,
    ) -> Result<Response<auth::ValidateTokenResponse>, Status> {
        let caller = admitted(&req)?;
        if let Some(p) = min_position(&req)? {
            self.0.identity.live().wait_for(p, self.0.identity.config().consistency_timeout).await.map_err(status)?;
        }
        let r = req.get_ref();
        let check = self.0.validate(&r.token, Some(&r.client_ip)).await;
        // Without perfect21.tokens:validate a caller may validate its own tokens only.
        if !caller.privileged && check.user_id != Some(caller.principal.id()) {
            return Err(Status::permission_denied(format!(
                "{} is required to validate tokens of others",
                super::access::TOKENS_VALIDATE
            )));
        }
        Ok(Response::new(token_response(check)))
    }

    async fn refresh_token(
        &self,
        req: Request<auth::RefreshTokenRequest>,
    ) -> Result<Response<auth::RefreshTokenResponse>, Status> {
        let r = req.get_ref();
        let mut ctx = context(&self.0, &req)?;
        if let Some(caller) = req.extensions().get::<Caller>() {
            ctx = on_behalf_of(caller, ctx, &r.client_ip, &r.user_agent)?;
        }
        let grant = self.0.identity.refresh(&ctx, &r.refresh_token).await.map_err(status)?;
        let access_token = self.0.access_token(&grant).map_err(|e| Status::internal(e.to_string()))?;
        let body = auth::RefreshTokenResponse {
            access_token,
            refresh_token: grant.refresh_token,
            expires_at: grant.access_expires_at,
            refresh_expires_at: grant.refresh_expires_at,
            session_id: grant.session_id.to_string(),
            consistency_token: grant.position,
        };
        Ok(with_position(body, grant.position))
    }

    async fn revoke_token(
        &self,
        req: Request<auth::RevokeTokenRequest>,
    ) -> Result<Response<auth::RevokeTokenResponse>, Status> {
        let (caller, ctx) = acting(&self.0, &req)?;
        let r = req.get_ref();
        // A signed token (expired ones too) of the caller's own, or anyone's with perfect21.tokens:revoke.
        let claims = self.0.keys.verify(&r.token, true).map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        let user = uuid("token sub", &claims.sub)?;
        caller.require_self_or_privileged(user).map_err(status)?;
        let session = uuid("token sid", &claims.sid)?;
        let position = self.0.identity.revoke_token(&ctx, session, &claims.jti, claims.exp).await.map_err(status)?;
        Ok(with_position(auth::RevokeTokenResponse { revoked: true, consistency_token: position }, position))
    }

    async fn validate_credentials(
        &self,
        req: Request<auth::ValidateCredentialsRequest>,
    ) -> Result<Response<auth::ValidateCredentialsResponse>, Status> {
        let (caller, ctx) = acting(&self.0, &req)?;
        let r = req.get_ref();
        let ctx = on_behalf_of(&caller, ctx, &r.client_ip, &r.user_agent)?;
        let login = LoginRequest {
            identifier: r.identifier.clone(),
            password: r.password.clone(),
            mfa_code: Some(r.mfa_code.clone()).filter(|c| !c.is_empty()),
            device_id: Some(r.device_id.clone()).filter(|d| !d.is_empty()),
        };
        match self.0.identity.login(&ctx, login).await {
            Ok(grant) => {
                let access_token = self.0.access_token(&grant).map_err(|e| Status::internal(e.to_string()))?;
                let body = auth::ValidateCredentialsResponse {
                    valid: true,
                    user_id: grant.user_id.to_string(),
                    access_token,
                    refresh_token: grant.refresh_token,
                    expires_at: grant.access_expires_at,
                    session_id: grant.session_id.to_string(),
                    mfa_required: false,
                    error_message: String::new(),
                    consistency_token: grant.position,
                    risk_score: grant.risk_score as f64,
                };
                Ok(with_position(body, grant.position))
            }
            Err(DomainError::MfaRequired) => Ok(Response::new(auth::ValidateCredentialsResponse {
                mfa_required: true,
                error_message: DomainError::MfaRequired.to_string(),
                ..Default::default()
            })),
            Err(e @ DomainError::InvalidCredentials) => Ok(Response::new(auth::ValidateCredentialsResponse {
                error_message: e.to_string(),
                ..Default::default()
            })),
            Err(e) => Err(status(e)),
        }
    }

    async fn batch_validate_tokens(
        &self,
        req: Request<auth::BatchValidateTokensRequest>,
    ) -> Result<Response<auth::BatchValidateTokensResponse>, Status> {
        let r = req.get_ref();
        if r.tokens.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} tokens per call, got {}",
                r.tokens.len()
            )));
        }
        let mut results = Vec::with_capacity(r.tokens.len());
        for t in &r.tokens {
            results.push(token_response(self.0.validate(t, Some(&r.client_ip)).await));
        }
        Ok(Response::new(auth::BatchValidateTokensResponse { results }))
    }
}

/// The user's public view as a message, with only the `fields` asked for (all when empty).
pub fn user_message(u: &UserView, fields: &[String]) -> user::User {
    let u = views::user(u);
    let want = |f: &str| fields.is_empty() || fields.iter().any(|x| x == f);
    let s = |f: &str, v: String| if want(f) { v } else { String::new() };
    user::User {
        id: u.id.to_string(),
        email: s("email", u.email),
        username: s("username", u.username),
        first_name: s("first_name", u.first_name),
        last_name: s("last_name", u.last_name),
        phone_number: s("phone_number", u.phone_number),
        status: if want("status") { proto_status(u.status) as i32 } else { 0 },
        is_active: want("is_active") && u.is_active,
        is_verified: want("is_verified") && u.is_verified,
        mfa_enabled: want("mfa_enabled") && u.mfa_enabled,
        created_at: if want("created_at") { u.created_at } else { 0 },
        last_login_at: if want("last_login_at") { u.last_login_at } else { 0 },
        profile: if want("profile") { u.profile.into_iter().collect() } else { HashMap::new() },
    }
}

fn proto_status(s: UserStatus) -> user::UserStatus {
    match s {
        UserStatus::PendingVerification => user::UserStatus::PendingVerification,
        UserStatus::Active => user::UserStatus::Active,
        UserStatus::Locked => user::UserStatus::Locked,
        UserStatus::Suspended => user::UserStatus::Suspended,
        UserStatus::Deleted => user::UserStatus::Deleted,
    }
}

const USER_FIELDS: &[&str] = &[
    "email",
    "username",
    "first_name",
    "last_name",
    "phone_number",
    "status",
    "is_active",
    "is_verified",
    "mfa_enabled",
    "created_at",
    "last_login_at",
    "profile",
];

fn check_fields(fields: &[String]) -> Result<(), Status> {
    match fields.iter().find(|f| !USER_FIELDS.contains(&f.as_str())) {
        Some(f) => Err(Status::invalid_argument(format!("unknown field '{f}'; fields are {}", USER_FIELDS.join(", ")))),
        None => Ok(()),
    }
}

pub struct UserService(pub App);

#[tonic::async_trait]
impl user::user_service_server::UserService for UserService {
    async fn get_user(&self, req: Request<user::GetUserRequest>) -> Result<Response<user::GetUserResponse>, Status> {
        let caller = admitted(&req)?;
        let min = min_position(&req)?;
        let r = req.into_inner();
        check_fields(&r.fields)?;
        use user::get_user_request::Identifier;
        let identifier =
            r.identifier.ok_or_else(|| Status::invalid_argument("one of user_id, email, username is required"))?;
        let id = match &identifier {
            Identifier::UserId(s) => Some(uuid("user_id", s)?),
            _ => None,
        };
        let found = self
            .0
            .identity
            .read(min, |m| {
                let u = match &identifier {
                    Identifier::UserId(_) => id.and_then(|id| m.users.get(id)),
                    Identifier::Email(e) => m.users.by_email(e),
                    Identifier::Username(n) => m.users.by_username(n),
                };
                u.map(|u| (u.id, user_message(u, &r.fields)))
            })
            .await
            .map_err(status)?;
        // Without perfect21.users:read a caller sees itself only, and learns nothing of
        // whether another user exists.
        if !caller.privileged && found.as_ref().map(|(id, _)| *id) != Some(caller.principal.id()) {
            return Err(status(caller.not_on_others()));
        }
        match found.map(|(_, u)| u) {
            Some(user) => Ok(Response::new(user::GetUserResponse { user: Some(user), error_message: String::new() })),
            None => Err(Status::not_found("no such user")),
        }
    }

    async fn batch_get_users(
        &self,
        req: Request<user::BatchGetUsersRequest>,
    ) -> Result<Response<user::BatchGetUsersResponse>, Status> {
        let caller = admitted(&req)?;
        let min = min_position(&req)?;
        let r = req.into_inner();
        check_fields(&r.fields)?;
        if r.user_ids.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("at most {MAX_BATCH} ids per call")));
        }
        let ids = r.user_ids.iter().map(|s| uuid("user_ids", s)).collect::<Result<Vec<_>, _>>()?;
        for id in &ids {
            caller.require_self_or_privileged(*id).map_err(status)?;
        }
        let (users, not_found) = self
            .0
            .identity
            .read(min, |m| {
                let mut users = Vec::new();
                let mut missing = Vec::new();
                for id in &ids {
                    match m.users.get(*id) {
                        Some(u) => users.push(user_message(u, &r.fields)),
                        None => missing.push(id.to_string()),
                    }
                }
                (users, missing)
            })
            .await
            .map_err(status)?;
        Ok(Response::new(user::BatchGetUsersResponse { users, not_found }))
    }

    async fn verify_password(
        &self,
        req: Request<user::VerifyPasswordRequest>,
    ) -> Result<Response<user::VerifyPasswordResponse>, Status> {
        let r = req.get_ref();
        let valid = self.0.identity.verify_password(uuid("user_id", &r.user_id)?, &r.password).await.map_err(status)?;
        Ok(Response::new(user::VerifyPasswordResponse { valid }))
    }

    async fn update_user_status(
        &self,
        req: Request<user::UpdateUserStatusRequest>,
    ) -> Result<Response<user::UpdateUserStatusResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let r = req.get_ref();
        let id = uuid("user_id", &r.user_id)?;
        let to = match user::UserStatus::try_from(r.status) {
            Ok(user::UserStatus::PendingVerification) => UserStatus::PendingVerification,
            Ok(user::UserStatus::Active) => UserStatus::Active,
            Ok(user::UserStatus::Locked) => UserStatus::Locked,
            Ok(user::UserStatus::Suspended) => UserStatus::Suspended,
            Ok(user::UserStatus::Deleted) => UserStatus::Deleted,
            Err(_) => return Err(Status::invalid_argument(format!("status {} is not a UserStatus", r.status))),
        };
        let reason = if r.reason.is_empty() { "administrator" } else { r.reason.as_str() };
        let position = self.0.identity.set_status(&ctx, id, to, reason).await.map_err(status)?;
        let user = self
            .0
            .identity
            .read(Some(position), |m| m.users.get(id).map(|u| user_message(u, &[])))
            .await
            .map_err(status)?;
        Ok(with_position(user::UpdateUserStatusResponse { user, consistency_token: position }, position))
    }

    async fn record_login_history(
        &self,
        req: Request<user::RecordLoginHistoryRequest>,
    ) -> Result<Response<user::RecordLoginHistoryResponse>, Status> {
        let (caller, ctx) = acting(&self.0, &req)?;
        let r = req.get_ref();
        let ctx = on_behalf_of(&caller, ctx, &r.client_ip, &r.user_agent)?;
        let id = uuid("user_id", &r.user_id)?;
        let position = self.0.identity.record_login(&ctx, id, r.success, &r.failure_reason).await.map_err(status)?;
        Ok(with_position(user::RecordLoginHistoryResponse { consistency_token: position }, position))
    }
}

pub struct PermissionService(pub App);

fn check_request(c: &permission::CheckPermissionRequest) -> Result<Uuid, Status> {
    if c.resource.is_empty() || c.action.is_empty() {
        return Err(Status::invalid_argument("resource and action are required"));
    }
    uuid("user_id", &c.user_id)
}

#[tonic::async_trait]
impl permission::permission_service_server::PermissionService for PermissionService {
    async fn check_permission(
        &self,
        req: Request<permission::CheckPermissionRequest>,
    ) -> Result<Response<permission::CheckPermissionResponse>, Status> {
        let caller = admitted(&req)?;
        let min = min_position(&req)?;
        let r = req.get_ref();
        let user = check_request(r)?;
        caller.require_self_or_privileged(user).map_err(status)?;
        let scope = if r.scope.is_empty() { "*" } else { r.scope.as_str() };
        let d = self.0.identity.check_permission(user, &r.resource, &r.action, scope, min).await.map_err(status)?;
        Ok(Response::new(permission::CheckPermissionResponse {
            allowed: d.allowed,
            reason: d.reason,
            applied_policies: d.applied_policies,
        }))
    }

    async fn batch_check_permissions(
        &self,
        req: Request<permission::BatchCheckPermissionsRequest>,
    ) -> Result<Response<permission::BatchCheckPermissionsResponse>, Status> {
        let min = min_position(&req)?;
        let checks = &req.get_ref().checks;
        if checks.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("at most {MAX_BATCH} checks per call")));
        }
        let parsed = checks.iter().map(check_request).collect::<Result<Vec<_>, _>>()?;
        let caller = admitted(&req)?;
        for user in &parsed {
            caller.require_self_or_privileged(*user).map_err(status)?;
        }
        let now = chrono::Utc::now().timestamp();
        let results = self
            .0
            .identity
            .read(min, |m| {
                checks
                    .iter()
                    .zip(&parsed)
                    .map(|(c, user)| {
                        let scope = if c.scope.is_empty() { "*" } else { c.scope.as_str() };
                        let d = m.authz.check(*user, m.principal_status(*user), &c.resource, &c.action, scope, now);
                        permission::CheckPermissionResponse {
                            allowed: d.allowed,
                            reason: d.reason,
                            applied_policies: d.applied_policies,
                        }
                    })
                    .collect()
            })
            .await
            .map_err(status)?;
        Ok(Response::new(permission::BatchCheckPermissionsResponse { results }))
    }

    async fn get_user_permissions(
        &self,
        req: Request<permission::GetUserPermissionsRequest>,
    ) -> Result<Response<permission::GetUserPermissionsResponse>, Status> {
        let min = min_position(&req)?;
        let user = uuid("user_id", &req.get_ref().user_id)?;
        admitted(&req)?.require_self_or_privileged(user).map_err(status)?;
        let now = chrono::Utc::now().timestamp();
        let (permissions, sources) = self
            .0
            .identity
            .read(min, |m| {
                m.authz
                    .effective_permissions(user, now)
                    .into_iter()
                    .map(|(source, p)| (permission_message(p), source.to_string()))
                    .unzip()
            })
            .await
            .map_err(status)?;
        Ok(Response::new(permission::GetUserPermissionsResponse { permissions, sources }))
    }

    async fn get_user_roles(
        &self,
        req: Request<permission::GetUserRolesRequest>,
    ) -> Result<Response<permission::GetUserRolesResponse>, Status> {
        let min = min_position(&req)?;
        let user = uuid("user_id", &req.get_ref().user_id)?;
        admitted(&req)?.require_self_or_privileged(user).map_err(status)?;
        let now = chrono::Utc::now().timestamp();
        let roles = self
            .0
            .identity
            .read(min, |m| {
                m.authz
                    .user_roles(user, now)
                    .into_iter()
                    .map(|r| permission::Role {
                        id: r.id.clone(),
                        name: r.name.clone(),
                        display_name: r.display_name.clone(),
                        description: r.description.clone(),
                        priority: r.priority,
                        permissions: r.permissions.values().map(permission_message).collect(),
                    })
                    .collect()
            })
            .await
            .map_err(status)?;
        Ok(Response::new(permission::GetUserRolesResponse { roles }))
    }
}

pub fn permission_message(p: &perfect21_events::catalog::PermissionSpec) -> permission::Permission {
    let p = views::permission(p);
    permission::Permission {
        id: p.id,
        resource: p.resource,
        action: p.action,
        scope: p.scope,
        name: p.name,
        description: p.description,
    }
}
