//! dma-iommu (`drivers/iommu/dma-iommu.c`, Linux v6.12): the DMA API on top of an
//! IOMMU domain. A mapping gets an IOVA from the domain's allocator (top-down below
//! the device's limit, size-aligned), the pages are mapped with the direction's
//! permissions, and the device uses the IOVA. Non-coherent devices still get the
//! arm64 cache maintenance; small unaligned kmalloc buffers a non-coherent device
//! writes still bounce (`dev_use_swiotlb`), granule-aligned. `dma_map_sg` maps the
//! whole list into one IOVA range and merges what `__finalise_sg` allows;
//! `dma_alloc_coherent` maps scattered pages into contiguous IOVA.
//!
//! An untrusted device (`pci_dev->untrusted`: behind an external-facing port) gets
//! the same bounce for any mapping that does not cover whole granules, with the
//! padding around the bounce buffer zeroed, and every `dma_map_sg` entry mapped on
//! its own (`dev_use_sg_swiotlb`).
//!
//! Simplifications: the coherent allocation always blocks (no atomic pool) and
//! never retries a failed 2 MiB block with reclaim or compaction.

use crate::check::{HistoryEvent, MapKind, NewMapping};
use crate::config::{PAGE_SHIFT, PAGE_SIZE};
use crate::hw::mmu::MemType;
use crate::kernel::dma::bounce::BounceWhy;
use crate::kernel::dma::sg::SgEntry;
use crate::kernel::dma::{DmaDirection, DMA_MAPPING_ERROR};
use crate::kernel::iommu::{dma_info_to_prot, DomainType, GRANULE, PGSIZE_BITMAP};
use crate::kernel::{Backing, BufKind, Buffer};
use crate::system::{Result, System};

/// Pages an IOMMU allocation got and where they are mapped.
pub(crate) struct IommuPages {
    /// The page frames, in IOVA order.
    pub pfns: Vec<u64>,
    /// The IOVA of the first page.
    pub iova: u64,
    /// Physically contiguous runs (address, length), in IOVA order.
    pub runs: Vec<(u64, u64)>,
}

fn granule_align(x: u64) -> u64 {
    x.div_ceil(GRANULE) * GRANULE
}

impl System {
    fn domain_of(&self, dev: usize) -> usize {
        self.dev_domain(dev).expect("dma-iommu path needs a domain")
    }

    /// `dma_limit` of `iommu_dma_alloc_iova`: `min_not_zero(mask, bus_dma_limit)`,
    /// capped at the aperture (48-bit IAS).
    pub(crate) fn iommu_dma_limit(&self, dev: usize, coherent_mask: bool) -> u64 {
        let d = &self.kernel.devices[dev];
        let l = if coherent_mask {
            d.coherent_limit()
        } else {
            d.dma_limit()
        };
        l.min((1u64 << crate::hw::iommu::IAS) - 1)
    }

