//! The DMA pool allocator (`mm/dmapool.c`, Linux 6.12): small blocks carved out of
//! `dma_alloc_coherent` pages, for descriptors and other structures a device reads
//! and writes in place.
//!
//! As Linux does it: `dma_pool_create` rounds the block size up to at least the
//! free-list header (16 bytes; 8 on 32-bit ARM) and to the alignment, takes
//! `max(size, PAGE_SIZE)` bytes per pool page and never lets a block cross
//! `boundary`; it returns NULL for an alignment or boundary that is not a power of
//! two, a boundary smaller than a block, or a size of 0 or over `INT_MAX`. Free
//! blocks form a singly linked list kept *inside the free blocks themselves* (the
//! next free block's address, then the block's DMA address), written by the CPU
//! into the coherent memory; `dma_pool_alloc` reads the list back from simulated
//! memory, so a device that writes a freed block corrupts it. A production kernel
//! checks nothing in `dma_pool_free` (`DMAPOOL_DEBUG` needs `CONFIG_SLUB_DEBUG_ON`):
//! a double free pushes the block twice (two later allocations share it) and makes
//! `nr_active` wrap, and the model does the same; the sanitizer reports it as
//! `dma-pool-bad-free` with `DMAPOOL_DEBUG`'s words. `dma_pool_destroy` with blocks
//! in use prints "busy" and leaks every page (`dma-pool-busy`).
//!
//! Simplified: a free whose DMA address is in no page of the pool ("bad dma"), or
//! whose CPU address does not match it, is reported and then ignored (Linux would
//! push the bogus address onto the free list); a `dma_pool_alloc` that pops an
//! address outside the pool (a corrupted list) logs it and returns NULL where a
//! kernel would oops or hand out foreign memory. `dmam_pool_create` pools are
//! destroyed when the driver unbinds (`remove_device`), before dma-debug looks for
//! leaks, as devres does; a managed pool the driver already destroyed is skipped
//! (Linux would destroy it twice). No sysfs `pools` file (the pool's figures are its
//! script getters).

use std::collections::BTreeSet;

use crate::config::{Arch, PAGE_SIZE};
use crate::system::{Result, SimError, System};

/// Most pools a run may create.
pub const MAX_POOLS: usize = 4096;

/// One `dma_alloc_coherent` allocation of a pool (`struct dma_page`).
#[derive(Debug, Clone)]
pub struct PoolPage {
    /// The coherent buffer's id.
    pub buffer: u64,
    /// CPU address of its first byte.
    pub va: u64,
    /// DMA address of its first byte.
    pub dma: u64,
}

/// `struct dma_pool`.
#[derive(Debug, Clone)]
pub struct DmaPool {
    /// Name for diagnostics (at most 31 bytes, as `strscpy` into `char[32]`).
    pub name: String,
    /// The device the blocks are for.
    pub dev: usize,
    /// Block size after rounding.
    pub size: u64,
    /// Bytes per pool page (`max(size, PAGE_SIZE)`).
    pub allocation: u64,
    /// No block crosses a multiple of this.
    pub boundary: u64,
    /// Pages, newest first (`list_add`).
    pub pages: Vec<PoolPage>,
    /// CPU address of the first free block (0: none), `pool->next_block`.
    pub next_block: u64,
    /// Blocks carved so far.
    pub nr_blocks: u64,
    /// Blocks handed out and not freed (wraps on a double free, as in Linux).
    pub nr_active: u64,
    /// `dma_pool_destroy` ran.
    pub destroyed: bool,
    /// Made by `dmam_pool_create`: destroyed at driver unbind.
    pub managed: bool,
    /// Blocks in use, by CPU address: what the sanitizer knows, not the kernel.
    active: BTreeSet<u64>,
}

/// A block `dma_pool_alloc` handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBlock {
    /// CPU address.
    pub va: u64,
    /// The DMA handle, as read from the block's free-list header.
    pub dma: u64,
    /// Physical address of the first byte.
    pub phys: u64,
    /// The id of the coherent buffer (pool page) holding it.
    pub buffer: u64,
}

impl DmaPool {
    /// An empty pool with these (already rounded) figures.
    fn new(name: String, dev: usize, size: u64, allocation: u64, boundary: u64) -> DmaPool {
        DmaPool {
            name,
            dev,
            size,
            allocation,
            boundary,
            pages: Vec::new(),
            next_block: 0,
            nr_blocks: 0,
            nr_active: 0,
            destroyed: false,
            managed: false,
            active: BTreeSet::new(),
        }
    }

    /// The page whose DMA range holds `dma` (`pool_find_page`).
    fn page_of_dma(&self, dma: u64) -> Option<&PoolPage> {
        self.pages
            .iter()
            .find(|p| dma >= p.dma && dma - p.dma < self.allocation)
    }

