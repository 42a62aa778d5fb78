//! dma-buf, the kernel's way to share one buffer between devices and processes
//! (`drivers/dma-buf/dma-buf.c`), with the two heaps user space allocates from
//! (`drivers/dma-buf/heaps/system_heap.c`, `cma_heap.c`; `/dev/dma_heap/*`),
//! Linux v6.12. A camera, a GPU and a display controller pass frames this way
//! with no copy, and each of them maps the same pages for itself.
//!
//! - **system heap**: pages from the page allocator in chunks of order 8, 4 and 0
//!   (1 MiB, 64 KiB, 4 KiB; the largest that fits what is left and is no larger
//!   than the last chunk), zeroed (`__GFP_ZERO`, cacheable stores), one scatterlist
//!   entry per chunk. Scattered: a device without an IOMMU sees one DMA segment
//!   per chunk.
//! - **CMA heap** (named after the default CMA area, `reserved` here, `linux,cma`
//!   when a device tree defines it): one `cma_alloc` block aligned to its order (at
//!   most `CONFIG_CMA_ALIGNMENT`), zeroed through the linear map; one segment.
//!
//! An importer attaches its device (`dma_buf_attach`: the exporter copies its table
//! for the attachment) and maps the attachment (`dma_buf_map_attachment`: the heaps
//! call `dma_map_sgtable(attach->dev, ...)` — a streaming mapping, bounced through
//! swiotlb for a device that cannot reach the pages, merged by an IOMMU). The CPU
//! side — a process through `mmap` of the dma-buf (cacheable on both heaps), or a
//! kernel importer — brackets its accesses with `DMA_BUF_IOCTL_SYNC` /
//! `dma_buf_begin_cpu_access` and `dma_buf_end_cpu_access`; the heaps sync every
//! mapped attachment, newest first, for the CPU at START and for the device at END
//! with the direction the flags name. Forgetting them is the bug this models: the
//! sanitizer's findings on such mappings name the dma-buf calls.
//!
//! A dma-buf lives while its fd is open, an attachment exists or a process maps
//! it; the last of these frees the pages.
//!
//! A kernel importer reaches the pages through `dma_buf_vmap` (a cacheable vmap;
//! `invalidate_kernel_vmap_range` and `flush_kernel_vmap_range` do nothing on
//! caches indexed by physical address, so only the attachments' syncs matter).
//!
//! Simplified: no fences or reservation objects (devices finish before the script
//! goes on); no dynamic importers or `cache_sgt_mapping`; no
//! exporters other than the two heaps (V4L2 `VIDIOC_EXPBUF` and DRM PRIME are not
//! modelled); `__GFP_NORETRY` has no effect (the model's page allocator never
//! retries); the fd is the DmaBuf object itself, shared by every process.

use crate::check::DmaBufSync;
use crate::config::{PAGE_SHIFT, PAGE_SIZE};
use crate::hw::mmu::MemType;
use crate::kernel::dma::direct::page_align;
use crate::kernel::dma::DmaDirection;
use crate::kernel::errno::{EBADF, EINVAL, ENOENT, ENOMEM};
use crate::kernel::mm::cma::CMA_ALIGNMENT;
use crate::kernel::mm::gfp::{
    GFP_DIRECT_RECLAIM, GFP_HIGHMEM, GFP_KSWAPD_RECLAIM, GFP_NOWARN, GFP_USER, GFP_ZERO,
};
use crate::kernel::mm::page_alloc::get_order;
use crate::system::{Result, SimError, System};

/// `DMA_BUF_SYNC_READ`.
pub const DMA_BUF_SYNC_READ: u64 = 1;
/// `DMA_BUF_SYNC_WRITE`.
pub const DMA_BUF_SYNC_WRITE: u64 = 2;
/// `DMA_BUF_SYNC_RW`.
pub const DMA_BUF_SYNC_RW: u64 = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE;
/// `DMA_BUF_SYNC_START`.
pub const DMA_BUF_SYNC_START: u64 = 0;
/// `DMA_BUF_SYNC_END`.
pub const DMA_BUF_SYNC_END: u64 = 1 << 2;

