//! The DMA mapping API's front door (`kernel/dma/mapping.c`, include/linux/dma-mapping.h).
//!
//! Each entry point checks its arguments as Linux does, picks the implementation
//! (dma-direct today; dma-iommu and swiotlb plug in here), charges the call's cost and
//! then calls the sanitizer's hook, as mapping.c calls `debug_dma_*` after each
//! operation. Results are Linux's: a bus address or `DMA_MAPPING_ERROR`, 0 or −errno,
//! `None` for NULL.

use crate::check::{BufferRef, HistoryEvent, MapKind, NewMapping, SKIP_CPU_SYNC_FIRST};
use crate::config::PAGE_SIZE;
use crate::hw::mmu::MemType;
use crate::kernel::dma::{dma_bit_mask, DmaDirection, DMA_ATTR_SKIP_CPU_SYNC, DMA_MAPPING_ERROR};
use crate::kernel::mm::page_alloc::get_order;
use crate::kernel::{errno, Backing, BufKind, Buffer};
use crate::system::{Result, SimError, System};

use super::direct::page_align;

impl System {
    pub(crate) fn mapping_room(&self) -> Result<()> {
        if self.check.live_mappings() >= crate::check::MAX_LIVE_MAPPINGS {
            return Err(SimError::Invalid(format!(
                "more than {} live DMA mappings: the driver maps without unmapping",
                crate::check::MAX_LIVE_MAPPINGS
            )));
        }
        Ok(())
    }

    pub(crate) fn device_checked(&self, dev: usize, call: &str) -> Result<()> {
        match self.kernel.devices.get(dev) {
            None => Err(SimError::Invalid(format!("{call}: no device #{dev}"))),
            Some(d) if !d.bound => Err(SimError::Invalid(format!(
                "{call}: device {} was removed (remove_device)",
                d.name
            ))),
            Some(d) if d.vfio => Err(SimError::Invalid(format!(
                "{call}: {} is bound to vfio-pci: user space drives it, no kernel driver may map for it",
                d.name
            ))),
            Some(_) => Ok(()),
        }
    }

    pub(crate) fn valid_dir(call: &str, dir: DmaDirection) -> Result<()> {
        if dir.is_valid() {
            Ok(())
        } else {
            // BUG_ON(!valid_dma_direction(dir)) in mapping.c: a kernel crash.
            Err(SimError::Invalid(format!(
                "kernel BUG at kernel/dma/mapping.c: {call} with DMA_NONE"
            )))
        }
    }

    pub(crate) fn buffer_ref_phys(&self, pa: u64) -> Option<BufferRef> {
        let b = self.kernel.buffer_at_phys(pa)?;
        Some(BufferRef {
            id: b.id,
            pa: b.phys,
            len: b.len,
            alloc: b.alloc.clone(),
        })
    }

    fn buffer_ref(&self, va: u64) -> Option<BufferRef> {
        let b = self.kernel.buffer_at_va(va)?;
        Some(BufferRef {
            id: b.id,
            pa: b.phys,
            len: b.len,
            alloc: b.alloc.clone(),
        })
    }

    /// `dma-mask-default`: the first mapping or allocation of a device whose driver
    /// never set a mask, on a machine with RAM above 4 GiB (where the 32-bit
    /// default means bounce buffers or failed allocations).
    pub(crate) fn dma_mask_default_check(&mut self, dev: usize) {
        let d = &self.kernel.devices[dev];
        if d.mask_set || self.kernel.ram_end <= 1 << 32 || d.dma_mask > dma_bit_mask(32) {
            return;
        }
        let name = d.name.clone();
        let above = self.kernel.ram_end - (1 << 32);
        self.kernel.devices[dev].mask_set = true; // once per device
        let ctx = self.ctx();
        self.check.report_plain(
            "dma-mask-default",
            None,
            Some(&name),
            None,
            None,
            ctx,
            format!("{name} maps DMA with the default 32-bit mask on a machine with {} of RAM above 4 GiB: buffers there will bounce through swiotlb (or fail without it) and coherent allocations are squeezed into ZONE_DMA/ZONE_DMA32", crate::units::human_size(above)),
            "in probe, call dma_set_mask_and_coherent(dev, DMA_BIT_MASK(n)) with the address width the hardware really drives, and check its result".into(),
            vec![],
        );
    }

