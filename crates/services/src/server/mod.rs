//! `perfect21 serve`: gRPC, REST and WebSocket in one process, over one log.

pub mod access;
pub mod app;
pub mod chain;
pub mod grpc;
pub mod grpc_admin;
mod grpc_guard;
mod grpc_input;
mod grpc_metrics;
pub mod hub;
pub mod oauth2;
pub mod oidc;
pub mod openapi;
pub mod pages;
pub mod rest;
mod rest_admin;
pub mod tls;
pub mod tokens;
pub mod views;

use crate::config::StoreArgs;
use anyhow::Context;
use app::App;
use perfect21_domain::password::PasswordCost;
use perfect21_domain::secrets::SecretBox;
use perfect21_domain::{Identity, IdentityConfig, LiveModels, SnapshotPolicy};
use perfect21_proto::{auth, permission, user};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest gRPC message, either way (the seed's 4 MB).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Options of `perfect21 serve` (flags, or the environment variables named).
#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// gRPC listen address.
    #[arg(long, env = "PERFECT21_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// HTTP (REST, WebSocket, JWKS) listen address. Default: 0.0.0.0:8080, or the
    /// seed's port of the service named by --only (auth 8080, user 8081, permission 8082, session 8083).
    #[arg(long, env = "PERFECT21_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Run one service only (its gRPC service and REST routes).
    #[arg(long, env = "PERFECT21_ONLY")]
    pub only: Option<Service>,
    /// Directory of the signing keys and the server secret. Default: `<data-dir>/keys`.
    #[arg(long, env = "PERFECT21_KEYS_DIR")]
    pub keys_dir: Option<PathBuf>,
    /// Save a read-model snapshot after this many events.
    #[arg(long, env = "PERFECT21_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Local development: answer registrations with the email verification token.
    #[arg(long, env = "PERFECT21_DEV")]
    pub dev: bool,
    /// RabbitMQ URL; when set, the relay publishes the log to the `perfect21.events` exchange.
    #[arg(long, env = "PERFECT21_AMQP_URL")]
    pub amqp_url: Option<String>,
    /// Kafka brokers (`host:port,…`); when set, a relay publishes the log to `--kafka-topic`,
    /// the same envelope as on RabbitMQ, keyed by user (built with the `kafka` feature).
    #[arg(long, env = "PERFECT21_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// The Kafka topic of the event stream.
    #[arg(long, env = "PERFECT21_KAFKA_TOPIC", default_value = "perfect21.events")]
    pub kafka_topic: String,
    /// Reverse proxies (CIDRs, comma-separated) whose `X-Forwarded-For` / `Forwarded`
    /// headers name the client; from any other peer those headers are ignored.
    #[arg(long, env = "PERFECT21_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Serve `/metrics` without authentication (otherwise it needs perfect21.metrics:read),
    /// for a Prometheus scraping over a private network.
    #[arg(long, env = "PERFECT21_PUBLIC_METRICS")]
    pub public_metrics: bool,
    /// Let users whose email address is not verified log in (by default they are refused,
    /// after the password check, with "email not verified").
    #[arg(long, env = "PERFECT21_ALLOW_UNVERIFIED_LOGIN")]
    pub allow_unverified_login: bool,
    /// Serve gRPC and HTTP over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "PERFECT21_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "PERFECT21_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS. Needs --tls-cert.
    #[arg(long, env = "PERFECT21_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// The public base URL of this server, as browsers and applications reach it: the
    /// OpenID Connect issuer (e.g. `https://id.example.com`). Default: `http(s)://` and
    /// the HTTP listen address (`localhost` when it listens on every interface).
    #[arg(long, env = "PERFECT21_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Directory of page templates and stylesheet (`login.html`, `mfa.html`,
    /// `message.html`, `verify_email.html`, `perfect21.css`) that replace the
    /// built-in ones file by file.
    #[arg(long, env = "PERFECT21_PAGES_DIR")]
    pub pages_dir: Option<PathBuf>,
    /// Write the built-in pages and stylesheet into this directory (to edit them) and exit.
    #[arg(long)]
    pub print_pages: Option<PathBuf>,
    /// Cheap password hashing, for tests only. Never in production.
    #[arg(long, hide = true)]
    pub insecure_fast_passwords: bool,
}

/// One of the seed's services.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Auth,
    User,
    Permission,
    Session,
}

impl Service {
    /// The seed's HTTP port of this service.
    pub fn port(self) -> u16 {
        match self {
            Service::Auth => 8080,
            Service::User => 8081,
            Service::Permission => 8082,
            Service::Session => 8083,
        }
    }
}

/// Whether `service` runs, given `--only`.
pub fn runs(only: Option<Service>, service: Service) -> bool {
    only.is_none_or(|o| o == service)
}

