//! The OpenID Connect provider: discovery, the authorization endpoint with its
//! login pages, the authorization-code and refresh grants of the token endpoint,
//! userinfo, introspection (RFC 7662), revocation (RFC 7009) and RP-initiated logout.
//!
//! Who may call what (see `access.rs`): the browser endpoints are public and
//! authenticate the user themselves (password, second factor, or the signed
//! single sign-on cookie); the back-channel endpoints authenticate the client
//! (secret, or PKCE for public clients); userinfo needs a user's access token.
//!
//! Every step goes through the identity domain, so logins, lockout, risk, MFA and
//! the audit trail apply as for any other login, and events caused through a
//! client carry `source_service = "oidc-client:<client_id>"` in their metadata.
//!
//! Browser state lives in two cookies, both `HttpOnly` and scoped to `/oauth2`:
//! `p21_sso` (`SameSite=Lax`) names the browser's identity session and is signed
//! with the server secret; `p21_csrf` (`SameSite=Strict`) is the double-submit
//! token every form must echo.

use super::access::TOKENS_VALIDATE;
use super::app::App;
use super::oauth2::OAuthErrorBody;
use super::oauth2::{self, OAuthError};
use super::pages;
use super::rest::{Origin, RestState};
use super::tokens::Claims;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use perfect21_domain::clients::{valid_pkce_value, CodeRequest};
use perfect21_domain::secrets::{constant_time_eq, random_token};
use perfect21_domain::{DomainError, LoginGrant, LoginRequest, LoginStep, RequestContext};
use perfect21_projections::clients::ClientView;
use perfect21_projections::users::UserView;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use uuid::Uuid;

/// The single sign-on cookie.
pub const SSO_COOKIE: &str = "p21_sso";
/// The CSRF double-submit cookie.
pub const CSRF_COOKIE: &str = "p21_csrf";
/// Lifetime of ID tokens (seconds).
const ID_TOKEN_TTL: i64 = 15 * 60;

/// The parameters of an authorization request (OpenID Connect Core §3.1.2.1).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuthorizeParams {
    /// `code`.
    #[serde(default)]
    pub response_type: String,
    /// A registered client's id.
    #[serde(default)]
    pub client_id: String,
    /// One of the client's registered redirect URIs, exactly.
    #[serde(default)]
    pub redirect_uri: String,
    /// Space-separated, holding `openid`.
    #[serde(default)]
    pub scope: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<String>,
    pub login_hint: Option<String>,
}

/// An authorization request that passed validation.
struct Authorization {
    client: ClientView,
    params: AuthorizeParams,
    scope: String,
    max_age: Option<i64>,
    prompt_none: bool,
    prompt_login: bool,
}

/// Why an authorization request is refused: on an error page when the client or
/// redirect URI cannot be trusted (never an open redirect), otherwise back to the client.
enum Refusal {
    Page(StatusCode, String),
    Redirect { redirect_uri: String, state: Option<String>, error: &'static str, description: String },
}

/// The browser's signed-in identity session, from the SSO cookie.
#[derive(Debug, Clone)]
struct Sso {
    session: Uuid,
    user: Uuid,
    auth_time: i64,
    amr: Vec<String>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(app: &App, name: &str, value: &str, same_site: &str, max_age: Option<i64>) -> HeaderValue {
    let secure = if app.issuer.starts_with("https://") { "; Secure" } else { "" };
    let age = max_age.map(|a| format!("; Max-Age={a}")).unwrap_or_default();
    let v = format!("{name}={value}; Path=/oauth2; HttpOnly; SameSite={same_site}{secure}{age}");
    HeaderValue::from_str(&v).expect("cookie values are URL-safe")
}

impl Sso {
    fn encode(&self, app: &App) -> String {
        let payload =
            format!("{}.{}.{}.{}", self.session.simple(), self.user.simple(), self.auth_time, self.amr.join("+"));
        let mac = app.identity.secrets().derive("sso-cookie", &[payload.as_bytes()]);
        format!("{payload}.{mac}")
    }

    fn decode(app: &App, value: &str) -> Option<Sso> {
        let (payload, mac) = value.rsplit_once('.')?;
        if !constant_time_eq(mac, &app.identity.secrets().derive("sso-cookie", &[payload.as_bytes()])) {
            return None;
        }
        let mut parts = payload.split('.');
        let session = Uuid::parse_str(parts.next()?).ok()?;
        let user = Uuid::parse_str(parts.next()?).ok()?;
        let auth_time = parts.next()?.parse().ok()?;
        let amr = parts.next()?.split('+').filter(|m| !m.is_empty()).map(String::from).collect();
        Some(Sso { session, user, auth_time, amr })
    }
}

/// The SSO cookie's session, if it is still active and its user may sign in.
async fn current_sso(app: &App, headers: &HeaderMap) -> Option<Sso> {
    let sso = Sso::decode(app, cookie(headers, SSO_COOKIE)?)?;
    let alive = |m: &perfect21_projections::ReadModels| {
        let active = m.sessions.get(sso.session).is_some_and(|s| s.is_active(now()) && s.user_id == sso.user);
        let user_ok = m.users.get(sso.user).is_some_and(|u| {
            use perfect21_events::catalog::UserStatus;
            matches!(u.status, UserStatus::Active | UserStatus::PendingVerification)
        });
        active && user_ok
    };
    let identity = &app.identity;
    if identity.read(Some(identity.last_write()), alive).await.ok()? {
        return Some(sso);
    }
    // Signed in through another replica a moment ago: read up to the log's head.
    let head = identity.store().head_position().await.ok()?;
    identity.read(Some(head), alive).await.ok()?.then_some(sso)
}

/// The CSRF token of this browser, and the cookie to set when it had none.
fn csrf(app: &App, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match cookie(headers, CSRF_COOKIE).filter(|v| v.len() == 43) {
        Some(v) => (v.to_string(), None),
        None => {
            let token = random_token();
            let set = set_cookie(app, CSRF_COOKIE, &token, "Strict", None);
            (token, Some(set))
        }
    }
}

fn csrf_ok(headers: &HeaderMap, presented: &str) -> bool {
    cookie(headers, CSRF_COOKIE).is_some_and(|c| !presented.is_empty() && constant_time_eq(c, presented))
}

fn redirect_to(uri: &str, params: &[(&str, &str)]) -> Response {
    let mut url = match url::Url::parse(uri) {
        Ok(u) => u,
        Err(_) => {
            return pages::message(StatusCode::BAD_REQUEST, "error", "Invalid redirect", "The redirect URI is invalid.")
        }
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string()), (header::CACHE_CONTROL, "no-store".to_string())])
        .into_response()
}

