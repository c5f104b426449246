//! `perfect21`: the command-line entry point.

mod admin_cmd;
mod audit_cmd;
mod bench;
mod config;
mod doctor;
mod events_cmd;
use perfect21_notify as notify;
use perfect21_relay as relay;
mod relay_cmd;
mod replay;
mod server;
use perfect21_telemetry as telemetry;

use clap::{Parser, Subcommand};
use config::StoreArgs;
use std::process::ExitCode;

/// Replays and appends allocate and free millions of small buffers; mimalloc's
/// per-thread free lists do that with far less work than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// perfect21 — an event-sourced identity backend.
#[derive(Parser)]
#[command(name = "perfect21", version, about = "perfect21 — an event-sourced identity backend")]
struct Cli {
    /// TOML config file (settings: data_dir, store, grpc_addr, http_addr, keys_dir, snapshot_every, dev, only).
    /// Flags win over environment variables, which win over the file.
    #[arg(long, env = "PERFECT21_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the identity services: gRPC, REST and WebSocket over one event log.
    Serve(server::ServeArgs),
    /// Relay the log to RabbitMQ alone (`serve --amqp-url` runs it too).
    Relay(server::ServeArgs),
    /// The notification service: email, SMS and push from the AMQP stream.
    Notify(notify::NotifyArgs),
    /// Operator actions (first administrator, key rotation).
    Admin {
        #[command(subcommand)]
        command: admin_cmd::AdminCommand,
    },
    /// Inspect the event log.
    Events {
        #[command(subcommand)]
        command: events_cmd::EventsCommand,
    },
    /// Rebuild every read model from the start of the log and print a digest of the state.
    Replay(replay::ReplayArgs),
    /// A user's security history.
    Audit {
        #[command(subcommand)]
        command: audit_cmd::AuditCommand,
    },
    /// Check the configured store, keys, TLS files, broker and SMTP server; print what is
    /// reachable and, for what is not, the fix. Exits 1 if anything failed.
    Doctor(doctor::DoctorArgs),
    /// Print the OpenAPI 3.1 document of the REST API (what `/api/v1/openapi.json` serves),
    /// to generate clients without a running server.
    Openapi,
    /// Measure against a baseline run in the same process (docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// The client side of `bench websocket` (a process of its own).
    #[command(hide = true)]
    BenchWsClients(bench::websocket::ClientArgs),
    /// One process of `bench append-processes`.
    #[command(hide = true)]
    BenchAppendWorker(bench::append::WorkerArgs),
    /// Appends single events forever, printing each acknowledged position (crash tests).
    #[command(hide = true)]
    AppendForever {
        #[command(flatten)]
        store: StoreArgs,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Events per append. Above 1, each append goes to a stream of its own, so that a
        /// crash test can tell a partial append (a stream with fewer events).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
        batch: u16,
    },
}

fn main() -> ExitCode {
    // Logs go to stderr; PERFECT21_LOG_FORMAT=json makes them one JSON object per line.
    // Spans of perfect21 also go to OTLP when the OTEL_* variables ask for it.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let tracer = match telemetry::tracer_provider() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: OTLP trace export: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    perfect21_domain::live::trace_updates_with(telemetry::projection_update_span);
    let otel = tracer.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        telemetry::set_traces_on();
        let ours = tracing_subscriber::filter::Targets::new().with_target("perfect21", tracing::Level::INFO);
        tracing_opentelemetry::layer().with_tracer(provider.tracer("perfect21")).with_filter(ours)
    });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,perfect21=info".into());
    let logs = if std::env::var("PERFECT21_LOG_FORMAT").is_ok_and(|f| f == "json") {
        tracing_subscriber::fmt::layer().json().with_current_span(true).with_writer(std::io::stderr).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    tracing_subscriber::registry().with(otel).with(logs.with_filter(filter)).init();
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = config::apply_config_file(&args) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => server::run(args).await,
            Command::Notify(args) => notify::run(args).await,
            Command::Relay(args) => relay_cmd::run_alone(args).await,
            Command::Admin { command } => admin_cmd::run(command).await,
            Command::Events { command } => events_cmd::run(command).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Audit { command } => audit_cmd::run(command).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
            Command::Openapi => {
                println!("{:#}", server::rest::document(None));
                Ok(())
            }
            Command::BenchWsClients(args) => bench::websocket::clients(args).await,
            Command::BenchAppendWorker(args) => bench::append::worker(args).await,
            Command::AppendForever { store, writers, batch } => {
                events_cmd::append_forever(store, writers, batch.into()).await
            }
        }
    });
    if let Some(provider) = tracer {
        // Sends the spans still buffered.
        let _ = provider.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
