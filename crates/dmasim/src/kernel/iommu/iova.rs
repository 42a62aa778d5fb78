//! The IOVA allocator (`drivers/iommu/iova.c`, Linux v6.12): allocated ranges in
//! granule frames, searched top-down below a limit from a cached node, size-aligned;
//! `alloc_iova_fast` rounds small sizes up to a power of two and first tries the
//! per-CPU range caches (magazines of 127 frames for sizes of 1 to 32 granules,
//! backed by a depot of full magazines that is trimmed down to one per CPU).
//!
//! Simplifications: a `BTreeMap` plays the rbtree (same order, same walk); the depot
//! trim that Linux runs every 100 ms from a work item runs when a magazine is added.

use std::collections::BTreeMap;

/// `IOVA_RANGE_CACHE_MAX_SIZE`: cached size classes are orders 0..6 (1–32 granules).
pub const IOVA_RANGE_CACHE_MAX_SIZE: u32 = 6;
/// `IOVA_MAG_SIZE`: frames per magazine.
pub const IOVA_MAG_SIZE: usize = 127;
/// `IOVA_ANCHOR`: the sentinel node at the top.
const IOVA_ANCHOR: u64 = u64::MAX;

#[derive(Debug, Clone, Default)]
struct CpuRcache {
    loaded: Vec<u64>,
    prev: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
struct Rcache {
    cpus: Vec<CpuRcache>,
    depot: Vec<Vec<u64>>,
}

/// One IOVA space (`struct iova_domain`).
#[derive(Debug, Clone)]
pub struct IovaDomain {
    /// log2 of the granule.
    pub shift: u32,
    /// Lowest frame handed out (IOVA 0 never is).
    pub start_pfn: u64,
    /// `dma_32bit_pfn`: the first frame above 4 GiB.
    pub dma_32bit_pfn: u64,
    /// Allocated ranges: first frame → last frame (the anchor included).
    ranges: BTreeMap<u64, u64>,
    cached_node: u64,
    cached32_node: u64,
    max32_alloc_size: u64,
    rcaches: Vec<Rcache>,
    ncpus: usize,
    /// Frames in allocated ranges (the anchor excluded).
    pages: u64,
    /// An unmap gave back frames that are not an allocated range of that size
    /// ([`IovaDomain::free_problem`]): the books are now the inconsistent ones
    /// Linux would have, and the invariant check no longer judges them.
    pub corrupted: bool,
}

fn fls(x: u64) -> u32 {
    64 - x.leading_zeros()
}

/// `order_base_2()`.
fn order_base_2(x: u64) -> u32 {
    if x <= 1 {
        0
    } else {
        fls(x - 1)
    }
}

impl IovaDomain {
    /// `init_iova_domain(granule, start_pfn)` with per-CPU caches for `ncpus`.
    pub fn new(granule: u64, start_pfn: u64, ncpus: usize) -> IovaDomain {
        let shift = granule.trailing_zeros();
        let dma_32bit_pfn = (1u64 << 32) >> shift;
        let mut ranges = BTreeMap::new();
        ranges.insert(IOVA_ANCHOR, IOVA_ANCHOR);
        IovaDomain {
            shift,
            start_pfn: start_pfn.max(1),
            dma_32bit_pfn,
            ranges,
            pages: 0,
            cached_node: IOVA_ANCHOR,
            cached32_node: IOVA_ANCHOR,
            max32_alloc_size: dma_32bit_pfn,
            rcaches: (0..IOVA_RANGE_CACHE_MAX_SIZE)
                .map(|_| Rcache {
                    cpus: vec![CpuRcache::default(); ncpus.max(1)],
                    depot: Vec::new(),
                })
                .collect(),
            ncpus: ncpus.max(1),
            corrupted: false,
        }
    }

    /// Allocated ranges, the anchor excluded (cached ones count: they stay
    /// allocated in the tree while they sit in a magazine).
    pub fn allocated(&self) -> usize {
        self.ranges.len() - 1
    }