impl Refusal {
    fn into_response(self, app: &App) -> Response {
        match self {
            Refusal::Page(status, message) => {
                pages::message(status, "error", "This sign-in link cannot be used", &message)
            }
            Refusal::Redirect { redirect_uri, state, error, description } => {
                let mut params = vec![("error", error), ("error_description", description.as_str())];
                if let Some(state) = &state {
                    params.push(("state", state));
                }
                params.push(("iss", &app.issuer));
                redirect_to(&redirect_uri, &params)
            }
        }
    }
}

/// Checks an authorization request. The client and redirect URI come first: until
/// both are known good, errors go to an error page, never to the redirect URI.
async fn validate(app: &App, params: AuthorizeParams) -> Result<Authorization, Refusal> {
    let page = |m: String| Refusal::Page(StatusCode::BAD_REQUEST, m);
    if params.client_id.is_empty() {
        return Err(page("The request names no client (client_id is missing).".into()));
    }
    let client = match Uuid::parse_str(&params.client_id) {
        Ok(id) => {
            app.identity.client(id).await.map_err(|e| Refusal::Page(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        }
        Err(_) => None,
    };
    let Some(client) = client else {
        return Err(page(format!(
            "No client '{}' is registered here.",
            params.client_id.chars().take(64).collect::<String>()
        )));
    };
    if params.redirect_uri.is_empty() {
        return Err(page("The request has no redirect_uri.".into()));
    }
    if !client.settings.redirect_uris.contains(&params.redirect_uri) {
        return Err(page(format!(
            "The redirect URI is not registered for {}: the application must use one of its registered redirect URIs exactly.",
            client.name
        )));
    }
    let refuse = |error: &'static str, description: String| Refusal::Redirect {
        redirect_uri: params.redirect_uri.clone(),
        state: params.state.clone(),
        error,
        description,
    };
    if params.response_type != "code" {
        return Err(refuse("unsupported_response_type", "response_type must be 'code'".into()));
    }
    if !client.allows_grant("authorization_code") {
        return Err(refuse("unauthorized_client", "this client may not use the authorization code flow".into()));
    }
    let mut scopes: Vec<&str> = Vec::new();
    for scope in params.scope.split(' ').filter(|s| !s.is_empty()) {
        if !client.settings.scopes.iter().any(|s| s == scope) {
            return Err(refuse("invalid_scope", format!("scope '{scope}' is not allowed for this client")));
        }
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if params.state.as_ref().is_some_and(|s| s.len() > 1024) || params.nonce.as_ref().is_some_and(|n| n.len() > 512) {
        return Err(refuse("invalid_request", "state must be at most 1024 bytes and nonce at most 512".into()));
    }
    match (&params.code_challenge, params.code_challenge_method.as_deref()) {
        (None, _) if !client.confidential => {
            return Err(refuse("invalid_request", "public clients must send a PKCE code_challenge (S256)".into()))
        }
        (None, Some(_)) => {
            return Err(refuse("invalid_request", "code_challenge_method without code_challenge".into()))
        }
        (Some(c), Some("S256")) if valid_pkce_value(c) => {}
        (Some(_), Some("S256")) => {
            return Err(refuse(
                "invalid_request",
                "code_challenge must be 43 to 128 characters of [A-Za-z0-9-._~]".into(),
            ))
        }
        (Some(_), _) => {
            return Err(refuse("invalid_request", "code_challenge_method must be S256 (plain is not supported)".into()))
        }
        (None, None) => {}
    }
    let prompts: Vec<&str> = params.prompt.as_deref().unwrap_or("").split(' ').filter(|p| !p.is_empty()).collect();
    for p in &prompts {
        if !matches!(*p, "none" | "login" | "consent" | "select_account") {
            return Err(refuse("invalid_request", format!("prompt '{p}' is not supported (none, login)")));
        }
    }
    let prompt_none = prompts.contains(&"none");
    if prompt_none && prompts.len() > 1 {
        return Err(refuse("invalid_request", "prompt=none cannot be combined with other values".into()));
    }
    let max_age = match params.max_age.as_deref() {
        None | Some("") => None,
        Some(v) => Some(
            v.parse::<i64>()
                .ok()
                .filter(|a| *a >= 0)
                .ok_or_else(|| refuse("invalid_request", "max_age must be a non-negative number of seconds".into()))?,
        ),
    };
    let scope = scopes.join(" ");
    let prompt_login = prompts.contains(&"login");
    Ok(Authorization { client, params, scope, max_age, prompt_none, prompt_login })
}

/// The context of a browser step: the events it causes name the client.
fn client_context(ctx: RequestContext, client: Uuid) -> RequestContext {
    RequestContext { source_service: Some(format!("oidc-client:{client}")), ..ctx }
}

/// Records a code for `sso` and sends the browser back to the client with it.
async fn issue_code(app: &App, ctx: &RequestContext, auth: &Authorization, sso: &Sso) -> Response {
    let request = CodeRequest {
        client_id: auth.client.id,
        user_id: sso.user,
        browser_session_id: sso.session,
        redirect_uri: auth.params.redirect_uri.clone(),
        scope: auth.scope.clone(),
        nonce: auth.params.nonce.clone(),
        code_challenge: auth.params.code_challenge.clone(),
        auth_time: sso.auth_time,
        amr: sso.amr.clone(),
    };
    match app.identity.issue_authorization_code(ctx, request).await {
        Ok(code) => {
            let mut params = vec![("code", code.as_str())];
            if let Some(state) = &auth.params.state {
                params.push(("state", state));
            }
            params.push(("iss", &app.issuer));
            redirect_to(&auth.params.redirect_uri, &params)
        }
        Err(e) => pages::message(StatusCode::SERVICE_UNAVAILABLE, "error", "Please try again", &e.to_string()),
    }
}

fn encode_request(params: &AuthorizeParams) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(params).expect("plain strings"))
}

