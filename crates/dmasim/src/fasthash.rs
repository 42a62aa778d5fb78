//! A multiply-shift hasher for maps keyed by page or frame numbers, which are already
//! well spread (SipHash would cost more than the lookups it protects). Iteration
//! order of such maps is never used for output.

use std::hash::{BuildHasherDefault, Hasher};

/// Hashes one `u64` key with a Fibonacci multiply.
#[derive(Default, Clone, Copy)]
pub struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (x ^ (x >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// `BuildHasher` for [`PageHasher`].
pub type BuildPageHasher = BuildHasherDefault<PageHasher>;

/// A `HashMap` keyed by page-like numbers.
pub type PageMap<V> = std::collections::HashMap<u64, V, BuildPageHasher>;
