//! The gRPC services beyond the seed: perfect21.account, perfect21.admin, perfect21.events.

use super::app::{App, Principal};
use super::grpc::{acting, context, status, uuid, with_position};
use perfect21_domain::audit::AuditFilter;
use perfect21_domain::{Registration, RoleSpec};
use perfect21_events::catalog::PermissionSpec;
use perfect21_events::subscribe_all;
use perfect21_proto::{account, admin, events, permission};
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

fn opt(s: &str) -> Option<String> {
    Some(s.to_string()).filter(|s| !s.is_empty())
}

pub struct AccountService(pub App);

#[tonic::async_trait]
impl account::account_service_server::AccountService for AccountService {
    async fn register(
        &self,
        req: Request<account::RegisterRequest>,
    ) -> Result<Response<account::RegisterResponse>, Status> {
        let ctx = context(&self.0, &req)?;
        let r = req.into_inner();
        let registration = Registration {
            email: r.email,
            username: r.username,
            password: r.password,
            first_name: opt(&r.first_name),
            last_name: opt(&r.last_name),
            phone_number: opt(&r.phone_number),
            locale: opt(&r.locale),
        };
        let reg = self.0.identity.register(&ctx, registration).await.map_err(status)?;
        let body = account::RegisterResponse {
            user_id: reg.user_id.to_string(),
            consistency_token: reg.position,
            verification_token: if self.0.dev_mode { reg.verification_token } else { String::new() },
        };
        Ok(with_position(body, reg.position))
    }

    async fn verify_email(
        &self,
        req: Request<account::VerifyEmailRequest>,
    ) -> Result<Response<account::VerifyEmailResponse>, Status> {
        let ctx = context(&self.0, &req)?;
        let position = self.0.identity.verify_email(&ctx, &req.get_ref().token).await.map_err(status)?;
        Ok(with_position(account::VerifyEmailResponse { consistency_token: position }, position))
    }

    async fn logout(&self, req: Request<account::LogoutRequest>) -> Result<Response<account::LogoutResponse>, Status> {
        let (caller, ctx) = acting(&self.0, &req)?;
        let Principal::User { session, .. } = caller.principal else {
            return Err(Status::permission_denied("this RPC is for users"));
        };
        let position = self.0.identity.logout(&ctx, session).await.map_err(status)?;
        Ok(with_position(account::LogoutResponse { consistency_token: position }, position))
    }

    async fn list_sessions(
        &self,
        req: Request<account::ListSessionsRequest>,
    ) -> Result<Response<account::ListSessionsResponse>, Status> {
        let (caller, _) = acting(&self.0, &req)?;
        let user = caller.user().map_err(status)?;
        let current = match &caller.principal {
            Principal::User { session, .. } => *session,
            Principal::Service { .. } => Uuid::nil(),
        };
        let min = Some(self.0.identity.last_write());
        let sessions = self.0.identity.read(min, |m| {
            m.sessions
                .of_user(user)
                .into_iter()
                .map(|s| account::Session {
                    session_id: s.id.to_string(),
                    started_at: s.started_at / 1_000_000,
                    refreshed_at: s.refreshed_at / 1_000_000,
                    expires_at: s.expires_at,
                    device_id: s.device_id.as_deref().unwrap_or_default().to_string(),
                    current: s.id == current,
                })
                .collect()
        });
        let sessions = sessions.await.map_err(status)?;
        Ok(Response::new(account::ListSessionsResponse { sessions }))
    }

    async fn revoke_session(
        &self,
        req: Request<account::RevokeSessionRequest>,
    ) -> Result<Response<account::RevokeSessionResponse>, Status> {
        let (caller, ctx) = acting(&self.0, &req)?;
        let session = uuid("session_id", &req.get_ref().session_id)?;
        // A session this process just started must count as the caller's own.
        let owner = self
            .0
            .identity
            .read(Some(self.0.identity.last_write()), |m| m.sessions.get(session).map(|s| s.user_id))
            .await
            .map_err(status)?;
        // Someone else's session (or none) needs perfect21.sessions:revoke; without it, a
        // session that does not exist answers like someone else's.
        caller.require_self_or_privileged(owner.unwrap_or_else(Uuid::nil)).map_err(status)?;
        let reason = opt(&req.get_ref().reason).unwrap_or_else(|| "revoked".into());
        let position = self.0.identity.revoke_session(&ctx, session, &reason).await.map_err(status)?;
        Ok(with_position(account::RevokeSessionResponse { consistency_token: position }, position))
    }

