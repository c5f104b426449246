//! The REST front end (axum) under `/api/v1`, errors as `application/problem+json`.

use super::access;
use super::app::{App, Principal};
use super::hub::Hub;
use super::rest_admin;
use super::views;
use super::{runs, Service};
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use perfect21_domain::{DomainError, LoginRequest, Registration, RequestContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// Largest accepted request body.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the REST handlers share. The router and the extractors clone it for every
/// request, so it is one reference count: as a struct of a dozen, their increments and
/// decrements, contended between cores, were 7 % of a token validation's CPU.
#[derive(Clone)]
pub struct RestState(Arc<RestShared>);

pub struct RestShared {
    pub app: App,
    pub hub: Arc<Hub>,
    /// The relay's progress, when this process runs one.
    pub relay: Option<Arc<crate::relay::RelayStatus>>,
    /// How far the log's hash chain is verified, when this process watches it.
    pub chain: Option<Arc<super::chain::ChainWatch>>,
    /// The OpenAPI document of this router, serialized once ([`router`] sets it).
    pub openapi: axum::body::Bytes,
}

impl std::ops::Deref for RestState {
    type Target = RestShared;

    fn deref(&self) -> &RestShared {
        &self.0
    }
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

/// The body of every error answer (`application/problem+json`).
#[derive(Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody<'a> {
    /// `https://perfect21.dev/problems/<title with dashes>`.
    #[serde(rename = "type")]
    #[schema(format = "uri")]
    kind: String,
    /// What went wrong, in a few words: `invalid argument`, `unauthenticated`, ...
    title: &'a str,
    /// The HTTP status code.
    status: u16,
    /// What was wrong and what was expected.
    detail: &'a str,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("https://perfect21.dev/problems/{}", self.title.replace(' ', "-")),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let text = serde_json::to_string(&body).unwrap_or_default();
        (self.status, [(header::CONTENT_TYPE, "application/problem+json")], text).into_response()
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
            DomainError::Store(
                perfect21_events::StoreError::Unavailable { .. } | perfect21_events::StoreError::Fenced { .. },
            ) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
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
        let invalid =
            |e: axum::extract::rejection::JsonRejection| Problem::new(e.status(), "invalid body", e.body_text());
        let plain_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json"));
        if !plain_json {
            // Other media types (`…; charset=utf-8`, `application/*+json`, none): axum decides.
            return Json::<T>::from_request(req, state).await.map(|Json(v)| Body(v)).map_err(invalid);
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| Problem::new(e.status(), "invalid body", e.body_text()))?;
        // The plain parse first; only a body that fails it is parsed again by axum, whose
        // message names the path to the field that is wrong.
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(Body(v)),
            Err(_) => Json::<T>::from_bytes(&bytes).map(|Json(v)| Body(v)).map_err(invalid),
        }
    }
}

/// A path parameter, with a problem (not plain text) when it does not parse.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(Problem::new(e.status(), "invalid path", e.body_text())),
        }
    }
}

/// The query string, with a problem (not plain text) when it does not parse.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(Problem::new(e.status(), "invalid query", e.body_text())),
        }
    }
}

/// Deserializes an integer that JSON may spell `7` or `7.0` (JSON Schema's `integer`
/// admits both), refusing fractions and values out of range.
pub fn integral<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    let whole = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => Some(i),
        (None, Some(f)) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Some(f as i64),
        _ => None,
    };
    whole
        .and_then(|i| T::try_from(i).ok())
        .ok_or_else(|| D::Error::custom(format!("{n} is not an integer in range ({})", std::any::type_name::<T>())))
}

/// [`integral`], for an optional field (`null` or absent: `None`).
pub fn integral_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    #[derive(Deserialize)]
    struct Wrap<T: TryFrom<i64>>(#[serde(deserialize_with = "integral")] T);
    Ok(Option::<Wrap<T>>::deserialize(d)?.map(|w| w.0))
}

/// Header names read on every request, parsed once.
static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static(super::grpc::CONSISTENCY_HEADER);

/// Where a request comes from: the peer (or the client a trusted proxy names), the
/// user agent, correlation id and trace; validated before any of it reaches the log.
pub struct Origin(pub RequestContext);

