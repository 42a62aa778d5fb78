//! `dma_alloc_noncontiguous()`, `dma_vmap_noncontiguous()` and
//! `dma_free_noncontiguous()` (v6.12 `kernel/dma/mapping.c`,
//! `iommu_dma_alloc_noncontiguous` in `drivers/iommu/dma-iommu.c`): cacheable memory
//! that is one DMA segment for the device however scattered it is for the CPU,
//! synced like a reused streaming mapping (`dma_sync_sgtable_for_device` before the
//! device uses it, `dma_sync_sgtable_for_cpu` before the CPU reads what it wrote).
//! uvcvideo allocates its URB buffers this way.
//!
//! Behind an IOMMU: pages wherever the allocator finds them (2 MiB blocks first),
//! as a table of their physically contiguous runs (`sgt->orig_nents`), mapped at one
//! IOVA range (`sgt->nents` = 1); not zeroed unless the caller asks for
//! `__GFP_ZERO`; for a non-coherent device each run is cleaned and invalidated
//! (`arch_dma_prep_coherent`); `dma_vmap_noncontiguous` maps the pages cacheable in
//! the vmalloc area. Without one, `alloc_single_sgt`: one physically contiguous
//! block from the zone the coherent mask reaches (CMA first), zeroed with cacheable
//! stores and no maintenance, as `dma_direct_alloc_pages` does; the vmap is the
//! linear map. The size that works behind an IOMMU can fail without one.
//!
//! As dma-debug does, the allocation is one mapping of type scatter-gather for the
//! sanitizer, owned by the CPU until the first sync for the device.
//! Simplified: the vmap is made at allocation time (`dma_vmap_noncontiguous`
//! returns it; `dma_vunmap_noncontiguous` does nothing and the free removes it);
//! no `DMA_ATTR_ALLOC_SINGLE_PAGES`; no `dma_mmap_noncontiguous`.

use crate::check::{BufferRef, CpuFirst, HistoryEvent, MapKind, NewMapping};
use crate::config::{PAGE_SHIFT, PAGE_SIZE};
use crate::hw::mmu::MemType;
use crate::kernel::dma::{DmaDirection, DMA_MAPPING_ERROR};
use crate::kernel::{Backing, BufKind, Buffer};
use crate::system::{Result, SimError, System};

use super::direct::page_align;

/// The allocation's hand-over, for the sanitizer's messages.
const NONCONTIGUOUS_FIRST: CpuFirst = CpuFirst {
    alloc: "dma_alloc_noncontiguous",
    sync: "dma_sync_sgtable_for_device",
    args: "dev, sgt, dir",
    skipped_sync: false,
};

impl System {
    /// `dma_alloc_noncontiguous(dev, size, dir, gfp, 0)`: the id of a scatterlist
    /// table with one DMA segment, or `None` (NULL). `zero` is `__GFP_ZERO` (the
    /// direct path zeroes anyway).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device or `DMA_NONE`; the memory cap.
    pub fn dma_alloc_noncontiguous(
        &mut self,
        dev: usize,
        size: u64,
        dir: DmaDirection,
        zero: bool,
    ) -> Result<Option<u64>> {
        const CALL: &str = "dma_alloc_noncontiguous";
        let name = self.dma_alloc_prologue(dev, CALL, Some(dir))?;
        let bytes = page_align(size);
        if size == 0 {
            self.alloc_failed(&name, CALL, size, 0, None);
            return Ok(None);
        }
        let iommu = self.use_dma_iommu(dev);
        let (va, addr, runs, backing, pages) = if iommu {
            let Some(super::iommu::IommuPages { pfns, iova, runs }) =
                self.iommu_dma_alloc_mapped(dev, bytes, CALL)
            else {
                return Ok(None);
            };
            if zero {
                // __GFP_ZERO: the page allocator clears through the linear map.
                for &p in &pfns {
                    let lin = self.kernel.phys_to_virt(p << PAGE_SHIFT);
                    self.zero_new_allocation(lin, PAGE_SIZE)?;
                }
            }
            if !self.dev_is_dma_coherent(dev) {
                for &(pa, len) in &runs {
                    self.arch_dma_prep_coherent(pa, len);
                }
            }
            // dma_vmap_noncontiguous: vmap(pages, PAGE_KERNEL), cacheable.
            let va = self.kernel.vmalloc_range(bytes);
            for (i, &p) in pfns.iter().enumerate() {
                self.hw.mmu.map_page(
                    0,
                    va + i as u64 * PAGE_SIZE,
                    p << PAGE_SHIFT,
                    MemType::Normal,
                );
            }
            let pages = Some(pfns.clone());
            (va, iova, runs, Backing::Vmalloc(pfns), pages)
        } else {
            let Some((pfn, backing)) =
                self.dma_alloc_cacheable_pages(dev, &name, bytes, CALL, false)?
            else {
                return Ok(None);
            };
            let pa = pfn * PAGE_SIZE;
            let va = self.kernel.phys_to_virt(pa);
            // dma_direct_alloc_pages: memset through the cacheable linear map.
            self.zero_new_allocation(va, bytes)?;
            let addr = self.kernel.devices[dev].phys_to_dma(pa);
            (va, addr, vec![(pa, bytes)], backing, None)
        };
        let pa = runs[0].0;
        let alloc = HistoryEvent {
            time_ns: self.ctx().time_ns,
            line: self.line,
            event: format!(
                "{CALL}({size}) = [{} physical run(s), first phys={pa:#x}] [dma={addr:#x}] [vmap={va:#x}]",
                runs.len()
            )
            .into(),
        };
        let id = self.kernel.add_buffer(Buffer::for_device(
            BufKind::Noncontiguous,
            dev,
            va,
            size,
            pa,
            addr,
            alloc.clone(),
            backing,
        ));
        let sgt = self.sg_build(runs.iter().copied(), u64::from(u32::MAX))?;
        let t = self.kernel.sg_tables.get_mut(&sgt).expect("just built");
        let mut off = 0;
        for (i, e) in t.entries.iter_mut().enumerate() {
            e.iova = addr + off;
            (e.dma_address, e.dma_len) = if i == 0 {
                (addr, bytes)
            } else {
                (DMA_MAPPING_ERROR, 0)
            };
            off += e.len;
        }
        t.mapped = 1;
        t.dev = Some(dev);
        t.alloc = Some(id);
        let buffer = pages.is_none().then_some(BufferRef {
            id,
            pa,
            len: bytes,
            alloc,
        });
        self.sanitizer_map(
            NewMapping::new(dev, name, addr, bytes, pa, dir, MapKind::Sg)
                .buffer(buffer)
                .pages(pages)
                .cpu_first(NONCONTIGUOUS_FIRST)
                .what(std::borrow::Cow::Owned(format!(
                    "{CALL} {}",
                    dir.const_name()
                ))),
        );
        Ok(Some(sgt))
    }

