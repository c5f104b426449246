//! The REST front end (axum) under `/api/v1`, errors as `application/problem+json`.

use super::access;
use super::app::{App, Principal};
use super::hub::Hub;
use super::rest_admin;
use super::views;
use super::{runs, Service};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use perfect21_domain::{DomainError, LoginRequest, Registration, RequestContext};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Largest accepted request body.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct RestState {
    pub app: App,
    pub hub: Arc<Hub>,
    /// The relay's progress, when this process runs one.
    pub relay: Option<Arc<crate::relay::RelayStatus>>,
    /// How far the log's hash chain is verified, when this process watches it.
    pub chain: Option<Arc<super::chain::ChainWatch>>,
}

/// An RFC 9457 problem.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem { status, title, detail: detail.into() }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid request", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("https://perfect21.dev/problems/{}", self.title.replace(' ', "-")),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
    }
}

/// DomainError → HTTP problem, in one place.
impl From<DomainError> for Problem {
    fn from(e: DomainError) -> Self {
        let detail = e.to_string();
        let (status, title) = match e {
            DomainError::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "invalid argument"),
            DomainError::InvalidCredentials | DomainError::InvalidToken { .. } => {
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            }
            DomainError::MfaRequired => (StatusCode::UNAUTHORIZED, "mfa required"),
            DomainError::AlreadyRegistered { .. } => (StatusCode::CONFLICT, "already registered"),
            DomainError::NotFound { .. } => (StatusCode::NOT_FOUND, "not found"),
            DomainError::FailedPrecondition(_) | DomainError::UserInactive { .. } => {
                (StatusCode::CONFLICT, "failed precondition")
            }
            DomainError::Conflict { .. } => (StatusCode::CONFLICT, "concurrent modification"),
            DomainError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission denied"),
            DomainError::EmailNotVerified => (StatusCode::FORBIDDEN, "email not verified"),
            DomainError::ConsistencyTimeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "consistency timeout"),
            DomainError::Store(perfect21_events::StoreError::Unavailable { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
            }
            DomainError::Store(_) | DomainError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        Problem::new(status, title, detail)
    }
}

pub type ApiResult<T = Json<Value>> = Result<T, Problem>;

/// The JSON body, with a problem (not a plain-text 422) when it does not parse.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = Problem;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Problem> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(Problem::new(e.status(), "invalid body", e.body_text())),
        }
    }
}

/// Where a request comes from: the peer (or the client a trusted proxy names), the
/// user agent, correlation id and trace; validated before any of it reaches the log.
pub struct Origin(pub RequestContext);

impl FromRequestParts<RestState> for Origin {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, Problem> {
        let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(String::from);
        let peer = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let ctx = RequestContext {
            actor: None,
            client_ip: state.app.client_ip(peer, &parts.headers),
            user_agent: header("user-agent"),
            correlation_id: header("x-correlation-id")
                .and_then(|s| Uuid::parse_str(&s).ok())
                .or_else(|| Some(Uuid::now_v7())),
            source_service: Some("rest".into()),
            // The request's own span, so that events point at it (falls back to the caller's header).
            traceparent: crate::telemetry::current_traceparent().or_else(|| header("traceparent")),
        };
        ctx.validate()?;
        Ok(Origin(ctx))
    }
}

/// The caller the access middleware admitted, with a context acting as it.
pub struct Admitted {
    pub caller: access::Caller,
    pub ctx: RequestContext,
}

impl FromRequestParts<RestState> for Admitted {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, Problem> {
        let caller = parts.extensions.get::<access::Caller>().cloned().ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authorization: Bearer <access token> is required",
            )
        })?;
        let Origin(ctx) = Origin::from_request_parts(parts, state).await?;
        let ctx = caller.principal.context(ctx);
        Ok(Admitted { caller, ctx })
    }
}

/// A signed-in user (service accounts are refused).
pub struct Authenticated {
    pub user: Uuid,
    pub session: Uuid,
    pub jti: String,
    pub exp: i64,
    pub ctx: RequestContext,
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    access::bearer_token(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()))
}

impl FromRequestParts<RestState> for Authenticated {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, Problem> {
        let Admitted { caller, ctx } = Admitted::from_request_parts(parts, state).await?;
        match caller.principal.clone() {
            Principal::User { id, session, jti, exp } => Ok(Authenticated { user: id, session, jti, exp, ctx }),
            Principal::Service { .. } => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "permission denied",
                "this route is for users, not service accounts",
            )),
        }
    }
}

