//! Crypto-shredding: personal fields are sealed with a per-subject data key when they
//! are appended, and erasing a subject deletes its key.
//!
//! - A *subject* is a user ([`Event::subject`](crate::Event::subject)). Its 256-bit data
//!   key is made with its first sealed event and kept in a [`KeyStore`], never in the log.
//! - Payloads of types with personal fields are stored in their sealed version
//!   ([`crate::catalog::personal`]): the plain payload encrypted with AES-256-GCM under
//!   the subject's key (a random 96-bit nonce each time: a subject's key seals a few
//!   thousand events, far below the 2^32 a GCM key may take), beside a copy with the
//!   personal fields blanked. AES-256-GCM runs on the processor's AES instructions: on
//!   short payloads it is several times faster here than XChaCha20-Poly1305, and every
//!   replay opens every sealed event.
//! - The client address and user agent in an event's metadata are sealed with the key of
//!   the user who acted (or, when no user acted, of the event's subject).
//! - The associated data binds each seal to its event id, type and version: a sealed
//!   field cannot be moved onto another event.
//!
//! [`SealingStore`] does all of this at the store seam: writers hand it plain events
//! and readers get plain events back (or tombstones, for erased subjects); the bytes in
//! the log, which the chain covers, are never rewritten by an erasure.

mod keys;
mod store;

pub use keys::{KeyState, KeyStore, PostgresKeys, SqliteKeys};
pub use store::{SealingStore, KEYS_CACHED};

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use std::mem::MaybeUninit;
use uuid::Uuid;
use zeroize::Zeroize;

/// A subject's 256-bit data key. Its bytes are wiped when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(zeroize::Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh key from the operating system's random source.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        DataKey(zeroize::Zeroizing::new(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(zeroize::Zeroizing::new(bytes))
    }

    /// `None` unless `bytes` is exactly 32 long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self::from_bytes(bytes.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key made ready to seal and open (its AES key schedule and GHASH key).
    pub(crate) fn cipher(&self) -> Cipher {
        let key = UnboundKey::new(&AES_256_GCM, self.as_bytes()).expect("an AES-256 key is 32 bytes");
        Cipher(MaybeUninit::new(LessSafeKey::new(key)))
    }
}

/// Which seals a reader of the log needs opened (see
/// [`EventStore::read_all_opening`](crate::EventStore::read_all_opening)): the event types
/// whose personal payload fields it reads, and those whose metadata's client address and
/// user agent it reads. Seals it does not need stay shut, and those events read as if
/// their subject were erased: the payload as its tombstone (the personal fields blanked,
/// [`blanked`](crate::catalog::personal::blanked)), the metadata without the client
/// address and user agent. Folding the log into read models needs few of them, and every
/// open is an AES-GCM decryption; nothing unneeded is held in clear either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    /// Types whose sealed payload is opened.
    pub payloads: &'static [&'static str],
    /// Types whose sealed metadata is opened.
    pub metadata: &'static [&'static str],
}

impl Opening {
    /// Whether an event of `event_type` is read with its personal payload fields.
    pub fn payload(&self, event_type: &str) -> bool {
        self.payloads.contains(&event_type)
    }

    /// Whether an event of `event_type` is read with its client address and user agent.
    pub fn metadata(&self, event_type: &str) -> bool {
        self.metadata.contains(&event_type)
    }

    /// Whether a seal of an event of `event_type` may be opened (its payload's or its
    /// metadata's): whether a reader needs the event's id and metadata at all.
    pub fn names(&self, event_type: &str) -> bool {
        self.payload(event_type) || self.metadata(event_type)
    }
}

/// A [`DataKey`] made ready to seal and open: its AES key schedule and GHASH key, wiped
/// when dropped. Made for the subjects of one read or append at a time (the seals of
/// one subject's events close together share it), never kept.
///
/// AES-256-GCM is *ring*'s: on the payloads of a few hundred bytes that seals hold, it
/// opens them in about half the time RustCrypto's `aes-gcm` takes here (its GHASH
/// takes several blocks at a time), and both make the same bytes. *ring* does not wipe
/// its keys, so the key is held as bytes that are wiped here.
pub(crate) struct Cipher(MaybeUninit<LessSafeKey>);

impl Cipher {
    fn key(&self) -> &LessSafeKey {
        // SAFETY: made initialized, and only `drop` leaves it otherwise.
        unsafe { self.0.assume_init_ref() }
    }
}

impl Drop for Cipher {
    fn drop(&mut self) {
        // SAFETY: initialized until here, and never read again.
        unsafe { self.0.assume_init_drop() };
        // A `LessSafeKey` is its bytes (the key schedule and GHASH key inline, nothing on
        // the heap): zeroing them leaves nothing of the key behind.
        self.0.zeroize();
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(…)")
    }
}