    /// `dma_max_mapping_size()` (`dma_direct_max_mapping_size`): the swiotlb limit
    /// (256 KiB less `min_align_mask` padding) when the pool exists and the device
    /// is addressing-limited or forced to bounce; otherwise unlimited (`SIZE_MAX`,
    /// shown as `i64::MAX` to scripts). Behind an IOMMU (`iommu_dma_max_mapping_size`)
    /// only an untrusted device has the swiotlb limit.
    pub fn dma_max_mapping_size(&self, dev: usize) -> u64 {
        let d = &self.kernel.devices[dev];
        if self.use_dma_iommu(dev) {
            // iommu_dma_max_mapping_size: only an untrusted device's mappings may
            // bounce whole, so only they are bounded by the swiotlb segment.
            return if d.untrusted {
                crate::kernel::dma::swiotlb::swiotlb_max_mapping_size(d.min_align_mask)
            } else {
                i64::MAX as u64
            };
        }
        match self.kernel.swiotlb.as_ref() {
            Some(p) if p.force || self.dma_addressing_limited(dev) => {
                crate::kernel::dma::swiotlb::swiotlb_max_mapping_size(d.min_align_mask)
            }
            _ => i64::MAX as u64,
        }
    }

    /// `dma_addressing_limited()`: the device's limit is below the highest RAM
    /// address as a bus address (`dma_direct_get_required_mask`).
    pub fn dma_addressing_limited(&self, dev: usize) -> bool {
        let d = &self.kernel.devices[dev];
        let top = d.phys_to_dma(self.kernel.ram_end - 1);
        let required = if top == 0 {
            0
        } else {
            u64::MAX >> top.leading_zeros()
        };
        d.dma_limit() < required
    }

    /// `dma_supported()`: dma-iommu accepts every mask (the IOVA allocator honours
    /// it); dma-direct asks `dma_direct_supported`.
    pub fn dma_supported(&self, dev: usize, mask: u64) -> bool {
        self.use_dma_iommu(dev) || self.dma_direct_supported(dev, mask)
    }

    /// `dma_set_mask()`: 0, or −EIO when `dma_supported()` refuses the mask.
    pub fn dma_set_mask(&mut self, dev: usize, bits: i64) -> Result<i64> {
        self.device_checked(dev, "dma_set_mask")?;
        if !(1..=64).contains(&bits) || !self.dma_supported(dev, dma_bit_mask(bits as u32)) {
            return Ok(-errno::EIO);
        }
        self.kernel.devices[dev].dma_mask = dma_bit_mask(bits as u32);
        self.kernel.devices[dev].mask_set = true;
        Ok(0)
    }

    /// `dma_set_coherent_mask()`: 0 or −EIO.
    pub fn dma_set_coherent_mask(&mut self, dev: usize, bits: i64) -> Result<i64> {
        self.device_checked(dev, "dma_set_coherent_mask")?;
        if !(1..=64).contains(&bits) || !self.dma_supported(dev, dma_bit_mask(bits as u32)) {
            return Ok(-errno::EIO);
        }
        self.kernel.devices[dev].coherent_dma_mask = dma_bit_mask(bits as u32);
        self.kernel.devices[dev].mask_set = true;
        Ok(0)
    }

    /// `dma_set_mask_and_coherent()`: the coherent mask is set only if the streaming
    /// one was; returns `dma_set_mask`'s result.
    pub fn dma_set_mask_and_coherent(&mut self, dev: usize, bits: i64) -> Result<i64> {
        let r = self.dma_set_mask(dev, bits)?;
        if r == 0 {
            self.dma_set_coherent_mask(dev, bits)?;
        }
        Ok(r)
    }

