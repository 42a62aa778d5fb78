//! The IOTLB's tag match: which way holds a key. The hardware compares a lookup's
//! tag with every way at once; the model answers the same question with a small
//! hash table from key to way.
//!
//! The table is open addressing with linear probing, kept at most a quarter full, and
//! deletes by backward shift (Knuth, TAOCP vol. 3, 6.4 Algorithm R) instead of
//! leaving tombstones. An IOTLB that a stream runs through replaces one entry per
//! page: a general-purpose map would collect a tombstone per eviction and rehash
//! every few dozen fills, where this one stays as short to probe as when it was
//! new. It knows nothing of what the keys mean.

/// The key no entry has: marks a free slot.
pub const FREE: u64 = u64::MAX;

/// Key → way, for at most the capacity given to [`TagIndex::new`] keys at once.
#[derive(Debug, Clone)]
pub struct TagIndex {
    keys: Vec<u64>,
    ways: Vec<u32>,
    mask: usize,
    /// `64 - log2(slots)`: a multiply-shift hash keeps the product's top bits.
    shift: u32,
}

impl TagIndex {
    /// An empty index for up to `capacity` keys (four times as many slots, at least
    /// 16: probes stay about one slot long).
    pub fn new(capacity: usize) -> TagIndex {
        let slots = capacity
            .saturating_mul(4)
            .max(16)
            .checked_next_power_of_two()
            .unwrap_or(1 << 62);
        TagIndex {
            keys: vec![FREE; slots],
            ways: vec![0; slots],
            mask: slots - 1,
            shift: 64 - slots.trailing_zeros(),
        }
    }

    /// The slot a key's probe starts at (Fibonacci hashing: consecutive page
    /// numbers land far apart).
    #[inline(always)]
    fn home(&self, k: u64) -> usize {
        (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// The slot holding `k`, or the free slot that ends its probe.
    #[inline(always)]
    fn find(&self, k: u64) -> (usize, bool) {
        let mut i = self.home(k);
        loop {
            let s = self.keys[i];
            if s == k {
                return (i, true);
            }
            if s == FREE {
                return (i, false);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The way holding `k`.
    #[inline]
    pub fn get(&self, k: u64) -> Option<usize> {
        debug_assert_ne!(k, FREE);
        match self.find(k) {
            (i, true) => Some(self.ways[i] as usize),
            _ => None,
        }
    }

    /// Records that `way` holds `k`; returns the way that held it before, if any.
    /// The caller keeps the number of keys within the capacity.
    #[inline]
    pub fn insert(&mut self, k: u64, way: usize) -> Option<usize> {
        debug_assert_ne!(k, FREE);
        let (i, found) = self.find(k);
        let old = found.then_some(self.ways[i] as usize);
        self.keys[i] = k;
        self.ways[i] = way as u32;
        old
    }

    /// Forgets `k`. Returns whether it was there.
    #[inline]
    pub fn remove(&mut self, k: u64) -> bool {
        let (mut hole, found) = self.find(k);
        if !found {
            return false;
        }
        // Backward shift: pull each later key of the cluster that may sit in the hole
        // (its probe passes the hole) into it, until the cluster ends.
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let s = self.keys[j];
            if s == FREE {
                break;
            }
            let h = self.home(s);
            if (j.wrapping_sub(h) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.keys[hole] = s;
                self.ways[hole] = self.ways[j];
                hole = j;
            }
        }
        self.keys[hole] = FREE;
        true
    }

    /// Forgets every key.
    pub fn clear(&mut self) {
        self.keys.fill(FREE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Any sequence of inserts and removes (keys from a small range, so probes
        /// collide and clusters wrap around the table's end) answers every lookup as
        /// a `HashMap` does.
        #[test]
        fn answers_as_a_hash_map_does(ops in prop::collection::vec((0u8..3, 0u64..40, 0usize..16), 1..400)) {
            let mut t = TagIndex::new(16);
            let mut m: HashMap<u64, usize> = HashMap::new();
            for (op, k, w) in ops {
                // Keys spread like the IOTLB's: page numbers shifted up.
                let k = k << 18;
                match op {
                    0 if m.len() < 16 || m.contains_key(&k) => {
                        prop_assert_eq!(t.insert(k, w), m.insert(k, w));
                    }
                    1 => prop_assert_eq!(t.remove(k), m.remove(&k).is_some()),
                    _ => {}
                }
                for probe in 0..40u64 {
                    prop_assert_eq!(t.get(probe << 18), m.get(&(probe << 18)).copied());
                }
            }
        }
    }

    #[test]
    fn a_stream_of_fills_and_evictions_keeps_every_key_findable() {
        // 64 live keys, one replaced per step for 100,000 steps (a stream through a
        // full 64-entry IOTLB): every live key is found, no evicted one is.
        let mut t = TagIndex::new(64);
        for n in 0..64u64 {
            t.insert(n << 18, n as usize);
        }
        for n in 64..100_064u64 {
            assert!(t.remove((n - 64) << 18));
            assert_eq!(t.insert(n << 18, (n % 64) as usize), None);
        }
        for n in 100_000..100_064u64 {
            assert_eq!(t.get(n << 18), Some((n % 64) as usize));
        }
        assert_eq!(t.get(99_999 << 18), None);
        assert_eq!(t.keys.iter().filter(|&&k| k != FREE).count(), 64);
        t.clear();
        assert_eq!(t.get(100_000 << 18), None);
    }
}