    /// `iommu_dma_alloc_iova`: `len` bytes (granule multiple) of IOVA below the
    /// limit, or `None` with the `iova-exhausted` finding.
    /// `fails` says what the caller returns then, for the finding's message.
    fn iommu_dma_alloc_iova(
        &mut self,
        dev: usize,
        domain: usize,
        len: u64,
        limit: u64,
        fails: &str,
    ) -> Option<u64> {
        let cpu = self.cpu;
        // A Cortex-A9 kernel has no LPAE, so dma_addr_t is 32 bits
        // (CONFIG_ARCH_DMA_ADDR_T_64BIT needs ARM_LPAE) and its SMMU domains use the
        // 32-bit-input ARMv7 short-descriptor format (io-pgtable-arm-v7s): no IOVA
        // above 4 GiB, whatever the mask (a wider one would be truncated in every
        // dma_addr_t the kernel stores, as the dma_pool free list does).
        let limit = if self.cfg.arch == crate::config::Arch::Arm32 {
            limit.min(u64::from(u32::MAX))
        } else {
            limit
        };
        // drivers/iommu/dma-iommu.c: iommu_dma_alloc_iova tries the 32-bit PCI
        // addresses first (without flushing the rcaches); once that space is full
        // the device uses its whole limit for good, with a notice.
        let dac = crate::kernel::dma::dma_bit_mask(32);
        if limit > dac && self.kernel.devices[dev].pci_32bit_workaround {
            let st = self.kernel.iommu.as_mut().expect("IOMMU");
            let pfn = st.domains[domain].iovad.alloc_fast(
                cpu,
                len >> PAGE_SHIFT,
                dac >> PAGE_SHIFT,
                false,
            );
            if let Some(p) = pfn {
                return Some(p << PAGE_SHIFT);
            }
            self.kernel.devices[dev].pci_32bit_workaround = false;
            let name = self.kernel.devices[dev].name.clone();
            let bits = 64 - limit.leading_zeros();
            self.printk(&name, format!("Using {bits}-bit DMA addresses"));
        }
        let st = self.kernel.iommu.as_mut().expect("IOMMU");
        let pfn =
            st.domains[domain]
                .iovad
                .alloc_fast(cpu, len >> PAGE_SHIFT, limit >> PAGE_SHIFT, true);
        if let Some(p) = pfn {
            return Some(p << PAGE_SHIFT);
        }
        st.iova_failures += 1;
        let name = self.kernel.devices[dev].name.clone();
        let ctx = self.ctx();
        self.check.report_plain(
            "iova-exhausted",
            None,
            Some(&name),
            None,
            Some(len),
            ctx,
            format!("no {} of IOVA space left below {limit:#x} in {name}'s domain: {fails}", crate::units::human_size(len)),
            "unmap what the device no longer uses (a leak exhausts IOVA space as surely as memory); check every map with dma_mapping_error(); a wider DMA mask gives the allocator more room".into(),
            vec![],
        );
        None
    }

    /// `__iommu_dma_map`: IOVA for `[phys, phys+size)` mapped with `prot`; the
    /// returned address keeps the offset inside the granule.
    pub(crate) fn iommu_dma_map_raw(
        &mut self,
        dev: usize,
        phys: u64,
        size: u64,
        prot: u32,
        limit: u64,
    ) -> Option<u64> {
        // drivers/iommu/dma-iommu.c: __iommu_dma_map refuses a min_align_mask the
        // IOVA granule cannot honour ("If anyone ever wants this we'd need support
        // in the IOVA allocator"): dev_WARN_ONCE and DMA_MAPPING_ERROR.
        if self.kernel.devices[dev].min_align_mask > GRANULE - 1 {
            let name = self.kernel.devices[dev].name.clone();
            self.warn_once(
                "__iommu_dma_map: min_align_mask",
                &name,
                "Unsupported alignment constraint".into(),
            );
            return None;
        }
        let domain = self.domain_of(dev);
        let off = phys & (GRANULE - 1);
        let len = granule_align(size + off);
        let iova = self.iommu_dma_alloc_iova(
            dev,
            domain,
            len,
            limit,
            "the map fails with DMA_MAPPING_ERROR",
        )?;
        if let Err(e) = self.iommu_map(domain, iova, phys - off, len, prot) {
            let cpu = self.cpu;
            let st = self.kernel.iommu.as_mut().expect("IOMMU");
            st.domains[domain]
                .iovad
                .free_fast(cpu, iova >> PAGE_SHIFT, len >> PAGE_SHIFT);
            let name = self.kernel.devices[dev].name.clone();
            self.printk(
                &name,
                format!("iommu_map of {len:#x} bytes at IOVA {iova:#x} failed: {e}"),
            );
            return None;
        }
        Some(iova + off)
    }

