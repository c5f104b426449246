//! Event payloads of every readable (type, version): the first byte picks the pair,
//! the rest is the payload. Decoding never panics; what decodes re-encodes in the
//! current version and decodes back to the same bytes, and its public view is built.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perfect21_events::catalog::readable_versions;
use perfect21_events::Event;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else { return };
    let versions: Vec<_> = readable_versions().collect();
    let (event_type, version) = versions[pick as usize % versions.len()];
    let Ok(event) = Event::decode(event_type, version, payload) else { return };
    let bytes = event.encode_payload().expect("a decoded event encodes");
    let again = Event::decode(event.event_type(), event.schema_version(), &bytes).expect("its encoding decodes");
    // Bytes, not values: a NaN risk score is not equal to itself.
    assert_eq!(again.encode_payload().expect("encodes"), bytes, "decode(encode(e)) == e for {event_type} v{version}");
    let _ = event.public_view();
});
