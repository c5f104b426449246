//! The wire contract: generated from `proto/perfect21/*.proto`.

#![allow(clippy::all, missing_docs)]

pub mod auth {
    tonic::include_proto!("perfect21.auth");
}

pub mod user {
    tonic::include_proto!("perfect21.user");
}

pub mod permission {
    tonic::include_proto!("perfect21.permission");
}

pub mod account {
    tonic::include_proto!("perfect21.account");
}

pub mod admin {
    tonic::include_proto!("perfect21.admin");
}

pub mod events {
    tonic::include_proto!("perfect21.events");
}

/// Encoded `FileDescriptorSet` of every perfect21 proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/perfect21_descriptor.bin"));
