//! HTTP benchmarks against an empty handler (`/healthz`) on the same server.
//!
//! `bench client-credentials`: OAuth 2.0 client-credentials grants per second.
//! Client secrets are 256-bit random values stored as SHA-256, so a grant costs a
//! hash and a signature rather than an argon2 computation: the baseline that
//! bounds it is the HTTP round trip itself.
//!
//! `bench rest`: token validation and permission checks (by an authenticated service
//! account) over REST, on HTTP/1.1 and on HTTP/2, each against the empty handler on
//! the same protocol; and logins.

use super::{Measurement, Run, Scratch};
use crate::server::app::App;
use crate::server::hub::Hub;
use crate::server::rest::{router, RestShared};
use crate::server::tokens::KeySet;
use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::{Identity, IdentityConfig, LiveModels, RequestContext};
use perfect21_events::store::{SqliteConfig, SqliteStore};
use perfect21_events::EventStore;
use reqwest::Method;
use std::sync::Arc;
use std::time::Duration;

pub(super) const CLIENTS: usize = 16;
/// Interleaved rounds of `bench rest` (the run-to-run spread of three long rounds was
/// ±8 % on this machine).
const ROUNDS: usize = 9;

/// The median rate and the median p99 of several runs.
fn median_run(runs: Vec<Run>) -> Run {
    let median = |f: fn(&Run) -> f64| super::median(&mut runs.iter().map(f).collect::<Vec<_>>());
    Run { per_sec: median(|r| r.per_sec), p50_us: median(|r| r.p50_us), p99_us: median(|r| r.p99_us) }
}

/// `ours` and `base` for `duration` each, in [`ROUNDS`] short rounds taking turns to go
/// first (so both see the same drift of a shared machine); the median run of each.
pub(super) async fn alternated<F, G>(duration: Duration, ours: F, base: G) -> anyhow::Result<(Run, Run)>
where
    F: Fn() -> reqwest::RequestBuilder + Clone + Send + Sync + 'static,
    G: Fn() -> reqwest::RequestBuilder + Clone + Send + Sync + 'static,
{
    let slice = duration / ROUNDS as u32;
    let (mut o, mut b) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            o.push(drive(slice, ours.clone()).await?);
            b.push(drive(slice, base.clone()).await?);
        } else {
            b.push(drive(slice, base.clone()).await?);
            o.push(drive(slice, ours.clone()).await?);
        }
    }
    Ok((median_run(o), median_run(b)))
}

/// `CLIENTS` tasks sending `request` back to back for `duration`; each answer must be 200.
pub(super) async fn drive(
    duration: Duration,
    request: impl Fn() -> reqwest::RequestBuilder + Clone + Send + Sync + 'static,
) -> anyhow::Result<Run> {
    super::drive(CLIENTS, duration, move |_| {
        let request = request.clone();
        async move {
            let res = request().send().await?;
            anyhow::ensure!(res.status().is_success(), "answer {}", res.status());
            res.bytes().await?;
            Ok(())
        }
    })
    .await
}

/// A REST server over a scratch log.
pub(super) struct Served {
    pub addr: std::net::SocketAddr,
    pub identity: Identity,
    pub app: App,
}

pub(super) async fn serve(scratch: &Scratch, name: &str, cost: PasswordCost) -> anyhow::Result<Served> {
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(SqliteConfig::new(scratch.file(&format!("{name}.db")))).await?);
    let live = LiveModels::start(store.clone());
    let config = IdentityConfig { password_cost: cost, allow_unverified_login: true, ..Default::default() };
    let identity = Identity::new(store.clone(), live, SecretBox::random(), config)?;
    let mut app = App::new(identity.clone(), Arc::new(KeySet::load_or_create(&scratch.file(&format!("{name}-keys")))?));
    let hub = Hub::start(store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    app.issuer = Arc::from(format!("http://{addr}"));
    let service =
        router(RestShared { app: app.clone(), hub, relay: None, chain: None, openapi: Default::default() }, None)
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, service).await });
    Ok(Served { addr, identity, app })
}