fn decode_request(encoded: &str) -> Option<AuthorizeParams> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn with_cookies(mut response: Response, cookies: impl IntoIterator<Item = HeaderValue>) -> Response {
    for c in cookies {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

fn login_page(status: StatusCode, auth: &Authorization, csrf: &str, identifier: &str, error: &str) -> Response {
    let ctx = minijinja::context! {
        client_name => auth.client.name,
        request => encode_request(&auth.params),
        csrf, identifier, error,
    };
    pages::page(status, "login.html", ctx)
}

fn mfa_page(status: StatusCode, auth: &Authorization, csrf: &str, ticket: &str, error: &str) -> Response {
    let ctx = minijinja::context! {
        client_name => auth.client.name,
        request => encode_request(&auth.params),
        csrf, ticket, error,
    };
    pages::page(status, "mfa.html", ctx)
}

/// Refuses a repeated parameter (RFC 6749 §3.1): which one was meant is unknowable.
fn no_repeats(pairs: Vec<(String, String)>) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    match pairs.into_iter().find(|(k, _)| !seen.insert(k.clone())) {
        Some((k, _)) => Err(format!("parameter '{k}' is repeated")),
        None => Ok(()),
    }
}

/// `GET /oauth2/authorize`: signs the browser in (or reuses its session) and sends it
/// back to the client with a code.
#[utoipa::path(get, path = "/oauth2/authorize", tag = "oidc",
    summary = "OpenID Connect authorization endpoint: the login page, or a redirect to the client",
    params(AuthorizeParams),
    responses(
        (status = 200, description = "The sign-in page", content_type = "text/html", body = String),
        (status = 303, description = "Back to the client's redirect URI with a code (or an error)"),
        (status = 400, description = "A malformed request, an unknown client or an unregistered redirect URI: a page, never a redirect (RFC 6749 §4.1.2.1)", content_type = "text/html", body = String)))]
pub async fn authorize(
    State(s): State<RestState>,
    Origin(ctx): Origin,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let app = &s.app;
    let query = query.as_deref().unwrap_or("");
    let parsed = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .map_err(|e| e.to_string())
        .and_then(no_repeats)
        .and_then(|_| serde_urlencoded::from_str::<AuthorizeParams>(query).map_err(|e| e.to_string()));
    let params = match parsed {
        Ok(p) => p,
        Err(e) => {
            return Refusal::Page(StatusCode::BAD_REQUEST, format!("The request is malformed: {e}.")).into_response(app)
        }
    };
    let auth = match validate(app, params).await {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(app),
    };
    let ctx = client_context(ctx, auth.client.id);
    if let Some(sso) = current_sso(app, &headers).await {
        // max_age=0 asks for a sign-in now, as prompt=login does.
        let fresh_enough = auth.max_age.is_none_or(|age| now() - sso.auth_time < age);
        if fresh_enough && !auth.prompt_login {
            return issue_code(app, &ctx, &auth, &sso).await;
        }
    }
    if auth.prompt_none {
        let description = "the user is not signed in (or must sign in again) and prompt=none forbids asking";
        return Refusal::Redirect {
            redirect_uri: auth.params.redirect_uri.clone(),
            state: auth.params.state.clone(),
            error: "login_required",
            description: description.into(),
        }
        .into_response(app);
    }
    let (token, set) = csrf(app, &headers);
    let hint = auth.params.login_hint.clone().unwrap_or_default();
    with_cookies(login_page(StatusCode::OK, &auth, &token, &hint, ""), set)
}

/// The sign-in forms of `POST /oauth2/authorize`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
struct LoginForm {
    #[serde(default)]
    request: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    step: String,
    #[serde(default)]
    identifier: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    ticket: String,
    #[serde(default)]
    code: String,
}

