//! Scatter-gather (`lib/scatterlist.c`, `dma_map_sg` in `kernel/dma/mapping.c` and
//! `dma_direct_map_sg` in `kernel/dma/direct.c`).
//!
//! A table is built from a buffer's pages, one entry per physically contiguous run
//! (`sg_alloc_table_from_pages_segment`, runs cut at `max_segment`). dma-direct maps
//! each entry on its own and never merges: `dma_map_sg` returns `nents`, and on the
//! first failure unmaps what it mapped and returns 0. `dma_unmap_sg` and the sg syncs
//! take the original table. Differences: the table lives in the kernel model, keyed by
//! an id the script holds.

use crate::check::{MapKind, NewMapping};
use crate::config::PAGE_SIZE;
use crate::kernel::dma::{DmaDirection, DMA_MAPPING_ERROR};
use crate::system::{Result, SimError, System};

/// One scatterlist entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SgEntry {
    /// `sg_phys(sg)`.
    pub phys: u64,
    /// `sg->length`.
    pub len: u64,
    /// `sg_dma_address(sg)` once mapped.
    pub dma_address: u64,
    /// `sg_dma_len(sg)` once mapped.
    pub dma_len: u64,
    /// The bus address of this entry's own first byte once mapped (equal to
    /// `dma_address` on dma-direct; inside a merged segment under an IOMMU).
    pub iova: u64,
}

/// `struct sg_table`.
#[derive(Debug, Clone, Default)]
pub struct SgTable {
    /// The entries (`orig_nents` of them).
    pub entries: Vec<SgEntry>,
    /// DMA segments after `dma_map_sg` (`nents`), 0 while unmapped.
    pub mapped: usize,
    /// The device it is mapped for.
    pub dev: Option<usize>,
    /// Mapped entry by entry (dma-iommu's swiotlb layout): no merged IOVA range.
    pub per_entry: bool,
    /// The `dma_alloc_noncontiguous` allocation (buffer id) this table describes:
    /// mapped by the allocation, freed with `dma_free_noncontiguous`.
    pub alloc: Option<u64>,
}

/// Most entries one table may have.
pub const MAX_SG_ENTRIES: usize = 1 << 16;

impl System {
    /// `sg_alloc_table_from_pages_segment()` over the pages of `[va, va+len)`: one
    /// entry per physically contiguous run, no entry longer than `max_segment`.
    /// Returns the table id.
    ///
    /// # Errors
    /// [`SimError::PagingRequest`] for an unmapped page, [`SimError::Invalid`] for a
    /// table over [`MAX_SG_ENTRIES`] entries.
    pub fn sg_from_range(&mut self, va: u64, len: u64, max_segment: u64) -> Result<u64> {
        let segs = self
            .hw
            .mmu
            .segments(0, va, len)
            .map_err(SimError::PagingRequest)?;
        self.sg_build(segs.iter().map(|s| (s.pa, s.len)), max_segment)
    }

    /// `sg_alloc_table_from_pages()` over whole pages (a pinned-pages set).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a table over [`MAX_SG_ENTRIES`] entries.
    pub fn sg_from_pfns(&mut self, pfns: &[u64], max_segment: u64) -> Result<u64> {
        let len = pfns.len() as u64 * PAGE_SIZE;
        self.sg_from_pfns_range(pfns, 0, len, max_segment)
    }

    /// `sg_alloc_table_from_pages(sgt, pages, n, offset, size, ...)`: `size` bytes
    /// starting `offset` bytes into the first of `pfns` (the pages must hold them).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a table over [`MAX_SG_ENTRIES`] entries.
    pub fn sg_from_pfns_range(
        &mut self,
        pfns: &[u64],
        offset: u64,
        size: u64,
        max_segment: u64,
    ) -> Result<u64> {
        let end = offset + size;
        let pieces = pfns.iter().enumerate().filter_map(move |(i, &pfn)| {
            let (lo, hi) = (i as u64 * PAGE_SIZE, (i as u64 + 1) * PAGE_SIZE);
            let (a, b) = (lo.max(offset), hi.min(end));
            (a < b).then(|| (pfn * PAGE_SIZE + (a - lo), b - a))
        });
        self.sg_build(pieces, max_segment)
    }

