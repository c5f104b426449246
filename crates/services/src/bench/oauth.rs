//! `bench client-credentials`: OAuth 2.0 client-credentials grants per second
//! over HTTP vs an empty handler (`/healthz`) on the same server. Client secrets
//! are 256-bit random values stored as SHA-256, so a grant costs a hash and a
//! signature rather than an argon2 computation: the baseline that bounds it is
//! the HTTP round trip itself.

use super::{Measurement, Run, Scratch};
use crate::server::app::App;
use crate::server::hub::Hub;
use crate::server::rest::{router, RestState};
use crate::server::tokens::KeySet;
use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::{Identity, IdentityConfig, LiveModels, RequestContext};
use perfect21_events::store::{SqliteConfig, SqliteStore};
use perfect21_events::EventStore;
use std::sync::Arc;
use std::time::Duration;

const CLIENTS: usize = 16;

/// `CLIENTS` tasks sending `request` back to back for `duration`; each answer must be 200.
async fn drive(
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

pub async fn client_credentials(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(SqliteConfig::new(scratch.file("oauth.db"))).await?);
    let live = LiveModels::start(store.clone());
    let config = IdentityConfig { password_cost: PasswordCost::TEST, ..Default::default() };
    let identity = Identity::new(store.clone(), live, SecretBox::random(), config)?;
    let app = App::new(identity.clone(), Arc::new(KeySet::load_or_create(&scratch.file("keys"))?));
    let sa = identity.create_service_account(&RequestContext::service("bench"), "bench-client", "", &[]).await?;
    identity.live().wait_for(sa.position, Duration::from_secs(10)).await?;

    let hub = Hub::start(store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service =
        router(RestState { app, hub, relay: None }, None).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });

    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
    let (token_url, empty_url) = (format!("http://{addr}/oauth2/token"), format!("http://{addr}/healthz"));
    let (id, secret) = (sa.id.to_string(), sa.secret.clone());
    let grant = {
        let http = http.clone();
        move || {
            http.post(&token_url)
                .basic_auth(&id, Some(&secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials")
        }
    };
    let ours = drive(duration, grant).await?;
    let empty = {
        let http = http.clone();
        move || http.get(&empty_url)
    };
    let base = drive(duration, empty).await?;
    let per_core = ours.per_sec / std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    eprintln!("{per_core:.0} grants/s per core (Keycloak's sizing guide: 120 per vCPU)");
    Ok(vec![
        Measurement::rate("client-credentials", "grants", ours.per_sec, base.per_sec, "req/s"),
        Measurement::rate("client-credentials", "grants_per_core", per_core, 120.0, "req/s"),
        Measurement::latency("client-credentials", "p50", ours.p50_us, base.p50_us, "us"),
        Measurement::latency("client-credentials", "p99", ours.p99_us, base.p99_us, "us"),
    ])
}
