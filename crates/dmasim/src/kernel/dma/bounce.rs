//! dma-direct's swiotlb paths (`swiotlb_map`, `swiotlb_bounce`,
//! `swiotlb_sync_single_for_*`, `swiotlb_tbl_unmap_single` in `kernel/dma/swiotlb.c`
//! and their callers in `kernel/dma/direct.h`, Linux v6.12): the pool's slots are
//! reserved by [`super::swiotlb::IoTlbPool`]; here the copies happen.
//!
//! A bounce copy is a `memcpy` by the CPU that runs the call, through its caches
//! (cacheable linear map on both sides; a highmem original is reached page by page,
//! as `memcpy_from_page` does), so it costs what the cache model says and leaves
//! lines behind. Copy directions are Linux's: the map **always** copies the original
//! into the slots (so a partial device write leaves the rest intact); the sync for
//! the device copies again for `TO_DEVICE`/`BIDIRECTIONAL`; the sync for the CPU,
//! and the unmap, copy back for `FROM_DEVICE`/`BIDIRECTIONAL`. On a non-coherent
//! device the cache work is done on the *slots*: clean after the copy in, invalidate
//! before the copy out. The original buffer never sees cache maintenance.

use crate::check::HistoryEvent;
use crate::config::PAGE_SIZE;
use crate::hw::mmu::MemType;
use crate::kernel::dma::swiotlb::{
    limit_nareas, BootPlan, DevLimits, IoTlbPool, MapFailure, IO_TLB_MAX_MAPPING, IO_TLB_MIN_SLABS,
    IO_TLB_SEGSIZE, IO_TLB_SHIFT,
};
use crate::kernel::dma::{DmaDirection, DMA_MAPPING_ERROR};
use crate::system::System;
use crate::units::human_size;

/// Why dma-direct sent a mapping through swiotlb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceWhy {
    /// `is_swiotlb_force_bounce()`.
    Forced,
    /// `!dma_capable()`: beyond the mask or the bus limit.
    BeyondLimit,
    /// `dma_kmalloc_needs_bounce()`: a small buffer not a whole number of lines.
    KmallocUnaligned,
    /// dma-iommu's `dev_is_untrusted()`: a mapping that does not cover whole IOVA
    /// granules, whose rest an untrusted device must not see.
    Untrusted,
}

impl BounceWhy {
    /// Why a mapping bounced, in words (for histories).
    pub fn reason(self) -> &'static str {
        match self {
            BounceWhy::Forced => "swiotlb=force",
            BounceWhy::BeyondLimit => "the buffer is beyond what the device can address",
            BounceWhy::KmallocUnaligned => {
                "a small kmalloc buffer that is not whole cache lines, for a non-coherent device"
            }
            BounceWhy::Untrusted => "an untrusted device must not see the rest of the IOVA page",
        }
    }
}

impl crate::kernel::Kernel {
    /// `swiotlb_init_remap()`: reserves the pool with `memblock_alloc_low` below the
    /// plan's limit, halving it (to whole sets, down to `IO_TLB_MIN_SLABS`) while
    /// it does not fit. Returns the slots it asked for first, when it had to shrink.
    ///
    /// # Errors
    /// A `swiotlb_base` whose pool is not free RAM below the limit.
    pub(crate) fn swiotlb_init(&mut self, plan: &BootPlan) -> Result<Option<usize>, String> {
        let mut nslabs = plan.nslabs;
        let mut nareas = plan.nareas;
        if nslabs == 0 {
            return Ok(None);
        }
        if plan.base != 0 {
            // A pool placed where a captured kernel's memblock put it: the run of
            // free pages ending at base + size must start exactly at base.
            let bytes = (nslabs as u64) << IO_TLB_SHIFT;
            let end = plan.base.checked_add(bytes).filter(|&e| e <= plan.limit);
            let got = end.and_then(|e| self.pages.memblock_alloc_low(bytes, e));
            if got != Some(plan.base) || plan.base % PAGE_SIZE != 0 {
                return Err(format!(
                    "swiotlb_base {:#x}: the {} pool there is not free RAM below {:#x}",
                    plan.base,
                    human_size(bytes),
                    plan.limit
                ));
            }
            self.swiotlb = Some(IoTlbPool::new(plan.base, nslabs, nareas, plan.force));
            return Ok(None);
        }
        loop {
            let bytes = (nslabs as u64) << IO_TLB_SHIFT;
            if let Some(start) = self.pages.memblock_alloc_low(bytes, plan.limit) {
                self.swiotlb = Some(IoTlbPool::new(start, nslabs, nareas, plan.force));
                return Ok((nslabs != plan.nslabs).then_some(plan.nslabs));
            }
            if nslabs <= IO_TLB_MIN_SLABS {
                return Ok(None);
            }
            nslabs = (nslabs >> 1).next_multiple_of(IO_TLB_SEGSIZE);
            nareas = limit_nareas(nareas, nslabs);
        }
    }
}