    /// `iommu_dma_map_page`: bounce a small unaligned kmalloc buffer a non-coherent
    /// device writes (granule-aligned slots), clean for a non-coherent device, map.
    /// Returns the IOVA and the bounce buffer, or `DMA_MAPPING_ERROR`.
    pub(crate) fn iommu_dma_map_phys(
        &mut self,
        dev: usize,
        pa: u64,
        size: u64,
        dir: DmaDirection,
    ) -> (u64, Option<u64>) {
        let coherent = self.dev_is_dma_coherent(dev);
        let mut phys = pa;
        let mut bounce = None;
        let untrusted = self.kernel.devices[dev].untrusted;
        if (untrusted || self.dma_kmalloc_needs_bounce(dev, size, dir))
            && (pa | size) & (GRANULE - 1) != 0
        {
            if self.kernel.swiotlb.is_none() {
                let name = self.kernel.devices[dev].name.clone();
                self.printk(
                    &name,
                    "DMA bounce buffers are inactive, unable to map unaligned transaction.".into(),
                );
                return (DMA_MAPPING_ERROR, None);
            }
            let why = if untrusted {
                BounceWhy::Untrusted
            } else {
                BounceWhy::KmallocUnaligned
            };
            match self.swiotlb_tbl_map(dev, pa, size, GRANULE - 1, why) {
                Some(tlb) => {
                    if untrusted {
                        self.zero_bounce_padding(tlb, size);
                    }
                    phys = tlb;
                    bounce = Some(tlb);
                }
                None => return (DMA_MAPPING_ERROR, None),
            }
        }
        // iommu_dma_map_page: no maintenance under DMA_ATTR_SKIP_CPU_SYNC.
        if !coherent && !self.kernel.dma_skip_cpu_sync {
            self.arch_sync_dma_for_device(phys, size, dir);
        }
        let prot = dma_info_to_prot(dir, coherent);
        let limit = self.iommu_dma_limit(dev, false);
        match self.iommu_dma_map_raw(dev, phys, size, prot, limit) {
            Some(iova) => (iova, bounce),
            None => {
                if let Some(t) = bounce {
                    self.swiotlb_release(dev, t);
                }
                (DMA_MAPPING_ERROR, None)
            }
        }
    }

    /// An untrusted device must not see what an earlier user left in the granules
    /// around its bounce buffer: `iommu_dma_map_page` zeroes the pre- and
    /// post-padding with the CPU (through the caches: the clean that follows for a
    /// non-coherent device covers only the mapping itself, as in Linux).
    fn zero_bounce_padding(&mut self, tlb: u64, size: u64) {
        let start = tlb & !(GRANULE - 1);
        let end = granule_align(tlb + size);
        // memset through the linear map. The whole granules belong to this
        // allocation (aligned to them), so no other live mapping shares these bytes:
        // as for the bounce copy, the sanitizer learns the slots' contents when the
        // mapping starts.
        for (a, b) in [(start, tlb), (tlb + size, end)] {
            if a < b {
                self.kmap_write(a, &vec![0u8; (b - a) as usize]);
            }
        }
    }

    /// `__iommu_dma_unmap`: clears the page tables of the granule-aligned range and
    /// invalidates the IOTLB at once (strict) or queues the IOVA (lazy).
    pub(crate) fn iommu_dma_unmap_raw(&mut self, dev: usize, addr: u64, size: u64) {
        let domain = self.domain_of(dev);
        let off = addr & (GRANULE - 1);
        let iova = addr - off;
        let len = granule_align(size + off);
        let (unmapped, leaves) = self.iommu_unmap_range(domain, iova, len);
        let st = self.kernel.iommu.as_mut().expect("IOMMU");
        st.unmaps += 1;
        let lazy = st.domains[domain].kind == DomainType::DmaFq;
        if unmapped != len {
            let name = self.kernel.devices[dev].name.clone();
            self.printk(
                &name,
                format!("WARNING: dma-iommu: unmapped {unmapped:#x} of {len:#x} bytes at IOVA {iova:#x}"),
            );
        }
        // __iommu_dma_unmap gives the IOVA back whatever iommu_unmap_fast found
        // there (WARN_ON(unmapped != size) and on): a second dma_unmap_sg or
        // dma_unmap_resource frees a range that already waits in the per-CPU cache
        // or the flush queue a second time. An unmap of 0 bytes clears nothing and
        // still gives the IOVA back (free_iova_fast(pfn, 0) caches it as a
        // 1-granule range), its page mapped.
        let still_mapped = len == 0 && self.iova_translates(domain, iova);
        self.iova_free_check(
            dev,
            domain,
            addr,
            size,
            iova >> PAGE_SHIFT,
            len >> PAGE_SHIFT,
            (unmapped == 0, still_mapped),
        );
        if lazy {
            self.iommu_queue_iova(domain, iova >> PAGE_SHIFT, len >> PAGE_SHIFT);
        } else {
            // An empty gather syncs nothing (arm_smmu_iotlb_sync: no pgsize).
            if unmapped > 0 {
                self.iommu_tlb_inv_range(domain, iova, len, leaves);
            }
            let cpu = self.cpu;
            let st = self.kernel.iommu.as_mut().expect("IOMMU");
            st.domains[domain]
                .iovad
                .free_fast(cpu, iova >> PAGE_SHIFT, len >> PAGE_SHIFT);
        }
    }

