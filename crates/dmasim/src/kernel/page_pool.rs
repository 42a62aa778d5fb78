//! The network stack's page recycler (`net/core/page_pool.c`, Linux 6.12) as a
//! driver uses it with `PP_FLAG_DMA_MAP | PP_FLAG_DMA_SYNC_DEV`.
//!
//! - `page_pool_create` checks the parameters as `page_pool_init` does: only known
//!   flags, `PP_FLAG_DMA_MAP` only with `DMA_FROM_DEVICE` or `DMA_BIDIRECTIONAL`,
//!   `PP_FLAG_DMA_SYNC_DEV` only with `PP_FLAG_DMA_MAP` and a non-zero `max_len`
//!   (else `-EINVAL`).
//! - A new page is mapped once for its whole life in the pool
//!   (`page_pool_dma_map`: `dma_map_page_attrs` with `DMA_ATTR_SKIP_CPU_SYNC |
//!   DMA_ATTR_WEAK_ORDERING`), then, with `PP_FLAG_DMA_SYNC_DEV`, synced for the
//!   device over `max_len` bytes from `offset` (`page_pool_dma_sync_for_device`).
//! - `page_pool_put_page(pool, page, dma_sync_size, allow_direct)` syncs
//!   `min(dma_sync_size, max_len)` bytes for the device (−1: `max_len`) and keeps
//!   the page, still mapped, for the next allocation: in the lockless alloc cache
//!   (`PP_ALLOC_CACHE_SIZE` = 128) when `allow_direct`, else in the ring
//!   (`pool_size`, at most 16384). A full cache gives the page back
//!   (`page_pool_return_page`: unmap with `DMA_ATTR_SKIP_CPU_SYNC`, free).
//! - `page_pool_destroy` gives back every cached page; pages still in flight keep
//!   the pool alive (`page_pool_release_retry` logs that) and are given back when
//!   they are put.
//!
//! Simplified: one CPU, no NAPI-direct checks (`allow_direct` is trusted), no
//! fragments (`page_pool_dev_alloc_frag`), no netmem.

use crate::check::MapKind;
use crate::config::PAGE_SIZE;
use crate::kernel::dma::{
    DmaDirection, DMA_ATTR_SKIP_CPU_SYNC, DMA_ATTR_WEAK_ORDERING, DMA_MAPPING_ERROR,
};
use crate::kernel::{errno, BufKind};
use crate::system::{Result, SimError, System};

/// `PP_FLAG_DMA_MAP` (include/net/page_pool/types.h): the pool maps its pages.
pub const PP_FLAG_DMA_MAP: u64 = 1 << 0;
/// `PP_FLAG_DMA_SYNC_DEV`: the pool syncs each page for the device before the
/// driver gets it back.
pub const PP_FLAG_DMA_SYNC_DEV: u64 = 1 << 1;
/// `PP_ALLOC_CACHE_SIZE`: the lockless per-pool cache of `allow_direct` puts.
pub const PP_ALLOC_CACHE_SIZE: usize = 128;

/// What the driver passes in `struct page_pool_params`.
#[derive(Debug, Clone, Copy)]
pub struct PagePoolParams {
    /// `PP_FLAG_*`.
    pub flags: u64,
    /// Pages per allocation: `2^order`.
    pub order: u32,
    /// Ring size (0: 1024).
    pub pool_size: u64,
    /// `dma_dir`.
    pub dir: DmaDirection,
    /// Bytes the device may write per page, synced for the device.
    pub max_len: u64,
    /// Where in the page the device starts writing (the headroom).
    pub offset: u64,
}

/// One `struct page_pool`.
#[derive(Debug, Clone)]
pub struct PagePool {
    /// The device the pages are mapped for.
    pub dev: usize,
    /// Its parameters.
    pub params: PagePoolParams,
    /// Pages kept for reuse from `allow_direct` puts: (buffer id, DMA address).
    cache: Vec<(u64, u64)>,
    /// Pages kept in the ring.
    ring: Vec<(u64, u64)>,
    /// Capacity of the ring.
    ring_size: usize,
    /// Pages the driver holds: buffer id → DMA address.
    pub inflight: std::collections::BTreeMap<u64, u64>,
    /// `page_pool_destroy` was called.
    pub destroyed: bool,
}