/// A browser form, parsed, whose CSRF token matches this browser's cookie; or the page saying why not.
fn checked_form<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    csrf: impl Fn(&T) -> &str,
) -> Result<T, Box<Response>> {
    let unreadable =
        |_| pages::message(StatusCode::BAD_REQUEST, "error", "Invalid form", "The form could not be read.");
    let form: T = serde_urlencoded::from_bytes(body).map_err(|e| Box::new(unreadable(e)))?;
    if !csrf_ok(headers, csrf(&form)) {
        return Err(Box::new(expired_form()));
    }
    Ok(form)
}

fn expired_form() -> Response {
    pages::message(
        StatusCode::FORBIDDEN,
        "error",
        "This form has expired",
        "The sign-in form was not sent by this site or has expired. Go back to the application and start again.",
    )
}

/// `POST /oauth2/authorize`: the sign-in form (`step=password`) and the second-factor
/// form (`step=mfa`).
#[utoipa::path(post, path = "/oauth2/authorize", tag = "oidc",
    summary = "Login form target: password step or second-factor step",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The second-factor page", content_type = "text/html", body = String),
        (status = 303, description = "Signed in: back to the client with a code"),
        (status = 400, description = "The form could not be read", content_type = "text/html", body = String),
        (status = 401, description = "Wrong credentials: the page again", content_type = "text/html", body = String),
        (status = 403, description = "The form is not this site's or has expired (CSRF)", content_type = "text/html", body = String)))]
pub async fn authorize_submit(
    State(s): State<RestState>,
    Origin(ctx): Origin,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let app = &s.app;
    let form: LoginForm = match checked_form(&headers, &body, |f: &LoginForm| &f.csrf) {
        Ok(f) => f,
        Err(page) => return *page,
    };
    let Some(params) = decode_request(&form.request) else {
        return expired_form();
    };
    let auth = match validate(app, params).await {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(app),
    };
    let ctx = client_context(ctx, auth.client.id);
    let step = match form.step.as_str() {
        "password" => {
            let req = LoginRequest {
                identifier: form.identifier.trim().to_string(),
                password: form.password.clone(),
                ..Default::default()
            };
            app.identity.login_interactive(&ctx, req).await
        }
        "mfa" => app.identity.login_second_factor(&ctx, &form.ticket, &form.code, None).await,
        _ => return expired_form(),
    };
    match step {
        Ok(LoginStep::Done(grant)) => signed_in(app, &ctx, &auth, &grant).await,
        Ok(LoginStep::SecondFactor { ticket }) => mfa_page(StatusCode::OK, &auth, &form.csrf, &ticket, ""),
        Err(DomainError::InvalidCredentials) if form.step == "mfa" => mfa_page(
            StatusCode::UNAUTHORIZED,
            &auth,
            &form.csrf,
            &form.ticket,
            "That code is not right. Try the current code from your app, or a recovery code.",
        ),
        Err(DomainError::InvalidCredentials) => login_page(
            StatusCode::UNAUTHORIZED,
            &auth,
            &form.csrf,
            &form.identifier,
            "The email, username or password is not right (or the account is locked).",
        ),
        Err(DomainError::InvalidToken { .. }) => login_page(
            StatusCode::UNAUTHORIZED,
            &auth,
            &form.csrf,
            "",
            "Signing in took too long. Please enter your password again.",
        ),
        Err(DomainError::EmailNotVerified) => pages::message(
            StatusCode::FORBIDDEN,
            "info",
            "Verify your email address",
            "Your email address is not verified yet. Open the link in the welcome email we sent you, then sign in again.",
        ),
        Err(e @ DomainError::InvalidArgument { .. }) => {
            login_page(StatusCode::BAD_REQUEST, &auth, &form.csrf, &form.identifier, &e.to_string())
        }
        Err(e) => pages::message(StatusCode::SERVICE_UNAVAILABLE, "error", "Please try again", &e.to_string()),
    }
}

/// After a successful sign-in: the SSO cookie for the new browser session, and the code.
async fn signed_in(app: &App, ctx: &RequestContext, auth: &Authorization, grant: &LoginGrant) -> Response {
    let mut amr = vec!["pwd".to_string()];
    if grant.mfa_used {
        amr.push("otp".into());
    }
    let sso = Sso { session: grant.session_id, user: grant.user_id, auth_time: now(), amr };
    let cookie = set_cookie(app, SSO_COOKIE, &sso.encode(app), "Lax", None);
    with_cookies(issue_code(app, ctx, auth, &sso).await, [cookie])
}

/// The claims about a user that `scope` releases (OpenID Connect Core §5.4).
fn user_claims(user: &UserView, scope: &str) -> Map<String, Value> {
    let has = |s: &str| scope.split(' ').any(|x| x == s);
    let mut claims = Map::new();
    claims.insert("sub".into(), user.id.to_string().into());
    if has("email") {
        claims.insert("email".into(), json!(user.email));
        claims.insert("email_verified".into(), json!(user.email_verified));
    }
    if has("profile") {
        claims.insert("preferred_username".into(), json!(user.username));
        let name = [user.first_name.as_deref(), user.last_name.as_deref()].into_iter().flatten().collect::<Vec<_>>();
        if !name.is_empty() {
            claims.insert("name".into(), json!(name.join(" ")));
        }
        if let Some(g) = &user.first_name {
            claims.insert("given_name".into(), json!(g));
        }
        if let Some(f) = &user.last_name {
            claims.insert("family_name".into(), json!(f));
        }
        claims.insert("locale".into(), json!(&*user.locale));
    }
    if has("phone") {
        if let Some(p) = &user.phone_number {
            claims.insert("phone_number".into(), json!(p));
        }
    }
    claims
}

