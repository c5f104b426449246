//! [`SealingStore`]: seals personal fields on the way into the log and opens them on
//! the way out.

use super::{open_in_place, Binding, Cipher, KeyState, KeyStore, Opening, Part, Seal, SealedMetadata, TAG_BYTES};
use crate::catalog::personal::{blanked, plain_version_of, sealed_version_of, SealedPayload, SealedPayloadRef};
use crate::chain::{ChainRecord, Digest};
use crate::envelope::{AppendResult, EventData, ExpectedVersion, Metadata, MetadataRef, RecordedEvent, StreamId};
use crate::error::StoreError;
use crate::store::page::{FoldEvent, StoredMut, StoredPage};
use crate::store::{EventStore, Redaction, StoreStats};
use crate::Event;
use async_trait::async_trait;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use uuid::Uuid;

/// Subjects' key states. Subjects are user ids this service makes: hashed with foldhash
/// (seeded per process), much faster than SipHash on 16 bytes; a replay looks up every
/// subject of every page.
type Keys = HashMap<Uuid, KeyState, foldhash::fast::RandomState>;

/// An [`EventStore`] that seals personal fields with their subjects' keys from a
/// [`KeyStore`] (see [`crate::seal`]). Readers see plain events, or tombstones (the
/// personal fields blanked) for subjects that were erased.
pub struct SealingStore {
    inner: Arc<dyn EventStore>,
    keys: Arc<dyn KeyStore>,
    /// Keys of live subjects and the erased ones this process knows of. A subject erased
    /// by another process is learnt from its `user.erased` event.
    cache: Arc<Mutex<Keys>>,
    /// Subjects the cache holds at most before it lets its live keys go.
    cache_limit: usize,
}

/// Subjects whose key states a [`SealingStore`] keeps in memory at most, by default
/// (about 70 bytes each). Past it, the live keys go (the key store keeps them, and they
/// are looked up again when needed); the erasures learnt stay.
pub const KEYS_CACHED: usize = 250_000;

/// Whose keys seal one event: its payload's (if its type has personal fields) and its
/// metadata's (if it carries a client address or user agent).
struct Plan {
    payload: Option<PayloadPlan>,
    metadata: Option<Uuid>,
}

/// A payload to seal: whose it is, the version it is stored in, and its blanked form.
struct PayloadPlan {
    subject: Uuid,
    sealed_version: u16,
    clear: Vec<u8>,
}

fn actor_user(metadata: &Metadata) -> Option<Uuid> {
    metadata.actor.as_deref()?.strip_prefix("user:")?.parse().ok()
}

impl SealingStore {
    pub fn new(inner: Arc<dyn EventStore>, keys: Arc<dyn KeyStore>) -> Self {
        SealingStore { inner, keys, cache: Arc::new(Mutex::new(Keys::default())), cache_limit: KEYS_CACHED }
    }

    /// Keeps the key states of `limit` subjects in memory at most (see [`KEYS_CACHED`]):
    /// one look-up of more subjects than that holds them all until the next.
    pub fn with_cache_limit(mut self, limit: usize) -> Self {
        self.cache_limit = limit;
        self
    }

    fn plan(e: &EventData) -> Result<Option<Plan>, StoreError> {
        let sealed_version = sealed_version_of(&e.event_type, e.schema_version);
        let identifies = e.metadata.client_ip.is_some() || e.metadata.user_agent.is_some();
        if sealed_version.is_none() && !identifies {
            return Ok(None);
        }
        let actor = actor_user(&e.metadata);
        let Some(sealed_version) = sealed_version else {
            // Only the metadata: sealed for the user who acted, else the one the event is about
            // (a type this build does not know is about no one).
            let about = || Event::decode(&e.event_type, e.schema_version, &e.payload).ok()?.subject();
            return Ok(Some(Plan { payload: None, metadata: actor.or_else(about) }));
        };
        let event =
            Event::decode(&e.event_type, e.schema_version, &e.payload).map_err(|err| StoreError::Unsealable {
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                reason: err.to_string(),
            })?;
        let subject = event.subject();
        let payload = subject.map(|subject| PayloadPlan {
            subject,
            sealed_version,
            // A type with a sealed version always has a blanked form.
            clear: blanked(&event).unwrap_or(event).encode_payload().expect("a decoded payload encodes"),
        });
        Ok(Some(Plan { payload, metadata: identifies.then(|| actor.or(subject)).flatten() }))
    }

