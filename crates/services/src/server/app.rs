//! What the gRPC and REST front ends share: the identity commands, the keys, and
//! token validation.

use super::tokens::{Claims, KeySet, TokenError, ISSUER};
use perfect21_domain::{DomainError, Identity, LoginGrant};
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
}

/// A bounded cache of signature-checked tokens: an Ed25519 verification costs far
/// more than the rest of a validation, and services validate the same token often.
#[derive(Default)]
pub struct VerifiedTokens {
    map: std::sync::Mutex<std::collections::HashMap<Arc<str>, Claims>>,
}

/// Entries kept at most; the cache starts over when full.
const VERIFIED_CAPACITY: usize = 100_000;

impl VerifiedTokens {
    fn get(&self, token: &str) -> Option<Claims> {
        self.map.lock().expect("token cache").get(token).cloned()
    }

    fn put(&self, token: &str, claims: &Claims) {
        let mut map = self.map.lock().expect("token cache");
        if map.len() >= VERIFIED_CAPACITY {
            map.clear();
        }
        map.insert(token.into(), claims.clone());
    }
}

/// The outcome of validating an access token.
#[derive(Debug, Default, Clone)]
pub struct TokenCheck {
    pub valid: bool,
    pub claims: Option<Claims>,
    pub user_id: Option<Uuid>,
    pub permissions: Vec<String>,
    pub expires_at: i64,
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

impl TokenCheck {
    fn invalid(error: impl Into<String>) -> Self {
        TokenCheck { error: Some(error.into()), ..Default::default() }
    }
}

impl App {
    /// Signs the access token of a grant.
    pub fn access_token(&self, grant: &LoginGrant) -> anyhow::Result<String> {
        let roles =
            self.identity.live().read(|m| m.authz.user_roles(grant.user_id).iter().map(|r| r.id.clone()).collect());
        let claims = Claims {
            sub: grant.user_id.to_string(),
            sid: grant.session_id.to_string(),
            jti: grant.access_jti.clone(),
            iat: chrono::Utc::now().timestamp(),
            exp: grant.access_expires_at,
            iss: ISSUER.into(),
            roles,
        };
        let token = self.keys.sign(&claims)?;
        metrics::counter!("perfect21_token_operations_total", "operation" => "issue", "outcome" => "issued")
            .increment(1);
        Ok(token)
    }

    /// Signature, expiry, revocation (including this process's latest revocations)
    /// and the user's status; with warnings a caller may act on.
    pub async fn validate(&self, token: &str, client_ip: Option<&str>) -> TokenCheck {
        let check = self.check_token(token, client_ip).await;
        let outcome = if check.valid { "valid" } else { "invalid" };
        metrics::counter!("perfect21_token_operations_total", "operation" => "validate", "outcome" => outcome)
            .increment(1);
        check
    }

    async fn check_token(&self, token: &str, client_ip: Option<&str>) -> TokenCheck {
        let claims = match self.verified.get(token) {
            Some(c) => c,
            None => match self.keys.verify(token, false) {
                Ok(c) => {
                    self.verified.put(token, &c);
                    c
                }
                Err(TokenError::Expired) => return TokenCheck::invalid("token has expired"),
                Err(e) => return TokenCheck::invalid(e.to_string()),
            },
        };
        if claims.exp <= chrono::Utc::now().timestamp() {
            return TokenCheck::invalid("token has expired");
        }
        let (Some(user_id), Some(session_id)) = (claims.user_id(), claims.session_id()) else {
            return TokenCheck::invalid("token names no valid user or session");
        };
        // A revocation made through this process must be visible at once.
        let live = self.identity.live();
        if live.wait_for(self.identity.last_revocation(), OWN_WRITE_WAIT).await.is_err() {
            return TokenCheck::invalid("read models are behind; try again");
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
            let permissions = m
                .authz
                .effective_permissions(user_id)
                .into_iter()
                .map(|(_, p)| format!("{}:{}:{}", p.resource, p.action, p.scope))
                .collect();
            let mut warnings = Vec::new();
            if claims.exp - now < EXPIRY_WARNING_SECS {
                warnings.push(format!("token expires in {} s", claims.exp - now));
            }
            if let Some(ip) = client_ip.filter(|ip| !ip.is_empty()) {
                let seen =
                    m.audit.logins(user_id).any(|l| l.success && l.client_ip.is_some_and(|a| a.to_string() == ip));
                if !seen {
                    warnings.push(format!("new device: no successful login of this user from {ip}"));
                }
            }
            TokenCheck {
                valid: true,
                expires_at: claims.exp,
                user_id: Some(user_id),
                permissions,
                warnings,
                claims: Some(claims.clone()),
                error: None,
            }
        })
    }

    /// Refuses unless `user` holds `resource:action:*` (admin operations).
    pub async fn require(&self, user: Uuid, resource: &str, action: &str) -> Result<(), DomainError> {
        let decision = self.identity.check_permission(user, resource, action, "*", None).await?;
        if decision.allowed {
            Ok(())
        } else {
            Err(DomainError::PermissionDenied(format!("{resource}:{action}:* is required ({})", decision.reason)))
        }
    }
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