/// What an ID token says about the sign-in it comes from.
struct SignIn<'a> {
    user: Uuid,
    browser_session: Uuid,
    auth_time: i64,
    amr: &'a [String],
    nonce: Option<&'a str>,
    scope: &'a str,
}

fn id_token(app: &App, client: &ClientView, sign_in: &SignIn<'_>) -> anyhow::Result<String> {
    let user = app
        .identity
        .live()
        .read(|m| m.users.get(sign_in.user).cloned())
        .ok_or_else(|| anyhow::anyhow!("user {} is not in the read models", sign_in.user))?;
    let now = now();
    let mut claims = user_claims(&user, sign_in.scope);
    let mfa = sign_in.amr.iter().any(|m| m == "otp");
    for (k, v) in [
        ("iss", json!(&*app.issuer)),
        ("aud", json!(client.id.to_string())),
        ("azp", json!(client.id.to_string())),
        ("iat", json!(now)),
        ("exp", json!(now + ID_TOKEN_TTL)),
        ("auth_time", json!(sign_in.auth_time)),
        ("amr", json!(sign_in.amr)),
        ("acr", json!(if mfa { "urn:perfect21:acr:mfa" } else { "urn:perfect21:acr:pwd" })),
        ("sid", json!(sign_in.browser_session.to_string())),
    ] {
        claims.insert(k.into(), v);
    }
    if let Some(nonce) = sign_in.nonce {
        claims.insert("nonce".into(), json!(nonce));
    }
    app.keys.sign_id_token(&client.settings.id_token_signed_response_alg, &Value::Object(claims))
}

fn server_error(e: impl std::fmt::Display) -> OAuthError {
    OAuthError::status(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string())
}

fn domain_error(e: DomainError) -> OAuthError {
    match e {
        DomainError::InvalidToken { what } => OAuthError::new(
            "invalid_grant",
            format!("the {what} is invalid, expired or already used, or was issued to another client or redirect URI"),
        ),
        DomainError::InvalidArgument { .. } => OAuthError::new("invalid_request", e.to_string()),
        other => OAuthError::status(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", other.to_string()),
    }
}

/// The token answer of a client's session (RFC 6749 §5.1, OpenID Connect Core §3.1.3.3).
fn token_answer(
    app: &App,
    client: &ClientView,
    grant: &LoginGrant,
    sign_in: &SignIn<'_>,
) -> Result<Response, OAuthError> {
    let access = app.client_access_token(grant, client.id, sign_in.scope).map_err(server_error)?;
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": (grant.access_expires_at - now()).max(0),
        "scope": sign_in.scope,
    });
    if client.allows_grant("refresh_token") {
        body["refresh_token"] = json!(grant.refresh_token);
    }
    if sign_in.scope.split(' ').any(|s| s == "openid") {
        body["id_token"] = json!(id_token(app, client, sign_in).map_err(server_error)?);
    }
    Ok((StatusCode::OK, oauth2::no_store(), axum::Json(body)).into_response())
}