    /// Each subject's key state, asking the key store for those the cache lacks
    /// (`for_append`: making keys for subjects that have none).
    async fn resolve(&self, subjects: Subjects, for_append: bool) -> Result<Keys, StoreError> {
        let mut known = Keys::default();
        let mut missing = Vec::new();
        {
            let cache = self.cache.lock().expect("key cache");
            for s in subjects.into_sorted() {
                match cache.get(&s) {
                    Some(state) => {
                        known.insert(s, state.clone());
                    }
                    None => missing.push(s),
                }
            }
        }
        if missing.is_empty() {
            return Ok(known);
        }
        let states =
            if for_append { self.keys.keys_for_append(&missing).await? } else { self.keys.keys(&missing).await? };
        let mut cache = self.cache.lock().expect("key cache");
        if cache.len() + missing.len() > self.cache_limit {
            // The key store keeps the live keys; an erasure learnt from the log stays known.
            cache.retain(|_, state| matches!(state, KeyState::Erased));
        }
        for (s, state) in missing.into_iter().zip(states) {
            if state != KeyState::Unknown {
                cache.insert(s, state.clone());
            }
            known.insert(s, state);
        }
        Ok(known)
    }

    async fn seal_all(&self, events: Vec<EventData>) -> Result<Vec<EventData>, StoreError> {
        // Planning decodes and blanks each payload, sealing encrypts it: by halves, side by
        // side, for a batch long enough to be worth the hand-over. A half whose subjects'
        // keys are all known here is sealed at once; the rest waits for the key store.
        let cache = self.cache.clone();
        let worked = in_halves(events, move |events| {
            let planned = plan_each(events)?;
            let subjects = subjects_of(&planned);
            let known: Option<Keys> = {
                let cache = cache.lock().expect("key cache");
                subjects.into_sorted().into_iter().map(|s| cache.get(&s).map(|k| (s, k.clone()))).collect()
            };
            Ok(match known {
                Some(keys) => seal_planned(planned, &keys).into_iter().map(Worked::Sealed).collect(),
                None => planned.into_iter().map(|(plan, e)| Worked::Planned(plan, e)).collect(),
            })
        })
        .await?;
        if worked.iter().all(|w| matches!(w, Worked::Sealed(_))) {
            return Ok(worked.into_iter().map(Worked::into_event).collect());
        }
        // Some subject is new to this process: ask the key store (making keys for subjects
        // that have none), then seal what is left.
        let planned: Vec<Planned> = worked
            .into_iter()
            .map(|w| match w {
                Worked::Sealed(e) => (None, e),
                Worked::Planned(plan, e) => (plan, e),
            })
            .collect();
        let keys = Arc::new(self.resolve(subjects_of(&planned), true).await?);
        in_halves(planned, move |planned| Ok(seal_planned(planned, &keys))).await
    }

    /// Opens what this process can from its cache; `None` if a seal needs a key it has not looked up.
    fn open_cached(&self, records: Vec<RecordedEvent>) -> Option<Vec<RecordedEvent>> {
        let cache = self.cache.lock().expect("key cache");
        let mut needed = Subjects::default();
        for r in &records {
            recorded_subjects(r, None, &mut needed);
        }
        if needed.0.iter().any(|s| !cache.contains_key(s)) {
            return None;
        }
        let mut ciphers = Ciphers::new(&cache);
        Some(records.into_iter().map(|r| open_one(r, None, &mut ciphers)).collect())
    }

    /// Opens the seals of `records` (those `opening` names, or all of them).
    async fn open_all(
        &self,
        records: Vec<RecordedEvent>,
        opening: Option<&Opening>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        for r in &records {
            self.learn_erasure(&r.event_type, r.schema_version, &r.payload);
        }
        let mut needed = Subjects::default();
        for r in &records {
            recorded_subjects(r, opening, &mut needed);
        }
        let keys = if needed.is_empty() { Keys::default() } else { self.resolve(needed, false).await? };
        let mut ciphers = Ciphers::new(&keys);
        Ok(records.into_iter().map(|r| open_one(r, opening, &mut ciphers)).collect())
    }

