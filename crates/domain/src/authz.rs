//! Roles, permissions, assignments and direct grants.

use crate::error::{DomainError, Result};
use crate::state::RoleState;
use crate::{stream, Identity, RequestContext};
use perfect21_events::catalog::*;
use perfect21_events::{Event, ExpectedVersion};
use perfect21_projections::authz::Decision;
use uuid::Uuid;

/// A role to create or update.
#[derive(Debug, Clone, Default)]
pub struct RoleSpec {
    pub role_id: String,
    pub display_name: String,
    pub description: String,
    /// Higher wins when policies are listed.
    pub priority: i32,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::InvalidArgument { field, reason: reason.into() }
}

fn validate_name(field: &'static str, value: &str, wildcard: bool) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-' | ':'))
        || (wildcard
            && (value == "*" || value.strip_suffix(".*").is_some_and(|p| validate_name(field, p, false).is_ok())));
    if ok {
        Ok(())
    } else {
        let allowed = if wildcard { ", or '*', or 'prefix.*'" } else { "" };
        Err(invalid(field, format!("'{value}' must be 1-64 characters of [a-z0-9_.:-]{allowed}")))
    }
}

/// Checks a permission's fields; `*` is allowed in resource, action and scope.
pub fn validate_permission(p: &PermissionSpec) -> Result<()> {
    validate_name("permission.id", &p.id, false)?;
    validate_name("permission.resource", &p.resource, true)?;
    validate_name("permission.action", &p.action, true)?;
    validate_name("permission.scope", &p.scope, true)?;
    if p.name.chars().count() > 200 || p.description.chars().count() > 1000 {
        return Err(invalid("permission", "name at most 200 characters, description at most 1000"));
    }
    Ok(())
}

