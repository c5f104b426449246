//! gRPC benchmarks: ValidateToken and CheckPermission against an empty RPC
//! (the health service's Check) on the same server in the same run, and
//! ValidateToken latency during a login flood against idle.

use super::{Measurement, Run, Scratch};
use crate::server::app::App;
use crate::server::tokens::KeySet;
use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::{Identity, IdentityConfig, LiveModels, LoginRequest, Registration, RequestContext, RoleSpec};
use perfect21_events::catalog::PermissionSpec;
use perfect21_events::store::{SqliteConfig, SqliteStore};
use perfect21_events::EventStore;
use perfect21_proto::{auth, permission};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const CLIENTS: usize = 32;
const CHANNELS: usize = 4;
const FLOOD_USERS: usize = 16;
const PASSWORD: &str = "benchmark password 1";

pub(super) struct Bench {
    pub channels: Vec<Channel>,
    pub token: String,
    /// A service account's token (the callers of these RPCs are services).
    pub service: String,
    user_id: String,
    _stop: tokio::sync::watch::Sender<bool>,
}

pub(super) async fn setup(scratch: &Scratch) -> anyhow::Result<Bench> {
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(SqliteConfig::new(scratch.file("grpc.db"))).await?);
    let live = LiveModels::start(store.clone());
    let config =
        IdentityConfig { password_cost: PasswordCost::OWASP, allow_unverified_login: true, ..Default::default() };
    let identity = Identity::new(store, live, SecretBox::random(), config)?;
    let keys = Arc::new(KeySet::load_or_create(&scratch.file("keys"))?);
    let app = App::new(identity.clone(), keys);
    let ctx = RequestContext::service("bench");
    for i in 0..FLOOD_USERS {
        let r = Registration {
            email: format!("grpc{i}@example.com"),
            username: format!("grpc{i}"),
            password: PASSWORD.into(),
            ..Default::default()
        };
        identity.register(&ctx, r).await?;
    }
    identity.create_role(&ctx, RoleSpec { role_id: "reader".into(), priority: 1, ..Default::default() }).await?;
    let p = PermissionSpec {
        id: "docs.read".into(),
        resource: "docs".into(),
        action: "read".into(),
        scope: "*".into(),
        name: String::new(),
        description: String::new(),
    };
    identity.grant_permission_to_role(&ctx, "reader", p).await?;
    let grant = identity
        .login(&ctx, LoginRequest { identifier: "grpc0".into(), password: PASSWORD.into(), ..Default::default() })
        .await?;
    let position = identity.assign_role(&ctx, grant.user_id, "reader", None).await?;
    identity.live().wait_for(position, Duration::from_secs(10)).await?;
    let token = app.access_token(&grant)?;
    // The caller: a gateway's service account that may validate tokens, check permissions, log users in.
    let sa = super::gateway_account(
        &identity,
        &[
            ("tokens.validate", "perfect21.tokens", "validate"),
            ("permissions.read", "perfect21.permissions", "read"),
            ("auth.validate_credentials", "perfect21.auth", "validate_credentials"),
        ],
    )
    .await?;
    let (service, _) = app.service_token(sa.id)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::server::serve_grpc(app, listener, stop_rx, None));
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(Channel::from_shared(format!("http://{addr}"))?.connect().await?);
    }
    Ok(Bench { channels, token, service, user_id: grant.user_id.to_string(), _stop: stop })
}

/// `clients` tasks calling `call` on the bench's channels back to back for `duration`.
async fn drive<F, Fut>(bench: &Bench, clients: usize, duration: Duration, call: F) -> anyhow::Result<Run>
where
    F: Fn(Channel) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let channels = bench.channels.clone();
    super::drive(clients, duration, move |i| call(channels[i % channels.len()].clone())).await
}

async fn empty_rpc(bench: &Bench, duration: Duration) -> anyhow::Result<Run> {
    drive(bench, CLIENTS, duration, |ch| async move {
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;
        Ok(())
    })
    .await
}

