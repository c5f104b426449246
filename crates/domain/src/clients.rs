//! OpenID Connect clients (relying parties) and the authorization codes issued
//! to them.
//!
//! ```text
//! register      -> client.registered
//! update        -> client.updated
//! rotate secret -> client.secret_rotated
//! delete        -> client.deleted
//! authorize     -> authorization_code.issued            (authorization_code-<id>)
//! token         -> authorization_code.redeemed          (same stream, expected version 1: single use)
//!                  session.started                      (the client's own session, a child of the browser's)
//! code replayed -> session.revoked + security.alert     (the tokens issued from the code stop working)
//! ```
//!
//! A confidential client's secret is 32 random bytes shown once; the log holds its
//! SHA-256. A public client has no secret and must prove possession of its
//! authorization request with PKCE (S256).

use crate::error::{DomainError, Result};
use crate::secrets::{constant_time_eq, random_token, token_hash};
use crate::state::{AuthorizationCodeState, ClientState, UserState};
use crate::{stream, Identity, LoginGrant, RequestContext};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use perfect21_events::catalog::*;
use perfect21_events::{Event, ExpectedVersion};
use perfect21_projections::clients::ClientView;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Stream category of clients.
pub const CATEGORY: &str = "client";
/// Stream category of authorization codes.
pub const CODE_CATEGORY: &str = "authorization_code";

/// Grant types a client may be allowed.
/// (Machines use service accounts and the client-credentials grant.)
pub const GRANT_TYPES: &[&str] = &["authorization_code", "refresh_token"];
/// Scopes a client may be allowed.
pub const SCOPES: &[&str] = &["openid", "profile", "email", "phone", "offline_access"];
/// Algorithms of ID token signatures.
pub const ID_TOKEN_ALGS: &[&str] = &["RS256", "ES256", "EdDSA"];

/// Grant types a client gets unless told otherwise.
pub fn default_grant_types() -> Vec<String> {
    vec!["authorization_code".into(), "refresh_token".into()]
}

/// Scopes a client gets unless told otherwise.
pub fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}

/// ID-token algorithm unless told otherwise (what most relying-party libraries expect).
pub const DEFAULT_ID_TOKEN_ALG: &str = "RS256";

/// Whether `client_type` names a confidential client: `confidential` (or empty, the
/// default) or `public`.
pub fn is_confidential(client_type: &str) -> Result<bool> {
    match client_type {
        "" | "confidential" => Ok(true),
        "public" => Ok(false),
        other => Err(invalid("client_type", format!("'{other}' must be 'confidential' or 'public'"))),
    }
}

/// A client just registered: its id and, for a confidential client, its secret (the only copy).
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    pub id: Uuid,
    pub secret: Option<String>,
    pub position: u64,
}

/// What the authorization endpoint asks to be recorded with a code.
#[derive(Debug, Clone)]
pub struct CodeRequest {
    pub client_id: Uuid,
    pub user_id: Uuid,
    pub browser_session_id: Uuid,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub auth_time: i64,
    pub amr: Vec<String>,
}

/// A redeemed code: the client's new session and what the code was issued for.
#[derive(Debug, Clone)]
pub struct RedeemedCode {
    pub grant: LoginGrant,
    pub issued: AuthorizationCodeIssued,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::InvalidArgument { field, reason: reason.into() }
}

/// A redirect URI must be absolute, without a fragment, and either `https`, `http` on
/// a loopback host (development, native apps), or a private-use scheme of a native
/// app (`com.example.app:/callback`).
/// What a redirect URI may be: `https` on a DNS name, `http` on a loopback host, or a
/// reverse-domain app scheme (`com.example.app:/callback`); an optional port, path and
/// query; no fragment, no userinfo. The OpenAPI document states the same pattern.
pub const REDIRECT_URI_PATTERN: &str = concat!(
    r"^(https://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"|http://(localhost|127\.0\.0\.1|\[::1\])(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"|[a-z][a-z0-9-]*(\.[a-z0-9-]+)+:)",
    r"(/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?",
    r"(\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?$",
);
/// Longest redirect URI (ASCII, so bytes and characters agree).
pub const MAX_REDIRECT_URI: usize = 2048;

