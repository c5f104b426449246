//! The OAuth 2.0 token endpoint, `POST /oauth2/token` (RFC 6749 §3.2): the
//! client-credentials grant (§4.4) for service accounts, and the
//! authorization-code and refresh grants of OpenID Connect clients (`oidc.rs`),
//! with client authentication by `client_secret_basic`, `client_secret_post`
//! (§2.3.1) or, for public clients, `none` plus PKCE; answers as §5.1 and errors
//! as §5.2. Each grant type is one arm of [`token`].

use super::rest::{Origin, RestState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use perfect21_domain::DomainError;
use serde_json::json;
use std::collections::HashMap;

/// An RFC 6749 §5.2 error.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
    /// The client tried `client_secret_basic`: a 401 names the scheme.
    basic: bool,
}

impl OAuthError {
    pub(super) fn new(code: &'static str, description: impl Into<String>) -> Self {
        OAuthError { status: StatusCode::BAD_REQUEST, code, description: description.into(), basic: false }
    }

    pub(super) fn status(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        OAuthError { status, code, description: description.into(), basic: false }
    }

    pub(super) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description)
    }

    pub(super) fn invalid_client(basic: bool) -> Self {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: "client authentication failed (unknown client, wrong secret or disabled client)".into(),
            basic,
        }
    }
}

/// An OAuth 2.0 error answer (RFC 6749 §5.2).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = OAuthError)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, `unsupported_grant_type`, ...
    error: String,
    error_description: String,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = OAuthErrorBody { error: self.code.into(), error_description: self.description };
        let mut r = (self.status, no_store(), axum::Json(body)).into_response();
        if self.basic && self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"perfect21\""));
        }
        r
    }
}

/// Token answers must not be cached (RFC 6749 §5.1).
pub(super) fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

/// The client's credentials, from `Authorization: Basic` or the form (never both).
struct ClientCredentials {
    id: String,
    secret: String,
    basic: bool,
}

fn form_decode(s: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}")).ok()?.pop().map(|(_, v)| v)
}

fn client_credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> Result<ClientCredentials, OAuthError> {
    let in_form = form.contains_key("client_id") || form.contains_key("client_secret");
    match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(value) => {
            if in_form {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method: Authorization: Basic or client_id/client_secret in the body",
                ));
            }
            let encoded = value.strip_prefix("Basic ").ok_or_else(|| {
                OAuthError::invalid_request("Authorization must be 'Basic <base64 client_id:client_secret>'")
            })?;
            let decoded = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| OAuthError::invalid_request("the Basic credentials are not base64 of UTF-8 text"))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| OAuthError::invalid_request("the Basic credentials must be client_id:client_secret"))?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
            let id = form_decode(id).ok_or_else(|| OAuthError::invalid_request("client_id is not form-urlencoded"))?;
            let secret = form_decode(secret)
                .ok_or_else(|| OAuthError::invalid_request("client_secret is not form-urlencoded"))?;
            Ok(ClientCredentials { id, secret, basic: true })
        }
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => Ok(ClientCredentials { id: id.clone(), secret: secret.clone(), basic: false }),
            _ => Err(OAuthError::invalid_client(false)),
        },
    }
}

/// How a relying party authenticates: (client id, secret if any, whether by Basic).
/// A secret comes by `client_secret_basic` or `client_secret_post`; a public client
/// sends only its `client_id` (method `none`).
pub(super) fn client_auth(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, Option<String>, bool), OAuthError> {
    if headers.contains_key(header::AUTHORIZATION) || form.contains_key("client_secret") {
        let c = client_credentials(headers, form)?;
        return Ok((c.id, Some(c.secret), c.basic));
    }
    match form.get("client_id") {
        Some(id) if !id.is_empty() => Ok((id.clone(), None, false)),
        _ => Err(OAuthError::invalid_client(false)),
    }
}

/// The parameters of the back-channel endpoints (token, introspection, revocation).
const PARAMETERS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "scope",
    "token",
    "token_type_hint",
];

