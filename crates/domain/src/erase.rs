//! Erasing a deleted user's personal data from the log.
//!
//! The log is append-only with one exception: after `user.deleted`, every event
//! of the user's stream and of its sessions is rewritten in place
//! ([`EventStore::redact`](perfect21_events::EventStore::redact)) with the same
//! type, version, id and position, but with names, email, username, phone,
//! password and MFA material blanked and the client IP and user agent dropped from
//! the metadata. Replaying afterwards yields the same read models as before (they
//! forget the same data when they fold `user.deleted`), so digests still agree.
//! What the user did on other streams (an administrator's role changes) keeps its
//! payload and loses its client IP and user agent. Device ids and free-text reasons
//! are blanked too.
//! Email and username reservations hold only keyed hashes (and, from before keyed
//! ids, bare ones, whose stream ids cannot be rewritten); their metadata is redacted too.

use crate::error::Result;
use crate::Identity;
use perfect21_events::catalog::*;
use perfect21_events::{Event, Metadata, RecordedEvent, Redaction, StreamId};

/// The event with its personal data blanked; `None` if it holds none.
pub fn redacted(event: &Event) -> Option<Event> {
    Some(match event {
        Event::UserRegistered(e) => Event::UserRegistered(UserRegistered {
            email: String::new(),
            username: String::new(),
            first_name: None,
            last_name: None,
            phone_number: None,
            password_hash: String::new(),
            verification_token_hash: String::new(),
            ..e.clone()
        }),
        Event::UserProfileUpdated(e) => Event::UserProfileUpdated(UserProfileUpdated {
            user_id: e.user_id,
            first_name: None,
            last_name: None,
            phone_number: None,
            profile: vec![],
        }),
        Event::UserPasswordChanged(e) => {
            Event::UserPasswordChanged(UserPasswordChanged { password_hash: String::new(), ..e.clone() })
        }
        Event::UserMfaEnabled(e) => Event::UserMfaEnabled(UserMfaEnabled {
            secret_ciphertext: vec![],
            recovery_code_hashes: vec![],
            ..e.clone()
        }),
        Event::SuspiciousActivity(e) => Event::SuspiciousActivity(SuspiciousActivity { details: vec![], ..e.clone() }),
        // Devices and free-text reasons say something about the person too.
        Event::UserLoginSucceeded(e) => Event::UserLoginSucceeded(UserLoginSucceeded { device_id: None, ..e.clone() }),
        Event::SessionStarted(e) => Event::SessionStarted(SessionStarted { device_id: None, ..e.clone() }),
        Event::UserLoginFailed(e) => Event::UserLoginFailed(UserLoginFailed { reason: String::new(), ..e.clone() }),
        Event::UserStatusChanged(e) => {
            Event::UserStatusChanged(UserStatusChanged { reason: String::new(), ..e.clone() })
        }
        Event::UserDeleted(e) => Event::UserDeleted(UserDeleted { reason: String::new(), ..e.clone() }),
        Event::SessionRevoked(e) => Event::SessionRevoked(SessionRevoked { reason: String::new(), ..e.clone() }),
        _ => return None,
    })
}

fn redacted_metadata(m: &Metadata) -> Metadata {
    Metadata { client_ip: None, user_agent: None, ..m.clone() }
}

impl Identity {
    /// Rewrites the personal data out of the streams of a deleted user (its own,
    /// its reservations', its sessions'); returns how many events changed.
    pub(crate) async fn erase_personal_data(&self, streams: &[StreamId]) -> Result<usize> {
        let mut changed = 0;
        for s in streams {
            changed += self.redact_stream(s).await?;
        }
        Ok(changed)
    }

    /// Drops the client address and user agent from the metadata of what `user_id` did
    /// on streams other than `erased` (e.g. an administrator's role changes): one pass
    /// over the log. Returns how many events changed.
    pub(crate) async fn erase_actions_elsewhere(&self, user_id: uuid::Uuid, erased: &[StreamId]) -> Result<usize> {
        let actor = format!("user:{user_id}");
        let mut by_stream: std::collections::BTreeMap<String, Vec<Redaction>> = Default::default();
        let mut from = 1;
        loop {
            let page = self.store.read_all(from, 1000).await?;
            let Some(last) = page.last() else { break };
            from = last.position + 1;
            for recorded in page {
                let m = &recorded.metadata;
                let theirs = m.actor.as_deref() == Some(actor.as_str());
                if !theirs || (m.client_ip.is_none() && m.user_agent.is_none()) {
                    continue;
                }
                if erased.iter().any(|s| s.as_str() == recorded.stream_id) {
                    continue;
                }
                let redaction = Redaction {
                    position: recorded.position,
                    payload: recorded.payload.clone(),
                    metadata: redacted_metadata(m),
                };
                by_stream.entry(recorded.stream_id).or_default().push(redaction);
            }
        }
        let mut changed = 0;
        for (s, redactions) in by_stream {
            changed += self.store.redact(&StreamId::new(s)?, redactions).await?;
        }
        Ok(changed)
    }

    async fn redact_stream(&self, s: &StreamId) -> Result<usize> {
        let mut redactions = Vec::new();
        let mut from = 0;
        loop {
            let page: Vec<RecordedEvent> = self.store.read_stream(s, from, 1000).await?;
            let Some(last) = page.last() else { break };
            from = last.stream_version + 1;
            for recorded in &page {
                let metadata = redacted_metadata(&recorded.metadata);
                let payload = match redacted(&recorded.decode()?) {
                    // Written back in the record's own schema version.
                    Some(event) => perfect21_events::catalog::legacy::encode_as(&event, recorded.schema_version)?,
                    None if metadata == recorded.metadata => continue,
                    None => recorded.payload.clone(),
                };
                redactions.push(Redaction { position: recorded.position, payload, metadata });
            }
        }
        if redactions.is_empty() {
            return Ok(0);
        }
        Ok(self.store.redact(s, redactions).await?)
    }
}