    /// `dma_map_single(dev, ptr, size, dir)`: maps `size` bytes at kernel virtual
    /// address `va`. Memory outside the linear map is refused ("rejecting DMA map of
    /// vmalloc memory") with `DMA_MAPPING_ERROR`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for `DMA_NONE` (a kernel BUG) or an unknown device.
    pub fn dma_map_single(
        &mut self,
        dev: usize,
        va: u64,
        size: u64,
        dir: DmaDirection,
    ) -> Result<u64> {
        self.map_linear(dev, va, size, dir, MapKind::Single)
    }

    /// `dma_map_page(dev, page, offset, size, dir)`, with the page given by the linear
    /// address of its first byte plus the offset folded into `va`.
    ///
    /// # Errors
    /// As [`System::dma_map_single`].
    pub fn dma_map_page(
        &mut self,
        dev: usize,
        va: u64,
        size: u64,
        dir: DmaDirection,
    ) -> Result<u64> {
        self.map_linear(dev, va, size, dir, MapKind::Page)
    }

    /// `dma_map_single_attrs()` / `dma_map_page_attrs()` (by `kind`). Of the
    /// attributes only `DMA_ATTR_SKIP_CPU_SYNC` changes a streaming map: no cache
    /// maintenance (a bounce buffer is still filled), and the driver owes the
    /// first `dma_sync_single_for_device` — page_pool maps its pages this way and
    /// syncs each one before the NIC gets it (`PP_FLAG_DMA_SYNC_DEV`).
    ///
    /// # Errors
    /// As [`System::dma_map_single`].
    pub fn dma_map_attrs(
        &mut self,
        dev: usize,
        va: u64,
        size: u64,
        dir: DmaDirection,
        kind: MapKind,
        attrs: u64,
    ) -> Result<u64> {
        self.skipping_cpu_sync(attrs & DMA_ATTR_SKIP_CPU_SYNC != 0, |sys| {
            sys.map_linear(dev, va, size, dir, kind)
        })
    }

    /// Runs `f` as a call made with `DMA_ATTR_SKIP_CPU_SYNC` when `skip`: no cache
    /// maintenance, no copy out of a bounce buffer (the flag lives only for `f`).
    pub(crate) fn skipping_cpu_sync<T>(&mut self, skip: bool, f: impl FnOnce(&mut Self) -> T) -> T {
        self.kernel.dma_skip_cpu_sync = skip;
        let r = f(self);
        self.kernel.dma_skip_cpu_sync = false;
        r
    }

    /// `dma_unmap_single_attrs()` / `dma_unmap_page_attrs()`: with
    /// `DMA_ATTR_SKIP_CPU_SYNC` no invalidate and no copy out of a bounce buffer.
    ///
    /// # Errors
    /// As [`System::dma_unmap`].
    pub fn dma_unmap_attrs(
        &mut self,
        dev: usize,
        addr: u64,
        size: u64,
        dir: DmaDirection,
        kind: MapKind,
        attrs: u64,
    ) -> Result<()> {
        self.skipping_cpu_sync(attrs & DMA_ATTR_SKIP_CPU_SYNC != 0, |sys| {
            sys.dma_unmap(dev, addr, size, dir, kind)
        })
    }