impl ServeArgs {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.only.map_or(8080, Service::port))))
    }

    /// One relay per broker configured: RabbitMQ (`relay.checkpoint`) and Kafka
    /// (`relay-kafka.checkpoint`).
    pub fn relays(&self) -> Vec<crate::relay::RelayConfig> {
        let mut relays = Vec::new();
        if let Some(url) = &self.amqp_url {
            relays.push(crate::relay::RelayConfig {
                sink: crate::relay::SinkConfig::Amqp { url: url.clone() },
                checkpoint: self.store.data_dir.join("relay.checkpoint"),
            });
        }
        if let Some(brokers) = &self.kafka_brokers {
            relays.push(crate::relay::RelayConfig {
                sink: crate::relay::SinkConfig::Kafka { brokers: brokers.clone(), topic: self.kafka_topic.clone() },
                checkpoint: self.store.data_dir.join("relay-kafka.checkpoint"),
            });
        }
        relays
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.keys_dir.clone().unwrap_or_else(|| self.store.data_dir.join("keys"))
    }
}

/// Everything `serve` and the admin commands need: the log, live read models, the commands, the keys.
pub async fn open_app(args: &ServeArgs) -> anyhow::Result<App> {
    let store = args.store.open().await?;
    let policy = SnapshotPolicy {
        path: args.store.data_dir.join("snapshots/read-models.snap"),
        every_events: args.snapshot_every.max(1),
    };
    let live = LiveModels::open(store.clone(), Some(policy)).await;
    let keys_dir = args.keys_dir();
    let secret = tokens::load_or_create_secret(&keys_dir)?;
    let keys = Arc::new(tokens::KeySet::load_or_create(&keys_dir)?);
    let mut config = IdentityConfig::default();
    if args.insecure_fast_passwords {
        config.password_cost = PasswordCost::TEST;
    }
    config.allow_unverified_login = args.allow_unverified_login;
    let identity = Identity::new(store, live, SecretBox::new(secret), config)?;
    let mut app = App::new(identity, keys);
    app.dev_mode = args.dev;
    app.trusted_proxies = Arc::from(args.trusted_proxies.clone());
    app.public_metrics = args.public_metrics;
    Ok(app)
}

impl ServeArgs {
    /// The TLS settings, read and checked, if TLS is configured.
    pub fn tls(&self) -> anyhow::Result<Option<tls::Tls>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(tls::Tls::load(tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            })?)),
            _ => Ok(None),
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.print_pages {
        for path in pages::write_defaults(dir)? {
            println!("{}", path.display());
        }
        return Ok(());
    }
    pages::load(args.pages_dir.as_deref())?;
    crate::telemetry::install();
    crate::telemetry::zero_series(
        access::REST
            .iter()
            .map(|(method, path, _)| ("rest", *method, *path))
            .chain(access::GRPC.iter().map(|(path, _)| ("grpc", "POST", *path))),
    );
    let tls = args.tls()?;
    let app = open_app(&args).await?;
    let hub = hub::Hub::start(app.identity.store().clone()).await?;
    let chain = chain::ChainWatch::start(app.identity.store().clone());
    if let Some(url) = args.amqp_url.clone() {
        tokio::spawn(hub::consume_pushes(url, hub.clone()));
    }
    let mut relay_status = None;
    for relay in args.relays() {
        let (store, live, secrets) =
            (app.identity.store().clone(), app.identity.live().clone(), app.identity.secrets().clone());
        let status = Arc::new(crate::relay::RelayStatus::default());
        // `/status` reports the RabbitMQ relay when there is one, else the Kafka one.
        if relay_status.is_none() {
            relay_status = Some(status.clone());
        }
        let sink = relay.sink.kind();
        tokio::spawn(async move {
            if let Err(e) = crate::relay::run(relay, store, live, secrets, status).await {
                tracing::error!(sink, error = %format!("{e:#}"), "relay stopped");
            }
        });
    }
    let (stop_tx, stop_rx) = watch::channel(false);

    let grpc_listener =
        TcpListener::bind(args.grpc_addr).await.with_context(|| format!("binding gRPC to {}", args.grpc_addr))?;
    let http_addr = args.http_addr();
    let http_listener = TcpListener::bind(http_addr).await.with_context(|| format!("binding HTTP to {http_addr}"))?;
    let scheme = if tls.is_some() { " (TLS)" } else { "" };
    let mut app = app;
    app.issuer = Arc::from(issuer(&args, http_listener.local_addr()?, tls.is_some())?);
    println!("perfect21 gRPC listening on {}{scheme}", grpc_listener.local_addr()?);
    println!("perfect21 HTTP listening on {}{scheme}", http_listener.local_addr()?);

    let grpc_tls = tls.as_ref().map(|t| t.grpc_config());
    let grpc = tokio::spawn(serve_grpc_with(app.clone(), grpc_listener, stop_rx.clone(), args.only, grpc_tls));
    let router = rest::router(
        rest::RestShared {
            app: app.clone(),
            hub,
            relay: relay_status,
            chain: Some(chain),
            openapi: Default::default(),
        },
        args.only,
    );
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let mut http_stop = stop_rx.clone();
    let http = match tls {
        None => tokio::spawn(async move {
            // No Nagle delay: an HTTP/2 answer is written as HEADERS then DATA, and the
            // second would otherwise wait for the client's delayed ACK (~40 ms).
            axum::serve(
                axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                service,
            )
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
        }),
        Some(tls) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.http_config()?);
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                let _ = http_stop.wait_for(|s| *s).await;
                stopper.graceful_shutdown(Some(Duration::from_secs(30)));
            });
            // TLS over streams without a Nagle delay, as for plain HTTP.
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                .acceptor(axum_server::accept::NoDelayAcceptor::new());
            let server = axum_server::from_tcp(http_listener.into_std()?)?.acceptor(acceptor).handle(handle);
            tokio::spawn(async move { server.serve(service).await })
        }
    };

    shutdown_signal().await;
    eprintln!("perfect21: shutting down, draining in-flight requests");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        let _ = grpc.await;
        let _ = http.await;
    })
    .await;
    if drained.is_err() {
        eprintln!("perfect21: requests still running after 30 s; stopping anyway");
    }
    let snapshot = args.store.data_dir.join("snapshots/read-models.snap");
    if let Err(e) = app.identity.live().save_snapshot(&snapshot).await {
        eprintln!("perfect21: could not save the read-model snapshot: {e}");
    }
    Ok(())
}

