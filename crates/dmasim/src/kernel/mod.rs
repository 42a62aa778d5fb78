//! The Linux machinery above the silicon: boot-time memory layout, the page
//! allocator and kmalloc, devices, and the DMA mapping API.
//!
//! File and function names mirror Linux (`kernel/dma/mapping.c`, `direct.c`,
//! `mm/page_alloc.c`...) so a kernel engineer finds each place at once. The kernel
//! drives the machine only through what a real kernel has: loads and stores, cache
//! maintenance by address and page-table updates.

pub mod device;
pub mod dma;
pub mod dmaengine;
pub mod iommu;
pub mod mm;
pub mod page_pool;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::HistoryEvent;
use crate::config::{Arch, PlatformConfig, PAGE_SIZE};
use device::Device;
use mm::gfp::MAX_NR_ZONES;
use mm::page_alloc::{Node, ZoneLayout};
use mm::slab::{Slab, SlabObj};

/// Bytes at the start of RAM that the kernel image, its page tables and early
/// allocations occupy (an arm64 defconfig Image is about 30-40 MiB).
pub const KERNEL_RESERVED: u64 = 32 << 20;

/// Where the zones end on a platform (`zone_sizes_init` of each arch): ZONE_DMA up to
/// `zone_dma_limit`, ZONE_DMA32 up to 4 GiB (empty when ZONE_DMA already reaches it,
/// as on arm64), ZONE_NORMAL the rest.
pub fn zone_layout(p: &PlatformConfig) -> ZoneLayout {
    let ram_end = p.ram_base + p.ram;
    let mut configured = [false; MAX_NR_ZONES];
    let mut ends = [ram_end; MAX_NR_ZONES];
    match p.arch {
        Arch::Arm64 | Arch::X86_64 => {
            configured[0] = true;
            configured[1] = p.zone_dma32;
            configured[2] = true;
            ends[0] = p.zone_dma_limit.saturating_add(1);
            ends[1] = 1 << 32;
        }
        Arch::Arm32 => {
            // ZONE_DMA only where the machine selects it, no ZONE_DMA32 on arm,
            // ZONE_HIGHMEM past lowmem (arch/arm/mm/init.c).
            configured[0] = true;
            configured[2] = true;
            configured[3] = true;
            ends[0] = p.zone_dma_limit.saturating_add(1);
            ends[2] = p.ram_base + p.lowmem.min(p.ram);
        }
    }
    ZoneLayout { configured, ends }
}

/// Memory the kernel holds from boot (memblock reservations): the kernel image, and
/// on x86 the first MiB (real-mode and BIOS data); the x86 kernel is loaded at
/// `CONFIG_PHYSICAL_START` = 16 MiB, above ZONE_DMA, the arm64 Image near the start
/// of RAM.
pub fn boot_reservations(p: &PlatformConfig) -> Vec<(u64, u64)> {
    let image = KERNEL_RESERVED.min(p.ram / 4);
    match p.arch {
        Arch::Arm64 | Arch::Arm32 => vec![(p.ram_base, p.ram_base + image)],
        Arch::X86_64 => vec![
            (p.ram_base, p.ram_base + (1 << 20)),
            (16 << 20, (16 << 20) + image),
        ],
    }
}

/// `__kmalloc_minalign()` (mm/slab_common.c): with
/// `CONFIG_DMA_BOUNCE_UNALIGNED_KMALLOC` (arm64) and a swiotlb pool, small kmalloc
/// caches are only `ARCH_KMALLOC_MINALIGN` (8) aligned, because dma-direct bounces
/// the unaligned ones a non-coherent device writes; otherwise objects are aligned
/// for DMA to `dma_get_cache_alignment()`: on arm64 the run-time
/// `cache_line_size()` (64 on Cortex-A53/A72), not the compile-time
/// `ARCH_DMA_MINALIGN` of 128. x86's 1 leaves SLUB's own 8.
pub fn kmalloc_minalign(p: &PlatformConfig) -> u64 {
    if p.arch == Arch::Arm64 && dma::swiotlb::boot_plan(p).nslabs > 0 {
        8
    } else {
        // mm/slab_common.c: __kmalloc_minalign, max(minalign, arch_slab_minalign()).
        p.dma_get_cache_alignment().max(8)
    }
}

