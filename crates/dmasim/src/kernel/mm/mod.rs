//! Memory management: the page allocator and kmalloc, and their entry points.

pub mod page_alloc;
pub mod slab;

use crate::check::HistoryEvent;
use crate::config::{MAX_PAGE_ORDER, PAGE_SHIFT, PAGE_SIZE};
use crate::kernel::{Backing, BufKind, Buffer};
use crate::system::{Result, System};
use page_alloc::get_order;
use slab::SlabObj;

/// The largest request kmalloc can serve: one `MAX_PAGE_ORDER` block.
pub const KMALLOC_MAX_SIZE: u64 = PAGE_SIZE << MAX_PAGE_ORDER;

impl System {
    /// `kmalloc(size, gfp)`: physically contiguous, cacheable memory in the linear map.
    /// Returns the buffer id, or `None` (NULL) — for size 0 too, where Linux returns
    /// `ZERO_SIZE_PTR`, which must not be dereferenced either.
    ///
    /// # Errors
    /// The memory cap only.
    pub fn kmalloc(&mut self, size: u64) -> Result<Option<u64>> {
        self.step();
        if size == 0 {
            self.printk(
                "",
                "kmalloc(0) returns ZERO_SIZE_PTR: nothing may be stored there".into(),
            );
            return Ok(None);
        }
        let got = if size > KMALLOC_MAX_SIZE {
            None
        } else {
            let crate::kernel::Kernel { slab, pages, .. } = &mut self.kernel;
            slab.kmalloc(pages.as_mut(), size)
        };
        let Some((pa, obj)) = got else {
            self.alloc_failed("", "kmalloc", size, get_order(size));
            return Ok(None);
        };
        let va = self.kernel.phys_to_virt(pa);
        let class = match obj {
            SlabObj::Cache(c) => format!("kmalloc-{c}"),
            SlabObj::Large(o) => format!("order-{o} pages"),
        };
        let alloc = HistoryEvent {
            time_ns: self.ctx().time_ns,
            line: self.line,
            event: format!("kmalloc({size}) = {va:#x} [phys={pa:#x}] [{class}]"),
        };
        Ok(Some(self.kernel.add_buffer(Buffer {
            id: 0,
            kind: BufKind::Kmalloc,
            va,
            len: size,
            phys: pa,
            dma: None,
            dev: None,
            alloc,
            backing: Backing::Slab(obj),
        })))
    }

    /// `alloc_pages(order, gfp)` with the pages' linear address as the buffer.
    /// Returns the buffer id, or `None` (NULL).
    ///
    /// # Errors
    /// The memory cap only.
    pub fn alloc_pages(&mut self, order: u32) -> Result<Option<u64>> {
        self.step();
        let pfn = if order > MAX_PAGE_ORDER {
            None
        } else {
            self.kernel.pages.alloc_pages(order)
        };
        let Some(pfn) = pfn else {
            self.alloc_failed(
                "",
                "alloc_pages",
                PAGE_SIZE.checked_shl(order).unwrap_or(u64::MAX),
                order,
            );
            return Ok(None);
        };
        let pa = pfn << PAGE_SHIFT;
        let va = self.kernel.phys_to_virt(pa);
        let len = PAGE_SIZE << order;
        let alloc = HistoryEvent {
            time_ns: self.ctx().time_ns,
            line: self.line,
            event: format!("alloc_pages(order {order}) = {va:#x} [phys={pa:#x}]"),
        };
        Ok(Some(self.kernel.add_buffer(Buffer {
            id: 0,
            kind: BufKind::Pages,
            va,
            len,
            phys: pa,
            dma: None,
            dev: None,
            alloc,
            backing: Backing::Pages(order),
        })))
    }

    /// `kfree()` / `free_pages()`: gives a buffer back. Freeing a buffer that is not
    /// live (twice, or of the wrong kind) is logged as the kernel's WARN and ignored.
    pub fn kfree(&mut self, id: u64, call: &str, kind: BufKind) {
        self.step();
        match self
            .kernel
            .buffers
            .get(&id)
            .filter(|b| b.kind == kind)
            .cloned()
        {
            Some(b) => self.release_buffer(&b),
            None => self.printk(
                "",
                format!(
                    "WARNING: {call}: buffer #{id} is not a live {} buffer (double free?)",
                    kind.name()
                ),
            ),
        }
    }
}