/// The system heap's chunk orders, largest first (`orders[]`).
const SYSTEM_HEAP_ORDERS: [u32; 3] = [8, 4, 0];
/// `HIGH_ORDER_GFP`: no reclaim, no warning, for the order-8 and order-4 tries.
const HIGH_ORDER_GFP: u64 =
    (GFP_USER | GFP_HIGHMEM | GFP_ZERO | GFP_NOWARN) & !(GFP_DIRECT_RECLAIM | GFP_KSWAPD_RECLAIM);
/// `LOW_ORDER_GFP`: single pages, which may reclaim and warn on failure.
const LOW_ORDER_GFP: u64 = GFP_USER | GFP_HIGHMEM | GFP_ZERO;

/// Where a dma-buf's memory comes from: a heap, or a videobuf2 buffer exported
/// with `VIDIOC_EXPBUF` (`uapi::v4l2_expbuf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heap {
    /// `/dev/dma_heap/system`.
    System,
    /// `/dev/dma_heap/<default CMA area>`.
    Cma,
    /// `vb2_dc_dmabuf_ops`: a dma-contig buffer (coherent memory).
    Vb2Contig,
    /// `vb2_dma_sg_dmabuf_ops`: a dma-sg buffer (vmalloc'd pages).
    Vb2Sg,
}

impl Heap {
    /// The heap's or exporter's name.
    pub fn name(self) -> &'static str {
        match self {
            Heap::System => "system",
            Heap::Cma => "reserved",
            Heap::Vb2Contig => "vb2-dma-contig",
            Heap::Vb2Sg => "vb2-dma-sg",
        }
    }

    /// How the exporter keeps importers' mappings in sync with the CPU.
    pub fn sync(self) -> DmaBufSync {
        match self {
            Heap::System | Heap::Cma => DmaBufSync::Attachments,
            Heap::Vb2Sg => DmaBufSync::Exporter,
            Heap::Vb2Contig => DmaBufSync::Nothing,
        }
    }

    /// "system heap", "exported by vb2-dma-contig": for log lines and labels.
    fn describe(self) -> String {
        match self {
            Heap::System | Heap::Cma => format!("{} heap", self.name()),
            _ => format!("exported by {}", self.name()),
        }
    }
}

/// The videobuf2 buffer behind an exported dma-buf.
#[derive(Debug, Clone, Copy)]
pub struct Vb2Export {
    /// The capture device (its mappings and syncs are the exporter's).
    pub dev: usize,
    /// The vb2 buffer's kernel buffer (kept while a dma-buf holds it).
    pub kbuf: u64,
    /// dma-sg: the buffer's own mapped table.
    pub sgt: Option<u64>,
    /// Bytes (the queue's buffer size).
    pub size: u64,
}

/// A dma-buf (`struct dma_buf` with its heap buffer).
#[derive(Debug, Clone)]
pub struct DmaBuf {
    /// Id (what the script holds for the fd).
    pub id: u64,
    /// The heap it came from.
    pub heap: Heap,
    /// Size in bytes (page-aligned).
    pub size: u64,
    /// The exporter's chunks, `(first pfn, pages)`, in table order.
    pub chunks: Vec<(u64, u64)>,
    /// Attachment ids, newest first (`list_add` on the heap buffer's list).
    pub attachments: Vec<u64>,
    /// The fd is open.
    pub fd_open: bool,
    /// Live process mappings `(pid, address)`.
    pub mmaps: Vec<(u32, u64)>,
    /// The kernel's vmap `(address, vmap_cnt)`, while there is one.
    pub vmap: Option<(u64, u32)>,
    /// The vb2 buffer, for a dma-buf videobuf2 exported.
    pub vb2: Option<Vb2Export>,
}