impl FromRequestParts<RestState> for Origin {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, Problem> {
        let header = |n: &HeaderName| parts.headers.get(n).and_then(|v| v.to_str().ok());
        let peer = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let ctx = RequestContext {
            actor: None,
            client_ip: state.app.client_ip(peer, &parts.headers),
            user_agent: header(&header::USER_AGENT).map(String::from),
            correlation_id: header(&CORRELATION_ID)
                .and_then(|s| Uuid::parse_str(s).ok())
                .or_else(|| Some(Uuid::now_v7())),
            source_service: Some("rest".into()),
            // The request's own span, so that events point at it (falls back to the caller's header).
            traceparent: crate::telemetry::current_traceparent().or_else(|| header(&TRACEPARENT).map(String::from)),
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
        // Taken, not cloned: a handler has one extractor of the caller.
        let caller = parts.extensions.remove::<access::Caller>().ok_or_else(|| {
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

/// The `x-consistency-token` header of reads.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct Consistency {
    /// Answer only once the read models have reached this log position (a write's
    /// `consistency_token`).
    #[param(rename = "x-consistency-token", minimum = 0, nullable = false)]
    x_consistency_token: Option<u64>,
}

pub fn consistency(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    match headers.get(&CONSISTENCY_TOKEN) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| Problem::bad_request("x-consistency-token must be a log position (an integer)")),
    }
}

/// The REST routes; with `only`, just that service's. Each handler's `#[utoipa::path]`
/// states its path, parameters, body and answers: the router and the OpenAPI document
/// are built from the same list, so neither can name a route the other lacks.
pub fn router(mut shared: RestShared, only: Option<Service>) -> Router<()> {
    let (routes, document) = routes(only).split_for_parts();
    shared.openapi = super::openapi::finish(document).to_string().into();
    let state = RestState(Arc::new(shared));
    routes
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not found", "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .layer(axum::middleware::from_fn(measure))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .with_state(state)
}

/// The OpenAPI document of the routes `only` serves.
pub fn document(only: Option<Service>) -> Value {
    super::openapi::finish(routes(only).split_for_parts().1)
}

fn routes(only: Option<Service>) -> OpenApiRouter<RestState> {
    let mut api = OpenApiRouter::new().routes(routes!(openapi_json));
    if runs(only, Service::Auth) {
        api = api
            .routes(routes!(register))
            .routes(routes!(verify_email))
            .routes(routes!(login))
            .routes(routes!(logout))
            .routes(routes!(validate))
            .routes(routes!(revoke_token))
            .routes(routes!(mfa_enroll))
            .routes(routes!(mfa_confirm))
            .routes(routes!(mfa_disable));
    }
    if runs(only, Service::Session) {
        api = api
            .routes(routes!(refresh))
            .routes(routes!(list_sessions))
            .routes(routes!(revoke_session))
            .routes(routes!(super::hub::websocket));
    }
    if runs(only, Service::User) {
        api = api
            .routes(routes!(me))
            .routes(routes!(get_user))
            .routes(routes!(rest_admin::audit))
            .routes(routes!(rest_admin::export_user));
    }
    if runs(only, Service::Permission) {
        api = api
            .routes(routes!(user_permissions))
            .routes(routes!(check_permission))
            .routes(routes!(rest_admin::create_role))
            .routes(routes!(rest_admin::grant_to_role))
            .routes(routes!(rest_admin::assign_role))
            .routes(routes!(rest_admin::revoke_role));
    }
    if runs(only, Service::Auth) {
        api = api
            .routes(routes!(rest_admin::list_service_accounts, rest_admin::create_service_account))
            .routes(routes!(rest_admin::rotate_service_account_secret))
            .routes(routes!(rest_admin::disable_service_account))
            .routes(routes!(rest_admin::delete_service_account))
            .routes(routes!(rest_admin::list_clients, rest_admin::register_client))
            .routes(routes!(rest_admin::update_client, rest_admin::delete_client))
            .routes(routes!(rest_admin::rotate_client_secret));
    }
    // The handlers' paths are whole (`/api/v1/…`), not nested under a prefix: a nested
    // route rewrites every request's URI and clones its service once more.
    let mut root = OpenApiRouter::with_openapi(super::openapi::base())
        .merge(api)
        .routes(routes!(healthz))
        .routes(routes!(status))
        .routes(routes!(readyz));
    if runs(only, Service::Auth) {
        root = root
            .routes(routes!(jwks))
            .routes(routes!(super::oidc::discovery))
            .routes(routes!(super::oauth2::token))
            .routes(routes!(super::oidc::authorize, super::oidc::authorize_submit))
            .routes(routes!(super::oidc::userinfo))
            .routes(routes!(super::oidc::introspect))
            .routes(routes!(super::oidc::revoke))
            .routes(routes!(super::oidc::logout, super::oidc::logout_submit))
            .routes(routes!(super::pages::verify_email_page, super::pages::verify_email_submit))
            .routes(routes!(super::pages::stylesheet));
    }
    root.routes(routes!(metrics_text))
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document of the routes this process serves", content_type = "application/json", body = Object)))]
async fn openapi_json(State(s): State<RestState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], s.openapi.clone()).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain", example = "ok")))]
/// Reads and drops any body a probe sends: left unread, it would cost an HTTP/1.1
/// client its connection and an HTTP/2 client a reset stream.
async fn healthz(_body: axum::body::Bytes) -> &'static str {
    "ok"
}

#[derive(Deserialize, ToSchema)]
struct RegisterBody {
    /// Unused by any other user; compared without case.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// Unused by any other user; compared without case.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{3,32}$", min_length = 3, max_length = 32)]
    username: String,
    #[schema(min_length = 8, max_length = 256)]
    password: String,
    #[schema(max_length = 100, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    first_name: Option<String>,
    #[schema(max_length = 100, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    last_name: Option<String>,
    #[schema(max_length = 32, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    phone_number: Option<String>,
    /// A BCP 47 tag such as `en-GB`.
    #[schema(max_length = 35, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    locale: Option<String>,
}

/// `201` answer of a registration.
#[derive(Serialize, ToSchema)]
struct Registered {
    user_id: Uuid,
    /// Pass as `x-consistency-token` to read your own write.
    consistency_token: u64,
    /// Only in `--dev` mode: the token the welcome email carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    verification_token: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth",
    summary = "Register a user (email and username must be unused)",
    request_body = RegisterBody,
    responses((status = 201, description = "Registered; a verification email is on its way", body = Registered)))]
