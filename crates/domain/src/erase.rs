//! Erasing a deleted user's personal data.
//!
//! Events are sealed as they are appended ([`perfect21_events::seal`]): the user's
//! names, email, username, phone, device ids, free-text reasons, password and MFA
//! material, and the client address and user agent of what they did, are encrypted
//! with their data key. Erasing deletes that key and records `user.erased`: from then
//! on every copy of the log reads as the tombstone (those fields blanked), and no
//! recorded byte changes, so the chain still verifies without a redaction.
//!
//! Events recorded before sealing hold personal fields in clear. For those (only),
//! the erasure falls back to rewriting them in place
//! ([`EventStore::redact`](perfect21_events::EventStore::redact)) with the same
//! type, version, id and position and the same fields blanked; a backend that cannot
//! rewrite refuses the erasure with an error that says so. Replaying afterwards yields
//! the same read models as before (they forget the same data when they fold
//! `user.deleted`), so digests still agree.
//! Email and username reservations hold only keyed hashes (and, from before keyed
//! ids, bare ones, whose stream ids cannot be rewritten).

use crate::error::Result;
use crate::Identity;
use perfect21_events::catalog::personal::blanked;
use perfect21_events::{Metadata, RecordedEvent, Redaction, StreamId};

fn redacted_metadata(m: &Metadata) -> Metadata {
    Metadata { client_ip: None, user_agent: None, ..m.clone() }
}

impl Identity {
    /// Erases a deleted user: deletes their data key, records `user.erased`, and
    /// rewrites in place what of their streams (their own, their reservations', their
    /// sessions') and of their actions elsewhere was recorded before sealing.
    pub(crate) async fn erase_user(
        &self,
        ctx: &crate::RequestContext,
        user_id: uuid::Uuid,
        streams: &[StreamId],
    ) -> Result<u64> {
        self.store.erase_subject(user_id).await?;
        let erased = perfect21_events::Event::UserErased(perfect21_events::catalog::UserErased { user_id });
        let r = self.append(ctx, &streams[0], perfect21_events::ExpectedVersion::StreamExists, &[erased]).await?;
        let mut plan = Vec::new();
        for s in streams {
            plan.push((s.clone(), self.stream_redactions(s).await?));
        }
        plan.extend(self.redactions_elsewhere(user_id, streams).await?);
        plan.retain(|(_, redactions)| !redactions.is_empty());
        if !plan.is_empty() && !self.store.rewrites_in_place() {
            let events: usize = plan.iter().map(|(_, r)| r.len()).sum();
            return Err(crate::DomainError::FailedPrecondition(format!(
                "user {user_id} was erased for every event sealed with their key, but {events} events recorded \
                 before sealing hold their data in clear and the {} log cannot rewrite events in place",
                self.store.backend()
            )));
        }
        for (s, redactions) in plan {
            self.store.redact(&s, redactions).await?;
        }
        Ok(r.position)
    }

    /// What drops the client address and user agent from the metadata of what `user_id`
    /// did on streams other than `erased` (e.g. an administrator's role changes), where it
    /// was recorded in clear: one pass over the log.
    async fn redactions_elsewhere(
        &self,
        user_id: uuid::Uuid,
        erased: &[StreamId],
    ) -> Result<Vec<(StreamId, Vec<Redaction>)>> {
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
        let mut out = Vec::new();
        for (s, redactions) in by_stream {
            out.push((StreamId::new(s)?, redactions));
        }
        Ok(out)
    }

    /// What rewrites the personal data recorded in clear out of one stream: nothing for
    /// sealed events, which read as blanked once the key is gone.
    async fn stream_redactions(&self, s: &StreamId) -> Result<Vec<Redaction>> {
        let mut redactions = Vec::new();
        let mut from = 0;
        loop {
            let page: Vec<RecordedEvent> = self.store.read_stream(s, from, 1000).await?;
            let Some(last) = page.last() else { break };
            from = last.stream_version + 1;
            for recorded in &page {
                let metadata = redacted_metadata(&recorded.metadata);
                let payload = match blanked(&recorded.decode()?) {
                    // Written back in the record's own schema version.
                    Some(event) => perfect21_events::catalog::legacy::encode_as(&event, recorded.schema_version)?,
                    None => recorded.payload.clone(),
                };
                if payload == recorded.payload && metadata == recorded.metadata {
                    continue;
                }
                redactions.push(Redaction { position: recorded.position, payload, metadata });
            }
        }
        Ok(redactions)
    }
}
