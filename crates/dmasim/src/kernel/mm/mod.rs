//! Memory management: GFP flags, the zoned buddy page allocator, kmalloc and vmalloc,
//! and their entry points.

pub mod cma;
pub mod dmapool;
pub mod gfp;
pub mod page;
pub mod page_alloc;
pub mod slab;

use crate::check::HistoryEvent;
use crate::config::{MAX_PAGE_ORDER, PAGE_SHIFT, PAGE_SIZE};
use crate::hw::mmu::MemType;
use crate::kernel::{Backing, BufKind, Buffer};
use crate::system::{Result, System};
use page_alloc::{get_order, AllocFailure};
use slab::SlabObj;

/// The largest request kmalloc can serve: one `MAX_PAGE_ORDER` block.
pub const KMALLOC_MAX_SIZE: u64 = PAGE_SIZE << MAX_PAGE_ORDER;
/// The largest vmalloc this model accepts (the vmalloc area itself is far larger).
pub const VMALLOC_MAX_SIZE: u64 = 1 << 30;

impl System {
    fn alloc_event(&self, text: String) -> HistoryEvent {
        HistoryEvent {
            time_ns: self.ctx().time_ns,
            line: self.line,
            event: text.into(),
        }
    }

    /// `kmalloc(size, gfp)`: physically contiguous, cacheable memory in the linear map.
    /// Returns the buffer id, or `None` (NULL) — for size 0 too, where Linux returns
    /// `ZERO_SIZE_PTR`, which must not be dereferenced either.
    ///
    /// # Errors
    /// The memory cap only.
    pub fn kmalloc(&mut self, size: u64, gfp: u64) -> Result<Option<u64>> {
        self.step();
        if size == 0 {
            self.printk(
                "",
                "kmalloc(0) returns ZERO_SIZE_PTR: nothing may be stored there".into(),
            );
            return Ok(None);
        }
        let got = if size > KMALLOC_MAX_SIZE {
            Err(None)
        } else {
            let crate::kernel::Kernel { slab, pages, .. } = &mut self.kernel;
            slab.kmalloc(pages, size, gfp, &mut self.hw.rng)
                .map_err(Some)
        };
        let (pa, obj) = match got {
            Ok(x) => x,
            Err(f) => {
                self.alloc_failed("", "kmalloc", size, get_order(size), f.as_ref());
                return Ok(None);
            }
        };
        let va = self.kernel.phys_to_virt(pa);
        let class = match obj {
            SlabObj::Cache(c, false) => format!("kmalloc-{c}"),
            SlabObj::Cache(c, true) => format!("dma-kmalloc-{c}"),
            SlabObj::Large(o) => format!("order-{o} pages"),
        };
        let alloc = self.alloc_event(format!(
            "kmalloc({size}) = {va:#x} [phys={pa:#x}] [{class}]"
        ));
        Ok(Some(self.kernel.add_buffer(Buffer::cpu(
            BufKind::Kmalloc,
            va,
            size,
            pa,
            alloc,
            Backing::Slab(obj),
        ))))
    }

    /// `alloc_pages(gfp, order)` with the pages' linear address as the buffer.
    /// Returns the buffer id, or `None` (NULL).
    ///
    /// # Errors
    /// The memory cap only.
    pub fn alloc_pages(&mut self, order: u32, gfp: u64) -> Result<Option<u64>> {
        self.step();
        let pfn = match self.kernel.pages.alloc_pages(order, gfp, &mut self.hw.rng) {
            Ok(pfn) => pfn,
            Err(f) => {
                let size = if order < 40 {
                    PAGE_SIZE << order
                } else {
                    u64::MAX
                };
                self.alloc_failed("", "alloc_pages", size, order, Some(&f));
                return Ok(None);
            }
        };
        let pa = pfn << PAGE_SHIFT;
        let va = self.kernel.phys_to_virt(pa);
        let len = PAGE_SIZE << order;
        let zone = self.kernel.pages.zone_of(pfn).map_or("?", |z| z.name());
        let alloc = self.alloc_event(format!(
            "alloc_pages(order {order}) = {va:#x} [phys={pa:#x}] [zone {zone}]"
        ));
        Ok(Some(self.kernel.add_buffer(Buffer::cpu(
            BufKind::Pages,
            va,
            len,
            pa,
            alloc,
            Backing::Pages(order),
        ))))
    }

