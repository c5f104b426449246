//! The one error type of the identity commands.

use perfect21_events::StoreError;
use uuid::Uuid;

/// Why a command was refused. Each variant says what was wrong and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A field of the command is malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// Login failed. Deliberately the same for an unknown user, a wrong password
    /// and a locked account, so that answers do not reveal which accounts exist.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The password was right but the account has MFA: send the TOTP or a recovery code too.
    #[error("a second factor is required: send a TOTP code or a recovery code")]
    MfaRequired,
    /// The email address or username is taken.
    #[error("{kind} is already registered")]
    AlreadyRegistered { kind: &'static str },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The token (verification, refresh, enrollment) is unknown, used, expired or forged.
    #[error("{what} is invalid or expired")]
    InvalidToken { what: &'static str },
    /// The command does not apply to the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The password was right, but the email address is not verified yet (and the
    /// server does not allow unverified logins).
    #[error("the email address of this account is not verified: follow the link in the welcome email")]
    EmailNotVerified,
    /// The user is not in a state that allows this (locked, suspended, deleted).
    #[error("user {user} is {status}")]
    UserInactive { user: Uuid, status: &'static str },
    /// The caller lacks the permission an operation requires.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Someone else changed the stream; the command was retried and still conflicted.
    #[error("concurrent modification of {stream}; retry")]
    Conflict { stream: String },
    /// A read with a consistency token waited too long for the projections.
    #[error("read models have not reached position {wanted} within {waited_ms} ms (they are at {at})")]
    ConsistencyTimeout { wanted: u64, at: u64, waited_ms: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An internal failure (a bug or a broken dependency), not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<perfect21_events::CodecError> for DomainError {
    fn from(e: perfect21_events::CodecError) -> Self {
        DomainError::Internal(e.to_string())
    }
}

pub type Result<T, E = DomainError> = std::result::Result<T, E>;