/// The OpenID Connect issuer: `--public-url`, or the listen address.
fn issuer(args: &ServeArgs, http: SocketAddr, tls: bool) -> anyhow::Result<String> {
    match &args.public_url {
        Some(url) => {
            let parsed = url::Url::parse(url).with_context(|| format!("--public-url '{url}' is not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || parsed.fragment().is_some() {
                anyhow::bail!("--public-url '{url}' must be an http(s) URL without query or fragment");
            }
            Ok(url.trim_end_matches('/').to_string())
        }
        None => {
            let scheme = if tls { "https" } else { "http" };
            let host = if http.ip().is_unspecified() { "localhost".to_string() } else { http.ip().to_string() };
            let host = if http.is_ipv6() && !http.ip().is_unspecified() { format!("[{host}]") } else { host };
            Ok(format!("{scheme}://{host}:{}", http.port()))
        }
    }
}

pub async fn serve_grpc(
    app: App,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    only: Option<Service>,
) -> anyhow::Result<()> {
    serve_grpc_with(app, listener, stop, only, None).await
}

/// The gRPC services on `listener`, over TLS when `tls` is set.
pub async fn serve_grpc_with(
    app: App,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    only: Option<Service>,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    if runs(only, Service::Auth) {
        health.set_serving::<auth::auth_service_server::AuthServiceServer<grpc::AuthService>>().await;
    }
    if runs(only, Service::User) {
        health.set_serving::<user::user_service_server::UserServiceServer<grpc::UserService>>().await;
    }
    if runs(only, Service::Permission) {
        health
            .set_serving::<permission::permission_service_server::PermissionServiceServer<grpc::PermissionService>>()
            .await;
    }
    let guard_app = app.clone();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(perfect21_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Many tools (grpcurl before 1.9, Python's grpcio-reflection) speak only v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(perfect21_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .layer(tower::layer::layer_fn(grpc_metrics::Measured))
        .layer(tower::util::MapResponseLayer::new(grpc_input::input_status::<tonic::body::Body>))
        .layer(tower::layer::layer_fn(move |inner| grpc_guard::Guarded { inner, app: guard_app.clone() }))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(3)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_optional_service(runs(only, Service::Auth).then(|| {
            perfect21_proto::account::account_service_server::AccountServiceServer::new(grpc_admin::AccountService(
                app.clone(),
            ))
        }))
        .add_optional_service(runs(only, Service::Permission).then(|| {
            perfect21_proto::admin::admin_service_server::AdminServiceServer::new(grpc_admin::AdminService(app.clone()))
        }))
        .add_optional_service(only.is_none().then(|| {
            perfect21_proto::events::event_service_server::EventServiceServer::new(grpc_admin::EventService(
                app.clone(),
            ))
        }))
        .add_optional_service(runs(only, Service::Auth).then(|| {
            auth::auth_service_server::AuthServiceServer::new(grpc::AuthService(app.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE)
        }))
        .add_optional_service(runs(only, Service::User).then(|| {
            user::user_service_server::UserServiceServer::new(grpc::UserService(app.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE)
        }))
        .add_optional_service(runs(only, Service::Permission).then(|| {
            permission::permission_service_server::PermissionServiceServer::new(grpc::PermissionService(app.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE)
        }))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
