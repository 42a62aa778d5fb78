//! An ordered set for the sanitizer's indexes: a sorted vector while it is small —
//! the common case, a driver keeps a handful of mappings live — and a B-tree once it
//! grows, so a script with a hundred thousand live mappings still inserts in
//! logarithmic time. A sorted vector answers an insert, a removal or a range with
//! one binary search and no allocation, where a B-tree walks nodes and allocates.

use std::collections::BTreeSet;
use std::ops::{Bound, RangeBounds};

/// Above this many keys the set becomes a B-tree.
const SMALL_MAX: usize = 512;
/// A B-tree that shrinks below this many keys becomes a vector again (well below
/// [`SMALL_MAX`], so a set hovering at the limit does not convert back and forth).
const SMALL_AGAIN: usize = 128;

/// The set.
#[derive(Debug, Clone)]
pub(super) enum OrdSet<K> {
    Small(Vec<K>),
    Large(BTreeSet<K>),
}

/// A range of an [`OrdSet`], in order.
pub(super) enum Range<'a, K> {
    Small(std::slice::Iter<'a, K>),
    Large(std::collections::btree_set::Range<'a, K>),
}

impl<'a, K> Iterator for Range<'a, K> {
    type Item = &'a K;
    #[inline]
    fn next(&mut self) -> Option<&'a K> {
        match self {
            Range::Small(i) => i.next(),
            Range::Large(i) => i.next(),
        }
    }
}

impl<K> DoubleEndedIterator for Range<'_, K> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Range::Small(i) => i.next_back(),
            Range::Large(i) => i.next_back(),
        }
    }
}

impl<K: Ord + Copy> OrdSet<K> {
    /// An empty set.
    pub(super) fn new() -> Self {
        OrdSet::Small(Vec::new())
    }

    /// Adds `k` (no duplicate).
    pub(super) fn insert(&mut self, k: K) {
        match self {
            OrdSet::Small(v) => {
                if let Err(i) = v.binary_search(&k) {
                    v.insert(i, k);
                }
                if v.len() > SMALL_MAX {
                    *self = OrdSet::Large(v.drain(..).collect());
                }
            }
            OrdSet::Large(s) => {
                s.insert(k);
            }
        }
    }

    /// Removes `k` if present.
    pub(super) fn remove(&mut self, k: &K) {
        match self {
            OrdSet::Small(v) => {
                if let Ok(i) = v.binary_search(k) {
                    v.remove(i);
                }
            }
            OrdSet::Large(s) => {
                s.remove(k);
                if s.len() < SMALL_AGAIN {
                    *self = OrdSet::Small(std::mem::take(s).into_iter().collect());
                }
            }
        }
    }

    /// The keys inside `r`, in order.
    pub(super) fn range<R: RangeBounds<K>>(&self, r: R) -> Range<'_, K> {
        match self {
            OrdSet::Small(v) => {
                let lo = match r.start_bound() {
                    Bound::Included(k) => v.partition_point(|x| x < k),
                    Bound::Excluded(k) => v.partition_point(|x| x <= k),
                    Bound::Unbounded => 0,
                };
                let hi = match r.end_bound() {
                    Bound::Included(k) => v.partition_point(|x| x <= k),
                    Bound::Excluded(k) => v.partition_point(|x| x < k),
                    Bound::Unbounded => v.len(),
                };
                Range::Small(v[lo..hi.max(lo)].iter())
            }
            OrdSet::Large(s) => Range::Large(s.range(r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the operations, the set answers ranges as a `BTreeSet` does,
        /// through the conversions both ways.
        #[test]
        fn behaves_as_a_btree_set(ops in proptest::collection::vec((any::<bool>(), 0u32..2000), 0..3000),
                                  probes in proptest::collection::vec((0u32..2100, 0u32..300), 1..20)) {
            let mut s = OrdSet::new();
            let mut t = BTreeSet::new();
            let mut was_large = false;
            for (add, k) in ops {
                // Mostly inserts, so the set grows past the vector limit.
                if add || k % 3 != 0 {
                    s.insert(k);
                    t.insert(k);
                } else {
                    s.remove(&k);
                    t.remove(&k);
                }
                was_large |= matches!(s, OrdSet::Large(_));
            }
            for (lo, len) in probes {
                let a: Vec<u32> = s.range(lo..=lo + len).copied().collect();
                let b: Vec<u32> = t.range(lo..=lo + len).copied().collect();
                prop_assert_eq!(a, b);
                let a: Vec<u32> = s.range(lo..lo + len).copied().collect();
                let b: Vec<u32> = t.range(lo..lo + len).copied().collect();
                prop_assert_eq!(a, b);
            }
            prop_assert!(t.len() <= SMALL_MAX || was_large);
        }
    }

    #[test]
    fn grows_into_a_tree_and_shrinks_back() {
        let mut s = OrdSet::new();
        for k in 0..=SMALL_MAX as u64 {
            s.insert(k);
        }
        assert!(matches!(s, OrdSet::Large(_)));
        for k in 0..=SMALL_MAX as u64 - SMALL_AGAIN as u64 + 1 {
            s.remove(&k);
        }
        assert!(matches!(s, OrdSet::Small(_)));
        let left: Vec<u64> = s.range(..).copied().collect();
        assert_eq!(left.len(), SMALL_AGAIN - 1);
        assert!(left.windows(2).all(|w| w[0] < w[1]));
    }
}