/// Applies the access table ([`access::REST`]) before any handler: 401 without a valid
/// token, 403 naming the permission that is missing.
async fn authorize(
    State(s): State<RestState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(template) = req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_string()) else {
        // No route matched: the fallback answers 404.
        return next.run(req).await;
    };
    let method = if req.method() == axum::http::Method::HEAD { "GET".to_string() } else { req.method().to_string() };
    let rule = match access::rest_rule(&method, &template) {
        // --public-metrics opens /metrics to a scraper without a token.
        Some(access::Rule::Needs(_)) if template == "/metrics" && s.app.public_metrics => access::Rule::Public,
        Some(rule) => rule,
        // Another method of a listed route: axum answers 405 without running a handler.
        None if access::REST.iter().any(|(_, t, _)| *t == template) => return next.run(req).await,
        None => {
            return Problem::new(StatusCode::FORBIDDEN, "permission denied", "this route has no access rule")
                .into_response()
        }
    };
    // Browsers cannot set headers on a WebSocket upgrade: the token may come as ?access_token=.
    let query_token = (template == "/api/v1/ws").then(|| req.uri().query().and_then(super::hub::query_token)).flatten();
    let token = bearer(req.headers()).map(String::from).or(query_token);
    match access::admit(&s.app, rule, token.as_deref()).await {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => next.run(req).await,
        Err(access::Refusal::Unauthenticated(m)) => {
            let mut r = Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", m).into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            r
        }
        Err(access::Refusal::Denied(m)) => Problem::new(StatusCode::FORBIDDEN, "permission denied", m).into_response(),
    }
}

pub fn consistency(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    match headers.get("x-consistency-token") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| Problem::bad_request("x-consistency-token must be a log position (an integer)")),
    }
}

/// The REST routes; with `only`, just that service's.
pub fn router(state: RestState, only: Option<Service>) -> Router<()> {
    let mut api = Router::new().route("/openapi.json", get(|| async { Json(super::openapi::document()) }));
    if runs(only, Service::Auth) {
        api = api
            .route("/auth/register", post(register))
            .route("/auth/verify-email", post(verify_email))
            .route("/auth/login", post(login))
            .route("/auth/logout", post(logout))
            .route("/auth/validate", post(validate))
            .route("/auth/revoke", post(revoke_token))
            .route("/auth/mfa/enroll", post(mfa_enroll))
            .route("/auth/mfa/confirm", post(mfa_confirm))
            .route("/auth/mfa/disable", post(mfa_disable));
    }
    if runs(only, Service::Session) {
        api = api
            .route("/auth/refresh", post(refresh))
            .route("/sessions", get(list_sessions))
            .route("/sessions/{id}", delete(revoke_session))
            .route("/ws", get(super::hub::websocket));
    }
    if runs(only, Service::User) {
        api = api
            .route("/users/me", get(me))
            .route("/users/{id}", get(get_user))
            .route("/audit/users/{id}", get(rest_admin::audit))
            .route("/users/{id}/export", get(rest_admin::export_user));
    }
    if runs(only, Service::Permission) {
        api = api
            .route("/permissions/users/{id}", get(user_permissions))
            .route("/permissions/check", post(check_permission))
            .route("/roles", post(rest_admin::create_role))
            .route("/roles/{id}/permissions", post(rest_admin::grant_to_role))
            .route("/users/{id}/roles", post(rest_admin::assign_role))
            .route("/users/{id}/roles/{role}", delete(rest_admin::revoke_role));
    }
    if runs(only, Service::Auth) {
        api = api
            .route("/service-accounts", get(rest_admin::list_service_accounts).post(rest_admin::create_service_account))
            .route("/service-accounts/{id}/secret", post(rest_admin::rotate_service_account_secret))
            .route("/service-accounts/{id}/disable", post(rest_admin::disable_service_account))
            .route("/service-accounts/{id}", delete(rest_admin::delete_service_account))
            .route("/clients", get(rest_admin::list_clients).post(rest_admin::register_client))
            .route("/clients/{id}", axum::routing::put(rest_admin::update_client).delete(rest_admin::delete_client))
            .route("/clients/{id}/secret", post(rest_admin::rotate_client_secret));
    }
    let mut root = Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(status))
        .route("/readyz", get(readyz));
    if runs(only, Service::Auth) {
        root = root
            .route("/.well-known/jwks.json", get(jwks))
            .route("/.well-known/openid-configuration", get(super::oidc::discovery))
            .route("/oauth2/token", post(super::oauth2::token))
            .route("/oauth2/authorize", get(super::oidc::authorize).post(super::oidc::authorize_submit))
            .route("/oauth2/userinfo", get(super::oidc::userinfo).post(super::oidc::userinfo))
            .route("/oauth2/introspect", post(super::oidc::introspect))
            .route("/oauth2/revoke", post(super::oidc::revoke))
            .route("/oauth2/logout", get(super::oidc::logout).post(super::oidc::logout_submit))
            .route("/verify-email", get(super::pages::verify_email_page).post(super::pages::verify_email_submit))
            .route("/assets/perfect21.css", get(super::pages::stylesheet));
    }
    root.route("/metrics", get(metrics_text))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not found", "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .layer(axum::middleware::from_fn(measure))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .with_state(state)
}