    /// Frames in allocated ranges (cached ones included), for occupancy pictures.
    pub fn allocated_pages(&self) -> u64 {
        self.pages
    }

    fn prev_node(&self, lo: u64) -> Option<(u64, u64)> {
        self.ranges.range(..lo).next_back().map(|(&a, &b)| (a, b))
    }

    fn next_node(&self, lo: u64) -> u64 {
        self.ranges
            .range(lo + 1..)
            .next()
            .map_or(IOVA_ANCHOR, |(&a, _)| a)
    }

    /// `iova_find_limit`: where a retry below `limit_pfn` starts.
    fn find_limit(&self, limit_pfn: u64) -> u64 {
        if limit_pfn > self.dma_32bit_pfn {
            return IOVA_ANCHOR;
        }
        match self.ranges.range(..=limit_pfn).next_back() {
            Some((&lo, &hi)) if hi >= limit_pfn => lo,
            _ => self
                .ranges
                .range(limit_pfn..)
                .next()
                .map_or(IOVA_ANCHOR, |(&a, _)| a),
        }
    }

    /// `__alloc_and_insert_iova_range`: `size` frames ending below `limit_pfn`
    /// (exclusive), aligned to the size rounded up to a power of two.
    fn alloc_range(&mut self, size: u64, limit_pfn: u64) -> Option<u64> {
        let align_mask = !0u64 << fls(size - 1);
        let (mut high, mut low) = (limit_pfn, self.start_pfn);
        if limit_pfn <= self.dma_32bit_pfn && size >= self.max32_alloc_size {
            return None;
        }
        let mut curr = if limit_pfn <= self.dma_32bit_pfn {
            self.cached32_node
        } else {
            self.cached_node
        };
        let retry_pfn = self.ranges.get(&curr).copied().unwrap_or(IOVA_ANCHOR);
        let mut retried = false;
        loop {
            let mut new_pfn;
            let mut curr_lo = curr;
            loop {
                high = high.min(curr_lo);
                new_pfn = high.wrapping_sub(size) & align_mask;
                match self.prev_node(curr_lo) {
                    Some((plo, phi)) if new_pfn <= phi && new_pfn >= low => curr_lo = plo,
                    _ => break,
                }
            }
            if high < size || new_pfn < low {
                if !retried && low == self.start_pfn && retry_pfn < limit_pfn {
                    retried = true;
                    high = limit_pfn;
                    low = retry_pfn + 1;
                    curr = self.find_limit(limit_pfn);
                    continue;
                }
                self.max32_alloc_size = size;
                return None;
            }
            let hi = new_pfn + size - 1;
            self.ranges.insert(new_pfn, hi);
            self.pages += size;
            if hi < self.dma_32bit_pfn {
                self.cached32_node = new_pfn;
            } else {
                self.cached_node = new_pfn;
            }
            return Some(new_pfn);
        }
    }

    /// The allocated range holding `pfn` (`private_find_iova`), the anchor excluded.
    fn range_holding(&self, pfn: u64) -> Option<(u64, u64)> {
        self.ranges
            .range(..=pfn)
            .next_back()
            .filter(|(&lo, &hi)| lo != IOVA_ANCHOR && pfn <= hi)
            .map(|(&lo, &hi)| (lo, hi))
    }

    /// `free_iova`: frees the range holding `pfn` (`private_find_iova` finds the
    /// range that contains the frame, not only one that starts there, as
    /// `iova_magazine_free_pfns` does for cached frames). False when no range holds it.
    pub fn free(&mut self, pfn: u64) -> bool {
        let Some((pfn, hi)) = self.range_holding(pfn) else {
            return false;
        };
        // __cached_rbnode_delete_update
        let c32 = self.cached32_node;
        let c32_lo = c32;
        if pfn == c32 || (hi < self.dma_32bit_pfn && pfn >= c32_lo) {
            self.cached32_node = self.next_node(pfn);
        }
        if pfn < self.dma_32bit_pfn {
            self.max32_alloc_size = self.dma_32bit_pfn;
        }
        if pfn >= self.cached_node {
            self.cached_node = self.next_node(pfn);
        }
        self.ranges.remove(&pfn);
        self.pages -= hi - pfn + 1;
        true
    }

