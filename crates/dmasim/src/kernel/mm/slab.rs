//! kmalloc (`mm/slab_common.c`, SLUB): power-of-two size classes plus 96 and 192,
//! objects carved from slab pages; larger requests go to the page allocator.
//!
//! Objects are aligned to the architecture's kmalloc minimum alignment; on arm64 that
//! is `ARCH_DMA_MINALIGN` (128) here, as Linux does when it has no bounce buffers for
//! small unaligned kmalloc buffers (`dma_kmalloc_needs_bounce`), so a kmalloc'd DMA
//! buffer never shares a cache line with another object. Freed objects are reused
//! last-in first-out, like SLUB's per-CPU freelist.

use std::collections::BTreeMap;

use super::page_alloc::{get_order, PageAllocator};
use crate::config::{PAGE_SHIFT, PAGE_SIZE};

/// `KMALLOC_MAX_CACHE_SIZE` with SLUB: two pages; above it kmalloc uses whole pages.
pub const KMALLOC_MAX_CACHE_SIZE: u64 = 2 * PAGE_SIZE;

const CLASSES: &[u64] = &[
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
];

/// How an object was allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlabObj {
    /// From a size class (`kmalloc-<size>`).
    Cache(u64),
    /// Whole pages of this order (`kmalloc_large`).
    Large(u32),
}

/// The kmalloc caches.
pub struct Slab {
    min_align: u64,
    free: BTreeMap<u64, Vec<u64>>,
}

impl Slab {
    /// Caches whose objects are at least `min_align` aligned.
    pub fn new(min_align: u64) -> Slab {
        Slab {
            min_align: min_align.max(8),
            free: BTreeMap::new(),
        }
    }

    /// The size class for `size`, or `None` when it goes to the page allocator.
    pub fn class_for(&self, size: u64) -> Option<u64> {
        CLASSES
            .iter()
            .copied()
            .filter(|&c| c >= self.min_align && c % self.min_align == 0 || c >= 256)
            .find(|&c| c >= size.max(1))
            .filter(|&c| c <= KMALLOC_MAX_CACHE_SIZE)
    }

    /// Allocates `size` bytes; the physical address of the object, or `None`.
    pub fn kmalloc(&mut self, pages: &mut dyn PageAllocator, size: u64) -> Option<(u64, SlabObj)> {
        let Some(class) = self.class_for(size) else {
            let order = get_order(size);
            let pfn = pages.alloc_pages(order)?;
            return Some((pfn << PAGE_SHIFT, SlabObj::Large(order)));
        };
        let list = self.free.entry(class).or_default();
        if list.is_empty() {
            let order = get_order(class);
            let pfn = pages.alloc_pages(order)?;
            let base = pfn << PAGE_SHIFT;
            let bytes = PAGE_SIZE << order;
            let n = bytes / class;
            // Pushed in reverse so the first object handed out is the lowest address.
            list.extend((0..n).rev().map(|i| base + i * class));
        }
        list.pop().map(|pa| (pa, SlabObj::Cache(class)))
    }

    /// Frees an object that [`Slab::kmalloc`] returned.
    pub fn kfree(&mut self, pages: &mut dyn PageAllocator, pa: u64, obj: SlabObj) {
        match obj {
            SlabObj::Cache(class) => self.free.entry(class).or_default().push(pa),
            SlabObj::Large(order) => pages.free_pages(pa >> PAGE_SHIFT, order),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::mm::page_alloc::FirstFit;

    #[test]
    fn arm64_classes_start_at_dma_minalign() {
        let s = Slab::new(128);
        assert_eq!(s.class_for(1), Some(128));
        assert_eq!(s.class_for(100), Some(128));
        assert_eq!(s.class_for(129), Some(256));
        assert_eq!(s.class_for(1500), Some(2048));
        assert_eq!(s.class_for(8193), None);
        let x = Slab::new(8);
        assert_eq!(x.class_for(90), Some(96));
    }

    #[test]
    fn objects_do_not_overlap_and_are_reused() {
        let mut p = FirstFit::new(16, 64);
        let mut s = Slab::new(128);
        let (a, oa) = s.kmalloc(&mut p, 100).unwrap();
        let (b, _) = s.kmalloc(&mut p, 100).unwrap();
        assert_eq!(b - a, 128);
        assert_eq!(a % 128, 0);
        s.kfree(&mut p, a, oa);
        assert_eq!(s.kmalloc(&mut p, 120).unwrap().0, a);
        let (big, ob) = s.kmalloc(&mut p, 20000).unwrap();
        assert_eq!(ob, SlabObj::Large(3));
        assert_eq!(big % (8 * 4096), 0);
    }
}
