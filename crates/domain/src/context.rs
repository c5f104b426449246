//! Who issues a command and from where; recorded in every event's metadata.

use crate::error::DomainError;
use perfect21_events::Metadata;
use uuid::Uuid;

/// The caller of a command.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// `user:<id>`, `service:<name>` or `anonymous`.
    pub actor: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub correlation_id: Option<Uuid>,
    pub source_service: Option<String>,
    pub traceparent: Option<String>,
}

/// Longest user agent recorded (characters).
pub const MAX_USER_AGENT: usize = 512;
/// Longest device id (characters).
pub const MAX_DEVICE_ID: usize = 128;
/// Longest free-text reason (characters).
pub const MAX_REASON: usize = 1024;

/// Refuses a text longer than `max` characters or holding control characters.
/// (Characters, not bytes, so that the bound is the one the OpenAPI document states.)
pub fn bounded(field: &'static str, value: &str, max: usize) -> Result<(), DomainError> {
    let n = value.chars().count();
    if n > max {
        return Err(DomainError::InvalidArgument {
            field,
            reason: format!("must be at most {max} characters, got {n}"),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::InvalidArgument { field, reason: "must not contain control characters".into() });
    }
    Ok(())
}

impl RequestContext {
    /// Checks what the caller said about itself before any of it reaches the log:
    /// the client IP must be an IP address, the user agent at most
    /// [`MAX_USER_AGENT`] characters.
    pub fn validate(&self) -> Result<(), DomainError> {
        if let Some(ip) = &self.client_ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(DomainError::InvalidArgument {
                    field: "client_ip",
                    reason: format!("'{}' is not an IP address", ip.chars().take(64).collect::<String>()),
                });
            }
        }
        if let Some(ua) = &self.user_agent {
            bounded("user_agent", ua, MAX_USER_AGENT)?;
        }
        Ok(())
    }

    /// A context for an operator or internal job.
    pub fn service(name: &str) -> Self {
        RequestContext {
            actor: Some(format!("service:{name}")),
            source_service: Some(name.to_string()),
            correlation_id: Some(Uuid::now_v7()),
            ..Default::default()
        }
    }

    /// The same context acting as `user`.
    pub fn as_user(mut self, user: Uuid) -> Self {
        self.actor = Some(format!("user:{user}"));
        self
    }

    pub fn metadata(&self) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id.unwrap_or_else(Uuid::now_v7)),
            causation_id: None,
            actor: Some(self.actor.clone().unwrap_or_else(|| "anonymous".into())),
            source_service: self.source_service.clone(),
            client_ip: self.client_ip.clone(),
            user_agent: self.user_agent.clone(),
            traceparent: self.traceparent.clone(),
            sealed: None,
        }
    }
}