    async fn revoke_all_sessions(
        &self,
        req: Request<account::RevokeAllSessionsRequest>,
    ) -> Result<Response<account::RevokeAllSessionsResponse>, Status> {
        let (caller, ctx) = acting(&self.0, &req)?;
        let target = match opt(&req.get_ref().user_id) {
            Some(id) => uuid("user_id", &id)?,
            None => caller.principal.id(),
        };
        caller.require_self_or_privileged(target).map_err(status)?;
        let reason = opt(&req.get_ref().reason).unwrap_or_else(|| "revoke_all".into());
        let position = self.0.identity.revoke_all_sessions(&ctx, target, &reason, None).await.map_err(status)?;
        Ok(with_position(account::RevokeAllSessionsResponse { consistency_token: position }, position))
    }
}

fn spec(p: Option<permission::Permission>) -> Result<PermissionSpec, Status> {
    let p = p.ok_or_else(|| Status::invalid_argument("permission is required"))?;
    Ok(PermissionSpec {
        id: p.id,
        resource: p.resource,
        action: p.action,
        scope: p.scope,
        name: p.name,
        description: p.description,
    })
}

fn role_spec(r: admin::RoleRequest) -> RoleSpec {
    RoleSpec { role_id: r.role_id, display_name: r.display_name, description: r.description, priority: r.priority }
}

fn done(position: u64) -> Response<admin::AdminResponse> {
    with_position(admin::AdminResponse { consistency_token: position }, position)
}

pub struct AdminService(pub App);

