//! Payloads of `email-*` and `username-*` streams: event-sourced uniqueness.
//!
//! A value (an email, a username) is unique because its reservation stream can
//! be claimed only by an append that expects the stream's current version:
//! of several concurrent claims exactly one wins.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `reservation.claimed` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationClaimed {
    /// The user the value now belongs to.
    pub owner: Uuid,
    /// `email` or `username`.
    pub kind: String,
}

/// `reservation.released` v1: the value is free again (the user was deleted, or registration failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationReleased {
    pub owner: Uuid,
    pub kind: String,
}