/// What kind of memory a buffer is (`Buffer.kind` in scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BufKind {
    /// `kmalloc`: linear map, physically contiguous, cacheable.
    Kmalloc,
    /// `alloc_pages`: linear map, physically contiguous, cacheable.
    Pages,
    /// `dma_alloc_coherent`.
    Coherent,
    /// `dma_alloc_noncoherent`: linear map, cacheable, synced like a streaming
    /// mapping.
    Noncoherent,
    /// `dma_alloc_noncontiguous`: cacheable, one DMA segment, synced like a
    /// streaming mapping.
    Noncontiguous,
    /// `vmalloc`: virtually contiguous, physically scattered.
    Vmalloc,
}

impl BufKind {
    /// The script-visible name.
    pub fn name(self) -> &'static str {
        match self {
            BufKind::Kmalloc => "kmalloc",
            BufKind::Pages => "pages",
            BufKind::Coherent => "coherent",
            BufKind::Noncoherent => "noncoherent",
            BufKind::Noncontiguous => "noncontiguous",
            BufKind::Vmalloc => "vmalloc",
        }
    }
}

/// A live allocation.
#[derive(Debug, Clone)]
pub struct Buffer {
    /// Unique id for this run.
    pub id: u64,
    /// Kind.
    pub kind: BufKind,
    /// CPU virtual address.
    pub va: u64,
    /// Length asked for.
    pub len: u64,
    /// Physical address of the first byte.
    pub phys: u64,
    /// Bus address (coherent buffers).
    pub dma: Option<u64>,
    /// Owning device (coherent buffers).
    pub dev: Option<usize>,
    /// Allocation event for histories.
    pub alloc: HistoryEvent,
    /// Device-managed (`dmam_alloc_coherent`): devres frees it at driver unbind.
    pub managed: bool,
    /// How to give the memory back.
    pub(crate) backing: Backing,
}

impl Buffer {
    /// A CPU-side allocation (no device, no bus address); the id is set when the
    /// kernel registers it.
    pub(crate) fn cpu(
        kind: BufKind,
        va: u64,
        len: u64,
        phys: u64,
        alloc: HistoryEvent,
        backing: Backing,
    ) -> Buffer {
        Buffer {
            id: 0,
            kind,
            va,
            len,
            phys,
            dma: None,
            dev: None,
            alloc,
            managed: false,
            backing,
        }
    }

    /// A DMA allocation of device `dev` at bus address `dma` (coherent,
    /// noncoherent, noncontiguous).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn for_device(
        kind: BufKind,
        dev: usize,
        va: u64,
        len: u64,
        phys: u64,
        dma: u64,
        alloc: HistoryEvent,
        backing: Backing,
    ) -> Buffer {
        Buffer {
            dma: Some(dma),
            dev: Some(dev),
            ..Buffer::cpu(kind, va, len, phys, alloc, backing)
        }
    }
}

/// How a buffer's memory is held.
#[derive(Debug, Clone)]
pub(crate) enum Backing {
    Slab(SlabObj),
    Pages(u32),
    /// Pages of this order, remapped at `va` (the coherent remap).
    Remapped(u32),
    /// Single pages mapped one after the other at `va`.
    Vmalloc(Vec<u64>),
    /// `count` pages from CMA, remapped at `va` when `remapped`.
    Cma {
        /// Pages.
        count: u64,
        /// Remapped non-cacheable (non-coherent device).
        remapped: bool,
    },
}