impl DmaBuf {
    /// A new dma-buf with its fd open and nothing attached or mapped.
    pub fn new(
        id: u64,
        heap: Heap,
        size: u64,
        chunks: Vec<(u64, u64)>,
        vb2: Option<Vb2Export>,
    ) -> DmaBuf {
        DmaBuf {
            id,
            heap,
            size,
            chunks,
            attachments: Vec::new(),
            fd_open: true,
            mmaps: Vec::new(),
            vmap: None,
            vb2,
        }
    }

    /// Every frame, in buffer order.
    pub fn pfns(&self) -> Vec<u64> {
        self.chunks
            .iter()
            .flat_map(|&(pfn, n)| pfn..pfn + n)
            .collect()
    }
}

/// An importer's attachment (`struct dma_buf_attachment` and the heap's
/// `dma_heap_attachment`).
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Id.
    pub id: u64,
    /// The dma-buf.
    pub dmabuf: u64,
    /// The importing device.
    pub dev: usize,
    /// The attachment's own table (`a->table`).
    pub sgt: u64,
    /// Mapped (`a->mapped`), with this direction.
    pub mapped: Option<DmaDirection>,
}

/// The error for a dma-buf the script still holds after its memory went.
fn released(id: u64) -> SimError {
    SimError::Invalid(format!("dma-buf #{id} was released"))
}

/// The memory map's label of a dma-buf.
fn dmabuf_label(id: u64, heap: Heap) -> String {
    format!("dma-buf #{id} ({})", heap.describe())
}

impl System {
    /// The live dma-buf `id`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] once it was released.
    pub fn dmabuf(&self, id: u64) -> Result<&DmaBuf> {
        self.kernel.dmabufs.get(&id).ok_or_else(|| released(id))
    }

    fn dmabuf_mut(&mut self, id: u64) -> Result<&mut DmaBuf> {
        self.kernel.dmabufs.get_mut(&id).ok_or_else(|| released(id))
    }

    fn attachment_ref(&self, att: u64) -> Result<&Attachment> {
        self.kernel
            .dmabuf_attachments
            .get(&att)
            .ok_or_else(|| SimError::Invalid(format!("dma-buf attachment #{att} was detached")))
    }

    /// `ioctl(open("/dev/dma_heap/<heap>"), DMA_HEAP_IOCTL_ALLOC, {len})` by process
    /// `pid`: the new dma-buf's id, or -ENOENT (no such heap), -EINVAL (length 0),
    /// -ENOMEM.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown process; the memory cap.
    pub fn dma_heap_alloc(
        &mut self,
        pid: u32,
        heap: &str,
        len: u64,
    ) -> Result<std::result::Result<u64, i64>> {
        self.proc_index(pid)?;
        self.step();
        let heap = match heap {
            "system" => Heap::System,
            "reserved" | "linux,cma" if self.kernel.pages.cma.is_some() => Heap::Cma,
            _ => return Ok(Err(-ENOENT)),
        };
        // dma_heap_buffer_alloc: PAGE_ALIGN(len), and 0 is -EINVAL. A length no
        // machine could hold is -ENOMEM without trying.
        if len > self.kernel.ram_end - self.kernel.ram_base {
            return Ok(Err(-ENOMEM));
        }
        let size = page_align(len);
        if size == 0 {
            return Ok(Err(-EINVAL));
        }
        let chunks = if heap == Heap::System {
            self.system_heap_pages(size)
        } else {
            self.cma_heap_pages(size)
        };
        let Some(chunks) = chunks else {
            return Ok(Err(-ENOMEM));
        };
        // __GFP_ZERO (clear_highpage through kmap) and the CMA heap's memset: the
        // kernel's cacheable stores, left dirty in the caches.
        const ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
        for &(pfn, n) in &chunks {
            for p in pfn..pfn + n {
                self.kmap_write(p << PAGE_SHIFT, &ZEROS);
            }
            self.check_limits()?;
        }
        let id = self.kernel.new_dmabuf_id();
        let runs = 1 + chunks
            .windows(2)
            .filter(|w| w[0].0 + w[0].1 != w[1].0)
            .count();
        self.printk(
            "dma-buf",
            format!(
                "{}: dma-buf #{id} of {size} bytes in {} chunk(s), {runs} physically contiguous run(s), first phys={:#x}",
                heap.describe(),
                chunks.len(),
                chunks[0].0 << PAGE_SHIFT
            ),
        );
        if self.kernel.record_buffers {
            let view = crate::report::visual::BufferView {
                label: dmabuf_label(id, heap),
                kind: "dma-buf",
                len: size,
                line: self.line,
                runs: crate::report::visual::runs_of(
                    chunks.iter().flat_map(|&(pfn, n)| pfn..pfn + n),
                ),
                freed: false,
            };
            self.kernel.new_buffers.push(view);
        }
        self.kernel
            .dmabufs
            .insert(id, DmaBuf::new(id, heap, size, chunks, None));
        Ok(Ok(id))
    }

