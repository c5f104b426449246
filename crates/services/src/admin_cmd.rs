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
    /// Service accounts: machine callers that get access tokens with the OAuth 2.0
    /// client-credentials grant (`POST /oauth2/token`).
    #[command(subcommand)]
    ServiceAccount(ServiceAccountCommand),
}

#[derive(clap::Subcommand)]
pub enum ServiceAccountCommand {
    /// Creates a service account and prints its client id and secret (shown once).
    Create {
        #[command(flatten)]
        serve: ServeArgs,
        /// 3 to 64 characters of [a-z0-9._-], e.g. billing-api.
        name: String,
        /// A role to assign (repeat for several); each must exist.
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Lists service accounts with their roles.
    List {
        #[command(flatten)]
        serve: ServeArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Replaces the secret (the old one stops working) and prints the new one.
    RotateSecret {
        #[command(flatten)]
        serve: ServeArgs,
        /// The client id.
        id: uuid::Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Disables the account: no new tokens, and its live tokens stop validating.
    Disable {
        #[command(flatten)]
        serve: ServeArgs,
        id: uuid::Uuid,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deletes the account and frees its name.
    Delete {
        #[command(flatten)]
        serve: ServeArgs,
        id: uuid::Uuid,
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
        AdminCommand::ServiceAccount(command) => service_account(command).await,
    }
}

fn print_secret(json: bool, id: uuid::Uuid, name: &str, secret: &str) {
    if json {
        println!("{}", serde_json::json!({"client_id": id, "name": name, "client_secret": secret}));
    } else {
        println!("service account {name}");
        println!("client_id:     {id}");
        println!("client_secret: {secret}");
        println!("(the secret is shown once; perfect21 keeps only its hash)");
        println!("get a token:   curl -s -u '{id}:<client_secret>' -d grant_type=client_credentials http://localhost:8080/oauth2/token");
    }
}

async fn service_account(command: ServiceAccountCommand) -> anyhow::Result<()> {
    let ctx = RequestContext::service("admin-cli");
    match command {
        ServiceAccountCommand::Create { serve, name, roles, description, json } => {
            let app = open_app(&serve).await?;
            let created = app
                .identity
                .create_service_account(&ctx, &name, &description, &roles)
                .await
                .with_context(|| format!("creating service account '{name}'"))?;
            print_secret(json, created.id, &created.name, &created.secret);
        }
        ServiceAccountCommand::List { serve, json } => {
            let app = open_app(&serve).await?;
            let head = app.identity.store().head_position().await?;
            let now = chrono::Utc::now().timestamp();
            let accounts = app.identity.read(Some(head), |m| crate::server::views::service_accounts(m, now)).await?;
            if json {
                println!("{}", serde_json::json!({ "service_accounts": accounts }));
            } else {
                println!("{:<38} {:<24} {:<9} roles", "client_id", "name", "state");
                for a in accounts {
                    let state = if a.disabled { "disabled" } else { "enabled" };
                    println!("{:<38} {:<24} {:<9} {}", a.client_id, a.name, state, a.roles.join(","));
                }
            }
        }
        ServiceAccountCommand::RotateSecret { serve, id, json } => {
            let app = open_app(&serve).await?;
            let (secret, position) = app.identity.rotate_service_account_secret(&ctx, id).await?;
            let name = app
                .identity
                .read(Some(position), |m| m.service_accounts.get(id).map(|a| a.name.clone()))
                .await?
                .unwrap_or_default();
            print_secret(json, id, &name, &secret);
        }
        ServiceAccountCommand::Disable { serve, id, reason } => {
            let app = open_app(&serve).await?;
            app.identity.disable_service_account(&ctx, id, &reason).await?;
            println!("service account {id} disabled");
        }
        ServiceAccountCommand::Delete { serve, id } => {
            let app = open_app(&serve).await?;
            app.identity.delete_service_account(&ctx, id).await?;
            println!("service account {id} deleted");
        }
    }
    Ok(())
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