/// Kernel state.
pub struct Kernel {
    /// Architecture.
    pub arch: Arch,
    /// `PAGE_OFFSET`.
    pub page_offset: u64,
    /// First byte of RAM (arm64 `memstart_addr`).
    pub ram_base: u64,
    /// One past the last byte of RAM.
    pub ram_end: u64,
    /// One past the last byte of lowmem (the linear map); `ram_end` on 64-bit.
    pub lowmem_end: u64,
    /// Top of ZONE_DMA.
    pub zone_dma_limit: u64,
    pub(crate) vmalloc_next: u64,
    /// The page allocator: zones and their buddy free lists.
    pub pages: Node,
    pub(crate) slab: Slab,
    /// Devices, by index.
    pub devices: Vec<Device>,
    /// Live buffers by id.
    pub buffers: BTreeMap<u64, Buffer>,
    by_va: BTreeMap<u64, u64>,
    /// Physically contiguous live buffers by (physical start, id), and the longest
    /// such buffer ever: `buffer_at_phys` looks only at starts within that length
    /// below the address instead of scanning every buffer.
    by_phys: std::collections::BTreeSet<(u64, u64)>,
    max_phys_len: u64,
    next_buffer: u64,
    /// Record each buffer's frames for the report's pictures.
    pub(crate) record_buffers: bool,
    /// Buffers allocated since the recorder last looked.
    pub(crate) new_buffers: Vec<crate::report::visual::BufferView>,
    /// Buffers freed since the recorder last looked.
    pub(crate) freed_buffers: Vec<u64>,
    /// Labels of other recorded allocations (dma-bufs) freed since then.
    pub(crate) freed_labels: Vec<String>,
    /// Scatterlists by id.
    pub sg_tables: BTreeMap<u64, dma::sg::SgTable>,
    pub(crate) next_sg: u64,
    /// Processes.
    pub procs: Vec<crate::uapi::process::Process>,
    /// `struct page` of every user page, and the frames user pages left.
    pub user_pages: mm::page::Pages,
    /// Page sets taken with get_user_pages / pin_user_pages, by id.
    pub pins: BTreeMap<u64, crate::uapi::process::PinnedPages>,
    pub(crate) next_pins: u64,
    /// References `get_user_pages`/`pin_user_pages` hold on kernel-owned pages a
    /// driver mapped into a process with `vm_insert_page` (the CMA heap's fault
    /// handler, vb2-dma-sg's `vm_map_pages`): frame → references. Dropping them never
    /// frees the frame, which stays its driver's (mm/gup.c: try_grab_folio takes a
    /// reference; put_page drops it; the driver holds its own).
    pub kernel_page_refs: BTreeMap<u64, u32>,
    /// Pages migrated so far.
    pub migrated_pages: u64,
    /// Pages pinned so far (`nr_foll_pin_acquired`).
    pub pins_acquired: u64,
    /// Pages `cma_alloc` migrated out of its way.
    pub cma_migrated: u64,
    /// Failed `cma_alloc` calls.
    pub cma_failures: u64,
    /// Most CMA pages allocated at once.
    pub cma_used_max: u64,
    /// Swapped-out user pages: (pid, virtual page number) → contents.
    pub swap: BTreeMap<(u32, u64), Box<[u8; PAGE_SIZE as usize]>>,
    /// Pages swapped out so far.
    pub swapped_pages: u64,
    /// Free 2 MiB hugetlb pages (first pfns) in the boot pool.
    pub hugepool: Vec<u64>,
    /// Frames of the kernel data boot left scattered over RAM (for the memory map).
    pub boot_data: Vec<u64>,
    /// Huge pages unmapped while pinned: they stay out of the pool (first pfns).
    pub huge_orphans: std::collections::BTreeSet<u64>,
    /// The swiotlb bounce-buffer pool, when the platform has one.
    pub swiotlb: Option<dma::swiotlb::IoTlbPool>,
    /// The IOMMU's kernel side, when the platform has one.
    pub iommu: Option<iommu::IommuState>,
    /// VFIO containers by id.
    pub vfio: BTreeMap<u64, crate::uapi::vfio::VfioContainer>,
    pub(crate) next_vfio: u64,
    /// Copies between user and kernel memory (character-device drivers).
    pub copies: crate::uapi::chardev::CopyStats,
    /// V4L2 capture queues by id.
    pub v4l2: BTreeMap<u64, crate::uapi::v4l2::Vb2Queue>,
    /// `DMA_ATTR_SKIP_CPU_SYNC` for the map or unmap in progress: no cache
    /// maintenance, and no copy out of a bounce buffer at unmap (the copy in at map
    /// always happens); set only around such a call.
    pub(crate) dma_skip_cpu_sync: bool,
    pub(crate) next_v4l2: u64,
    /// Poll-mode drivers by id.
    pub pmds: BTreeMap<u64, crate::uapi::pmd::Pmd>,
    pub(crate) next_pmd: u64,
    /// The kernel receive path's counters (`netdev_rx`).
    pub netdev_rx: crate::uapi::pmd::RxPathStats,
    /// DMA pools (`dma_pool_create`) by id, destroyed ones included.
    pub dma_pools: Vec<mm::dmapool::DmaPool>,
    /// Page pools (`page_pool_create`) by id, destroyed ones included.
    pub page_pools: Vec<page_pool::PagePool>,
    /// Live dma-bufs by id (`uapi::dmabuf`).
    pub dmabufs: BTreeMap<u64, crate::uapi::dmabuf::DmaBuf>,
    /// Their attachments by id.
    pub dmabuf_attachments: BTreeMap<u64, crate::uapi::dmabuf::Attachment>,
    pub(crate) next_dmabuf: u64,
    /// The dma-buf whose attachment an exporter is mapping (set only around
    /// `dma_buf_map_attachment`): its mappings tell the sanitizer so.
    /// With it, how that exporter syncs the CPU's accesses.
    pub(crate) mapping_dmabuf: Option<(u64, crate::check::DmaBufSync)>,
    /// `WARN_ONCE` call sites that have fired: the kernel prints each only once.
    pub(crate) warned_once: std::collections::BTreeSet<&'static str>,
}