    /// Merges physically contiguous pieces into entries of at most `max_segment`
    /// bytes and registers the table.
    pub(crate) fn sg_build(
        &mut self,
        pieces: impl Iterator<Item = (u64, u64)>,
        max_segment: u64,
    ) -> Result<u64> {
        let max_segment = max_segment.max(PAGE_SIZE);
        let mut entries: Vec<SgEntry> = Vec::new();
        for (pa, len) in pieces {
            match entries.last_mut() {
                Some(e) if e.phys + e.len == pa && e.len + len <= max_segment => e.len += len,
                _ => entries.push(SgEntry {
                    phys: pa,
                    len,
                    dma_address: DMA_MAPPING_ERROR,
                    dma_len: 0,
                    iova: DMA_MAPPING_ERROR,
                }),
            }
            if entries.len() > MAX_SG_ENTRIES {
                return Err(SimError::Invalid(format!(
                    "a scatterlist is limited to {MAX_SG_ENTRIES} entries"
                )));
            }
        }
        Ok(self.sg_register(entries))
    }

    /// `sg_alloc_table()` filled with `sg_set_page()` per chunk: one entry for each
    /// `(phys, len)`, adjacent chunks not merged (a dma-buf heap's table).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a table over [`MAX_SG_ENTRIES`] entries.
    pub(crate) fn sg_from_chunks(&mut self, chunks: &[(u64, u64)]) -> Result<u64> {
        if chunks.len() > MAX_SG_ENTRIES {
            return Err(SimError::Invalid(format!(
                "a scatterlist is limited to {MAX_SG_ENTRIES} entries"
            )));
        }
        let entries = chunks
            .iter()
            .map(|&(phys, len)| SgEntry {
                phys,
                len,
                dma_address: DMA_MAPPING_ERROR,
                dma_len: 0,
                iova: DMA_MAPPING_ERROR,
            })
            .collect();
        Ok(self.sg_register(entries))
    }

    /// `sg_alloc_table(sgt, n, GFP_KERNEL)`: a table of `n` empty entries, each to be
    /// set with [`System::sg_set_buf`] before the table is mapped.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for 0 or more than [`MAX_SG_ENTRIES`] entries
    /// (`sg_alloc_table` returns -EINVAL for 0).
    pub fn sg_alloc_table(&mut self, n: u64) -> Result<u64> {
        if n == 0 || n > MAX_SG_ENTRIES as u64 {
            return Err(SimError::Invalid(format!(
                "sg_alloc_table: {n} entries (1..={MAX_SG_ENTRIES})"
            )));
        }
        let empty = SgEntry {
            phys: 0,
            len: 0,
            dma_address: DMA_MAPPING_ERROR,
            dma_len: 0,
            iova: DMA_MAPPING_ERROR,
        };
        Ok(self.sg_register(vec![empty; n as usize]))
    }