/// A back-channel request body: `application/x-www-form-urlencoded`, no parameter repeated.
pub(super) fn form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let form_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    if !form_type {
        return Err(OAuthError::invalid_request("the body must be application/x-www-form-urlencoded"));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| OAuthError::invalid_request(format!("the body is not form-urlencoded: {e}")))?;
    let mut form = HashMap::new();
    for (k, v) in pairs {
        // RFC 6749 §3.1: a parameter of the protocol must not be repeated; others are ignored.
        let known = PARAMETERS.contains(&k.as_str());
        if form.contains_key(&k) {
            if known {
                return Err(OAuthError::invalid_request(format!("parameter '{k}' is repeated")));
            }
            continue;
        }
        form.insert(k, v);
    }
    // RFC 6749 §3.1: a parameter sent without a value is treated as omitted.
    form.retain(|_, v| !v.is_empty());
    Ok(form)
}

/// The form of `POST /oauth2/token`; the client authenticates with HTTP Basic
/// (`client_secret_basic`) or with `client_id` and `client_secret` here.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct TokenRequest {
    #[schema(pattern = "^(client_credentials|authorization_code|refresh_token)$")]
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    /// `authorization_code`: the code, the redirect URI it was issued for, the PKCE verifier.
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    /// `refresh_token`.
    refresh_token: Option<String>,
    scope: Option<String>,
}

/// `POST /oauth2/token`.
#[utoipa::path(post, path = "/oauth2/token", tag = "oidc",
    summary = "OAuth 2.0 token endpoint (RFC 6749): client_credentials, authorization_code or refresh_token",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The tokens", content_type = "application/json", body = Object),
        (status = 400, description = "A malformed request or an unusable grant", content_type = "application/json", body = OAuthErrorBody),
        (status = 401, description = "Client authentication failed", content_type = "application/json", body = OAuthErrorBody),
        (status = 503, description = "Try again", content_type = "application/json", body = OAuthErrorBody)),
    security((), ("client_basic" = [])))]
pub async fn token(
    State(s): State<RestState>,
    Origin(ctx): Origin,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = form(&headers, &body)?;
    match form.get("grant_type").map(String::as_str) {
        None | Some("") => Err(OAuthError::invalid_request("grant_type is required")),
        Some("client_credentials") => client_credentials_grant(&s, &headers, &form).await,
        Some("authorization_code") => super::oidc::code_grant(&s.app, ctx, &headers, &form).await,
        Some("refresh_token") => super::oidc::refresh_grant(&s.app, ctx, &headers, &form).await,
        Some(other) => Err(OAuthError::new(
            "unsupported_grant_type",
            format!(
                "grant_type '{other}' is not supported here; supported: authorization_code, refresh_token, client_credentials"
            ),
        )),
    }
}

/// RFC 6749 §4.4: a service account trades its credentials for a short-lived access token.
async fn client_credentials_grant(
    s: &RestState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let credentials = client_credentials(headers, form)?;
    let account = match s.app.identity.authenticate_client(&credentials.id, &credentials.secret).await {
        Ok(a) => a,
        Err(DomainError::InvalidCredentials) => {
            metrics::counter!("perfect21_auth_events_total", "event" => "client_credentials", "outcome" => "failure")
                .increment(1);
            return Err(OAuthError::invalid_client(credentials.basic));
        }
        Err(e) => {
            return Err(OAuthError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "temporarily_unavailable",
                description: e.to_string(),
                basic: false,
            })
        }
    };
    let (access_token, expires_in) = s.app.service_token(account.id).map_err(|e| OAuthError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "server_error",
        description: e.to_string(),
        basic: false,
    })?;
    metrics::counter!("perfect21_auth_events_total", "event" => "client_credentials", "outcome" => "success")
        .increment(1);
    let body = json!({"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in});
    Ok((StatusCode::OK, no_store(), axum::Json(body)).into_response())
}