    /// `alloc_iova_fast(size, limit_pfn, flush_rcache)` on CPU `cpu`: the first frame,
    /// or `None` (the IOVA space below the limit is exhausted).
    pub fn alloc_fast(
        &mut self,
        cpu: usize,
        size: u64,
        limit_pfn: u64,
        flush_rcache: bool,
    ) -> Option<u64> {
        let size = if size < 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1) {
            size.max(1).next_power_of_two()
        } else {
            size
        };
        if let Some(pfn) = self.rcache_get(cpu, size, limit_pfn + 1) {
            return Some(pfn);
        }
        if let Some(pfn) = self.alloc_range(size, limit_pfn + 1) {
            return Some(pfn);
        }
        if !flush_rcache {
            return None;
        }
        self.flush_rcaches();
        self.alloc_range(size, limit_pfn + 1)
    }

    /// What giving back `size` frames at `pfn` ([`IovaDomain::free_fast`], at once
    /// or through the flush queue) does to the books that giving back an allocated
    /// range never does, or `None`. `free_iova_fast` trusts its arguments
    /// (drivers/iommu/iova.c): a cached size goes into the CPU's magazine whatever
    /// the tree holds at `pfn`, so a frame that does not start a range of that size
    /// will be handed out again over a live range (or beyond the one freed); an
    /// uncached size frees the whole range holding `pfn`, live granules included.
    /// This is where an unmap with another address, size or device than the map's
    /// leaves dma-iommu's allocator after `__iommu_dma_unmap`.
    pub fn free_problem(&self, pfn: u64, size: u64) -> Option<String> {
        let range = self.range_holding(pfn);
        let sh = self.shift;
        let what = |lo: u64, hi: u64| {
            format!(
                "{:#x}-{:#x} ({} granule(s))",
                lo << sh,
                ((hi + 1) << sh) - 1,
                hi - lo + 1
            )
        };
        if order_base_2(size) < IOVA_RANGE_CACHE_MAX_SIZE {
            // alloc_iova_fast rounds a cached size up to a power of two.
            let want = size.max(1).next_power_of_two();
            return match range {
                Some((lo, hi)) if lo == pfn && hi - lo + 1 == want => None,
                Some((lo, hi)) => Some(format!(
                    "IOVA {:#x} went into the per-CPU cache of {want}-granule ranges, but the allocated range there is {}",
                    pfn << sh,
                    what(lo, hi)
                )),
                None => Some(format!(
                    "IOVA {:#x} went into the per-CPU cache of {want}-granule ranges, but no allocated range holds it",
                    pfn << sh
                )),
            };
        }
        match range {
            Some((lo, hi)) if lo != pfn => Some(format!(
                "a free at IOVA {:#x} released the whole range {} that holds it",
                pfn << sh,
                what(lo, hi)
            )),
            _ => None,
        }
    }

    /// `free_iova_fast`: back into the CPU's magazine when the size is cached, else
    /// out of the tree.
    pub fn free_fast(&mut self, cpu: usize, pfn: u64, size: u64) {
        if !self.rcache_insert(cpu, pfn, size) {
            self.free(pfn);
        }
    }

    fn rcache_get(&mut self, cpu: usize, size: u64, limit_pfn: u64) -> Option<u64> {
        let log = order_base_2(size);
        if log >= IOVA_RANGE_CACHE_MAX_SIZE {
            return None;
        }
        let limit = limit_pfn.checked_sub(size)?;
        let rc = &mut self.rcaches[log as usize];
        let c = &mut rc.cpus[cpu % self.ncpus];
        if c.loaded.is_empty() {
            if !c.prev.is_empty() {
                std::mem::swap(&mut c.loaded, &mut c.prev);
            } else if let Some(m) = rc.depot.pop() {
                c.loaded = m;
            }
        }
        // iova_magazine_pop: the top frame, or the nearest one below the limit.
        let i = c.loaded.iter().rposition(|&p| p <= limit)?;
        Some(c.loaded.swap_remove(i))
    }