    fn map_linear(
        &mut self,
        dev: usize,
        va: u64,
        size: u64,
        dir: DmaDirection,
        kind: MapKind,
    ) -> Result<u64> {
        let call = if kind == MapKind::Single {
            "dma_map_single"
        } else {
            "dma_map_page"
        };
        self.device_checked(dev, call)?;
        Self::valid_dir(call, dir)?;
        self.mapping_room()?;
        self.step();
        self.hw.advance(self.cfg.cost.dma_call_ps);
        let name = self.kernel.devices[dev].name.clone();
        let linear = self
            .kernel
            .virt_to_phys(va)
            .filter(|&pa| self.hw.dram.contains(pa, size.max(1)));
        let pa = match linear {
            Some(pa) => pa,
            None => {
                // dma_map_single refuses vmalloc addresses (WARN, DMA_MAPPING_ERROR);
                // any other address goes through virt_to_page unchecked and yields a
                // physical address that has nothing to do with the buffer.
                let vmalloc = va >= self.cfg.vmalloc_start
                    && va < self.cfg.vmalloc_start.saturating_add(1 << 40);
                let bogus = self.kernel.virt_to_phys_unchecked(va);
                let what = self
                    .kernel
                    .buffer_at_va(va)
                    .map_or("an address outside the linear map".to_string(), |b| {
                        format!("{} buffer #{}", b.kind.name(), b.id)
                    });
                let reached = if vmalloc {
                    self.printk(
                        &name,
                        format!("rejecting DMA map of vmalloc memory [addr={va:#x}]"),
                    );
                    "the kernel refused it (DMA_MAPPING_ERROR)".to_string()
                } else if self.hw.dram.contains(bogus, size.max(1)) {
                    format!("virt_to_page made it physical {bogus:#x}, someone else's memory, which the device will now really use")
                } else {
                    format!("virt_to_page made it physical {bogus:#x}, which is not RAM")
                };
                let ctx = self.ctx();
                self.check.report_plain(
                    "map-non-linear",
                    None,
                    Some(&name),
                    Some(va),
                    Some(size),
                    ctx,
                    format!("{call} of {what} at {va:#x}: only the linear map (kmalloc, alloc_pages) has a physical address the kernel can compute from the virtual one; {reached}"),
                    "allocate DMA buffers with kmalloc/alloc_pages, or use dma_alloc_coherent; map vmalloc or user memory page by page (pin_user_pages + sg)".into(),
                    vec![],
                );
                if vmalloc || !self.hw.dram.contains(bogus, size.max(1)) {
                    return Ok(DMA_MAPPING_ERROR);
                }
                bogus
            }
        };
        self.dma_mask_default_check(dev);
        let (addr, bounce) = if self.use_dma_iommu(dev) {
            self.iommu_dma_map_phys(dev, pa, size, dir)
        } else {
            self.dma_direct_map_phys(dev, pa, size, dir)
        };
        if addr != DMA_MAPPING_ERROR {
            let buffer = self.buffer_ref(va);
            let skip = self.kernel.dma_skip_cpu_sync;
            let mut m = NewMapping::new(dev, name, addr, size, pa, dir, kind).skip_cpu_sync(skip);
            if skip {
                m = m.cpu_first(SKIP_CPU_SYNC_FIRST);
            }
            self.sanitizer_map(
                m.buffer(buffer)
                    .bounce(bounce)
                    .what(std::borrow::Cow::Borrowed(match (kind, dir) {
                        (MapKind::Single, DmaDirection::ToDevice) => "dma_map_single TO_DEVICE",
                        (MapKind::Single, DmaDirection::FromDevice) => "dma_map_single FROM_DEVICE",
                        (MapKind::Single, _) => "dma_map_single BIDIRECTIONAL",
                        (_, DmaDirection::ToDevice) => "dma_map_page TO_DEVICE",
                        (_, DmaDirection::FromDevice) => "dma_map_page FROM_DEVICE",
                        _ => "dma_map_page BIDIRECTIONAL",
                    })),
            );
        }
        Ok(addr)
    }