impl Kernel {
    /// Sets up the memory layout of a platform.
    pub fn new(p: &PlatformConfig) -> Kernel {
        let ram_end = p.ram_base + p.ram;
        let layout = zone_layout(p);
        Kernel {
            arch: p.arch,
            page_offset: p.page_offset,
            ram_base: p.ram_base,
            ram_end: p.ram_base + p.ram,
            lowmem_end: p.ram_base + p.lowmem.min(p.ram),
            zone_dma_limit: p.zone_dma_limit,
            vmalloc_next: p.vmalloc_start,
            pages: Node::new(p.ram_base, ram_end, &layout, &boot_reservations(p)),
            slab: Slab::new(kmalloc_minalign(p)),
            warned_once: std::collections::BTreeSet::new(),
            devices: Vec::new(),
            buffers: BTreeMap::new(),
            by_va: BTreeMap::new(),
            by_phys: std::collections::BTreeSet::new(),
            max_phys_len: 0,
            next_buffer: 1,
            record_buffers: false,
            new_buffers: Vec::new(),
            freed_buffers: Vec::new(),
            freed_labels: Vec::new(),
            sg_tables: BTreeMap::new(),
            next_sg: 1,
            procs: Vec::new(),
            user_pages: mm::page::Pages::default(),
            pins: BTreeMap::new(),
            next_pins: 1,
            kernel_page_refs: BTreeMap::new(),
            migrated_pages: 0,
            pins_acquired: 0,
            cma_migrated: 0,
            cma_failures: 0,
            cma_used_max: 0,
            swap: BTreeMap::new(),
            swapped_pages: 0,
            hugepool: Vec::new(),
            boot_data: Vec::new(),
            huge_orphans: std::collections::BTreeSet::new(),
            swiotlb: None,
            iommu: None,
            vfio: BTreeMap::new(),
            next_vfio: 1,
            copies: crate::uapi::chardev::CopyStats::default(),
            v4l2: BTreeMap::new(),
            dma_skip_cpu_sync: false,
            next_v4l2: 1,
            pmds: BTreeMap::new(),
            next_pmd: 1,
            netdev_rx: Default::default(),
            dma_pools: Vec::new(),
            page_pools: Vec::new(),
            dmabufs: BTreeMap::new(),
            dmabuf_attachments: BTreeMap::new(),
            next_dmabuf: 1,
            mapping_dmabuf: None,
        }
    }

    /// `__va()`: the linear-map address of a physical address.
    pub fn phys_to_virt(&self, pa: u64) -> u64 {
        pa.wrapping_sub(self.ram_base)
            .wrapping_add(self.page_offset)
    }

    /// `virt_to_phys()` for a linear-map address; `None` outside the linear map.
    pub fn virt_to_phys(&self, va: u64) -> Option<u64> {
        let off = va.wrapping_sub(self.page_offset);
        (off < self.lowmem_end - self.ram_base).then(|| self.ram_base + off)
    }

    /// `__pa()` without the check: the arithmetic `virt_to_phys` does on any number,
    /// cut to the physical address width (32 bits on arm32, 48 elsewhere).
    pub fn virt_to_phys_unchecked(&self, va: u64) -> u64 {
        let bits = if self.arch == Arch::Arm32 { 32 } else { 48 };
        va.wrapping_sub(self.page_offset)
            .wrapping_add(self.ram_base)
            & ((1u64 << bits) - 1)
    }

