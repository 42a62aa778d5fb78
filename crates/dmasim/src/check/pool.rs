//! `dma_pool` blocks for the sanitizer. `mm/dmapool.c` hands a freed block back to
//! its pool, not to the page allocator: the pool page's coherent mapping stays live,
//! so a device that still writes a freed block passes every mapping check. The
//! sanitizer therefore keeps the freed blocks of each device's pools and reports a
//! device access to one as `use-after-free-dma` (the write lands on the free list
//! the pool keeps inside its free blocks). Blocks a pool page never handed out are
//! not tracked: only a block freed by `dma_pool_free` is.

use std::collections::BTreeMap;

use super::{Ctx, DeviceAccess, HistoryEvent, Sanitizer};

/// A block given back with `dma_pool_free`.
#[derive(Debug, Clone)]
pub(super) struct FreedBlock {
    /// Block size (the pool's `size`).
    len: u64,
    /// Bytes of the free-list header at its start.
    header: u64,
    /// The pool's name.
    pool: String,
    /// When and where it was freed.
    at: Ctx,
}

/// Freed blocks by (device, bus address of the block's first byte).
#[derive(Debug, Default)]
pub(super) struct PoolBlocks {
    freed: BTreeMap<(usize, u64), FreedBlock>,
}

impl PoolBlocks {
    /// The freed block `[bus, bus+len)` of `dev` touches, if any.
    fn hit(&self, dev: usize, bus: u64, len: u64) -> Option<(u64, &FreedBlock)> {
        let end = bus.saturating_add(len.max(1));
        self.freed
            .range((dev, 0)..(dev, end))
            .next_back()
            .filter(|((_, start), b)| start + b.len > bus)
            .map(|((_, start), b)| (*start, b))
    }
}

impl Sanitizer {
    /// Adds an event to the history of the mapping that covers `[dma, dma+len)`.
    fn pool_history(&mut self, ctx: Ctx, dev: usize, dma: u64, len: u64, event: String) {
        if let Some(id) = self.entries.containing(dev, dma, Some(len), |_| true) {
            self.entries.get_mut(id).push(ctx, event);
        }
    }

    /// `dma_pool_alloc` handed out the block at `dma`: it is in use again.
    pub fn pool_block_alloc(&mut self, ctx: Ctx, dev: usize, dma: u64, len: u64, pool: &str) {
        self.pool_blocks.freed.remove(&(dev, dma));
        self.pool_history(
            ctx,
            dev,
            dma,
            len,
            format!("dma_pool_alloc({pool}) = block [dma={dma:#x}] [size={len}]"),
        );
    }

    /// `dma_pool_free` gave the block at `dma` back to its pool; its first `header`
    /// bytes now hold the pool's free list.
    #[allow(clippy::too_many_arguments)]
    pub fn pool_block_free(
        &mut self,
        ctx: Ctx,
        dev: usize,
        dma: u64,
        len: u64,
        header: u64,
        pool: &str,
    ) {
        self.pool_history(
            ctx,
            dev,
            dma,
            len,
            format!("dma_pool_free({pool}) block [dma={dma:#x}]"),
        );
        self.pool_blocks.freed.insert(
            (dev, dma),
            FreedBlock {
                len,
                header,
                pool: pool.to_string(),
                at: ctx,
            },
        );
    }

    /// A pool page went back to `dma_free_coherent` (`dma_pool_destroy`): forget
    /// its blocks (the coherent mapping's own checks take over).
    pub fn pool_page_gone(&mut self, dev: usize, dma: u64, allocation: u64) {
        let keys: Vec<(usize, u64)> = self
            .pool_blocks
            .freed
            .range((dev, dma)..(dev, dma.saturating_add(allocation)))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.pool_blocks.freed.remove(&k);
        }
    }

    /// Called for a device access that a live mapping (`id`) covers: reports it when
    /// it touches a block freed back to its pool.
    pub(super) fn pool_access(&mut self, ctx: Ctx, a: &DeviceAccess<'_>, id: u64) {
        if self.pool_blocks.freed.is_empty() {
            return;
        }
        let len = a.data.len() as u64;
        let Some((start, b)) = self.pool_blocks.hit(a.dev, a.bus, len) else {
            return;
        };
        let (pool, at, blen) = (b.pool.clone(), b.at, b.len);
        // Manifested when the write overwrote the free list the block holds; a read,
        // or a write past the header, is as wrong but corrupted nothing yet.
        let clobbered = a.write && a.bus < start + b.header;
        let verb = if a.write { "wrote" } else { "read" };
        let msg = format!(
            "{} {verb} {len} bytes at {:#x}, in a block of dma_pool {pool} freed at line {} ({} ns) [block dma={start:#x}] [size={blen}]{}",
            a.dev_name,
            a.bus,
            at.line,
            at.time_ns,
            if clobbered {
                "; it overwrote the free list the pool keeps inside free blocks, so a later dma_pool_alloc hands out a corrupted pointer"
            } else {
                ""
            }
        );
        let mut hist = self.entries.get(id).snapshot();
        hist.push(HistoryEvent {
            time_ns: ctx.time_ns,
            line: ctx.line,
            event: format!("{} {verb} {len} bytes at {:#x}", a.dev_name, a.bus).into(),
        });
        self.report_access(
            "use-after-free-dma",
            start,
            Some(clobbered),
            a,
            ctx,
            msg,
            "stop the device from using a block (clear its descriptor, wait for the hardware to let go) before dma_pool_free".into(),
            hist,
        );
    }
}