    /// The live `dma_alloc_noncontiguous` allocation behind table `sgt` of `dev`.
    fn noncontiguous(&self, dev: usize, sgt: u64, call: &str) -> Result<u64> {
        let t = self.sg(sgt)?;
        match t.alloc {
            Some(id) if t.dev == Some(dev) && self.kernel.buffers.contains_key(&id) => Ok(id),
            _ => Err(SimError::Invalid(format!(
                "{call}: scatterlist #{sgt} is not a live dma_alloc_noncontiguous allocation of {}",
                self.kernel.devices[dev].name
            ))),
        }
    }

    /// `dma_vmap_noncontiguous(dev, size, sgt)`: the buffer id of the contiguous
    /// kernel mapping (cacheable).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a table that is not a live allocation of `dev`.
    pub fn dma_vmap_noncontiguous(&mut self, dev: usize, sgt: u64) -> Result<u64> {
        self.device_checked(dev, "dma_vmap_noncontiguous")?;
        self.step();
        self.noncontiguous(dev, sgt, "dma_vmap_noncontiguous")
    }

    /// `dma_free_noncontiguous(dev, size, sgt, dir)`: dma-debug checks the table's
    /// one segment as for `dma_unmap_sg` (direction, type), the IOVA range is
    /// unmapped and the pages freed, with no cache maintenance. A `size` whose pages
    /// differ from the allocation's is reported: Linux unmaps and frees that size.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for `DMA_NONE`, or a table that is not a live
    /// allocation of `dev`.
    pub fn dma_free_noncontiguous(
        &mut self,
        dev: usize,
        size: u64,
        sgt: u64,
        dir: DmaDirection,
    ) -> Result<()> {
        const CALL: &str = "dma_free_noncontiguous";
        let name = self.dma_free_prologue(dev, CALL, dir)?;
        let id = self.noncontiguous(dev, sgt, CALL)?;
        let b = self.kernel.buffers[&id].clone();
        let (addr, bytes) = (b.dma.unwrap_or(DMA_MAPPING_ERROR), page_align(b.len));
        let ctx = self.ctx();
        if page_align(size) != bytes {
            self.check.report_plain(
                "unmap-size-mismatch",
                None,
                Some(&name),
                Some(addr),
                Some(size),
                ctx,
                format!("{CALL} with size {size}, but the allocation was {} bytes: Linux unmaps and frees the size it is given [device address={addr:#x}]", b.len),
                "free with the size dma_alloc_noncontiguous was given".into(),
                vec![b.alloc.clone()],
            );
        }
        if self.use_dma_iommu(dev) {
            self.iommu_dma_unmap_raw(dev, addr, bytes);
        }
        self.check.unmap(
            &mut self.hw,
            ctx,
            dev,
            &name,
            addr,
            bytes,
            dir,
            MapKind::Sg,
            true,
        );
        self.release_buffer(&b);
        let t = self.kernel.sg_tables.get_mut(&sgt).expect("checked above");
        t.mapped = 0;
        t.dev = None;
        t.alloc = None;
        Ok(())
    }
}