    /// `system_heap_allocate`: chunks of the largest order that fits, falling back
    /// to smaller ones; `None` after giving back what it took.
    fn system_heap_pages(&mut self, size: u64) -> Option<Vec<(u64, u64)>> {
        let mut chunks: Vec<(u64, u64)> = Vec::new();
        let mut remaining = size;
        let mut max_order = SYSTEM_HEAP_ORDERS[0];
        while remaining > 0 {
            let mut got = None;
            for order in SYSTEM_HEAP_ORDERS {
                if remaining < PAGE_SIZE << order || max_order < order {
                    continue;
                }
                let gfp = if order > 0 {
                    HIGH_ORDER_GFP
                } else {
                    LOW_ORDER_GFP
                };
                match self.kernel.pages.alloc_pages(order, gfp, &mut self.hw.rng) {
                    Ok(pfn) => {
                        got = Some((pfn, order));
                        break;
                    }
                    Err(f) if order == 0 => {
                        self.alloc_failed("", "dma_heap system: alloc_pages", size, 0, Some(&f));
                    }
                    Err(_) => {}
                }
            }
            let Some((pfn, order)) = got else {
                for &(pfn, n) in &chunks {
                    self.kernel.pages.free_pages(pfn, n.trailing_zeros());
                }
                return None;
            };
            chunks.push((pfn, 1 << order));
            remaining -= PAGE_SIZE << order;
            max_order = order;
        }
        Some(chunks)
    }

    /// `cma_heap_allocate`: one block from the default CMA area.
    fn cma_heap_pages(&mut self, size: u64) -> Option<Vec<(u64, u64)>> {
        let count = size / PAGE_SIZE;
        let align = get_order(size).min(CMA_ALIGNMENT);
        match self.cma_alloc(count, align) {
            Ok(pfn) => Some(vec![(pfn, count)]),
            Err(f) => {
                self.cma_failed("dma-buf", count, f);
                None
            }
        }
    }

