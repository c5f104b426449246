//! The OpenAPI 3.1 document of the REST API, served at `/api/v1/openapi.json`.
//! `tests/e2e_serve.rs` calls every operation listed here against a running
//! server, so a route that disappears from the router fails the build.

use serde_json::{json, Value};

/// (method, path, summary, request body schema, needs a bearer token)
type Operation = (&'static str, &'static str, &'static str, Option<Value>, bool);

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
            false,
        ),
        (
            "post",
            "/api/v1/auth/verify-email",
            "Verify an email address with the single-use token",
            Some(obj(&["token"], &[("token", "string")])),
            false,
        ),
        (
            "post",
            "/api/v1/auth/login",
            "Log in (send mfa_code when the answer says mfa required)",
            Some(obj(
                &["identifier", "password"],
                &[("identifier", "string"), ("password", "string"), ("mfa_code", "string"), ("device_id", "string")],
            )),
            false,
        ),
        (
            "post",
            "/api/v1/auth/refresh",
            "Rotate a refresh token",
            Some(obj(&["refresh_token"], &[("refresh_token", "string")])),
            false,
        ),
        ("post", "/api/v1/auth/logout", "End the caller's session", None, true),
        (
            "post",
            "/api/v1/auth/validate",
            "Validate an access token (signature, expiry, revocation, user status)",
            Some(obj(&["token"], &[("token", "string")])),
            false,
        ),
        ("post", "/api/v1/auth/revoke", "Revoke the caller's access token", None, true),
        ("post", "/api/v1/auth/mfa/enroll", "Start TOTP enrollment", None, true),
        (
            "post",
            "/api/v1/auth/mfa/confirm",
            "Confirm TOTP enrollment with a first code; returns recovery codes",
            Some(obj(&["enrollment_token", "code"], &[("enrollment_token", "string"), ("code", "string")])),
            true,
        ),
        (
            "post",
            "/api/v1/auth/mfa/disable",
            "Turn TOTP off (needs the password)",
            Some(obj(&["password"], &[("password", "string")])),
            true,
        ),
        ("get", "/api/v1/sessions", "The caller's active sessions", None, true),
        (
            "delete",
            "/api/v1/sessions/{id}",
            "Revoke a session (another user's needs perfect21.sessions:revoke)",
            None,
            true,
        ),
        ("get", "/api/v1/users/me", "The caller", None, true),
        ("get", "/api/v1/users/{id}", "A user (another user's needs perfect21.users:read)", None, true),
        ("get", "/api/v1/permissions/users/{id}", "A user's effective permissions and roles", None, true),
        (
            "post",
            "/api/v1/permissions/check",
            "Check a permission: allowed, reason, applied policies",
            Some(obj(
                &["user_id", "resource", "action"],
                &[("user_id", "string"), ("resource", "string"), ("action", "string"), ("scope", "string")],
            )),
            false,
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
            true,
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
            true,
        ),
        (
            "post",
            "/api/v1/users/{id}/roles",
            "Assign a role to a user (perfect21.roles:assign)",
            Some(obj(&["role_id"], &[("role_id", "string"), ("expires_at", "integer")])),
            true,
        ),
        ("delete", "/api/v1/users/{id}/roles/{role}", "Revoke a role from a user (perfect21.roles:assign)", None, true),
        (
            "get",
            "/api/v1/audit/users/{id}",
            "A user's security history (perfect21.audit:read); id, email or username",
            None,
            true,
        ),
        (
            "get",
            "/api/v1/ws",
            "WebSocket: the caller's own events, pushed (Bearer header or access_token query)",
            None,
            true,
        ),
        ("get", "/api/v1/openapi.json", "This document", None, false),
        ("get", "/.well-known/jwks.json", "Public keys of access tokens (JWKS)", None, false),
        ("get", "/healthz", "Liveness", None, false),
        ("get", "/metrics", "Prometheus metrics", None, false),
        ("get", "/readyz", "Readiness: store reachable, read models caught up, broker connected", None, false),
        ("get", "/status", "Log head, read-model checkpoint and lag, relay confirmed position and lag", None, false),
    ]
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, body, auth) in operations() {
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
        if auth {
            op["security"] = json!([{"bearer": []}]);
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