    /// Before `iommu_dma_free_iova` gives `pages` frames at `pfn` back: when they
    /// are not an allocated range of that size (an unmap with another address,
    /// size or device than its map), Linux's allocator takes them all the same and
    /// is inconsistent from then on ([`crate::kernel::iommu::iova::IovaDomain::free_problem`]);
    /// the model does the same, reports `allocator-corrupted` once per domain and
    /// marks the allocator so that the invariant check of tests no longer judges it.
    /// When the unmap found nothing mapped (`nothing_unmapped`, a misuse in any
    /// case) the range may also have been given back already: then it goes into
    /// the cache or the queue twice. When the IOVA given back still translates
    /// (`still_mapped`: an unmap of 0 bytes), a later mapping can get an IOVA whose
    /// page is mapped.
    #[allow(clippy::too_many_arguments)]
    fn iova_free_check(
        &mut self,
        dev: usize,
        domain: usize,
        addr: u64,
        size: u64,
        pfn: u64,
        pages: u64,
        (nothing_unmapped, still_mapped): (bool, bool),
    ) {
        let st = self.kernel.iommu.as_mut().expect("IOMMU");
        let d = &mut st.domains[domain];
        let again =
            nothing_unmapped && (d.iovad.is_cached(pfn) || d.fq.pending_pfns().any(|p| p == pfn));
        let problem = d
            .iovad
            .free_problem(pfn, pages)
            .or_else(|| {
                still_mapped.then(|| {
                    format!(
                        "IOVA {:#x} went into the per-CPU cache of 1-granule ranges while the page table still maps it (the unmap of 0 bytes cleared nothing)",
                        pfn << PAGE_SHIFT
                    )
                })
            })
            .or_else(|| {
                again.then(|| {
                    format!(
                        "IOVA {:#x} was given back already and waits in the per-CPU cache or the flush queue, so it is there twice and will be handed out twice",
                        pfn << PAGE_SHIFT
                    )
                })
            });
        let iovad = &mut d.iovad;
        let Some(problem) = problem else {
            return;
        };
        if std::mem::replace(&mut iovad.corrupted, true) {
            return;
        }
        let name = &self.kernel.devices[dev].name;
        self.report_allocator_corrupted(
            dev,
            (addr, Some(size)),
            format!(
                "{name}: unmap of {size} bytes at {addr:#x} gave IOVA {:#x} ({pages} granule(s)) back to the domain's allocator",
                pfn << PAGE_SHIFT
            ),
            format!("IOVA allocator of {name}'s domain is now inconsistent: {problem}; a later mapping in this domain can get an IOVA a live mapping still uses [device address={addr:#x}] [size={size} bytes]"),
            "unmap each mapping once, with the device, address and size of its map call: dma-iommu frees the IOVA the unmap's arguments describe without checking them (drivers/iommu/dma-iommu.c: __iommu_dma_unmap, drivers/iommu/iova.c: free_iova_fast)",
        );
    }