    /// `virt_addr_valid()`: is `va` in the linear map.
    pub fn is_linear(&self, va: u64) -> bool {
        self.virt_to_phys(va).is_some()
    }

    /// A new id for a dma-buf or an attachment (one sequence, as for fds).
    pub(crate) fn new_dmabuf_id(&mut self) -> u64 {
        let id = self.next_dmabuf;
        self.next_dmabuf += 1;
        id
    }

    /// Free pages in the page allocator.
    pub fn free_pages_count(&self) -> u64 {
        self.pages.free_count()
    }

    /// Registers a buffer and returns its id.
    pub(crate) fn add_buffer(&mut self, mut b: Buffer) -> u64 {
        b.id = self.next_buffer;
        self.next_buffer += 1;
        self.by_va.insert(b.va, b.id);
        if b.kind != BufKind::Vmalloc {
            self.by_phys.insert((b.phys, b.id));
            self.max_phys_len = self.max_phys_len.max(b.len.max(1));
        }
        let id = b.id;
        if self.record_buffers {
            let runs = match &b.backing {
                Backing::Vmalloc(pfns) => crate::report::visual::runs_of(pfns.iter().copied()),
                Backing::Slab(_) => vec![(b.phys, b.len)],
                _ => vec![(b.phys, b.len.next_multiple_of(PAGE_SIZE))],
            };
            self.new_buffers.push(crate::report::visual::BufferView {
                label: format!("{} #{id}", b.kind.name()),
                kind: b.kind.name(),
                len: b.len,
                line: b.alloc.line,
                runs,
                freed: false,
            });
        }
        self.buffers.insert(id, b);
        id
    }

    /// Forgets a buffer.
    pub(crate) fn remove_buffer(&mut self, id: u64) -> Option<Buffer> {
        let b = self.buffers.remove(&id)?;
        self.by_va.remove(&b.va);
        self.by_phys.remove(&(b.phys, b.id));
        if self.record_buffers {
            self.freed_buffers.push(id);
        }
        Some(b)
    }

    /// The live buffer whose virtual range contains `va`.
    pub fn buffer_at_va(&self, va: u64) -> Option<&Buffer> {
        let (_, id) = self.by_va.range(..=va).next_back()?;
        let b = &self.buffers[id];
        (va - b.va < b.len.max(1)).then_some(b)
    }

    /// The live physically contiguous buffer (kmalloc, pages, coherent) holding `pa`.
    /// When several hold it, the oldest (lowest id).
    pub fn buffer_at_phys(&self, pa: u64) -> Option<&Buffer> {
        let lo = pa.saturating_sub(self.max_phys_len.saturating_sub(1));
        self.by_phys
            .range((lo, 0)..=(pa, u64::MAX))
            .map(|&(_, id)| &self.buffers[&id])
            .filter(|b| pa - b.phys < b.len.max(1))
            .min_by_key(|b| b.id)
    }

    /// A fresh range of the vmalloc area (with a guard page after it).
    pub(crate) fn vmalloc_range(&mut self, size: u64) -> u64 {
        let va = self.vmalloc_next;
        self.vmalloc_next += size.next_multiple_of(PAGE_SIZE) + PAGE_SIZE;
        va
    }
}

/// errno values (include/uapi/asm-generic/errno-base.h); functions return them negated.
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i64 = 1;
    /// No such file or directory.
    pub const ENOENT: i64 = 2;
    /// I/O error.
    pub const EIO: i64 = 5;
    /// No such device or address (`dma_mmap_pages` of a vma larger than the buffer).
    pub const ENXIO: i64 = 6;
    /// Bad file number.
    pub const EBADF: i64 = 9;
    /// Out of memory.
    pub const ENOMEM: i64 = 12;
    /// Bad address.
    pub const EFAULT: i64 = 14;
    /// Device or resource busy.
    pub const EBUSY: i64 = 16;
    /// File exists.
    pub const EEXIST: i64 = 17;
    /// Invalid argument.
    pub const EINVAL: i64 = 22;
    /// Math result not representable (`iommu_map` beyond the address size).
    pub const ERANGE: i64 = 34;
    /// No space left on device.
    pub const ENOSPC: i64 = 28;
}
