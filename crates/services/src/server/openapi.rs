//! The OpenAPI 3.1 document of the REST API, served at `/api/v1/openapi.json`.
//! `tests/e2e_serve.rs` calls every operation listed here against a running
//! server, so a route that disappears from the router fails the build.

use super::access::Rule;
use serde_json::{json, Value};

/// (method, path, summary, request body schema). Who may call each is in the
/// access table ([`super::access::REST`]); the document states it per operation.
type Operation = (&'static str, &'static str, &'static str, Option<Value>);

fn obj(required: &[&str], props: &[(&str, &str)]) -> Value {
    let properties: serde_json::Map<String, Value> =
        props.iter().map(|(name, ty)| (name.to_string(), json!({ "type": ty }))).collect();
    json!({"type": "object", "required": required, "properties": properties})
}

/// Every REST operation.
pub fn operations() -> Vec<Operation> {
    vec![
        (
            "post",
            "/api/v1/auth/register",
            "Register a user (email and username must be unused)",
            Some(obj(
                &["email", "username", "password"],
                &[
                    ("email", "string"),
                    ("username", "string"),
                    ("password", "string"),
                    ("first_name", "string"),
                    ("last_name", "string"),
                    ("phone_number", "string"),
                    ("locale", "string"),
                ],
            )),
        ),
        (
            "post",
            "/api/v1/auth/verify-email",
            "Verify an email address with the single-use token",
            Some(obj(&["token"], &[("token", "string")])),
        ),
        (
            "post",
            "/api/v1/auth/login",
            "Log in (send mfa_code when the answer says mfa required)",
            Some(obj(
                &["identifier", "password"],
                &[("identifier", "string"), ("password", "string"), ("mfa_code", "string"), ("device_id", "string")],
            )),
        ),
        (
            "post",
            "/api/v1/auth/refresh",
            "Rotate a refresh token",
            Some(obj(&["refresh_token"], &[("refresh_token", "string")])),
        ),
        ("post", "/api/v1/auth/logout", "End the caller's session", None),
        (
            "post",
            "/api/v1/auth/validate",
            "Validate an access token (signature, expiry, revocation, user status)",
            Some(obj(&["token"], &[("token", "string")])),
        ),
        ("post", "/api/v1/auth/revoke", "Revoke the caller's access token", None),
        (
            "post",
            "/api/v1/auth/mfa/enroll",
            "Start TOTP enrollment (needs the current password; the enrollment expires after 10 minutes)",
            Some(obj(&["password"], &[("password", "string")])),
        ),
        (
            "post",
            "/api/v1/auth/mfa/confirm",
            "Confirm TOTP enrollment with a first code; returns recovery codes",
            Some(obj(
                &["enrollment_token", "code", "password"],
                &[("enrollment_token", "string"), ("code", "string"), ("password", "string")],
            )),
        ),
        (
            "post",
            "/api/v1/auth/mfa/disable",
            "Turn TOTP off (needs the password)",
            Some(obj(&["password"], &[("password", "string")])),
        ),
        ("get", "/api/v1/sessions", "The caller's active sessions", None),
        (
            "delete",
            "/api/v1/sessions/{id}",
            "Revoke a session (another user's needs perfect21.sessions:revoke)",
            None,
        ),
        ("get", "/api/v1/users/me", "The caller", None),
        ("get", "/api/v1/users/{id}", "A user (another user's needs perfect21.users:read)", None),
        ("get", "/api/v1/permissions/users/{id}", "A user's effective permissions and roles", None),
        (
            "post",
            "/api/v1/permissions/check",
            "Check a permission: allowed, reason, applied policies",
            Some(obj(
                &["user_id", "resource", "action"],
                &[("user_id", "string"), ("resource", "string"), ("action", "string"), ("scope", "string")],
            )),
        ),
        (
            "post",
            "/api/v1/roles",
            "Create a role (perfect21.roles:create)",
            Some(obj(
                &["role_id"],
                &[
                    ("role_id", "string"),
                    ("display_name", "string"),
                    ("description", "string"),
                    ("priority", "integer"),
                ],
            )),
        ),
        (
            "post",
            "/api/v1/roles/{id}/permissions",
            "Grant a permission to a role (perfect21.roles:update)",
            Some(obj(
                &["id", "resource", "action", "scope"],
                &[
                    ("id", "string"),
                    ("resource", "string"),
                    ("action", "string"),
                    ("scope", "string"),
                    ("name", "string"),
                    ("description", "string"),
                ],
            )),
        ),
        (
            "post",
            "/api/v1/users/{id}/roles",
            "Assign a role to a user (perfect21.roles:assign)",
            Some(obj(&["role_id"], &[("role_id", "string"), ("expires_at", "integer")])),
        ),
        ("delete", "/api/v1/users/{id}/roles/{role}", "Revoke a role from a user (perfect21.roles:assign)", None),
        (
            "get",
            "/api/v1/audit/users/{id}",
            "A user's security history (perfect21.audit:read); id, email or username",
            None,
        ),
        (
            "get",
            "/api/v1/ws",
            "WebSocket: the caller's own events, pushed (Bearer header or access_token query)",
            None,
        ),
        ("get", "/api/v1/openapi.json", "This document", None),
        ("get", "/.well-known/jwks.json", "Public keys of access tokens (JWKS)", None),
        ("get", "/healthz", "Liveness", None),
        ("get", "/metrics", "Prometheus metrics", None),
        ("get", "/readyz", "Readiness: store reachable, read models caught up, broker connected", None),
        ("get", "/status", "Log head, read-model checkpoint and lag, relay confirmed position and lag", None),
        (
            "post",
            "/oauth2/token",
            "OAuth 2.0 token endpoint (RFC 6749): grant_type=client_credentials, authorization_code or refresh_token; client_secret_basic, client_secret_post or none (public clients, with PKCE); form-urlencoded",
            None,
        ),
        ("get", "/verify-email", "HTML page of the welcome email's link: shows a button that confirms (query: token)", None),
        ("post", "/verify-email", "HTML form target: verifies the address (form field: token)", None),
        ("get", "/assets/perfect21.css", "Stylesheet of the HTML pages", None),
        ("get", "/api/v1/service-accounts", "List service accounts and their roles", None),
        (
            "post",
            "/api/v1/service-accounts",
            "Create a service account; the answer holds its client secret, shown once",
            Some(obj(&["name"], &[("name", "string"), ("description", "string"), ("roles", "array")])),
        ),
        (
            "post",
            "/api/v1/service-accounts/{id}/secret",
            "Rotate a service account's secret (the old one stops working)",
            None,
        ),
        (
            "post",
            "/api/v1/service-accounts/{id}/disable",
            "Disable a service account (its tokens stop validating)",
            Some(obj(&[], &[("reason", "string")])),
        ),
        ("delete", "/api/v1/service-accounts/{id}", "Delete a service account", None),
        ("get", "/api/v1/users/{id}/export", "Everything held about a user (right of access): record, sessions, roles, permissions, history", None),
        ("get", "/api/v1/clients", "List OpenID Connect clients", None),
        ("post", "/api/v1/clients", "Register an OpenID Connect client; a confidential one's secret is in the answer, shown once", Some(client_body())),
        ("put", "/api/v1/clients/{id}", "Replace a client's name and settings", Some(client_body())),
        ("delete", "/api/v1/clients/{id}", "Delete a client", None),
        ("post", "/api/v1/clients/{id}/secret", "Rotate a confidential client's secret (the old one stops working)", None),
        ("get", "/.well-known/openid-configuration", "OpenID Connect discovery document", None),
        ("get", "/oauth2/authorize", "OpenID Connect authorization endpoint: the login page, or a redirect to the client (HTML)", None),
        ("post", "/oauth2/authorize", "Login form target: password step or second-factor step (HTML form)", None),
        ("get", "/oauth2/userinfo", "OpenID Connect userinfo: claims of the token's user, by granted scope", None),
        ("post", "/oauth2/userinfo", "OpenID Connect userinfo (POST)", None),
        ("post", "/oauth2/introspect", "Token introspection (RFC 7662); client authentication; form-urlencoded", None),
        ("post", "/oauth2/revoke", "Token revocation (RFC 7009); client authentication; form-urlencoded", None),
        ("get", "/oauth2/logout", "RP-initiated logout (id_token_hint, post_logout_redirect_uri, state) (HTML)", None),
        ("post", "/oauth2/logout", "Logout confirmation form target (HTML form)", None),
    ]
}

fn client_body() -> Value {
    obj(
        &["name", "redirect_uris"],
        &[
            ("name", "string"),
            ("client_type", "string"),
            ("redirect_uris", "array"),
            ("post_logout_redirect_uris", "array"),
            ("grant_types", "array"),
            ("scopes", "array"),
            ("id_token_signed_response_alg", "string"),
        ],
    )
}

/// Who may call an operation, in words.
pub fn describe(rule: Rule) -> String {
    match rule {
        Rule::Public => "public".into(),
        Rule::User => "a signed-in user, about themselves".into(),
        Rule::SelfOr(p) => format!("a user about themselves, or a caller holding {p}"),
        Rule::Needs(p) => format!("a caller holding {p}"),
        Rule::ServiceOnly(p) => format!("a service account holding {p}"),
    }
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, body) in operations() {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "success", "content": {"application/json": {}}},
                "default": {"description": "error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
            },
        });
        if let Some(schema) = body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        match super::access::rest_rule(&method.to_uppercase(), path) {
            Some(Rule::Public) => op["x-access"] = json!("public"),
            Some(rule) => {
                op["security"] = json!([{"bearer": []}]);
                op["x-access"] = json!(describe(rule));
                op["responses"]["401"] = json!({"description": "no or an invalid access token", "content": {"application/problem+json": {}}});
                op["responses"]["403"] = json!({"description": "the caller lacks the permission named", "content": {"application/problem+json": {}}});
            }
            None => op["x-access"] = json!("no access rule: refused"),
        }
        paths.entry(path.to_string()).or_insert_with(|| json!({}))[method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "perfect21", "version": env!("CARGO_PKG_VERSION"), "description": "Event-sourced identity backend. Reads accept x-consistency-token; writes answer one."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Problem": obj(&["type", "title", "status", "detail"], &[("type", "string"), ("title", "string"), ("status", "integer"), ("detail", "string")])},
        },
    })
}
