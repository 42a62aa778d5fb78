//! dma-direct (`kernel/dma/direct.c`, `direct.h`, Linux v6.12): DMA mappings without an
//! IOMMU, where the bus address is the physical address (minus a bus offset), plus the
//! arm64 cache operations for non-coherent devices (`arch/arm64/mm/dma-mapping.c`,
//! `arch/arm64/mm/cache.S`).
//!
//! When an address is out of the device's reach (`dma_capable`), when swiotlb is
//! forced, or when a small kmalloc buffer the device writes is not a whole number of
//! cache lines (`dma_kmalloc_needs_bounce`, arm64), the mapping goes through the
//! swiotlb pool ([`super::bounce`]).
//!
//! Differences from Linux: no atomic pools (every GFP may block); no P2PDMA pages.
//! Cache maintenance is issued by virtual address on the linear-map alias, as
//! `dcache_clean_poc(phys_to_virt(paddr))` does.

use crate::config::{Arch, PAGE_SIZE};
use crate::hw::Cmo;
use crate::kernel::device::Device;
use crate::kernel::dma::bounce::BounceWhy;
use crate::kernel::dma::{dma_bit_mask, DmaDirection, DMA_MAPPING_ERROR};
use crate::system::System;

/// `dma_capable()` (include/linux/dma-direct.h): the whole range is at or below
/// `min_not_zero(*dev->dma_mask, dev->bus_dma_limit)`.
pub fn dma_capable(dev: &Device, addr: u64, size: u64) -> bool {
    if addr == DMA_MAPPING_ERROR {
        return false;
    }
    let end = addr.checked_add(size.max(1) - 1);
    end.is_some_and(|e| e <= dev.dma_limit())
}

impl System {
    /// `dev_is_dma_coherent()`. On x86 the kernel has no non-coherent DMA support at
    /// all (no `ARCH_HAS_SYNC_DMA_*`), so every device counts as coherent there —
    /// whatever port the hardware really sits on.
    pub fn dev_is_dma_coherent(&self, dev: usize) -> bool {
        self.cfg.arch == Arch::X86_64 || self.kernel.devices[dev].coherent
    }

    /// `arch_sync_dma_for_device()`: arm64 cleans (`DC CVAC`) for every direction;
    /// 32-bit ARMv7 (`v7_dma_map_area`) invalidates for `DMA_FROM_DEVICE` and cleans
    /// otherwise, in L1 and in the outer cache alike.
    pub fn arch_sync_dma_for_device(&mut self, pa: u64, size: u64, dir: DmaDirection) {
        if !self.kernel_owns_range(pa, size) {
            return;
        }
        match self.cfg.arch {
            Arch::Arm64 => self.dc_by_va(Cmo::Clean, pa, size),
            Arch::Arm32 if dir == DmaDirection::FromDevice => self.dcache_inval(pa, size),
            Arch::Arm32 => self.dc_by_va(Cmo::Clean, pa, size),
            Arch::X86_64 => return,
        }
        self.hw.cmo_fixed();
    }

    /// `DC <op>` over the linear-map alias of `[pa, pa+size)`; highmem pages (no
    /// linear alias) are maintained by physical address, as `kmap_atomic` would let
    /// the kernel do.
    fn dc_by_va(&mut self, op: Cmo, pa: u64, size: u64) {
        if pa + size <= self.kernel.lowmem_end {
            let va = self.kernel.phys_to_virt(pa);
            let _ = self.hw.cmo_va(0, op, va, size);
        } else {
            self.hw.cmo_phys(op, pa, size);
        }
    }

    /// `dcache_inval_poc` / `v7_dma_inv_range`: invalidate, cleaning and invalidating
    /// a partial line at either end so that neighbouring data is not lost.
    fn dcache_inval(&mut self, pa: u64, size: u64) {
        if size == 0 {
            return;
        }
        let line = self.hw.line();
        let (mut start, end) = (pa, pa + size);
        if start % line != 0 {
            self.dc_by_va(Cmo::CleanInvalidate, start, 1);
            start = (start / line + 1) * line;
        }
        let mut stop = end;
        if end % line != 0 && end > start {
            self.dc_by_va(Cmo::CleanInvalidate, end - 1, 1);
            stop = end - end % line;
        }
        if stop > start {
            self.dc_by_va(Cmo::Invalidate, start, stop - start);
        }
    }

    /// `arch_sync_dma_for_cpu()`: nothing for `DMA_TO_DEVICE`; otherwise an
    /// invalidate (arm64 `dcache_inval_poc`, ARMv7 `v7_dma_unmap_area`).
    pub fn arch_sync_dma_for_cpu(&mut self, pa: u64, size: u64, dir: DmaDirection) {
        if self.cfg.arch == Arch::X86_64
            || dir == DmaDirection::ToDevice
            || !self.kernel_owns_range(pa, size)
            || size == 0
        {
            return;
        }
        self.dcache_inval(pa, size);
        self.hw.cmo_fixed();
    }