    /// `dma_unmap_single()` / `dma_unmap_page()`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for `DMA_NONE` or an unknown device.
    pub fn dma_unmap(
        &mut self,
        dev: usize,
        addr: u64,
        size: u64,
        dir: DmaDirection,
        kind: MapKind,
    ) -> Result<()> {
        let call = if kind == MapKind::Page {
            "dma_unmap_page"
        } else {
            "dma_unmap_single"
        };
        self.device_checked(dev, call)?;
        Self::valid_dir(call, dir)?;
        self.step();
        self.dmaengine_release_check(dev, addr, size, call);
        self.hw.advance(self.cfg.cost.dma_call_ps);
        if self.use_dma_iommu(dev) {
            if addr != DMA_MAPPING_ERROR {
                self.iommu_dma_unmap_phys(dev, addr, size, dir);
            }
        } else {
            self.dma_direct_unmap_phys(dev, addr, size, dir);
        }
        let ctx = self.ctx();
        let name = &self.kernel.devices[dev].name;
        let skip = self.kernel.dma_skip_cpu_sync;
        self.check
            .unmap(&mut self.hw, ctx, dev, name, addr, size, dir, kind, skip);
        Ok(())
    }

    /// `dma_sync_single_for_cpu()` (`for_cpu` = true) or `dma_sync_single_for_device()`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for `DMA_NONE` or an unknown device.
    pub fn dma_sync_single(
        &mut self,
        dev: usize,
        addr: u64,
        size: u64,
        dir: DmaDirection,
        for_cpu: bool,
    ) -> Result<()> {
        let call = if for_cpu {
            "dma_sync_single_for_cpu"
        } else {
            "dma_sync_single_for_device"
        };
        self.dma_sync_single_as(dev, addr, size, dir, for_cpu, call)
    }

    /// [`System::dma_sync_single`] on behalf of `call`, the public call that syncs
    /// (`dma_sync_sg_for_cpu` syncs entry by entry): its name goes into errors and
    /// the mapping's history.
    pub(crate) fn dma_sync_single_as(
        &mut self,
        dev: usize,
        addr: u64,
        size: u64,
        dir: DmaDirection,
        for_cpu: bool,
        call: &str,
    ) -> Result<()> {
        self.device_checked(dev, call)?;
        Self::valid_dir(call, dir)?;
        self.step();
        self.hw.advance(self.cfg.cost.dma_call_ps);
        if self.use_dma_iommu(dev) {
            self.iommu_dma_sync(dev, addr, size, dir, for_cpu);
        } else {
            self.dma_direct_sync(dev, addr, size, dir, for_cpu);
        }
        let name = self.kernel.devices[dev].name.clone();
        let ctx = self.ctx();
        self.check
            .sync(&self.hw, ctx, dev, &name, addr, size, dir, for_cpu, call);
        Ok(())
    }

    /// Tells the sanitizer about a new mapping, at this moment and script line.
    pub(crate) fn sanitizer_map(&mut self, m: NewMapping) -> u64 {
        let ctx = self.ctx();
        self.check.map(&mut self.hw, ctx, m)
    }

    /// `memset(va, 0, bytes)` by the kernel through its own mapping of a new DMA
    /// allocation (cacheable or not, as mapped), a page at a time so that a large
    /// buffer needs no host buffer of its size; then the run's limits.
    pub(crate) fn zero_new_allocation(&mut self, va: u64, bytes: u64) -> Result<()> {
        const ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
        for off in (0..bytes).step_by(PAGE_SIZE as usize) {
            let n = (bytes - off).min(PAGE_SIZE) as usize;
            self.hw
                .cpu_write(self.cpu, 0, va + off, &ZEROS[..n])
                .map_err(SimError::PagingRequest)?;
        }
        self.check_limits()
    }

    /// What every allocating DMA call does first: check the device (and the
    /// direction), make room for a mapping, take the call's step and cost, warn
    /// about a default mask; the device's name.
    pub(crate) fn dma_alloc_prologue(
        &mut self,
        dev: usize,
        call: &str,
        dir: Option<DmaDirection>,
    ) -> Result<std::sync::Arc<str>> {
        self.device_checked(dev, call)?;
        if let Some(dir) = dir {
            Self::valid_dir(call, dir)?;
        }
        self.mapping_room()?;
        self.step();
        self.hw.advance(self.cfg.cost.dma_call_ps);
        self.dma_mask_default_check(dev);
        Ok(self.kernel.devices[dev].name.clone())
    }

