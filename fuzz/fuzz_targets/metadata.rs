//! Event metadata as stored: decoding never panics, and what decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perfect21_events::Metadata;

fuzz_target!(|data: &[u8]| {
    if let Ok(metadata) = Metadata::decode(data) {
        assert_eq!(Metadata::decode(&metadata.encode()).expect("its encoding decodes"), metadata);
    }
});
