//! The perfect21 event log: the envelope, the versioned event catalog and its
//! codec, and the [`EventStore`] trait with its backends.
//!
//! This crate knows nothing about gRPC, HTTP or AMQP; it only records and
//! returns events.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use perfect21_events::{catalog::*, EventData, ExpectedVersion, Metadata, StreamId};
//! let store = perfect21_events::store::open("sqlite://data/events.db").await?;
//! let user_id = uuid::Uuid::now_v7();
//! let event = Event::UserEmailVerified(UserEmailVerified { user_id });
//! let data = EventData::new(&event, Metadata::default())?;
//! let stream = StreamId::of("user", user_id)?;
//! let appended = store.append(&stream, ExpectedVersion::Any, vec![data]).await?;
//! println!("consistency token: {}", appended.position);
//! # Ok(()) }
//! ```

pub mod catalog;
pub mod chain;
pub mod envelope;
pub mod error;
pub mod limits;
pub mod seal;
pub mod store;

pub use catalog::Event;
pub use envelope::{AppendResult, EventData, ExpectedVersion, Metadata, RecordedEvent, StreamId};
pub use error::{CodecError, StoreError};
pub use store::page::{FoldEvent, StoredPage};
pub use store::{subscribe_all, Appends, EventStore, Lease, Redaction, StoreStats, Subscription};
