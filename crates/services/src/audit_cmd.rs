//! `perfect21 audit user <id|email|username>`: a user's security history.

use crate::config::StoreArgs;
use anyhow::Context;
use chrono::{DateTime, Utc};
use perfect21_domain::audit::{audit_trail, resolve_user, AuditFilter};

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Logins, failures, lockouts, password/MFA changes, role changes, revocations: who, when, from where.
    User {
        /// User id, email address or username.
        user: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Only events at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z) or this long ago (e.g. 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only events whose type starts with this (repeatable), e.g. `security.` or `user.login`.
        #[arg(long = "type")]
        types: Vec<String>,
        /// Only the newest N events.
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Directory of the server secret that keys reservation stream ids (default:
        /// `<data-dir>/keys`); without it, only reservations from before keyed ids are found.
        #[arg(long, env = "PERFECT21_KEYS_DIR")]
        keys_dir: Option<std::path::PathBuf>,
    },
}

fn parse_since(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 =
        n.parse().with_context(|| format!("--since '{s}': expected RFC 3339 or a duration like 30m, 24h, 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("--since '{s}': unit must be s, m, h or d"),
    };
    Ok(Utc::now() - chrono::Duration::seconds(secs))
}

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::User { user, store, since, types, limit, json, keys_dir } = command;
    let keys_dir = keys_dir.unwrap_or_else(|| store.data_dir.join("keys"));
    let secrets = crate::server::tokens::read_secret(&keys_dir)?.map(perfect21_domain::secrets::SecretBox::new);
    let filter = AuditFilter { since: since.as_deref().map(parse_since).transpose()?, types, limit };
    let store = store.open_existing().await?;
    let user_id = resolve_user(store.as_ref(), secrets.as_ref(), &user).await?.with_context(|| match &secrets {
        Some(_) => format!("no user is registered as '{user}'"),
        None => format!(
            "no user is registered as '{user}' in reservations from before keyed ids, and there is no server \
             secret at {}/secret.key to find newer ones: pass the server's --keys-dir, or the user's id",
            keys_dir.display()
        ),
    })?;
    let trail = audit_trail(store.as_ref(), secrets.as_ref(), user_id, &filter).await?;
    if json {
        for e in &trail {
            println!("{}", crate::server::views::audit_entry(e));
        }
        return Ok(());
    }
    println!("security history of user {user_id} ({} events)", trail.len());
    println!("{:<24} {:<38} {:<26} {:<16} details", "when (UTC)", "event", "actor", "from");
    for e in &trail {
        println!(
            "{:<24} {:<38} {:<26} {:<16} {}",
            e.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            e.event_type,
            e.actor.as_deref().unwrap_or("-"),
            e.client_ip.as_deref().unwrap_or("-"),
            details(&e.event),
        );
    }
    Ok(())
}

/// The few fields of an event's public view worth a column.
fn details(event: &perfect21_events::Event) -> String {
    let mut v = event.public_view();
    if let Some(map) = v.as_object_mut() {
        map.retain(|k, _| k != "user_id" && k != "recommended_actions");
    }
    v.to_string()
}
