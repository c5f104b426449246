//! What the gRPC and REST front ends share: the identity commands, the keys, and
//! token validation.

use super::access::Perm;
use super::tokens::{Claims, KeySet, TokenError, ISSUER};
use perfect21_domain::{DomainError, Identity, LoginGrant, RequestContext};
use perfect21_events::catalog::UserStatus;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A token that expires sooner than this carries a warning.
const EXPIRY_WARNING_SECS: i64 = 120;
/// How long a validation waits for this process's own latest write to reach the read models.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(1);

/// Shared state of the front ends.
#[derive(Clone)]
pub struct App {
    pub identity: Identity,
    pub keys: Arc<KeySet>,
    /// Return the email verification token in the registration answer (local development and tests only).
    pub dev_mode: bool,
    /// Tokens whose signature was already checked (revocation and status are checked on every call).
    pub verified: Arc<VerifiedTokens>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed (reverse proxies).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Serve `/metrics` without authentication (for a scraper inside a private network).
    pub public_metrics: bool,
    /// The OpenID Connect issuer: the public base URL of this server.
    pub issuer: Arc<str>,
}

/// A bounded cache of signature-checked tokens: an Ed25519 verification costs far
/// more than the rest of a validation, and services validate the same token often.
#[derive(Default)]
pub struct VerifiedTokens {
    map: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<Claims>>>,
}

/// Entries kept at most; the cache starts over when full.
const VERIFIED_CAPACITY: usize = 100_000;

impl VerifiedTokens {
    fn get(&self, token: &str) -> Option<Arc<Claims>> {
        self.map.lock().expect("token cache").get(token).cloned()
    }

    fn put(&self, token: &str, claims: &Arc<Claims>) {
        let mut map = self.map.lock().expect("token cache");
        if map.len() >= VERIFIED_CAPACITY {
            map.clear();
        }
        map.insert(token.into(), claims.clone());
    }
}

/// Who is calling: a user (with the session of their access token) or a service
/// account (client-credentials token).
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    User { id: Uuid, session: Uuid, jti: String, exp: i64 },
    Service { id: Uuid, name: String, jti: String, exp: i64 },
}

impl Principal {
    /// The user or service account id (what roles are assigned to).
    pub fn id(&self) -> Uuid {
        match self {
            Principal::User { id, .. } | Principal::Service { id, .. } => *id,
        }
    }

    pub fn is_service(&self) -> bool {
        matches!(self, Principal::Service { .. })
    }

    /// The request context acting as this principal (its `actor` in event metadata).
    pub fn context(&self, ctx: RequestContext) -> RequestContext {
        match self {
            Principal::User { id, .. } => ctx.as_user(*id),
            Principal::Service { id, .. } => RequestContext { actor: Some(format!("service_account:{id}")), ..ctx },
        }
    }
}

/// Lifetime of a client-credentials access token.
pub const SERVICE_TOKEN_TTL_SECS: i64 = 300;

/// The outcome of validating an access token.
#[derive(Debug, Default, Clone)]
pub struct TokenCheck {
    pub valid: bool,
    /// Who the token speaks for, when valid.
    pub principal: Option<Principal>,
    pub user_id: Option<Uuid>,
    pub permissions: Vec<String>,
    pub expires_at: i64,
    pub error: Option<String>,
    pub warnings: Vec<String>,
    /// Of an admission: whether the principal holds the permission asked (`false` when
    /// none was asked).
    pub holds: bool,
}

impl TokenCheck {
    fn invalid(error: impl Into<String>) -> Self {
        TokenCheck { error: Some(error.into()), ..Default::default() }
    }

    /// A valid token, checked for who it speaks for only.
    fn admitted(principal: Principal, expires_at: i64) -> Self {
        TokenCheck {
            valid: true,
            user_id: Some(principal.id()),
            principal: Some(principal),
            expires_at,
            ..Default::default()
        }
    }
}

/// How much a token check works out: who the token speaks for (admitting a caller),
/// or also its permissions and warnings (answering a validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detail {
    /// Who the token speaks for and whether it holds this permission (if one is asked),
    /// judged on the same read of the models.
    Principal(Option<Perm>),
    Full,
}