/// Bytes encrypted with one subject's data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Whose key opens it.
    pub subject: Uuid,
    pub nonce: [u8; 12],
    /// The plaintext encrypted, with its 16-byte tag. Read and written as one run of
    /// bytes (the same encoding as a sequence of bytes, not made a byte at a time).
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// What a seal is bound to: the part of the event it holds, and the event.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub part: Part,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub schema_version: u16,
}

/// The part of an event a seal holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Payload,
    Metadata,
}

impl Binding<'_> {
    /// Calls `f` with the associated data: the part, the event id, the schema version
    /// and the type. Built on the stack (it is made for every seal and open).
    fn with_associated_data<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        let part: &[u8] = match self.part {
            Part::Payload => b"perfect21 sealed payload v1\0",
            Part::Metadata => b"perfect21 sealed metadata v1\0",
        };
        let parts: [&[u8]; 4] =
            [part, self.event_id.as_bytes(), &self.schema_version.to_be_bytes(), self.event_type.as_bytes()];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut stack = [0u8; 160];
        let mut heap = Vec::new();
        let aad: &mut [u8] = if len <= stack.len() {
            &mut stack[..len]
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        let mut at = 0;
        for p in parts {
            aad[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        f(aad)
    }
}

impl Seal {
    /// Encrypts `plaintext` for `subject` with a random nonce (from the thread's
    /// cryptographically secure generator, seeded by the operating system).
    pub fn close(key: &DataKey, subject: Uuid, binding: Binding<'_>, plaintext: &[u8]) -> Seal {
        Self::close_fresh(&key.cipher(), subject, binding, plaintext.to_vec())
    }

    /// [`close`](Self::close) with the key made ready, encrypting `plaintext` where it
    /// lies (its buffer becomes the ciphertext).
    pub(crate) fn close_fresh(cipher: &Cipher, subject: Uuid, binding: Binding<'_>, plaintext: Vec<u8>) -> Seal {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        Self::close_in_place(cipher, subject, binding, plaintext, nonce)
    }

    /// Encrypts with a given nonce: for fixtures only (a nonce must never repeat under one key).
    pub fn close_with_nonce(
        key: &DataKey,
        subject: Uuid,
        binding: Binding<'_>,
        plaintext: &[u8],
        nonce: [u8; 12],
    ) -> Seal {
        Self::close_in_place(&key.cipher(), subject, binding, plaintext.to_vec(), nonce)
    }

    fn close_in_place(
        cipher: &Cipher,
        subject: Uuid,
        binding: Binding<'_>,
        mut plaintext: Vec<u8>,
        nonce: [u8; 12],
    ) -> Seal {
        binding.with_associated_data(|aad| {
            cipher
                .key()
                .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut plaintext)
                // Encryption fails only for plaintexts beyond 64 GiB.
                .expect("AES-256-GCM encrypts")
        });
        Seal { subject, nonce, ciphertext: plaintext }
    }

    /// The plaintext, or `None` if this key does not open the seal for this binding
    /// (another key, another event, or altered bytes).
    pub fn open(&self, key: &DataKey, binding: Binding<'_>) -> Option<Vec<u8>> {
        self.open_with(&key.cipher(), binding)
    }

    pub(crate) fn open_with(&self, cipher: &Cipher, binding: Binding<'_>) -> Option<Vec<u8>> {
        open(cipher, &self.nonce, &self.ciphertext, binding)
    }
}

fn open(cipher: &Cipher, nonce: &[u8; 12], ciphertext: &[u8], binding: Binding<'_>) -> Option<Vec<u8>> {
    let mut plaintext = ciphertext.to_vec();
    if !open_in_place(cipher, nonce, &mut plaintext, binding) {
        return None;
    }
    plaintext.truncate(plaintext.len() - TAG_BYTES);
    Some(plaintext)
}

/// Opens a seal whose ciphertext (with its tag) is `sealed`, in place: on success the
/// plaintext is the first `sealed.len() - 16` bytes of it. A seal that does not open
/// leaves nothing of what it decrypted (the bytes before the tag are zeroed): a caller
/// reads what the event holds in clear instead.
pub(crate) fn open_in_place(cipher: &Cipher, nonce: &[u8; 12], sealed: &mut [u8], binding: Binding<'_>) -> bool {
    let Some(split) = sealed.len().checked_sub(TAG_BYTES) else { return false };
    let (message, tag) = sealed.split_at_mut(split);
    let Ok(tag) = Tag::try_from(&*tag) else { return false };
    let opened = binding.with_associated_data(|aad| {
        let nonce = Nonce::assume_unique_for_key(*nonce);
        cipher.key().open_in_place_separate_tag(nonce, Aad::from(aad), tag, message, 0..).is_ok()
    });
    if !opened {
        message.zeroize();
    }
    opened
}

/// Length of an AES-GCM tag, at the end of every ciphertext.
pub(crate) const TAG_BYTES: usize = 16;

/// A [`Seal`] read in place from the bytes that hold it (the same encoding).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct SealRef<'a> {
    pub subject: Uuid,
    pub nonce: [u8; 12],
    #[serde(borrow)]
    pub ciphertext: &'a [u8],
}