fn redirect_uri_shape() -> &'static regex::Regex {
    static SHAPE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    SHAPE.get_or_init(|| regex::Regex::new(REDIRECT_URI_PATTERN).expect("the redirect URI pattern compiles"))
}

pub fn check_redirect_uri(field: &'static str, uri: &str) -> Result<()> {
    if uri.len() > MAX_REDIRECT_URI {
        return Err(invalid(field, format!("must be at most {MAX_REDIRECT_URI} characters")));
    }
    let parsed = url::Url::parse(uri).map_err(|e| invalid(field, format!("'{uri}' is not an absolute URL: {e}")))?;
    if parsed.fragment().is_some() {
        return Err(invalid(field, format!("'{uri}' must not have a fragment")));
    }
    let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match parsed.scheme() {
        "https" | "http" if !parsed.username().is_empty() || parsed.password().is_some() => {
            Err(invalid(field, format!("'{uri}' must not carry a user name or password")))
        }
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(invalid(field, format!("'{uri}': plain http is allowed for loopback hosts only; use https"))),
        "javascript" | "data" | "file" | "vbscript" => Err(invalid(field, format!("'{uri}': scheme not allowed"))),
        s if s.contains('.') => Ok(()),
        _ => Err(invalid(field, format!("'{uri}': use https, http on loopback, or a reverse-domain app scheme"))),
    }?;
    if !redirect_uri_shape().is_match(uri) {
        return Err(invalid(
            field,
            format!(
                "'{uri}' is not a plain redirect URI: https://host[:port][/path][?query] (host a DNS name), \
                 http:// on localhost, 127.0.0.1 or [::1], or an app scheme such as com.example.app:/callback; \
                 path and query in unreserved, sub-delim, ':', '@', '/', '?' and '%' characters"
            ),
        ));
    }
    Ok(())
}

