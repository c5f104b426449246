//! Random tokens, their hashes, and sealing of secrets that must be stored (TOTP).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A fresh random secret, URL-safe (32 bytes of entropy).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The id a `<uuid>.<secret>` token names (refresh tokens name their session,
/// authorization codes their code, verification tokens their user).
pub fn token_id(token: &str) -> Option<uuid::Uuid> {
    token.split_once('.').and_then(|(id, _)| uuid::Uuid::parse_str(id).ok())
}

/// SHA-256 of a token, hex: what the log stores instead of the token.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    constant_time_eq_bytes(a.as_bytes(), b.as_bytes())
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The server's secret: seals and opens small secrets (ChaCha20-Poly1305, random
/// nonce) and derives tokens that need not be stored (HMAC-SHA256).
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
    mac_key: [u8; 32],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

impl SecretBox {
    pub fn new(key: [u8; 32]) -> Self {
        // A separate key for MACs, so that no key serves two algorithms.
        let mac_key: [u8; 32] = Sha256::new().chain_update(b"perfect21 mac key").chain_update(key).finalize().into();
        SecretBox { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)), mac_key }
    }

    /// A token derived from `parts` under `purpose`: anyone holding the server key
    /// (e.g. the notification service writing the welcome email) can derive it
    /// again, so it never needs to be stored or logged.
    pub fn derive(&self, purpose: &str, parts: &[&[u8]]) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key).expect("any key length");
        mac.update(purpose.as_bytes());
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The email verification token of a registration (see [`SecretBox::derive`]).
    pub fn verification_token(&self, user_id: uuid::Uuid, expires_at: i64) -> String {
        let mac = self.derive("email-verification", &[user_id.as_bytes(), &expires_at.to_le_bytes()]);
        format!("{}.{mac}", user_id.simple())
    }

    /// A box with a random key (tests, ephemeral runs).
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self::new(key)
    }

    /// nonce ‖ ciphertext.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce cannot fail.
        out.extend(self.cipher.encrypt(Nonce::from_slice(&nonce), plaintext).expect("encrypts"));
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        self.cipher.decrypt(Nonce::from_slice(nonce), ciphertext).ok()
    }

    /// Seals into URL-safe text (for enrollment tokens handed to clients).
    pub fn seal_text(&self, plaintext: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.seal(plaintext))
    }

    pub fn open_text(&self, sealed: &str) -> Option<Vec<u8>> {
        self.open(&URL_SAFE_NO_PAD.decode(sealed).ok()?)
    }
}