    /// `sg_set_buf(&sgt->sgl[i], va, len)` (include/linux/scatterlist.h): entry `i`
    /// describes `[va, va+len)`, which must be one physically contiguous run (Linux
    /// takes `virt_to_page(va)`; for vmalloc memory drivers set one entry per page, as
    /// `spi_map_buf` does with `vmalloc_to_page`). `sg_init_one` is a one-entry table
    /// set this way.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or mapped table, an entry out of range, a
    /// zero length or a range that is not physically contiguous;
    /// [`SimError::PagingRequest`] for an unmapped address.
    pub fn sg_set_buf(&mut self, id: u64, i: u64, va: u64, len: u64) -> Result<()> {
        if len == 0 || len > u64::from(u32::MAX) {
            return Err(SimError::Invalid(format!(
                "sg_set_buf: length {len} (an entry holds 1..=4 GiB - 1 bytes)"
            )));
        }
        let segs = self
            .hw
            .mmu
            .segments(0, va, len)
            .map_err(SimError::PagingRequest)?;
        let contiguous = segs.windows(2).all(|w| w[0].pa + w[0].len == w[1].pa);
        if !contiguous {
            return Err(SimError::Invalid(format!(
                "sg_set_buf: {va:#x}+{len} is not physically contiguous (it spans {} pages in different frames); give each page run its own entry, as spi_map_buf does for vmalloc memory",
                segs.len()
            )));
        }
        let t = self
            .kernel
            .sg_tables
            .get_mut(&id)
            .ok_or_else(|| SimError::Invalid(format!("no scatterlist #{id}")))?;
        if t.mapped > 0 || t.dev.is_some() || t.alloc.is_some() {
            return Err(SimError::Invalid(format!(
                "sg_set_buf: scatterlist #{id} is mapped; unmap it before changing its entries"
            )));
        }
        let n = t.entries.len();
        let e = usize::try_from(i)
            .ok()
            .and_then(|i| t.entries.get_mut(i))
            .ok_or_else(|| SimError::Invalid(format!("sg_set_buf: entry {i} out of 0..{n}")))?;
        e.phys = segs[0].pa;
        e.len = len;
        Ok(())
    }

    /// Registers a new, unmapped table; its id.
    fn sg_register(&mut self, entries: Vec<SgEntry>) -> u64 {
        let id = self.kernel.next_sg;
        self.kernel.next_sg += 1;
        self.kernel.sg_tables.insert(
            id,
            SgTable {
                entries,
                mapped: 0,
                dev: None,
                per_entry: false,
                alloc: None,
            },
        );
        id
    }

    fn sg_table(&self, id: u64) -> Result<&SgTable> {
        self.kernel
            .sg_tables
            .get(&id)
            .ok_or_else(|| SimError::Invalid(format!("no scatterlist #{id}")))
    }

    /// The table itself (for scripts' `sg_nents`, `sg_dma_address`, `sg_dma_len`).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown table.
    pub fn sg(&self, id: u64) -> Result<&SgTable> {
        self.sg_table(id)
    }