    /// A subject erased elsewhere is erased here from its `user.erased` on.
    fn learn_erasure(&self, event_type: &str, schema_version: u16, payload: &[u8]) {
        if event_type == "user.erased" {
            if let Ok(Event::UserErased(e)) = Event::decode(event_type, schema_version, payload) {
                self.cache.lock().expect("key cache").insert(e.user_id, KeyState::Erased);
            }
        }
    }

    /// A page read as the read models fold it, the seals `opening` names opened where
    /// they lie in the page and the payloads decoded from there.
    async fn fold_page(&self, mut page: StoredPage, opening: &Opening) -> Result<Vec<FoldEvent>, StoreError> {
        // Each event's seals are found once: their subjects' keys are looked up, then
        // they are opened.
        let mut needed = Subjects::default();
        let mut found = Vec::with_capacity(page.len());
        for e in page.iter() {
            self.learn_erasure(e.event_type, e.schema_version, e.payload);
            let payload = find_payload(e.event_type, e.schema_version, e.payload);
            if let Some(p) = payload.as_ref().filter(|_| opening.payload(e.event_type)) {
                needed.add(p.seal.subject);
            }
            // Only the metadata the folds read is decoded (the chain covers the rest:
            // `events verify`).
            let metadata = opening.metadata(e.event_type).then(|| find_metadata(e.metadata, e.position)).transpose()?;
            if let Some(seal) = metadata.as_ref().and_then(|m| m.seal.as_ref()) {
                needed.add(seal.subject);
            }
            found.push((payload, metadata));
        }
        let keys = if needed.is_empty() { Keys::default() } else { self.resolve(needed, false).await? };
        let mut ciphers = Ciphers::new(&keys);
        // Made at its length once (collecting results would grow it as it goes).
        let mut folded = Vec::with_capacity(page.len());
        for (i, (payload, metadata)) in found.into_iter().enumerate() {
            folded.push(fold_one(page.get_mut(i), payload, metadata, opening, &mut ciphers));
        }
        Ok(folded)
    }
}

/// Events from which a batch is worked on by halves, side by side (a hundred events
/// take a few hundred microseconds to seal; handing half over costs a few).
const HALVES_FROM: usize = 32;

/// `work` over `items`: from [`HALVES_FROM`] items on, the second half on the blocking
/// pool while this task works on the first. The results keep the items' order.
async fn in_halves<T, U>(
    mut items: Vec<T>,
    work: impl Fn(Vec<T>) -> Result<Vec<U>, StoreError> + Clone + Send + 'static,
) -> Result<Vec<U>, StoreError>
where
    T: Send + 'static,
    U: Send + 'static,
{
    if items.len() < HALVES_FROM {
        return work(items);
    }
    let second = items.split_off(items.len() / 2);
    let other = tokio::task::spawn_blocking({
        let work = work.clone();
        move || work(second)
    });
    let mut first = work(items)?;
    let second = match other.await {
        Ok(second) => second?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            return Err(StoreError::Unavailable { backend: "sealing", message: format!("sealing was cancelled: {e}") })
        }
    };
    first.extend(second);
    Ok(first)
}

/// The subjects whose keys a batch needs. A subject's events sit close together, so
/// one seen twice in a row is kept once as it is added, and the rest when sorted.
#[derive(Default)]
struct Subjects(Vec<Uuid>);