#[derive(Deserialize)]
struct RegisterBody {
    email: String,
    username: String,
    password: String,
    first_name: Option<String>,
    last_name: Option<String>,
    phone_number: Option<String>,
    locale: Option<String>,
}

async fn register(
    State(s): State<RestState>,
    Origin(ctx): Origin,
    Body(b): Body<RegisterBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let r = Registration {
        email: b.email,
        username: b.username,
        password: b.password,
        first_name: b.first_name,
        last_name: b.last_name,
        phone_number: b.phone_number,
        locale: b.locale,
    };
    let reg = s.app.identity.register(&ctx, r).await?;
    let mut body = json!({"user_id": reg.user_id, "consistency_token": reg.position});
    if s.app.dev_mode {
        body["verification_token"] = json!(reg.verification_token);
    }
    Ok((StatusCode::CREATED, Json(body)))
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

async fn verify_email(State(s): State<RestState>, Origin(ctx): Origin, Body(b): Body<TokenBody>) -> ApiResult {
    let position = s.app.identity.verify_email(&ctx, &b.token).await?;
    Ok(Json(json!({"verified": true, "consistency_token": position})))
}

#[derive(Deserialize)]
struct LoginBody {
    /// Email address or username.
    identifier: String,
    password: String,
    mfa_code: Option<String>,
    device_id: Option<String>,
}

fn grant_json(app: &App, grant: &perfect21_domain::LoginGrant) -> ApiResult {
    let access_token = app
        .access_token(grant)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error", e.to_string()))?;
    Ok(Json(json!({
        "user_id": grant.user_id,
        "session_id": grant.session_id,
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_at": grant.access_expires_at,
        "refresh_token": grant.refresh_token,
        "refresh_expires_at": grant.refresh_expires_at,
        "risk_score": grant.risk_score,
        "consistency_token": grant.position,
    })))
}

async fn login(State(s): State<RestState>, Origin(ctx): Origin, Body(b): Body<LoginBody>) -> ApiResult {
    let req =
        LoginRequest { identifier: b.identifier, password: b.password, mfa_code: b.mfa_code, device_id: b.device_id };
    let grant = s.app.identity.login(&ctx, req).await?;
    grant_json(&s.app, &grant)
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(State(s): State<RestState>, Origin(ctx): Origin, Body(b): Body<RefreshBody>) -> ApiResult {
    let grant = s.app.identity.refresh(&ctx, &b.refresh_token).await?;
    grant_json(&s.app, &grant)
}

async fn logout(State(s): State<RestState>, a: Authenticated) -> ApiResult {
    let position = s.app.identity.logout(&a.ctx, a.session).await?;
    Ok(Json(json!({"logged_out": true, "consistency_token": position})))
}

async fn validate(State(s): State<RestState>, a: Admitted, Body(b): Body<TokenBody>) -> ApiResult {
    let c = s.app.validate(&b.token, a.ctx.client_ip.as_deref()).await;
    // Without perfect21.tokens:validate a caller may validate its own tokens only.
    if !a.caller.privileged && c.user_id != Some(a.caller.principal.id()) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "permission denied",
            format!("{} is required to validate tokens of others", access::TOKENS_VALIDATE),
        ));
    }
    Ok(Json(json!({
        "valid": c.valid,
        "user_id": c.user_id,
        "permissions": c.permissions,
        "expires_at": c.expires_at,
        "error_message": c.error.unwrap_or_default(),
        "warnings": c.warnings,
    })))
}