    /// What the frees of CPU-first allocations do first: check the device and the
    /// direction, take the call's step and cost; the device's name.
    pub(crate) fn dma_free_prologue(
        &mut self,
        dev: usize,
        call: &str,
        dir: DmaDirection,
    ) -> Result<std::sync::Arc<str>> {
        self.device_checked(dev, call)?;
        Self::valid_dir(call, dir)?;
        self.step();
        self.hw.advance(self.cfg.cost.dma_call_ps);
        Ok(self.kernel.devices[dev].name.clone())
    }

    /// `dma_mapping_error()`: true when `addr` is `DMA_MAPPING_ERROR` (Linux returns
    /// −ENOMEM then); tells the sanitizer the result was checked.
    pub fn dma_mapping_error(&mut self, dev: usize, addr: u64) -> bool {
        self.check.mapping_error(dev, addr);
        addr == DMA_MAPPING_ERROR
    }

    /// `dma_alloc_coherent()`: a buffer both the CPU and the device can use without
    /// syncs. For a non-coherent device on arm64 the pages' linear alias is cleaned
    /// (`arch_dma_prep_coherent`) and the pages are remapped Normal-NC in the vmalloc
    /// area (`DMA_DIRECT_REMAP`); a coherent device gets cacheable linear-map memory.
    /// The memory is zeroed. Returns the buffer id, or `None` (NULL).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device; the memory cap.
    pub fn dma_alloc_coherent(&mut self, dev: usize, size: u64) -> Result<Option<u64>> {
        self.dma_alloc_coherent_gfp(dev, size, crate::kernel::mm::gfp::GFP_KERNEL)
    }

    /// [`System::dma_alloc_coherent`] with the caller's `gfp`. A context that
    /// cannot sleep (`GFP_ATOMIC`, no `__GFP_DIRECT_RECLAIM`) never gets CMA:
    /// `dma_alloc_contiguous` returns NULL when `!gfpflags_allow_blocking(gfp)`
    /// (kernel/dma/contiguous.c), since cma_alloc may migrate pages and sleep; the
    /// pages come from the buddy allocator. (Linux serves a non-coherent device from
    /// the atomic pool then; the model remaps buddy pages instead.)
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device; the memory cap.
    pub fn dma_alloc_coherent_gfp(
        &mut self,
        dev: usize,
        size: u64,
        gfp: u64,
    ) -> Result<Option<u64>> {
        let blocking = gfp & crate::kernel::mm::gfp::GFP_DIRECT_RECLAIM != 0;
        let name = self.dma_alloc_prologue(dev, "dma_alloc_coherent", None)?;
        let order = get_order(size);
        let bytes = page_align(size);
        if size == 0 {
            self.alloc_failed(&name, "dma_alloc_coherent", size, order, None);
            return Ok(None);
        }
        if self.use_dma_iommu(dev) {
            return self.iommu_dma_alloc(dev, size);
        }
        let cma = if blocking {
            self.dma_alloc_contiguous(dev, &name, bytes)
        } else {
            None
        };
        if blocking
            && cma.is_none()
            && self.kernel.pages.cma.is_some()
            && order > crate::config::MAX_PAGE_ORDER
        {
            // Only CMA could serve a block this large; its failure was reported.
            return Ok(None);
        }
        let (pfn, cma_pages) = match cma {
            Some(pfn) => (pfn, Some(bytes / PAGE_SIZE)),
            None => {
                match self.dma_direct_alloc_pages(dev, &name, bytes, order, "dma_alloc_coherent")? {
                    Some(pfn) => (pfn, None),
                    None => return Ok(None),
                }
            }
        };
        let pa = pfn * PAGE_SIZE;
        let span = cma_pages.map_or(PAGE_SIZE << order, |c| c * PAGE_SIZE);
        let coherent = self.dev_is_dma_coherent(dev);
        let (va, backing) = if coherent {
            let b = match cma_pages {
                Some(count) => Backing::Cma {
                    count,
                    remapped: false,
                },
                None => Backing::Pages(order),
            };
            (self.kernel.phys_to_virt(pa), b)
        } else {
            self.arch_dma_prep_coherent(pa, span);
            let va = self.kernel.vmalloc_range(span);
            for i in 0..span / PAGE_SIZE {
                self.hw
                    .mmu
                    .map_page(0, va + i * PAGE_SIZE, pa + i * PAGE_SIZE, MemType::NormalNc);
            }
            let b = match cma_pages {
                Some(count) => Backing::Cma {
                    count,
                    remapped: true,
                },
                None => Backing::Remapped(order),
            };
            (va, b)
        };
        // memset(ret, 0, size) through the new mapping.
        self.zero_new_allocation(va, bytes)?;
        let addr = self.kernel.devices[dev].phys_to_dma(pa);
        let alloc = HistoryEvent {
            time_ns: self.ctx().time_ns,
            line: self.line,
            event: format!("dma_alloc_coherent({size}) = {va:#x} [phys={pa:#x}] [dma={addr:#x}]")
                .into(),
        };
        let id = self.kernel.add_buffer(Buffer::for_device(
            BufKind::Coherent,
            dev,
            va,
            size,
            pa,
            addr,
            alloc.clone(),
            backing,
        ));
        self.sanitizer_map(
            NewMapping::new(
                dev,
                name,
                addr,
                size,
                pa,
                DmaDirection::Bidirectional,
                MapKind::Coherent,
            )
            .buffer(Some(BufferRef {
                id,
                pa,
                len: size,
                alloc,
            }))
            .what(std::borrow::Cow::Borrowed(if coherent {
                "dma_alloc_coherent (cacheable, coherent device)"
            } else {
                "dma_alloc_coherent (Normal-NC remap)"
            })),
        );
        Ok(Some(id))
    }