impl Subjects {
    fn add(&mut self, subject: Uuid) {
        if self.0.last() != Some(&subject) {
            self.0.push(subject);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each subject once, in order.
    fn into_sorted(mut self) -> Vec<Uuid> {
        self.0.sort_unstable();
        self.0.dedup();
        self.0
    }
}

/// An event and how to seal it (`None`: nothing to seal).
type Planned = (Option<Plan>, EventData);

/// An event of a batch being sealed: sealed already, or planned and waiting for keys.
enum Worked {
    Sealed(EventData),
    Planned(Option<Plan>, EventData),
}

impl Worked {
    fn into_event(self) -> EventData {
        match self {
            Worked::Sealed(e) | Worked::Planned(_, e) => e,
        }
    }
}

/// The subjects whose keys `planned` needs.
fn subjects_of(planned: &[Planned]) -> Subjects {
    let mut subjects = Subjects::default();
    for p in planned.iter().filter_map(|(p, _)| p.as_ref()) {
        p.payload.iter().for_each(|p| subjects.add(p.subject));
        p.metadata.into_iter().for_each(|s| subjects.add(s));
    }
    subjects
}

/// Seals each planned event with the keys in `keys` (which hold every subject `planned` needs).
fn seal_planned(planned: Vec<Planned>, keys: &Keys) -> Vec<EventData> {
    let mut ciphers = Ciphers::new(keys);
    planned.into_iter().map(|p| seal_planned_one(p, &mut ciphers)).collect()
}

/// Seals one planned event with `ciphers` (which hold every subject it needs).
fn seal_planned_one((plan, e): Planned, ciphers: &mut Ciphers<'_>) -> EventData {
    match plan {
        Some(plan) => seal_one(e, plan, ciphers),
        None => e,
    }
}

/// Each event with how to seal it.
fn plan_each(events: Vec<EventData>) -> Result<Vec<Planned>, StoreError> {
    events.into_iter().map(|e| Ok((SealingStore::plan(&e)?, e))).collect()
}

/// The ciphers of the live keys among `keys`, made as they are needed. A subject's
/// events sit close together in the log, so the last few made are kept (a cipher is
/// about half a KiB; they are wiped when dropped) and the rest made again if needed.
struct Ciphers<'a> {
    keys: &'a Keys,
    made: Vec<(Uuid, Cipher)>,
    /// The slot the next cipher takes once all are used (oldest first).
    next: usize,
}

/// How many ciphers a [`Ciphers`] keeps.
const CIPHERS_KEPT: usize = 16;

impl<'a> Ciphers<'a> {
    fn new(keys: &'a Keys) -> Self {
        Ciphers { keys, made: Vec::new(), next: 0 }
    }

