//! `perfect21`: the command-line entry point.

mod admin_cmd;
mod audit_cmd;
mod bench;
mod config;
mod events_cmd;
mod notify;
mod relay;
mod replay;
mod server;
mod telemetry;

use clap::{Parser, Subcommand};
use config::StoreArgs;
use std::process::ExitCode;

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
    /// Measure against a baseline run in the same process (DESIGN §9).
    Bench(bench::BenchArgs),
    /// The client side of `bench websocket` (a process of its own).
    #[command(hide = true)]
    BenchWsClients(bench::websocket::ClientArgs),
    /// Appends single events forever, printing each acknowledged position (crash tests).
    #[command(hide = true)]
    AppendForever {
        #[command(flatten)]
        store: StoreArgs,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 8)]
        writers: usize,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
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
            Command::Relay(args) => relay::run_alone(args).await,
            Command::Admin { command } => admin_cmd::run(command).await,
            Command::Events { command } => events_cmd::run(command).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Audit { command } => audit_cmd::run(command).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchWsClients(args) => bench::websocket::clients(args).await,
            Command::AppendForever { store, writers } => events_cmd::append_forever(store, writers).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
