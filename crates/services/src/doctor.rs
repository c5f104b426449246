//! `perfect21 doctor`: what a newcomer runs when something does not work. Checks
//! the configured store, key directory, TLS files, broker and SMTP server, and
//! prints for each what is reachable and, where not, the fix. It only reads:
//! nothing is created.

use crate::server::ServeArgs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// Options of `perfect21 doctor`.
#[derive(clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// SMTP server of the notification service, `smtp://host:port`.
    #[arg(long, env = "PERFECT21_SMTP_URL")]
    pub smtp_url: Option<String>,
}

/// One line of the report: `ok`, `warn` or `FAIL`, what, and the detail or the fix.
struct Finding {
    level: &'static str,
    what: &'static str,
    detail: String,
}

fn ok(what: &'static str, detail: impl Into<String>) -> Finding {
    Finding { level: "ok", what, detail: detail.into() }
}
fn warn(what: &'static str, detail: impl Into<String>) -> Finding {
    Finding { level: "warn", what, detail: detail.into() }
}
fn fail(what: &'static str, detail: impl Into<String>) -> Finding {
    Finding { level: "FAIL", what, detail: detail.into() }
}

async fn store(args: &ServeArgs) -> Finding {
    let url = args.store.url();
    let shown = url.split_once('@').map_or(url.clone(), |(_, host)| format!("postgres://…@{host}"));
    if let Some(path) = url.strip_prefix("sqlite://") {
        if !std::path::Path::new(path).exists() {
            return warn(
                "store",
                format!("{shown}: no log yet; `perfect21 serve` creates it (or name another with --data-dir/--store)"),
            );
        }
    }
    match tokio::time::timeout(Duration::from_secs(15), args.store.open()).await {
        Ok(Ok(store)) => match store.head_position().await {
            Ok(head) => ok("store", format!("{shown}: reachable, {head} events")),
            Err(e) => fail("store", format!("{shown}: opened but unreadable: {e}")),
        },
        Ok(Err(e)) => fail(
            "store",
            format!("{shown}: {e:#} → fix: start the database, or check the URL (--store / PERFECT21_STORE)"),
        ),
        Err(_) => fail("store", format!("{shown}: no answer within 15 s → fix: check the host and port")),
    }
}

fn keys(args: &ServeArgs) -> Vec<Finding> {
    let dir = args.keys_dir();
    if !dir.exists() {
        return vec![warn(
            "keys",
            format!("{}: missing; `perfect21 serve` creates the server secret and a signing key there", dir.display()),
        )];
    }
    let mut out = Vec::new();
    let secret = dir.join("secret.key");
    match std::fs::metadata(&secret) {
        Err(_) => {
            out.push(warn("keys", format!("{}: no server secret yet (created on first start)", secret.display())))
        }
        Ok(m) if m.len() != 32 => out.push(fail(
            "keys",
            format!("{} holds {} bytes, expected 32 → fix: restore it from backup", secret.display(), m.len()),
        )),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => out.push(fail(
            "keys",
            format!(
                "{} is readable by others (mode {:o}) → fix: chmod 600 it",
                secret.display(),
                m.permissions().mode() & 0o777
            ),
        )),
        Ok(_) => out.push(ok("keys", format!("{}: server secret present, owner-only", secret.display()))),
    }
    match crate::server::tokens::KeySet::count(&dir) {
        Ok(0) => out.push(warn("keys", format!("{}: no signing key yet (created on first start)", dir.display()))),
        Ok(n) => out.push(ok("keys", format!("{}: {n} signing key(s); the newest signs", dir.display()))),
        Err(e) => out.push(fail("keys", format!("{}: {e:#}", dir.display()))),
    }
    out
}

async fn broker(url: &str) -> Finding {
    let shown = url.split_once('@').map_or(url.to_string(), |(_, host)| format!("amqp://…@{host}"));
    let connect = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "doctor".into()).await;
            ok("broker", format!("{shown}: connected"))
        }
        Ok(Err(e)) => fail(
            "broker",
            format!("{shown}: {e} → fix: start RabbitMQ (rabbitmq-server -detached) or check --amqp-url and its credentials"),
        ),
        Err(_) => fail("broker", format!("{shown}: no answer within 10 s → fix: check the host and port")),
    }
}

async fn smtp(url: &str) -> Finding {
    let address = url.trim_start_matches("smtp://").trim_end_matches('/');
    let address = if address.contains(':') { address.to_string() } else { format!("{address}:25") };
    let greet = async {
        use tokio::io::AsyncReadExt;
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        let mut banner = [0u8; 256];
        let n = stream.read(&mut banner).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&banner[..n]).trim().to_string())
    };
    match tokio::time::timeout(Duration::from_secs(10), greet).await {
        Ok(Ok(banner)) if banner.starts_with("220") => ok("smtp", format!("{address}: {banner}")),
        Ok(Ok(banner)) => fail("smtp", format!("{address}: answered '{banner}', not an SMTP greeting (220)")),
        Ok(Err(e)) => fail("smtp", format!("{address}: {e} → fix: start the mail relay or check --smtp-url")),
        Err(_) => fail("smtp", format!("{address}: no greeting within 10 s")),
    }
}

/// Runs every check; exits 1 if any failed.
pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let mut findings = vec![store(&args.serve).await];
    findings.extend(keys(&args.serve));
    match args.serve.tls() {
        Ok(Some(tls)) => findings.push(ok("tls", format!("{}: certificate and key usable", tls.files.cert.display()))),
        Ok(None) => findings.push(ok("tls", "off (plain gRPC and HTTP; use a mesh or --tls-cert/--tls-key)")),
        Err(e) => findings.push(fail("tls", format!("{e:#}"))),
    }
    match &args.serve.amqp_url {
        Some(url) => findings.push(broker(url).await),
        None => findings.push(ok("broker", "not configured (no relay: events stay in the log; set --amqp-url)")),
    }
    match &args.smtp_url {
        Some(url) => findings.push(smtp(url).await),
        None => findings.push(ok("smtp", "not configured (for `perfect21 notify`: --smtp-url)")),
    }
    for f in &findings {
        println!("{:<5} {:<7} {}", f.level, f.what, f.detail);
    }
    if findings.iter().any(|f| f.level == "FAIL") {
        std::process::exit(1);
    }
    Ok(())
}
