//! The OpenAPI 3.1 document of the REST API, served at `/api/v1/openapi.json`.
//!
//! Paths, parameters, bodies and answers come from each handler's `#[utoipa::path]`
//! and from the types it takes and returns (`ToSchema`, `IntoParams`); the router
//! ([`super::rest::router`]) registers the same handlers, so the document names
//! exactly the routes served. Who may call each operation comes from the access table
//! ([`super::access::REST`]), added here in one place.

use super::access::Rule;
use serde_json::{json, Value};
use utoipa::openapi::security::{
    AuthorizationCode, ClientCredentials, Flow, HttpAuthScheme, HttpBuilder, OAuth2, Scopes, SecurityScheme,
};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};
use utoipa::PartialSchema;

/// The document before any route is added: title, version, security schemes, shared schemas.
pub fn base() -> OpenApi {
    let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
    let basic = HttpBuilder::new()
        .scheme(HttpAuthScheme::Basic)
        .description(Some("client_secret_basic: a client's id and secret (RFC 6749 §2.3.1)"))
        .build();
    let flows = [
        Flow::ClientCredentials(ClientCredentials::new("/oauth2/token", Scopes::new())),
        Flow::AuthorizationCode(AuthorizationCode::new(
            "/oauth2/authorize",
            "/oauth2/token",
            Scopes::from_iter([
                ("openid", "sign in"),
                ("profile", "name and locale"),
                ("email", "email address"),
                ("phone", "phone number"),
                ("offline_access", "a refresh token"),
            ]),
        )),
    ];
    let components = ComponentsBuilder::new()
        .security_scheme("bearer", SecurityScheme::Http(bearer))
        .security_scheme("client_basic", SecurityScheme::Http(basic))
        .security_scheme("oauth2", SecurityScheme::OAuth2(OAuth2::new(flows)))
        .schema("Problem", super::rest::ProblemBody::schema())
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("perfect21")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Event-sourced identity backend. Reads accept x-consistency-token; writes answer one. \
                     Errors are RFC 9457 problems (application/problem+json), except on the OAuth 2.0 \
                     endpoints (RFC 6749 §5.2 JSON) and the HTML pages.",
                ))
                .build(),
        )
        .components(Some(components))
        .build()
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

/// Adds to a response the problem content, keeping what the handler declared (and
/// its description, if it has one).
fn add_problem(responses: &mut Value, status: &str, description: &str) {
    let entry = &mut responses[status];
    if entry.is_null() {
        *entry = json!({ "description": description });
    }
    entry["content"]["application/problem+json"] = json!({"schema": {"$ref": "#/components/schemas/Problem"}});
}

/// The served document: `generated` with each operation's access rule (`x-access`, its
/// security requirement and the 401/403 answers of the access middleware) and, on the
/// JSON API, the problem answer of every other error.
pub fn finish(generated: OpenApi) -> Value {
    let mut doc = serde_json::to_value(generated).unwrap_or(Value::Null);
    let Some(paths) = doc["paths"].as_object_mut() else { return doc };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            if !op.is_object() {
                continue;
            }
            match super::access::rest_rule(&method.to_uppercase(), path) {
                Some(Rule::Public) => op["x-access"] = json!("public"),
                Some(rule) => {
                    op["security"] = json!([{"bearer": []}]);
                    op["x-access"] = json!(describe(rule));
                    add_problem(&mut op["responses"], "401", "no or an invalid access token");
                    add_problem(&mut op["responses"], "403", "the caller lacks the permission named");
                }
                None => op["x-access"] = json!("no access rule: refused"),
            }
            if path.starts_with("/api/") {
                add_problem(&mut op["responses"], "default", "error");
            }
        }
    }
    doc
}
