//! A user's security history, read straight from the log: the user's own stream
//! and the streams of its sessions hold every event about it, so the trail is
//! authoritative and never behind.

use crate::error::{DomainError, Result};
use crate::secrets::SecretBox;
use crate::state::{ReservationState, StreamState};
use crate::stream;
use crate::users::Reservation;
use chrono::{DateTime, Utc};
use perfect21_events::{Event, EventStore, RecordedEvent, StreamId};
use perfect21_projections::audit::audited_user;
use perfect21_projections::users::{normalize_email, normalize_username};
use std::collections::BTreeSet;
use uuid::Uuid;

/// Which events of the trail to return.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events recorded at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only events whose type starts with one of these (e.g. `security.`, `user.login`).
    pub types: Vec<String>,
    /// At most this many (the newest), 0: all.
    pub limit: usize,
}

/// One entry of a user's security history.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
    pub event_type: String,
    pub event: Event,
    /// Who did it: `user:<id>`, `service:<name>`, `anonymous`.
    pub actor: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub correlation_id: Option<Uuid>,
}

/// The reservation streams of a value, keyed first: both with the server secret, only
/// the legacy one without it (a tool reading a log whose secret it does not have).
fn reservation_streams(secrets: Option<&SecretBox>, kind: &str, value: &str) -> Result<Vec<StreamId>> {
    Ok(match secrets {
        Some(secrets) => Reservation::of(secrets, kind, value)?.streams().into_iter().cloned().collect(),
        None => vec![Reservation::legacy(kind, value)?],
    })
}

/// The user an email address, username or id names (reservation streams are
/// authoritative); `secrets` is the server secret that keys their ids, if the caller
/// has it (see [`Reservation`]).
pub async fn resolve_user(
    store: &dyn EventStore,
    secrets: Option<&SecretBox>,
    identifier: &str,
) -> Result<Option<Uuid>> {
    if let Ok(id) = Uuid::parse_str(identifier) {
        return Ok(Some(id));
    }
    let (kind, value) = if identifier.contains('@') {
        ("email", normalize_email(identifier))
    } else {
        ("username", normalize_username(identifier))
    };
    for s in reservation_streams(secrets, kind, &value)? {
        let state: ReservationState = load(store, &s).await?;
        if let Some((owner, _)) = state.owner {
            return Ok(Some(owner));
        }
    }
    Ok(None)
}

pub(crate) async fn load<S: StreamState>(store: &dyn EventStore, s: &StreamId) -> Result<S> {
    let mut state = S::default();
    for recorded in read_stream(store, s).await? {
        state.apply(&recorded, &recorded.decode()?);
    }
    Ok(state)
}

async fn read_stream(store: &dyn EventStore, s: &StreamId) -> Result<Vec<RecordedEvent>> {
    let mut out = Vec::new();
    loop {
        let page = store.read_stream(s, out.len() as u64, 1000).await?;
        let done = page.len() < 1000;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// The security history of `user_id` (a user or a service account), oldest first.
pub async fn audit_trail(
    store: &dyn EventStore,
    secrets: Option<&SecretBox>,
    user_id: Uuid,
    filter: &AuditFilter,
) -> Result<Vec<AuditEntry>> {
    let mut own = read_stream(store, &stream("user", user_id)?).await?;
    if own.is_empty() {
        own = read_stream(store, &stream(crate::service_accounts::CATEGORY, user_id)?).await?;
    }
    if own.is_empty() {
        return Err(DomainError::NotFound { what: "user", id: user_id.to_string() });
    }
    let mut sessions = BTreeSet::new();
    let mut emails = BTreeSet::new();
    let mut decoded = Vec::with_capacity(own.len());
    for recorded in own {
        let event = recorded.decode()?;
        match &event {
            Event::UserLoginSucceeded(e) => {
                sessions.insert(e.session_id);
            }
            Event::UserRegistered(e) => {
                emails.insert(e.email.clone());
            }
            _ => {}
        }
        decoded.push((recorded, event));
    }
    // Attempts to register with the user's address are on its reservation stream.
    for email in emails.iter().filter(|e| !e.is_empty()) {
        for s in reservation_streams(secrets, "email", &normalize_email(email))? {
            for recorded in read_stream(store, &s).await? {
                let event = recorded.decode()?;
                if matches!(event, Event::UserRegistrationAttempted(_)) {
                    decoded.push((recorded, event));
                }
            }
        }
    }
    for session in sessions {
        for recorded in read_stream(store, &stream("session", session)?).await? {
            let event = recorded.decode()?;
            decoded.push((recorded, event));
        }
    }
    decoded.sort_by_key(|(r, _)| r.position);
    let mut entries: Vec<AuditEntry> = decoded
        .into_iter()
        .filter(|(r, e)| {
            audited_user(e) == Some(user_id)
                && filter.since.is_none_or(|t| r.recorded_at >= t)
                && (filter.types.is_empty() || filter.types.iter().any(|p| r.event_type.starts_with(p.as_str())))
        })
        .map(|(r, event)| AuditEntry {
            position: r.position,
            recorded_at: r.recorded_at,
            event_type: r.event_type,
            event,
            actor: r.metadata.actor,
            client_ip: r.metadata.client_ip,
            user_agent: r.metadata.user_agent,
            correlation_id: r.metadata.correlation_id,
        })
        .collect();
    if filter.limit > 0 && entries.len() > filter.limit {
        entries.drain(..entries.len() - filter.limit);
    }
    Ok(entries)
}

impl crate::Identity {
    /// The security history of a user (by id, email or username).
    pub async fn audit(&self, identifier: &str, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let user = resolve_user(self.store.as_ref(), Some(&self.secrets), identifier)
            .await?
            .ok_or_else(|| DomainError::NotFound { what: "user", id: identifier.into() })?;
        audit_trail(self.store.as_ref(), Some(&self.secrets), user, filter).await
    }
}