    /// `iommu_dma_unmap_page`: the physical address from the tables (a WARN and
    /// nothing more when there is none), the sync for the CPU, then the unmap.
    pub(crate) fn iommu_dma_unmap_phys(
        &mut self,
        dev: usize,
        addr: u64,
        size: u64,
        dir: DmaDirection,
    ) {
        let domain = self.domain_of(dev);
        let phys = self.iommu_iova_to_phys(domain, addr);
        if phys == 0 {
            let name = self.kernel.devices[dev].name.clone();
            self.printk(
                &name,
                format!("WARNING: iommu_dma_unmap_page: no mapping at IOVA {addr:#x}"),
            );
            return;
        }
        // The sync for the CPU at the physical address just looked up (Linux walks
        // once here too).
        self.sync_phys(dev, phys, size, dir, true);
        self.iommu_dma_unmap_raw(dev, addr, size);
        self.swiotlb_release(dev, phys);
    }

    /// `iommu_dma_sync_single_for_{cpu,device}`: cache maintenance by the physical
    /// address behind the IOVA, and the swiotlb copies of a bounced mapping.
    pub(crate) fn iommu_dma_sync(
        &mut self,
        dev: usize,
        addr: u64,
        size: u64,
        dir: DmaDirection,
        for_cpu: bool,
    ) {
        let domain = self.domain_of(dev);
        let phys = self.iommu_iova_to_phys(domain, addr);
        if phys == 0 {
            return;
        }
        self.sync_phys(dev, phys, size, dir, for_cpu);
    }

    /// The cache and bounce work of a sync at a physical address.
    pub(crate) fn sync_phys(
        &mut self,
        dev: usize,
        phys: u64,
        size: u64,
        dir: DmaDirection,
        for_cpu: bool,
    ) {
        if self.kernel.dma_skip_cpu_sync {
            return;
        }
        let coherent = self.dev_is_dma_coherent(dev);
        if for_cpu {
            if !coherent {
                self.arch_sync_dma_for_cpu(phys, size, dir);
            }
            self.swiotlb_sync_for_cpu(dev, phys, size, dir);
        } else {
            self.swiotlb_sync_for_device(dev, phys, size, dir);
            if !coherent {
                self.arch_sync_dma_for_device(phys, size, dir);
            }
        }
    }

