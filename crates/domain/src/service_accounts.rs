//! Service accounts: the machine principals that call perfect21's APIs. Each
//! has a client secret (32 random bytes, shown once; the log holds its SHA-256 —
//! a fast hash is enough for a secret with 256 bits of entropy, and keeps the
//! client-credentials grant cheap) and roles assigned like a user's.
//!
//! ```text
//! create  -> reservation.claimed (service_account_name-*) -> service_account.created [+ permission.role_assigned…]
//! rotate  -> service_account.secret_rotated
//! disable -> service_account.disabled
//! delete  -> service_account.deleted + reservation.released
//! ```

use crate::error::{DomainError, Result};
use crate::secrets::{constant_time_eq, random_token, token_hash};
use crate::state::ServiceAccountState;
use crate::users::Reservation;
use crate::{stream, Identity, RequestContext};
use perfect21_events::catalog::*;
use perfect21_events::{Event, ExpectedVersion};
use perfect21_projections::service_accounts::ServiceAccountView;
use uuid::Uuid;

/// Stream category of service accounts.
pub const CATEGORY: &str = "service_account";
/// Reservation kind of service-account names.
const NAME_KIND: &str = "service_account_name";

/// A service account just created: its client id and secret (the only copy).
#[derive(Debug, Clone)]
pub struct CreatedServiceAccount {
    pub id: Uuid,
    pub name: String,
    pub secret: String,
    pub position: u64,
}

fn validate_name(name: &str) -> Result<()> {
    let ok = (3..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(DomainError::InvalidArgument {
            field: "name",
            reason: format!("'{name}' must be 3 to 64 characters of [a-z0-9._-], starting with a letter or digit"),
        })
    }
}

impl Identity {
    async fn live_service_account(&self, id: Uuid) -> Result<(ServiceAccountState, perfect21_events::StreamId)> {
        let s = stream(CATEGORY, id)?;
        let state: ServiceAccountState = self.load(&s).await?;
        if !state.is_live() {
            return Err(DomainError::NotFound { what: "service account", id: id.to_string() });
        }
        Ok((state, s))
    }

    /// Creates a service account holding `roles` (each must exist). The secret is in
    /// the answer only.
    #[tracing::instrument(name = "command", skip_all, fields(command = "create_service_account"))]
    pub async fn create_service_account(
        &self,
        ctx: &RequestContext,
        name: &str,
        description: &str,
        roles: &[String],
    ) -> Result<CreatedServiceAccount> {
        validate_name(name)?;
        if description.chars().count() > 500 || description.chars().any(char::is_control) {
            return Err(DomainError::InvalidArgument {
                field: "description",
                reason: "must be at most 500 printable characters".into(),
            });
        }
        for role in roles {
            self.live_role(role).await?;
        }
        let id = Uuid::now_v7();
        let name_stream = Reservation::of(&self.secrets, NAME_KIND, name)?;
        self.claim(ctx, &name_stream, NAME_KIND, id, CATEGORY).await.map_err(|e| match e {
            DomainError::AlreadyRegistered { .. } => {
                DomainError::FailedPrecondition(format!("a service account named '{name}' already exists"))
            }
            other => other,
        })?;
        let secret = random_token();
        let mut events = vec![Event::ServiceAccountCreated(ServiceAccountCreated {
            service_account_id: id,
            name: name.to_string(),
            description: description.to_string(),
            secret_hash: token_hash(&secret),
        })];
        let mut seen = std::collections::BTreeSet::new();
        for role in roles.iter().filter(|r| seen.insert(r.as_str())) {
            events.push(Event::RoleAssigned(RoleAssigned { user_id: id, role_id: role.clone(), expires_at: None }));
        }
        let appended = self.append(ctx, &stream(CATEGORY, id)?, ExpectedVersion::NoStream, &events).await?;
        Ok(CreatedServiceAccount { id, name: name.to_string(), secret, position: appended.position })
    }

    /// A new secret; the old one stops working at once. Returns the secret (the only copy).
    #[tracing::instrument(name = "command", skip_all, fields(command = "rotate_service_account_secret"))]
    pub async fn rotate_service_account_secret(&self, ctx: &RequestContext, id: Uuid) -> Result<(String, u64)> {
        let (state, s) = self.live_service_account(id).await?;
        let secret = random_token();
        let event = Event::ServiceAccountSecretRotated(ServiceAccountSecretRotated {
            service_account_id: id,
            secret_hash: token_hash(&secret),
        });
        let appended = self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?;
        Ok((secret, appended.position))
    }

    /// No new tokens; live tokens stop validating.
    #[tracing::instrument(name = "command", skip_all, fields(command = "disable_service_account"))]
    pub async fn disable_service_account(&self, ctx: &RequestContext, id: Uuid, reason: &str) -> Result<u64> {
        let (state, s) = self.live_service_account(id).await?;
        if state.disabled {
            return Err(DomainError::FailedPrecondition(format!("service account {id} is already disabled")));
        }
        crate::context::bounded("reason", reason, crate::context::MAX_REASON)?;
        let event = Event::ServiceAccountDisabled(ServiceAccountDisabled {
            service_account_id: id,
            reason: if reason.is_empty() { "administrator".into() } else { reason.into() },
        });
        Ok(self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?.position)
    }

    /// Deletes the account and frees its name.
    #[tracing::instrument(name = "command", skip_all, fields(command = "delete_service_account"))]
    pub async fn delete_service_account(&self, ctx: &RequestContext, id: Uuid) -> Result<u64> {
        let (state, s) = self.live_service_account(id).await?;
        let event = Event::ServiceAccountDeleted(ServiceAccountDeleted { service_account_id: id });
        let appended = self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?;
        self.release(ctx, &Reservation::of(&self.secrets, NAME_KIND, &state.name)?, NAME_KIND, id).await?;
        Ok(appended.position)
    }

    /// The service account whose client id and secret these are, if enabled. Reads
    /// after this process's own latest write, so a rotation or disable here applies at once.
    pub async fn authenticate_client(&self, client_id: &str, secret: &str) -> Result<ServiceAccountView> {
        let bad = || DomainError::InvalidCredentials;
        let id = Uuid::parse_str(client_id).map_err(|_| bad())?;
        let mut account = self.read(Some(self.last_write()), |m| m.service_accounts.get(id).cloned()).await?;
        if account.is_none() {
            // Created through another process (or the read models are still catching up
            // after a start): read up to the log's head before calling the client unknown.
            let head = self.store.head_position().await?;
            account = self.read(Some(head), |m| m.service_accounts.get(id).cloned()).await?;
        }
        // Hash even for an unknown client, so answers take the same time.
        let presented = token_hash(secret);
        let stored = account.as_ref().map_or("", |a| a.secret_hash.as_str());
        match account {
            Some(a) if constant_time_eq(&presented, stored) && !a.disabled => Ok(a),
            _ => Err(bad()),
        }
    }
}
