//! The administration routes of the REST front end: roles, assignments, service
//! accounts, audit. The access middleware has checked each route's permission
//! (`access::REST`) before a handler here runs.

use super::rest::{consistency, integral, integral_opt, Admitted, ApiResult, Body, Path, Problem, Query, RestState};
use super::views;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use perfect21_domain::audit::AuditFilter;
use perfect21_domain::{clients, RoleSpec};
use perfect21_events::catalog::{ClientSettings, PermissionSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
pub struct RoleBody {
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_.:-]{1,64}$")]
    role_id: String,
    #[serde(default)]
    #[schema(max_length = 200)]
    display_name: String,
    #[serde(default)]
    #[schema(max_length = 1000)]
    description: String,
    /// Higher wins when roles disagree.
    #[serde(default, deserialize_with = "integral")]
    priority: i32,
}

#[utoipa::path(post, path = "/api/v1/roles", tag = "admin",
    summary = "Create a role (perfect21.roles:create)",
    request_body = RoleBody,
    responses((status = 201, description = "The role exists", content_type = "application/json", body = Object)))]
pub async fn create_role(
    State(s): State<RestState>,
    a: Admitted,
    Body(b): Body<RoleBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let spec =
        RoleSpec { role_id: b.role_id, display_name: b.display_name, description: b.description, priority: b.priority };
    let position = s.app.identity.create_role(&a.ctx, spec).await?;
    Ok((StatusCode::CREATED, Json(json!({"created": true, "consistency_token": position}))))
}

#[derive(Deserialize, ToSchema)]
pub struct PermissionBody {
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_.:-]{1,64}$")]
    id: String,
    #[schema(min_length = 1, max_length = 66, pattern = r"^(\*|[a-z0-9_.:-]{1,64}|[a-z0-9_.:-]{1,64}\.\*)$")]
    resource: String,
    #[schema(min_length = 1, max_length = 66, pattern = r"^(\*|[a-z0-9_.:-]{1,64}|[a-z0-9_.:-]{1,64}\.\*)$")]
    action: String,
    #[schema(min_length = 1, max_length = 66, pattern = r"^(\*|[a-z0-9_.:-]{1,64}|[a-z0-9_.:-]{1,64}\.\*)$")]
    scope: String,
    #[serde(default)]
    #[schema(max_length = 200)]
    name: String,
    #[serde(default)]
    #[schema(max_length = 1000)]
    description: String,
}

#[utoipa::path(post, path = "/api/v1/roles/{id}/permissions", tag = "admin",
    summary = "Grant a permission to a role (perfect21.roles:update)",
    params(("id" = String, Path, description = "The role", min_length = 1, max_length = 64, pattern = r"^[a-z0-9_.:-]{1,64}$")),
    request_body = PermissionBody,
    responses((status = 200, description = "The role holds the permission", content_type = "application/json", body = Object)))]
pub async fn grant_to_role(
    State(s): State<RestState>,
    a: Admitted,
    Path(role): Path<String>,
    Body(b): Body<PermissionBody>,
) -> ApiResult {
    let p = PermissionSpec {
        id: b.id,
        resource: b.resource,
        action: b.action,
        scope: b.scope,
        name: b.name,
        description: b.description,
    };
    let position = s.app.identity.grant_permission_to_role(&a.ctx, &role, p).await?;
    Ok(Json(json!({"granted": true, "consistency_token": position})))
}

#[derive(Deserialize, ToSchema)]
pub struct AssignBody {
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_.:-]{1,64}$")]
    role_id: String,
    /// Unix seconds after which the assignment lapses (in the future).
    #[serde(default, deserialize_with = "integral_opt")]
    expires_at: Option<i64>,
}

#[utoipa::path(post, path = "/api/v1/users/{id}/roles", tag = "admin",
    summary = "Assign a role to a user (perfect21.roles:assign)",
    params(("id" = Uuid, Path, description = "The user")),
    request_body = AssignBody,
    responses((status = 200, description = "The user holds the role", content_type = "application/json", body = Object)))]
