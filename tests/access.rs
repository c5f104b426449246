//! The trust boundary, method by method: every gRPC method and every REST route
//! is called as an anonymous caller, with a forged token, as a user without
//! permissions acting on someone else and on themselves, as a service account
//! without roles, as one with a role, and as an administrator — and each answers
//! as its access rule says. The rules are restated here, independently of the
//! server's own table, so a change to who may call what fails this test until
//! it is made on purpose.

mod common;

use common::serve::{client_token, create_service_account, gateway_token, login, register, start, Server};
use perfect21_proto::{account, admin, auth, events, permission, user};
use prost::Message;
use serde_json::{json, Value};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Who may call a method (the server's `access` table, restated).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    Public,
    User,
    SelfOr,
    Needs,
    ServiceOnly,
}

/// Passes protobuf bytes through unchanged, so one client calls every method.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// What a request is about: a user (its id and tokens), for methods that name one.
struct Target {
    user_id: String,
    access_token: String,
    refresh_token: String,
    session_id: String,
}

type Body = fn(&Target) -> Vec<u8>;

fn grpc_methods() -> Vec<(&'static str, Rule, Body)> {
    use Rule::*;
    vec![
        ("/grpc.health.v1.Health/Check", Public, |_| {
            tonic_health::pb::HealthCheckRequest { service: String::new() }.encode_to_vec()
        }),
        ("/perfect21.auth.AuthService/ValidateToken", SelfOr, |t| {
            auth::ValidateTokenRequest { token: t.access_token.clone(), ..Default::default() }.encode_to_vec()
        }),
        ("/perfect21.auth.AuthService/BatchValidateTokens", Needs, |t| {
            auth::BatchValidateTokensRequest { tokens: vec![t.access_token.clone()], ..Default::default() }
                .encode_to_vec()
        }),
        ("/perfect21.auth.AuthService/RefreshToken", Public, |t| {
            auth::RefreshTokenRequest { refresh_token: t.refresh_token.clone(), ..Default::default() }.encode_to_vec()
        }),
        ("/perfect21.auth.AuthService/RevokeToken", SelfOr, |t| {
            auth::RevokeTokenRequest { token: t.access_token.clone(), reason: "matrix".into() }.encode_to_vec()
        }),
        ("/perfect21.auth.AuthService/ValidateCredentials", ServiceOnly, |_| {
            auth::ValidateCredentialsRequest {
                identifier: "nobody".into(),
                password: "wrong password".into(),
                client_ip: "198.51.100.7".into(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
        ("/perfect21.user.UserService/GetUser", SelfOr, |t| {
            user::GetUserRequest {
                identifier: Some(user::get_user_request::Identifier::UserId(t.user_id.clone())),
                fields: vec![],
            }
            .encode_to_vec()
        }),
        ("/perfect21.user.UserService/BatchGetUsers", SelfOr, |t| {
            user::BatchGetUsersRequest { user_ids: vec![t.user_id.clone()], fields: vec![] }.encode_to_vec()
        }),
        ("/perfect21.user.UserService/VerifyPassword", Needs, |t| {
            user::VerifyPasswordRequest { user_id: t.user_id.clone(), password: "guess".into() }.encode_to_vec()
        }),
        ("/perfect21.user.UserService/UpdateUserStatus", Needs, |t| {
            user::UpdateUserStatusRequest { user_id: t.user_id.clone(), status: 1, reason: "matrix".into() }
                .encode_to_vec()
        }),
        ("/perfect21.user.UserService/RecordLoginHistory", ServiceOnly, |t| {
            user::RecordLoginHistoryRequest {
                user_id: t.user_id.clone(),
                success: true,
                client_ip: "198.51.100.7".into(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
        ("/perfect21.permission.PermissionService/CheckPermission", SelfOr, |t| {
            permission::CheckPermissionRequest {
                user_id: t.user_id.clone(),
                resource: "docs".into(),
                action: "read".into(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
        ("/perfect21.permission.PermissionService/BatchCheckPermissions", SelfOr, |t| {
            permission::BatchCheckPermissionsRequest {
                checks: vec![permission::CheckPermissionRequest {
                    user_id: t.user_id.clone(),
                    resource: "docs".into(),
                    action: "read".into(),
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        }),
        ("/perfect21.permission.PermissionService/GetUserPermissions", SelfOr, |t| {
            permission::GetUserPermissionsRequest { user_id: t.user_id.clone() }.encode_to_vec()
        }),
        ("/perfect21.permission.PermissionService/GetUserRoles", SelfOr, |t| {
            permission::GetUserRolesRequest { user_id: t.user_id.clone() }.encode_to_vec()
        }),
        ("/perfect21.account.AccountService/Register", Public, |_| {
            let n = uuid::Uuid::now_v7().simple().to_string();
            account::RegisterRequest {
                email: format!("m{}@example.com", &n[20..]),
                username: format!("m{}", &n[20..]),
                password: "matrix password".into(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
        ("/perfect21.account.AccountService/VerifyEmail", Public, |_| {
            account::VerifyEmailRequest { token: "not-a-token".into() }.encode_to_vec()
        }),
        ("/perfect21.account.AccountService/Logout", User, |_| account::LogoutRequest {}.encode_to_vec()),
        ("/perfect21.account.AccountService/ListSessions", User, |_| account::ListSessionsRequest {}.encode_to_vec()),
        ("/perfect21.account.AccountService/RevokeSession", SelfOr, |t| {
            account::RevokeSessionRequest { session_id: t.session_id.clone(), reason: "matrix".into() }.encode_to_vec()
        }),
        ("/perfect21.account.AccountService/RevokeAllSessions", SelfOr, |t| {
            account::RevokeAllSessionsRequest { user_id: t.user_id.clone(), reason: "matrix".into() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/CreateRole", Needs, |_| {
            let n = uuid::Uuid::now_v7().simple().to_string();
            admin::RoleRequest { role_id: format!("m{}", &n[20..]), ..Default::default() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/UpdateRole", Needs, |_| {
            admin::RoleRequest { role_id: "no-such-role".into(), ..Default::default() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/DeleteRole", Needs, |_| {
            admin::DeleteRoleRequest { role_id: "no-such-role".into() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/GrantRolePermission", Needs, |_| {
            admin::RolePermissionRequest { role_id: "no-such-role".into(), permission: None }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/RevokeRolePermission", Needs, |_| {
            admin::RevokeRolePermissionRequest { role_id: "no-such-role".into(), permission_id: "x".into() }
                .encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/AssignRole", Needs, |t| {
            admin::AssignRoleRequest { user_id: t.user_id.clone(), role_id: "no-such-role".into(), expires_at: 0 }
                .encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/RevokeRole", Needs, |t| {
            admin::RevokeRoleRequest { user_id: t.user_id.clone(), role_id: "no-such-role".into() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/GrantPermission", Needs, |t| {
            admin::UserPermissionRequest { user_id: t.user_id.clone(), permission: None }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/RevokePermission", Needs, |t| {
            admin::RevokeUserPermissionRequest { user_id: t.user_id.clone(), permission_id: "x".into() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/GetAuditTrail", Needs, |t| {
            admin::AuditTrailRequest { user: t.user_id.clone(), ..Default::default() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/CreateServiceAccount", Needs, |_| {
            let n = uuid::Uuid::now_v7().simple().to_string();
            admin::CreateServiceAccountRequest { name: format!("m{}", &n[20..]), ..Default::default() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/ListServiceAccounts", Needs, |_| {
            admin::ListServiceAccountsRequest {}.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/RotateServiceAccountSecret", Needs, |_| {
            admin::ServiceAccountRef { client_id: uuid::Uuid::nil().to_string() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/DisableServiceAccount", Needs, |_| {
            admin::DisableServiceAccountRequest { client_id: uuid::Uuid::nil().to_string(), reason: String::new() }
                .encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/DeleteServiceAccount", Needs, |_| {
            admin::ServiceAccountRef { client_id: uuid::Uuid::nil().to_string() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/RegisterClient", Needs, |_| {
            let redirect_uris = vec!["https://app.example.com/cb".into()];
            admin::ClientRequest { name: "matrix".into(), redirect_uris, ..Default::default() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/ListClients", Needs, |_| admin::ListClientsRequest {}.encode_to_vec()),
        ("/perfect21.admin.AdminService/UpdateClient", Needs, |_| {
            admin::ClientRequest { client_id: uuid::Uuid::nil().to_string(), ..Default::default() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/RotateClientSecret", Needs, |_| {
            admin::ClientRef { client_id: uuid::Uuid::nil().to_string() }.encode_to_vec()
        }),
        ("/perfect21.admin.AdminService/DeleteClient", Needs, |_| {
            admin::ClientRef { client_id: uuid::Uuid::nil().to_string() }.encode_to_vec()
        }),
        ("/perfect21.events.EventService/Subscribe", Needs, |_| {
            events::SubscribeRequest { from_position: 1, type_prefixes: vec![] }.encode_to_vec()
        }),
    ]
}

/// Methods with no request of their own to build here (streaming the standard services).
const ALSO_PUBLIC: &[&str] = &[
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

async fn call(channel: &tonic::transport::Channel, path: &str, body: Vec<u8>, token: Option<&str>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(body);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    let result = if path.path().ends_with("/Subscribe") {
        grpc.server_streaming(req, path, Raw).await.map(|_| ())
    } else {
        grpc.unary(req, path, Raw).await.map(|_| ())
    };
    result.err().unwrap_or_else(|| Status::ok(""))
}

/// Sends one message on a bidirectional stream: the status the stream ends with, and
/// how many replies came before it.
async fn call_streaming(channel: &tonic::transport::Channel, path: &str, body: Vec<u8>) -> (Status, usize) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    let request = tonic::Request::new(tokio_stream::once(body));
    let mut stream = match grpc.streaming(request, path, Raw).await {
        Ok(response) => response.into_inner(),
        Err(s) => return (s, 0),
    };
    let mut replies = 0;
    loop {
        match stream.message().await {
            Ok(Some(_)) => replies += 1,
            Ok(None) => return (Status::ok(""), replies),
            Err(s) => return (s, replies),
        }
    }
}

/// Refused by the access layer (rather than answered by the method).
fn refused(s: &Status) -> bool {
    matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied)
}

/// A public method answers whatever its input deserves (a stale refresh token is
/// UNAUTHENTICATED), but the access layer never asks for a token.
fn public_ok(s: &Status) -> bool {
    s.code() != Code::PermissionDenied && !s.message().contains("authorization: Bearer")
}

/// A fresh login of `who` (each call may end the session it uses).
async fn target(http: &reqwest::Client, server: &Server, who: &str, user_id: &str) -> Target {
    let l = login(http, server, who, "matrix password").await;
    Target {
        user_id: user_id.to_string(),
        access_token: l["access_token"].as_str().unwrap().to_string(),
        refresh_token: l["refresh_token"].as_str().unwrap().to_string(),
        session_id: l["session_id"].as_str().unwrap().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_method_answers_as_its_access_rule_says() {
    let server = start();
    let http = reqwest::Client::new();
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let eve_id = register(&http, &server, "eve", "matrix password").await;
    let ada_id = register(&http, &server, "ada", "matrix password").await;
    let mallory_id = register(&http, &server, "mallory", "matrix password").await;
    let gateway = gateway_token(&http, &server).await;
    let (bare_id, bare_secret) = create_service_account(&server.data, "bare", &[]);
    // The server follows the log: the CLI's append reaches it shortly.
    let bare = {
        let mut token = None;
        for _ in 0..100 {
            let res = http
                .post(format!("{}/oauth2/token", server.http))
                .basic_auth(&bare_id, Some(&bare_secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap();
            if res.status().is_success() {
                token = Some(res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        token.expect("the bare service account gets a token")
    };

    // Every method the server describes is in the table above.
    let set = prost_types::FileDescriptorSet::decode(perfect21_proto::FILE_DESCRIPTOR_SET).unwrap();
    let listed: Vec<&str> = grpc_methods().iter().map(|(p, _, _)| *p).chain(ALSO_PUBLIC.iter().copied()).collect();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                assert!(listed.contains(&path.as_str()), "{path} has no expected access rule in this test");
            }
        }
    }

    for (path, rule, body) in grpc_methods() {
        let ada = target(&http, &server, "ada", &ada_id).await;
        // Anonymous, and with a forged token.
        for token in [None, Some("not-a-token")] {
            let s = call(&channel, path, body(&ada), token).await;
            if rule == Rule::Public {
                assert!(public_ok(&s), "{path} is public, but {token:?} got {s:?}");
            } else {
                assert_eq!(s.code(), Code::Unauthenticated, "{path} as {token:?}: {s:?}");
            }
        }
        // Eve, without permissions, about Ada.
        let eve = target(&http, &server, "eve", &eve_id).await;
        let s = call(&channel, path, body(&ada), Some(&eve.access_token)).await;
        match rule {
            Rule::Public => assert!(public_ok(&s), "{path}: {s:?}"),
            Rule::User => assert!(!refused(&s), "{path}: eve was refused: {s:?}"),
            Rule::SelfOr | Rule::Needs | Rule::ServiceOnly => {
                assert_eq!(s.code(), Code::PermissionDenied, "{path}: eve acting on ada: {s:?}")
            }
        }
        if rule == Rule::Needs || rule == Rule::SelfOr {
            assert!(s.message().contains("perfect21."), "{path}: the refusal names the permission: {s:?}");
        }
        // Eve about herself.
        let eve = target(&http, &server, "eve", &eve_id).await;
        let s = call(&channel, path, body(&eve), Some(&eve.access_token)).await;
        match rule {
            Rule::Public => assert!(public_ok(&s), "{path}: {s:?}"),
            Rule::User | Rule::SelfOr => assert!(!refused(&s), "{path}: eve acting on herself was refused: {s:?}"),
            Rule::Needs | Rule::ServiceOnly => assert_eq!(s.code(), Code::PermissionDenied, "{path}: {s:?}"),
        }
        // A service account without roles.
        let mallory = target(&http, &server, "mallory", &mallory_id).await;
        let s = call(&channel, path, body(&mallory), Some(&bare)).await;
        match rule {
            Rule::Public => assert!(public_ok(&s), "{path}: {s:?}"),
            _ => assert_eq!(s.code(), Code::PermissionDenied, "{path}: a service account without roles: {s:?}"),
        }
        // A service account with the admin role.
        let mallory = target(&http, &server, "mallory", &mallory_id).await;
        let s = call(&channel, path, body(&mallory), Some(&gateway)).await;
        match rule {
            Rule::Public => assert!(public_ok(&s), "{path}: {s:?}"),
            Rule::User => assert_eq!(s.code(), Code::PermissionDenied, "{path}: user-only: {s:?}"),
            _ => assert!(!refused(&s), "{path}: the gateway was refused: {s:?}"),
        }
        // An administrator (a user holding every permission).
        let mallory = target(&http, &server, "mallory", &mallory_id).await;
        let root = login_root(&http, &server).await;
        let s = call(&channel, path, body(&mallory), Some(&root)).await;
        match rule {
            Rule::ServiceOnly => {
                assert_eq!(s.code(), Code::PermissionDenied, "{path}: service accounts only, not users: {s:?}")
            }
            Rule::Public => assert!(public_ok(&s), "{path}: {s:?}"),
            _ => assert!(!refused(&s), "{path}: the administrator was refused: {s:?}"),
        }
    }
}

async fn login_root(http: &reqwest::Client, server: &Server) -> String {
    login(http, server, "root", common::serve::ROOT_PASSWORD).await["access_token"].as_str().unwrap().to_string()
}

/// (method, path with `{user}` / `{session}` placeholders, rule, JSON body)
fn rest_routes() -> Vec<(&'static str, &'static str, Rule, Value)> {
    use Rule::*;
    let none = Value::Null;
    vec![
        ("GET", "/healthz", Public, none.clone()),
        ("GET", "/readyz", Public, none.clone()),
        ("GET", "/status", Needs, none.clone()),
        ("GET", "/metrics", Needs, none.clone()),
        ("GET", "/.well-known/jwks.json", Public, none.clone()),
        ("GET", "/api/v1/openapi.json", Public, none.clone()),
        ("GET", "/verify-email?token={token}", Public, none.clone()),
        ("GET", "/assets/perfect21.css", Public, none.clone()),
        ("POST", "/api/v1/auth/login", Public, json!({"identifier": "nobody", "password": "whatever"})),
        ("POST", "/api/v1/auth/verify-email", Public, json!({"token": "x"})),
        ("POST", "/api/v1/auth/refresh", Public, json!({"refresh_token": "{refresh}"})),
        ("POST", "/api/v1/auth/logout", User, json!({})),
        ("POST", "/api/v1/auth/validate", SelfOr, json!({"token": "{token}"})),
        ("POST", "/api/v1/auth/revoke", User, json!({})),
        ("POST", "/api/v1/auth/mfa/disable", User, json!({"password": "matrix password"})),
        ("GET", "/api/v1/sessions", User, none.clone()),
        ("DELETE", "/api/v1/sessions/{session}", SelfOr, none.clone()),
        ("GET", "/api/v1/users/me", User, none.clone()),
        ("GET", "/api/v1/users/{user}", SelfOr, none.clone()),
        ("GET", "/api/v1/audit/users/{user}", Needs, none.clone()),
        ("GET", "/api/v1/users/{user}/export", SelfOr, none.clone()),
        ("GET", "/api/v1/permissions/users/{user}", SelfOr, none.clone()),
        ("POST", "/api/v1/permissions/check", SelfOr, json!({"user_id": "{user}", "resource": "docs", "action": "r"})),
        ("POST", "/api/v1/roles", Needs, json!({"role_id": "{fresh}"})),
        (
            "POST",
            "/api/v1/roles/no-such-role/permissions",
            Needs,
            json!({"id": "x", "resource": "x", "action": "x", "scope": "x"}),
        ),
        ("POST", "/api/v1/users/{user}/roles", Needs, json!({"role_id": "no-such-role"})),
        ("DELETE", "/api/v1/users/{user}/roles/no-such-role", Needs, none.clone()),
        ("GET", "/api/v1/service-accounts", Needs, none.clone()),
        ("POST", "/api/v1/service-accounts", Needs, json!({"name": "{fresh}"})),
        ("POST", "/api/v1/service-accounts/00000000-0000-0000-0000-000000000000/secret", Needs, json!({})),
        ("POST", "/api/v1/service-accounts/00000000-0000-0000-0000-000000000000/disable", Needs, json!({})),
        ("DELETE", "/api/v1/service-accounts/00000000-0000-0000-0000-000000000000", Needs, none.clone()),
        ("GET", "/api/v1/clients", Needs, none.clone()),
        ("POST", "/api/v1/clients", Needs, json!({"name": "{fresh}", "redirect_uris": ["https://app.example.com/cb"]})),
        (
            "PUT",
            "/api/v1/clients/00000000-0000-0000-0000-000000000000",
            Needs,
            json!({"name": "x", "redirect_uris": []}),
        ),
        ("DELETE", "/api/v1/clients/00000000-0000-0000-0000-000000000000", Needs, none.clone()),
        ("POST", "/api/v1/clients/00000000-0000-0000-0000-000000000000/secret", Needs, json!({})),
        // The browser and back-channel endpoints of the OpenID provider (which
        // authenticate their callers themselves) and userinfo (a user's token that
        // was granted `openid`) are driven by tests/oidc.rs.
        ("GET", "/.well-known/openid-configuration", Public, none),
    ]
}

async fn rest_call(
    http: &reqwest::Client,
    server: &Server,
    (method, path, body): (&str, &str, &Value),
    t: &Target,
    token: Option<&str>,
) -> (u16, String) {
    let fresh = format!("m{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let fill = |s: &str| {
        s.replace("{user}", &t.user_id)
            .replace("{session}", &t.session_id)
            .replace("{token}", &t.access_token)
            .replace("{refresh}", &t.refresh_token)
            .replace("{fresh}", &fresh)
    };
    let url = format!("{}{}", server.http, fill(path));
    let mut req = match method {
        "GET" => http.get(&url),
        "POST" => http.post(&url),
        "DELETE" => http.delete(&url),
        "PUT" => http.put(&url),
        other => panic!("method {other}"),
    };
    if !body.is_null() {
        req = req.header("content-type", "application/json").body(fill(&body.to_string()));
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    // The access middleware's 401 challenges for a bearer token (RFC 6750); a handler's
    // own 401 (wrong password, stale refresh token) does not.
    let challenged = res.headers().get("www-authenticate").is_some_and(|v| v.as_bytes().starts_with(b"Bearer"));
    let status = if status == 401 && !challenged { 400 } else { status };
    (status, res.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_route_answers_as_its_access_rule_says() {
    let server = start();
    let http = reqwest::Client::new();
    let eve_id = register(&http, &server, "eve", "matrix password").await;
    let ada_id = register(&http, &server, "ada", "matrix password").await;
    let mallory_id = register(&http, &server, "mallory", "matrix password").await;
    let gateway = gateway_token(&http, &server).await;

    // Every operation the server documents has an access rule, and this test knows it.
    let doc: Value =
        http.get(format!("{}/api/v1/openapi.json", server.http)).send().await.unwrap().json().await.unwrap();
    let routes = rest_routes();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let access = op["x-access"].as_str().unwrap_or_default();
            assert!(!access.is_empty() && !access.contains("no access rule"), "{method} {path}: {access}");
        }
    }

    for (method, path, rule, body) in &routes {
        let ada = target(&http, &server, "ada", &ada_id).await;
        for token in [None, Some("not-a-token")] {
            let (status, text) = rest_call(&http, &server, (method, path, body), &ada, token).await;
            if *rule == Rule::Public {
                assert!(status != 401 && status != 403, "{method} {path} is public, got {status} {text}");
            } else {
                assert_eq!(status, 401, "{method} {path} as {token:?}: {text}");
                assert!(text.contains("unauthenticated"), "{method} {path}: problem JSON: {text}");
            }
        }
        let eve = target(&http, &server, "eve", &eve_id).await;
        let (status, text) = rest_call(&http, &server, (method, path, body), &ada, Some(&eve.access_token)).await;
        match rule {
            Rule::Public | Rule::User => assert!(status != 401 && status != 403, "{method} {path}: {status} {text}"),
            _ => {
                assert_eq!(status, 403, "{method} {path}: eve acting on ada: {text}");
                assert!(text.contains("perfect21."), "{method} {path}: names the permission: {text}");
            }
        }
        let eve = target(&http, &server, "eve", &eve_id).await;
        let (status, text) = rest_call(&http, &server, (method, path, body), &eve, Some(&eve.access_token)).await;
        match rule {
            Rule::Public | Rule::User | Rule::SelfOr => {
                assert!(status != 401 && status != 403, "{method} {path}: eve on herself: {status} {text}")
            }
            _ => assert_eq!(status, 403, "{method} {path}: {text}"),
        }
        let mallory = target(&http, &server, "mallory", &mallory_id).await;
        let (status, text) = rest_call(&http, &server, (method, path, body), &mallory, Some(&gateway)).await;
        match rule {
            Rule::User => assert_eq!(status, 403, "{method} {path}: user-only: {text}"),
            _ => assert!(status != 401 && status != 403, "{method} {path}: the gateway: {status} {text}"),
        }
        let mallory = target(&http, &server, "mallory", &mallory_id).await;
        let root = login_root(&http, &server).await;
        let (status, text) = rest_call(&http, &server, (method, path, body), &mallory, Some(&root)).await;
        assert!(status != 401 && status != 403, "{method} {path}: the administrator: {status} {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_get_tokens_by_client_credentials_and_lose_them() {
    let server = start();
    let http = reqwest::Client::new();
    let root = login_root(&http, &server).await;
    let api = server.api();
    let token_url = format!("{}/oauth2/token", server.http);

    // Created over REST by an administrator; the secret is in the answer only.
    let res = http
        .post(format!("{api}/service-accounts"))
        .bearer_auth(&root)
        .json(&json!({"name": "billing-api", "description": "Billing", "roles": ["admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let created: Value = res.json().await.unwrap();
    let (id, secret) = (created["client_id"].as_str().unwrap(), created["client_secret"].as_str().unwrap());
    let dup = http.post(format!("{api}/service-accounts")).bearer_auth(&root).json(&json!({"name": "billing-api"}));
    assert_eq!(dup.send().await.unwrap().status().as_u16(), 409, "names are unique");

    // client_secret_basic and client_secret_post.
    let basic = client_token(&http, &server.http, id, secret).await;
    let res = http
        .post(&token_url)
        .form(&[("grant_type", "client_credentials"), ("client_id", id), ("client_secret", secret)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let post: Value = res.json().await.unwrap();
    assert_eq!(post["token_type"], "Bearer");
    assert!(post["expires_in"].as_i64().unwrap() > 0);
    let (status, me) = common::serve::get(&http, format!("{api}/service-accounts"), Some(&basic)).await;
    assert_eq!(status, 200, "{me}");
    let listed = me["service_accounts"].as_array().unwrap();
    assert!(listed.iter().any(|a| a["name"] == "billing-api" && a["roles"] == json!(["admin"])), "{me}");
    assert!(!me.to_string().contains("hash"), "no secret hash leaves: {me}");

    // RFC 6749 §5.2 errors.
    let bad = |form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = token_url.clone();
        async move {
            let res = http.post(url).form(&form).send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let (status, e) = bad(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", id.into()),
        ("client_secret", "wrong".into()),
    ])
    .await;
    assert_eq!((status, e["error"].as_str().unwrap()), (401, "invalid_client"));
    let (status, e) = bad(vec![("grant_type", "password".into())]).await;
    assert_eq!((status, e["error"].as_str().unwrap()), (400, "unsupported_grant_type"));
    let (status, e) = bad(vec![("client_id", id.into())]).await;
    assert_eq!((status, e["error"].as_str().unwrap()), (400, "invalid_request"));
    let res = http
        .post(&token_url)
        .basic_auth(id, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert!(res.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let res = http.post(&token_url).json(&json!({"grant_type": "client_credentials"})).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 400, "the token endpoint takes form-urlencoded bodies");

    // A service-account token is not a user: user-only routes refuse it.
    let (status, _) = common::serve::get(&http, format!("{api}/users/me"), Some(&basic)).await;
    assert_eq!(status, 403);

    // Rotation: the old secret stops working at once.
    let rotated: Value = http
        .post(format!("{api}/service-accounts/{id}/secret"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = rotated["client_secret"].as_str().unwrap();
    let res =
        http.post(&token_url).basic_auth(id, Some(secret)).form(&[("grant_type", "client_credentials")]).send().await;
    assert_eq!(res.unwrap().status().as_u16(), 401, "the old secret is refused");
    let fresh = client_token(&http, &server.http, id, new_secret).await;

    // Disabling: its live tokens stop validating, no new ones.
    let res = http
        .post(format!("{api}/service-accounts/{id}/disable"))
        .bearer_auth(&root)
        .json(&json!({"reason": "decommissioned"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let (status, body) = common::serve::get(&http, format!("{api}/service-accounts"), Some(&fresh)).await;
    assert_eq!(status, 401, "a disabled account's token is refused: {body}");
    let res =
        http.post(&token_url).basic_auth(id, Some(new_secret)).form(&[("grant_type", "client_credentials")]).send();
    assert_eq!(res.await.unwrap().status().as_u16(), 401);

    // The audit trail shows its life, without the secret's hash.
    let (status, trail) = common::serve::get(&http, format!("{api}/audit/users/{id}"), Some(&root)).await;
    assert_eq!(status, 200, "{trail}");
    let types: Vec<&str> =
        trail["events"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "service_account.created",
            "permission.role_assigned",
            "service_account.secret_rotated",
            "service_account.disabled"
        ]
    );
    assert!(!trail.to_string().contains("secret_hash"), "{trail}");
}

/// The client IP the audit trail recorded for the latest login of `user`.
async fn last_login_ip(http: &reqwest::Client, server: &Server, root: &str, user: &str) -> String {
    let (status, trail) =
        common::serve::get(http, format!("{}/audit/users/{user}?type=user.login_succeeded", server.api()), Some(root))
            .await;
    assert_eq!(status, 200, "{trail}");
    trail["events"].as_array().unwrap().last().unwrap()["client_ip"].as_str().unwrap_or_default().to_string()
}

async fn login_with(http: &reqwest::Client, server: &Server, user: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = http
        .post(format!("{}/auth/login", server.api()))
        .json(&json!({"identifier": user, "password": "matrix password"}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let http = reqwest::Client::new();
    // No trusted proxies: a forged X-Forwarded-For changes nothing.
    let server = start();
    register(&http, &server, "fwd", "matrix password").await;
    let root = login_root(&http, &server).await;
    let (status, _) = login_with(&http, &server, "fwd", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(status, 200);
    assert_eq!(last_login_ip(&http, &server, &root, "fwd").await, "127.0.0.1");

    // Loopback is a trusted proxy: the nearest untrusted hop is the client.
    let server = common::serve::start_with(&["--trusted-proxies", "127.0.0.1/32,10.0.0.0/8"]);
    register(&http, &server, "fwd", "matrix password").await;
    let root = login_root(&http, &server).await;
    login_with(&http, &server, "fwd", &[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.1.2.3")]).await;
    assert_eq!(last_login_ip(&http, &server, &root, "fwd").await, "203.0.113.9");
    login_with(&http, &server, "fwd", &[("forwarded", "for=\"[2001:db8::7]:4711\";proto=https")]).await;
    assert_eq!(last_login_ip(&http, &server, &root, "fwd").await, "2001:db8::7");
    login_with(&http, &server, "fwd", &[("x-forwarded-for", "not-an-address")]).await;
    assert_eq!(last_login_ip(&http, &server, &root, "fwd").await, "127.0.0.1", "unparsable hops are ignored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metadata_is_validated_before_it_reaches_the_log() {
    let server = start();
    let http = reqwest::Client::new();
    let user_id = register(&http, &server, "meta", "matrix password").await;
    let gateway = gateway_token(&http, &server).await;

    // REST: an oversized user agent or device id is a 400 naming the field and the limit.
    let (status, p) = login_with(&http, &server, "meta", &[("user-agent", &"a".repeat(600))]).await;
    assert_eq!(status, 400, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("user_agent") && p["detail"].as_str().unwrap().contains("512"));
    let res = http
        .post(format!("{}/auth/login", server.api()))
        .json(&json!({"identifier": "meta", "password": "matrix password", "device_id": "d".repeat(200)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(res.text().await.unwrap().contains("device_id"));

    // gRPC: a client IP that is not an address, a long reason.
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let mut auth = auth::auth_service_client::AuthServiceClient::new(channel.clone());
    let creds = auth::ValidateCredentialsRequest {
        identifier: "meta".into(),
        password: "matrix password".into(),
        client_ip: "not-an-ip".into(),
        ..Default::default()
    };
    let err = auth.validate_credentials(common::serve::bearer(creds, &gateway)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("client_ip"), "{err:?}");
    let mut users = user::user_service_client::UserServiceClient::new(channel.clone());
    let status = user::UpdateUserStatusRequest { user_id: user_id.clone(), status: 3, reason: "r".repeat(2000) };
    let err = users.update_user_status(common::serve::bearer(status, &gateway)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("reason") && err.message().contains("1024"), "{err:?}");

    // Nothing of it reached the log.
    let root = login_root(&http, &server).await;
    let (_, trail) = common::serve::get(&http, format!("{}/audit/users/{user_id}", server.api()), Some(&root)).await;
    let text = trail.to_string();
    assert!(!text.contains("aaaaaaaaaa") && !text.contains("not-an-ip") && !text.contains("rrrrrrrrrr"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_assignment_stops_granting_when_it_expires() {
    let server = start();
    let http = reqwest::Client::new();
    let api = server.api();
    let user_id = register(&http, &server, "temp", "matrix password").await;
    let root = login_root(&http, &server).await;
    let (status, _) =
        common::serve::post(&http, format!("{api}/roles"), Some(&root), json!({"role_id": "oncall"})).await;
    assert_eq!(status, 201);
    let perm = json!({"id": "pager.ack", "resource": "pager", "action": "ack", "scope": "*"});
    common::serve::post(&http, format!("{api}/roles/oncall/permissions"), Some(&root), perm).await;
    let expires_at = chrono::Utc::now().timestamp() + 3;
    let (status, body) = common::serve::post(
        &http,
        format!("{api}/users/{user_id}/roles"),
        Some(&root),
        json!({"role_id": "oncall", "expires_at": expires_at}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let gateway = gateway_token(&http, &server).await;
    let check = json!({"user_id": user_id, "resource": "pager", "action": "ack"});
    let token = login(&http, &server, "temp", "matrix password").await["access_token"].as_str().unwrap().to_string();
    let claims = |t: &str| -> Value {
        let payload = t.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims(&token)["roles"], json!(["oncall"]));
    let (_, d) = common::serve::post(&http, format!("{api}/permissions/check"), Some(&gateway), check.clone()).await;
    assert_eq!(d["allowed"], true, "{d}");
    // Once the clock passes expires_at, nothing grants it any more.
    while chrono::Utc::now().timestamp() < expires_at {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, d) = common::serve::post(&http, format!("{api}/permissions/check"), Some(&gateway), check).await;
    assert_eq!(d["allowed"], false, "an expired assignment still grants: {d}");
    let (_, perms) = common::serve::get(&http, format!("{api}/permissions/users/{user_id}"), Some(&gateway)).await;
    assert_eq!(perms["roles"], json!([]), "{perms}");
    let token = login(&http, &server, "temp", "matrix password").await["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&token)["roles"], json!([]), "new tokens do not carry the expired role");
    // It may be assigned again.
    let (status, body) =
        common::serve::post(&http, format!("{api}/users/{user_id}/roles"), Some(&root), json!({"role_id": "oncall"}))
            .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_email_registers_like_a_new_one_and_no_view_carries_a_secret() {
    let server = start();
    let http = reqwest::Client::new();
    let api = server.api();
    let owner = register(&http, &server, "owner", "matrix password").await;
    let body = json!({"email": "OWNER@example.com", "username": "someone_else", "password": "another password"});
    let (status, again) = common::serve::post(&http, format!("{api}/auth/register"), None, body).await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["user_id"].as_str().unwrap(), owner);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let (_, fresh) = common::serve::post(
        &http,
        format!("{api}/auth/register"),
        None,
        json!({"email": "fresh@example.com", "username": "fresh", "password": "another password"}),
    )
    .await;
    assert_eq!(keys(&again), keys(&fresh), "the same shape");
    // A taken username is public by nature: it says so.
    let (status, _) = common::serve::post(
        &http,
        format!("{api}/auth/register"),
        None,
        json!({"email": "third@example.com", "username": "owner", "password": "another password"}),
    )
    .await;
    assert_eq!(status, 409);

    // The owner's trail shows the attempt; no view of any event carries a hash or secret.
    let root = login_root(&http, &server).await;
    let (_, trail) = common::serve::get(&http, format!("{api}/audit/users/{owner}"), Some(&root)).await;
    let types: Vec<&str> =
        trail["events"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert!(types.contains(&"user.registration_attempted"), "{types:?}");
    let text = trail.to_string();
    for secret in ["password_hash", "verification_token_hash", "$argon2", "refresh_token_hash"] {
        assert!(!text.contains(secret), "{secret} in the audit view: {text}");
    }
    // The gRPC event stream too.
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let mut stream = events::event_service_client::EventServiceClient::new(channel);
    let mut sub = stream
        .subscribe(common::serve::bearer(events::SubscribeRequest { from_position: 1, type_prefixes: vec![] }, &root))
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while let Ok(Ok(Some(e))) = tokio::time::timeout(std::time::Duration::from_secs(2), sub.message()).await {
        assert!(!e.payload_json.contains("hash") && !e.payload_json.contains("$argon2"), "{}", e.payload_json);
        seen += 1;
        if e.event_type == "user.registration_attempted" {
            break;
        }
    }
    assert!(seen > 5);
}

#[test]
fn security_md_states_the_rule_of_every_grpc_method() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../SECURITY.md")).unwrap();
    for (path, rule, _) in grpc_methods() {
        let line = doc
            .lines()
            .find(|l| l.contains(&format!("`{path}`")))
            .unwrap_or_else(|| panic!("SECURITY.md does not list {path}"));
        let stated = match rule {
            Rule::Public => line.contains("public"),
            Rule::User => line.ends_with("| user |"),
            Rule::SelfOr => line.contains("self or `perfect21."),
            Rule::Needs => line.contains("| `perfect21."),
            Rule::ServiceOnly => line.contains("service `perfect21."),
        };
        assert!(stated, "SECURITY.md states another rule for {path}: {line}");
    }
}

/// Bytes that are not protobuf of any message: a varint that never ends, a
/// length-delimited field longer than the message, wire type 7, a group never closed.
const MALFORMED: &[&[u8]] =
    &[&[0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], &[0x0A, 0x7F, 0x01], &[0x0F], &[0x0B]];

/// Invalid UTF-8 in field 1: malformed where field 1 is a string.
const BAD_UTF8: &[u8] = &[0x0A, 0x02, 0xC3, 0x28];

/// Methods (`/package.Service/Method`) whose request has a string field 1.
fn string_field_one() -> std::collections::HashSet<String> {
    let mut sets = vec![prost_types::FileDescriptorSet::decode(perfect21_proto::FILE_DESCRIPTOR_SET).unwrap()];
    sets.push(prost_types::FileDescriptorSet::decode(tonic_health::pb::FILE_DESCRIPTOR_SET).unwrap());
    let files: Vec<_> = sets.into_iter().flat_map(|s| s.file).collect();
    let mut strings = std::collections::HashSet::new();
    for f in &files {
        for m in &f.message_type {
            let first = m.field.iter().find(|x| x.number() == 1);
            if first.is_some_and(|x| x.r#type() == prost_types::field_descriptor_proto::Type::String) {
                strings.insert(format!(".{}.{}", f.package(), m.name()));
            }
        }
    }
    let mut methods = std::collections::HashSet::new();
    for f in &files {
        for service in &f.service {
            for method in &service.method {
                if strings.contains(method.input_type()) {
                    methods.insert(format!("/{}.{}/{}", f.package(), service.name(), method.name()));
                }
            }
        }
    }
    methods
}

/// Malformed and oversized messages to every unary and server-streaming method, by a
/// caller the access layer lets through: never a panic or INTERNAL, always
/// INVALID_ARGUMENT or RESOURCE_EXHAUSTED; and the server answers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_refused_by_every_method() {
    let server = start();
    let http = reqwest::Client::new();
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let gateway = gateway_token(&http, &server).await;
    let root = login_root(&http, &server).await;
    let oversized = {
        // A valid field 15 (bytes) of 5 MiB: over the 4 MB limit whatever the message.
        let mut m = vec![0x7A];
        prost::encoding::encode_varint(5 * 1024 * 1024, &mut m);
        m.resize(m.len() + 5 * 1024 * 1024, 0);
        m
    };
    let strings = string_field_one();
    assert!(strings.contains("/perfect21.auth.AuthService/ValidateToken"), "{strings:?}");
    let mut checked = 0;
    for (path, rule, _) in grpc_methods() {
        let token = if rule == Rule::User { root.as_str() } else { gateway.as_str() };
        let utf8 = strings.contains(path).then_some(BAD_UTF8);
        for (i, body) in MALFORMED.iter().copied().chain(utf8).enumerate() {
            let s = call(&channel, path, body.to_vec(), Some(token)).await;
            assert_eq!(s.code(), Code::InvalidArgument, "{path} with malformed input #{i}: {}", s.message());
            checked += 1;
        }
        let s = call(&channel, path, oversized.clone(), Some(token)).await;
        assert_eq!(s.code(), Code::ResourceExhausted, "{path} with 5 MiB: {}", s.message());
        checked += 1;
    }
    // A well-formed reflection request is answered, so the replies counted below are real.
    let list = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let (s, replies) = call_streaming(&channel, ALSO_PUBLIC[1], list.encode_to_vec()).await;
    assert_eq!((s.code(), replies), (Code::Ok, 1), "{}", s.message());
    // The reflection services (tonic-reflection's, not ours) stream both ways and drop a
    // request that does not decode: the stream ends, OK, with no reply (tonic-reflection
    // does not pass the decode error on). Never a reply to garbage, never INTERNAL.
    for path in &ALSO_PUBLIC[1..] {
        for (i, body) in MALFORMED.iter().map(|b| b.to_vec()).chain([oversized.clone()]).enumerate() {
            let (s, replies) = call_streaming(&channel, path, body).await;
            assert_eq!(replies, 0, "{path} answered malformed input #{i}");
            assert!(
                matches!(s.code(), Code::Ok | Code::InvalidArgument | Code::ResourceExhausted),
                "{path} with input #{i}: {:?} {}",
                s.code(),
                s.message()
            );
            checked += 1;
        }
    }
    assert!(checked > 200, "{checked}");
    // Still serving.
    let s = call(
        &channel,
        "/grpc.health.v1.Health/Check",
        tonic_health::pb::HealthCheckRequest { service: String::new() }.encode_to_vec(),
        None,
    )
    .await;
    assert_eq!(s.code(), Code::Ok, "{}", s.message());
}
