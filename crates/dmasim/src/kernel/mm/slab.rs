//! kmalloc (`mm/slab_common.c`, SLUB): power-of-two size classes plus 96 and 192,
//! objects carved from slab pages; larger requests go to the page allocator.
//!
//! Objects are aligned to the kmalloc minimum alignment the kernel chose at boot
//! ([`crate::kernel::kmalloc_minalign`]): on arm64 with a swiotlb pool that is 8
//! bytes, because dma-direct bounces the small unaligned buffers a non-coherent
//! device writes (`dma_kmalloc_needs_bounce`); otherwise `ARCH_DMA_MINALIGN`, so a
//! kmalloc'd DMA buffer never shares a cache line with another object. Freed objects
//! are reused last-in first-out, like SLUB's per-CPU freelist.

use std::collections::BTreeMap;

use super::gfp::{GFP_DMA, GFP_DMA32, GFP_HIGHMEM, GFP_MOVABLE};
use super::page_alloc::{get_order, AllocFailure, Node};
use crate::config::{PAGE_SHIFT, PAGE_SIZE};
use crate::hw::rng::SimRng;

/// `KMALLOC_MAX_CACHE_SIZE` with SLUB: two pages; above it kmalloc uses whole pages.
pub const KMALLOC_MAX_CACHE_SIZE: u64 = 2 * PAGE_SIZE;

const CLASSES: &[u64] = &[
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
];

/// How an object was allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlabObj {
    /// From a size class (`kmalloc-<size>`, or `dma-kmalloc-<size>` when `true`).
    Cache(u64, bool),
    /// Whole pages of this order (`kmalloc_large`).
    Large(u32),
}

/// The kmalloc caches.
pub struct Slab {
    min_align: u64,
    /// Free objects per (size class, from ZONE_DMA).
    free: BTreeMap<(u64, bool), Vec<u64>>,
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

    /// Allocates `size` bytes with `gfp`; the physical address of the object.
    /// `GFP_DMA` objects come from their own caches backed by ZONE_DMA
    /// (`kmalloc_caches[KMALLOC_DMA]`); slab pages are unmovable, so `__GFP_HIGHMEM`,
    /// `__GFP_MOVABLE` and `__GFP_DMA32` are dropped (the kernel warns about the last).
    ///
    /// # Errors
    /// The page allocator's [`AllocFailure`].
    pub fn kmalloc(
        &mut self,
        pages: &mut Node,
        size: u64,
        gfp: u64,
        rng: &mut SimRng,
    ) -> Result<(u64, SlabObj), AllocFailure> {
        let gfp = gfp & !(GFP_HIGHMEM | GFP_MOVABLE | GFP_DMA32);
        let dma = gfp & GFP_DMA != 0;
        let Some(class) = self.class_for(size) else {
            let order = get_order(size);
            let pfn = pages.alloc_pages(order, gfp, rng)?;
            return Ok((pfn << PAGE_SHIFT, SlabObj::Large(order)));
        };
        let list = self.free.entry((class, dma)).or_default();
        if list.is_empty() {
            let order = get_order(class);
            let pfn = pages.alloc_pages(order, gfp, rng)?;
            let base = pfn << PAGE_SHIFT;
            let bytes = PAGE_SIZE << order;
            let n = bytes / class;
            // Pushed in reverse so the first object handed out is the lowest address.
            list.extend((0..n).rev().map(|i| base + i * class));
        }
        let pa = list.pop().expect("refilled above");
        Ok((pa, SlabObj::Cache(class, dma)))
    }

    /// Frees an object that [`Slab::kmalloc`] returned.
    pub fn kfree(&mut self, pages: &mut Node, pa: u64, obj: SlabObj) {
        match obj {
            SlabObj::Cache(class, dma) => self.free.entry((class, dma)).or_default().push(pa),
            SlabObj::Large(order) => pages.free_pages(pa >> PAGE_SHIFT, order),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::mm::gfp::GFP_KERNEL;
    use crate::kernel::mm::page_alloc::ZoneLayout;

    fn node() -> Node {
        let l = ZoneLayout {
            configured: [true, true, true, false],
            ends: [16 << 20, 1 << 32, 64 << 20, 64 << 20],
        };
        Node::new(0, 64 << 20, &l, &[])
    }

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
    fn objects_do_not_overlap_are_reused_and_dma_ones_come_from_zone_dma() {
        let mut p = node();
        let mut r = SimRng::new(1);
        let mut s = Slab::new(128);
        let (a, oa) = s.kmalloc(&mut p, 100, GFP_KERNEL, &mut r).unwrap();
        let (b, _) = s.kmalloc(&mut p, 100, GFP_KERNEL, &mut r).unwrap();
        assert_eq!(b - a, 128);
        assert_eq!(a % 128, 0);
        s.kfree(&mut p, a, oa);
        assert_eq!(s.kmalloc(&mut p, 120, GFP_KERNEL, &mut r).unwrap().0, a);
        let (big, ob) = s.kmalloc(&mut p, 20000, GFP_KERNEL, &mut r).unwrap();
        assert_eq!(ob, SlabObj::Large(3));
        assert_eq!(big % (8 * 4096), 0);
        let (d, od) = s.kmalloc(&mut p, 64, GFP_KERNEL | GFP_DMA, &mut r).unwrap();
        assert_eq!(od, SlabObj::Cache(128, true));
        assert!(d < 16 << 20);
    }
}