pub async fn assign_role(
    State(s): State<RestState>,
    a: Admitted,
    Path(user): Path<Uuid>,
    Body(b): Body<AssignBody>,
) -> ApiResult {
    let position = s.app.identity.assign_role(&a.ctx, user, &b.role_id, b.expires_at).await?;
    Ok(Json(json!({"assigned": true, "consistency_token": position})))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}/roles/{role}", tag = "admin",
    summary = "Revoke a role from a user (perfect21.roles:assign)",
    params(("id" = Uuid, Path, description = "The user"),
        ("role" = String, Path, description = "The role", min_length = 1, max_length = 64, pattern = r"^[a-z0-9_.:-]{1,64}$")),
    responses((status = 200, description = "The user no longer holds the role", content_type = "application/json", body = Object)))]
pub async fn revoke_role(
    State(s): State<RestState>,
    a: Admitted,
    Path((user, role)): Path<(Uuid, String)>,
) -> ApiResult {
    let position = s.app.identity.revoke_role(&a.ctx, user, &role).await?;
    Ok(Json(json!({"revoked": true, "consistency_token": position})))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events recorded at or after this instant (RFC 3339).
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events of this type, e.g. `user.login_failed`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// At most this many events, the newest (0: all). The document states the bound the
    /// server reads, so that no number it allows is refused.
    #[param(minimum = 0, maximum = 4294967295_u64)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit/users/{id}", tag = "admin",
    summary = "A user's security history (perfect21.audit:read); id, email or username",
    params(("id" = String, Path, description = "The user's id, email address or username", min_length = 1), AuditQuery),
    responses((status = 200, description = "The user's events, oldest first", content_type = "application/json", body = Object)))]
pub async fn audit(State(s): State<RestState>, Path(id): Path<String>, Query(q): Query<AuditQuery>) -> ApiResult {
    let filter = AuditFilter {
        since: q.since,
        types: q.event_type.into_iter().collect(),
        limit: q.limit.map_or(0, |l| l as usize),
    };
    let trail = s.app.identity.audit(&id, &filter).await?;
    let entries: Vec<Value> = trail.iter().map(views::audit_entry).collect();
    Ok(Json(json!({ "events": entries })))
}

#[derive(Deserialize, ToSchema)]
pub struct ServiceAccountBody {
    #[schema(min_length = 3, max_length = 64, pattern = r"^[a-z0-9][a-z0-9._-]{2,63}$")]
    name: String,
    #[serde(default)]
    #[schema(max_length = 500, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    description: String,
    /// Roles the account holds (they must exist).
    #[serde(default)]
    #[schema(schema_with = role_ids_schema)]
    roles: Vec<String>,
}

/// `POST /api/v1/service-accounts`: the answer holds the client secret, shown once.
#[utoipa::path(post, path = "/api/v1/service-accounts", tag = "admin",
    summary = "Create a service account; the answer holds its client secret, shown once",
    request_body = ServiceAccountBody,
    responses((status = 201, description = "The account, and its secret", content_type = "application/json", body = Object)))]
pub async fn create_service_account(
    State(s): State<RestState>,
    a: Admitted,
    Body(b): Body<ServiceAccountBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let created = s.app.identity.create_service_account(&a.ctx, &b.name, &b.description, &b.roles).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "client_id": created.id,
            "name": created.name,
            "client_secret": created.secret,
            "consistency_token": created.position,
        })),
    ))
}

#[utoipa::path(get, path = "/api/v1/service-accounts", tag = "admin",
    summary = "List service accounts and their roles",
    params(super::rest::Consistency),
    responses((status = 200, description = "The accounts", content_type = "application/json", body = Object)))]
pub async fn list_service_accounts(State(s): State<RestState>, headers: HeaderMap) -> ApiResult {
    let min = consistency(&headers)?.or(Some(s.app.identity.last_write()));
    let now = chrono::Utc::now().timestamp();
    let accounts = s.app.identity.read(min, |m| views::service_accounts(m, now)).await?;
    Ok(Json(json!({ "service_accounts": accounts })))
}

#[utoipa::path(post, path = "/api/v1/service-accounts/{id}/secret", tag = "admin",
    summary = "Rotate a service account's secret (the old one stops working)",
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 200, description = "The new secret, shown once", content_type = "application/json", body = Object)))]
pub async fn rotate_service_account_secret(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    let (secret, position) = s.app.identity.rotate_service_account_secret(&a.ctx, id).await?;
    Ok(Json(json!({"client_id": id, "client_secret": secret, "consistency_token": position})))
}