    /// `dma_map_sg()`: the number of DMA segments, 0 on failure. dma-direct maps
    /// every entry separately (`dma_direct_map_sg`); dma-iommu maps the list into one
    /// IOVA range and merges (`iommu_dma_map_sg`).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for `DMA_NONE`, an unknown device or table.
    pub fn dma_map_sg(&mut self, dev: usize, id: u64, dir: DmaDirection) -> Result<u64> {
        // dma_map_sg_attrs: any negative result of __dma_map_sg_attrs becomes 0.
        let n = self.dma_map_sg_inner(dev, id, dir, "dma_map_sg")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// `dma_map_sgtable()`: 0 with the table's `nents` set to the DMA segment count,
    /// or a negative errno, as `__dma_map_sg_attrs` returns it:
    /// - `-EINVAL`: an invalid argument or a list the IOMMU cannot map; do not retry.
    /// - `-ENOMEM`: out of resources (IOVA space); a retry later may succeed.
    /// - `-EIO`: the legacy "could not map" (dma-direct, and dma-iommu's swiotlb
    ///   layout: an entry that could not be bounced).
    ///
    /// # Errors
    /// As [`System::dma_map_sg`].
    pub fn dma_map_sgtable(&mut self, dev: usize, id: u64, dir: DmaDirection) -> Result<i64> {
        let n = self.dma_map_sg_inner(dev, id, dir, "dma_map_sgtable")?;
        Ok(n.min(0))
    }

    /// `__dma_map_sg_attrs()`: the DMA segment count, or -errno; `call` names the
    /// public wrapper in log lines and the mapping's history.
    fn dma_map_sg_inner(
        &mut self,
        dev: usize,
        id: u64,
        dir: DmaDirection,
        call: &str,
    ) -> Result<i64> {
        use crate::kernel::errno::EIO;
        self.sg_checks(dev, call, dir)?;
        self.not_an_allocation(id, call)?;
        let mut entries = self.sg_table(id)?.entries.clone();
        if let Some(i) = entries.iter().position(|e| e.len == 0) {
            return Err(SimError::Invalid(format!(
                "{call}: scatterlist entry {i} is empty (set it with sg_set_buf before mapping)"
            )));
        }
        self.step();
        self.hw.advance(self.cfg.cost.dma_call_ps);
        let name = self.kernel.devices[dev].name.clone();
        let max_seg = self.kernel.devices[dev].max_segment;
        let (n, per_entry) = if self.use_dma_iommu(dev) {
            match self.iommu_dma_map_sg(dev, &mut entries, dir, call) {
                Ok(r) => r,
                Err(errno) => {
                    self.printk(&name, format!("{call}: iommu_dma_map_sg failed"));
                    return Ok(errno);
                }
            }
        } else {
            let mut bounced: Vec<Option<u64>> = Vec::new();
            for e in entries.iter_mut() {
                let (addr, bounce) = self.dma_direct_map_phys(dev, e.phys, e.len, dir);
                if addr == DMA_MAPPING_ERROR {
                    // dma_direct_map_sg unmaps what it mapped with SKIP_CPU_SYNC (no
                    // cache work, nothing recorded yet, bounce slots given back) and
                    // the whole call fails with -EIO.
                    for tlb in bounced.iter().flatten() {
                        self.swiotlb_release(dev, *tlb);
                    }
                    self.printk(
                        &name,
                        format!("{call}: entry at {:#x} cannot be mapped", e.phys),
                    );
                    return Ok(-EIO);
                }
                bounced.push(bounce);
                e.dma_address = addr;
                e.dma_len = e.len;
                e.iova = addr;
            }
            (entries.len(), false)
        };
        let ctx = self.ctx();
        let total = entries.len();
        for (i, e) in entries.iter().enumerate() {
            let buffer = self.buffer_ref_phys(e.phys);
            let bounce = if self.use_dma_iommu(dev) {
                None
            } else {
                let pa = self.kernel.devices[dev].dma_to_phys(e.iova);
                (pa != e.phys).then_some(pa)
            };
            self.sanitizer_map(
                NewMapping::new(dev, name.clone(), e.iova, e.len, e.phys, dir, MapKind::Sg)
                    .buffer(buffer)
                    .bounce(bounce)
                    .dmabuf(self.kernel.mapping_dmabuf)
                    .skip_cpu_sync(self.kernel.dma_skip_cpu_sync)
                    .what(format!("{call} {} [entry {i} of {total}]", dir.name())),
            );
            // dma_map_sg's result is checked by testing for 0, not dma_mapping_error.
            self.check.mapping_error(dev, e.iova);
        }
        let boundary = self.kernel.devices[dev].seg_boundary_mask;
        for e in entries.iter().take(n) {
            // check_sg_segment: a segment that crosses the device's boundary mask.
            let end = e.dma_address.wrapping_add(e.dma_len.max(1) - 1);
            if e.dma_len > 0
                && boundary != u64::MAX
                && (e.dma_address | boundary) != (end | boundary)
            {
                self.check.report_plain(
                    "sg-segment-too-long",
                    None,
                    Some(&name),
                    Some(e.dma_address),
                    Some(e.dma_len),
                    ctx,
                    format!(
                        "mapping sg segment across boundary [start={:#x}] [end={end:#x}] [boundary={boundary:#x}]",
                        e.dma_address
                    ),
                    "build segments that stay inside the device's segment boundary (dma_set_seg_boundary), as the block layer does".into(),
                    vec![],
                );
            }
            if e.dma_len > max_seg {
                self.check.report_plain(
                    "sg-segment-too-long",
                    None,
                    Some(&name),
                    Some(e.dma_address),
                    Some(e.dma_len),
                    ctx,
                    format!("mapping sg segment longer than device claims to support [len={}] [max={max_seg}]", e.dma_len),
                    "build the table with the device's limit: sg_from_buffer(buf, max_segment)".into(),
                    vec![],
                );
            }
        }
        if n > 1 && !self.kernel.devices[dev].sg {
            self.check.report_plain(
                "sg-unsupported",
                None,
                Some(&name),
                Some(entries[0].dma_address),
                Some(entries.iter().map(|e| e.len).sum()),
                ctx,
                format!("{name} cannot do scatter-gather, but {call} {} {n} segments: it will transfer only the first", if call == "dma_map_sg" { "returned" } else { "mapped it as" }),
                if self.kernel.mapping_dmabuf.is_some() {
                    "an importer that needs one contiguous range must refuse a dma-buf that maps as several segments (DRM's drm_gem_dma_prime_import_sg_table returns -EINVAL), and user space must allocate such buffers from the CMA heap (/dev/dma_heap/reserved, or linux,cma); or put the device behind an IOMMU, which maps the chunks as one segment".into()
                } else {
                    "give such a device physically contiguous memory (dma_alloc_coherent, or kmalloc/alloc_pages), or put it behind an IOMMU that merges the segments".into()
                },
                vec![],
            );
        }
        let t = self.kernel.sg_tables.get_mut(&id).expect("checked above");
        t.entries = entries;
        t.mapped = n;
        t.dev = Some(dev);
        t.per_entry = per_entry;
        Ok(n as i64)
    }

    /// `dma_unmap_sg()` with the original table.
    ///
    /// # Errors
    /// As [`System::dma_map_sg`].
    pub fn dma_unmap_sg(&mut self, dev: usize, id: u64, dir: DmaDirection) -> Result<()> {
        self.dma_unmap_sg_attrs(dev, id, dir, false)
    }

    /// `dma_unmap_sg_attrs()`; with `skip_cpu_sync` (`DMA_ATTR_SKIP_CPU_SYNC`) no
    /// cache maintenance and no copy out of bounce buffers happen: the caller synced
    /// already (videobuf2 at `finish`), and memory that outlives the mapping (user
    /// pages) keeps what the CPU stored since.
    ///
    /// # Errors
    /// As [`System::dma_map_sg`].
    pub fn dma_unmap_sg_attrs(
        &mut self,
        dev: usize,
        id: u64,
        dir: DmaDirection,
        skip_cpu_sync: bool,
    ) -> Result<()> {
        self.skipping_cpu_sync(skip_cpu_sync, |sys| sys.dma_unmap_sg_inner(dev, id, dir))
    }

    fn dma_unmap_sg_inner(&mut self, dev: usize, id: u64, dir: DmaDirection) -> Result<()> {
        self.sg_checks(dev, "dma_unmap_sg", dir)?;
        self.not_an_allocation(id, "dma_unmap_sg")?;
        let t = self.sg_table(id)?.clone();
        self.step();
        for e in t.entries.iter().take(t.mapped) {
            self.dmaengine_release_check(dev, e.dma_address, e.dma_len, "dma_unmap_sg");
        }
        self.hw.advance(self.cfg.cost.dma_call_ps);
        let name = self.kernel.devices[dev].name.clone();
        let iommu = self.use_dma_iommu(dev) && t.mapped > 0;
        if iommu {
            self.iommu_dma_unmap_sg(dev, &t.entries, t.mapped, dir, t.per_entry);
        }
        for e in &t.entries {
            if !iommu {
                self.dma_direct_unmap_phys(dev, e.iova, e.len, dir);
            }
            let ctx = self.ctx();
            self.check.unmap(
                &mut self.hw,
                ctx,
                dev,
                &name,
                e.iova,
                e.len,
                dir,
                MapKind::Sg,
                self.kernel.dma_skip_cpu_sync,
            );
        }
        let t = self.kernel.sg_tables.get_mut(&id).expect("checked above");
        t.mapped = 0;
        t.dev = None;
        Ok(())
    }

    /// `dma_sync_sg_for_cpu()` / `dma_sync_sg_for_device()` (or the sgtable
    /// wrappers, named by `call` in errors and histories): every entry of the
    /// original list, by its physical address.
    ///
    /// # Errors
    /// As [`System::dma_map_sg`].
    pub fn dma_sync_sg(
        &mut self,
        dev: usize,
        id: u64,
        dir: DmaDirection,
        for_cpu: bool,
        call: &str,
    ) -> Result<()> {
        let entries = self.sg_table(id)?.entries.clone();
        if !self.use_dma_iommu(dev) {
            for e in entries {
                self.dma_sync_single_as(dev, e.iova, e.len, dir, for_cpu, call)?;
            }
            return Ok(());
        }
        self.sg_checks(dev, call, dir)?;
        self.step();
        self.hw.advance(self.cfg.cost.dma_call_ps);
        let name = self.kernel.devices[dev].name.clone();
        // A dma_alloc_noncontiguous table is one mapping for dma-debug: it checks
        // the first `nents` segments (one), while the cache work covers every entry.
        let alloc = self.sg_table(id)?.alloc.is_some();
        for e in &entries {
            // A bounced entry's bytes sit in slots the tables point at.
            let domain = self.dev_domain(dev).expect("iommu");
            let phys = self.iommu_iova_to_phys(domain, e.iova);
            let at = if phys != 0 && self.is_swiotlb_buffer(phys) {
                phys
            } else {
                e.phys
            };
            self.sync_phys(dev, at, e.len, dir, for_cpu);
            if !alloc {
                let ctx = self.ctx();
                self.check
                    .sync(&self.hw, ctx, dev, &name, e.iova, e.len, dir, for_cpu, call);
            }
        }
        if let (true, Some(seg)) = (alloc, entries.first()) {
            let ctx = self.ctx();
            self.check.sync(
                &self.hw,
                ctx,
                dev,
                &name,
                seg.dma_address,
                seg.dma_len,
                dir,
                for_cpu,
                call,
            );
        }
        Ok(())
    }

    /// The device walks the table's DMA segments: reads `len` bytes (`data` = None)
    /// or writes `data`, segment after segment. Returns what a read got.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device or table.
    pub fn dev_sg(
        &mut self,
        dev: usize,
        id: u64,
        len: u64,
        data: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>> {
        let t = self.sg_table(id)?;
        let n = if self.kernel.devices.get(dev).is_some_and(|d| !d.sg) {
            1
        } else {
            t.mapped.max(1)
        };
        let segs: Vec<(u64, u64)> = t
            .entries
            .iter()
            .take(n)
            .map(|e| (e.dma_address, e.dma_len))
            .collect();
        let mut out = Vec::new();
        let mut done = 0u64;
        for (addr, seg_len) in segs {
            if done >= len {
                break;
            }
            let m = seg_len.min(len - done);
            let piece = data
                .as_ref()
                .map(|d| d[done as usize..(done + m) as usize].to_vec());
            let job = self.dev_start(dev, addr, m, piece)?;
            if let Some(bytes) = self.wait(job)? {
                if out.is_empty() {
                    // The first segment's bytes become the result (no copy: a table
                    // mapped as one DMA segment reads straight into it).
                    out = bytes;
                } else {
                    out.extend_from_slice(&bytes);
                }
            }
            done += m;
        }
        Ok(data.is_none().then_some(out))
    }

    /// A table `dma_alloc_noncontiguous` made is mapped and unmapped by the
    /// allocation itself.
    fn not_an_allocation(&self, id: u64, call: &str) -> Result<()> {
        if self.sg_table(id)?.alloc.is_some() {
            return Err(SimError::Invalid(format!(
                "{call}: scatterlist #{id} is a dma_alloc_noncontiguous allocation, already mapped; free it with dma_free_noncontiguous"
            )));
        }
        Ok(())
    }

    fn sg_checks(&self, dev: usize, call: &str, dir: DmaDirection) -> Result<()> {
        if self.kernel.devices.get(dev).is_none_or(|d| !d.bound) {
            return Err(SimError::Invalid(format!(
                "{call}: no such device, or it was removed"
            )));
        }
        if !dir.is_valid() {
            return Err(SimError::Invalid(format!(
                "kernel BUG at kernel/dma/mapping.c: {call} with DMA_NONE"
            )));
        }
        Ok(())
    }
}