    /// The page whose CPU range holds `va`.
    fn page_of_va(&self, va: u64) -> Option<&PoolPage> {
        self.pages
            .iter()
            .find(|p| va >= p.va && va - p.va < self.allocation)
    }

    /// Whether a block starts at offset `off` of a page: blocks sit back to back
    /// from the start of each `boundary` window and none crosses its end.
    fn is_block_start(&self, off: u64) -> bool {
        let rel = off % self.boundary;
        rel % self.size == 0
            && rel + self.size <= self.boundary
            && off + self.size <= self.allocation
    }

    /// Offsets of the blocks of one page (`pool_initialise_page`).
    fn block_offsets(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let (mut offset, mut next_boundary) = (0u64, self.boundary);
        while offset + self.size <= self.allocation {
            if offset + self.size > next_boundary {
                offset = next_boundary;
                next_boundary += self.boundary;
                continue;
            }
            out.push(offset);
            offset += self.size;
        }
        out
    }
}

impl System {
    /// Bytes of a pointer and of `dma_addr_t` (the free-list header is both).
    fn pool_word(&self) -> usize {
        if self.kernel.arch == Arch::Arm32 {
            4
        } else {
            8
        }
    }

    /// `dma_pool_create(name, dev, size, align, boundary)`: the pool's id, or `None`
    /// (NULL) for arguments Linux refuses (see the module header).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device or too many pools.
    pub fn dma_pool_create(
        &mut self,
        name: &str,
        dev: usize,
        size: u64,
        align: u64,
        boundary: u64,
    ) -> Result<Option<usize>> {
        self.device_checked(dev, "dma_pool_create")?;
        if self.kernel.dma_pools.len() >= MAX_POOLS {
            return Err(SimError::Invalid(format!(
                "dma_pool_create: more than {MAX_POOLS} pools in one run"
            )));
        }
        self.step();
        let align = align.max(1);
        if !align.is_power_of_two() || size == 0 || size > i32::MAX as u64 {
            return Ok(None);
        }
        let size = size
            .max(2 * self.pool_word() as u64)
            .next_multiple_of(align);
        let allocation = size.max(PAGE_SIZE);
        let boundary = match boundary {
            0 => allocation,
            b if b < size || !b.is_power_of_two() => return Ok(None),
            b => b.min(allocation),
        };
        let mut name = name.to_string();
        while name.len() > 31 {
            name.pop();
        }
        self.kernel
            .dma_pools
            .push(DmaPool::new(name, dev, size, allocation, boundary));
        Ok(Some(self.kernel.dma_pools.len() - 1))
    }

    /// `dmam_pool_create(...)`: a pool that `remove_device` destroys.
    ///
    /// # Errors
    /// As [`System::dma_pool_create`].
    pub fn dmam_pool_create(
        &mut self,
        name: &str,
        dev: usize,
        size: u64,
        align: u64,
        boundary: u64,
    ) -> Result<Option<usize>> {
        let id = self.dma_pool_create(name, dev, size, align, boundary)?;
        if let Some(id) = id {
            self.kernel.dma_pools[id].managed = true;
        }
        Ok(id)
    }

    /// devres at driver unbind: every live managed pool of `dev` is destroyed.
    ///
    /// # Errors
    /// The memory cap.
    pub(crate) fn dmam_pools_release(&mut self, dev: usize) -> Result<()> {
        let ids: Vec<usize> = (0..self.kernel.dma_pools.len())
            .rev()
            .filter(|&i| {
                let p = &self.kernel.dma_pools[i];
                p.dev == dev && p.managed && !p.destroyed
            })
            .collect();
        for id in ids {
            self.dma_pool_destroy(id)?;
        }
        Ok(())
    }

    /// The pool `id`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown pool.
    pub fn dma_pool(&self, id: usize) -> Result<&DmaPool> {
        self.kernel
            .dma_pools
            .get(id)
            .ok_or_else(|| SimError::Invalid(format!("no dma_pool #{id}")))
    }

    /// A live pool, or the error a use after `dma_pool_destroy` gets.
    fn live_pool(&self, id: usize, call: &str) -> Result<&DmaPool> {
        let p = self.dma_pool(id)?;
        if p.destroyed {
            return Err(SimError::Invalid(format!(
                "{call}: dma_pool {} was destroyed (a use after free of the pool)",
                p.name
            )));
        }
        if !self.kernel.devices[p.dev].bound {
            return Err(SimError::Invalid(format!(
                "{call}: the device of dma_pool {} was removed",
                p.name
            )));
        }
        Ok(p)
    }

    /// Writes a free-list header: the next free block's address and this block's
    /// DMA address.
    fn pool_write_header(&mut self, va: u64, next: u64, dma: u64) -> Result<()> {
        let w = self.pool_word();
        let mut h = [0u8; 16];
        h[..w].copy_from_slice(&next.to_le_bytes()[..w]);
        h[w..2 * w].copy_from_slice(&dma.to_le_bytes()[..w]);
        self.store_as(0, va, &h[..2 * w])
    }