    /// `mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)` of a dma-buf
    /// by process `pid`: the address of a cacheable mapping of all its pages, or
    /// -EBADF once the fd is closed.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown process or a released dma-buf.
    pub fn dma_buf_mmap(&mut self, pid: u32, id: u64) -> Result<std::result::Result<u64, i64>> {
        self.step();
        let b = self.dmabuf(id)?;
        if !b.fd_open {
            return Ok(Err(-EBADF));
        }
        let (pfns, vb2) = (b.pfns(), b.vb2);
        // system_heap_mmap: remap_pfn_range(..., vma->vm_page_prot); the CMA heap
        // inserts the pfns at fault time with the same cacheable protection;
        // vb2-dma-contig maps with dma_mmap_attrs (the kernel's own attributes).
        let memtype = match (b.heap, vb2) {
            (Heap::Vb2Contig, Some(v)) if !self.dev_is_dma_coherent(v.dev) => MemType::NormalNc,
            _ => MemType::Normal,
        };
        // The CMA heap (cma_heap_vm_fault) and vb2-dma-sg (vm_map_pages) insert
        // pages; the system heap and vb2-dma-contig remap pfns (VM_PFNMAP).
        let va = if matches!(b.heap, Heap::Cma | Heap::Vb2Sg) {
            self.map_inserted_pages(pid, &pfns, memtype)?
        } else {
            self.map_frames(pid, &pfns, memtype)?
        };
        self.dmabuf_mut(id)?.mmaps.push((pid, va));
        Ok(Ok(va))
    }

    /// `close(fd)`: 0, or -EBADF when it was closed already. The memory goes when
    /// no attachment and no mapping is left either.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a released dma-buf.
    pub fn dma_buf_close(&mut self, id: u64) -> Result<i64> {
        self.step();
        let b = self.dmabuf_mut(id)?;
        if !b.fd_open {
            return Ok(-EBADF);
        }
        b.fd_open = false;
        self.dmabuf_put(id);
        Ok(0)
    }

    /// A process unmapped `va`: if that was a mapping of a dma-buf, it no longer
    /// holds the buffer.
    pub(crate) fn dmabuf_munmapped(&mut self, pid: u32, va: u64) {
        let hit = self
            .kernel
            .dmabufs
            .values_mut()
            .find(|b| b.mmaps.contains(&(pid, va)));
        if let Some(b) = hit {
            b.mmaps.retain(|&m| m != (pid, va));
            let id = b.id;
            self.dmabuf_put(id);
        }
    }

    /// Frees the dma-buf once nothing holds it (`dma_buf_release` → the heap's
    /// `release`).
    fn dmabuf_put(&mut self, id: u64) {
        let unused = self
            .kernel
            .dmabufs
            .get(&id)
            .is_some_and(|b| !b.fd_open && b.attachments.is_empty() && b.mmaps.is_empty());
        if !unused {
            return;
        }
        let b = self.kernel.dmabufs.remove(&id).expect("checked above");
        if let (Some((va, _)), None) = (b.vmap, b.vb2) {
            // system_heap_dma_buf_release / cma_heap_dma_buf_release.
            self.printk(
                "dma-buf",
                format!("WARNING: dma-buf #{id} released while still mapped in the kernel"),
            );
            self.unmap_kernel_pages(va, b.size);
        }
        match b.heap {
            Heap::Vb2Contig | Heap::Vb2Sg => self.vb2_export_put(&b),
            Heap::System => {
                for &(pfn, n) in &b.chunks {
                    self.kernel.pages.free_pages(pfn, n.trailing_zeros());
                }
            }
            Heap::Cma => {
                for &(pfn, n) in &b.chunks {
                    self.cma_release(pfn, n);
                }
            }
        }
        self.printk(
            "dma-buf",
            format!("{}: dma-buf #{id} released", b.heap.describe()),
        );
        if self.kernel.record_buffers {
            self.kernel.freed_labels.push(dmabuf_label(id, b.heap));
        }
    }

