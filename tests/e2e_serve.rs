//! The whole server over loopback, with a real gRPC client and real HTTP and
//! WebSocket clients: register → verify → login → validate → check permission →
//! assign role → check again (with the consistency token) → revoke → validate
//! fails → the WebSocket got the revocation and was closed.

use futures::StreamExt;
use perfect21_proto::{auth, permission};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;
use tonic::metadata::MetadataValue;

mod common;

use common::serve::{bearer, gateway_token, post, serve_on, start, Server, ROOT_PASSWORD};

/// The seed's metric families (as prometheus_client names them: counters without `_total`).
const SEED_FAMILIES: [&str; 7] = [
    "perfect21_requests",
    "perfect21_request_duration_seconds",
    "perfect21_active_connections",
    "perfect21_auth_events",
    "perfect21_token_operations",
    "perfect21_permission_checks",
    "perfect21_session_operations",
];

/// Prometheus text parsed by a real Prometheus parser (prometheus_client): {family: [label sets]}.
fn metric_families(text: &str) -> Value {
    let mut parser = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/check_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client");
    std::io::Write::write_all(&mut parser.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = parser.wait_with_output().unwrap();
    assert!(out.status.success(), "not valid Prometheus text:\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_validate_check_assign_revoke_and_websocket() {
    let server = start();
    let http = reqwest::Client::new();
    let api = format!("{}/api/v1", server.http);

    // Register and verify over REST.
    let (status, reg) = post(
        &http,
        format!("{api}/auth/register"),
        None,
        json!({"email": "ada@example.com", "username": "ada", "password": "analytical engine"}),
    )
    .await;
    assert_eq!(status, 201, "{reg}");
    let user_id = reg["user_id"].as_str().unwrap().to_string();
    let (status, body) =
        post(&http, format!("{api}/auth/verify-email"), None, json!({"token": reg["verification_token"]})).await;
    assert_eq!(status, 200, "{body}");

    // Log in over gRPC, through a service account (a gateway reporting the user's address).
    let sa = gateway_token(&http, &server).await;
    let mut auth = auth::auth_service_client::AuthServiceClient::connect(server.grpc.clone()).await.unwrap();
    let creds = auth::ValidateCredentialsRequest {
        identifier: "ada@example.com".into(),
        password: "analytical engine".into(),
        client_ip: "192.0.2.1".into(),
        user_agent: "e2e".into(),
        ..Default::default()
    };
    let err = auth.validate_credentials(creds.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "anonymous callers get nothing");
    let login = auth.validate_credentials(bearer(creds, &sa)).await.unwrap().into_inner();
    assert!(login.valid, "{}", login.error_message);
    let token = login.access_token.clone();
    // A user validates their own token.
    let v = auth
        .validate_token(bearer(auth::ValidateTokenRequest { token: token.clone(), ..Default::default() }, &token))
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid, "{}", v.error_message);
    assert_eq!(v.user_id, user_id);

    // Not yet allowed.
    let mut perms =
        permission::permission_service_client::PermissionServiceClient::connect(server.grpc.clone()).await.unwrap();
    let check = |p: Option<u64>| {
        let mut req = tonic::Request::new(permission::CheckPermissionRequest {
            user_id: user_id.clone(),
            resource: "docs".into(),
            action: "read".into(),
            scope: "team".into(),
            ..Default::default()
        });
        if let Some(p) = p {
            req.metadata_mut().insert("x-consistency-token", MetadataValue::try_from(p.to_string()).unwrap());
        }
        // A user may check their own permissions.
        req.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
        req
    };
    let denied = perms.check_permission(check(None)).await.unwrap().into_inner();
    assert!(!denied.allowed);

    // The administrator grants a role over REST; the answer carries a consistency token.
    let (status, admin) =
        post(&http, format!("{api}/auth/login"), None, json!({"identifier": "root", "password": "root password 1"}))
            .await;
    assert_eq!(status, 200, "{admin}");
    let admin_token = admin["access_token"].as_str().unwrap();
    let (status, body) = post(&http, format!("{api}/roles"), Some(&token), json!({"role_id": "reader"})).await;
    assert_eq!(status, 403, "a plain user may not create roles: {body}");
    let (status, _) =
        post(&http, format!("{api}/roles"), Some(admin_token), json!({"role_id": "reader", "priority": 10})).await;
    assert_eq!(status, 201);
    let (status, _) = post(
        &http,
        format!("{api}/roles/reader/permissions"),
        Some(admin_token),
        json!({"id": "docs.read", "resource": "docs", "action": "read", "scope": "*"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, assigned) =
        post(&http, format!("{api}/users/{user_id}/roles"), Some(admin_token), json!({"role_id": "reader"})).await;
    assert_eq!(status, 200, "{assigned}");
    let position = assigned["consistency_token"].as_u64().unwrap();
    let allowed = perms.check_permission(check(Some(position))).await.unwrap().into_inner();
    assert!(allowed.allowed, "{}", allowed.reason);
    assert_eq!(allowed.applied_policies, vec!["role:reader:docs.read"]);

    // A WebSocket of the user, then the token is revoked.
    let ws_url = format!("{}/api/v1/ws?access_token={token}", server.http.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"hello\""));
    let revoked = auth
        .revoke_token(bearer(auth::RevokeTokenRequest { token: token.clone(), reason: "test".into() }, &token))
        .await
        .unwrap();
    assert!(revoked.get_ref().revoked);
    let v = auth
        .validate_token(bearer(auth::ValidateTokenRequest { token: token.clone(), ..Default::default() }, &sa))
        .await
        .unwrap()
        .into_inner();
    assert!(!v.valid);
    assert_eq!(v.error_message, "token has been revoked");

    let mut saw_event = false;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(msg) = ws.next().await {
            match msg.unwrap() {
                tokio_tungstenite::tungstenite::Message::Text(t) if t.contains("session.token_revoked") => {
                    saw_event = true
                }
                tokio_tungstenite::tungstenite::Message::Close(Some(frame)) => return Some(u16::from(frame.code)),
                _ => {}
            }
        }
        None
    })
    .await
    .expect("the WebSocket got the revocation in time");
    assert!(saw_event, "the revocation event was pushed");
    assert_eq!(closed, Some(4001));

    // The metrics of all that, with the seed's names, parsed by a real Prometheus parser.
    let anonymous = http.get(format!("{}/metrics", server.http)).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401, "metrics need perfect21.metrics:read (or --public-metrics)");
    let text =
        http.get(format!("{}/metrics", server.http)).bearer_auth(&sa).send().await.unwrap().text().await.unwrap();
    let families = metric_families(&text);
    // And Prometheus's own linter.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let lint = promtool.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    for name in SEED_FAMILIES.iter().chain(&["perfect21_log_position", "perfect21_projection_lag_events"]) {
        assert!(families.get(name).is_some(), "{name} missing from /metrics");
    }
    let requests = families["perfect21_requests"].as_array().unwrap();
    let endpoints: Vec<&str> = requests.iter().filter_map(|l| l["endpoint"].as_str()).collect();
    assert!(endpoints.contains(&"/api/v1/users/{id}/roles"), "route templates, not raw paths: {endpoints:?}");
    assert!(endpoints.contains(&"/perfect21.auth.AuthService/ValidateToken"));
    assert!(!endpoints.iter().any(|e| e.contains(&user_id)), "no user ids in labels");
    let grpc_ok = requests.iter().any(|l| l["service"] == "grpc" && l["status"] == "0");
    assert!(grpc_ok, "gRPC calls are counted with their grpc-status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_health_and_jwks_answer_and_sigterm_drains() {
    let mut server = start();
    let http = reqwest::Client::new();
    let api = format!("{}/api/v1", server.http);

    let res = http
        .post(format!("{api}/auth/register"))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let (status, p) =
        post(&http, format!("{api}/auth/register"), None, json!({"email": "x", "username": "ab", "password": "short"}))
            .await;
    assert_eq!(status, 400);
    assert!(p["detail"].as_str().unwrap().contains("email"), "{p}");
    let (status, p) =
        post(&http, format!("{api}/auth/login"), None, json!({"identifier": "nobody", "password": "whatever1"})).await;
    assert_eq!((status, p["detail"].as_str().unwrap()), (401, "invalid credentials"));
    let res = http.get(format!("{api}/no/such/thing")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let res = http.get(format!("{api}/users/me")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let big = "x".repeat(100 * 1024);
    let res =
        http.post(format!("{api}/auth/login")).json(&json!({"identifier": big, "password": "p"})).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 413, "bodies are limited");

    let ready = http.get(format!("{}/readyz", server.http)).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let jwks: Value =
        http.get(format!("{}/.well-known/jwks.json", server.http)).send().await.unwrap().json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> =
        keys.iter().map(|k| (k["kty"].as_str().unwrap(), k["alg"].as_str().unwrap())).collect();
    for kind in [("OKP", "EdDSA"), ("RSA", "RS256"), ("EC", "ES256")] {
        assert!(kinds.contains(&kind), "JWKS has an {kind:?} key: {jwks}");
    }

    // gRPC: typed statuses, health per service.
    let mut users =
        perfect21_proto::user::user_service_client::UserServiceClient::connect(server.grpc.clone()).await.unwrap();
    let sa = gateway_token(&http, &server).await;
    let err = users
        .get_user(bearer(
            perfect21_proto::user::GetUserRequest {
                identifier: Some(perfect21_proto::user::get_user_request::Identifier::UserId("not-a-uuid".into())),
                fields: vec![],
            },
            &sa,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("user_id must be a UUID"));
    let err = users
        .update_user_status(perfect21_proto::user::UpdateUserStatusRequest {
            user_id: uuid::Uuid::nil().to_string(),
            status: 3,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "admin RPCs need a token");
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in
        ["perfect21.auth.AuthService", "perfect21.user.UserService", "perfect21.permission.PermissionService"]
    {
        let r = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap();
        assert_eq!(r.get_ref().status, 1, "{service} is SERVING");
    }

    // SIGTERM: a graceful exit.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_formats_and_content_types_and_mfa_works_over_rest() {
    let server = start();
    let http = reqwest::Client::new();
    let api = format!("{}/api/v1", server.http);

    // The document is built from the handlers' types: formats, lengths, content types
    // and the WebSocket upgrade are stated (tests/openapi_conformance.rs holds the server
    // to it).
    let doc: Value = http.get(format!("{api}/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 40, "{}", paths.len());
    let schemas = &doc["components"]["schemas"];
    let register_body = &schemas["RegisterBody"]["properties"];
    assert_eq!(register_body["email"]["format"], "email", "{register_body}");
    assert_eq!(register_body["username"]["minLength"], 3);
    assert_eq!(register_body["password"]["minLength"], 8);
    assert_eq!(schemas["CheckBody"]["properties"]["user_id"]["format"], "uuid");
    let content = |path: &str, method: &str, status: &str| -> Vec<String> {
        paths[path][method]["responses"][status]["content"].as_object().map_or(vec![], |c| c.keys().cloned().collect())
    };
    assert_eq!(content("/healthz", "get", "200"), ["text/plain"]);
    assert_eq!(content("/metrics", "get", "200"), ["text/plain"]);
    assert_eq!(content("/verify-email", "get", "200"), ["text/html"]);
    assert_eq!(content("/assets/perfect21.css", "get", "200"), ["text/css"]);
    assert!(content("/api/v1/auth/login", "post", "default").contains(&"application/problem+json".to_string()));
    assert_eq!(content("/oauth2/token", "post", "400"), ["application/json"]);
    let form = &paths["/oauth2/token"]["post"]["requestBody"]["content"];
    assert!(form.get("application/x-www-form-urlencoded").is_some(), "{form}");
    let ws = &paths["/api/v1/ws"]["get"];
    assert!(ws["responses"].get("101").is_some(), "{ws}");
    let headers: Vec<&str> = ws["parameters"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for h in ["Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "access_token"] {
        assert!(headers.contains(&h), "{h} in {headers:?}");
    }
    // `perfect21 openapi` prints the document a full server serves.
    let only: Value = serde_json::from_str(&common::serve::run(&["openapi"])).unwrap();
    assert_eq!(only["paths"].as_object().unwrap().len(), paths.len(), "`perfect21 openapi` prints the served document");

    // MFA over REST: enroll, confirm, then login needs the code.
    let (_, reg) = post(
        &http,
        format!("{api}/auth/register"),
        None,
        json!({"email": "mfa@example.com", "username": "mfa_user", "password": "second factor"}),
    )
    .await;
    post(&http, format!("{api}/auth/verify-email"), None, json!({"token": reg["verification_token"]})).await;
    let creds = json!({"identifier": "mfa_user", "password": "second factor"});
    let (_, login) = post(&http, format!("{api}/auth/login"), None, creds.clone()).await;
    let token = login["access_token"].as_str().unwrap();
    let (status, refused) =
        post(&http, format!("{api}/auth/mfa/enroll"), Some(token), json!({"password": "not it"})).await;
    assert_eq!(status, 401, "enrolling needs the current password: {refused}");
    let (status, enrollment) =
        post(&http, format!("{api}/auth/mfa/enroll"), Some(token), json!({"password": "second factor"})).await;
    assert_eq!(status, 200, "{enrollment}");
    let secret = totp_rs::Secret::Encoded(enrollment["secret"].as_str().unwrap().into()).to_bytes().unwrap();
    let code = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret).unwrap().generate_current().unwrap();
    let (status, confirmed) = post(
        &http,
        format!("{api}/auth/mfa/confirm"),
        Some(token),
        json!({"enrollment_token": enrollment["enrollment_token"], "code": code, "password": "second factor"}),
    )
    .await;
    assert_eq!(status, 200, "{confirmed}");
    assert_eq!(confirmed["recovery_codes"].as_array().unwrap().len(), 10);
    let (status, p) = post(&http, format!("{api}/auth/login"), None, creds.clone()).await;
    assert_eq!((status, p["title"].as_str().unwrap()), (401, "mfa required"));
    let mut with_code = creds.clone();
    with_code["mfa_code"] = json!(confirmed["recovery_codes"][0]);
    let (status, body) = post(&http, format!("{api}/auth/login"), None, with_code).await;
    assert_eq!(status, 200, "{body}");
    // A TOTP code of the next step (within the accepted skew) logs in once, never twice.
    let secret = totp_rs::Secret::Encoded(enrollment["secret"].as_str().unwrap().into()).to_bytes().unwrap();
    let totp = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret).unwrap();
    let next = (chrono::Utc::now().timestamp() as u64 / 30 + 1) * 30;
    let mut with_totp = creds.clone();
    with_totp["mfa_code"] = json!(totp.generate(next));
    let (status, body) = post(&http, format!("{api}/auth/login"), None, with_totp.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&http, format!("{api}/auth/login"), None, with_totp).await;
    assert_eq!(status, 401, "a replayed TOTP code is refused: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_runs_one_service() {
    // A token from the full server, then the permission service alone over the same data.
    let full = start();
    let http = reqwest::Client::new();
    let sa = gateway_token(&http, &full).await;
    let server: Server = serve_on(&full.data, &["--only", "permission"]);
    let api = format!("{}/api/v1", server.http);
    let res = http
        .post(format!("{api}/auth/login"))
        .json(&json!({"identifier": "root", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404, "auth routes are not served by the permission service");
    let check = json!({"user_id": uuid::Uuid::nil(), "resource": "docs", "action": "read"});
    let (status, _) = post(&http, format!("{api}/permissions/check"), None, check.clone()).await;
    assert_eq!(status, 401, "anonymous callers get nothing");
    let (status, body) = post(&http, format!("{api}/permissions/check"), Some(&sa), check).await;
    assert_eq!((status, body["allowed"].as_bool()), (200, Some(false)), "{body}");
    let mut auth = auth::auth_service_client::AuthServiceClient::connect(server.grpc.clone()).await.unwrap();
    let err = auth.validate_token(bearer(auth::ValidateTokenRequest::default(), &sa)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    let mut perms =
        permission::permission_service_client::PermissionServiceClient::connect(server.grpc.clone()).await.unwrap();
    let nil = uuid::Uuid::nil().to_string();
    let err = perms.get_user_roles(permission::GetUserRolesRequest { user_id: nil.clone() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let roles = perms.get_user_roles(bearer(permission::GetUserRolesRequest { user_id: nil }, &sa)).await.unwrap();
    assert!(roles.get_ref().roles.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_admin_and_event_stream_over_grpc() {
    use perfect21_proto::{account, admin, events};
    let server = start();
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let mut accounts = account::account_service_client::AccountServiceClient::new(ch.clone());
    let mut admins = admin::admin_service_client::AdminServiceClient::new(ch.clone());
    let mut auth = auth::auth_service_client::AuthServiceClient::new(ch.clone());
    let mut stream = events::event_service_client::EventServiceClient::new(ch.clone());

    let reg = accounts
        .register(account::RegisterRequest {
            email: "grace@example.com".into(),
            username: "grace".into(),
            password: "compiler pioneer".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    accounts.verify_email(account::VerifyEmailRequest { token: reg.verification_token }).await.unwrap();
    let login = |who: &str, password: &str| auth::ValidateCredentialsRequest {
        identifier: who.into(),
        password: password.into(),
        ..Default::default()
    };
    let http = reqwest::Client::new();
    let sa = gateway_token(&http, &server).await;
    let grace = auth.validate_credentials(bearer(login("grace", "compiler pioneer"), &sa)).await.unwrap().into_inner();
    let root = auth.validate_credentials(bearer(login("root", ROOT_PASSWORD), &sa)).await.unwrap().into_inner();
    assert!(grace.valid && root.valid);

    // Admin RPCs: refused without the permission, done with it.
    let role = admin::RoleRequest { role_id: "auditor".into(), priority: 5, ..Default::default() };
    let err = admins.create_role(bearer(role.clone(), &grace.access_token)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    admins.create_role(bearer(role, &root.access_token)).await.unwrap();
    let assign = admin::AssignRoleRequest { user_id: grace.user_id.clone(), role_id: "auditor".into(), expires_at: 0 };
    let assigned = admins.assign_role(bearer(assign, &root.access_token)).await.unwrap();
    assert!(assigned.metadata().get("x-consistency-token").is_some());
    let trail = admins
        .get_audit_trail(bearer(
            admin::AuditTrailRequest { user: "grace@example.com".into(), ..Default::default() },
            &root.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let types: Vec<_> = trail.entries.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "user.registered",
            "user.email_verified",
            "user.status_changed",
            "user.login_succeeded",
            "permission.role_assigned"
        ]
    );
    assert!(trail.entries[4].actor.starts_with("user:"));

    // Sessions of one's own.
    let sessions = accounts
        .list_sessions(bearer(account::ListSessionsRequest {}, &grace.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sessions.sessions.len(), 1);
    assert!(sessions.sessions[0].current);

    // The event stream: catch-up from 1, in order, filtered by type.
    let err = stream.subscribe(bearer(events::SubscribeRequest::default(), &grace.access_token)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let mut sub = stream
        .subscribe(bearer(
            events::SubscribeRequest { from_position: 1, type_prefixes: vec!["permission.".into()] },
            &root.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = sub.message().await.unwrap().unwrap();
    assert_eq!(first.event_type, "permission.role_assigned");
    assert!(first.payload_json.contains("admin"), "the bootstrap's assignment comes first: {}", first.payload_json);
    // Then the gateway service account's, then grace's.
    let second = sub.message().await.unwrap().unwrap();
    assert!(second.payload_json.contains(&server.sa_id) && second.position > first.position);
    let third = sub.message().await.unwrap().unwrap();
    assert!(third.payload_json.contains("auditor") && third.position > second.position, "{}", third.payload_json);

    // Everything of grace ends at once.
    accounts
        .revoke_all_sessions(bearer(account::RevokeAllSessionsRequest::default(), &grace.access_token))
        .await
        .unwrap();
    let v = auth
        .validate_token(bearer(
            auth::ValidateTokenRequest { token: grace.access_token.clone(), ..Default::default() },
            &sa,
        ))
        .await
        .unwrap();
    assert!(!v.get_ref().valid);

    // Reflection lists the services.
    // v1alpha too, for the many clients that speak only it.
    let mut alpha = tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = alpha.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let listed = format!("{:?}", answers.message().await.unwrap().unwrap().message_response);
    assert!(listed.contains("perfect21.auth.AuthService"), "v1alpha lists the services: {listed}");
    let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let listed = format!("{:?}", answer.message_response);
    for service in [
        "perfect21.auth.AuthService",
        "perfect21.user.UserService",
        "perfect21.permission.PermissionService",
        "perfect21.admin.AdminService",
    ] {
        assert!(listed.contains(service), "{service} not in {listed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_exposes_every_seed_metric_family() {
    let server = common::serve::start_with(&["--public-metrics"]);
    // The first request of all: nothing has happened yet.
    let text = reqwest::get(format!("{}/metrics", server.http)).await.unwrap().text().await.unwrap();
    let families = metric_families(&text);
    for name in SEED_FAMILIES {
        assert!(families.get(name).is_some(), "{name} missing from a fresh server's /metrics:\n{text}");
    }
    let logins = families["perfect21_auth_events"].as_array().unwrap();
    assert!(logins.iter().any(|l| l["event"] == "login" && l["outcome"] == "bad_password"), "{logins:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_welcome_email_link_opens_a_page_that_verifies_on_confirmation() {
    let server = start();
    let http = reqwest::Client::new();
    let api = server.api();
    let (_, reg) = post(
        &http,
        format!("{api}/auth/register"),
        None,
        json!({"email": "link@example.com", "username": "linker", "password": "follow the link"}),
    )
    .await;
    let token = reg["verification_token"].as_str().unwrap();
    let link = format!("{}/verify-email?token={token}", server.http);
    let creds = json!({"identifier": "linker", "password": "follow the link"});

    // Opening the link (as a mail scanner would) shows a button and verifies nothing.
    let page = http.get(&link).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\" action=\"/verify-email\">") && html.contains(token), "{html}");
    assert!(html.contains("/assets/perfect21.css"));
    let (status, p) = post(&http, format!("{api}/auth/login"), None, creds.clone()).await;
    assert_eq!((status, p["title"].as_str().unwrap()), (403, "email not verified"));

    // The button posts the form: verified, then the account logs in.
    let done = http.post(format!("{}/verify-email", server.http)).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(done.status().as_u16(), 200);
    assert!(done.text().await.unwrap().contains("Your email address is verified"));
    let (status, body) = post(&http, format!("{api}/auth/login"), None, creds).await;
    assert_eq!(status, 200, "{body}");

    // The link again: already used. A forged one: not valid (and nothing of it echoed).
    let again = http.get(&link).send().await.unwrap().text().await.unwrap();
    assert!(again.contains("already verified"), "{again}");
    let forged = http
        .get(format!("{}/verify-email?token=%3Cscript%3Ealert(1)%3C%2Fscript%3E", server.http))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 404);
    assert!(!forged.text().await.unwrap().contains("<script>"));
    let css = http.get(format!("{}/assets/perfect21.css", server.http)).send().await.unwrap();
    assert!(css.headers()["content-type"].to_str().unwrap().starts_with("text/css"));
}
