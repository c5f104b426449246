//! Tokens clients hand back: `<id>.<secret>` tokens (refresh tokens, authorization
//! codes, verification tokens), and sealed text (MFA enrollment and login tickets).
//! Parsing never panics, and nothing but a sealed value of this key opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perfect21_domain::secrets::{token_hash, token_id, SecretBox};

fuzz_target!(|data: &[u8]| {
    let key = SecretBox::new([7; 32]);
    assert!(key.open(data).is_none(), "random bytes never open");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = token_id(text);
        let _ = token_hash(text);
        assert!(key.open_text(text).is_none(), "random text never opens");
        let sealed = key.seal_text(text.as_bytes());
        assert_eq!(key.open_text(&sealed).as_deref(), Some(text.as_bytes()));
    }
});