    /// `dma_buf_vmap(dmabuf, &map)`: the kernel address of a cacheable mapping of
    /// every page (`vmap(pages, npages, VM_MAP, PAGE_KERNEL)`), the same one while
    /// it is mapped (`vmap_cnt`). CPU access through it is bracketed like user
    /// space's: `dma_buf_begin_cpu_access` / `dma_buf_end_cpu_access`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a released dma-buf.
    pub fn dma_buf_vmap(&mut self, id: u64) -> Result<u64> {
        self.step();
        let b = self.dmabuf(id)?;
        if let Some((va, n)) = b.vmap {
            self.dmabuf_mut(id)?.vmap = Some((va, n + 1));
            return Ok(va);
        }
        if let Some(v) = b.vb2 {
            // vb2_dc_vaddr / vb2_dma_sg_vaddr: the buffer's own kernel mapping.
            let va = self.kernel.buffers.get(&v.kbuf).map_or(0, |k| k.va);
            self.dmabuf_mut(id)?.vmap = Some((va, 1));
            return Ok(va);
        }
        let (pfns, size) = (b.pfns(), b.size);
        let va = self.kernel.vmalloc_range(size);
        for (i, &p) in pfns.iter().enumerate() {
            self.hw.mmu.map_page(
                0,
                va + i as u64 * PAGE_SIZE,
                p << PAGE_SHIFT,
                MemType::Normal,
            );
        }
        self.dmabuf_mut(id)?.vmap = Some((va, 1));
        Ok(va)
    }

    /// `dma_buf_vunmap(dmabuf, &map)`: the last one unmaps.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a released dma-buf or an address that is not its
    /// vmap.
    pub fn dma_buf_vunmap(&mut self, id: u64, va: u64) -> Result<()> {
        self.step();
        let b = self.dmabuf_mut(id)?;
        match b.vmap {
            Some((v, n)) if v == va && n > 1 => b.vmap = Some((v, n - 1)),
            Some((v, _)) if v == va => {
                b.vmap = None;
                let (size, exported) = (b.size, b.vb2.is_some());
                if !exported {
                    self.unmap_kernel_pages(va, size);
                }
            }
            _ => {
                return Err(SimError::Invalid(format!(
                    "dma_buf_vunmap: {va:#x} is not the vmap of dma-buf #{id}"
                )))
            }
        }
        Ok(())
    }

    fn unmap_kernel_pages(&mut self, va: u64, size: u64) {
        for off in (0..size).step_by(PAGE_SIZE as usize) {
            self.hw.mmu.unmap_page(0, va + off);
        }
    }

    /// `dma_buf_attach(dmabuf, dev)`: the attachment's id; its table is the
    /// exporter's copy for this device (system heap: `dup_sg_table`, one entry per
    /// chunk; CMA heap: `sg_alloc_table_from_pages`, one entry).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device or a released dma-buf.
    pub fn dma_buf_attach(&mut self, id: u64, dev: usize) -> Result<u64> {
        self.device_checked(dev, "dma_buf_attach")?;
        self.step();
        let b = self.dmabuf(id)?;
        let (heap, chunks, pfns) = (b.heap, b.chunks.clone(), b.pfns());
        let sgt = match heap {
            Heap::System => {
                let pieces: Vec<(u64, u64)> = chunks
                    .iter()
                    .map(|&(pfn, n)| (pfn << PAGE_SHIFT, n * PAGE_SIZE))
                    .collect();
                self.sg_from_chunks(&pieces)?
            }
            // sg_alloc_table_from_pages: UINT_MAX rounded down to a page.
            // vb2: a copy of the buffer's table (`dma_get_sgtable` of coherent
            // memory, the dma-sg pages' table), entries merged as
            // sg_alloc_table_from_pages does.
            Heap::Cma | Heap::Vb2Contig | Heap::Vb2Sg => {
                self.sg_from_pfns(&pfns, u64::from(u32::MAX) & !(PAGE_SIZE - 1))?
            }
        };
        let att = self.kernel.new_dmabuf_id();
        self.kernel.dmabuf_attachments.insert(
            att,
            Attachment {
                id: att,
                dmabuf: id,
                dev,
                sgt,
                mapped: None,
            },
        );
        self.dmabuf_mut(id)?.attachments.insert(0, att);
        Ok(att)
    }

