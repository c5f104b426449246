//! `perfect21 bench <scenario>`: every figure is measured against a baseline run
//! in the same process on the same machine, and reported as a ratio oriented so
//! that higher is better (docs/benchmarks.md).

pub mod append;
mod grpc;
mod kafka;
mod kill;
mod login;
mod oauth;
mod oidc;
mod relay;
pub(crate) mod replay;
mod seed;
pub mod websocket;

use crate::config::StoreArgs;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    pub scenario: Scenario,
    #[command(flatten)]
    pub store: StoreArgs,
    /// PostgreSQL server for `append-postgres` and `append-processes` (scratch schemas are
    /// created and dropped).
    #[arg(long, env = "PERFECT21_BENCH_POSTGRES", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub postgres: String,
    /// RabbitMQ for `relay`.
    #[arg(long, env = "PERFECT21_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp: String,
    /// Where `relay` publishes.
    #[arg(long, value_enum, default_value = "amqp")]
    pub sink: Sink,
    /// Kafka brokers for `append-kafka` and `relay --sink kafka` (scratch topics are created).
    #[arg(long, env = "PERFECT21_BENCH_KAFKA", default_value = "127.0.0.1:19092")]
    pub kafka: String,
    /// Seconds to run each side (ours, then the baseline).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Events in the scratch log of `replay`.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Users folded into the read models by `memory` (ten events each).
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u64,
    /// Kills of `serve` in `kill-loop`.
    #[arg(long, default_value_t = 100)]
    pub cycles: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
#[allow(clippy::enum_variant_names)] // the names are the scenario names of docs/benchmarks.md
pub enum Scenario {
    /// 64 concurrent single-event appenders (group commit) vs raw 100-row batched INSERTs
    /// into the same schema (and vs one commit per event, same store).
    AppendConcurrent,
    /// 100-event appends vs raw INSERT of the same bytes, 100 rows per transaction (SQLite).
    AppendBatch,
    /// PostgreSQL store, 100-event appends vs raw batched INSERT through sqlx.
    AppendPostgres,
    /// The Kafka log (built with `--features kafka`; broker `--kafka`): 100-event appends and
    /// 64 concurrent single-event appenders vs a raw transactional rdkafka producer writing
    /// records of the same size, 100 per transaction.
    AppendKafka,
    /// 4 processes × 16 single-event appenders on one PostgreSQL log (the multi-replica
    /// layout) vs raw 100-row batched INSERTs over 64 streams; checks the log for holes.
    AppendProcesses,
    /// gRPC ValidateToken vs an empty RPC (health Check) on the same server, with p50/p99.
    GrpcValidate,
    /// gRPC CheckPermission vs an empty RPC (health Check) on the same server, with p50/p99.
    GrpcCheck,
    /// ValidateToken p99 during a login flood vs idle (ratio = idle / flood).
    LoginFlood,
    /// Relay throughput vs raw lapin confirmed publish; commit → consumer latency vs publish → consumer.
    /// With `--sink kafka`: throughput vs a raw idempotent rdkafka producer.
    Relay,
    /// 10k WebSocket connections: push latency from commit vs ping→pong on the same connections.
    Websocket,
    /// Full logins (argon2id on the blocking pool, events, session) vs raw argon2id verifications.
    Login,
    /// Rebuild all read models from a log of `--events` events vs a raw scan of the same log.
    Replay,
    /// Resident bytes per user in the read models (`--users` of them) vs the 1 KiB budget.
    Memory,
    /// OAuth 2.0 client-credentials grants over HTTP vs an empty handler on the same server
    /// (and per core vs Keycloak's sizing figure of 120 grants/s per vCPU).
    ClientCredentials,
    /// Token validation, permission checks and logins over REST (HTTP/1.1) vs an empty
    /// handler on the same server.
    Rest,
    /// Whole OpenID Connect authorization-code flows (login page, sign-in, code, PKCE
    /// exchange, RS256 ID token) vs raw argon2id verifications.
    OidcCode,
    /// Token introspections (RFC 7662) by a client vs an empty handler on the same server.
    Introspect,
    /// `serve` killed with SIGKILL at random moments while clients register users, `--cycles`
    /// times (SQLite, or PostgreSQL with `--store`): acknowledged registrations lost (must be
    /// 0), holes, and snapshot + catch-up against a full replay after every kill.
    KillLoop,
    /// The seed's four load rows at their stated rates (REST 1k/s, gRPC 5k/s, AMQP 10k
    /// msg/s, 1k WebSockets): achieved rate and p99 against each target.
    SeedMatrix,
}

/// The broker of `bench relay`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Sink {
    /// RabbitMQ (`--amqp`), against raw lapin confirmed publishing.
    Amqp,
    /// Kafka (`--kafka`, a build with the `kafka` feature), against a raw idempotent rdkafka producer.
    Kafka,
}

/// One line of the output contract.
#[derive(Debug, Serialize)]
pub struct Measurement {
    pub scenario: &'static str,
    pub metric: &'static str,
    pub ours: f64,
    pub baseline: f64,
    /// ours / baseline for rates; baseline / ours for latencies (higher is better either way).
    pub ratio: f64,
    pub unit: &'static str,
}

impl Measurement {
    pub fn rate(scenario: &'static str, metric: &'static str, ours: f64, baseline: f64, unit: &'static str) -> Self {
        Measurement { scenario, metric, ours, baseline, ratio: ours / baseline.max(f64::MIN_POSITIVE), unit }
    }