pub async fn client_credentials(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let Served { addr, identity, .. } = serve(scratch, "oauth", PasswordCost::TEST).await?;
    let sa = identity.create_service_account(&RequestContext::service("bench"), "bench-client", "", &[]).await?;
    identity.live().wait_for(sa.position, Duration::from_secs(10)).await?;

    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
    let (token_url, empty_url) = (format!("http://{addr}/oauth2/token"), format!("http://{addr}/healthz"));
    let (id, secret) = (sa.id.to_string(), sa.secret.clone());
    // The baseline is the empty handler receiving the same request (credentials, content
    // type and body), so that only the grant's work differs.
    let request = |method: reqwest::Method, url: String| {
        let (http, id, secret) = (http.clone(), id.clone(), secret.clone());
        move || {
            http.request(method.clone(), &url)
                .basic_auth(&id, Some(&secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials")
        }
    };
    let (ours, base) =
        alternated(duration, request(reqwest::Method::POST, token_url), request(reqwest::Method::GET, empty_url))
            .await?;
    let per_core = ours.per_sec / std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    eprintln!("{per_core:.0} grants/s per core (Keycloak's sizing guide: 120 per vCPU)");
    Ok(vec![
        Measurement::rate("client-credentials", "grants", ours.per_sec, base.per_sec, "req/s"),
        Measurement::rate("client-credentials", "grants_per_core", per_core, 120.0, "req/s"),
        Measurement::latency("client-credentials", "p50", ours.p50_us, base.p50_us, "us"),
        Measurement::latency("client-credentials", "p99", ours.p99_us, base.p99_us, "us"),
    ])
}

pub async fn rest(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    use perfect21_domain::{LoginRequest, Registration};
    let Served { addr, identity, app } = serve(scratch, "rest", PasswordCost::OWASP).await?;
    let ctx = RequestContext::service("bench");
    let permissions =
        [("tokens.validate", "perfect21.tokens", "validate"), ("permissions.read", "perfect21.permissions", "read")];
    let sa = super::gateway_account(&identity, &permissions).await?;
    let password = "benchmark password 1";
    let reg = Registration {
        email: "rest@example.com".into(),
        username: "rest".into(),
        password: password.into(),
        ..Default::default()
    };
    let user = identity.register(&ctx, reg).await?.user_id;
    let grant = identity
        .login(&ctx, LoginRequest { identifier: "rest".into(), password: password.into(), ..Default::default() })
        .await?;
    identity.live().wait_for(grant.position.max(sa.position), Duration::from_secs(10)).await?;
    let (service, _) = app.service_token(sa.id)?;
    let user_token = app.access_token(&grant)?;

    let base_url = format!("http://{addr}");
    let mut rows = Vec::new();
    // The same calls over HTTP/1.1 (a connection per client) and HTTP/2 (cleartext,
    // prior knowledge: requests multiplexed over shared connections).
    let protocols: [(&str, [&'static str; 4], reqwest::Client); 2] = [
        (
            "HTTP/1.1",
            ["validate", "validate_p99", "check", "check_p99"],
            reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?,
        ),
        (
            "HTTP/2",
            ["validate_h2", "validate_h2_p99", "check_h2", "check_h2_p99"],
            reqwest::Client::builder().http2_prior_knowledge().build()?,
        ),
    ];
    // Each call's baseline is the empty handler (`/healthz`, which reads and drops a body)
    // receiving the same request: headers (bearer token included) and body, so that only
    // the work of the handler differs. (Over HTTP/2 a body costs a DATA frame and flow
    // control both ways: several µs of the measured calls' extra cost when the baseline
    // received none.)
    let validate_body = serde_json::json!({ "token": user_token }).to_string();
    let check_body = serde_json::json!({ "user_id": user, "resource": "docs", "action": "read" }).to_string();
    for (_, [validate_rate, validate_p99, check_rate, check_p99], http) in &protocols {
        let request = |method: Method, path: &str, body: &str| {
            let (http, url, service, body) =
                (http.clone(), format!("{base_url}{path}"), service.clone(), body.to_string());
            move || {
                http.request(method.clone(), &url)
                    .body(body.clone())
                    .bearer_auth(&service)
                    .header("content-type", "application/json")
            }
        };
        // Short rounds of the four calls in rotating order, so that all see the same drift
        // of a shared machine and none is always first; each figure is the median of its
        // rounds.
        let slice = duration / ROUNDS as u32;
        let calls = [
            request(Method::GET, "/healthz", &validate_body),
            request(Method::POST, "/api/v1/auth/validate", &validate_body),
            request(Method::GET, "/healthz", &check_body),
            request(Method::POST, "/api/v1/permissions/check", &check_body),
        ];
        let mut runs: [Vec<Run>; 4] = Default::default();
        for round in 0..ROUNDS {
            for i in (0..4).map(|k| (k + round) % 4) {
                runs[i].push(drive(slice, calls[i].clone()).await?);
            }
        }
        let [validate_base, validate, check_base, check] = runs.map(median_run);
        rows.extend([
            Measurement::rate("rest", validate_rate, validate.per_sec, validate_base.per_sec, "req/s"),
            Measurement::latency("rest", validate_p99, validate.p99_us, validate_base.p99_us, "us"),
            Measurement::rate("rest", check_rate, check.per_sec, check_base.per_sec, "req/s"),
            Measurement::latency("rest", check_p99, check.p99_us, check_base.p99_us, "us"),
        ]);
    }
    let http = protocols[0].2.clone();
    let login = {
        let (http, url) = (http.clone(), format!("{base_url}/api/v1/auth/login"));
        let body = serde_json::json!({ "identifier": "rest", "password": password }).to_string();
        move || http.post(&url).header("content-type", "application/json").body(body.clone())
    };
    let login = drive(duration, login).await?;
    // Logins are bound by argon2id, not HTTP: per second, against no baseline of their own.
    eprintln!("{:.1} logins/s over REST (p99 {:.0} ms)", login.per_sec, login.p99_us / 1000.0);
    Ok(rows)
}