    /// `dma_buf_detach(dmabuf, attach)`. The heaps free the attachment's table
    /// whether or not it is still mapped: a mapping left behind is leaked (dma-debug
    /// reports it when the device goes).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an attachment that is not the dma-buf's.
    pub fn dma_buf_detach(&mut self, id: u64, att: u64) -> Result<()> {
        self.step();
        let a = self.attachment_ref(att)?.clone();
        if a.dmabuf != id {
            return Err(SimError::Invalid(format!(
                "dma_buf_detach: attachment #{att} belongs to dma-buf #{}, not #{id}",
                a.dmabuf
            )));
        }
        // vb2's exporters keep the mapping until detach and unmap it then
        // (DMA_ATTR_SKIP_CPU_SYNC); the heaps do not.
        if let (true, Some(d)) = (self.dmabuf(id)?.vb2.is_some(), a.mapped) {
            self.dma_unmap_sg_attrs(a.dev, a.sgt, d, true)?;
        }
        self.kernel.dmabuf_attachments.remove(&att);
        self.kernel.sg_tables.remove(&a.sgt);
        if let Some(b) = self.kernel.dmabufs.get_mut(&id) {
            b.attachments.retain(|&x| x != att);
        }
        self.dmabuf_put(id);
        Ok(())
    }

    /// `dma_buf_map_attachment(attach, dir)`: the attachment's table mapped for its
    /// device with `dma_map_sgtable`, or that call's -errno.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a detached attachment, a removed device, `DMA_NONE`.
    pub fn dma_buf_map_attachment(
        &mut self,
        att: u64,
        dir: DmaDirection,
    ) -> Result<std::result::Result<u64, i64>> {
        let a = self.attachment_ref(att)?.clone();
        let how = self.dmabuf(a.dmabuf)?.heap.sync();
        let vb2 = how != DmaBufSync::Attachments;
        if vb2 {
            // vb2_dc_dmabuf_ops_map / vb2_dma_sg_dmabuf_ops_map: the mapping is cached
            // per direction and made with DMA_ATTR_SKIP_CPU_SYNC.
            match a.mapped {
                Some(d) if d == dir => return Ok(Ok(a.sgt)),
                Some(d) => self.dma_unmap_sg_attrs(a.dev, a.sgt, d, true)?,
                None => {}
            }
        }
        self.kernel.mapping_dmabuf = Some((a.dmabuf, how));
        let r = self.skipping_cpu_sync(vb2, |sys| sys.dma_map_sgtable(a.dev, a.sgt, dir));
        self.kernel.mapping_dmabuf = None;
        let r = r?;
        if r < 0 {
            if let Some(a) = self.kernel.dmabuf_attachments.get_mut(&att) {
                a.mapped = None;
            }
            // vb2's exporters say "failed to map scatterlist" and return -EIO.
            return Ok(Err(if vb2 { -crate::kernel::errno::EIO } else { r }));
        }
        if let Some(a) = self.kernel.dmabuf_attachments.get_mut(&att) {
            a.mapped = Some(dir);
        }
        Ok(Ok(a.sgt))
    }

    /// `dma_buf_unmap_attachment(attach, sgt, dir)`: `dma_unmap_sgtable` of the
    /// attachment's table.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a detached or unmapped attachment, or a table that
    /// is not the one `dma_buf_map_attachment` returned.
    pub fn dma_buf_unmap_attachment(
        &mut self,
        att: u64,
        sgt: u64,
        dir: DmaDirection,
    ) -> Result<()> {
        let a = self.attachment_ref(att)?.clone();
        if a.sgt != sgt || a.mapped.is_none() {
            return Err(SimError::Invalid(format!(
                "dma_buf_unmap_attachment: scatterlist #{sgt} is not the mapped table of attachment #{att}"
            )));
        }
        if self.dmabuf(a.dmabuf)?.vb2.is_some() {
            // vb2_dc_dmabuf_ops_unmap: "nothing to be done here" (kept until detach).
            return Ok(());
        }
        self.dma_unmap_sg(a.dev, a.sgt, dir)?;
        if let Some(a) = self.kernel.dmabuf_attachments.get_mut(&att) {
            a.mapped = None;
        }
        Ok(())
    }