impl App {
    /// The front ends' state over `identity` and `keys`, with defaults: no trusted proxies,
    /// `/metrics` authenticated, not in development mode.
    pub fn new(identity: Identity, keys: Arc<KeySet>) -> App {
        App {
            identity,
            keys,
            dev_mode: false,
            verified: Default::default(),
            trusted_proxies: Arc::from(Vec::new()),
            public_metrics: false,
            issuer: Arc::from("http://localhost:8080"),
        }
    }

    /// The client's address: the peer, or — when the peer is a trusted proxy — the
    /// nearest address in `X-Forwarded-For` (or `Forwarded: for=`) that is not itself
    /// a trusted proxy. Headers from any other peer are ignored.
    pub fn client_ip(&self, peer: Option<std::net::IpAddr>, headers: &http::HeaderMap) -> Option<String> {
        let peer = peer?;
        let trusted = |ip: &std::net::IpAddr| self.trusted_proxies.iter().any(|net| net.contains(ip));
        if !trusted(&peer) {
            return Some(peer.to_string());
        }
        let values = |name: &str| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
        // RFC 7239 `for=` parameters (quoted, IPv6 in brackets, ports dropped); else X-Forwarded-For.
        let mut hops: Vec<std::net::IpAddr> = values("forwarded")
            .into_iter()
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
            .filter_map(|(_, v)| forwarded_address(v))
            .collect();
        if hops.is_empty() {
            hops = values("x-forwarded-for")
                .into_iter()
                .flat_map(|v| v.split(','))
                .filter_map(|s| s.trim().parse().ok())
                .collect();
        }
        // Right to left: the first hop not added by one of our own proxies is the client.
        Some(hops.into_iter().rev().find(|ip| !trusted(ip)).unwrap_or(peer).to_string())
    }

    /// Signs the access token of a grant.
    pub fn access_token(&self, grant: &LoginGrant) -> anyhow::Result<String> {
        self.sign_access(grant, None)
    }

    /// Signs the access token of an OpenID Connect client's session: its audience is
    /// the client, with the scopes granted.
    pub fn client_access_token(&self, grant: &LoginGrant, client: Uuid, scope: &str) -> anyhow::Result<String> {
        self.sign_access(grant, Some((client, scope)))
    }

    fn sign_access(&self, grant: &LoginGrant, client: Option<(Uuid, &str)>) -> anyhow::Result<String> {
        let roles = self.identity.live().read(|m| {
            m.authz.user_roles(grant.user_id, chrono::Utc::now().timestamp()).iter().map(|r| r.id.clone()).collect()
        });
        let claims = Claims {
            sub: grant.user_id.to_string(),
            sid: grant.session_id.to_string(),
            jti: grant.access_jti.clone(),
            iat: chrono::Utc::now().timestamp(),
            exp: grant.access_expires_at,
            iss: ISSUER.into(),
            roles,
            client_id: None,
            aud: client.map(|(id, _)| id.to_string()),
            scope: client.map(|(_, scope)| scope.to_string()),
        };
        let token = self.keys.sign(&claims)?;
        metrics::counter!("perfect21_token_operations_total", "operation" => "issue", "outcome" => "issued")
            .increment(1);
        Ok(token)
    }

    /// A short-lived access token for a service account (the client-credentials grant):
    /// the token and its lifetime in seconds.
    pub fn service_token(&self, id: Uuid) -> anyhow::Result<(String, i64)> {
        let now = chrono::Utc::now().timestamp();
        let roles = self.identity.live().read(|m| m.authz.user_roles(id, now).iter().map(|r| r.id.clone()).collect());
        let claims = Claims {
            sub: id.to_string(),
            sid: String::new(),
            jti: Uuid::now_v7().simple().to_string(),
            iat: now,
            exp: now + SERVICE_TOKEN_TTL_SECS,
            iss: ISSUER.into(),
            roles,
            client_id: Some(id.to_string()),
            aud: None,
            scope: None,
        };
        let token = self.keys.sign(&claims)?;
        metrics::counter!("perfect21_token_operations_total", "operation" => "issue", "outcome" => "issued")
            .increment(1);
        Ok((token, SERVICE_TOKEN_TTL_SECS))
    }

