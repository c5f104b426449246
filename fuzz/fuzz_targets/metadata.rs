//! Event metadata as stored: decoding never panics, what decodes round-trips, and
//! reading it in place (as a replay does) reads the same or fails alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perfect21_events::envelope::MetadataRef;
use perfect21_events::Metadata;

fuzz_target!(|data: &[u8]| {
    let in_place = MetadataRef::decode(data).map(|m| m.to_metadata()).ok();
    assert_eq!(in_place, Metadata::decode(data).ok(), "read in place and decoded differ");
    if let Ok(metadata) = Metadata::decode(data) {
        assert_eq!(Metadata::decode(&metadata.encode()).expect("its encoding decodes"), metadata);
    }
});
