//! A driver's `mmap` file operation over DMA memory: `dma_mmap_coherent`
//! (`dma_mmap_attrs` in `kernel/dma/mapping.c`: `dma_direct_mmap`, `iommu_dma_mmap`)
//! and the hand-written alternative, `remap_pfn_range` with whatever page protection
//! the driver passes (`mm/memory.c`).
//!
//! `dma_mmap_coherent` maps the buffer's pages with `dma_pgprot()`: the
//! `vm_page_prot` unchanged (cacheable) for a coherent device, `pgprot_dmacoherent`
//! (Normal-NC on arm64, bufferable on arm32) otherwise — the same attributes as the
//! kernel's own mapping. A driver that calls `remap_pfn_range(vma, ...,
//! vma->vm_page_prot)` instead gives the process a *cacheable* alias of memory the
//! kernel maps uncached for a non-coherent device: nothing cleans or invalidates that
//! alias, so the process reads lines the device has since overwritten and its stores
//! sit in the cache where the device does not see them (Arm ARM B2.8, "mismatched
//! memory attributes"). The sanitizer reports the mapping itself
//! (`cacheable-alias`) and each stale read or write it lets through.
//!
//! `remap_pfn_range` maps whole pages: a kmalloc buffer that does not fill its pages
//! hands the process the rest of them too — other kmalloc objects of the same slab
//! page, kernel data — which the sanitizer reports as `mmap-beyond-buffer`.
//!
//! Simplified: the whole buffer is mapped (`vm_pgoff` 0, `vma_pages` = the buffer's
//! pages); `pgprot_noncached` is Device-nGnRE here (Linux uses nGnRnE on arm64); no
//! `DMA_ATTR_WRITE_COMBINE`.

use crate::config::{PAGE_SHIFT, PAGE_SIZE};
use crate::hw::mmu::MemType;
use crate::kernel::BufKind;
use crate::system::{Result, SimError, System};

/// The page protection a driver passes to `remap_pfn_range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgProt {
    /// `vma->vm_page_prot` as it comes: write-back cacheable.
    Default,
    /// `pgprot_writecombine()`: Normal non-cacheable.
    WriteCombine,
    /// `pgprot_dmacoherent()`: what the DMA API uses for a non-coherent device.
    DmaCoherent,
    /// `pgprot_noncached()`: Device memory.
    NonCached,
}

impl PgProt {
    /// The protection for a script's name of it.
    pub fn parse(s: &str) -> Option<PgProt> {
        Some(match s {
            "default" | "cached" => PgProt::Default,
            "writecombine" => PgProt::WriteCombine,
            "dmacoherent" => PgProt::DmaCoherent,
            "noncached" => PgProt::NonCached,
            _ => return None,
        })
    }

    fn memtype(self) -> MemType {
        match self {
            PgProt::Default => MemType::Normal,
            PgProt::WriteCombine | PgProt::DmaCoherent => MemType::NormalNc,
            PgProt::NonCached => MemType::Device,
        }
    }
}

impl System {
    /// The frames of every page kernel buffer `buffer` touches, through the kernel's
    /// page tables (a coherent buffer behind an IOMMU is scattered).
    pub(crate) fn buffer_frames(&self, buffer: u64) -> Result<Vec<u64>> {
        let b = self
            .kernel
            .buffers
            .get(&buffer)
            .ok_or_else(|| SimError::Invalid(format!("no live kernel buffer #{buffer}")))?;
        let first = b.va & !(PAGE_SIZE - 1);
        let pages = (b.va - first + b.len.max(1)).div_ceil(PAGE_SIZE);
        (0..pages)
            .map(|i| {
                self.hw
                    .mmu
                    .translate(0, first + i * PAGE_SIZE)
                    .map(|(pa, _)| pa >> PAGE_SHIFT)
                    .ok_or_else(|| {
                        SimError::Invalid(format!("buffer #{buffer} has an unmapped page"))
                    })
            })
            .collect()
    }

    /// The name of process `pid`.
    fn proc_name(&self, pid: u32) -> String {
        self.kernel
            .procs
            .iter()
            .find(|p| p.pid == pid)
            .map_or_else(String::new, |p| p.name.clone())
    }

    /// `mmap-beyond-buffer` when the mapped pages hold more than the buffer:
    /// manifested when another live allocation shares them.
    fn exposure_check(&mut self, pid: u32, buffer: u64, pfns: &[u64], va: u64) {
        let b = &self.kernel.buffers[&buffer];
        let mapped = pfns.len() as u64 * PAGE_SIZE;
        if b.len >= mapped {
            return;
        }
        let slack = mapped - b.len;
        let pages: Vec<(u64, u64)> = pfns
            .iter()
            .map(|&p| (p << PAGE_SHIFT, (p + 1) << PAGE_SHIFT))
            .collect();
        let others: Vec<String> = self
            .kernel
            .buffers
            .values()
            .filter(|o| o.id != buffer && o.kind != BufKind::Vmalloc)
            .filter(|o| {
                let (s, e) = (o.phys, o.phys + o.len.max(1));
                pages.iter().any(|&(ps, pe)| s < pe && ps < e)
            })
            .map(|o| format!("{} #{} ({} bytes)", o.kind.name(), o.id, o.len))
            .collect();
        let (kind, len, id, alloc) = (b.kind.name(), b.len, b.id, b.alloc.clone());
        let pname = self.proc_name(pid);
        let ctx = self.ctx();
        let shown = if others.is_empty() {
            String::new()
        } else {
            format!(
                ", and with them {}{}",
                others
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if others.len() > 3 { ", …" } else { "" }
            )
        };
        self.check.report_plain(
            "mmap-beyond-buffer",
            Some(!others.is_empty()),
            None,
            Some(va),
            Some(mapped),
            ctx,
            format!("remap_pfn_range maps whole pages: {pname} can read and write {slack} bytes beyond {kind} buffer #{id} ({len} bytes) at {va:#x}{shown}"),
            "map only memory that fills whole pages and holds nothing else: allocate what user space may see with alloc_pages, vmalloc_user or dma_alloc_coherent, never kmalloc".into(),
            vec![alloc],
        );
    }