#[derive(Deserialize, Default, ToSchema)]
pub struct DisableBody {
    #[serde(default)]
    #[schema(max_length = 1024, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    reason: String,
}

#[utoipa::path(post, path = "/api/v1/service-accounts/{id}/disable", tag = "admin",
    summary = "Disable a service account (its tokens stop validating)",
    params(("id" = Uuid, Path, description = "The account")),
    request_body = DisableBody,
    responses((status = 200, description = "The account is disabled", content_type = "application/json", body = Object)))]
pub async fn disable_service_account(
    State(s): State<RestState>,
    a: Admitted,
    Path(id): Path<Uuid>,
    Body(b): Body<DisableBody>,
) -> ApiResult {
    let position = s.app.identity.disable_service_account(&a.ctx, id, &b.reason).await?;
    Ok(Json(json!({"disabled": true, "consistency_token": position})))
}

#[utoipa::path(delete, path = "/api/v1/service-accounts/{id}", tag = "admin",
    summary = "Delete a service account",
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 200, description = "The account is deleted", content_type = "application/json", body = Object)))]
pub async fn delete_service_account(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    let position = s.app.identity.delete_service_account(&a.ctx, id).await?;
    Ok(Json(json!({"deleted": true, "consistency_token": position})))
}

/// A client's registration, as the admin API takes it.
#[derive(Deserialize, ToSchema)]
pub struct ClientBody {
    /// Shown on the login page; not only blanks.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// `confidential` (default) or `public`.
    #[serde(default)]
    #[schema(pattern = "^(|confidential|public)$")]
    client_type: String,
    /// Where the browser may be sent back with a code: 1 to 32.
    #[schema(schema_with = redirect_uris_schema::<1>)]
    redirect_uris: Vec<String>,
    /// Where the browser may be sent after signing out: up to 32.
    #[serde(default)]
    #[schema(schema_with = redirect_uris_schema::<0>)]
    post_logout_redirect_uris: Vec<String>,
    /// `authorization_code`, with or without `refresh_token` (the default: both).
    #[serde(default = "clients::default_grant_types")]
    #[schema(schema_with = grant_types_schema)]
    grant_types: Vec<String>,
    /// Scopes the client may ask for (default: `openid profile email`).
    #[serde(default = "clients::default_scopes")]
    #[schema(schema_with = scopes_schema)]
    scopes: Vec<String>,
    #[serde(default = "default_alg")]
    #[schema(schema_with = alg_schema)]
    id_token_signed_response_alg: String,
}

fn role_ids_schema() -> ArrayBuilder {
    ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String).pattern(Some(ROLE_ID)))
}

/// A role's id (`authz::validate_name`).
const ROLE_ID: &str = "^[a-z0-9_.:-]{1,64}$";

/// Redirect URIs: [`clients::REDIRECT_URI_PATTERN`], at least `MIN`, at most 32.
fn redirect_uris_schema<const MIN: usize>() -> ArrayBuilder {
    let uri = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(clients::REDIRECT_URI_PATTERN))
        .max_length(Some(clients::MAX_REDIRECT_URI));
    ArrayBuilder::new().items(uri).min_items((MIN > 0).then_some(MIN)).max_items(Some(32))
}

/// Every list of distinct grant types the server accepts.
fn grant_types_schema() -> ObjectBuilder {
    let lists = [
        json!(["authorization_code"]),
        json!(["authorization_code", "refresh_token"]),
        json!(["refresh_token", "authorization_code"]),
    ];
    ObjectBuilder::new().schema_type(SchemaType::AnyValue).enum_values(Some(lists))
}

fn scopes_schema() -> ArrayBuilder {
    let scope = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(clients::SCOPES.iter().copied()));
    ArrayBuilder::new().items(scope).unique_items(true)
}

fn alg_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(clients::ID_TOKEN_ALGS.iter().copied()))
        .default(Some(json!(clients::DEFAULT_ID_TOKEN_ALG)))
}

fn default_alg() -> String {
    clients::DEFAULT_ID_TOKEN_ALG.into()
}

