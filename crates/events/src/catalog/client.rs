//! Payloads of `client.*` and `authorization_code.*` events: the OAuth 2.0 /
//! OpenID Connect relying parties ("clients") that sign users in through
//! perfect21, and the authorization codes issued to them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a client may do; replaced as a whole by `client.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientSettings {
    /// Exact-match redirect URIs of the authorization code flow.
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the browser afterwards (exact match).
    pub post_logout_redirect_uris: Vec<String>,
    /// `authorization_code`, `refresh_token` (machine clients are service accounts).
    pub grant_types: Vec<String>,
    /// Scopes the client may ask for, e.g. `openid profile email`.
    pub scopes: Vec<String>,
    /// `RS256`, `ES256` or `EdDSA`.
    pub id_token_signed_response_alg: String,
}

/// `client.registered` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRegistered {
    /// The OAuth 2.0 `client_id`.
    pub client_id: Uuid,
    pub name: String,
    /// Confidential clients authenticate with a secret; public clients (browser and
    /// native apps) cannot keep one and must use PKCE.
    pub confidential: bool,
    /// SHA-256 (hex) of the client secret; empty for a public client. The secret is shown once.
    pub secret_hash: String,
    pub settings: ClientSettings,
}

/// `client.updated` v1: new name and settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientUpdated {
    pub client_id: Uuid,
    pub name: String,
    pub settings: ClientSettings,
}

/// `client.secret_rotated` v1: the old secret stops working at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientSecretRotated {
    pub client_id: Uuid,
    pub secret_hash: String,
}

/// `client.deleted` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientDeleted {
    pub client_id: Uuid,
}

/// `authorization_code.issued` v1: a signed-in browser was sent back to a client with a code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationCodeIssued {
    pub code_id: Uuid,
    /// SHA-256 (hex) of the code; the code itself only travels to the client.
    pub code_hash: String,
    pub client_id: Uuid,
    pub user_id: Uuid,
    /// The browser's single sign-on session the code comes from.
    pub browser_session_id: Uuid,
    pub redirect_uri: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    pub nonce: Option<String>,
    /// PKCE S256 code challenge, when the client sent one.
    pub code_challenge: Option<String>,
    /// When the user last authenticated (Unix seconds).
    pub auth_time: i64,
    /// Authentication methods: `pwd`, `otp`.
    pub amr: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// `authorization_code.redeemed` v1: the code was exchanged at the token endpoint,
/// starting the client's own session (`session_id`, a child of the browser session).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationCodeRedeemed {
    pub code_id: Uuid,
    pub client_id: Uuid,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub browser_session_id: Uuid,
    /// What the code granted, carried by the client's session (and its refreshes).
    pub scope: String,
    pub auth_time: i64,
    pub amr: Vec<String>,
}