#[tonic::async_trait]
impl admin::admin_service_server::AdminService for AdminService {
    async fn create_role(&self, req: Request<admin::RoleRequest>) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let spec = role_spec(req.into_inner());
        Ok(done(self.0.identity.create_role(&ctx, spec).await.map_err(status)?))
    }

    async fn update_role(&self, req: Request<admin::RoleRequest>) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let spec = role_spec(req.into_inner());
        Ok(done(self.0.identity.update_role(&ctx, spec).await.map_err(status)?))
    }

    async fn delete_role(
        &self,
        req: Request<admin::DeleteRoleRequest>,
    ) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        Ok(done(self.0.identity.delete_role(&ctx, &req.get_ref().role_id).await.map_err(status)?))
    }

    async fn grant_role_permission(
        &self,
        req: Request<admin::RolePermissionRequest>,
    ) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let r = req.into_inner();
        Ok(done(self.0.identity.grant_permission_to_role(&ctx, &r.role_id, spec(r.permission)?).await.map_err(status)?))
    }

    async fn revoke_role_permission(
        &self,
        req: Request<admin::RevokeRolePermissionRequest>,
    ) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let r = req.get_ref();
        Ok(done(self.0.identity.revoke_permission_from_role(&ctx, &r.role_id, &r.permission_id).await.map_err(status)?))
    }

    async fn assign_role(
        &self,
        req: Request<admin::AssignRoleRequest>,
    ) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let r = req.get_ref();
        let expires = (r.expires_at > 0).then_some(r.expires_at);
        Ok(done(
            self.0
                .identity
                .assign_role(&ctx, uuid("user_id", &r.user_id)?, &r.role_id, expires)
                .await
                .map_err(status)?,
        ))
    }

    async fn revoke_role(
        &self,
        req: Request<admin::RevokeRoleRequest>,
    ) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let r = req.get_ref();
        Ok(done(self.0.identity.revoke_role(&ctx, uuid("user_id", &r.user_id)?, &r.role_id).await.map_err(status)?))
    }

    async fn grant_permission(
        &self,
        req: Request<admin::UserPermissionRequest>,
    ) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let r = req.into_inner();
        let user = uuid("user_id", &r.user_id)?;
        Ok(done(self.0.identity.grant_permission(&ctx, user, spec(r.permission)?).await.map_err(status)?))
    }

    async fn revoke_permission(
        &self,
        req: Request<admin::RevokeUserPermissionRequest>,
    ) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let r = req.get_ref();
        Ok(done(
            self.0
                .identity
                .revoke_permission(&ctx, uuid("user_id", &r.user_id)?, &r.permission_id)
                .await
                .map_err(status)?,
        ))
    }

    async fn get_audit_trail(
        &self,
        req: Request<admin::AuditTrailRequest>,
    ) -> Result<Response<admin::AuditTrailResponse>, Status> {
        let r = req.get_ref();
        let since = (r.since > 0).then(|| chrono::DateTime::from_timestamp(r.since, 0)).flatten();
        let filter = AuditFilter { since, types: r.types.clone(), limit: r.limit as usize };
        let trail = self.0.identity.audit(&r.user, &filter).await.map_err(status)?;
        let entries = trail
            .into_iter()
            .map(|e| admin::AuditEntry {
                position: e.position,
                recorded_at: e.recorded_at.timestamp_micros(),
                event_type: e.event_type,
                actor: e.actor.unwrap_or_default(),
                client_ip: e.client_ip.unwrap_or_default(),
                user_agent: e.user_agent.unwrap_or_default(),
                correlation_id: e.correlation_id.map(|c| c.to_string()).unwrap_or_default(),
                payload_json: e.event.public_view().to_string(),
            })
            .collect();
        Ok(Response::new(admin::AuditTrailResponse { entries }))
    }

    async fn create_service_account(
        &self,
        req: Request<admin::CreateServiceAccountRequest>,
    ) -> Result<Response<admin::ServiceAccountSecret>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let r = req.get_ref();
        let created =
            self.0.identity.create_service_account(&ctx, &r.name, &r.description, &r.roles).await.map_err(status)?;
        let body = admin::ServiceAccountSecret {
            client_id: created.id.to_string(),
            name: created.name,
            client_secret: created.secret,
            consistency_token: created.position,
        };
        Ok(with_position(body, created.position))
    }

    async fn list_service_accounts(
        &self,
        _req: Request<admin::ListServiceAccountsRequest>,
    ) -> Result<Response<admin::ListServiceAccountsResponse>, Status> {
        let min = Some(self.0.identity.last_write());
        let now = chrono::Utc::now().timestamp();
        let service_accounts = self
            .0
            .identity
            .read(min, |m| {
                super::views::service_accounts(m, now)
                    .into_iter()
                    .map(|a| admin::ServiceAccount {
                        client_id: a.client_id.to_string(),
                        name: a.name,
                        description: a.description,
                        disabled: a.disabled,
                        created_at: a.created_at,
                        roles: a.roles,
                    })
                    .collect()
            })
            .await
            .map_err(status)?;
        Ok(Response::new(admin::ListServiceAccountsResponse { service_accounts }))
    }

    async fn rotate_service_account_secret(
        &self,
        req: Request<admin::ServiceAccountRef>,
    ) -> Result<Response<admin::ServiceAccountSecret>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let id = uuid("client_id", &req.get_ref().client_id)?;
        let (secret, position) = self.0.identity.rotate_service_account_secret(&ctx, id).await.map_err(status)?;
        let name = self
            .0
            .identity
            .read(Some(position), |m| m.service_accounts.get(id).map(|a| a.name.clone()))
            .await
            .map_err(status)?
            .unwrap_or_default();
        let body = admin::ServiceAccountSecret {
            client_id: id.to_string(),
            name,
            client_secret: secret,
            consistency_token: position,
        };
        Ok(with_position(body, position))
    }

    async fn disable_service_account(
        &self,
        req: Request<admin::DisableServiceAccountRequest>,
    ) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let r = req.get_ref();
        let id = uuid("client_id", &r.client_id)?;
        Ok(done(self.0.identity.disable_service_account(&ctx, id, &r.reason).await.map_err(status)?))
    }

    async fn register_client(
        &self,
        req: Request<admin::ClientRequest>,
    ) -> Result<Response<admin::ClientSecret>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let (name, confidential, settings) = client_settings(req.into_inner())?;
        let created = self.0.identity.register_client(&ctx, &name, confidential, settings).await.map_err(status)?;
        let client =
            self.0.identity.read(Some(created.position), |m| m.clients.get(created.id).map(super::views::client));
        let client = client.await.map_err(status)?.map(grpc_client);
        let body = admin::ClientSecret {
            client,
            client_secret: created.secret.unwrap_or_default(),
            consistency_token: created.position,
        };
        Ok(with_position(body, created.position))
    }

    async fn list_clients(
        &self,
        _req: Request<admin::ListClientsRequest>,
    ) -> Result<Response<admin::ListClientsResponse>, Status> {
        let min = Some(self.0.identity.last_write());
        let clients = self.0.identity.read(min, super::views::clients).await.map_err(status)?;
        Ok(Response::new(admin::ListClientsResponse { clients: clients.into_iter().map(grpc_client).collect() }))
    }

    async fn update_client(
        &self,
        req: Request<admin::ClientRequest>,
    ) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let id = uuid("client_id", &req.get_ref().client_id)?;
        let (name, _, settings) = client_settings(req.into_inner())?;
        Ok(done(self.0.identity.update_client(&ctx, id, &name, settings).await.map_err(status)?))
    }

    async fn rotate_client_secret(
        &self,
        req: Request<admin::ClientRef>,
    ) -> Result<Response<admin::ClientSecret>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let id = uuid("client_id", &req.get_ref().client_id)?;
        let (secret, position) = self.0.identity.rotate_client_secret(&ctx, id).await.map_err(status)?;
        let client = self.0.identity.read(Some(position), |m| m.clients.get(id).map(super::views::client));
        let client = client.await.map_err(status)?.map(grpc_client);
        Ok(with_position(admin::ClientSecret { client, client_secret: secret, consistency_token: position }, position))
    }

    async fn delete_client(&self, req: Request<admin::ClientRef>) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let id = uuid("client_id", &req.get_ref().client_id)?;
        Ok(done(self.0.identity.delete_client(&ctx, id).await.map_err(status)?))
    }

    async fn delete_service_account(
        &self,
        req: Request<admin::ServiceAccountRef>,
    ) -> Result<Response<admin::AdminResponse>, Status> {
        let (_, ctx) = acting(&self.0, &req)?;
        let id = uuid("client_id", &req.get_ref().client_id)?;
        Ok(done(self.0.identity.delete_service_account(&ctx, id).await.map_err(status)?))
    }
}

