//! Payloads of `role-*` streams and of role / permission assignments to users.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A permission: `resource` + `action` + `scope`, each may be `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PermissionSpec {
    pub id: String,
    pub resource: String,
    pub action: String,
    pub scope: String,
    pub name: String,
    pub description: String,
}

/// `role.created` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleCreated {
    pub role_id: String,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub priority: i32,
}

/// `role.updated` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleUpdated {
    pub role_id: String,
    pub display_name: String,
    pub description: String,
    pub priority: i32,
}

/// `role.deleted` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleDeleted {
    pub role_id: String,
}

/// `role.permission_granted` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolePermissionGranted {
    pub role_id: String,
    pub permission: PermissionSpec,
}

/// `role.permission_revoked` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolePermissionRevoked {
    pub role_id: String,
    pub permission_id: String,
}

/// `permission.role_assigned` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleAssigned {
    pub user_id: Uuid,
    pub role_id: String,
    /// Unix seconds; `None`: until revoked.
    pub expires_at: Option<i64>,
}

/// `permission.role_revoked` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleRevoked {
    pub user_id: Uuid,
    pub role_id: String,
}

/// `permission.granted` v1: a direct grant to one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionGranted {
    pub user_id: Uuid,
    pub permission: PermissionSpec,
}

/// `permission.revoked` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionRevoked {
    pub user_id: Uuid,
    pub permission_id: String,
}