impl PagePool {
    /// Pages the pool holds for reuse.
    pub fn cached(&self) -> usize {
        self.cache.len() + self.ring.len()
    }
}

impl System {
    /// `page_pool_create(&params)`: the pool's id, or `-EINVAL` as
    /// `page_pool_init` refuses the parameters.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or removed device.
    pub fn page_pool_create(
        &mut self,
        dev: usize,
        p: PagePoolParams,
    ) -> Result<std::result::Result<usize, i64>> {
        self.device_checked(dev, "page_pool_create")?;
        self.step();
        let all = PP_FLAG_DMA_MAP | PP_FLAG_DMA_SYNC_DEV;
        let map_dir_ok = matches!(
            p.dir,
            DmaDirection::FromDevice | DmaDirection::Bidirectional
        );
        let refused = p.flags & !all != 0
            || (p.flags & PP_FLAG_DMA_MAP != 0 && !map_dir_ok)
            || (p.flags & PP_FLAG_DMA_SYNC_DEV != 0
                && (p.flags & PP_FLAG_DMA_MAP == 0 || p.max_len == 0))
            || p.order > crate::config::MAX_PAGE_ORDER;
        if refused {
            return Ok(Err(-errno::EINVAL));
        }
        let ring_size = if p.pool_size == 0 {
            1024
        } else {
            p.pool_size.min(16384) as usize
        };
        self.kernel.page_pools.push(PagePool {
            dev,
            params: p,
            cache: Vec::new(),
            ring: Vec::new(),
            ring_size,
            inflight: std::collections::BTreeMap::new(),
            destroyed: false,
        });
        Ok(Ok(self.kernel.page_pools.len() - 1))
    }

    fn page_pool_live(&self, pool: usize, call: &str) -> Result<&PagePool> {
        match self.kernel.page_pools.get(pool) {
            Some(p) if !p.destroyed => Ok(p),
            Some(_) => Err(SimError::Invalid(format!(
                "{call}: page_pool #{pool} was destroyed (page_pool_destroy)"
            ))),
            None => Err(SimError::Invalid(format!("{call}: no page_pool #{pool}"))),
        }
    }

    /// `page_pool_dma_sync_for_device(pool, page, dma_sync_size)`: with
    /// `PP_FLAG_DMA_SYNC_DEV`, `dma_sync_single_range_for_device(dev, dma,
    /// offset, min(dma_sync_size, max_len), dma_dir)`.
    fn page_pool_sync_for_device(&mut self, pool: usize, dma: u64, size: u64) -> Result<()> {
        let p = self.kernel.page_pools[pool].params;
        if p.flags & PP_FLAG_DMA_SYNC_DEV == 0 {
            return Ok(());
        }
        let dev = self.kernel.page_pools[pool].dev;
        let n = size.min(p.max_len);
        self.dma_sync_single_as(
            dev,
            dma + p.offset,
            n,
            p.dir,
            false,
            "page_pool_dma_sync_for_device",
        )
    }

    /// `page_pool_dev_alloc_pages(pool)`: a page (its buffer id and DMA address)
    /// from the cache, else a new one mapped by `page_pool_dma_map` and synced for
    /// the device; `None` (NULL) when no page or no mapping could be had.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or destroyed pool; the memory cap.
    pub fn page_pool_alloc_pages(&mut self, pool: usize) -> Result<Option<(u64, u64)>> {
        let p = self.page_pool_live(pool, "page_pool_dev_alloc_pages")?;
        let (dev, params) = (p.dev, p.params);
        self.device_checked(dev, "page_pool_dev_alloc_pages")?;
        let pp = &mut self.kernel.page_pools[pool];
        // __page_pool_get_cached: the alloc cache, refilled from the ring.
        if let Some((id, dma)) = pp.cache.pop().or_else(|| pp.ring.pop()) {
            pp.inflight.insert(id, dma);
            return Ok(Some((id, dma)));
        }
        // __page_pool_alloc_pages_slow: GFP_ATOMIC | __GFP_NOWARN from NAPI.
        let gfp = 0x820;
        let Some(id) = self.alloc_pages(params.order, gfp)? else {
            return Ok(None);
        };
        let va = self.kernel.buffers[&id].va;
        let dma = if params.flags & PP_FLAG_DMA_MAP != 0 {
            let dma = self.dma_map_attrs(
                dev,
                va,
                PAGE_SIZE << params.order,
                params.dir,
                MapKind::Page,
                DMA_ATTR_SKIP_CPU_SYNC | DMA_ATTR_WEAK_ORDERING,
            )?;
            if self.dma_mapping_error(dev, dma) {
                self.kfree(id, "page_pool_dma_map", BufKind::Pages);
                return Ok(None);
            }
            self.page_pool_sync_for_device(pool, dma, params.max_len)?;
            dma
        } else {
            DMA_MAPPING_ERROR
        };
        self.kernel.page_pools[pool].inflight.insert(id, dma);
        Ok(Some((id, dma)))
    }