impl System {
    /// The boot log lines of `swiotlb_init_remap` / `swiotlb_print_info`.
    pub(crate) fn log_swiotlb(&mut self, plan: &BootPlan, asked: Option<usize>) {
        let sub = "software IO TLB";
        let Some(pool) = self.kernel.swiotlb.as_ref() else {
            if plan.nslabs > 0 {
                self.printk(
                    sub,
                    format!(
                        "No low mem: no {} below {:#x} for the bounce pool",
                        human_size((plan.nslabs as u64) << IO_TLB_SHIFT),
                        plan.limit
                    ),
                );
            } else {
                self.printk("dmasim", format!("no swiotlb: {}", plan.why));
            }
            return;
        };
        let (start, end, nslabs, nareas) = (pool.start, pool.end(), pool.nslabs, pool.nareas());
        self.printk(sub, format!("area num {nareas}."));
        if let Some(asked) = asked {
            self.printk(
                sub,
                format!("SWIOTLB bounce buffer size adjusted {asked} -> {nslabs} slabs"),
            );
        }
        self.printk(
            sub,
            format!(
                "mapped [mem {start:#018x}-{end:#018x}] ({}MB)",
                (end - start) >> 20
            ),
        );
        self.printk("dmasim", format!("swiotlb: {}", plan.why));
    }

    /// `swiotlb_tbl_map_single()` with its copy in: slots for `[pa, pa+size)` whose
    /// allocation starts on `align_mask + 1`, or `None` (with Linux's log line and
    /// the `swiotlb-full` finding). Counts the bounce for the device.
    pub(crate) fn swiotlb_tbl_map(
        &mut self,
        dev: usize,
        pa: u64,
        size: u64,
        align_mask: u64,
        why: BounceWhy,
    ) -> Option<u64> {
        let name = self.kernel.devices[dev].name.clone();
        let Some(pool) = self.kernel.swiotlb.as_mut() else {
            self.printk(
                &name,
                "Can not allocate SWIOTLB buffer earlier and can't now provide you with the DMA bounce buffer".into(),
            );
            return None;
        };
        let d = &self.kernel.devices[dev];
        let limits = DevLimits {
            min_align_mask: d.min_align_mask,
            seg_boundary_mask: d.seg_boundary_mask,
            pool_dma: d.phys_to_dma(pool.start),
        };
        let tlb = match pool.tbl_map_single(&limits, self.cpu, pa, size, align_mask) {
            Ok(tlb) => tlb,
            Err(MapFailure::Full {
                size: sz,
                total,
                used,
            }) => {
                self.kernel.devices[dev].bounce.full += 1;
                self.printk(
                    &name,
                    format!("swiotlb buffer is full (sz: {sz} bytes), total {total} (slots), used {used} (slots)"),
                );
                self.swiotlb_full_finding(dev, pa, size, sz, total, used);
                return None;
            }
        };
        self.swiotlb_bounce(dev, tlb, size, true);
        let ctx = self.ctx();
        let d = &mut self.kernel.devices[dev];
        let limit = d.dma_limit();
        let t = &mut d.bounce;
        t.maps += 1;
        if t.first.is_none() {
            t.first = Some((
                ctx.time_ns,
                ctx.line,
                // Physical addresses only: the buffer's and the slots' (the bus
                // address the device got is in the map event).
                format!("{size} bytes at phys {pa:#x} bounced through the swiotlb slots at phys {tlb:#x} ({})", why.reason()),
            ));
        }
        if why == BounceWhy::BeyondLimit && t.beyond_limit == 0 {
            t.limit_at_first = limit;
        }
        match why {
            BounceWhy::Forced => t.forced += 1,
            BounceWhy::BeyondLimit => t.beyond_limit += 1,
            BounceWhy::KmallocUnaligned => t.kmalloc_unaligned += 1,
            BounceWhy::Untrusted => t.untrusted += 1,
        }
        Some(tlb)
    }