    pub fn latency(scenario: &'static str, metric: &'static str, ours: f64, baseline: f64, unit: &'static str) -> Self {
        Measurement { scenario, metric, ours, baseline, ratio: baseline / ours.max(f64::MIN_POSITIVE), unit }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.duration > 0.0 && args.duration <= 3600.0, "--duration must be in (0, 3600] seconds");
    let duration = Duration::from_secs_f64(args.duration);
    // Measure what production runs: with the metrics recorder in place.
    crate::telemetry::install();
    let scratch = Scratch::new(&args.store.data_dir)?;
    let rows = match args.scenario {
        Scenario::AppendConcurrent => append::concurrent(&args, &scratch, duration).await?,
        Scenario::AppendBatch => append::batch(&scratch, duration).await?,
        Scenario::AppendPostgres => append::postgres(&args.postgres, duration).await?,
        Scenario::AppendKafka => kafka::append(&args.kafka, duration).await?,
        Scenario::AppendProcesses => append::processes(&args.postgres, &scratch, duration).await?,
        Scenario::GrpcValidate => grpc::validate(&scratch, duration).await?,
        Scenario::GrpcCheck => grpc::check(&scratch, duration).await?,
        Scenario::LoginFlood => grpc::login_flood(&scratch, duration).await?,
        Scenario::Relay => match args.sink {
            Sink::Amqp => relay::relay(&scratch, &args.amqp).await?,
            Sink::Kafka => kafka::relay(&scratch, &args.kafka).await?,
        },
        Scenario::Websocket => websocket::websocket(&scratch, duration).await?,
        Scenario::Login => login::login(&scratch, duration).await?,
        Scenario::Replay => replay::replay(&scratch, args.events).await?,
        Scenario::Memory => replay::memory(args.users).await?,
        Scenario::ClientCredentials => oauth::client_credentials(&scratch, duration).await?,
        Scenario::Rest => oauth::rest(&scratch, duration).await?,
        Scenario::OidcCode => oidc::code(&scratch, duration).await?,
        Scenario::Introspect => oidc::introspect(&scratch, duration).await?,
        Scenario::SeedMatrix => seed::matrix(&scratch, duration, &args.amqp).await?,
        Scenario::KillLoop => {
            let url = args.store.url();
            kill::kill_loop(&scratch, url.starts_with("postgres").then_some(url.as_str()), args.cycles).await?
        }
    };
    print(&rows, args.json);
    Ok(())
}

fn print(rows: &[Measurement], json: bool) {
    if json {
        for r in rows {
            println!("{}", serde_json::to_string(r).expect("plain numbers and strings"));
        }
        return;
    }
    println!("{:<18} {:<22} {:>14} {:>14} {:>8}  unit", "scenario", "metric", "ours", "baseline", "ratio");
    for r in rows {
        println!(
            "{:<18} {:<22} {:>14.1} {:>14.1} {:>8.2}  {}",
            r.scenario, r.metric, r.ours, r.baseline, r.ratio, r.unit
        );
    }
}

/// A directory for scratch logs, under the data directory so that it sits on the
/// same disk as a real log (not a RAM-backed /tmp); removed afterwards.
pub struct Scratch(PathBuf);

impl Scratch {
    fn new(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join(format!("bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Every file in the scratch directory.
    pub fn files(&self) -> std::io::Result<Vec<PathBuf>> {
        std::fs::read_dir(&self.0)?.map(|e| Ok(e?.path())).filter(|p| !matches!(p, Ok(p) if p.is_dir())).collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Latency percentiles of a sample, in microseconds.
/// A `gateway` role holding `permissions` (id, resource, action) and a service account
/// with it: the caller the RPC and REST benchmarks measure, as in production.
pub async fn gateway_account(
    identity: &perfect21_domain::Identity,
    permissions: &[(&str, &str, &str)],
) -> anyhow::Result<perfect21_domain::CreatedServiceAccount> {
    let ctx = perfect21_domain::RequestContext::service("bench");
    let role = perfect21_domain::RoleSpec { role_id: "gateway".into(), priority: 1, ..Default::default() };
    identity.create_role(&ctx, role).await?;
    for (id, resource, action) in permissions {
        let p = perfect21_events::catalog::PermissionSpec {
            id: id.to_string(),
            resource: resource.to_string(),
            action: action.to_string(),
            scope: "*".into(),
            name: String::new(),
            description: String::new(),
        };
        identity.grant_permission_to_role(&ctx, "gateway", p).await?;
    }
    let sa = identity.create_service_account(&ctx, "bench-gateway", "", &["gateway".into()]).await?;
    identity.live().wait_for(sa.position, Duration::from_secs(10)).await?;
    Ok(sa)
}

/// Throughput and latency of a closed-loop run.
pub struct Run {
    pub per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// `clients` tasks calling `call(client index)` back to back for `duration`.
pub async fn drive<F, Fut>(clients: usize, duration: Duration, call: F) -> anyhow::Result<Run>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while start.elapsed() < duration {
                    let t = std::time::Instant::now();
                    call(i).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by(f64::total_cmp);
    Ok(Run {
        per_sec: all.len() as f64 / start.elapsed().as_secs_f64(),
        p50_us: percentile(&all, 0.5),
        p99_us: percentile(&all, 0.99),
    })
}

/// The median of a sample (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