async fn register(
    State(s): State<RestState>,
    Origin(ctx): Origin,
    Body(b): Body<RegisterBody>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
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
    let body = Registered {
        user_id: reg.user_id,
        consistency_token: reg.position,
        verification_token: s.app.dev_mode.then_some(reg.verification_token),
    };
    Ok((StatusCode::CREATED, Json(body)))
}

#[derive(Deserialize, ToSchema)]
struct TokenBody {
    token: String,
}

#[utoipa::path(post, path = "/api/v1/auth/verify-email", tag = "auth",
    summary = "Verify an email address with the single-use token",
    request_body = TokenBody,
    responses((status = 200, description = "The address is verified", content_type = "application/json", body = Object)))]
async fn verify_email(State(s): State<RestState>, Origin(ctx): Origin, Body(b): Body<TokenBody>) -> ApiResult {
    let position = s.app.identity.verify_email(&ctx, &b.token).await?;
    Ok(Json(json!({"verified": true, "consistency_token": position})))
}

#[derive(Deserialize, ToSchema)]
struct LoginBody {
    /// Email address or username.
    #[schema(min_length = 1)]
    identifier: String,
    #[schema(min_length = 1)]
    password: String,
    /// A TOTP code or a recovery code, when the first answer said `mfa required`.
    mfa_code: Option<String>,
    /// The client's own name for the device, kept with the session.
    #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    device_id: Option<String>,
}

/// The tokens of a login or a refresh.
#[derive(Serialize, ToSchema)]
struct Grant {
    user_id: Uuid,
    session_id: Uuid,
    /// A JWT (EdDSA), sent as `Authorization: Bearer`.
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Unix seconds.
    expires_at: i64,
    /// Single use: `/auth/refresh` answers a new one.
    refresh_token: String,
    /// Unix seconds.
    refresh_expires_at: i64,
    risk_score: f32,
    consistency_token: u64,
}