/// The sealed part of an event's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SealedMetadata {
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(event_id: Uuid) -> Binding<'static> {
        Binding { part: Part::Payload, event_id, event_type: "user.registered", schema_version: 3 }
    }

    /// A seal as first released: its ciphertext a sequence of bytes.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct ReleasedSeal {
        subject: Uuid,
        nonce: [u8; 12],
        ciphertext: Vec<u8>,
    }

    #[test]
    fn a_seal_encodes_as_released() {
        let id = Uuid::now_v7();
        // Long enough that its length takes a two-byte varint.
        let seal = Seal::close(&DataKey::random(), id, binding(id), &[7u8; 300]);
        let released = ReleasedSeal { subject: seal.subject, nonce: seal.nonce, ciphertext: seal.ciphertext.clone() };
        let bytes = postcard::to_stdvec(&seal).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&released).unwrap());
        assert_eq!(postcard::from_bytes::<Seal>(&bytes).unwrap(), seal);
        assert_eq!(postcard::from_bytes::<ReleasedSeal>(&bytes).unwrap(), released);
        let borrowed: SealRef<'_> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(borrowed.ciphertext, &seal.ciphertext[..]);
    }

    #[test]
    fn a_seal_opens_only_with_its_key_for_its_event() {
        let key = DataKey::random();
        let id = Uuid::now_v7();
        let seal = Seal::close(&key, Uuid::nil(), binding(id), b"ada@example.com");
        assert_eq!(seal.open(&key, binding(id)).as_deref(), Some(&b"ada@example.com"[..]));
        assert!(!seal.ciphertext.windows(3).any(|w| w == b"ada"));
        assert_eq!(seal.open(&DataKey::random(), binding(id)), None, "another key");
        assert_eq!(seal.open(&key, binding(Uuid::now_v7())), None, "another event");
        let as_metadata = Binding { part: Part::Metadata, ..binding(id) };
        assert_eq!(seal.open(&key, as_metadata), None, "another part");
        let mut altered = seal.clone();
        altered.ciphertext[0] ^= 1;
        assert_eq!(altered.open(&key, binding(id)), None, "altered bytes");
        let again = Seal::close(&key, Uuid::nil(), binding(id), b"ada@example.com");
        assert_ne!(again.nonce, seal.nonce, "a fresh nonce each time");
    }

    #[test]
    fn a_cipher_leaves_nothing_of_its_key_when_dropped() {
        // An AES-256 key schedule alone is 240 bytes.
        assert!(std::mem::size_of::<Cipher>() >= 240 + 16);
        let mut slot = MaybeUninit::new(DataKey::from_bytes([7; 32]).cipher());
        // SAFETY: initialized above, dropped once.
        unsafe { slot.assume_init_drop() };
        // SAFETY: the wiping wrote every byte of the cipher (padding too).
        let bytes = unsafe { std::slice::from_raw_parts(slot.as_ptr().cast::<u8>(), std::mem::size_of::<Cipher>()) };
        assert!(bytes.iter().all(|b| *b == 0), "wiped when dropped");
    }

    #[test]
    fn a_seal_opened_in_place_gives_its_plaintext_or_nothing_of_it() {
        let key = DataKey::random();
        let id = Uuid::now_v7();
        let seal = Seal::close(&key, Uuid::nil(), binding(id), b"ada@example.com");
        let mut bytes = seal.ciphertext.clone();
        assert!(open_in_place(&key.cipher(), &seal.nonce, &mut bytes, binding(id)));
        assert_eq!(&bytes[..bytes.len() - TAG_BYTES], b"ada@example.com");
        for (why, cipher, nonce, bound) in [
            ("another key", DataKey::random().cipher(), seal.nonce, binding(id)),
            ("another nonce", key.cipher(), [0; 12], binding(id)),
            ("another event", key.cipher(), seal.nonce, binding(Uuid::now_v7())),
        ] {
            let mut bytes = seal.ciphertext.clone();
            assert!(!open_in_place(&cipher, &nonce, &mut bytes, bound), "{why}");
            let (message, tag) = bytes.split_at(bytes.len() - TAG_BYTES);
            assert!(message.iter().all(|b| *b == 0), "{why}: nothing decrypted is left");
            assert_eq!(tag, &seal.ciphertext[message.len()..], "{why}: the tag as it was");
        }
        let mut short = seal.ciphertext[..10].to_vec();
        assert!(!open_in_place(&key.cipher(), &seal.nonce, &mut short, binding(id)), "shorter than a tag");
        let long_type = "x".repeat(300);
        let bound = Binding { event_type: &long_type, ..binding(id) };
        let seal = Seal::close(&key, Uuid::nil(), bound, b"a long type's associated data is made on the heap");
        assert!(seal.open(&key, bound).is_some());
        assert!(seal.open(&key, Binding { event_type: &long_type[1..], ..bound }).is_none());
    }
}