async fn revoke_token(State(s): State<RestState>, a: Authenticated) -> ApiResult {
    let position = s.app.identity.revoke_token(&a.ctx, a.session, &a.jti, a.exp).await?;
    Ok(Json(json!({"revoked": true, "consistency_token": position})))
}

async fn mfa_enroll(State(s): State<RestState>, a: Authenticated, Body(b): Body<PasswordBody>) -> ApiResult {
    let e = s.app.identity.begin_mfa(&a.ctx, a.user, &b.password).await?;
    Ok(Json(json!({
        "secret": e.secret,
        "otpauth_url": e.otpauth_url,
        "enrollment_token": e.enrollment_token,
        "expires_at": e.expires_at,
    })))
}

#[derive(Deserialize)]
struct MfaConfirmBody {
    enrollment_token: String,
    code: String,
    password: String,
}

async fn mfa_confirm(State(s): State<RestState>, a: Authenticated, Body(b): Body<MfaConfirmBody>) -> ApiResult {
    let (codes, position) =
        s.app.identity.confirm_mfa(&a.ctx, a.user, &b.enrollment_token, &b.code, &b.password).await?;
    Ok(Json(json!({"mfa_enabled": true, "recovery_codes": codes, "consistency_token": position})))
}

#[derive(Deserialize)]
struct PasswordBody {
    password: String,
}

async fn mfa_disable(State(s): State<RestState>, a: Authenticated, Body(b): Body<PasswordBody>) -> ApiResult {
    let position = s.app.identity.disable_mfa(&a.ctx, a.user, &b.password).await?;
    Ok(Json(json!({"mfa_enabled": false, "consistency_token": position})))
}

async fn list_sessions(State(s): State<RestState>, a: Authenticated, headers: HeaderMap) -> ApiResult {
    let sessions = s
        .app
        .identity
        .read(consistency(&headers)?, |m| {
            m.sessions
                .of_user(a.user)
                .into_iter()
                .map(|v| {
                    let mut view = views::session(m, v);
                    view["current"] = json!(v.id == a.session);
                    view
                })
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!({ "sessions": sessions })))
}

async fn revoke_session(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    // A session this process just started must count as the caller's own.
    let owner =
        s.app.identity.read(Some(s.app.identity.last_write()), |m| m.sessions.get(id).map(|v| v.user_id)).await?;
    // Someone else's session (or none) needs perfect21.sessions:revoke.
    a.caller.require_self_or_privileged(owner.unwrap_or_else(Uuid::nil))?;
    let position = s.app.identity.revoke_session(&a.ctx, id, "revoked").await?;
    Ok(Json(json!({"revoked": true, "consistency_token": position})))
}

async fn me(State(s): State<RestState>, a: Authenticated, headers: HeaderMap) -> ApiResult {
    user_json(&s, a.user, consistency(&headers)?).await
}

async fn get_user(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>, headers: HeaderMap) -> ApiResult {
    a.caller.require_self_or_privileged(id)?;
    user_json(&s, id, consistency(&headers)?).await
}

async fn user_json(s: &RestState, id: Uuid, min: Option<u64>) -> ApiResult {
    let user = s.app.identity.read(min, |m| m.users.get(id).map(views::user)).await?;
    let u = user.ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "not found", format!("user {id} not found")))?;
    Ok(Json(serde_json::to_value(u).unwrap_or(Value::Null)))
}