impl Identity {
    pub(crate) async fn live_role(&self, role_id: &str) -> Result<(RoleState, perfect21_events::StreamId)> {
        validate_name("role_id", role_id, false)?;
        let s = stream("role", role_id)?;
        let state: RoleState = self.load(&s).await?;
        if !state.is_live() {
            return Err(DomainError::NotFound { what: "role", id: role_id.into() });
        }
        Ok((state, s))
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = "create_role"))]
    pub async fn create_role(&self, ctx: &RequestContext, spec: RoleSpec) -> Result<u64> {
        validate_name("role_id", &spec.role_id, false)?;
        if spec.display_name.chars().count() > 200 || spec.description.chars().count() > 1000 {
            return Err(invalid("role", "display name at most 200 characters, description at most 1000"));
        }
        let s = stream("role", &spec.role_id)?;
        let state: RoleState = self.load(&s).await?;
        if state.is_live() {
            return Err(DomainError::FailedPrecondition(format!("role '{}' already exists", spec.role_id)));
        }
        let event = Event::RoleCreated(RoleCreated {
            role_id: spec.role_id.clone(),
            name: spec.role_id.clone(),
            display_name: spec.display_name,
            description: spec.description,
            priority: spec.priority,
        });
        Ok(self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?.position)
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = "update_role"))]
    pub async fn update_role(&self, ctx: &RequestContext, spec: RoleSpec) -> Result<u64> {
        let (state, s) = self.live_role(&spec.role_id).await?;
        let event = Event::RoleUpdated(RoleUpdated {
            role_id: spec.role_id,
            display_name: spec.display_name,
            description: spec.description,
            priority: spec.priority,
        });
        Ok(self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?.position)
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = "delete_role"))]
    pub async fn delete_role(&self, ctx: &RequestContext, role_id: &str) -> Result<u64> {
        let (state, s) = self.live_role(role_id).await?;
        let event = Event::RoleDeleted(RoleDeleted { role_id: role_id.into() });
        Ok(self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?.position)
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = "grant_permission_to_role"))]
    pub async fn grant_permission_to_role(
        &self,
        ctx: &RequestContext,
        role_id: &str,
        permission: PermissionSpec,
    ) -> Result<u64> {
        validate_permission(&permission)?;
        let (state, s) = self.live_role(role_id).await?;
        let event = Event::RolePermissionGranted(RolePermissionGranted { role_id: role_id.into(), permission });
        Ok(self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?.position)
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = "revoke_permission_from_role"))]
    pub async fn revoke_permission_from_role(
        &self,
        ctx: &RequestContext,
        role_id: &str,
        permission_id: &str,
    ) -> Result<u64> {
        let (state, s) = self.live_role(role_id).await?;
        if !state.permissions.contains(permission_id) {
            return Err(DomainError::NotFound { what: "permission of role", id: format!("{role_id}/{permission_id}") });
        }
        let event = Event::RolePermissionRevoked(RolePermissionRevoked {
            role_id: role_id.into(),
            permission_id: permission_id.into(),
        });
        Ok(self.append(ctx, &s, ExpectedVersion::from_current(state.version), &[event]).await?.position)
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = "assign_role"))]
    pub async fn assign_role(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
        role_id: &str,
        expires_at: Option<i64>,
    ) -> Result<u64> {
        self.live_role(role_id).await?;
        let principal = self.principal(user_id).await?;
        // An expired assignment may be renewed by assigning the role again.
        if principal.holds_role(role_id, self.now()) {
            return Err(DomainError::FailedPrecondition(format!("{user_id} already has role '{role_id}'")));
        }
        if expires_at.is_some_and(|at| at <= self.now()) {
            // Well formed, but past by the server's clock: a precondition, not a malformed request.
            return Err(DomainError::FailedPrecondition("expires_at must be in the future (Unix seconds)".into()));
        }
        let event = Event::RoleAssigned(RoleAssigned { user_id, role_id: role_id.into(), expires_at });
        Ok(self
            .append(ctx, &principal.stream, ExpectedVersion::from_current(principal.version), &[event])
            .await?
            .position)
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = "revoke_role"))]
    pub async fn revoke_role(&self, ctx: &RequestContext, user_id: Uuid, role_id: &str) -> Result<u64> {
        let principal = self.principal(user_id).await?;
        if !principal.roles.contains_key(role_id) {
            return Err(DomainError::NotFound { what: "role of user", id: format!("{user_id}/{role_id}") });
        }
        let event = Event::RoleRevoked(RoleRevoked { user_id, role_id: role_id.into() });
        Ok(self
            .append(ctx, &principal.stream, ExpectedVersion::from_current(principal.version), &[event])
            .await?
            .position)
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = "grant_permission"))]
    pub async fn grant_permission(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
        permission: PermissionSpec,
    ) -> Result<u64> {
        validate_permission(&permission)?;
        let user = self.existing_user(user_id).await?;
        let event = Event::PermissionGranted(PermissionGranted { user_id, permission });
        Ok(self
            .append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(user.version), &[event])
            .await?
            .position)
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = "revoke_permission"))]
    pub async fn revoke_permission(&self, ctx: &RequestContext, user_id: Uuid, permission_id: &str) -> Result<u64> {
        let user = self.existing_user(user_id).await?;
        if !user.grants.contains(permission_id) {
            return Err(DomainError::NotFound { what: "grant of user", id: format!("{user_id}/{permission_id}") });
        }
        let event = Event::PermissionRevoked(PermissionRevoked { user_id, permission_id: permission_id.into() });
        Ok(self
            .append(ctx, &stream("user", user_id)?, ExpectedVersion::from_current(user.version), &[event])
            .await?
            .position)
    }

    /// Checks a permission against the read models once they reached `min_position`.
    pub async fn check_permission(
        &self,
        user_id: Uuid,
        resource: &str,
        action: &str,
        scope: &str,
        min_position: Option<u64>,
    ) -> Result<Decision> {
        for (field, value) in [("resource", resource), ("action", action), ("scope", scope)] {
            if value.is_empty() {
                return Err(invalid(field, "must not be empty (a permission names a resource, an action and a scope)"));
            }
        }
        let decision = self
            .read(min_position, |m| {
                let status = m.principal_status(user_id);
                m.authz.check(user_id, status, resource, action, scope, self.now())
            })
            .await?;
        self.counters.permission_check(decision.allowed);
        Ok(decision)
    }
}

/// A user or service account that roles are assigned to: its stream and roles.
pub(crate) struct Principal {
    pub stream: perfect21_events::StreamId,
    pub version: Option<u64>,
    pub roles: std::collections::BTreeMap<String, Option<i64>>,
}

impl Principal {
    fn holds_role(&self, role: &str, now: i64) -> bool {
        self.roles.get(role).is_some_and(|expires| perfect21_projections::authz::assignment_grants(*expires, now))
    }
}

impl Identity {
    /// The user, or else the service account, with this id.
    pub(crate) async fn principal(&self, id: Uuid) -> Result<Principal> {
        match self.existing_user(id).await {
            Ok(user) => Ok(Principal { stream: stream("user", id)?, version: user.version, roles: user.roles }),
            Err(DomainError::NotFound { .. }) => {
                let s = stream(crate::service_accounts::CATEGORY, id)?;
                let account: crate::state::ServiceAccountState = self.load(&s).await?;
                if !account.is_live() {
                    return Err(DomainError::NotFound { what: "user or service account", id: id.to_string() });
                }
                Ok(Principal { stream: s, version: account.version, roles: account.roles })
            }
            Err(e) => Err(e),
        }
    }
}