    /// `vmalloc(size)`: virtually contiguous memory in the vmalloc area, built from
    /// single pages wherever the allocator finds them — physically scattered. Returns
    /// the buffer id, or `None` (NULL).
    ///
    /// # Errors
    /// The memory cap only.
    pub fn vmalloc(&mut self, size: u64) -> Result<Option<u64>> {
        self.step();
        if size == 0 || size > VMALLOC_MAX_SIZE {
            self.alloc_failed(
                "",
                "vmalloc",
                size,
                get_order(size.min(VMALLOC_MAX_SIZE * 2)),
                None,
            );
            return Ok(None);
        }
        let n = size.div_ceil(PAGE_SIZE);
        let mut pfns = Vec::with_capacity(n as usize);
        for _ in 0..n {
            match self.kernel.pages.alloc_pages(
                0,
                gfp::GFP_KERNEL | gfp::GFP_HIGHMEM,
                &mut self.hw.rng,
            ) {
                Ok(pfn) => pfns.push(pfn),
                Err(f) => {
                    for &p in &pfns {
                        self.kernel.pages.free_pages(p, 0);
                    }
                    self.alloc_failed("", "vmalloc", size, 0, Some(&f));
                    return Ok(None);
                }
            }
        }
        let va = self.kernel.vmalloc_range(size);
        for (i, &pfn) in pfns.iter().enumerate() {
            self.hw.mmu.map_page(
                0,
                va + i as u64 * PAGE_SIZE,
                pfn << PAGE_SHIFT,
                MemType::Normal,
            );
        }
        let pa = pfns[0] << PAGE_SHIFT;
        let runs = 1 + pfns.windows(2).filter(|w| w[1] != w[0] + 1).count();
        let alloc = self.alloc_event(format!(
            "vmalloc({size}) = {va:#x} [{n} pages in {runs} physically contiguous runs]"
        ));
        Ok(Some(self.kernel.add_buffer(Buffer::cpu(
            BufKind::Vmalloc,
            va,
            size,
            pa,
            alloc,
            Backing::Vmalloc(pfns),
        ))))
    }

    /// `kfree()` / `free_pages()` / `vfree()`: gives a buffer back. Freeing a buffer
    /// that is not live (twice, or of the wrong kind) is a `double-free` error and is
    /// otherwise ignored: Linux stops there (SLUB's freelist check in
    /// mm/slub.c:set_freepointer BUGs on a naive double free; free_pages of a free
    /// page is "BUG: Bad page state"; vfree of an unknown area WARNs in
    /// mm/vmalloc.c:vfree).
    pub fn kfree(&mut self, id: u64, call: &str, kind: BufKind) {
        self.step();
        let live = self.kernel.buffers.get(&id).map(|b| b.kind);
        match live {
            Some(k) if k == kind => {
                let b = self.kernel.buffers[&id].clone();
                self.release_buffer(&b);
            }
            _ => {
                let what = match live {
                    Some(k) => format!("a live {} buffer, not a {} one", k.name(), kind.name()),
                    None => format!("not a live {} buffer (freed twice?)", kind.name()),
                };
                self.printk("", format!("BUG: {call}: buffer #{id} is {what}"));
                let ctx = self.ctx();
                self.check.report_plain(
                    "double-free",
                    None,
                    None,
                    None,
                    None,
                    ctx,
                    format!("{call} of buffer #{id}, which is {what}: Linux stops here (a slab BUG or a bad page state), and a kernel that went on would hand the memory out twice"),
                    format!("free each buffer once, with the call that matches its allocation ({call} for {} buffers); clear the driver's pointer when it is freed", kind.name()),
                    vec![],
                );
            }
        }
    }

    /// Logs a failed allocation as Linux's `warn_alloc` would and reports it: as
    /// `zone-exhausted` when the zones this request may use are out of memory while
    /// others still have some, else as `enomem`.
    pub(crate) fn alloc_failed(
        &mut self,
        who: &str,
        call: &str,
        size: u64,
        order: u32,
        why: Option<&AllocFailure>,
    ) {
        let reason = if order > MAX_PAGE_ORDER {
            format!("order {order} > MAX_PAGE_ORDER {MAX_PAGE_ORDER}")
        } else if size == 0 {
            "size 0".to_string()
        } else {
            format!("no free block of order {order} above the watermarks")
        };
        let zones = why.map(|f| {
            f.zones
                .iter()
                .map(|&(z, free, managed, usable)| {
                    format!(
                        "{}{}: {} of {} free",
                        z.name(),
                        if usable { "" } else { " (not usable)" },
                        crate::units::human_size(free * PAGE_SIZE),
                        crate::units::human_size(managed * PAGE_SIZE)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
        self.printk(
            who,
            format!(
                "{call}: page allocation failure: {size} bytes, {reason}{}",
                zones
                    .as_ref()
                    .map(|z| format!(" [{z}]"))
                    .unwrap_or_default()
            ),
        );
        let ctx = self.ctx();
        let elsewhere = why.map_or(0, AllocFailure::free_elsewhere);
        if let (Some(f), true) = (why, elsewhere > 0 && order <= MAX_PAGE_ORDER) {
            self.check.report_plain(
                "zone-exhausted",
                None,
                None,
                None,
                Some(size),
                ctx,
                format!(
                    "{call}({size}) failed: {} and the zones below it are exhausted while {} is free in zones this request may not use [{}]",
                    f.classzone.name(),
                    crate::units::human_size(elsewhere * PAGE_SIZE),
                    zones.unwrap_or_default()
                ),
                "allocate without GFP_DMA/GFP_DMA32 when the device's mask allows it (dma_set_mask), or use dma_alloc_coherent, which picks the zone from the mask".into(),
                vec![],
            );
            return;
        }
        self.check.report_plain(
            "enomem",
            None,
            None,
            None,
            Some(size),
            ctx,
            format!("{call}({size}) failed: {reason}{}", zones.map(|z| format!(" [{z}]")).unwrap_or_default()),
            "check the result for NULL; large buffers need CMA (dma_alloc_coherent) or scatter-gather".into(),
            vec![],
        );
    }
}
