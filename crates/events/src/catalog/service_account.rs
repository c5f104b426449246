//! Payloads of `service_account.*` events: machine principals that get access
//! tokens through the OAuth 2.0 client-credentials grant. Their roles are
//! assigned with `permission.role_assigned` on their own stream, like a user's.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `service_account.created` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceAccountCreated {
    /// Also the OAuth 2.0 `client_id`.
    pub service_account_id: Uuid,
    /// Unique among service accounts, e.g. `billing-api`.
    pub name: String,
    pub description: String,
    /// SHA-256 (hex) of the client secret; the secret itself is shown once and never recorded.
    pub secret_hash: String,
}

/// `service_account.secret_rotated` v1: the old secret stops working at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceAccountSecretRotated {
    pub service_account_id: Uuid,
    pub secret_hash: String,
}

/// `service_account.disabled` v1: no new tokens, and its live tokens stop validating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceAccountDisabled {
    pub service_account_id: Uuid,
    pub reason: String,
}

/// `service_account.deleted` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceAccountDeleted {
    pub service_account_id: Uuid,
}