fn check_settings(s: &ClientSettings) -> Result<()> {
    for uri in &s.redirect_uris {
        check_redirect_uri("redirect_uris", uri)?;
    }
    for uri in &s.post_logout_redirect_uris {
        check_redirect_uri("post_logout_redirect_uris", uri)?;
    }
    if s.redirect_uris.len() > 32 || s.post_logout_redirect_uris.len() > 32 {
        return Err(invalid("redirect_uris", "at most 32 of each kind"));
    }
    if s.grant_types.is_empty() {
        return Err(invalid("grant_types", format!("name at least one of {}", GRANT_TYPES.join(", "))));
    }
    for (i, g) in s.grant_types.iter().enumerate() {
        if !GRANT_TYPES.contains(&g.as_str()) {
            return Err(invalid("grant_types", format!("'{g}' is not one of {}", GRANT_TYPES.join(", "))));
        }
        if s.grant_types[..i].contains(g) {
            return Err(invalid("grant_types", format!("'{g}' is listed twice")));
        }
    }
    let has = |g: &str| s.grant_types.iter().any(|x| x == g);
    if has("refresh_token") && !has("authorization_code") {
        return Err(invalid("grant_types", "refresh_token needs authorization_code too"));
    }
    if has("authorization_code") && s.redirect_uris.is_empty() {
        return Err(invalid("redirect_uris", "the authorization_code grant needs at least one redirect URI"));
    }
    for (i, scope) in s.scopes.iter().enumerate() {
        if !SCOPES.contains(&scope.as_str()) {
            return Err(invalid("scopes", format!("'{scope}' is not one of {}", SCOPES.join(", "))));
        }
        if s.scopes[..i].contains(scope) {
            return Err(invalid("scopes", format!("'{scope}' is listed twice")));
        }
    }
    if !ID_TOKEN_ALGS.contains(&s.id_token_signed_response_alg.as_str()) {
        return Err(invalid(
            "id_token_signed_response_alg",
            format!("'{}' is not one of {}", s.id_token_signed_response_alg, ID_TOKEN_ALGS.join(", ")),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(invalid("name", "must be 1 to 100 printable characters"));
    }
    Ok(())
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
pub fn valid_pkce_value(v: &str) -> bool {
    (43..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

impl Identity {
    async fn live_client(&self, id: Uuid) -> Result<(ClientState, perfect21_events::StreamId)> {
        let s = stream(CATEGORY, id)?;
        let state: ClientState = self.load(&s).await?;
        if !state.exists || state.deleted {
            return Err(DomainError::NotFound { what: "client", id: id.to_string() });
        }
        Ok((state, s))
    }

    /// Registers a client. A confidential one gets a secret, in the answer only.
    #[tracing::instrument(name = "command", skip_all, fields(command = "register_client"))]
    pub async fn register_client(
        &self,
        ctx: &RequestContext,
        name: &str,
        confidential: bool,
        settings: ClientSettings,
    ) -> Result<RegisteredClient> {
        check_name(name)?;
        check_settings(&settings)?;
        let id = Uuid::now_v7();
        let secret = confidential.then(random_token);
        let event = Event::ClientRegistered(ClientRegistered {
            client_id: id,
            name: name.into(),
            confidential,
            secret_hash: secret.as_deref().map(token_hash).unwrap_or_default(),
            settings,
        });
        let appended = self.append(ctx, &stream(CATEGORY, id)?, ExpectedVersion::NoStream, &[event]).await?;
        Ok(RegisteredClient { id, secret, position: appended.position })
    }

    /// Replaces a client's name and settings.
    #[tracing::instrument(name = "command", skip_all, fields(command = "update_client"))]
    pub async fn update_client(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        name: &str,
        settings: ClientSettings,
    ) -> Result<u64> {
        let (state, s) = self.live_client(id).await?;
        check_name(name)?;
        check_settings(&settings)?;
        let event = Event::ClientUpdated(ClientUpdated { client_id: id, name: name.into(), settings });
        Ok(self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?.position)
    }

    /// A new secret for a confidential client; the old one stops working at once.
    #[tracing::instrument(name = "command", skip_all, fields(command = "rotate_client_secret"))]
    pub async fn rotate_client_secret(&self, ctx: &RequestContext, id: Uuid) -> Result<(String, u64)> {
        let (state, s) = self.live_client(id).await?;
        let confidential = self.read(Some(self.last_write()), |m| m.clients.get(id).map(|c| c.confidential)).await?;
        if confidential != Some(true) {
            return Err(DomainError::FailedPrecondition(format!("client {id} is public: it has no secret")));
        }
        let secret = random_token();
        let event = Event::ClientSecretRotated(ClientSecretRotated { client_id: id, secret_hash: token_hash(&secret) });
        let appended = self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?;
        Ok((secret, appended.position))
    }

    /// Deletes a client: no new codes or tokens for it.
    #[tracing::instrument(name = "command", skip_all, fields(command = "delete_client"))]
    pub async fn delete_client(&self, ctx: &RequestContext, id: Uuid) -> Result<u64> {
        let (state, s) = self.live_client(id).await?;
        let event = Event::ClientDeleted(ClientDeleted { client_id: id });
        Ok(self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?.position)
    }

    /// A client by id, as of this process's latest write (and, for a client this
    /// process has not seen, as of the log's head: registered elsewhere, or the read
    /// models are still catching up after a start).
    pub async fn client(&self, id: Uuid) -> Result<Option<ClientView>> {
        if let Some(c) = self.read(Some(self.last_write()), |m| m.clients.get(id).cloned()).await? {
            return Ok(Some(c));
        }
        let head = self.store.head_position().await?;
        self.read(Some(head), |m| m.clients.get(id).cloned()).await
    }

    /// Authenticates a client at the token, introspection or revocation endpoint: a
    /// confidential client by its secret, a public client by its id alone (its
    /// proof is PKCE). Unknown clients and wrong secrets answer the same.
    pub async fn authenticate_relying_party(&self, client_id: &str, secret: Option<&str>) -> Result<ClientView> {
        let bad = || DomainError::InvalidCredentials;
        let id = Uuid::parse_str(client_id).map_err(|_| bad())?;
        let client = self.client(id).await?;
        let presented = token_hash(secret.unwrap_or_default());
        match (client, secret) {
            (Some(c), Some(_)) if c.confidential && constant_time_eq(&presented, &c.secret_hash) => Ok(c),
            (Some(c), None) if !c.confidential => Ok(c),
            _ => Err(bad()),
        }
    }

    /// Records an authorization code; returns the code (the only copy).
    #[tracing::instrument(name = "command", skip_all, fields(command = "issue_authorization_code"))]
    pub async fn issue_authorization_code(&self, ctx: &RequestContext, req: CodeRequest) -> Result<String> {
        let code_id = Uuid::now_v7();
        let code = format!("{}.{}", code_id.simple(), random_token());
        let event = Event::AuthorizationCodeIssued(AuthorizationCodeIssued {
            code_id,
            code_hash: token_hash(&code),
            client_id: req.client_id,
            user_id: req.user_id,
            browser_session_id: req.browser_session_id,
            redirect_uri: req.redirect_uri,
            scope: req.scope,
            nonce: req.nonce,
            code_challenge: req.code_challenge,
            auth_time: req.auth_time,
            amr: req.amr,
            expires_at: self.now() + self.config.authorization_code_ttl.as_secs() as i64,
        });
        let ctx = ctx.clone().as_user(req.user_id);
        self.append(&ctx, &stream(CODE_CATEGORY, code_id)?, ExpectedVersion::NoStream, &[event]).await?;
        metrics::counter!("perfect21_token_operations_total", "operation" => "issue_code", "outcome" => "issued")
            .increment(1);
        Ok(code)
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3) for a new session of the
    /// client. The code must be the client's, for the same redirect URI, unexpired,
    /// never redeemed, and match its PKCE challenge. A second redemption revokes the
    /// session the first one started (RFC 6749 §4.1.2).
    #[tracing::instrument(name = "command", skip_all, fields(command = "redeem_authorization_code"))]
    pub async fn redeem_authorization_code(
        &self,
        ctx: &RequestContext,
        client_id: Uuid,
        code: &str,
        redirect_uri: &str,
        code_verifier: Option<&str>,
    ) -> Result<RedeemedCode> {
        let bad = || DomainError::InvalidToken { what: "authorization code" };
        let code_id = crate::secrets::token_id(code).ok_or_else(bad)?;
        let s = stream(CODE_CATEGORY, code_id)?;
        let state: AuthorizationCodeState = self.load(&s).await?;
        let Some(issued) = state.issued.clone() else {
            return Err(bad());
        };
        if !constant_time_eq(&issued.code_hash, &token_hash(code)) {
            return Err(bad());
        }
        let ctx = &ctx.clone().as_user(issued.user_id);
        if let Some(redeemed) = &state.redeemed {
            self.code_replayed(ctx, redeemed).await?;
            return Err(bad());
        }
        if issued.client_id != client_id || issued.redirect_uri != redirect_uri || issued.expires_at <= self.now() {
            return Err(bad());
        }
        match (&issued.code_challenge, code_verifier) {
            (Some(challenge), Some(verifier)) if valid_pkce_value(verifier) => {
                if !constant_time_eq(challenge, &pkce_challenge(verifier)) {
                    return Err(bad());
                }
            }
            (None, None) => {}
            _ => return Err(bad()),
        }
        let user: UserState = self.load(&stream("user", issued.user_id)?).await?;
        if !user.exists
            || user.is_deleted()
            || matches!(user.status, Some(UserStatus::Locked | UserStatus::Suspended | UserStatus::Deleted))
        {
            return Err(bad());
        }
        let session_id = Uuid::now_v7();
        let redeemed = Event::AuthorizationCodeRedeemed(AuthorizationCodeRedeemed {
            code_id,
            client_id,
            user_id: issued.user_id,
            session_id,
            browser_session_id: issued.browser_session_id,
            scope: issued.scope.clone(),
            auth_time: issued.auth_time,
            amr: issued.amr.clone(),
        });
        match self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[redeemed]).await {
            Ok(_) => {}
            Err(DomainError::Conflict { .. }) => {
                // Another redemption won the race: this one is the replay.
                let now: AuthorizationCodeState = self.load(&s).await?;
                if let Some(first) = &now.redeemed {
                    self.code_replayed(ctx, first).await?;
                }
                return Err(bad());
            }
            Err(e) => return Err(e),
        }
        let mfa_used = issued.amr.iter().any(|m| m == "otp");
        let grant = self.start_session(ctx, issued.user_id, session_id, 0.0, mfa_used, None).await?;
        metrics::counter!("perfect21_token_operations_total", "operation" => "redeem_code", "outcome" => "redeemed")
            .increment(1);
        Ok(RedeemedCode { grant, issued })
    }

    async fn code_replayed(&self, ctx: &RequestContext, first: &AuthorizationCodeRedeemed) -> Result<()> {
        metrics::counter!("perfect21_token_operations_total", "operation" => "redeem_code", "outcome" => "replayed")
            .increment(1);
        let session = stream("session", first.session_id)?;
        let state: crate::state::SessionState = self.load(&session).await?;
        let mut events = Vec::new();
        if state.exists() && !state.ended {
            events.push(Event::SessionRevoked(SessionRevoked {
                session_id: first.session_id,
                user_id: first.user_id,
                reason: "authorization_code_replay".into(),
            }));
        }
        events.push(crate::auth::alert(
            first.user_id,
            "authorization_code_replay",
            Severity::High,
            "An authorization code was used twice; the tokens issued from it were revoked".into(),
            vec![("client_id".into(), first.client_id.to_string())],
        ));
        let expected = ExpectedVersion::from_current(state.version);
        match self.append(ctx, &session, expected, &events).await {
            Ok(_) | Err(DomainError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Ends a browser (single sign-on) session and every client session started from
    /// it: RP-initiated logout. Returns the last position written.
    #[tracing::instrument(name = "command", skip_all, fields(command = "end_browser_session"))]
    pub async fn end_browser_session(&self, ctx: &RequestContext, browser_session: Uuid) -> Result<u64> {
        // Client sessions may have started through another replica: read up to the log's head.
        let head = self.store.head_position().await?;
        let children =
            self.read(Some(head.max(self.last_write())), |m| m.sessions.children_of(browser_session)).await?;
        let mut last = 0;
        for child in children {
            match self.revoke_session(ctx, child, "logout").await {
                Ok(p) => last = last.max(p),
                Err(
                    DomainError::FailedPrecondition(_) | DomainError::Conflict { .. } | DomainError::NotFound { .. },
                ) => {}
                Err(e) => return Err(e),
            }
        }
        match self.logout(ctx, browser_session).await {
            Ok(p) => Ok(last.max(p)),
            Err(DomainError::FailedPrecondition(_) | DomainError::NotFound { .. }) => Ok(last),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_the_documented_pattern_and_parse() {
        for ok in [
            "https://app.example.com/cb",
            "https://wiki.example.com/cb?",
            "https://a-b.example:8443/x/y?state=1&z=%41",
            "http://127.0.0.1:65535/callback",
            "http://localhost",
            "http://[::1]:3000/cb",
            "com.example.app:/oauth",
        ] {
            check_redirect_uri("redirect_uris", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "https://wiki.example.com/cb#frag",
            "http://wiki.example.com/cb",
            "https://user@app.example.com/cb",
            "https://app.example.com:65536/cb",
            "https://app.1/cb",
            "https://app.example.com/a b",
            "javascript:alert(1)",
            "app:/cb",
            "",
        ] {
            assert!(check_redirect_uri("redirect_uris", bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn a_grant_type_or_scope_listed_twice_is_refused() {
        let settings = |grants: &[&str], scopes: &[&str]| ClientSettings {
            redirect_uris: vec!["https://app.example.com/cb".into()],
            post_logout_redirect_uris: vec![],
            grant_types: grants.iter().map(|g| g.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            id_token_signed_response_alg: DEFAULT_ID_TOKEN_ALG.into(),
        };
        check_settings(&settings(&["authorization_code", "refresh_token"], &["openid", "email"])).unwrap();
        let twice = check_settings(&settings(&["authorization_code", "authorization_code"], &["openid"]));
        assert!(twice.unwrap_err().to_string().contains("listed twice"));
        let twice = check_settings(&settings(&["authorization_code"], &["openid", "openid"]));
        assert!(twice.unwrap_err().to_string().contains("listed twice"));
    }
}