    /// `dma_free_coherent(dev, size, cpu_addr, dma_handle)`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device.
    pub fn dma_free_coherent(&mut self, dev: usize, size: u64, buffer: u64) -> Result<()> {
        self.device_checked(dev, "dma_free_coherent")?;
        self.step();
        let name = self.kernel.devices[dev].name.clone();
        let ctx = self.ctx();
        let Some(b) = self
            .kernel
            .buffers
            .get(&buffer)
            .filter(|b| b.kind == BufKind::Coherent)
            .cloned()
        else {
            self.check.report_plain(
                "coherent-free-mismatch",
                None,
                Some(&name),
                None,
                Some(size),
                ctx,
                "device driver frees DMA memory it has not allocated (not a live dma_alloc_coherent buffer)".into(),
                "free each coherent buffer once, with the device, size and buffer it was allocated with".into(),
                vec![],
            );
            return Ok(());
        };
        let addr = b.dma.unwrap_or(DMA_MAPPING_ERROR);
        self.dmaengine_release_check(dev, addr, b.len, "dma_free_coherent");
        if b.dev != Some(dev) {
            self.check.report_plain(
                "coherent-free-mismatch",
                None,
                Some(&name),
                Some(addr),
                Some(size),
                ctx,
                format!(
                    "device driver frees DMA memory of another device [device address={addr:#x}]"
                ),
                "free a coherent buffer with the device that allocated it".into(),
                vec![b.alloc.clone()],
            );
            return Ok(());
        }
        self.check.unmap(
            &mut self.hw,
            ctx,
            dev,
            &name,
            addr,
            size,
            DmaDirection::Bidirectional,
            MapKind::Coherent,
            false,
        );
        if self.use_dma_iommu(dev) {
            self.iommu_dma_unmap_raw(dev, addr, b.len);
        }
        self.release_buffer(&b);
        Ok(())
    }