    /// `arch_dma_prep_coherent()` (arm64) / `__dma_clear_buffer` (arm): clean the
    /// kernel alias before remapping it non-cacheable, so no dirty line can later be
    /// written over device data.
    pub fn arch_dma_prep_coherent(&mut self, pa: u64, size: u64) {
        if self.cfg.arch != Arch::X86_64 {
            self.dc_by_va(Cmo::Clean, pa, size);
            self.hw.cmo_fixed();
        }
    }

    fn kernel_owns_range(&self, pa: u64, size: u64) -> bool {
        self.hw.dram.contains(pa, size)
    }

    /// `dma_kmalloc_needs_bounce()` (include/linux/dma-map-ops.h; arm64 selects
    /// `CONFIG_DMA_BOUNCE_UNALIGNED_KMALLOC`): a non-coherent device may write a
    /// buffer smaller than 2 × `ARCH_DMA_MINALIGN` whose kmalloc size class is not a
    /// multiple of `dma_get_cache_alignment()` (the run-time cache line size), so
    /// invalidating it could destroy a neighbour (dma_kmalloc_size_aligned).
    pub fn dma_kmalloc_needs_bounce(&self, dev: usize, size: u64, dir: DmaDirection) -> bool {
        if self.cfg.arch != Arch::Arm64
            || self.dev_is_dma_coherent(dev)
            || dir == DmaDirection::ToDevice
            || size >= 2 * self.cfg.dma_minalign
        {
            return false;
        }
        let rounded = self.kernel.slab.class_for(size).unwrap_or(size);
        rounded % self.cfg.dma_get_cache_alignment() != 0
    }

    /// `dma_direct_map_phys()` (`dma_direct_map_page` in direct.h): the bus address
    /// of `pa` — through a swiotlb bounce buffer when the device cannot reach it, when
    /// swiotlb is forced or for an unaligned small kmalloc buffer — after the cache
    /// clean a non-coherent device needs. Also returns the bounce buffer's physical
    /// address when there is one. `DMA_MAPPING_ERROR` (with Linux's warning) when
    /// neither works.
    pub fn dma_direct_map_phys(
        &mut self,
        dev: usize,
        pa: u64,
        size: u64,
        dir: DmaDirection,
    ) -> (u64, Option<u64>) {
        let d = &self.kernel.devices[dev];
        let addr = d.phys_to_dma(pa);
        if self.kernel.swiotlb.as_ref().is_some_and(|p| p.force) {
            return self.swiotlb_map(dev, pa, size, dir, BounceWhy::Forced);
        }
        let capable = dma_capable(d, addr, size);
        if !capable || self.dma_kmalloc_needs_bounce(dev, size, dir) {
            if self.kernel.swiotlb.is_some() {
                let why = if capable {
                    BounceWhy::KmallocUnaligned
                } else {
                    BounceWhy::BeyondLimit
                };
                return self.swiotlb_map(dev, pa, size, dir, why);
            }
            let d = &self.kernel.devices[dev];
            let (name, mask, limit) = (d.name.clone(), d.dma_mask, d.bus_dma_limit);
            self.printk(
                &name,
                format!("DMA addr {addr:#x}+{size} overflow (mask {mask:x}, bus limit {limit:x})."),
            );
            return (DMA_MAPPING_ERROR, None);
        }
        if !self.dev_is_dma_coherent(dev) && !self.kernel.dma_skip_cpu_sync {
            self.arch_sync_dma_for_device(pa, size, dir);
        }
        (addr, None)
    }

    /// `dma_direct_unmap_phys()`: the sync for the CPU (cache invalidate, then the
    /// copy back out of a bounce buffer), then the slots are released.
    pub fn dma_direct_unmap_phys(&mut self, dev: usize, addr: u64, size: u64, dir: DmaDirection) {
        self.dma_direct_sync(dev, addr, size, dir, true);
        let pa = self.kernel.devices[dev].dma_to_phys(addr);
        self.swiotlb_release(dev, pa);
    }

    /// `dma_direct_sync_single_for_cpu()` / `_for_device()`: for the CPU, invalidate
    /// then copy out of a bounce buffer; for the device, copy in then clean.
    pub fn dma_direct_sync(
        &mut self,
        dev: usize,
        addr: u64,
        size: u64,
        dir: DmaDirection,
        for_cpu: bool,
    ) {
        let pa = self.kernel.devices[dev].dma_to_phys(addr);
        self.sync_phys(dev, pa, size, dir, for_cpu);
    }

