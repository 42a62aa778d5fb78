//! The page allocator (`mm/page_alloc.c`), behind the [`PageAllocator`] interface.
//!
//! Today a simple first-fit allocator over free ranges, naturally aligned to the
//! order like the buddy allocator's blocks, deterministic and without zones or
//! migratetypes. The real buddy allocator with zones, migratetypes and shuffled
//! placement replaces it behind the same trait.

use std::collections::BTreeMap;

use crate::config::{MAX_PAGE_ORDER, PAGE_SHIFT};

/// What the kernel needs from a page allocator.
pub trait PageAllocator {
    /// `alloc_pages(order)`: 2^order contiguous pages aligned to their size; the
    /// first page frame number, or `None` (Linux's NULL) when none is free or the
    /// order is above `MAX_PAGE_ORDER`.
    fn alloc_pages(&mut self, order: u32) -> Option<u64>;
    /// `__free_pages(pfn, order)`.
    fn free_pages(&mut self, pfn: u64, order: u32);
    /// Free pages left.
    fn free_count(&self) -> u64;
}

/// First-fit allocator over a set of free page ranges.
pub struct FirstFit {
    free: BTreeMap<u64, u64>,
    free_count: u64,
}

impl FirstFit {
    /// Pages `[first_pfn, first_pfn + count)` start free.
    pub fn new(first_pfn: u64, count: u64) -> FirstFit {
        let mut free = BTreeMap::new();
        if count > 0 {
            free.insert(first_pfn, count);
        }
        FirstFit {
            free,
            free_count: count,
        }
    }
}

impl PageAllocator for FirstFit {
    fn alloc_pages(&mut self, order: u32) -> Option<u64> {
        if order > MAX_PAGE_ORDER {
            return None;
        }
        let n = 1u64 << order;
        let (start, len, at) = self.free.iter().find_map(|(&s, &l)| {
            let at = s.next_multiple_of(n);
            (at + n <= s + l).then_some((s, l, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        if at + n < start + len {
            self.free.insert(at + n, start + len - at - n);
        }
        self.free_count -= n;
        Some(at)
    }

    fn free_pages(&mut self, pfn: u64, order: u32) {
        let mut s = pfn;
        let mut l = 1u64 << order;
        if let Some((&ps, &pl)) = self.free.range(..s).next_back() {
            if ps + pl == s {
                self.free.remove(&ps);
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(s + l)) {
            self.free.remove(&(s + l));
            l += nl;
        }
        self.free.insert(s, l);
        self.free_count += 1 << order;
    }

    fn free_count(&self) -> u64 {
        self.free_count
    }
}

/// `get_order(size)`: the smallest order whose block holds `size` bytes.
pub fn get_order(size: u64) -> u32 {
    let pages = size.div_ceil(1 << PAGE_SHIFT).max(1);
    64 - (pages - 1).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders() {
        assert_eq!(get_order(1), 0);
        assert_eq!(get_order(4096), 0);
        assert_eq!(get_order(4097), 1);
        assert_eq!(get_order(1 << 20), 8);
    }

    #[test]
    fn blocks_are_aligned_and_merge_back() {
        let mut a = FirstFit::new(1, 1000);
        let x = a.alloc_pages(3).unwrap();
        assert_eq!(x % 8, 0);
        let y = a.alloc_pages(0).unwrap();
        assert_eq!(a.free_count(), 1000 - 9);
        a.free_pages(x, 3);
        a.free_pages(y, 0);
        assert_eq!(a.free_count(), 1000);
        assert_eq!(a.free.len(), 1, "free ranges merged");
        assert!(a.alloc_pages(MAX_PAGE_ORDER + 1).is_none());
    }

    #[test]
    fn exhaustion_gives_none() {
        let mut a = FirstFit::new(0, 4);
        assert!(a.alloc_pages(2).is_some());
        assert!(a.alloc_pages(0).is_none());
    }
}