    /// `dma_mmap_coherent(dev, vma, cpu_addr, dma_addr, size)` for an mmap by
    /// process `pid`: the user address of a mapping of the whole coherent buffer with
    /// the attributes `dma_pgprot()` gives.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device, process or buffer, or a buffer
    /// that is not a coherent buffer of `dev`.
    pub fn dma_mmap_coherent(&mut self, dev: usize, pid: u32, buffer: u64) -> Result<u64> {
        self.device_checked(dev, "dma_mmap_coherent")?;
        self.step();
        let ok = self
            .kernel
            .buffers
            .get(&buffer)
            .is_some_and(|b| b.kind == BufKind::Coherent && b.dev == Some(dev));
        if !ok {
            return Err(SimError::Invalid(format!(
                "dma_mmap_coherent: buffer #{buffer} is not a live dma_alloc_coherent buffer of {}",
                self.kernel.devices[dev].name
            )));
        }
        let memtype = if self.dev_is_dma_coherent(dev) {
            MemType::Normal
        } else {
            MemType::NormalNc
        };
        let pfns = self.buffer_frames(buffer)?;
        self.map_frames(pid, &pfns, memtype)
    }

    /// `dma_mmap_pages(dev, vma, size, page)` (kernel/dma/mapping.c) for an mmap of
    /// `vma_len` bytes by process `pid`: the driver's mmap of a `dma_alloc_pages` /
    /// `dma_alloc_noncoherent` buffer of `size` bytes. Linux maps the pages with
    /// `remap_pfn_range(..., vma->vm_page_prot)`: cacheable, which is right for this
    /// memory (the driver syncs it like a streaming mapping). `Err(-ENXIO)` when
    /// the vma is larger than `PAGE_ALIGN(size)`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device, process or buffer, or a `size`
    /// beyond the buffer's pages.
    pub fn dma_mmap_pages(
        &mut self,
        dev: usize,
        pid: u32,
        size: u64,
        buffer: u64,
        vma_len: u64,
    ) -> Result<std::result::Result<u64, i64>> {
        self.device_checked(dev, "dma_mmap_pages")?;
        self.step();
        let count = size.div_ceil(PAGE_SIZE);
        let pages = vma_len.div_ceil(PAGE_SIZE);
        if pages == 0 || pages > count {
            return Ok(Err(-crate::kernel::errno::ENXIO));
        }
        let pfns = self.buffer_frames(buffer)?;
        if count > pfns.len() as u64 {
            return Err(SimError::Invalid(format!(
                "dma_mmap_pages: size {size} is beyond buffer #{buffer}'s {} page(s)",
                pfns.len()
            )));
        }
        self.map_frames(pid, &pfns[..pages as usize], MemType::Normal)
            .map(Ok)
    }

    /// `remap_pfn_range(vma, addr, pfn, size, prot)` of every page of the kernel
    /// buffer into process `pid`: the user address of the first page (the buffer's
    /// bytes start at its offset in that page). A cacheable mapping of a coherent
    /// buffer of a non-coherent device is `cacheable-alias`; pages the buffer does
    /// not fill are `mmap-beyond-buffer`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown process or buffer.
    pub fn remap_pfn_range(&mut self, pid: u32, buffer: u64, prot: PgProt) -> Result<u64> {
        self.step();
        let pfns = self.buffer_frames(buffer)?;
        let va = self.map_frames(pid, &pfns, prot.memtype())?;
        self.exposure_check(pid, buffer, &pfns, va);
        let b = &self.kernel.buffers[&buffer];
        if prot.memtype() == MemType::Normal && b.kind == BufKind::Coherent {
            let dev = b.dev.unwrap_or(0);
            let (len, dma) = (b.len, b.dma);
            if !self.dev_is_dma_coherent(dev) {
                let name = self.kernel.devices[dev].name.clone();
                let pname = self.proc_name(pid);
                let ctx = self.ctx();
                let alloc = b.alloc.clone();
                self.check.report_plain(
                    "cacheable-alias",
                    None,
                    Some(&name),
                    dma,
                    Some(len),
                    ctx,
                    format!("remap_pfn_range maps {len} bytes of {name}'s coherent buffer cacheable into {pname} at {va:#x}: the kernel maps them Normal-NC because {name} does not snoop the caches, so nothing keeps this alias coherent (mismatched memory attributes)"),
                    "in the driver's mmap, use dma_mmap_coherent(dev, vma, cpu_addr, dma_addr, size), or pass pgprot_dmacoherent(vma->vm_page_prot) (or pgprot_writecombine) to remap_pfn_range".into(),
                    vec![alloc],
                );
            }
        }
        Ok(va)
    }
}