/// Authenticates the relying party of a back-channel request: a confidential client
/// by its secret, a public client by its id.
async fn relying_party(
    app: &App,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<ClientView, OAuthError> {
    let (id, secret, basic) = oauth2::client_auth(headers, form)?;
    app.identity.authenticate_relying_party(&id, secret.as_deref()).await.map_err(|e| match e {
        DomainError::InvalidCredentials => OAuthError::invalid_client(basic),
        other => OAuthError::status(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", other.to_string()),
    })
}

/// The authenticated client of a token request, if it may use `grant_type`.
async fn client_for_grant(
    app: &App,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    grant_type: &str,
) -> Result<ClientView, OAuthError> {
    let client = relying_party(app, headers, form).await?;
    if !client.allows_grant(grant_type) {
        let description = format!("this client may not use the {grant_type} grant");
        return Err(OAuthError::new("unauthorized_client", description));
    }
    Ok(client)
}

fn required<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, OAuthError> {
    form.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
}

/// RFC 6749 §4.1.3: the authorization-code grant.
pub async fn code_grant(
    app: &App,
    ctx: RequestContext,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let client = client_for_grant(app, headers, form, "authorization_code").await?;
    let code = required(form, "code")?;
    let redirect_uri = required(form, "redirect_uri")?;
    let verifier = form.get("code_verifier").map(String::as_str);
    let ctx = client_context(ctx, client.id);
    let redeemed = app
        .identity
        .redeem_authorization_code(&ctx, client.id, code, redirect_uri, verifier)
        .await
        .map_err(domain_error)?;
    let issued = &redeemed.issued;
    let sign_in = SignIn {
        user: issued.user_id,
        browser_session: issued.browser_session_id,
        auth_time: issued.auth_time,
        amr: &issued.amr,
        nonce: issued.nonce.as_deref(),
        scope: &issued.scope,
    };
    token_answer(app, &client, &redeemed.grant, &sign_in)
}

/// The client session a refresh token belongs to, read up to the log's head.
async fn client_session_of(
    app: &App,
    refresh_token: &str,
) -> Option<(Uuid, perfect21_projections::sessions::ClientSession)> {
    let session = perfect21_domain::secrets::token_id(refresh_token)?;
    let head = app.identity.store().head_position().await.ok()?;
    let link = app.identity.read(Some(head), |m| m.sessions.client_session(session).cloned()).await.ok()??;
    Some((session, link))
}

/// RFC 6749 §6: the refresh grant of a client's session (rotation and reuse detection
/// as for every refresh token). A client can only refresh its own sessions.
pub async fn refresh_grant(
    app: &App,
    ctx: RequestContext,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let client = client_for_grant(app, headers, form, "refresh_token").await?;
    let token = required(form, "refresh_token")?;
    let invalid = || {
        OAuthError::new(
            "invalid_grant",
            "the refresh token is invalid, expired or revoked, or was issued to another client",
        )
    };
    let (_, link) =
        client_session_of(app, token).await.filter(|(_, l)| l.client_id == client.id).ok_or_else(invalid)?;
    let ctx = client_context(ctx, client.id);
    let grant = app.identity.refresh(&ctx, token).await.map_err(|e| match e {
        DomainError::InvalidToken { .. } => invalid(),
        other => domain_error(other),
    })?;
    let amr: Vec<String> = link.amr.iter().map(|m| m.to_string()).collect();
    let sign_in = SignIn {
        user: grant.user_id,
        browser_session: link.browser_session_id,
        auth_time: link.auth_time,
        amr: &amr,
        nonce: None,
        scope: &link.scope,
    };
    token_answer(app, &client, &grant, &sign_in)
}

/// Who may introspect: a confidential client (its own tokens) or a service account
/// holding `perfect21.tokens:validate` (a resource server: any token).
enum Introspector {
    Client(Uuid),
    ResourceServer,
}

async fn introspector(
    app: &App,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Introspector, OAuthError> {
    let (id, secret, basic) = oauth2::client_auth(headers, form)?;
    let Some(secret) = secret else {
        return Err(OAuthError::invalid_client(basic));
    };
    if let Ok(client) = app.identity.authenticate_relying_party(&id, Some(&secret)).await {
        return Ok(Introspector::Client(client.id));
    }
    let account =
        app.identity.authenticate_client(&id, &secret).await.map_err(|_| OAuthError::invalid_client(basic))?;
    // Reading any token's status is token validation: the same permission as ValidateToken.
    match app.holds(account.id, TOKENS_VALIDATE).await {
        Ok(true) => Ok(Introspector::ResourceServer),
        Ok(false) => Err(OAuthError::status(
            StatusCode::FORBIDDEN,
            "access_denied",
            format!("introspecting tokens needs {TOKENS_VALIDATE} (a client may introspect only its own tokens)"),
        )),
        Err(e) => Err(OAuthError::status(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", e.to_string())),
    }
}

/// `POST /oauth2/introspect` (RFC 7662).
/// The form of `POST /oauth2/introspect` (RFC 7662) and `POST /oauth2/revoke` (RFC 7009);
/// the client authenticates with HTTP Basic or with `client_id` and `client_secret` here.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct TokenForm {
    token: String,
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

#[utoipa::path(post, path = "/oauth2/introspect", tag = "oidc",
    summary = "Token introspection (RFC 7662); client authentication",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`active`, and the token's claims when it is", content_type = "application/json", body = Object),
        (status = 400, description = "A malformed request", content_type = "application/json", body = OAuthErrorBody),
        (status = 401, description = "Client authentication failed", content_type = "application/json", body = OAuthErrorBody)),
    security((), ("client_basic" = [])))]
pub async fn introspect(State(s): State<RestState>, headers: HeaderMap, body: Bytes) -> Result<Response, OAuthError> {
    let app = &s.app;
    let form = oauth2::form(&headers, &body)?;
    let who = introspector(app, &headers, &form).await?;
    let token = required(&form, "token")?;
    let inactive = || Ok((StatusCode::OK, oauth2::no_store(), axum::Json(json!({"active": false}))).into_response());
    let may_see = |aud: Option<Uuid>| match who {
        Introspector::ResourceServer => true,
        Introspector::Client(id) => aud == Some(id),
    };
    metrics::counter!("perfect21_token_operations_total", "operation" => "introspect", "outcome" => "answered")
        .increment(1);
    if app.authenticate(token, None).await.is_ok() {
        let Ok(claims) = app.verified_claims(token) else {
            return inactive();
        };
        let aud = claims.aud.as_deref().and_then(|a| Uuid::parse_str(a).ok());
        if !may_see(aud) {
            return inactive();
        }
        return Ok((StatusCode::OK, oauth2::no_store(), axum::Json(access_token_info(&claims))).into_response());
    }
    if let Some((session, link)) = client_session_of(app, token).await {
        if may_see(Some(link.client_id)) {
            if let Ok(Some(active)) = app.identity.refresh_token_status(token).await {
                let body = json!({
                    "active": true, "token_type": "refresh_token", "sub": active.user_id.to_string(),
                    "client_id": link.client_id.to_string(), "scope": &*link.scope, "exp": active.expires_at,
                    "sid": session.to_string(), "iss": &*app.issuer,
                });
                return Ok((StatusCode::OK, oauth2::no_store(), axum::Json(body)).into_response());
            }
        }
    }
    inactive()
}

fn access_token_info(claims: &Claims) -> Value {
    let mut body = json!({
        "active": true, "token_type": "Bearer", "sub": claims.sub, "exp": claims.exp, "iat": claims.iat,
        "iss": claims.iss, "jti": claims.jti,
    });
    if !claims.sid.is_empty() {
        body["sid"] = json!(claims.sid);
    }
    if let Some(aud) = &claims.aud {
        body["aud"] = json!(aud);
        body["client_id"] = json!(aud);
    }
    if let Some(client) = &claims.client_id {
        body["client_id"] = json!(client);
    }
    if let Some(scope) = &claims.scope {
        body["scope"] = json!(scope);
    }
    body
}

/// RFC 7009 §2.2: a token that is already revoked or ended is no error; a store
/// that cannot be reached is.
fn unless_broken(result: Result<u64, DomainError>) -> Result<(), OAuthError> {
    match result {
        Err(e @ (DomainError::Store(_) | DomainError::Internal(_))) => {
            Err(OAuthError::status(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", e.to_string()))
        }
        _ => Ok(()),
    }
}

/// `POST /oauth2/revoke` (RFC 7009): a client revokes one of its own access or
/// refresh tokens. Unknown tokens and tokens of other clients answer 200 too.
#[utoipa::path(post, path = "/oauth2/revoke", tag = "oidc",
    summary = "Token revocation (RFC 7009); client authentication",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked (or not a token of this client: nothing to do)", content_type = "application/json", body = Object),
        (status = 400, description = "A malformed request", content_type = "application/json", body = OAuthErrorBody),
        (status = 401, description = "Client authentication failed", content_type = "application/json", body = OAuthErrorBody)),
    security((), ("client_basic" = [])))]
pub async fn revoke(
    State(s): State<RestState>,
    Origin(ctx): Origin,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let app = &s.app;
    let form = oauth2::form(&headers, &body)?;
    let client = relying_party(app, &headers, &form).await?;
    let token = required(&form, "token")?;
    let ctx = client_context(ctx, client.id);
    let mine = client.id.to_string();
    if let Ok(claims) = app.keys.verify(token, true) {
        if claims.aud.as_deref() == Some(mine.as_str()) {
            if let Some(session) = claims.session_id() {
                unless_broken(app.identity.revoke_token(&ctx, session, &claims.jti, claims.exp).await)?;
            }
        }
    } else if let Some((session, link)) = client_session_of(app, token).await {
        if link.client_id == client.id && matches!(app.identity.refresh_token_status(token).await, Ok(Some(_))) {
            unless_broken(app.identity.revoke_session(&ctx, session, "revoked_by_client").await)?;
        }
    }
    Ok((StatusCode::OK, oauth2::no_store(), axum::Json(json!({}))).into_response())
}

/// `GET|POST /oauth2/userinfo` (OpenID Connect Core §5.3), with an access token that
/// was granted the `openid` scope.
#[utoipa::path(method(get, post), path = "/oauth2/userinfo", tag = "oidc",
    summary = "OpenID Connect userinfo: claims of the token's user, by granted scope",
    responses(
        (status = 200, description = "The claims", content_type = "application/json", body = Object),
        (status = 401, description = "The token is invalid (WWW-Authenticate says why)", content_type = "application/json", body = OAuthErrorBody),
        (status = 403, description = "The token lacks the openid scope", content_type = "application/json", body = OAuthErrorBody)))]