fn grant_json(app: &App, grant: &perfect21_domain::LoginGrant) -> ApiResult<Json<Grant>> {
    let access_token = app
        .access_token(grant)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error", e.to_string()))?;
    Ok(Json(Grant {
        user_id: grant.user_id,
        session_id: grant.session_id,
        access_token,
        token_type: "Bearer",
        expires_at: grant.access_expires_at,
        refresh_token: grant.refresh_token.clone(),
        refresh_expires_at: grant.refresh_expires_at,
        risk_score: grant.risk_score,
        consistency_token: grant.position,
    }))
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    summary = "Log in (send mfa_code when the answer says mfa required)",
    request_body = LoginBody,
    responses((status = 200, description = "Signed in", body = Grant)))]
async fn login(State(s): State<RestState>, Origin(ctx): Origin, Body(b): Body<LoginBody>) -> ApiResult<Json<Grant>> {
    let req =
        LoginRequest { identifier: b.identifier, password: b.password, mfa_code: b.mfa_code, device_id: b.device_id };
    let grant = s.app.identity.login(&ctx, req).await?;
    grant_json(&s.app, &grant)
}

#[derive(Deserialize, ToSchema)]
struct RefreshBody {
    #[schema(min_length = 1)]
    refresh_token: String,
}

#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "sessions",
    summary = "Rotate a refresh token",
    request_body = RefreshBody,
    responses((status = 200, description = "New tokens; the refresh token sent is spent", body = Grant)))]
async fn refresh(
    State(s): State<RestState>,
    Origin(ctx): Origin,
    Body(b): Body<RefreshBody>,
) -> ApiResult<Json<Grant>> {
    let grant = s.app.identity.refresh(&ctx, &b.refresh_token).await?;
    grant_json(&s.app, &grant)
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    summary = "End the caller's session",
    responses((status = 200, description = "The session is revoked", content_type = "application/json", body = Object)))]
async fn logout(State(s): State<RestState>, a: Authenticated) -> ApiResult {
    let position = s.app.identity.logout(&a.ctx, a.session).await?;
    Ok(Json(json!({"logged_out": true, "consistency_token": position})))
}

/// The answer of a validation.
#[derive(Serialize, ToSchema)]
struct Validation {
    valid: bool,
    user_id: Option<Uuid>,
    permissions: Vec<String>,
    /// Unix seconds (0 when not valid).
    expires_at: i64,
    /// Why the token is not valid (empty when it is).
    error_message: String,
    warnings: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/auth/validate", tag = "auth",
    summary = "Validate an access token (signature, expiry, revocation, user status)",
    request_body = TokenBody,
    responses((status = 200, description = "The verdict (an invalid token is a 200 with valid: false)", body = Validation)))]
async fn validate(State(s): State<RestState>, a: Admitted, Body(b): Body<TokenBody>) -> ApiResult<Json<Validation>> {
    let c = s.app.validate(&b.token, a.ctx.client_ip.as_deref()).await;
    // Without perfect21.tokens:validate a caller may validate its own tokens only.
    if !a.caller.privileged && c.user_id != Some(a.caller.principal.id()) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "permission denied",
            format!("{} is required to validate tokens of others", access::TOKENS_VALIDATE),
        ));
    }
    Ok(Json(Validation {
        valid: c.valid,
        user_id: c.user_id,
        permissions: c.permissions,
        expires_at: c.expires_at,
        error_message: c.error.unwrap_or_default(),
        warnings: c.warnings,
    }))
}

#[utoipa::path(post, path = "/api/v1/auth/revoke", tag = "auth",
    summary = "Revoke the caller's access token",
    responses((status = 200, description = "The token is revoked", content_type = "application/json", body = Object)))]
async fn revoke_token(State(s): State<RestState>, a: Authenticated) -> ApiResult {
    let position = s.app.identity.revoke_token(&a.ctx, a.session, &a.jti, a.exp).await?;
    Ok(Json(json!({"revoked": true, "consistency_token": position})))
}

#[utoipa::path(post, path = "/api/v1/auth/mfa/enroll", tag = "auth",
    summary = "Start TOTP enrollment (needs the current password; the enrollment expires after 10 minutes)",
    request_body = PasswordBody,
    responses((status = 200, description = "The secret, its otpauth URL and the enrollment token", content_type = "application/json", body = Object)))]
