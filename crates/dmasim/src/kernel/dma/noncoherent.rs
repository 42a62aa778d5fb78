//! `dma_alloc_noncoherent()` / `dma_free_noncoherent()` (v6.12 `kernel/dma/mapping.c`
//! `dma_alloc_pages`): memory for DMA that the CPU reaches through its caches and
//! that the driver hands over with `dma_sync_single_for_device` and takes back with
//! `dma_sync_single_for_cpu`, "just like for streaming DMA mappings that are reused"
//! (Documentation/core-api/dma-api.rst). Videobuf2's non-coherent buffers and
//! several sound and NVMe drivers use it to avoid uncached coherent memory.
//!
//! Without an IOMMU, `dma_direct_alloc_pages()`: pages the coherent mask reaches
//! (CMA first for more than a page), zeroed with `memset` through the cacheable
//! linear map — no cache maintenance, so the zeros sit dirty in the CPU's caches —
//! and the bus address of the first page. Behind an IOMMU,
//! `dma_common_alloc_pages()`: CMA or any page, mapped with
//! `DMA_ATTR_SKIP_CPU_SYNC`, zeroed the same way. Freeing does no maintenance
//! either. The sanitizer treats the allocation as a streaming mapping that starts
//! out CPU-owned, as dma-debug treats it as a mapping of type "noncoherent".
//! Simplification: no atomic pool for unencrypted memory (confidential guests).

use crate::check::{BufferRef, HistoryEvent, MapKind, NewMapping};
use crate::config::PAGE_SIZE;
use crate::kernel::dma::{DmaDirection, DMA_MAPPING_ERROR};
use crate::kernel::mm::gfp::GFP_KERNEL;
use crate::kernel::mm::page_alloc::get_order;
use crate::kernel::{Backing, BufKind, Buffer};
use crate::system::{Result, System};

use super::direct::page_align;

impl System {
    /// `dma_alloc_noncoherent(dev, size, &handle, dir, GFP_KERNEL)`: cacheable,
    /// physically contiguous, zeroed memory and its DMA address. Returns the buffer
    /// id, or `None` (NULL).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device or `DMA_NONE`; the memory cap.
    pub fn dma_alloc_noncoherent(
        &mut self,
        dev: usize,
        size: u64,
        dir: DmaDirection,
    ) -> Result<Option<u64>> {
        const CALL: &str = "dma_alloc_noncoherent";
        let name = self.dma_alloc_prologue(dev, CALL, Some(dir))?;
        let order = get_order(size);
        let bytes = page_align(size);
        if size == 0 {
            self.alloc_failed(&name, CALL, size, order, None);
            return Ok(None);
        }
        let iommu = self.use_dma_iommu(dev);
        let Some((pfn, backing)) =
            self.dma_alloc_cacheable_pages(dev, &name, bytes, CALL, iommu)?
        else {
            return Ok(None);
        };
        let pa = pfn * PAGE_SIZE;
        let addr = if iommu {
            self.skipping_cpu_sync(true, |sys| sys.iommu_dma_map_phys(dev, pa, bytes, dir))
                .0
        } else {
            self.kernel.devices[dev].phys_to_dma(pa)
        };
        let va = self.kernel.phys_to_virt(pa);
        let alloc = HistoryEvent {
            time_ns: self.ctx().time_ns,
            line: self.line,
            event: format!("{CALL}({size}) = {va:#x} [phys={pa:#x}] [dma={addr:#x}]").into(),
        };
        let b = Buffer::for_device(
            BufKind::Noncoherent,
            dev,
            va,
            size,
            pa,
            addr,
            alloc,
            backing,
        );
        if addr == DMA_MAPPING_ERROR {
            self.kernel.add_buffer(b.clone());
            self.release_buffer(&b);
            return Ok(None);
        }
        // memset(page_address(page), 0, size): cacheable stores, no maintenance.
        self.zero_new_allocation(va, bytes)?;
        let alloc = b.alloc.clone();
        let id = self.kernel.add_buffer(b);
        self.sanitizer_map(
            NewMapping::new(dev, name, addr, size, pa, dir, MapKind::Noncoherent)
                .buffer(Some(BufferRef {
                    id,
                    pa,
                    len: size,
                    alloc,
                }))
                .what(std::borrow::Cow::Owned(format!(
                    "{CALL} {}",
                    dir.const_name()
                ))),
        );
        Ok(Some(id))
    }

    /// Physically contiguous, cacheable pages for `bytes`: CMA first
    /// (`dma_alloc_contiguous`), then the buddy allocator — any zone when an IOMMU
    /// translates (`alloc_pages_node(GFP_KERNEL)`), else the zone the coherent mask
    /// reaches (`dma_direct_alloc_pages`). Not zeroed. `None` (reported) when
    /// nothing is free.
    pub(crate) fn dma_alloc_cacheable_pages(
        &mut self,
        dev: usize,
        name: &str,
        bytes: u64,
        call: &str,
        any_zone: bool,
    ) -> Result<Option<(u64, Backing)>> {
        let order = get_order(bytes);
        if let Some(pfn) = self.dma_alloc_contiguous(dev, name, bytes) {
            let count = bytes / PAGE_SIZE;
            return Ok(Some((
                pfn,
                Backing::Cma {
                    count,
                    remapped: false,
                },
            )));
        }
        if any_zone {
            return match self
                .kernel
                .pages
                .alloc_pages(order, GFP_KERNEL, &mut self.hw.rng)
            {
                Ok(pfn) => Ok(Some((pfn, Backing::Pages(order)))),
                Err(f) => {
                    self.alloc_failed(name, call, bytes, order, Some(&f));
                    Ok(None)
                }
            };
        }
        Ok(self
            .dma_direct_alloc_pages(dev, name, bytes, order, call)?
            .map(|pfn| (pfn, Backing::Pages(order))))
    }

    /// `dma_free_noncoherent(dev, size, cpu_addr, handle, dir)`: no cache
    /// maintenance; dma-debug checks the size, direction and kind as for an unmap.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device or `DMA_NONE`.
    pub fn dma_free_noncoherent(
        &mut self,
        dev: usize,
        size: u64,
        buffer: u64,
        dir: DmaDirection,
    ) -> Result<()> {
        const CALL: &str = "dma_free_noncoherent";
        let name = self.dma_free_prologue(dev, CALL, dir)?;
        let live = self
            .kernel
            .buffers
            .get(&buffer)
            .filter(|b| b.kind == BufKind::Noncoherent && b.dev == Some(dev))
            .cloned();
        // Not a live allocation of this device: dma-debug's "free DMA memory it has
        // not allocated" (at whatever handle the buffer has), and nothing is freed.
        let addr = match &live {
            Some(b) => b.dma.unwrap_or(DMA_MAPPING_ERROR),
            None => self
                .kernel
                .buffers
                .get(&buffer)
                .and_then(|b| b.dma)
                .unwrap_or(0),
        };
        if let Some(b) = &live {
            if self.use_dma_iommu(dev) {
                let len = page_align(b.len);
                self.skipping_cpu_sync(true, |sys| sys.iommu_dma_unmap_phys(dev, addr, len, dir));
            }
        }
        let ctx = self.ctx();
        self.check.unmap(
            &mut self.hw,
            ctx,
            dev,
            &name,
            addr,
            size,
            dir,
            MapKind::Noncoherent,
            true,
        );
        if let Some(b) = live {
            self.release_buffer(&b);
        }
        Ok(())
    }
}