    /// `pool_alloc_page` + `pool_initialise_page`: a new coherent page, its blocks
    /// chained in address order in front of the free list. False when
    /// `dma_alloc_coherent` failed.
    fn pool_grow(&mut self, id: usize) -> Result<bool> {
        let (dev, allocation) = {
            let p = &self.kernel.dma_pools[id];
            (p.dev, p.allocation)
        };
        let Some(buffer) = self.dma_alloc_coherent(dev, allocation)? else {
            return Ok(false);
        };
        let b = &self.kernel.buffers[&buffer];
        let page = PoolPage {
            buffer,
            va: b.va,
            dma: b.dma.unwrap_or(crate::kernel::dma::DMA_MAPPING_ERROR),
        };
        let pool = &self.kernel.dma_pools[id];
        let offsets = pool.block_offsets();
        let tail = pool.next_block;
        for (i, &off) in offsets.iter().enumerate() {
            let next = offsets.get(i + 1).map_or(tail, |&n| page.va + n);
            self.pool_write_header(page.va + off, next, page.dma + off)?;
        }
        let pool = &mut self.kernel.dma_pools[id];
        pool.next_block = offsets.first().map_or(tail, |&o| page.va + o);
        pool.nr_blocks += offsets.len() as u64;
        pool.pages.insert(0, page);
        Ok(true)
    }

    /// `dma_pool_alloc(pool, gfp, &handle)`: a block and its DMA handle, or `None`
    /// (NULL) when no page could be added, or when the free list is corrupted (see
    /// the module header). `zero` is `__GFP_ZERO` (`dma_pool_zalloc`).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or destroyed pool; the memory cap.
    pub fn dma_pool_alloc(&mut self, id: usize, zero: bool) -> Result<Option<PoolBlock>> {
        self.live_pool(id, "dma_pool_alloc")?;
        self.step();
        self.hw.advance(self.cfg.cost.dma_call_ps);
        if self.kernel.dma_pools[id].next_block == 0 && !self.pool_grow(id)? {
            return Ok(None);
        }
        let pool = &self.kernel.dma_pools[id];
        let (block, size, dev, name) = (pool.next_block, pool.size, pool.dev, pool.name.clone());
        // The block must be one this pool carved; a corrupted list points anywhere.
        let carved = pool
            .page_of_va(block)
            .is_some_and(|p| pool.is_block_start(block - p.va));
        if !carved {
            let dname = self.kernel.devices[dev].name.clone();
            self.printk(
                &dname,
                format!("dma_pool_alloc {name}: free list corrupted: next block {block:#x} is not a block of the pool (a kernel oopses here or hands out foreign memory)"),
            );
            self.kernel.dma_pools[id].next_block = 0;
            return Ok(None);
        }
        let w = self.pool_word();
        let h = self.load_as(0, block, 2 * w as u64)?;
        let word = |b: &[u8]| {
            let mut v = [0u8; 8];
            v[..w].copy_from_slice(b);
            u64::from_le_bytes(v)
        };
        let (next, dma) = (word(&h[..w]), word(&h[w..2 * w]));
        let pool = &mut self.kernel.dma_pools[id];
        pool.next_block = next;
        pool.nr_active = pool.nr_active.wrapping_add(1);
        pool.active.insert(block);
        let buffer = pool.page_of_va(block).map_or(0, |p| p.buffer);
        if zero {
            // memset(block, 0, size), a page at a time (a block may be huge).
            const ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
            for off in (0..size).step_by(PAGE_SIZE as usize) {
                let n = (size - off).min(PAGE_SIZE) as usize;
                self.store_as(0, block + off, &ZEROS[..n])?;
            }
        }
        let phys = self.hw.mmu.translate(0, block).map_or(0, |(pa, _)| pa);
        let ctx = self.ctx();
        self.check.pool_block_alloc(ctx, dev, dma, size, &name);
        Ok(Some(PoolBlock {
            va: block,
            dma,
            phys,
            buffer,
        }))
    }