pub struct EventService(pub App);

type EventStream = Pin<Box<dyn Stream<Item = Result<events::EventMessage, Status>> + Send>>;

#[tonic::async_trait]
impl events::event_service_server::EventService for EventService {
    type SubscribeStream = EventStream;

    async fn subscribe(&self, req: Request<events::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let mut sub = subscribe_all(self.0.identity.store().clone(), r.from_position.max(1));
        let prefixes = r.type_prefixes;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let item = match sub.next().await {
                    Ok(e) if !prefixes.is_empty() && !prefixes.iter().any(|p| e.event_type.starts_with(p.as_str())) => {
                        continue
                    }
                    Ok(e) => {
                        let (payload_json, decode_error) = match e.decode() {
                            Ok(ev) => (ev.public_view().to_string(), String::new()),
                            Err(err) => (String::new(), err.to_string()),
                        };
                        Ok(events::EventMessage {
                            position: e.position,
                            event_id: e.event_id.to_string(),
                            stream_id: e.stream_id,
                            stream_version: e.stream_version,
                            event_type: e.event_type,
                            schema_version: e.schema_version.into(),
                            recorded_at: e.recorded_at.timestamp_micros(),
                            payload_json,
                            metadata_json: serde_json::to_string(&e.metadata).unwrap_or_default(),
                            decode_error,
                        })
                    }
                    Err(e) => Err(Status::unavailable(e.to_string())),
                };
                let failed = item.is_err();
                // The client went away: stop following.
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// A client's settings from a gRPC request, with the same defaults as REST and the CLI.
fn client_settings(
    r: admin::ClientRequest,
) -> Result<(String, bool, perfect21_events::catalog::ClientSettings), Status> {
    use perfect21_domain::clients;
    let confidential = clients::is_confidential(&r.client_type).map_err(status)?;
    let or = |v: Vec<String>, default: fn() -> Vec<String>| if v.is_empty() { default() } else { v };
    let alg = r.id_token_signed_response_alg;
    let settings = perfect21_events::catalog::ClientSettings {
        redirect_uris: r.redirect_uris,
        post_logout_redirect_uris: r.post_logout_redirect_uris,
        grant_types: or(r.grant_types, clients::default_grant_types),
        scopes: or(r.scopes, clients::default_scopes),
        id_token_signed_response_alg: if alg.is_empty() { clients::DEFAULT_ID_TOKEN_ALG.into() } else { alg },
    };
    Ok((r.name, confidential, settings))
}

fn grpc_client(c: super::views::PublicClient) -> admin::Client {
    admin::Client {
        client_id: c.client_id.to_string(),
        name: c.name,
        client_type: c.client_type.into(),
        redirect_uris: c.redirect_uris,
        post_logout_redirect_uris: c.post_logout_redirect_uris,
        grant_types: c.grant_types,
        scopes: c.scopes,
        id_token_signed_response_alg: c.id_token_signed_response_alg,
        created_at: c.created_at,
    }
}
