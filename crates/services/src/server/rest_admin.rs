//! The administration routes of the REST front end: roles, assignments, service
//! accounts, audit. The access middleware has checked each route's permission
//! (`access::REST`) before a handler here runs.

use super::rest::{consistency, Admitted, ApiResult, Body, Problem, RestState};
use super::views;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use perfect21_domain::audit::AuditFilter;
use perfect21_domain::{clients, RoleSpec};
use perfect21_events::catalog::{ClientSettings, PermissionSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Deserialize)]
pub struct RoleBody {
    role_id: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    priority: i32,
}

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

#[derive(Deserialize)]
pub struct PermissionBody {
    id: String,
    resource: String,
    action: String,
    scope: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

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

#[derive(Deserialize)]
pub struct AssignBody {
    role_id: String,
    expires_at: Option<i64>,
}

pub async fn assign_role(
    State(s): State<RestState>,
    a: Admitted,
    Path(user): Path<Uuid>,
    Body(b): Body<AssignBody>,
) -> ApiResult {
    let position = s.app.identity.assign_role(&a.ctx, user, &b.role_id, b.expires_at).await?;
    Ok(Json(json!({"assigned": true, "consistency_token": position})))
}

pub async fn revoke_role(
    State(s): State<RestState>,
    a: Admitted,
    Path((user, role)): Path<(Uuid, String)>,
) -> ApiResult {
    let position = s.app.identity.revoke_role(&a.ctx, user, &role).await?;
    Ok(Json(json!({"revoked": true, "consistency_token": position})))
}

#[derive(Deserialize)]
pub struct AuditQuery {
    since: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    limit: Option<usize>,
}

pub async fn audit(State(s): State<RestState>, Path(id): Path<String>, Query(q): Query<AuditQuery>) -> ApiResult {
    let filter = AuditFilter { since: q.since, types: q.event_type.into_iter().collect(), limit: q.limit.unwrap_or(0) };
    let trail = s.app.identity.audit(&id, &filter).await?;
    let entries: Vec<Value> = trail.iter().map(views::audit_entry).collect();
    Ok(Json(json!({ "events": entries })))
}

#[derive(Deserialize)]
pub struct ServiceAccountBody {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// `POST /api/v1/service-accounts`: the answer holds the client secret, shown once.
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

pub async fn list_service_accounts(State(s): State<RestState>, headers: HeaderMap) -> ApiResult {
    let min = consistency(&headers)?.or(Some(s.app.identity.last_write()));
    let now = chrono::Utc::now().timestamp();
    let accounts = s.app.identity.read(min, |m| views::service_accounts(m, now)).await?;
    Ok(Json(json!({ "service_accounts": accounts })))
}

pub async fn rotate_service_account_secret(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    let (secret, position) = s.app.identity.rotate_service_account_secret(&a.ctx, id).await?;
    Ok(Json(json!({"client_id": id, "client_secret": secret, "consistency_token": position})))
}

#[derive(Deserialize, Default)]
pub struct DisableBody {
    #[serde(default)]
    reason: String,
}

pub async fn disable_service_account(
    State(s): State<RestState>,
    a: Admitted,
    Path(id): Path<Uuid>,
    Body(b): Body<DisableBody>,
) -> ApiResult {
    let position = s.app.identity.disable_service_account(&a.ctx, id, &b.reason).await?;
    Ok(Json(json!({"disabled": true, "consistency_token": position})))
}

pub async fn delete_service_account(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    let position = s.app.identity.delete_service_account(&a.ctx, id).await?;
    Ok(Json(json!({"deleted": true, "consistency_token": position})))
}

/// A client's registration, as the admin API takes it.
#[derive(Deserialize)]
pub struct ClientBody {
    name: String,
    /// `confidential` (default) or `public`.
    #[serde(default)]
    client_type: String,
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    #[serde(default = "clients::default_grant_types")]
    grant_types: Vec<String>,
    #[serde(default = "clients::default_scopes")]
    scopes: Vec<String>,
    #[serde(default = "default_alg")]
    id_token_signed_response_alg: String,
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

pub async fn list_clients(State(s): State<RestState>, headers: HeaderMap) -> ApiResult {
    let min = consistency(&headers)?.or(Some(s.app.identity.last_write()));
    let clients = s.app.identity.read(min, views::clients).await?;
    Ok(Json(json!({ "clients": clients })))
}

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

pub async fn rotate_client_secret(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    let (secret, position) = s.app.identity.rotate_client_secret(&a.ctx, id).await?;
    Ok(Json(json!({"client_id": id, "client_secret": secret, "consistency_token": position})))
}

pub async fn delete_client(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    let position = s.app.identity.delete_client(&a.ctx, id).await?;
    Ok(Json(json!({"deleted": true, "consistency_token": position})))
}

/// `GET /api/v1/users/{id}/export`: everything held about a user (right of access).
pub async fn export_user(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    a.caller.require_self_or_privileged(id)?;
    let export = s.app.export_user(id).await?;
    export.map(Json).ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "not found", format!("user {id} not found")))
}
