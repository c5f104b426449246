//! `perfect21 admin …`: operator actions that need no running server.

use crate::server::{open_app, ServeArgs};
use anyhow::Context;
use perfect21_domain::{DomainError, Registration, RequestContext, RoleSpec};
use perfect21_events::catalog::PermissionSpec;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Creates the first administrator: a verified user holding the `admin` role (`*:*:*`).
    Bootstrap {
        #[command(flatten)]
        serve: ServeArgs,
        #[arg(long)]
        email: String,
        #[arg(long)]
        username: String,
        /// The administrator's password (better: the environment variable).
        #[arg(long, env = "PERFECT21_ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Adds a new JWT signing key; tokens signed by older keys stay valid until they expire.
    RotateKeys {
        #[command(flatten)]
        serve: ServeArgs,
    },
}

pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Bootstrap { serve, email, username, password } => {
            bootstrap(serve, email, username, password).await
        }
        AdminCommand::RotateKeys { serve } => {
            let path = crate::server::tokens::KeySet::rotate(&serve.keys_dir())?;
            println!("new signing key {}; running servers pick it up on restart", path.display());
            Ok(())
        }
    }
}

async fn bootstrap(serve: ServeArgs, email: String, username: String, password: String) -> anyhow::Result<()> {
    let app = open_app(&serve).await?;
    let id = &app.identity;
    let ctx = RequestContext::service("admin-bootstrap");
    let admin = RoleSpec {
        role_id: "admin".into(),
        display_name: "Administrator".into(),
        description: "Every permission".into(),
        priority: 1000,
    };
    match id.create_role(&ctx, admin).await {
        Ok(_) | Err(DomainError::FailedPrecondition(_)) => {}
        Err(e) => return Err(e).context("creating the admin role"),
    }
    let all = PermissionSpec {
        id: "all".into(),
        resource: "*".into(),
        action: "*".into(),
        scope: "*".into(),
        name: "Everything".into(),
        description: "Every action on every resource".into(),
    };
    id.grant_permission_to_role(&ctx, "admin", all).await.context("granting the admin role every permission")?;
    let reg = id
        .register(&ctx, Registration { email, username, password, ..Default::default() })
        .await
        .context("registering the administrator")?;
    let token = id.secrets().verification_token(reg.user_id, {
        let head = id.store().head_position().await?;
        id.live().wait_for(head, Duration::from_secs(10)).await?;
        // The registration's expiry is in its event; read it back.
        let events = id.store().read_stream(&perfect21_events::StreamId::of("user", reg.user_id)?, 0, 1).await?;
        match events.first().map(|e| e.decode()).transpose()? {
            Some(perfect21_events::Event::UserRegistered(r)) => r.verification_expires_at,
            _ => anyhow::bail!("the registration of {} is not in the log", reg.user_id),
        }
    });
    id.verify_email(&ctx, &token).await.context("verifying the administrator's email")?;
    let position = id.assign_role(&ctx, reg.user_id, "admin", None).await.context("assigning the admin role")?;
    println!("administrator {} created (consistency token {position})", reg.user_id);
    Ok(())
}