    /// The heaps' `begin_cpu_access` (`for_cpu`) or `end_cpu_access`: every mapped
    /// attachment, newest first, synced with `dir`; `call` names the path in the
    /// mappings' histories.
    fn dmabuf_cpu_access(
        &mut self,
        id: u64,
        dir: DmaDirection,
        for_cpu: bool,
        call: &str,
    ) -> Result<i64> {
        let b = self.dmabuf(id)?;
        match (b.heap, b.vb2) {
            // vb2_dc_dmabuf_ops_begin/end_cpu_access: nothing (coherent memory, as
            // far as the exporter is concerned).
            (Heap::Vb2Contig, _) => return Ok(0),
            // vb2_dma_sg_dmabuf_ops_begin/end_cpu_access: the exporter's own table.
            (
                Heap::Vb2Sg,
                Some(Vb2Export {
                    dev, sgt: Some(t), ..
                }),
            ) => {
                self.dma_sync_sg(dev, t, dir, for_cpu, call)?;
                return Ok(0);
            }
            _ => {}
        }
        let atts = b.attachments.clone();
        for att in atts {
            let a = self.attachment_ref(att)?.clone();
            if a.mapped.is_some() {
                self.dma_sync_sg(a.dev, a.sgt, dir, for_cpu, call)?;
            }
        }
        Ok(0)
    }

    /// `dma_buf_begin_cpu_access(dmabuf, dir)`: 0.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a released dma-buf or `DMA_NONE` with a mapped
    /// attachment.
    pub fn dma_buf_begin_cpu_access(&mut self, id: u64, dir: DmaDirection) -> Result<i64> {
        self.step();
        self.dmabuf_cpu_access(
            id,
            dir,
            true,
            "dma_buf_begin_cpu_access: dma_sync_sgtable_for_cpu",
        )
    }

    /// `dma_buf_end_cpu_access(dmabuf, dir)`: 0.
    ///
    /// # Errors
    /// As [`System::dma_buf_begin_cpu_access`].
    pub fn dma_buf_end_cpu_access(&mut self, id: u64, dir: DmaDirection) -> Result<i64> {
        self.step();
        self.dmabuf_cpu_access(
            id,
            dir,
            false,
            "dma_buf_end_cpu_access: dma_sync_sgtable_for_device",
        )
    }

    /// `ioctl(fd, DMA_BUF_IOCTL_SYNC, {flags})` (`dma_buf_ioctl`): 0, -EINVAL for
    /// flags outside `DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END` or with neither READ nor
    /// WRITE, -EBADF for a closed fd.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a released dma-buf.
    pub fn dma_buf_ioctl_sync(&mut self, id: u64, flags: u64) -> Result<i64> {
        self.step();
        if !self.dmabuf(id)?.fd_open {
            return Ok(-EBADF);
        }
        if flags & !(DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END) != 0 {
            return Ok(-EINVAL);
        }
        let dir = match flags & DMA_BUF_SYNC_RW {
            DMA_BUF_SYNC_READ => DmaDirection::FromDevice,
            DMA_BUF_SYNC_WRITE => DmaDirection::ToDevice,
            DMA_BUF_SYNC_RW => DmaDirection::Bidirectional,
            _ => return Ok(-EINVAL),
        };
        if flags & DMA_BUF_SYNC_END != 0 {
            self.dmabuf_cpu_access(
                id,
                dir,
                false,
                "DMA_BUF_IOCTL_SYNC(END): dma_sync_sgtable_for_device",
            )
        } else {
            self.dmabuf_cpu_access(
                id,
                dir,
                true,
                "DMA_BUF_IOCTL_SYNC(START): dma_sync_sgtable_for_cpu",
            )
        }
    }
}