impl ClientBody {
    fn settings(self) -> Result<(String, bool, ClientSettings), Problem> {
        let confidential = clients::is_confidential(&self.client_type)?;
        let settings = ClientSettings {
            redirect_uris: self.redirect_uris,
            post_logout_redirect_uris: self.post_logout_redirect_uris,
            grant_types: self.grant_types,
            scopes: self.scopes,
            id_token_signed_response_alg: self.id_token_signed_response_alg,
        };
        Ok((self.name, confidential, settings))
    }
}

#[utoipa::path(post, path = "/api/v1/clients", tag = "admin",
    summary = "Register an OpenID Connect client; a confidential one's secret is in the answer, shown once",
    request_body = ClientBody,
    responses((status = 201, description = "The client (and its secret)", content_type = "application/json", body = Object)))]
pub async fn register_client(
    State(s): State<RestState>,
    a: Admitted,
    Body(b): Body<ClientBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (name, confidential, settings) = b.settings()?;
    let created = s.app.identity.register_client(&a.ctx, &name, confidential, settings).await?;
    let client = s.app.identity.read(Some(created.position), |m| m.clients.get(created.id).map(views::client)).await?;
    let mut body = json!({ "client": client, "consistency_token": created.position });
    if let Some(secret) = created.secret {
        body["client_secret"] = json!(secret);
    }
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(get, path = "/api/v1/clients", tag = "admin",
    summary = "List OpenID Connect clients",
    params(super::rest::Consistency),
    responses((status = 200, description = "The clients", content_type = "application/json", body = Object)))]
pub async fn list_clients(State(s): State<RestState>, headers: HeaderMap) -> ApiResult {
    let min = consistency(&headers)?.or(Some(s.app.identity.last_write()));
    let clients = s.app.identity.read(min, views::clients).await?;
    Ok(Json(json!({ "clients": clients })))
}

#[utoipa::path(put, path = "/api/v1/clients/{id}", tag = "admin",
    summary = "Replace a client's name and settings",
    params(("id" = Uuid, Path, description = "The client")),
    request_body = ClientBody,
    responses((status = 200, description = "The client as it now is", content_type = "application/json", body = Object)))]
pub async fn update_client(
    State(s): State<RestState>,
    a: Admitted,
    Path(id): Path<Uuid>,
    Body(b): Body<ClientBody>,
) -> ApiResult {
    let (name, _, settings) = b.settings()?;
    let position = s.app.identity.update_client(&a.ctx, id, &name, settings).await?;
    let client = s.app.identity.read(Some(position), |m| m.clients.get(id).map(views::client)).await?;
    Ok(Json(json!({ "client": client, "consistency_token": position })))
}

#[utoipa::path(post, path = "/api/v1/clients/{id}/secret", tag = "admin",
    summary = "Rotate a confidential client's secret (the old one stops working)",
    params(("id" = Uuid, Path, description = "The client")),
    responses((status = 200, description = "The new secret, shown once", content_type = "application/json", body = Object)))]
pub async fn rotate_client_secret(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    let (secret, position) = s.app.identity.rotate_client_secret(&a.ctx, id).await?;
    Ok(Json(json!({"client_id": id, "client_secret": secret, "consistency_token": position})))
}

#[utoipa::path(delete, path = "/api/v1/clients/{id}", tag = "admin",
    summary = "Delete a client",
    params(("id" = Uuid, Path, description = "The client")),
    responses((status = 200, description = "The client is deleted", content_type = "application/json", body = Object)))]
pub async fn delete_client(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    let position = s.app.identity.delete_client(&a.ctx, id).await?;
    Ok(Json(json!({"deleted": true, "consistency_token": position})))
}

/// `GET /api/v1/users/{id}/export`: everything held about a user (right of access).
#[utoipa::path(get, path = "/api/v1/users/{id}/export", tag = "users",
    summary = "Everything held about a user (right of access): record, sessions, roles, permissions, history",
    params(("id" = Uuid, Path, description = "The user")),
    responses((status = 200, description = "Every personal datum held", content_type = "application/json", body = Object)))]
pub async fn export_user(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    a.caller.require_self_or_privileged(id)?;
    let export = s.app.export_user(id).await?;
    export.map(Json).ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "not found", format!("user {id} not found")))
}