    /// `swiotlb_map()`: slots for `[pa, pa+size)`, the copy in, the address check
    /// and, for a non-coherent device, the clean of the slots. Returns the bus
    /// address and the bounce buffer's physical address, or `DMA_MAPPING_ERROR`
    /// with the log line Linux prints.
    pub(crate) fn swiotlb_map(
        &mut self,
        dev: usize,
        pa: u64,
        size: u64,
        dir: DmaDirection,
        why: BounceWhy,
    ) -> (u64, Option<u64>) {
        let Some(tlb) = self.swiotlb_tbl_map(dev, pa, size, 0, why) else {
            return (DMA_MAPPING_ERROR, None);
        };
        let d = &self.kernel.devices[dev];
        let addr = d.phys_to_dma(tlb);
        if !super::direct::dma_capable(d, addr, size) {
            let (mask, limit) = (d.dma_mask, d.bus_dma_limit);
            let name = d.name.clone();
            let min_align = d.min_align_mask;
            if let Some(pool) = self.kernel.swiotlb.as_mut() {
                pool.release(min_align, tlb);
            }
            self.printk(
                &name,
                format!(
                    "swiotlb addr {addr:#x}+{size} overflow (mask {mask:x}, bus limit {limit:x})."
                ),
            );
            return (DMA_MAPPING_ERROR, None);
        }
        // swiotlb_map: the copy in always happens, the clean of the slots not
        // under DMA_ATTR_SKIP_CPU_SYNC.
        if !self.dev_is_dma_coherent(dev) && !self.kernel.dma_skip_cpu_sync {
            self.arch_sync_dma_for_device(tlb, size, dir);
        }
        (addr, Some(tlb))
    }

    /// `swiotlb_bounce()`: copies between the slots at `tlb` and the original buffer
    /// they stand for — into the slots when `to_device`, out of them otherwise.
    fn swiotlb_bounce(&mut self, dev: usize, tlb: u64, size: u64, to_device: bool) {
        let min_align = self.kernel.devices[dev].min_align_mask;
        let Some(pool) = self.kernel.swiotlb.as_ref() else {
            return;
        };
        let Some((orig, n, clipped)) = pool.locate(min_align, tlb, size) else {
            return;
        };
        if clipped {
            let name = self.kernel.devices[dev].name.clone();
            self.printk(
                &name,
                format!("swiotlb: Buffer overflow detected. Allocation size: {n}. Mapping size: {size}."),
            );
        }
        let (from, to) = if to_device { (orig, tlb) } else { (tlb, orig) };
        let t0 = self.hw.now_ps();
        let mut buf = [0u8; PAGE_SIZE as usize];
        let mut done = 0u64;
        while done < n {
            let (f, t) = (from + done, to + done);
            let k = (PAGE_SIZE - f % PAGE_SIZE)
                .min(PAGE_SIZE - t % PAGE_SIZE)
                .min(n - done) as usize;
            self.hw
                .cpu_read_phys(self.cpu, f, MemType::Normal, &mut buf[..k]);
            self.hw
                .cpu_write_phys(self.cpu, t, MemType::Normal, &buf[..k]);
            done += k as u64;
        }
        if !to_device {
            // The original now holds the device's bytes in the cache; DRAM under it
            // may lag behind the truth.
            self.check.oracle.mark_may_differ(orig, n);
        }
        let dt = self.hw.now_ps() - t0;
        if self.recorder.is_some() {
            let track = format!("CPU {}", self.cpu);
            let dir = if to_device {
                "to the bounce buffer"
            } else {
                "back from the bounce buffer"
            };
            self.record(
                &track,
                || format!("swiotlb copy of {n} bytes {dir}"),
                "copy",
                t0,
                dt,
            );
        }
        if let Some(pool) = self.kernel.swiotlb.as_mut() {
            pool.bounce_bytes += n;
            pool.copy_ps += dt;
        }
        let t = &mut self.kernel.devices[dev].bounce;
        t.bytes += n;
        t.copy_ps += dt;
    }

    /// `is_swiotlb_buffer()`.
    pub fn is_swiotlb_buffer(&self, pa: u64) -> bool {
        self.kernel.swiotlb.as_ref().is_some_and(|p| p.contains(pa))
    }