pub async fn userinfo(State(s): State<RestState>, headers: HeaderMap) -> Response {
    let app = &s.app;
    let refuse = |error: &str, description: &str| {
        let challenge = format!("Bearer error=\"{error}\", error_description=\"{description}\"");
        let status = if error == "insufficient_scope" { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
        let mut r = (status, axum::Json(json!({"error": error, "error_description": description}))).into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&challenge).expect("ASCII"));
        r
    };
    // The access rule admitted a valid user token; its claims say what it was granted.
    let Some(claims) = super::rest::bearer(&headers).and_then(|t| app.verified_claims(t).ok()) else {
        return refuse("invalid_token", "the access token is invalid");
    };
    let scope = claims.scope.clone().unwrap_or_default();
    if !scope.split(' ').any(|s| s == "openid") {
        return refuse("insufficient_scope", "the access token was not granted the openid scope");
    }
    let Some(user) = claims.user_id().and_then(|id| app.identity.live().read(|m| m.users.get(id).cloned())) else {
        return refuse("invalid_token", "the user no longer exists");
    };
    (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], axum::Json(Value::Object(user_claims(&user, &scope))))
        .into_response()
}

/// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0); `csrf` only in the
/// confirmation form.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams, utoipa::ToSchema)]
#[into_params(parameter_in = Query)]
struct LogoutParams {
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    client_id: Option<String>,
    #[serde(default)]
    csrf: String,
}

/// Where logout may send the browser: a post-logout URI registered for the client.
async fn logout_target(app: &App, client: Option<Uuid>, params: &LogoutParams) -> Result<Option<String>, Response> {
    let Some(uri) = params.post_logout_redirect_uri.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let client = match client {
        Some(id) => app.identity.client(id).await.ok().flatten(),
        None => None,
    };
    match client {
        Some(c) if c.settings.post_logout_redirect_uris.iter().any(|u| u == uri) => Ok(Some(uri.to_string())),
        _ => Err(pages::message(
            StatusCode::BAD_REQUEST,
            "error",
            "Sign-out link cannot be used",
            "The address to return to after signing out is not registered for this application.",
        )),
    }
}

