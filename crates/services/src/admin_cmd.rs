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
    /// Adds new signing keys (EdDSA for access tokens; RS256, ES256 and EdDSA for ID
    /// tokens); tokens signed by older keys stay valid until they expire.
    RotateKeys {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Service accounts: machine callers that get access tokens with the OAuth 2.0
    /// client-credentials grant (`POST /oauth2/token`).
    #[command(subcommand)]
    ServiceAccount(ServiceAccountCommand),
    /// Writes everything perfect21 holds about a user as JSON (right of access): the
    /// user record, live sessions, roles, permissions and the whole history.
    ExportUser {
        #[command(flatten)]
        serve: ServeArgs,
        /// User id, email address or username.
        user: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// OpenID Connect clients: applications that sign users in through perfect21.
    #[command(subcommand)]
    Client(ClientCommand),
}

/// What a client may do (`admin client register` and `update`).
#[derive(clap::Args)]
pub struct ClientSettingsArgs {
    /// A redirect URI (exact match; repeat for several): https, http on loopback, or an app scheme.
    #[arg(long = "redirect-uri", required = true)]
    redirect_uris: Vec<String>,
    /// Where logout may return the browser (repeat for several).
    #[arg(long = "post-logout-redirect-uri")]
    post_logout_redirect_uris: Vec<String>,
    /// Allowed grant types (repeat): authorization_code, refresh_token.
    #[arg(long = "grant-type", default_values_t = perfect21_domain::clients::default_grant_types())]
    grant_types: Vec<String>,
    /// Allowed scopes (repeat): openid, profile, email, phone, offline_access.
    #[arg(long = "scope", default_values_t = perfect21_domain::clients::default_scopes())]
    scopes: Vec<String>,
    /// Signature algorithm of its ID tokens: RS256, ES256 or EdDSA.
    #[arg(long, default_value = perfect21_domain::clients::DEFAULT_ID_TOKEN_ALG)]
    id_token_alg: String,
}

impl ClientSettingsArgs {
    fn settings(self) -> perfect21_events::catalog::ClientSettings {
        perfect21_events::catalog::ClientSettings {
            redirect_uris: self.redirect_uris,
            post_logout_redirect_uris: self.post_logout_redirect_uris,
            grant_types: self.grant_types,
            scopes: self.scopes,
            id_token_signed_response_alg: self.id_token_alg,
        }
    }
}

#[derive(clap::Subcommand)]
pub enum ClientCommand {
    /// Registers a client and prints its client id (and secret, shown once).
    Register {
        #[command(flatten)]
        serve: ServeArgs,
        /// The name users see on the sign-in page.
        #[arg(long)]
        name: String,
        /// A public client (single-page or native app): no secret, PKCE required.
        #[arg(long)]
        public: bool,
        #[command(flatten)]
        settings: ClientSettingsArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Lists clients.
    List {
        #[command(flatten)]
        serve: ServeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Replaces a client's name and settings.
    Update {
        #[command(flatten)]
        serve: ServeArgs,
        id: uuid::Uuid,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        settings: ClientSettingsArgs,
    },
    /// Replaces a confidential client's secret (the old one stops working) and prints it.
    RotateSecret {
        #[command(flatten)]
        serve: ServeArgs,
        id: uuid::Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Deletes a client: no new codes or tokens for it.
    Delete {
        #[command(flatten)]
        serve: ServeArgs,
        id: uuid::Uuid,
    },
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
            println!("new signing keys beside {}; running servers pick them up on restart", path.display());
            Ok(())
        }
        AdminCommand::ServiceAccount(command) => service_account(command).await,
        AdminCommand::Client(command) => client(command).await,
        AdminCommand::ExportUser { serve, user, output } => export_user(serve, &user, output).await,
    }
}

fn print_client(json: bool, id: uuid::Uuid, name: &str, secret: Option<&str>) {
    if json {
        println!("{}", serde_json::json!({"client_id": id, "name": name, "client_secret": secret}));
        return;
    }
    println!("client {name}");
    println!("client_id:     {id}");
    match secret {
        Some(secret) => {
            println!("client_secret: {secret}");
            println!("(the secret is shown once; perfect21 keeps only its hash)");
        }
        None => println!("public client: no secret; it must use PKCE (S256)"),
    }
}

async fn client(command: ClientCommand) -> anyhow::Result<()> {
    let ctx = RequestContext::service("admin-cli");
    match command {
        ClientCommand::Register { serve, name, public, settings, json } => {
            let app = open_app(&serve).await?;
            let created = app
                .identity
                .register_client(&ctx, &name, !public, settings.settings())
                .await
                .with_context(|| format!("registering client '{name}'"))?;
            print_client(json, created.id, &name, created.secret.as_deref());
        }
        ClientCommand::List { serve, json } => {
            let app = open_app(&serve).await?;
            let head = app.identity.store().head_position().await?;
            let clients = app.identity.read(Some(head), crate::server::views::clients).await?;
            if json {
                println!("{}", serde_json::json!({ "clients": clients }));
            } else {
                println!("{:<38} {:<24} {:<13} redirect URIs", "client_id", "name", "type");
                for c in clients {
                    println!("{:<38} {:<24} {:<13} {}", c.client_id, c.name, c.client_type, c.redirect_uris.join(" "));
                }
            }
        }
        ClientCommand::Update { serve, id, name, settings } => {
            let app = open_app(&serve).await?;
            app.identity.update_client(&ctx, id, &name, settings.settings()).await?;
            println!("client {id} updated");
        }
        ClientCommand::RotateSecret { serve, id, json } => {
            let app = open_app(&serve).await?;
            let (secret, position) = app.identity.rotate_client_secret(&ctx, id).await?;
            let name = app
                .identity
                .read(Some(position), |m| m.clients.get(id).map(|c| c.name.clone()))
                .await?
                .unwrap_or_default();
            print_client(json, id, &name, Some(&secret));
        }
        ClientCommand::Delete { serve, id } => {
            let app = open_app(&serve).await?;
            app.identity.delete_client(&ctx, id).await?;
            println!("client {id} deleted");
        }
    }
    Ok(())
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

async fn export_user(serve: ServeArgs, user: &str, output: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let app = open_app(&serve).await?;
    let id = match uuid::Uuid::parse_str(user) {
        Ok(id) => Some(id),
        Err(_) => {
            perfect21_domain::audit::resolve_user(app.identity.store().as_ref(), Some(app.identity.secrets()), user)
                .await?
        }
    };
    let head = app.identity.store().head_position().await?;
    app.identity.live().wait_for(head, Duration::from_secs(30)).await?;
    let export = match id {
        Some(id) => app.export_user(id).await?,
        None => None,
    };
    let export =
        export.ok_or_else(|| anyhow::anyhow!("no user '{user}' (give a user id, email address or username)"))?;
    let text = serde_json::to_string_pretty(&export)?;
    match output {
        Some(path) => {
            std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}
