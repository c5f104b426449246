//! Who issues a command and from where; recorded in every event's metadata.

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

impl RequestContext {
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
        }
    }
}