    fn rcache_insert(&mut self, cpu: usize, pfn: u64, size: u64) -> bool {
        let log = order_base_2(size);
        if log >= IOVA_RANGE_CACHE_MAX_SIZE {
            return false;
        }
        let ncpus = self.ncpus;
        let rc = &mut self.rcaches[log as usize];
        let c = &mut rc.cpus[cpu % ncpus];
        if c.loaded.len() >= IOVA_MAG_SIZE {
            if c.prev.is_empty() {
                std::mem::swap(&mut c.loaded, &mut c.prev);
            } else {
                let full = std::mem::take(&mut c.loaded);
                rc.depot.push(full);
            }
        }
        c.loaded.push(pfn);
        // iova_depot_work_func: keep at most one full magazine per CPU in the depot.
        let mut trimmed = Vec::new();
        while rc.depot.len() > ncpus {
            trimmed.extend(rc.depot.remove(0));
        }
        for p in trimmed {
            self.free(p);
        }
        true
    }

    /// `free_cpu_cached_iovas` + `free_global_cached_iovas` for every CPU.
    pub fn flush_rcaches(&mut self) {
        let mut all = Vec::new();
        for rc in &mut self.rcaches {
            for c in &mut rc.cpus {
                all.append(&mut c.loaded);
                all.append(&mut c.prev);
            }
            for m in rc.depot.drain(..) {
                all.extend(m);
            }
        }
        for p in all {
            self.free(p);
        }
    }

    /// The allocator's books agree (an invariant check): no IOVA range overlaps
    /// another or starts below `start_pfn` (IOVA 0 is never handed out), every
    /// range a magazine or the depot caches is one the tree holds, and none is
    /// cached twice or also waiting in the flush queue (`pending`, the first frames
    /// of the queued ranges). Any of these would hand the same IOVA out twice: a
    /// range cached twice comes out of two `alloc_iova_fast` calls
    /// (drivers/iommu/iova.c: iova_magazine_push/pop keep each freed range once).
    ///
    /// # Errors
    /// What disagrees.
    pub fn consistent(&self, pending: impl IntoIterator<Item = u64>) -> Result<(), String> {
        let mut prev_hi: Option<u64> = None;
        for (&lo, &hi) in self.ranges.iter().filter(|(&lo, _)| lo != IOVA_ANCHOR) {
            if hi < lo || lo < self.start_pfn {
                return Err(format!("iova: range {lo:#x}-{hi:#x} is malformed"));
            }
            if prev_hi.is_some_and(|p| lo <= p) {
                return Err(format!(
                    "iova: range {lo:#x}-{hi:#x} overlaps the one before"
                ));
            }
            prev_hi = Some(hi);
        }
        let mut seen = std::collections::BTreeSet::new();
        let cached = self.rcaches.iter().flat_map(|rc| {
            rc.cpus
                .iter()
                .flat_map(|c| c.loaded.iter().chain(c.prev.iter()))
                .chain(rc.depot.iter().flatten())
        });
        for &pfn in cached {
            if !self.ranges.contains_key(&pfn) {
                return Err(format!(
                    "iova: cached pfn {pfn:#x} is not an allocated range"
                ));
            }
            if !seen.insert(pfn) {
                return Err(format!(
                    "iova: pfn {pfn:#x} is cached twice (it would be handed out twice)"
                ));
            }
        }
        for pfn in pending {
            if !self.ranges.contains_key(&pfn) {
                return Err(format!(
                    "iova: queued pfn {pfn:#x} is not an allocated range"
                ));
            }
            if !seen.insert(pfn) {
                return Err(format!(
                    "iova: pfn {pfn:#x} is both cached and queued, or queued twice"
                ));
            }
        }
        Ok(())
    }