    /// `None` unless the subject's key is live.
    fn get(&mut self, subject: &Uuid) -> Option<&Cipher> {
        if let Some(i) = self.made.iter().position(|(s, _)| s == subject) {
            return Some(&self.made[i].1);
        }
        let Some(KeyState::Live(key)) = self.keys.get(subject) else { return None };
        let slot = if self.made.len() < CIPHERS_KEPT {
            self.made.push((*subject, key.cipher()));
            self.made.len() - 1
        } else {
            let slot = self.next;
            self.next = (self.next + 1) % CIPHERS_KEPT;
            self.made[slot] = (*subject, key.cipher());
            slot
        };
        Some(&self.made[slot].1)
    }
}

fn seal_one(mut e: EventData, plan: Plan, keys: &mut Ciphers<'_>) -> EventData {
    if let Some(PayloadPlan { subject, sealed_version, clear }) = plan.payload {
        match keys.get(&subject) {
            Some(cipher) => {
                let binding = Binding {
                    part: Part::Payload,
                    event_id: e.event_id,
                    event_type: &e.event_type,
                    schema_version: sealed_version,
                };
                let seal = Seal::close_fresh(cipher, subject, binding, std::mem::take(&mut e.payload));
                e.payload = SealedPayload { clear, seal }.encode();
                e.schema_version = sealed_version;
            }
            // An erased subject: nothing personal is recorded about it any more.
            None => e.payload = clear,
        }
    }
    if let Some(subject) = plan.metadata {
        let personal =
            SealedMetadata { client_ip: e.metadata.client_ip.take(), user_agent: e.metadata.user_agent.take() };
        if let Some(cipher) = keys.get(&subject) {
            let binding = Binding {
                part: Part::Metadata,
                event_id: e.event_id,
                event_type: &e.event_type,
                schema_version: e.schema_version,
            };
            // Room for the fields, their lengths and the tag the seal adds where they lie.
            let room = personal.client_ip.as_ref().map_or(0, String::len)
                + personal.user_agent.as_ref().map_or(0, String::len)
                + 2 * 10
                + TAG_BYTES;
            let plaintext = postcard::to_extend(&personal, Vec::with_capacity(room)).expect("metadata fields encode");
            e.metadata.sealed = Some(Seal::close_fresh(cipher, subject, binding, plaintext));
        }
    }
    e
}

/// Whether a read with `opening` (`None`: every seal) opens an `event_type`'s sealed payload.
fn opens_payload(opening: Option<&Opening>, event_type: &str) -> bool {
    opening.is_none_or(|o| o.payload(event_type))
}

/// Whether a read with `opening` (`None`: every seal) opens an `event_type`'s sealed metadata.
fn opens_metadata(opening: Option<&Opening>, event_type: &str) -> bool {
    opening.is_none_or(|o| o.metadata(event_type))
}

/// Adds the subjects whose keys open the seals of `r` that `opening` names (all: `None`).
fn recorded_subjects(r: &RecordedEvent, opening: Option<&Opening>, into: &mut Subjects) {
    if opens_payload(opening, &r.event_type) {
        if let Some(p) = find_payload(&r.event_type, r.schema_version, &r.payload) {
            into.add(p.seal.subject);
        }
    }
    if let Some(seal) = r.metadata.sealed.as_ref().filter(|_| opens_metadata(opening, &r.event_type)) {
        into.add(seal.subject);
    }
}

/// Where a seal lies in the bytes that hold it, and whose key opens it.
#[derive(Debug, Clone)]
struct SealAt {
    subject: Uuid,
    nonce: [u8; 12],
    ciphertext: Range<usize>,
}

/// A payload stored in a sealed version, found in its bytes: where its blanked clear copy
/// and its seal lie, and the plain version they hold.
#[derive(Debug, Clone)]
struct SealedAt {
    plain: u16,
    clear: Range<usize>,
    seal: SealAt,
}

/// Where the parts of a payload stored as `event_type` version `schema_version` lie;
/// `None` if the version is no sealed one, or the payload does not read as sealed (then
/// it is read as stored, and decoding it reports what is wrong).
fn find_payload(event_type: &str, schema_version: u16, payload: &[u8]) -> Option<SealedAt> {
    let plain = plain_version_of(event_type, schema_version)?;
    let p = SealedPayloadRef::decode(payload)?;
    Some(SealedAt {
        plain,
        clear: range_in(payload, p.clear),
        seal: SealAt { subject: p.seal.subject, nonce: p.seal.nonce, ciphertext: range_in(payload, p.seal.ciphertext) },
    })
}

/// What a fold reads of an event's metadata: its client address and user agent as
/// stored, and where their seal lies (if they are sealed).
#[derive(Debug)]
struct ReadMetadata {
    client_ip: Option<String>,
    user_agent: Option<String>,
    seal: Option<SealAt>,
}

/// Reads an event's metadata in place; a damaged event if it does not decode.
fn find_metadata(metadata: &[u8], position: u64) -> Result<ReadMetadata, StoreError> {
    let m = MetadataRef::decode(metadata).map_err(|err| StoreError::Corrupt { position, reason: err.to_string() })?;
    Ok(ReadMetadata {
        client_ip: m.client_ip.map(str::to_owned),
        user_agent: m.user_agent.map(str::to_owned),
        seal: m.sealed.map(|s| SealAt {
            subject: s.subject,
            nonce: s.nonce,
            ciphertext: range_in(metadata, s.ciphertext),
        }),
    })
}

/// Where `part` lies in `whole` (of which it is a part).
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let at = part.as_ptr() as usize - whole.as_ptr() as usize;
    at..at + part.len()
}

/// Opens a metadata seal for `subject` whose ciphertext lies in `sealed`, where it lies:
/// the client address and user agent, or `None` if the subject's key is not live or
/// does not open it.
fn open_metadata(
    keys: &mut Ciphers<'_>,
    subject: &Uuid,
    nonce: &[u8; 12],
    sealed: &mut [u8],
    binding: Binding<'_>,
    position: u64,
) -> Option<SealedMetadata> {
    if !open_in_place(keys.get(subject)?, nonce, sealed, binding) {
        return None;
    }
    let plaintext = &sealed[..sealed.len() - TAG_BYTES];
    postcard::from_bytes(plaintext)
        .inspect_err(|_| tracing::warn!(position, "sealed metadata opened but does not decode"))
        .ok()
}

/// The bytes to read of a payload found `at` a sealed version's parts, once its seal is
/// opened where it lies (if `open`, and its subject's key is live and opens it: the
/// plaintext; else the blanked clear copy).
fn open_payload(
    payload: &mut [u8],
    at: SealedAt,
    binding: Binding<'_>,
    position: u64,
    open: bool,
    keys: &mut Ciphers<'_>,
) -> Range<usize> {
    let SealedAt { clear, seal: SealAt { subject, nonce, ciphertext: sealed }, .. } = at;
    let opened = open
        && keys.get(&subject).is_some_and(|cipher| {
            let opened = open_in_place(cipher, &nonce, &mut payload[sealed.clone()], binding);
            if !opened {
                tracing::warn!(position, "a sealed payload does not open with its subject's key; read as erased");
            }
            opened
        });
    if opened {
        sealed.start..sealed.end - TAG_BYTES
    } else {
        clear
    }
}