    /// Who a bearer token speaks for and, when `perm` is given, whether it holds that
    /// permission (counted as a permission check); or why it speaks for no one.
    pub async fn authenticate(&self, token: &str, perm: Option<Perm>) -> Result<(Principal, bool), String> {
        let check = self.check_token(token, None, Detail::Principal(perm)).await;
        match check.principal {
            Some(p) if check.valid => Ok((p, check.holds)),
            _ => Err(check.error.unwrap_or_else(|| "invalid token".into())),
        }
    }

    /// Signature, expiry, revocation (including this process's latest revocations)
    /// and the user's status; with warnings a caller may act on.
    pub async fn validate(&self, token: &str, client_ip: Option<&str>) -> TokenCheck {
        let check = self.check_token(token, client_ip, Detail::Full).await;
        self.identity.counters().token_validation(check.valid);
        check
    }

    /// The claims of an access token whose signature checks (through the cache of
    /// verified tokens); expiry is the caller's to check.
    pub fn verified_claims(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        if let Some(c) = self.verified.get(token) {
            return Ok(c);
        }
        let c = Arc::new(self.keys.verify(token, false)?);
        self.verified.put(token, &c);
        Ok(c)
    }

    async fn check_token(&self, token: &str, client_ip: Option<&str>, detail: Detail) -> TokenCheck {
        let claims = match self.verified_claims(token) {
            Ok(c) => c,
            Err(TokenError::Expired) => return TokenCheck::invalid("token has expired"),
            Err(e) => return TokenCheck::invalid(e.to_string()),
        };
        if claims.exp <= chrono::Utc::now().timestamp() {
            return TokenCheck::invalid("token has expired");
        }
        if claims.client_id.is_some() {
            return self.check_service_token(&claims, detail).await;
        }
        let (Some(user_id), Some(session_id)) = (claims.user_id(), claims.session_id()) else {
            return TokenCheck::invalid("token names no valid user or session");
        };
        // A revocation made through this process must be visible at once.
        let live = self.identity.live();
        if live.wait_for(self.identity.last_revocation(), OWN_WRITE_WAIT).await.is_err() {
            return TokenCheck::invalid("read models are behind; try again");
        }
        // A session the read models do not know yet may have started a moment ago (on this
        // replica or another): catch up with the log before calling the token revoked.
        if !live.read(|m| m.sessions.get(session_id).is_some()) {
            let head = self.identity.store().head_position().await.unwrap_or(0);
            if live.wait_for(head, OWN_WRITE_WAIT).await.is_err() {
                return TokenCheck::invalid("read models are behind; try again");
            }
        }
        let now = chrono::Utc::now().timestamp();
        live.read(|m| {
            if m.sessions.is_revoked(&claims.jti, session_id) {
                return TokenCheck::invalid("token has been revoked");
            }
            match m.users.get(user_id).map(|u| u.status) {
                None => return TokenCheck::invalid("user does not exist"),
                Some(s @ (UserStatus::Locked | UserStatus::Suspended | UserStatus::Deleted)) => {
                    return TokenCheck::invalid(format!("user is {}", status_name(s)));
                }
                _ => {}
            }
            if let Detail::Principal(perm) = detail {
                let principal =
                    Principal::User { id: user_id, session: session_id, jti: claims.jti.clone(), exp: claims.exp };
                let holds = self.holds_in(m, user_id, perm);
                return TokenCheck { holds, ..TokenCheck::admitted(principal, claims.exp) };
            }
            let permissions = permission_names(m, user_id, now);
            let mut warnings = Vec::new();
            if claims.exp - now < EXPIRY_WARNING_SECS {
                warnings.push(format!("token expires in {} s", claims.exp - now));
            }
            if let Some(ip) = client_ip.filter(|ip| !ip.is_empty()) {
                let address = ip.parse::<std::net::IpAddr>().ok();
                let seen =
                    m.audit.logins(user_id).any(|l| l.success && l.client_ip.is_some() && l.client_ip == address);
                if !seen {
                    warnings.push(format!("new device: no successful login of this user from {ip}"));
                }
            }
            TokenCheck {
                valid: true,
                principal: Some(Principal::User {
                    id: user_id,
                    session: session_id,
                    jti: claims.jti.clone(),
                    exp: claims.exp,
                }),
                expires_at: claims.exp,
                user_id: Some(user_id),
                permissions,
                warnings,
                error: None,
                holds: false,
            }
        })
    }