    /// `dma_direct_supported()`: every mask of 32 bits or more is accepted; a smaller
    /// one only if it covers the `zone_dma_limit` variable (or all of RAM, if that
    /// is smaller): ZONE_DMA on arm64, 16 MiB on 32-bit ARM and x86.
    pub fn dma_direct_supported(&self, dev: usize, mask: u64) -> bool {
        if mask >= dma_bit_mask(32) {
            return true;
        }
        // kernel/dma/direct.c: dma_direct_supported reads the zone_dma_limit
        // variable, DMA_BIT_MASK(24) on 32-bit ARM whatever arm_dma_limit is.
        let top = (self.kernel.ram_end - 1).min(self.cfg.dma_direct_zone_dma_limit());
        mask >= self.kernel.devices[dev].phys_to_dma(top)
    }

    /// `dma_coherent_ok()`: the allocation's last byte is below the coherent mask.
    pub fn dma_coherent_ok(&self, dev: usize, pa: u64, size: u64) -> bool {
        let d = &self.kernel.devices[dev];
        d.phys_to_dma(pa)
            .checked_add(size - 1)
            .is_some_and(|e| e <= d.coherent_limit())
    }
}

impl System {
    /// `dma_alloc_contiguous()`: multi-page requests from a blocking context try the
    /// CMA area first (single pages never do); the alignment is the size's order,
    /// capped at `CONFIG_CMA_ALIGNMENT`. The pages must also suit the coherent mask.
    pub(crate) fn dma_alloc_contiguous(
        &mut self,
        dev: usize,
        name: &str,
        bytes: u64,
    ) -> Option<u64> {
        use crate::kernel::mm::cma::CMA_ALIGNMENT;
        use crate::kernel::mm::page_alloc::get_order;
        self.kernel.pages.cma.as_ref()?;
        if bytes <= PAGE_SIZE {
            return None;
        }
        let count = bytes / PAGE_SIZE;
        match self.cma_alloc(count, get_order(bytes).min(CMA_ALIGNMENT)) {
            Ok(pfn) if self.dma_coherent_ok(dev, pfn * PAGE_SIZE, bytes) => Some(pfn),
            Ok(pfn) => {
                self.cma_release(pfn, count);
                None
            }
            Err(f) => {
                self.cma_failed(name, count, f);
                None
            }
        }
    }

    /// `__dma_direct_alloc_pages()`: the zone comes from the coherent mask
    /// (`dma_direct_optimal_gfp_mask`: ZONE_DMA when the limit is within it, ZONE_DMA32
    /// when within 4 GiB); pages that end above the mask are given back and the
    /// allocation retried with `GFP_DMA32`, then `GFP_DMA`.
    pub(crate) fn dma_direct_alloc_pages(
        &mut self,
        dev: usize,
        name: &str,
        bytes: u64,
        order: u32,
        call: &str,
    ) -> crate::system::Result<Option<u64>> {
        use crate::kernel::mm::gfp::{GFP_DMA, GFP_DMA32, GFP_KERNEL};
        let d = &self.kernel.devices[dev];
        let phys_limit = d.dma_to_phys(d.coherent_limit());
        let mut gfp = GFP_KERNEL
            // kernel/dma/direct.c: dma_direct_optimal_gfp_mask, the same variable.
            | if phys_limit <= self.cfg.dma_direct_zone_dma_limit() {
                GFP_DMA
            } else if phys_limit <= dma_bit_mask(32) {
                GFP_DMA32
            } else {
                0
            };
        loop {
            match self.kernel.pages.alloc_pages(order, gfp, &mut self.hw.rng) {
                Ok(pfn) if self.dma_coherent_ok(dev, pfn * PAGE_SIZE, bytes) => {
                    return Ok(Some(pfn))
                }
                Ok(pfn) => {
                    self.kernel.pages.free_pages(pfn, order);
                    if gfp & (GFP_DMA32 | GFP_DMA) == 0 {
                        gfp |= GFP_DMA32;
                    } else if gfp & GFP_DMA == 0 {
                        gfp = (gfp & !GFP_DMA32) | GFP_DMA;
                    } else {
                        let mask = self.kernel.devices[dev].coherent_dma_mask;
                        self.printk(
                            name,
                            format!("{call}: no page below the coherent mask {mask:#x}"),
                        );
                        return Ok(None);
                    }
                }
                Err(f) => {
                    self.alloc_failed(name, call, bytes, order, Some(&f));
                    return Ok(None);
                }
            }
        }
    }
}

/// `PAGE_ALIGN()`.
pub fn page_align(size: u64) -> u64 {
    size.div_ceil(PAGE_SIZE) * PAGE_SIZE
}
