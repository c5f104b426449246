//! Read models folded from the event log.
//!
//! Every model is a pure fold: `apply(&mut model, &event)` does no I/O and
//! depends only on the event (its payload, metadata and `recorded_at`), so
//! replaying the same log always yields the same state — [`ReadModels::digest`]
//! proves it. Each fold ignores events at or below its checkpoint, so feeding an
//! event twice (a catch-up racing a live subscription) changes nothing.

pub mod audit;
pub mod authz;
pub mod clients;
mod digest;
pub mod service_accounts;
pub mod sessions;
pub mod snapshot;
pub mod users;

use perfect21_events::seal::Opening;
use perfect21_events::{CodecError, Event, FoldEvent, RecordedEvent};

/// A map keyed by ids this service makes (UUIDs, digests): hashed with foldhash, seeded
/// per process, several times faster than the standard SipHash on 16 bytes; every event
/// a replay folds looks some up. Strings that callers choose keep the standard hasher.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One shared copy of a string that many entries repeat (role ids, user agents).
fn intern(pool: &mut std::collections::HashSet<std::sync::Arc<str>>, s: &str) -> std::sync::Arc<str> {
    if let Some(shared) = pool.get(s) {
        return shared.clone();
    }
    let shared: std::sync::Arc<str> = s.into();
    pool.insert(shared.clone());
    shared
}

/// Errors of folding the log.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// An event of a known type whose payload does not decode: the log is damaged.
    #[error("event at position {position} cannot be folded: {source}")]
    Undecodable {
        position: u64,
        #[source]
        source: CodecError,
    },
    /// Events must arrive in position order without holes.
    #[error("event at position {got} arrived while the read models expect position {expected}")]
    OutOfOrder { expected: u64, got: u64 },
}

/// What the folds read of an event besides its payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Read<'a> {
    pub position: u64,
    /// When it was recorded, in microseconds since the Unix epoch.
    pub at: i64,
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// All read models, at one checkpoint.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReadModels {
    pub users: users::Users,
    pub authz: authz::Authz,
    pub sessions: sessions::Sessions,
    pub audit: audit::Audit,
    pub service_accounts: service_accounts::ServiceAccounts,
    pub clients: clients::Clients,
    checkpoint: u64,
    /// Events of types this build does not know (written by a newer build), skipped.
    skipped_unknown: u64,
}

impl ReadModels {
    /// The seals the folds need opened: of the personal fields, they read the user's
    /// names, email, username and phone (registration and profile updates), the reason
    /// of a failed login and the device of a session (the audit and session views), and
    /// the client address and user agent of logins (the audit's login history). Replay
    /// reads the log with this ([`EventStore::read_folding`](perfect21_events::EventStore::read_folding)):
    /// every other sealed field would be decrypted only to be dropped. A fold that starts
    /// reading another personal field must be named here (a test folds every sealed type
    /// with and without its seals opened and fails otherwise).
    pub const OPENING: Opening = Opening {
        payloads: &["user.registered", "user.profile_updated", "user.login_failed", "session.started"],
        metadata: &["user.login_succeeded", "user.login_failed"],
    };

    /// Position of the last event folded (0: none).
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Events skipped because this build does not know their type or version.
    pub fn skipped_unknown(&self) -> u64 {
        self.skipped_unknown
    }

    /// Folds one recorded event into every model.
    pub fn apply(&mut self, recorded: &RecordedEvent) -> Result<(), ProjectionError> {
        if !self.takes(recorded.position)? {
            return Ok(());
        }
        let read = Read {
            position: recorded.position,
            at: recorded.recorded_at.timestamp_micros(),
            client_ip: recorded.metadata.client_ip.as_deref(),
            user_agent: recorded.metadata.user_agent.as_deref(),
        };
        self.fold(read, recorded.decode().as_ref())
    }

    /// Folds one event read for folding ([`EventStore::read_folding`](perfect21_events::EventStore::read_folding)
    /// through [`OPENING`](Self::OPENING)): the same as [`apply`](Self::apply) of the event
    /// read whole, its payload decoded ahead, elsewhere.
    pub fn apply_folded(&mut self, e: &FoldEvent) -> Result<(), ProjectionError> {
        if !self.takes(e.position)? {
            return Ok(());
        }
        let read = Read {
            position: e.position,
            at: e.recorded_at.timestamp_micros(),
            client_ip: e.client_ip.as_deref(),
            user_agent: e.user_agent.as_deref(),
        };
        self.fold(read, e.event.as_ref())
    }

    /// Whether the event at `position` is the next to fold (`false`: folded already).
    fn takes(&self, position: u64) -> Result<bool, ProjectionError> {
        match position {
            p if p <= self.checkpoint => Ok(false),
            p if p == self.checkpoint + 1 => Ok(true),
            got => Err(ProjectionError::OutOfOrder { expected: self.checkpoint + 1, got }),
        }
    }

    /// Folds the next event, decoded (or why it is not).
    fn fold(&mut self, read: Read<'_>, event: Result<&Event, &CodecError>) -> Result<(), ProjectionError> {
        match event {
            Ok(event) => self.apply_decoded(read, event),
            Err(CodecError::UnknownEventType { .. }) => self.skipped_unknown += 1,
            Err(source) => {
                return Err(ProjectionError::Undecodable { position: read.position, source: source.clone() })
            }
        }
        self.checkpoint = read.position;
        Ok(())
    }

    fn apply_decoded(&mut self, read: Read<'_>, event: &Event) {
        self.users.apply(event, read.at);
        self.authz.apply(event);
        self.sessions.apply(event, read.at);
        self.audit.apply(read, event);
        self.service_accounts.apply(event, read.at);
        self.clients.apply(event, read.at);
    }

    /// The status a permission check should see for a principal: a user's status, an
    /// enabled service account as active, a disabled one as suspended; `None` when unknown.
    pub fn principal_status(&self, id: uuid::Uuid) -> Option<perfect21_events::catalog::UserStatus> {
        use perfect21_events::catalog::UserStatus;
        match self.users.get(id) {
            Some(u) => Some(u.status),
            None => {
                self.service_accounts
                    .get(id)
                    .map(|a| if a.disabled { UserStatus::Suspended } else { UserStatus::Active })
            }
        }
    }

    /// A digest of the whole state (hex SHA-256): equal digests, equal read models.
    pub fn digest(&self) -> String {
        let mut d = digest::Digest::new();
        d.u64(self.checkpoint);
        self.users.digest(&mut d);
        self.authz.digest(&mut d);
        self.sessions.digest(&mut d);
        self.audit.digest(&mut d);
        self.service_accounts.digest(&mut d);
        self.clients.digest(&mut d);
        d.finish()
    }
}
