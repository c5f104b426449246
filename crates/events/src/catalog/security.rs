//! Payloads of `security.*` events.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Severity of a security alert (the seed's low / medium / high / critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// `security.suspicious_activity` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuspiciousActivity {
    pub user_id: Uuid,
    pub activity_type: String,
    pub risk_score: f32,
    pub description: String,
    pub details: Vec<(String, String)>,
}

/// `security.account_locked` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountLocked {
    pub user_id: Uuid,
    pub reason: String,
    pub failed_attempts: u32,
    /// Unix seconds; `None`: until an administrator unlocks it.
    pub locked_until: Option<i64>,
}

/// `security.account_unlocked` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountUnlocked {
    pub user_id: Uuid,
    pub reason: String,
}

/// `security.alert` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityAlert {
    pub user_id: Uuid,
    pub alert_type: String,
    pub severity: Severity,
    pub description: String,
    pub details: Vec<(String, String)>,
    pub recommended_actions: Vec<String>,
}

/// `security.refresh_token_reuse_detected` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshTokenReuseDetected {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// Hash of the reused (already rotated) refresh token.
    pub reused_token_hash: String,
}