    /// Does a per-CPU magazine or the depot hold `pfn` (a range given back and
    /// not handed out again). A scan of every cached frame: only a misuse asks.
    pub fn is_cached(&self, pfn: u64) -> bool {
        self.rcaches.iter().any(|rc| {
            rc.cpus
                .iter()
                .any(|c| c.loaded.contains(&pfn) || c.prev.contains(&pfn))
                || rc.depot.iter().any(|m| m.contains(&pfn))
        })
    }

    /// Is `pfn` inside an allocated range (cached ones included).
    pub fn contains(&self, pfn: u64) -> bool {
        self.ranges
            .range(..=pfn)
            .next_back()
            .is_some_and(|(&lo, &hi)| lo != IOVA_ANCHOR && pfn <= hi && pfn >= lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_down_size_aligned_below_the_limit() {
        let mut d = IovaDomain::new(4096, 1, 1);
        let lim = (1u64 << 32) / 4096 - 1;
        let a = d.alloc_fast(0, 1, lim, true).unwrap();
        assert_eq!(a, lim, "the very top page");
        let b = d.alloc_fast(0, 4, lim, true).unwrap();
        assert_eq!(b % 4, 0, "size aligned");
        assert!(b + 3 < a);
        // 3 pages are rounded up to 4 (alloc_iova_fast).
        let c = d.alloc_fast(0, 3, lim, true).unwrap();
        assert_eq!(c % 4, 0);
        assert_eq!(c + 4, b);
        // A 64-page range (not cached) is 64-aligned.
        let e = d.alloc_fast(0, 64, lim, true).unwrap();
        assert_eq!(e % 64, 0);
    }

    /// The invariant check: a range freed twice sits twice in the CPU's magazine
    /// and the next two allocations hand out the same IOVA; `consistent` says so
    /// first. A range both cached and waiting in the flush queue, and overlapping
    /// ranges, are caught too.
    #[test]
    fn invariant_check_catches_an_iova_handed_out_twice() {
        let mut d = IovaDomain::new(4096, 1, 1);
        let lim = (1u64 << 32) / 4096 - 1;
        let a = d.alloc_fast(0, 1, lim, true).unwrap();
        let b = d.alloc_fast(0, 1, lim, true).unwrap();
        assert_eq!(d.consistent([]), Ok(()));
        assert_eq!(d.consistent([b]), Ok(()), "b waits in the flush queue");
        d.free_fast(0, a, 1);
        assert_eq!(d.consistent([b]), Ok(()), "a cached once");
        let e = d.consistent([a]).unwrap_err();
        assert!(e.contains("both cached and queued"), "{e}");
        d.free_fast(0, a, 1);
        let e = d.consistent([]).unwrap_err();
        assert!(e.contains("cached twice"), "{e}");
        // What the check prevents: the same IOVA handed out twice.
        let x = d.alloc_fast(0, 1, lim, true).unwrap();
        let y = d.alloc_fast(0, 1, lim, true).unwrap();
        assert_eq!((x, y), (a, a));
        // Overlapping ranges in the tree.
        let mut d = IovaDomain::new(4096, 1, 1);
        d.ranges.insert(100, 103);
        d.ranges.insert(102, 102);
        let e = d.consistent([]).unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
    }

    /// drivers/iommu/iova.c: free_iova_fast caches a small range whatever the
    /// tree holds at that frame, and free_iova frees the range that holds the frame
    /// (private_find_iova). `free_problem` names each free that leaves the books
    /// as no free of an allocated range does; frees of allocated ranges pass.
    #[test]
    fn frees_that_are_not_an_allocated_range_are_named_and_follow_linux() {
        let mut d = IovaDomain::new(4096, 1, 1);
        let lim = (1u64 << 32) / 4096 - 1;
        let two = d.alloc_fast(0, 2, lim, true).unwrap();
        let three = d.alloc_fast(0, 3, lim, true).unwrap();
        let big = d.alloc_fast(0, 64, lim, true).unwrap();
        assert_eq!(d.free_problem(two, 2), None);
        assert_eq!(d.free_problem(three, 3), None, "3 frames were rounded to 4");
        assert_eq!(d.free_problem(big, 64), None);
        // Inside a range, another size, no range at all, an uncached interior frame.
        let e = d.free_problem(two + 1, 1).unwrap();
        assert!(e.contains("allocated range there is"), "{e}");
        assert!(
            d.free_problem(two, 1).is_some(),
            "a 2-frame range as 1 frame"
        );
        assert!(d.free_problem(two, 8).is_some());
        let e = d.free_problem(0x10, 1).unwrap();
        assert!(e.contains("no allocated range"), "{e}");
        let e = d.free_problem(big + 5, 64).unwrap();
        assert!(e.contains("released the whole range"), "{e}");
        assert_eq!(d.free_problem(0x10, 64), None, "nothing to free: a no-op");
        // What Linux does with them: the interior frame is cached and handed out
        // again over the live range; an uncached interior free frees its range.
        d.free_fast(0, two + 1, 1);
        assert_eq!(d.alloc_fast(0, 1, lim, true), Some(two + 1));
        d.free_fast(0, big + 5, 64);
        assert!(
            !d.contains(big),
            "the whole range holding the frame is gone"
        );
        assert!(
            d.free(two + 1),
            "free_iova finds the range holding the frame"
        );
        assert!(!d.contains(two));
    }

    #[test]
    fn iova_zero_is_never_handed_out_and_a_small_space_runs_out() {
        let mut d = IovaDomain::new(4096, 1, 1);
        let mut got = Vec::new();
        while let Some(p) = d.alloc_fast(0, 1, 15, true) {
            got.push(p);
            assert!(got.len() <= 16);
        }
        assert_eq!(got.len(), 15, "pfns 1..=15");
        assert!(!got.contains(&0));
    }

    #[test]
    fn freed_small_ranges_are_reused_from_the_cpu_magazine() {
        let mut d = IovaDomain::new(4096, 1, 2);
        let lim = (1u64 << 32) / 4096 - 1;
        let a = d.alloc_fast(0, 1, lim, true).unwrap();
        d.free_fast(0, a, 1);
        assert!(d.contains(a), "a cached range stays allocated in the tree");
        assert_eq!(d.alloc_fast(0, 1, lim, true), Some(a));
        // The other CPU's magazine is separate.
        d.free_fast(0, a, 1);
        let b = d.alloc_fast(1, 1, lim, true).unwrap();
        assert_ne!(a, b);
        // Large ranges are not cached.
        let big = d.alloc_fast(0, 64, lim, true).unwrap();
        d.free_fast(0, big, 64);
        assert!(!d.contains(big));
    }

    #[test]
    fn the_depot_is_trimmed_to_one_magazine_per_cpu() {
        let mut d = IovaDomain::new(4096, 1, 1);
        let lim = (1u64 << 40) - 1;
        let n = IOVA_MAG_SIZE * 4;
        let pfns: Vec<u64> = (0..n)
            .map(|_| d.alloc_fast(0, 1, lim, true).unwrap())
            .collect();
        for p in &pfns {
            d.free_fast(0, *p, 1);
        }
        // loaded + prev + at most one depot magazine stay cached; the rest is freed.
        assert!(d.allocated() <= 3 * IOVA_MAG_SIZE, "{}", d.allocated());
        d.flush_rcaches();
        assert_eq!(d.allocated(), 0);
    }

    #[test]
    fn a_32_bit_limit_falls_back_and_remembers_failure() {
        let mut d = IovaDomain::new(4096, 1, 1);
        // Fill the 16 frames below a tiny limit with 2-frame ranges.
        let mut n = 0;
        while d.alloc_fast(0, 2, 16, false).is_some() {
            n += 1;
        }
        assert_eq!(
            n, 7,
            "frames 2..15 in pairs; 0-1 cannot hold an aligned pair"
        );
        assert_eq!(
            d.alloc_fast(0, 1, 16, false),
            Some(1),
            "one frame still fits"
        );
    }
}