    /// Gives a buffer's memory back and forgets it.
    pub(crate) fn release_buffer(&mut self, b: &Buffer) {
        match &b.backing {
            &Backing::Slab(obj) => {
                let Self { kernel, .. } = self;
                kernel.slab.kfree(&mut kernel.pages, b.phys, obj);
            }
            &Backing::Pages(order) => self.kernel.pages.free_pages(b.phys / PAGE_SIZE, order),
            &Backing::Remapped(order) => {
                for i in 0..(1u64 << order) {
                    self.hw.mmu.unmap_page(0, b.va + i * PAGE_SIZE);
                }
                self.kernel.pages.free_pages(b.phys / PAGE_SIZE, order);
            }
            &Backing::Cma { count, remapped } => {
                if remapped {
                    for i in 0..count {
                        self.hw.mmu.unmap_page(0, b.va + i * PAGE_SIZE);
                    }
                }
                self.cma_release(b.phys / PAGE_SIZE, count);
            }
            Backing::Vmalloc(pfns) => {
                for (i, &pfn) in pfns.iter().enumerate() {
                    self.hw.mmu.unmap_page(0, b.va + i as u64 * PAGE_SIZE);
                    self.kernel.pages.free_pages(pfn, 0);
                }
            }
        }
        self.kernel.remove_buffer(b.id);
        let ctx = self.ctx();
        self.check.free_buffer(&mut self.hw, ctx, b.id);
    }

    /// `dmam_alloc_coherent(dev, size, &handle, gfp)` (kernel/dma/mapping.c):
    /// `dma_alloc_coherent` plus a devres entry (`dmam_release`) that frees the
    /// buffer when the driver unbinds, so it is no leak at `remove_device`.
    ///
    /// # Errors
    /// As [`System::dma_alloc_coherent`].
    pub fn dmam_alloc_coherent(&mut self, dev: usize, size: u64) -> Result<Option<u64>> {
        let id = self.dma_alloc_coherent(dev, size)?;
        if let Some(b) = id.and_then(|id| self.kernel.buffers.get_mut(&id)) {
            b.managed = true;
        }
        Ok(id)
    }

    /// devres at driver unbind (`devres_release_all`, newest first): every live
    /// `dmam_alloc_coherent` buffer of `dev` is freed with `dma_free_coherent`.
    ///
    /// # Errors
    /// As [`System::dma_free_coherent`].
    pub(crate) fn dmam_coherent_release(&mut self, dev: usize) -> Result<()> {
        let mut ids: Vec<(u64, u64)> = self
            .kernel
            .buffers
            .values()
            .filter(|b| b.managed && b.dev == Some(dev) && b.kind == BufKind::Coherent)
            .map(|b| (b.id, b.len))
            .collect();
        ids.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
        for (id, len) in ids {
            self.dma_free_coherent(dev, len, id)?;
        }
        Ok(())
    }

    /// `dma_get_cache_alignment()` (include/linux/dma-mapping.h): the alignment a
    /// buffer shared with a non-coherent device needs so that no other data shares
    /// its cache lines — on arm64 `cache_line_size()`, the CTR_EL0 write-back
    /// granule (64 on A53/A72), on ARMv7 `ARCH_DMA_MINALIGN`, 1 on x86: the one
    /// platform rule in [`crate::config::PlatformConfig::dma_get_cache_alignment`].
    pub fn dma_get_cache_alignment(&self) -> u64 {
        self.cfg.dma_get_cache_alignment()
    }

    /// `remove_device`: driver unbind. dma-debug reports the device's live mappings.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device.
    pub fn remove_device(&mut self, dev: usize) -> Result<()> {
        self.device_checked(dev, "remove_device")?;
        self.step();
        // devres runs before the bus notifier that makes dma-debug look for leaks.
        self.dmam_pools_release(dev)?;
        self.dmam_coherent_release(dev)?;
        let ctx = self.ctx();
        self.check
            .leaks(&mut self.hw, ctx, Some(dev), "while released from device");
        self.kernel.devices[dev].bound = false;
        let name = self.kernel.devices[dev].name.clone();
        self.printk(&name, "driver unbound".into());
        Ok(())
    }
}