async fn mfa_enroll(State(s): State<RestState>, a: Authenticated, Body(b): Body<PasswordBody>) -> ApiResult {
    let e = s.app.identity.begin_mfa(&a.ctx, a.user, &b.password).await?;
    Ok(Json(json!({
        "secret": e.secret,
        "otpauth_url": e.otpauth_url,
        "enrollment_token": e.enrollment_token,
        "expires_at": e.expires_at,
    })))
}

#[derive(Deserialize, ToSchema)]
struct MfaConfirmBody {
    #[schema(min_length = 1)]
    enrollment_token: String,
    /// The first code the authenticator shows.
    #[schema(min_length = 1)]
    code: String,
    #[schema(min_length = 1)]
    password: String,
}

#[utoipa::path(post, path = "/api/v1/auth/mfa/confirm", tag = "auth",
    summary = "Confirm TOTP enrollment with a first code; returns recovery codes",
    request_body = MfaConfirmBody,
    responses((status = 200, description = "TOTP is on; the recovery codes are shown once", content_type = "application/json", body = Object)))]
async fn mfa_confirm(State(s): State<RestState>, a: Authenticated, Body(b): Body<MfaConfirmBody>) -> ApiResult {
    let (codes, position) =
        s.app.identity.confirm_mfa(&a.ctx, a.user, &b.enrollment_token, &b.code, &b.password).await?;
    Ok(Json(json!({"mfa_enabled": true, "recovery_codes": codes, "consistency_token": position})))
}

#[derive(Deserialize, ToSchema)]
struct PasswordBody {
    /// The caller's current password.
    #[schema(min_length = 1)]
    password: String,
}

#[utoipa::path(post, path = "/api/v1/auth/mfa/disable", tag = "auth",
    summary = "Turn TOTP off (needs the password)",
    request_body = PasswordBody,
    responses((status = 200, description = "TOTP is off", content_type = "application/json", body = Object)))]
async fn mfa_disable(State(s): State<RestState>, a: Authenticated, Body(b): Body<PasswordBody>) -> ApiResult {
    let position = s.app.identity.disable_mfa(&a.ctx, a.user, &b.password).await?;
    Ok(Json(json!({"mfa_enabled": false, "consistency_token": position})))
}

#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions",
    summary = "The caller's active sessions",
    params(Consistency),
    responses((status = 200, description = "Each session, `current` marking the caller's", content_type = "application/json", body = Object)))]
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

#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "sessions",
    summary = "Revoke a session (another user's needs perfect21.sessions:revoke)",
    params(("id" = Uuid, Path, description = "The session")),
    responses((status = 200, description = "The session is revoked", content_type = "application/json", body = Object)))]
async fn revoke_session(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>) -> ApiResult {
    // A session this process just started must count as the caller's own.
    let owner =
        s.app.identity.read(Some(s.app.identity.last_write()), |m| m.sessions.get(id).map(|v| v.user_id)).await?;
    // Someone else's session (or none) needs perfect21.sessions:revoke.
    a.caller.require_self_or_privileged(owner.unwrap_or_else(Uuid::nil))?;
    let position = s.app.identity.revoke_session(&a.ctx, id, "revoked").await?;
    Ok(Json(json!({"revoked": true, "consistency_token": position})))
}

#[utoipa::path(get, path = "/api/v1/users/me", tag = "users",
    summary = "The caller",
    params(Consistency),
    responses((status = 200, description = "The caller's record", content_type = "application/json", body = Object)))]
async fn me(State(s): State<RestState>, a: Authenticated, headers: HeaderMap) -> ApiResult {
    user_json(&s, a.user, consistency(&headers)?).await
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users",
    summary = "A user (another user's needs perfect21.users:read)",
    params(("id" = Uuid, Path, description = "The user"), Consistency),
    responses((status = 200, description = "The user's record", content_type = "application/json", body = Object)))]
async fn get_user(State(s): State<RestState>, a: Admitted, Path(id): Path<Uuid>, headers: HeaderMap) -> ApiResult {
    a.caller.require_self_or_privileged(id)?;
    user_json(&s, id, consistency(&headers)?).await
}

async fn user_json(s: &RestState, id: Uuid, min: Option<u64>) -> ApiResult {
    let user = s.app.identity.read(min, |m| m.users.get(id).map(views::user)).await?;
    let u = user.ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "not found", format!("user {id} not found")))?;
    Ok(Json(serde_json::to_value(u).unwrap_or(Value::Null)))
}