/// `msg` with `authorization: Bearer <token>`.
fn authorized<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

pub(super) fn validate_call(
    token: String,
    service: String,
) -> impl Fn(Channel) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Clone {
    move |ch| {
        let (token, service) = (token.clone(), service.clone());
        Box::pin(async move {
            let mut auth = auth::auth_service_client::AuthServiceClient::new(ch);
            let req = authorized(auth::ValidateTokenRequest { token, ..Default::default() }, &service)?;
            let r = auth.validate_token(req).await?;
            anyhow::ensure!(r.get_ref().valid, "token refused: {}", r.get_ref().error_message);
            Ok(())
        })
    }
}

fn rows(scenario: &'static str, metric: &'static str, ours: &Run, base: &Run) -> Vec<Measurement> {
    vec![
        Measurement::rate(scenario, metric, ours.per_sec, base.per_sec, "calls/s"),
        Measurement::latency(scenario, "p50", ours.p50_us, base.p50_us, "us"),
        Measurement::latency(scenario, "p99", ours.p99_us, base.p99_us, "us"),
    ]
}

pub async fn validate(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let bench = setup(scratch).await?;
    let ours = drive(&bench, CLIENTS, duration, validate_call(bench.token.clone(), bench.service.clone())).await?;
    let base = empty_rpc(&bench, duration).await?;
    Ok(rows("grpc-validate", "validate_token", &ours, &base))
}

pub async fn check(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let bench = setup(scratch).await?;
    let user_id = bench.user_id.clone();
    let service = bench.service.clone();
    let ours = drive(&bench, CLIENTS, duration, move |ch| {
        let (user_id, service) = (user_id.clone(), service.clone());
        async move {
            let mut perms = permission::permission_service_client::PermissionServiceClient::new(ch);
            let req = permission::CheckPermissionRequest {
                user_id,
                resource: "docs".into(),
                action: "read".into(),
                scope: "team".into(),
                ..Default::default()
            };
            let req = authorized(req, &service)?;
            anyhow::ensure!(perms.check_permission(req).await?.get_ref().allowed, "check refused");
            Ok(())
        }
    })
    .await?;
    let base = empty_rpc(&bench, duration).await?;
    Ok(rows("grpc-check", "check_permission", &ours, &base))
}

pub async fn login_flood(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    const VALIDATORS: usize = 8;
    let bench = setup(scratch).await?;
    let idle = drive(&bench, VALIDATORS, duration, validate_call(bench.token.clone(), bench.service.clone())).await?;
    // The flood: many clients logging in (argon2id) as fast as the server lets them.
    let flood_until = Instant::now() + duration;
    let flooders: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let ch = bench.channels[i % bench.channels.len()].clone();
            let service = bench.service.clone();
            tokio::spawn(async move {
                let mut auth = auth::auth_service_client::AuthServiceClient::new(ch);
                let mut n = 0u64;
                while Instant::now() < flood_until {
                    let req = auth::ValidateCredentialsRequest {
                        identifier: format!("grpc{}", (i + n as usize) % FLOOD_USERS),
                        password: PASSWORD.into(),
                        ..Default::default()
                    };
                    if let Ok(req) = authorized(req, &service) {
                        let _ = auth.validate_credentials(req).await;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let flooded =
        drive(&bench, VALIDATORS, duration, validate_call(bench.token.clone(), bench.service.clone())).await?;
    let mut logins = 0;
    for f in flooders {
        logins += f.await?;
    }
    eprintln!("{logins} logins during the flood ({:.1}/s)", logins as f64 / duration.as_secs_f64());
    Ok(vec![
        Measurement::latency("login-flood", "validate_p99", flooded.p99_us, idle.p99_us, "us"),
        Measurement::latency("login-flood", "validate_p50", flooded.p50_us, idle.p50_us, "us"),
    ])
}
