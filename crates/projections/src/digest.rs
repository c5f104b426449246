//! A canonical, order-independent-of-hash-maps digest of read-model state.

use sha2::{Digest as _, Sha256};

/// Feeds fields into SHA-256 with length prefixes, so that field boundaries count.
pub struct Digest(Sha256);

impl Digest {
    pub fn new() -> Self {
        Digest(Sha256::new())
    }

    pub fn u64(&mut self, v: u64) {
        self.0.update(v.to_le_bytes());
    }

    pub fn i64(&mut self, v: i64) {
        self.0.update(v.to_le_bytes());
    }

    pub fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.update(s.as_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }

    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u64(u64::MAX),
            Some(s) => self.str(s),
        }
    }

    pub fn finish(self) -> String {
        self.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Keys of a map in sorted order, so that digests do not depend on hash order.
pub fn sorted<'a, K: Ord + 'a, V>(it: impl Iterator<Item = (&'a K, &'a V)>) -> Vec<(&'a K, &'a V)> {
    let mut v: Vec<_> = it.collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}
