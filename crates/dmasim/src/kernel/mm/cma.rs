//! CMA (`mm/cma.c`, `kernel/dma/contiguous.c`, `alloc_contig_range` in
//! `mm/page_alloc.c`): a pool reserved at boot whose pageblocks serve movable
//! allocations while free, and which `cma_alloc` takes back by migrating them out.
//!
//! `cma_alloc(count, align)` searches the bitmap for a free run aligned to
//! `align` pages, reserves it, then claims every page of it: a free page is taken, a
//! movable user page is migrated elsewhere, anything else — a pinned page, a page
//! with an extra reference — makes the range busy (`-EBUSY`), the run is given back
//! and the search goes on after it. Simplifications: migration targets come from
//! non-CMA memory via `GFP_HIGHUSER` (Linux isolates the range and may use other CMA
//! pageblocks); one global area; no per-device areas.

use crate::config::PAGE_SHIFT;
use crate::system::System;

/// `CONFIG_CMA_ALIGNMENT` (kernel/dma/Kconfig, default 8): the largest alignment, as
/// a page order, the DMA layer asks of CMA.
pub const CMA_ALIGNMENT: u32 = 8;

/// Why `cma_alloc` failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CmaFailure {
    /// Pinned or referenced user pages that could not be migrated.
    pub pinned: u64,
    /// Ranges tried.
    pub tries: u64,
}

impl System {
    /// `cma_alloc(cma, count, align)`: the first pfn of `count` contiguous pages, or
    /// why none could be had.
    ///
    /// # Errors
    /// [`CmaFailure`] with what blocked the candidates.
    pub fn cma_alloc(&mut self, count: u64, align_order: u32) -> Result<u64, CmaFailure> {
        let mut fail = CmaFailure::default();
        let Some(area) = self.kernel.pages.cma.clone() else {
            return Err(fail);
        };
        if count == 0 || count > area.count {
            return Err(fail);
        }
        let mask = (1u64 << align_order) - 1;
        let mut start = 0u64;
        loop {
            // bitmap_find_next_zero_area_off, aligned on absolute pfns.
            let mut bit = start;
            let found = loop {
                let pfn = (area.base_pfn + bit + mask) & !mask;
                bit = pfn - area.base_pfn;
                if bit + count > area.count {
                    break None;
                }
                let bm = &self.kernel.pages.cma.as_ref().expect("area").bitmap;
                match (bit..bit + count).find(|&b| bm[b as usize]) {
                    Some(busy) => bit = busy + 1,
                    None => break Some(bit),
                }
            };
            let Some(bit) = found else { return Err(fail) };
            fail.tries += 1;
            self.set_cma_bits(bit, count, true);
            match self.alloc_contig_range(area.base_pfn + bit, count) {
                Ok(()) => {
                    let used = self.kernel.pages.cma.as_ref().map_or(0, |c| c.used());
                    self.kernel.cma_used_max = self.kernel.cma_used_max.max(used);
                    return Ok(area.base_pfn + bit);
                }
                Err(pinned) => {
                    fail.pinned += pinned;
                    self.set_cma_bits(bit, count, false);
                    start = bit + mask + 1;
                }
            }
        }
    }

    fn set_cma_bits(&mut self, bit: u64, count: u64, on: bool) {
        if let Some(c) = self.kernel.pages.cma.as_mut() {
            for b in bit..bit + count {
                c.bitmap[b as usize] = on;
            }
        }
    }

    /// `alloc_contig_range`: claims `[pfn, pfn+count)`, migrating movable user pages
    /// out. On `-EBUSY` everything claimed is given back; the error counts the pages
    /// that could not move.
    fn alloc_contig_range(&mut self, pfn: u64, count: u64) -> Result<(), u64> {
        let mut taken = Vec::with_capacity(count as usize);
        let mut blocked = 0;
        for p in pfn..pfn + count {
            let movable = self.kernel.user_pages.get(p).map(|pg| pg.movable());
            if movable == Some(true) && self.migrate_page_to(p, false) {
                self.kernel.cma_migrated += 1;
            }
            if self.kernel.pages.take_free_page(p) {
                taken.push(p);
            } else {
                blocked += u64::from(self.kernel.user_pages.get(p).is_some());
                for &t in &taken {
                    self.kernel.pages.free_page_buddy(t);
                }
                return Err(blocked.max(1));
            }
        }
        Ok(())
    }

    /// `cma_release`: gives `count` pages from `pfn` back to the area.
    pub fn cma_release(&mut self, pfn: u64, count: u64) {
        let Some(base) = self.kernel.pages.cma.as_ref().map(|c| c.base_pfn) else {
            return;
        };
        self.set_cma_bits(pfn - base, count, false);
        for p in pfn..pfn + count {
            self.kernel.pages.free_page_buddy(p);
        }
    }

    /// Moves a user page out of CMA before a long-term pin (`FOLL_LONGTERM`,
    /// `check_and_migrate_movable_folios`). Returns false when it could not move.
    pub(crate) fn migrate_out_of_cma(&mut self, pfn: u64) -> bool {
        !self.kernel.pages.in_cma(pfn) || self.migrate_page_to(pfn, false)
    }

    /// Logs a failed `cma_alloc` as Linux does and reports `cma-exhausted`.
    pub(crate) fn cma_failed(&mut self, who: &str, count: u64, f: CmaFailure) {
        self.kernel.cma_failures += 1;
        let (total, used) = self
            .kernel
            .pages
            .cma
            .as_ref()
            .map_or((0, 0), |c| (c.count, c.used()));
        let ret = if f.pinned > 0 { "-EBUSY" } else { "-ENOMEM" };
        self.printk(
            "cma",
            format!("cma_alloc: reserved: alloc failed, req-size: {count} pages, ret: {ret}"),
        );
        let hb = |p: u64| crate::units::human_size(p << PAGE_SHIFT);
        let ctx = self.ctx();
        let blocked = if f.pinned > 0 {
            format!(
                "; {} pinned or referenced user page(s) could not be migrated out",
                f.pinned
            )
        } else {
            String::new()
        };
        self.check.report_plain(
            "cma-exhausted",
            None,
            Some(who),
            None,
            Some(count << PAGE_SHIFT),
            ctx,
            format!("{who}: CMA could not provide {} contiguous: the pool is {}, {} of it allocated{blocked}", hb(count), hb(total), hb(used)),
            "size CMA for the buffers in flight at once (cma= on the command line, or a reserved-memory node), allocate them once at probe time, and keep long-lived pins out of CMA (FOLL_LONGTERM)".into(),
            vec![],
        );
    }
}