    /// `swiotlb_sync_single_for_device()`: copy in for `TO_DEVICE`/`BIDIRECTIONAL`.
    pub(crate) fn swiotlb_sync_for_device(
        &mut self,
        dev: usize,
        pa: u64,
        size: u64,
        dir: DmaDirection,
    ) {
        if self.is_swiotlb_buffer(pa) && dir != DmaDirection::FromDevice {
            self.swiotlb_bounce(dev, pa, size, true);
        }
    }

    /// `swiotlb_sync_single_for_cpu()`: copy out for `FROM_DEVICE`/`BIDIRECTIONAL`.
    pub(crate) fn swiotlb_sync_for_cpu(
        &mut self,
        dev: usize,
        pa: u64,
        size: u64,
        dir: DmaDirection,
    ) {
        if self.is_swiotlb_buffer(pa) && dir != DmaDirection::ToDevice {
            self.swiotlb_bounce(dev, pa, size, false);
        }
    }

    /// `swiotlb_tbl_unmap_single()` with `DMA_ATTR_SKIP_CPU_SYNC` (dma-direct copied
    /// already): gives the slots back.
    ///
    /// Linux releases the slots the address and the device's `min_align_mask`
    /// designate without checking that they are in use
    /// (kernel/dma/swiotlb.c: swiotlb_release_slots): after a double unmap, or an
    /// unmap with another device, the pool counts fewer slots than are taken and
    /// may hand a live mapping's slots out again. The model does the same, reports
    /// `allocator-corrupted` once, and marks the pool so that the invariant check
    /// of tests no longer judges its books.
    pub(crate) fn swiotlb_release(&mut self, dev: usize, pa: u64) {
        let min_align = self.kernel.devices[dev].min_align_mask;
        let Some(pool) = self.kernel.swiotlb.as_mut().filter(|p| p.contains(pa)) else {
            return;
        };
        let problem = pool.release_problem(min_align, pa);
        let slots = pool.release(min_align, pa);
        let Some(problem) = problem else {
            return;
        };
        if std::mem::replace(&mut pool.corrupted, true) {
            return;
        }
        let used = pool.used as i64;
        let name = &self.kernel.devices[dev].name;
        self.report_allocator_corrupted(
            dev,
            (pa, None),
            format!("{name}: unmap of the bounce buffer at phys {pa:#x} released {slots} slot(s)"),
            format!("swiotlb pool is now inconsistent: {problem}; it now counts {used} slot(s) in use, fewer than are taken, and a later mapping can get slots a live mapping still uses [phys={pa:#x}]"),
            "unmap each bounced mapping once, with the device and address of its map call: swiotlb frees the slots the unmap designates without checking them (kernel/dma/swiotlb.c: swiotlb_release_slots)",
        );
    }

    /// The `allocator-corrupted` finding of an unmap by `dev` at `at` (address, and
    /// size when the unmap gave one), with the unmap as its history: made once per
    /// allocator, by the caller that marked it corrupted.
    pub(crate) fn report_allocator_corrupted(
        &mut self,
        dev: usize,
        at: (u64, Option<u64>),
        event: String,
        msg: String,
        help: &str,
    ) {
        let name = self.kernel.devices[dev].name.clone();
        let ctx = self.ctx();
        let history = vec![HistoryEvent {
            time_ns: ctx.time_ns,
            line: ctx.line,
            event: event.into(),
        }];
        self.check.report_plain(
            "allocator-corrupted",
            None,
            Some(&name),
            Some(at.0),
            at.1,
            ctx,
            msg,
            help.into(),
            history,
        );
    }

    fn swiotlb_full_finding(
        &mut self,
        dev: usize,
        pa: u64,
        size: u64,
        sz: u64,
        total: u64,
        used: u64,
    ) {
        let name = self.kernel.devices[dev].name.clone();
        let ctx = self.ctx();
        let (msg, help) = if sz > IO_TLB_MAX_MAPPING {
            (
                format!(
                    "swiotlb buffer is full (sz: {sz} bytes): one bounce buffer is at most {} (128 slots of 2 KiB), so a mapping of {} can never bounce [phys={pa:#x}]",
                    human_size(IO_TLB_MAX_MAPPING),
                    human_size(size)
                ),
                "split the transfer into pieces of at most dma_max_mapping_size(dev) (256 KiB with swiotlb), as the block layer does with max_sectors_kb; or avoid bouncing altogether: a wider mask (dma_set_mask), memory the device can reach (GFP_DMA32), or an IOMMU".to_string(),
            )
        } else {
            (
                format!(
                    "swiotlb buffer is full (sz: {sz} bytes), total {total} (slots), used {used} (slots): {} of {} bounce memory is held by live mappings [phys={pa:#x}]",
                    human_size(used.wrapping_mul(2048)),
                    human_size(total * 2048)
                ),
                "unmap bounced buffers as soon as each transfer completes, check every map with dma_mapping_error() and retry later; raise the pool with boot(..., #{ swiotlb: \"128 MiB\" }) (swiotlb= on the kernel command line); or stop bouncing: dma_set_mask(dev, 64) if the hardware can, GFP_DMA32 buffers, or an IOMMU".to_string(),
            )
        };
        let history = vec![HistoryEvent {
            time_ns: ctx.time_ns,
            line: ctx.line,
            event: format!("{name}: map of {size} bytes at phys {pa:#x} needed a bounce buffer")
                .into(),
        }];
        self.check.report_plain(
            "swiotlb-full",
            None,
            Some(&name),
            Some(pa),
            Some(size),
            ctx,
            msg,
            help,
            history,
        );
    }