/// `r` with the seals `opening` names (all: `None`) opened, the others shut: its payload
/// then reads as its tombstone, its metadata without the sealed fields.
fn open_one(mut r: RecordedEvent, opening: Option<&Opening>, keys: &mut Ciphers<'_>) -> RecordedEvent {
    let bound =
        |part| Binding { part, event_id: r.event_id, event_type: &r.event_type, schema_version: r.schema_version };
    let sealed = r.metadata.sealed.take();
    if let Some(mut seal) = sealed.filter(|_| opens_metadata(opening, &r.event_type)) {
        if let Some(personal) =
            open_metadata(keys, &seal.subject, &seal.nonce, &mut seal.ciphertext, bound(Part::Metadata), r.position)
        {
            r.metadata.client_ip = personal.client_ip;
            r.metadata.user_agent = personal.user_agent;
        }
    }
    let Some(at) = find_payload(&r.event_type, r.schema_version, &r.payload) else { return r };
    let plain = at.plain;
    let open = opens_payload(opening, &r.event_type);
    let keep = open_payload(&mut r.payload, at, bound(Part::Payload), r.position, open, keys);
    r.payload.copy_within(keep.clone(), 0);
    r.payload.truncate(keep.len());
    r.schema_version = plain;
    r
}

/// An event of a page as the read models fold it through `opening`, its seals found
/// ([`find_payload`], and [`find_metadata`] where it is read) opened where they lie, as
/// [`open_one`] opens them, its payload decoded from there.
fn fold_one(
    e: StoredMut<'_>,
    payload: Option<SealedAt>,
    metadata: Option<ReadMetadata>,
    opening: &Opening,
    keys: &mut Ciphers<'_>,
) -> FoldEvent {
    let bound =
        |part| Binding { part, event_id: e.event_id, event_type: e.event_type, schema_version: e.schema_version };
    let (mut client_ip, mut user_agent) = (None, None);
    if let Some(ReadMetadata { client_ip: ip, user_agent: agent, seal }) = metadata {
        (client_ip, user_agent) = (ip, agent);
        if let Some(SealAt { subject, nonce, ciphertext }) = seal {
            let sealed = &mut e.metadata[ciphertext];
            if let Some(personal) = open_metadata(keys, &subject, &nonce, sealed, bound(Part::Metadata), e.position) {
                (client_ip, user_agent) = (personal.client_ip, personal.user_agent);
            }
        }
    }
    let (read, version) = match payload {
        Some(at) => {
            let (plain, open) = (at.plain, opening.payload(e.event_type));
            (open_payload(e.payload, at, bound(Part::Payload), e.position, open, keys), plain)
        }
        None => (0..e.payload.len(), e.schema_version),
    };
    e.fold(read, version, client_ip, user_agent)
}