async fn finish_logout(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    target: Option<String>,
    state: Option<&str>,
) -> Response {
    if let Some(sso) = cookie(headers, SSO_COOKIE).and_then(|v| Sso::decode(app, v)) {
        let ctx = ctx.clone().as_user(sso.user);
        if let Err(e) = app.identity.end_browser_session(&ctx, sso.session).await {
            return pages::message(StatusCode::SERVICE_UNAVAILABLE, "error", "Please try again", &e.to_string());
        }
    }
    let clear = set_cookie(app, SSO_COOKIE, "", "Lax", Some(0));
    let response = match target {
        Some(uri) => {
            let params: Vec<(&str, &str)> = state.map(|s| vec![("state", s)]).unwrap_or_default();
            redirect_to(&uri, &params)
        }
        None => pages::message(
            StatusCode::OK,
            "ok",
            "You are signed out",
            "You have been signed out of every application that used this sign-in.",
        ),
    };
    with_cookies(response, [clear])
}

fn hinted_client(app: &App, hint: Option<&str>) -> Result<Option<Uuid>, ()> {
    match hint.filter(|h| !h.is_empty()) {
        None => Ok(None),
        Some(h) => {
            let claims = app.keys.verify_id_token(h, &app.issuer).map_err(|_| ())?;
            Ok(claims["aud"].as_str().and_then(|a| Uuid::parse_str(a).ok()))
        }
    }
}

/// `GET /oauth2/logout` (RP-initiated logout): with a valid `id_token_hint` the
/// browser is signed out at once; without one, a confirmation page asks first.
#[utoipa::path(get, path = "/oauth2/logout", tag = "oidc",
    summary = "RP-initiated logout (id_token_hint, post_logout_redirect_uri, state)",
    params(LogoutParams),
    responses(
        (status = 200, description = "The confirmation page (or: signed out)", content_type = "text/html", body = String),
        (status = 303, description = "Signed out: to the registered post-logout URI"),
        (status = 400, description = "The hint or the return address cannot be used", content_type = "text/html", body = String)))]
pub async fn logout(
    State(s): State<RestState>,
    Origin(ctx): Origin,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let app = &s.app;
    let params: LogoutParams = serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let Ok(hinted) = hinted_client(app, params.id_token_hint.as_deref()) else {
        return pages::message(
            StatusCode::BAD_REQUEST,
            "error",
            "Sign-out link cannot be used",
            "The id_token_hint is not an ID token issued here.",
        );
    };
    let client = hinted.or_else(|| params.client_id.as_deref().and_then(|c| Uuid::parse_str(c).ok()));
    let target = match logout_target(app, client, &params).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    if hinted.is_some() {
        return finish_logout(app, &ctx, &headers, target, params.state.as_deref()).await;
    }
    let (token, set) = csrf(app, &headers);
    let page = pages::page(
        StatusCode::OK,
        "message.html",
        minijinja::context! {
            kind => "info", title => "Sign out?",
            message => "Sign out of every application that uses this sign-in?",
            confirm_logout => true, csrf => token,
            client_id => client.map(|c| c.to_string()).unwrap_or_default(),
            post_logout_redirect_uri => target.clone().unwrap_or_default(),
            state => params.state.clone().unwrap_or_default(),
        },
    );
    with_cookies(page, set)
}

/// `POST /oauth2/logout`: the confirmation form.
#[utoipa::path(post, path = "/oauth2/logout", tag = "oidc",
    summary = "Logout confirmation form target",
    request_body(content = LogoutParams, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Signed out", content_type = "text/html", body = String),
        (status = 303, description = "Signed out: to the registered post-logout URI"),
        (status = 400, description = "The form or the return address cannot be used", content_type = "text/html", body = String),
        (status = 403, description = "The form is not this site's or has expired (CSRF)", content_type = "text/html", body = String)))]
pub async fn logout_submit(
    State(s): State<RestState>,
    Origin(ctx): Origin,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let app = &s.app;
    let params: LogoutParams = match checked_form(&headers, &body, |f: &LogoutParams| &f.csrf) {
        Ok(f) => f,
        Err(page) => return *page,
    };
    let client = params.client_id.as_deref().and_then(|c| Uuid::parse_str(c).ok());
    let target = match logout_target(app, client, &params).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    finish_logout(app, &ctx, &headers, target, params.state.as_deref().filter(|s| !s.is_empty())).await
}

/// `GET /.well-known/openid-configuration` (OpenID Connect Discovery 1.0).
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oidc",
    summary = "OpenID Connect discovery document",
    responses((status = 200, description = "The provider's metadata", content_type = "application/json", body = Object)))]
pub async fn discovery(State(s): State<RestState>) -> Response {
    let issuer = s.app.issuer.trim_end_matches('/').to_string();
    let at = |path: &str| format!("{issuer}{path}");
    let body = json!({
        "issuer": &*s.app.issuer,
        "authorization_endpoint": at("/oauth2/authorize"),
        "token_endpoint": at("/oauth2/token"),
        "userinfo_endpoint": at("/oauth2/userinfo"),
        "jwks_uri": at("/.well-known/jwks.json"),
        "end_session_endpoint": at("/oauth2/logout"),
        "introspection_endpoint": at("/oauth2/introspect"),
        "revocation_endpoint": at("/oauth2/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": perfect21_domain::clients::ID_TOKEN_ALGS,
        "scopes_supported": perfect21_domain::clients::SCOPES,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login"],
        "claims_supported": [
            "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "amr", "acr", "azp", "sid",
            "email", "email_verified", "preferred_username", "name", "given_name", "family_name", "locale", "phone_number",
        ],
        "authorization_response_iss_parameter_supported": true,
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
    });
    ([(header::CACHE_CONTROL, "public, max-age=300")], axum::Json(body)).into_response()
}