    /// A client-credentials token: its service account must exist and be enabled.
    async fn check_service_token(&self, claims: &Claims, detail: Detail) -> TokenCheck {
        let Some(id) = claims.user_id().filter(|id| claims.client_id.as_deref() == Some(id.to_string().as_str()))
        else {
            return TokenCheck::invalid("token names no valid service account");
        };
        let live = self.identity.live();
        if live.wait_for(self.identity.last_revocation(), OWN_WRITE_WAIT).await.is_err() {
            return TokenCheck::invalid("read models are behind; try again");
        }
        let now = chrono::Utc::now().timestamp();
        live.read(|m| match m.service_accounts.get(id) {
            None => TokenCheck::invalid("service account does not exist"),
            Some(a) if a.disabled => TokenCheck::invalid("service account is disabled"),
            Some(a) => TokenCheck {
                valid: true,
                principal: Some(Principal::Service {
                    id,
                    name: a.name.clone(),
                    jti: claims.jti.clone(),
                    exp: claims.exp,
                }),
                expires_at: claims.exp,
                user_id: Some(id),
                permissions: if detail == Detail::Full { permission_names(m, id, now) } else { Vec::new() },
                holds: match detail {
                    Detail::Principal(perm) => self.holds_in(m, id, perm),
                    Detail::Full => false,
                },
                warnings: Vec::new(),
                error: None,
            },
        })
    }

    /// Everything held about a user (right of access), as of this process's latest
    /// write; `None` when there is no such user.
    pub async fn export_user(&self, id: Uuid) -> Result<Option<serde_json::Value>, DomainError> {
        let filter = perfect21_domain::audit::AuditFilter::default();
        let history = match perfect21_domain::audit::audit_trail(
            self.identity.store().as_ref(),
            Some(self.identity.secrets()),
            id,
            &filter,
        )
        .await
        {
            Ok(h) => h,
            Err(DomainError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let now = chrono::Utc::now().timestamp();
        self.identity.read(Some(self.identity.last_write()), |m| super::views::export(m, id, now, &history)).await
    }

    /// Whether `id` holds `perm` in `m` at the identity's clock, counted as a permission
    /// check (`false`, and not counted, when none is asked).
    fn holds_in(&self, m: &perfect21_projections::ReadModels, id: Uuid, perm: Option<Perm>) -> bool {
        let Some(p) = perm else { return false };
        let now = self.identity.config().clock.now();
        let allowed = m.authz.holds(id, m.principal_status(id), p.resource, p.action, "*", now);
        self.identity.counters().permission_check(allowed);
        allowed
    }

    /// Whether `principal` holds `perm`, counted as a permission check.
    pub async fn holds(&self, principal: Uuid, perm: Perm) -> Result<bool, DomainError> {
        // Wait for this process's own revocations, so a revoked role stops granting at once.
        let min = Some(self.identity.last_revocation());
        self.identity.read(min, |m| self.holds_in(m, principal, Some(perm))).await
    }
}

/// The address of a `Forwarded: for=` value: `"[2001:db8::7]:4711"`, `192.0.2.1:80`, `192.0.2.1`.
fn forwarded_address(value: &str) -> Option<std::net::IpAddr> {
    let v = value.trim().trim_matches('"');
    let v = match v.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None if v.matches(':').count() == 1 => v.split(':').next()?,
        None => v,
    };
    v.parse().ok()
}

/// `resource:action:scope` of every permission `principal` holds at `now`.
fn permission_names(m: &perfect21_projections::ReadModels, principal: Uuid, now: i64) -> Vec<String> {
    m.authz
        .effective_permissions(principal, now)
        .into_iter()
        .map(|(_, p)| format!("{}:{}:{}", p.resource, p.action, p.scope))
        .collect()
}

pub fn status_name(s: UserStatus) -> &'static str {
    match s {
        UserStatus::PendingVerification => "pending verification",
        UserStatus::Active => "active",
        UserStatus::Locked => "locked",
        UserStatus::Suspended => "suspended",
        UserStatus::Deleted => "deleted",
    }
}