#[utoipa::path(get, path = "/api/v1/permissions/users/{id}", tag = "permissions",
    summary = "A user's effective permissions and roles",
    params(("id" = Uuid, Path, description = "The user"), Consistency),
    responses((status = 200, description = "Permissions with their source, and roles", content_type = "application/json", body = Object)))]
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

#[derive(Deserialize, ToSchema)]
struct CheckBody {
    user_id: Uuid,
    #[schema(min_length = 1)]
    resource: String,
    #[schema(min_length = 1)]
    action: String,
    /// `*` when absent.
    #[serde(default)]
    #[schema(min_length = 1)]
    scope: Option<String>,
}

/// A permission decision.
#[derive(Serialize, ToSchema)]
struct Decision {
    allowed: bool,
    reason: String,
    applied_policies: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/permissions/check", tag = "permissions",
    summary = "Check a permission: allowed, reason, applied policies",
    params(Consistency),
    request_body = CheckBody,
    responses((status = 200, description = "The decision", body = Decision)))]
async fn check_permission(
    State(s): State<RestState>,
    a: Admitted,
    headers: HeaderMap,
    Body(b): Body<CheckBody>,
) -> ApiResult<Json<Decision>> {
    a.caller.require_self_or_privileged(b.user_id)?;
    let scope = b.scope.unwrap_or_else(|| "*".into());
    let d = s.app.identity.check_permission(b.user_id, &b.resource, &b.action, &scope, consistency(&headers)?).await?;
    Ok(Json(Decision { allowed: d.allowed, reason: d.reason, applied_policies: d.applied_policies }))
}

/// Counts and times every request by route template (never the raw path, so label values stay few).
async fn measure(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let endpoint = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().to_string();
    let correlation_id = req.headers().get(&CORRELATION_ID).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let _active = crate::telemetry::Active::start("rest", "http");
    let span = tracing::info_span!("request", %method, %endpoint, %correlation_id);
    {
        let header = |n: &HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok());
        crate::telemetry::set_parent(&span, header(&TRACEPARENT), header(&TRACESTATE));
    }
    let response = next.run(req).instrument(span).await;
    crate::telemetry::request("rest", &method, &endpoint, response.status().as_str(), started);
    response
}

/// The log head, the read models' checkpoint and the relay's confirmed position, for /status and /metrics.
async fn positions(s: &RestState) -> Result<(u64, u64, Option<u64>), Problem> {
    let head = s.app.identity.store().head_position().await.map_err(DomainError::from)?;
    let models = s.app.identity.live().checkpoint();
    // A relay on standby (another process publishes) has no position of its own to report.
    let relay = s
        .relay
        .as_ref()
        .filter(|r| !r.standby.load(std::sync::atomic::Ordering::Relaxed))
        .map(|r| r.confirmed.load(std::sync::atomic::Ordering::Relaxed));
    Ok((head, models, relay))
}

/// Read models further behind the log than this make the server not ready.
const READY_MAX_LAG: u64 = 1000;

/// Readiness: the store answers, the read models are caught up, the broker (if any) is connected.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    summary = "Readiness: store reachable, read models caught up, broker connected",
    responses(
        (status = 200, description = "Ready", content_type = "application/json", body = Object, example = json!({"ready": true})),
        (status = 503, description = "Not ready, and why", content_type = "application/problem+json", body = ProblemBody)))]
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
        let standby = relay.standby.load(std::sync::atomic::Ordering::Relaxed);
        if !standby && !relay.connected.load(std::sync::atomic::Ordering::Relaxed) {
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
#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "The Prometheus text exposition format", body = String, content_type = "text/plain")))]
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
#[utoipa::path(get, path = "/status", tag = "operations",
    summary = "Log head, read-model checkpoint and lag, relay confirmed position and lag, verified chain, who makes this replica's appends",
    responses((status = 200, description = "Positions", content_type = "application/json", body = Object)))]
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
        "appends": s.app.identity.store().appends(),
    })))
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "oidc",
    summary = "Public keys of access and ID tokens (JWKS)",
    responses((status = 200, description = "A JSON Web Key Set", content_type = "application/json", body = Object)))]
async fn jwks(State(s): State<RestState>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(s.app.keys.jwks()))
}