    /// `page_pool_return_page`: unmap (no CPU sync) and free.
    fn page_pool_return(&mut self, pool: usize, id: u64, dma: u64) -> Result<()> {
        let (dev, p) = {
            let pp = &self.kernel.page_pools[pool];
            (pp.dev, pp.params)
        };
        if p.flags & PP_FLAG_DMA_MAP != 0 {
            self.dma_unmap_attrs(
                dev,
                dma,
                PAGE_SIZE << p.order,
                p.dir,
                MapKind::Page,
                DMA_ATTR_SKIP_CPU_SYNC | DMA_ATTR_WEAK_ORDERING,
            )?;
        }
        self.kfree(id, "page_pool_return_page", BufKind::Pages);
        Ok(())
    }

    /// `page_pool_put_page(pool, page, dma_sync_size, allow_direct)`: synced for
    /// the device (`dma_sync_size` −1 is `max_len`) and kept mapped for reuse, or
    /// given back when the cache is full or the pool destroyed.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown pool or a page the pool did not hand
    /// out (or that was put already).
    pub fn page_pool_put_page(
        &mut self,
        pool: usize,
        page: u64,
        dma_sync_size: i64,
        allow_direct: bool,
    ) -> Result<()> {
        self.step();
        let pp = self.kernel.page_pools.get_mut(pool).ok_or_else(|| {
            SimError::Invalid(format!("page_pool_put_page: no page_pool #{pool}"))
        })?;
        let dma = pp.inflight.remove(&page).ok_or_else(|| {
            SimError::Invalid(format!(
                "page_pool_put_page: buffer #{page} is not a page this pool handed out (or it was put already)"
            ))
        })?;
        if pp.destroyed {
            return self.page_pool_return(pool, page, dma);
        }
        let max = pp.params.max_len;
        let size = u64::try_from(dma_sync_size).unwrap_or(max);
        self.page_pool_sync_for_device(pool, dma, size)?;
        let pp = &mut self.kernel.page_pools[pool];
        if allow_direct && pp.cache.len() < PP_ALLOC_CACHE_SIZE {
            pp.cache.push((page, dma));
        } else if pp.ring.len() < pp.ring_size {
            pp.ring.push((page, dma));
        } else {
            return self.page_pool_return(pool, page, dma);
        }
        Ok(())
    }

    /// `page_pool_get_dma_addr(page)`: the DMA address the pool stored in the
    /// page, or `None` for a page no pool handed out.
    pub fn page_pool_get_dma_addr(&self, page: u64) -> Option<u64> {
        self.kernel
            .page_pools
            .iter()
            .find_map(|p| p.inflight.get(&page).copied())
    }

    /// `page_pool_destroy(pool)`: every cached page is given back; pages still in
    /// flight are given back when they are put.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or already destroyed pool.
    pub fn page_pool_destroy(&mut self, pool: usize) -> Result<()> {
        self.page_pool_live(pool, "page_pool_destroy")?;
        self.step();
        let pp = &mut self.kernel.page_pools[pool];
        pp.destroyed = true;
        let pages: Vec<(u64, u64)> = pp.cache.drain(..).chain(pp.ring.drain(..)).collect();
        let inflight = pp.inflight.len();
        for (id, dma) in pages {
            self.page_pool_return(pool, id, dma)?;
        }
        if inflight > 0 {
            // page_pool_release_retry, once the grace period has passed.
            self.printk(
                "page_pool",
                format!("page_pool_release_retry() stalled pool shutdown: id {pool}, {inflight} inflight"),
            );
        }
        Ok(())
    }
}