async fn user_permissions(
    State(s): State<RestState>,
    a: Admitted,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult {
    a.caller.require_self_or_privileged(id)?;
    let now = chrono::Utc::now().timestamp();
    let (permissions, roles) = s
        .app
        .identity
        .read(consistency(&headers)?, |m| {
            let perms: Vec<Value> = m
                .authz
                .effective_permissions(id, now)
                .into_iter()
                .map(|(source, p)| {
                    let p = views::permission(p);
                    json!({"id": p.id, "resource": p.resource, "action": p.action, "scope": p.scope, "source": source})
                })
                .collect();
            let roles: Vec<Value> =
                m.authz.user_roles(id, now).iter().map(|r| json!({"id": r.id, "priority": r.priority})).collect();
            (perms, roles)
        })
        .await?;
    Ok(Json(json!({"user_id": id, "permissions": permissions, "roles": roles})))
}

#[derive(Deserialize)]
struct CheckBody {
    user_id: Uuid,
    resource: String,
    action: String,
    #[serde(default)]
    scope: Option<String>,
}

async fn check_permission(
    State(s): State<RestState>,
    a: Admitted,
    headers: HeaderMap,
    Body(b): Body<CheckBody>,
) -> ApiResult {
    a.caller.require_self_or_privileged(b.user_id)?;
    let scope = b.scope.unwrap_or_else(|| "*".into());
    let d = s.app.identity.check_permission(b.user_id, &b.resource, &b.action, &scope, consistency(&headers)?).await?;
    Ok(Json(json!({"allowed": d.allowed, "reason": d.reason, "applied_policies": d.applied_policies})))
}

/// Counts and times every request by route template (never the raw path, so label values stay few).
async fn measure(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let endpoint = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().to_string();
    let correlation_id = req.headers().get("x-correlation-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let _active = crate::telemetry::Active::start("rest", "http");
    let span = tracing::info_span!("request", %method, %endpoint, %correlation_id);
    {
        let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
        crate::telemetry::set_parent(&span, header("traceparent"), header("tracestate"));
    }
    let response = next.run(req).instrument(span).await;
    crate::telemetry::request("rest", &method, &endpoint, response.status().as_str(), started);
    response
}

/// The log head, the read models' checkpoint and the relay's confirmed position, for /status and /metrics.
async fn positions(s: &RestState) -> Result<(u64, u64, Option<u64>), Problem> {
    let head = s.app.identity.store().head_position().await.map_err(DomainError::from)?;
    let models = s.app.identity.live().checkpoint();
    let relay = s.relay.as_ref().map(|r| r.confirmed.load(std::sync::atomic::Ordering::Relaxed));
    Ok((head, models, relay))
}

/// Read models further behind the log than this make the server not ready.
const READY_MAX_LAG: u64 = 1000;

/// Readiness: the store answers, the read models are caught up, the broker (if any) is connected.
async fn readyz(State(s): State<RestState>) -> Response {
    let mut problems = Vec::new();
    match positions(&s).await {
        Ok((head, models, _)) if head.saturating_sub(models) > READY_MAX_LAG => {
            problems.push(format!("read models are {} events behind the log (at most {READY_MAX_LAG})", head - models));
        }
        Ok(_) => {}
        Err(p) => problems.push(format!("event store unreachable: {}", p.detail)),
    }
    if let Some(error) = s.app.identity.live().last_error() {
        problems.push(format!("read models stopped: {error}"));
    }
    if let Some(relay) = &s.relay {
        if !relay.connected.load(std::sync::atomic::Ordering::Relaxed) {
            problems.push("the relay has no broker connection".into());
        }
    }
    if problems.is_empty() {
        Json(json!({"ready": true})).into_response()
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not ready", problems.join("; ")).into_response()
    }
}

/// Prometheus text format.
async fn metrics_text(State(s): State<RestState>) -> Result<Response, Problem> {
    let (head, models, relay) = positions(&s).await?;
    metrics::gauge!("perfect21_log_position").set(head as f64);
    metrics::gauge!("perfect21_projection_lag_events").set(head.saturating_sub(models) as f64);
    if let Some(confirmed) = relay {
        metrics::gauge!("perfect21_relay_lag_events").set(head.saturating_sub(confirmed) as f64);
    }
    let text = crate::telemetry::install().render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Positions for operators: the log head, the read models' checkpoint, the relay's confirmed position and lag.
async fn status(State(s): State<RestState>) -> ApiResult {
    let (head, models, confirmed) = positions(&s).await?;
    let relay = s.relay.as_ref().zip(confirmed).map(|(r, confirmed)| {
        json!({
            "confirmed": confirmed,
            "lag": head.saturating_sub(confirmed),
            "published": r.published.load(std::sync::atomic::Ordering::Relaxed),
            "reconnects": r.reconnects.load(std::sync::atomic::Ordering::Relaxed),
        })
    });
    Ok(Json(json!({
        "head_position": head,
        "read_models": {"checkpoint": models, "lag": head.saturating_sub(models)},
        "relay": relay,
        "chain": s.chain.as_ref().map(|c| c.status()),
    })))
}

async fn jwks(State(s): State<RestState>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(s.app.keys.jwks()))
}
