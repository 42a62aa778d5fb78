//! A small set of byte ranges (offsets inside one mapping), kept sorted and merged.

/// Disjoint, sorted, half-open ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    r: Vec<(u64, u64)>,
}

impl RangeSet {
    /// True when no byte is in the set.
    pub fn is_empty(&self) -> bool {
        self.r.is_empty()
    }

    /// Adds `[s, e)`.
    pub fn insert(&mut self, s: u64, e: u64) {
        if s >= e {
            return;
        }
        let (mut s, mut e) = (s, e);
        let mut out = Vec::with_capacity(self.r.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.r {
            if b < s {
                out.push((a, b));
            } else if a > e {
                if !placed {
                    out.push((s, e));
                    placed = true;
                }
                out.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        if !placed {
            out.push((s, e));
        }
        self.r = out;
    }

    /// Removes `[s, e)`.
    pub fn remove(&mut self, s: u64, e: u64) {
        if s >= e || self.r.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.r.len() + 1);
        for &(a, b) in &self.r {
            if b <= s || a >= e {
                out.push((a, b));
                continue;
            }
            if a < s {
                out.push((a, s));
            }
            if b > e {
                out.push((e, b));
            }
        }
        self.r = out;
    }

    /// Bytes of `[s, e)` that are in the set.
    pub fn overlap(&self, s: u64, e: u64) -> u64 {
        self.r
            .iter()
            .map(|&(a, b)| b.min(e).saturating_sub(a.max(s)))
            .sum()
    }

    /// The ranges themselves.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut r = RangeSet::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 30);
        assert_eq!(r.ranges(), &[(10, 40)]);
        r.remove(15, 25);
        assert_eq!(r.ranges(), &[(10, 15), (25, 40)]);
        assert_eq!(r.overlap(0, 100), 20);
        assert_eq!(r.overlap(12, 26), 4);
        r.remove(0, 100);
        assert!(r.is_empty());
    }

    #[test]
    fn insert_keeps_order() {
        let mut r = RangeSet::default();
        r.insert(50, 60);
        r.insert(0, 5);
        r.insert(100, 101);
        assert_eq!(r.ranges(), &[(0, 5), (50, 60), (100, 101)]);
    }
}