    /// `dma_pool_free(pool, vaddr, dma)`: the block goes back on the free list.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or destroyed pool; the memory cap.
    pub fn dma_pool_free(&mut self, id: usize, va: u64, dma: u64) -> Result<()> {
        self.live_pool(id, "dma_pool_free")?;
        self.step();
        self.hw.advance(self.cfg.cost.dma_call_ps);
        let pool = &self.kernel.dma_pools[id];
        let (dev, size, name) = (pool.dev, pool.size, pool.name.clone());
        let dname = self.kernel.devices[dev].name.clone();
        let ctx = self.ctx();
        // DMAPOOL_DEBUG's checks: a bad address is refused, a double free goes on.
        let (refused, complaint) = match pool.page_of_dma(dma) {
            None => (true, Some(format!("dma_pool_free {name}, {va:#x}/{dma:#x} (bad dma)"))),
            Some(p) if p.va.wrapping_add(dma - p.dma) != va => (
                true,
                Some(format!(
                    "dma_pool_free {name}, {va:#x}/{dma:#x} (bad vaddr: the block at that dma is {:#x})",
                    p.va + (dma - p.dma)
                )),
            ),
            Some(_) if !pool.active.contains(&va) => (
                false,
                Some(format!("dma_pool_free {name}, dma {dma:#x} already free: a production kernel pushes it on the free list again, and two later dma_pool_alloc calls return the same block")),
            ),
            Some(_) => (false, None),
        };
        if let Some(msg) = complaint {
            let help = if refused {
                "free a block with the pool, CPU address and DMA handle dma_pool_alloc returned together"
            } else {
                "free each block once; clear the driver's pointer to it when it is freed"
            };
            self.check.report_plain(
                "dma-pool-bad-free",
                None,
                Some(&dname),
                Some(dma),
                Some(size),
                ctx,
                msg,
                help.into(),
                vec![],
            );
            if refused {
                return Ok(());
            }
        }
        let pool = &self.kernel.dma_pools[id];
        let next = pool.next_block;
        self.pool_write_header(va, next, dma)?;
        let pool = &mut self.kernel.dma_pools[id];
        pool.next_block = va;
        pool.nr_active = pool.nr_active.wrapping_sub(1);
        pool.active.remove(&va);
        let header = 2 * self.pool_word() as u64;
        self.check
            .pool_block_free(ctx, dev, dma, size, header, &name);
        Ok(())
    }

    /// `dma_pool_destroy(pool)`: every page back to `dma_free_coherent` — unless a
    /// block is still in use: then Linux prints "busy" and leaks the pages.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or destroyed pool.
    pub fn dma_pool_destroy(&mut self, id: usize) -> Result<()> {
        self.live_pool(id, "dma_pool_destroy")?;
        self.step();
        let pool = &mut self.kernel.dma_pools[id];
        pool.destroyed = true;
        let pages = std::mem::take(&mut pool.pages);
        let (dev, name, active, allocation) =
            (pool.dev, pool.name.clone(), pool.nr_active, pool.allocation);
        let dname = self.kernel.devices[dev].name.clone();
        if active != 0 {
            self.printk(&dname, format!("dma_pool_destroy {name} busy"));
            let ctx = self.ctx();
            let in_use = self.kernel.dma_pools[id].active.len();
            self.check.report_plain(
                "dma-pool-busy",
                None,
                Some(&dname),
                pages.first().map(|p| p.dma),
                Some(allocation * pages.len() as u64),
                ctx,
                format!("dma_pool_destroy {name} busy: {in_use} block(s) still allocated [nr_active={}]; its {} page(s) of coherent memory are leaked", active as i64, pages.len()),
                "dma_pool_free every block (after the device is done with it) before dma_pool_destroy".into(),
                vec![],
            );
            return Ok(());
        }
        for p in pages {
            self.check.pool_page_gone(dev, p.dma, allocation);
            self.dma_free_coherent(dev, allocation, p.buffer)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(size: u64, allocation: u64, boundary: u64) -> DmaPool {
        DmaPool::new("t".into(), 0, size, allocation, boundary)
    }

    #[test]
    fn blocks_fill_the_page_and_never_cross_the_boundary() {
        // 64-byte blocks: 64 per page, none skipped.
        assert_eq!(pool(64, 4096, 4096).block_offsets().len(), 64);
        // 96-byte blocks, 1 KiB boundary: 10 per KiB (960 bytes), the rest skipped.
        let offs = pool(96, 4096, 1024).block_offsets();
        assert_eq!(offs.len(), 40);
        for o in offs {
            assert_eq!(o / 1024, (o + 95) / 1024, "block at {o} crosses 1 KiB");
        }
        // A block larger than a page: one per allocation.
        assert_eq!(pool(6000, 6000, 6000).block_offsets(), vec![0]);
    }

    #[test]
    fn block_starts_are_exactly_the_carved_offsets() {
        for (size, allocation, boundary) in [
            (64, 4096, 4096),
            (96, 4096, 1024),
            (48, 4096, 64),
            (16, 4096, 4096),
            (6000, 6000, 6000),
            (24, 8192, 256),
        ] {
            let p = pool(size, allocation, boundary);
            let carved = p.block_offsets();
            for off in 0..allocation {
                assert_eq!(
                    p.is_block_start(off),
                    carved.binary_search(&off).is_ok(),
                    "size {size} boundary {boundary} offset {off}"
                );
            }
        }
    }
}