    /// `iommu_dma_map_sg`: one IOVA range for the whole list, each entry's
    /// granule-padded pages mapped one after the other, then `__finalise_sg` joins
    /// entries into as few DMA segments as the device's `max_segment` and segment
    /// boundary allow. Fills `dma_address`/`dma_len` (output segments, in order) and
    /// each entry's own `iova`. Returns the segment count and whether entries were
    /// mapped one by one, or the errno Linux returns: -EIO when an entry of the
    /// one-by-one (swiotlb) layout fails, -ENOMEM when no IOVA range is free, and
    /// -EINVAL (anything but -ENOMEM) when `iommu_map_sg` fails. `call` names the
    /// public function for the messages.
    pub(crate) fn iommu_dma_map_sg(
        &mut self,
        dev: usize,
        entries: &mut [SgEntry],
        dir: DmaDirection,
        call: &str,
    ) -> std::result::Result<(usize, bool), i64> {
        use crate::kernel::errno::{EINVAL, EIO, ENOMEM};
        let coherent = self.dev_is_dma_coherent(dev);
        // sg_dma_mark_swiotlb: any entry that must bounce makes every entry map on
        // its own, without merging.
        if self.kernel.devices[dev].untrusted
            || entries.iter().any(|e| {
                self.dma_kmalloc_needs_bounce(dev, e.len, dir)
                    && (e.phys | e.len) & (GRANULE - 1) != 0
            })
        {
            for i in 0..entries.len() {
                let (addr, _) = self.iommu_dma_map_phys(dev, entries[i].phys, entries[i].len, dir);
                if addr == DMA_MAPPING_ERROR {
                    for e in entries[..i].iter() {
                        self.iommu_dma_unmap_phys(dev, e.iova, e.len, dir);
                    }
                    return Err(-EIO);
                }
                entries[i].iova = addr;
                entries[i].dma_address = addr;
                entries[i].dma_len = entries[i].len;
            }
            return Ok((entries.len(), true));
        }
        if !coherent && !self.kernel.dma_skip_cpu_sync {
            for e in entries.iter() {
                self.arch_sync_dma_for_device(e.phys, e.len, dir);
            }
        }
        let d = &self.kernel.devices[dev];
        let (seg_mask, max_len) = (d.seg_boundary_mask, d.max_segment);
        // Pad each entry to whole granules; pad the previous one when the next would
        // cross a segment boundary.
        let mut padded: Vec<u64> = Vec::with_capacity(entries.len());
        let mut iova_len = 0u64;
        for e in entries.iter() {
            let off = e.phys & (GRANULE - 1);
            let s_len = granule_align(e.len + off);
            let pad = (seg_mask.wrapping_sub(iova_len).wrapping_add(1)) & seg_mask;
            if pad != 0 && pad < s_len.saturating_sub(1) {
                if let Some(p) = padded.last_mut() {
                    *p += pad;
                    iova_len += pad;
                }
            }
            padded.push(s_len);
            iova_len += s_len;
        }
        let limit = self.iommu_dma_limit(dev, false);
        let domain = self.domain_of(dev);
        let fails = if call == "dma_map_sgtable" {
            "dma_map_sgtable returns -ENOMEM".to_string()
        } else {
            format!("{call} returns 0")
        };
        let Some(base) = self.iommu_dma_alloc_iova(dev, domain, iova_len, limit, &fails) else {
            return Err(-ENOMEM);
        };
        let prot = dma_info_to_prot(dir, coherent);
        let mut cursor = base;
        for (e, &len) in entries.iter().zip(&padded) {
            let phys = e.phys & !(GRANULE - 1);
            if let Err(err) = self.iommu_map(domain, cursor, phys, len, prot) {
                if cursor > base {
                    self.iommu_unmap_range(domain, base, cursor - base);
                }
                let cpu = self.cpu;
                let st = self.kernel.iommu.as_mut().expect("IOMMU");
                st.domains[domain]
                    .iovad
                    .free_fast(cpu, base >> PAGE_SHIFT, iova_len >> PAGE_SHIFT);
                let name = self.kernel.devices[dev].name.clone();
                self.printk(
                    &name,
                    format!("iommu_dma_map_sg: iommu_map_sg failed: {err}"),
                );
                return Err(if err == -ENOMEM { -ENOMEM } else { -EINVAL });
            }
            cursor += len;
        }
        // __finalise_sg
        let mut dma_addr = base;
        let mut cur = 0usize;
        let mut cur_len = 0u64;
        let mut count = 0usize;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, e) in entries.iter_mut().enumerate() {
            let s_off = e.phys & (GRANULE - 1);
            let s_len = e.len;
            let s_iova_len = padded[i];
            e.iova = dma_addr + s_off;
            // Unsigned arithmetic as in Linux: after an entry longer than max_len
            // (dma-debug flags it) the difference wraps and the next entry merges.
            if cur_len != 0
                && s_off == 0
                && dma_addr & seg_mask != 0
                && max_len.wrapping_sub(cur_len) >= s_len
            {
                cur_len += s_len;
            } else {
                if i > 0 {
                    cur += 1;
                }
                cur_len = s_len;
                count += 1;
                out.push((dma_addr + s_off, 0));
            }
            out[cur].1 = cur_len;
            dma_addr += s_iova_len;
            if s_len + s_off < s_iova_len {
                cur_len = 0;
            }
        }
        for (i, e) in entries.iter_mut().enumerate() {
            match out.get(i) {
                Some(&(a, l)) => {
                    e.dma_address = a;
                    e.dma_len = l;
                }
                None => {
                    e.dma_address = DMA_MAPPING_ERROR;
                    e.dma_len = 0;
                }
            }
        }
        Ok((count, false))
    }

    /// `iommu_dma_unmap_sg`: the sync for the CPU of every entry, then one unmap of
    /// the range from the first segment's start to the last segment's end.
    pub(crate) fn iommu_dma_unmap_sg(
        &mut self,
        dev: usize,
        entries: &[SgEntry],
        mapped: usize,
        dir: DmaDirection,
        per_entry: bool,
    ) {
        if per_entry {
            // iommu_dma_unmap_sg_swiotlb: each entry was mapped on its own.
            for e in entries {
                self.iommu_dma_unmap_phys(dev, e.iova, e.len, dir);
            }
            return;
        }
        for e in entries {
            self.sync_phys(dev, e.phys, e.len, dir, true);
        }
        let segs: Vec<&SgEntry> = entries
            .iter()
            .take(mapped)
            .filter(|e| e.dma_len > 0)
            .collect();
        if let (Some(first), Some(last)) = (segs.first(), segs.last()) {
            let start = first.dma_address;
            let end = last.dma_address + last.dma_len;
            self.iommu_dma_unmap_raw(dev, start, end - start);
        }
    }

    /// `__iommu_dma_alloc_pages`: `count` pages for an IOMMU-mapped buffer. The
    /// orders tried are the domain's page sizes that the buddy allocator can give
    /// (4 KiB and 2 MiB; 1 GiB is beyond `MAX_PAGE_ORDER`), largest first and only
    /// while the rest of the request is that large; a larger block is "a
    /// convenience rather than a necessity" (Linux asks with `__GFP_NORETRY`, which
    /// this allocator, without reclaim, needs no flag for) and is split so that
    /// each page is freed on its own (`split_page`). Returns the page frames in
    /// order, or the failure of the last order-0 attempt (nothing stays allocated).
    fn iommu_dma_alloc_pages(
        &mut self,
        count: u64,
    ) -> std::result::Result<Vec<u64>, crate::kernel::mm::page_alloc::AllocFailure> {
        use crate::kernel::mm::gfp::{GFP_KERNEL, GFP_NOWARN};
        let orders: Vec<u32> = (0..=crate::config::MAX_PAGE_ORDER)
            .rev()
            .filter(|o| (PGSIZE_BITMAP >> PAGE_SHIFT) & (1 << o) != 0)
            .collect();
        let mut pfns = Vec::with_capacity(count as usize);
        while (pfns.len() as u64) < count {
            let rest = count - pfns.len() as u64;
            let mut got = None;
            let mut last_err = None;
            for &order in orders.iter().filter(|&&o| 1u64 << o <= rest) {
                match self.kernel.pages.alloc_pages(
                    order,
                    GFP_KERNEL | GFP_NOWARN,
                    &mut self.hw.rng,
                ) {
                    Ok(p) => {
                        got = Some((p, order));
                        break;
                    }
                    Err(f) => last_err = Some(f),
                }
            }
            let Some((first, order)) = got else {
                for &p in &pfns {
                    self.kernel.pages.free_pages(p, 0);
                }
                return Err(last_err.expect("order 0 is always tried"));
            };
            pfns.extend(first..first + (1 << order));
        }
        Ok(pfns)
    }

    /// `__iommu_dma_alloc_noncontiguous` without the CPU side: `bytes` (granule
    /// aligned) of pages wherever the allocator finds them (`__iommu_dma_alloc_pages`)
    /// mapped in order at one IOVA range below the coherent mask, read and write.
    /// Returns the pages, the IOVA and the physically contiguous runs, or `None`
    /// (reported; nothing stays allocated). `call` names the public function.
    pub(crate) fn iommu_dma_alloc_mapped(
        &mut self,
        dev: usize,
        bytes: u64,
        call: &str,
    ) -> Option<IommuPages> {
        let name = self.kernel.devices[dev].name.clone();
        let pfns = match self.iommu_dma_alloc_pages(bytes / PAGE_SIZE) {
            Ok(p) => p,
            Err(f) => {
                self.alloc_failed(&name, call, bytes, 0, Some(&f));
                return None;
            }
        };
        let coherent = self.dev_is_dma_coherent(dev);
        let limit = self.iommu_dma_limit(dev, true);
        let domain = self.domain_of(dev);
        let fails = format!("{call} returns NULL");
        let Some(iova) = self.iommu_dma_alloc_iova(dev, domain, bytes, limit, &fails) else {
            for &p in &pfns {
                self.kernel.pages.free_pages(p, 0);
            }
            return None;
        };
        // iommu_map_sgtable: the pages as a scatterlist whose physically contiguous
        // runs are one entry each, so an aligned 2 MiB block becomes a block
        // descriptor (one IOTLB entry for 2 MiB).
        let prot = dma_info_to_prot(DmaDirection::Bidirectional, coherent);
        let runs = crate::report::visual::runs_of(pfns.iter().copied());
        let mut at = iova;
        for &(pa, len) in &runs {
            if self.iommu_map(domain, at, pa, len, prot).is_err() {
                self.iommu_unmap_range(domain, iova, at - iova);
                for &q in &pfns {
                    self.kernel.pages.free_pages(q, 0);
                }
                return None;
            }
            at += len;
        }
        Some(IommuPages { pfns, iova, runs })
    }

    /// `iommu_dma_alloc`: zeroed pages wherever the allocator finds them — 2 MiB
    /// blocks first while the rest is that large, then single pages
    /// (`__iommu_dma_alloc_pages`) — mapped at one contiguous IOVA range below the
    /// coherent mask, and a CPU mapping in the vmalloc area (Normal-NC for a
    /// non-coherent device, after cleaning each page). Returns the buffer id, or
    /// `None`.
    ///
    /// # Errors
    /// The memory cap.
    pub(crate) fn iommu_dma_alloc(&mut self, dev: usize, size: u64) -> Result<Option<u64>> {
        let name = self.kernel.devices[dev].name.clone();
        let bytes = granule_align(size);
        let count = bytes / PAGE_SIZE;
        let coherent = self.dev_is_dma_coherent(dev);
        let Some(IommuPages { pfns, iova, runs }) =
            self.iommu_dma_alloc_mapped(dev, bytes, "dma_alloc_coherent")
        else {
            return Ok(None);
        };
        let va = self.kernel.vmalloc_range(bytes);
        let memtype = if coherent {
            MemType::Normal
        } else {
            MemType::NormalNc
        };
        for (i, &p) in pfns.iter().enumerate() {
            if !coherent {
                self.arch_dma_prep_coherent(p << PAGE_SHIFT, PAGE_SIZE);
            }
            self.hw
                .mmu
                .map_page(0, va + i as u64 * PAGE_SIZE, p << PAGE_SHIFT, memtype);
        }
        self.zero_new_allocation(va, bytes)?;
        let pa = pfns[0] << PAGE_SHIFT;
        let alloc = HistoryEvent {
            time_ns: self.ctx().time_ns,
            line: self.line,
            event: format!("dma_alloc_coherent({size}) = {va:#x} [{count} pages in {} physical runs, first phys={pa:#x}] [iova={iova:#x}]", runs.len()).into(),
        };
        let id = self.kernel.add_buffer(Buffer::for_device(
            BufKind::Coherent,
            dev,
            va,
            size,
            pa,
            iova,
            alloc.clone(),
            Backing::Vmalloc(pfns.clone()),
        ));
        self.sanitizer_map(
            NewMapping::new(
                dev,
                name,
                iova,
                size,
                pa,
                DmaDirection::Bidirectional,
                MapKind::Coherent,
            )
            .pages(Some(pfns))
            .what(std::borrow::Cow::Borrowed(if coherent {
                "dma_alloc_coherent through the IOMMU"
            } else {
                "dma_alloc_coherent through the IOMMU (Normal-NC vmap)"
            })),
        );
        Ok(Some(id))
    }
}