#[async_trait]
impl EventStore for SealingStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        if events.len() < HALVES_FROM || !self.inner.writes_while_made() {
            let sealed = self.seal_all(events).await?;
            return self.inner.append(stream, expected, sealed).await;
        }
        // A long batch for a store that writes while the events are made: planned (half a
        // microsecond an event: less than handing half of them over), then sealed here
        // while the store writes those sealed before.
        let planned = plan_each(events)?;
        let keys = self.resolve(subjects_of(&planned), true).await?;
        let mut ciphers = Ciphers::new(&keys);
        let mut sealed = planned.into_iter().map(|p| Ok(seal_planned_one(p, &mut ciphers)));
        self.inner.append_made(stream, expected, &mut sealed).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let records = self.inner.read_stream(stream, from_version, limit).await?;
        self.open_all(records, None).await
    }

    async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let records = self.inner.read_all(from_position, limit).await?;
        self.open_all(records, None).await
    }

    async fn read_all_opening(
        &self,
        from_position: u64,
        limit: usize,
        opening: &'static Opening,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let records = self.inner.read_all(from_position, limit).await?;
        self.open_all(records, Some(opening)).await
    }

    async fn read_folding(
        &self,
        from_position: u64,
        limit: usize,
        opening: &'static Opening,
    ) -> Result<Vec<FoldEvent>, StoreError> {
        let page = self.inner.read_stored(from_position, limit, opening).await?;
        self.fold_page(page, opening).await
    }

    async fn redact(&self, stream: &StreamId, redactions: Vec<Redaction>) -> Result<usize, StoreError> {
        self.inner.redact(stream, redactions).await
    }

    async fn read_chain(&self, from_position: u64, limit: usize) -> Result<Vec<ChainRecord>, StoreError> {
        self.inner.read_chain(from_position, limit).await
    }

    async fn chain_head(&self) -> Result<Option<(u64, Digest)>, StoreError> {
        self.inner.chain_head().await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.inner.head_position().await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats().await
    }

    fn head_watch(&self) -> watch::Receiver<u64> {
        self.inner.head_watch()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn recent(&self, from_position: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        let records = self.inner.recent(from_position, limit)?;
        if records.iter().any(|r| r.event_type == "user.erased") {
            // Let the async path learn of the erasure first.
            return None;
        }
        self.open_cached(records)
    }

    async fn erase_subject(&self, subject: Uuid) -> Result<bool, StoreError> {
        let erased = self.keys.erase(subject).await?;
        self.cache.lock().expect("key cache").insert(subject, KeyState::Erased);
        Ok(erased)
    }

    fn seals(&self) -> bool {
        true
    }

    fn rewrites_in_place(&self) -> bool {
        self.inner.rewrites_in_place()
    }

    fn leases(&self) -> bool {
        self.inner.leases()
    }

    fn appends(&self) -> crate::store::Appends {
        self.inner.appends()
    }

    async fn try_lease(&self, name: &str) -> Result<Option<crate::store::Lease>, StoreError> {
        self.inner.try_lease(name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::UserLoginSucceeded;
    use crate::seal::SqliteKeys;
    use crate::store::{SqliteConfig, SqliteStore};

    fn login(user_id: Uuid) -> EventData {
        let event = UserLoginSucceeded {
            user_id,
            session_id: Uuid::now_v7(),
            mfa_used: false,
            risk_score: 0.0,
            device_id: Some(format!("device-of-{user_id}")),
            totp_step: None,
        };
        let metadata = Metadata {
            actor: Some(format!("user:{user_id}")),
            client_ip: Some("198.51.100.7".into()),
            ..Metadata::default()
        };
        EventData::new(&event.into(), metadata).unwrap()
    }

    /// The key cache lets its live keys go past its limit, keeps the erasures it learnt,
    /// and every event still reads as it did: live users' fields opened, erased users'
    /// blanked.
    #[tokio::test]
    async fn the_key_cache_is_bounded_and_keeps_what_it_learnt_of_erasures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let raw = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).await.unwrap());
        let keys = Arc::new(SqliteKeys::open(SqliteKeys::path_for(&path)).await.unwrap());
        let store = SealingStore::new(raw, keys).with_cache_limit(8);
        let users: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
        let stream = StreamId::of("logins", "cache").unwrap();
        let cached = || store.cache.lock().unwrap().len();
        for (i, user) in users.iter().enumerate() {
            store.append(&stream, ExpectedVersion::Any, vec![login(*user)]).await.unwrap();
            assert!(cached() <= 8 + 1, "{} subjects cached after {} appends", cached(), i + 1);
            if i == 3 {
                assert!(store.erase_subject(users[3]).await.unwrap());
            }
        }
        let erased_known = || matches!(store.cache.lock().unwrap().get(&users[3]), Some(KeyState::Erased));
        assert!(erased_known(), "the erasure stays known");
        let read = store.read_stream(&stream, 0, 100).await.unwrap();
        assert_eq!(read.len(), 40);
        for (r, user) in read.iter().zip(&users) {
            let Event::UserLoginSucceeded(e) = r.decode().unwrap() else { panic!("not a login") };
            assert_eq!(e.user_id, *user);
            if *user == users[3] {
                assert_eq!((e.device_id, r.metadata.client_ip.as_deref()), (None, None), "erased");
            } else {
                assert_eq!(e.device_id, Some(format!("device-of-{user}")));
                assert_eq!(r.metadata.client_ip.as_deref(), Some("198.51.100.7"));
            }
        }
        // One read of 40 subjects holds them all until the next look-up.
        assert!(cached() <= 40 + 1 && erased_known());
    }
}