    /// End of run: one `bounce-buffering` warning per device whose mappings bounced,
    /// with what it cost and the remedy that fits the reason.
    pub(crate) fn report_bounce_buffering(&mut self) {
        for i in 0..self.kernel.devices.len() {
            let d = &self.kernel.devices[i];
            let t = d.bounce.clone();
            if t.maps == 0 {
                continue;
            }
            let name = d.name.clone();
            let copy_ns = t.copy_ps / 1000;
            let mut reasons = Vec::new();
            let mut help = Vec::new();
            if t.beyond_limit > 0 {
                let bus_limited = d.bus_dma_limit != 0 && t.limit_at_first == d.bus_dma_limit;
                reasons.push(format!(
                    "{} were above bus address {:#x}, the device's reach ({})",
                    t.beyond_limit,
                    t.limit_at_first,
                    if bus_limited {
                        "the bus limit from dma-ranges"
                    } else {
                        "its DMA mask"
                    }
                ));
                help.push(if bus_limited {
                    "the bus (dma-ranges) limits the device, not its mask: allocate its buffers where it can reach them (GFP_DMA, dma_alloc_coherent) or put it behind an IOMMU".to_string()
                } else if d.dma_bits > 32 {
                    format!(
                        "the hardware drives {} address bits: say so in probe with dma_set_mask_and_coherent(dev, {}) and nothing bounces; or put it behind an IOMMU",
                        d.dma_bits, d.dma_bits
                    )
                } else {
                    "the hardware drives only 32 address bits: allocate its buffers below 4 GiB (GFP_DMA32, or dma_alloc_coherent), or put it behind an IOMMU, which maps any page below 4 GiB".to_string()
                });
            }
            if t.forced > 0 {
                reasons.push(format!(
                    "{} because swiotlb=force bounces everything",
                    t.forced
                ));
                help.push("swiotlb=force (a confidential guest) bounces every mapping: reuse long-lived mappings and sync them instead of mapping per transfer".to_string());
            }
            if t.kmalloc_unaligned > 0 {
                reasons.push(format!(
                    "{} were small kmalloc buffers the device writes that are not whole cache lines",
                    t.kmalloc_unaligned
                ));
                help.push("give receive buffers at least 2 × ARCH_DMA_MINALIGN (256 bytes on arm64) or a whole number of cache lines".to_string());
            }
            if t.untrusted > 0 {
                reasons.push(format!(
                    "{} were mappings of an untrusted device that do not cover whole 4 KiB IOVA pages, bounced so that it cannot see the rest of those pages",
                    t.untrusted
                ));
                help.push("the bounce is the protection, keep it; to avoid the copies give the device page-aligned buffers of whole pages (alloc_pages, dma_alloc_coherent, a page_pool), which map directly".to_string());
            }
            let msg = format!(
                "{name}: {} mapping(s) bounced through swiotlb, {} copied by the CPU in {} µs of simulated time ({})",
                t.maps,
                human_size(t.bytes),
                copy_ns / 1000,
                reasons.join("; ")
            );
            let (time_ns, line, event) = t.first.clone().unwrap_or_default();
            let at = crate::check::Ctx { time_ns, line };
            let history = vec![HistoryEvent {
                time_ns,
                line,
                event: event.into(),
            }];
            self.check.report_plain(
                "bounce-buffering",
                None,
                Some(&name),
                None,
                Some(t.bytes),
                at,
                msg,
                help.join("; "),
                history,
            );
        }
    }
}
