//! The page allocator (`mm/page_alloc.c`, v6.12): zones, the buddy allocator with a
//! free list per order and migratetype, watermarks and lowmem protection.
//!
//! What it keeps from Linux: orders 0..=`MAX_PAGE_ORDER`; a free block's buddy is
//! `pfn ^ (1 << order)` and merges when free at the same order; `expand()` returns
//! the upper halves of a split; pageblocks (2 MiB) carry a migratetype, boot memory
//! is `MIGRATE_MOVABLE`; an empty list falls back per `fallbacks[]`, taking the
//! largest block and claiming its pageblock when the block is at least half a
//! pageblock; the zonelist runs from the highest zone the GFP flags allow down to
//! ZONE_DMA, each zone guarded by its min watermark plus `lowmem_reserve`
//! (`__zone_watermark_ok`, `setup_per_zone_lowmem_reserve`,
//! `__setup_per_zone_wmarks` with `min_free_kbytes = sqrt(lowmem_kbytes * 16)`).
//!
//! Where it differs: one NUMA node and no per-CPU page lists; no reclaim or compaction
//! on failure (the caller gets NULL at once); which free block of an order is taken
//! is drawn from the run's seeded stream — Linux's `CONFIG_SHUFFLE_PAGE_ALLOCATOR`
//! shuffles free lists to the same end, so that physically scattered pages are the
//! normal case. Free blocks live in per-list vectors plus a position map keyed by pfn
//! (the PageBuddy flag and order), so memory use follows the number of free blocks,
//! not the size of RAM.

use serde::Serialize;

use super::gfp::{
    gfp_migratetype, gfp_zone, MigrateType, ZoneType, GFP_HIGH, MAX_NR_ZONES, NR_MIGRATETYPES,
};
use crate::config::{MAX_PAGE_ORDER, PAGE_SHIFT, PAGE_SIZE};
use crate::fasthash::PageMap;
use crate::hw::rng::SimRng;

/// `pageblock_order` with 4K pages: 2 MiB blocks (`HUGETLB_PAGE_ORDER`).
pub const PAGEBLOCK_ORDER: u32 = 9;
/// Per-CPU page list: most order-0 pages kept before a batch goes back to the buddy
/// (`pcp->high`; Linux sizes it from the zone, this is a small fixed figure).
pub const PCP_HIGH: usize = 64;
/// Pages returned to the buddy lists at once when the list is over `PCP_HIGH`
/// (`pcp->batch`).
pub const PCP_BATCH: usize = 16;
const ORDERS: usize = MAX_PAGE_ORDER as usize + 1;

/// `get_order(size)`: the smallest order whose block holds `size` bytes.
pub fn get_order(size: u64) -> u32 {
    let pages = size.div_ceil(1 << PAGE_SHIFT).max(1);
    64 - (pages - 1).leading_zeros()
}

/// The free blocks of one zone.
#[derive(Default, Clone, PartialEq, Debug)]
struct FreeArea {
    /// One list per (order, migratetype).
    lists: Vec<Vec<u64>>,
    /// Free block starting at pfn → (order, migratetype, index in its list).
    pos: PageMap<(u8, u8, u32)>,
    /// Free pages.
    nr_free: u64,
}

impl FreeArea {
    fn new() -> FreeArea {
        FreeArea {
            lists: (0..ORDERS * NR_MIGRATETYPES).map(|_| Vec::new()).collect(),
            pos: PageMap::default(),
            nr_free: 0,
        }
    }

    #[inline]
    fn list(order: u32, mt: MigrateType) -> usize {
        order as usize * NR_MIGRATETYPES + mt as usize
    }

    fn add(&mut self, pfn: u64, order: u32, mt: MigrateType) {
        let l = Self::list(order, mt);
        self.pos
            .insert(pfn, (order as u8, mt as u8, self.lists[l].len() as u32));
        self.lists[l].push(pfn);
        self.nr_free += 1 << order;
    }

    fn del(&mut self, pfn: u64) -> Option<(u32, MigrateType)> {
        let (order, mt, idx) = self.pos.remove(&pfn)?;
        let mt = mt_from(mt);
        let l = Self::list(u32::from(order), mt);
        let list = &mut self.lists[l];
        list.swap_remove(idx as usize);
        if let Some(&moved) = list.get(idx as usize) {
            if let Some(p) = self.pos.get_mut(&moved) {
                p.2 = idx;
            }
        }
        self.nr_free -= 1 << order;
        Some((u32::from(order), mt))
    }

    /// `del` of the free block starting at `start` when it holds `pfn`: its order
    /// and migratetype, or `None` with nothing changed (one lookup of the position
    /// map, whatever the block's order).
    fn del_holding(&mut self, start: u64, pfn: u64) -> Option<(u32, MigrateType)> {
        let std::collections::hash_map::Entry::Occupied(e) = self.pos.entry(start) else {
            return None;
        };
        let order = u32::from(e.get().0);
        if pfn - start >= 1 << order {
            return None;
        }
        let (_, mt, idx) = e.remove();
        let mt = mt_from(mt);
        let list = &mut self.lists[Self::list(order, mt)];
        list.swap_remove(idx as usize);
        if let Some(&moved) = list.get(idx as usize) {
            if let Some(p) = self.pos.get_mut(&moved) {
                p.2 = idx;
            }
        }
        self.nr_free -= 1 << order;
        Some((order, mt))
    }

    /// Adds the block of `order` at `start` without the page `pfn` inside it, in
    /// aligned pieces, smallest next to `pfn` (`expand` for one page taken out of
    /// the middle).
    fn add_around(&mut self, start: u64, order: u32, pfn: u64, mt: MigrateType) {
        let end = start + (1 << order);
        for (a, b) in [(start, pfn), (pfn + 1, end)] {
            let mut s = a;
            while s < b {
                let mut o = s.trailing_zeros().min(order);
                while s + (1 << o) > b {
                    o -= 1;
                }
                self.add(s, o, mt);
                s += 1 << o;
            }
        }
    }

    /// Takes a block of exactly `order` and `mt`, chosen by the seeded stream.
    fn take(&mut self, order: u32, mt: MigrateType, rng: &mut SimRng) -> Option<u64> {
        let l = Self::list(order, mt);
        let n = self.lists[l].len();
        if n == 0 {
            return None;
        }
        let pfn = self.lists[l][rng.below(n)];
        self.del(pfn);
        Some(pfn)
    }

    fn is_free_at(&self, pfn: u64, order: u32) -> Option<MigrateType> {
        self.pos
            .get(&pfn)
            .filter(|p| u32::from(p.0) == order)
            .map(|p| mt_from(p.1))
    }

    fn has(&self, order: u32, mt: MigrateType) -> bool {
        !self.lists[Self::list(order, mt)].is_empty()
    }

    /// Free pages on the CMA lists (`NR_FREE_CMA_PAGES`).
    fn free_cma(&self) -> u64 {
        (0..ORDERS as u32)
            .map(|o| (self.lists[Self::list(o, MigrateType::Cma)].len() as u64) << o)
            .sum()
    }
}

fn mt_from(v: u8) -> MigrateType {
    match v {
        0 => MigrateType::Unmovable,
        1 => MigrateType::Movable,
        2 => MigrateType::Reclaimable,
        _ => MigrateType::Cma,
    }
}

/// One zone (`struct zone`).
pub struct Zone {
    /// Which zone.
    pub kind: ZoneType,
    /// First pfn of the span.
    pub start_pfn: u64,
    /// One past the last pfn.
    pub end_pfn: u64,
    /// Pages the allocator manages (the span minus boot reservations).
    pub managed: u64,
    /// `_watermark[WMARK_MIN]` in pages.
    pub watermark_min: u64,
    /// `lowmem_reserve[classzone]` in pages.
    pub lowmem_reserve: [u64; MAX_NR_ZONES],
    /// Pages handed out.
    pub allocated: u64,
    free: FreeArea,
    /// Pageblocks whose migratetype is not the boot default (MOVABLE).
    pageblock_mt: PageMap<MigrateType>,
    /// `per_cpu_pages` lists of order-0 pages per migratetype, hottest last: a freed
    /// page is the next one handed out (one list for all CPUs here).
    pcp: Vec<Vec<u64>>,
}

impl Zone {
    fn empty(kind: ZoneType) -> Zone {
        Zone {
            kind,
            start_pfn: 0,
            end_pfn: 0,
            managed: 0,
            watermark_min: 0,
            lowmem_reserve: [0; MAX_NR_ZONES],
            allocated: 0,
            free: FreeArea::new(),
            pageblock_mt: PageMap::default(),
            pcp: (0..NR_MIGRATETYPES).map(|_| Vec::new()).collect(),
        }
    }

    /// Free pages (buddy lists and per-CPU lists).
    pub fn free_pages(&self) -> u64 {
        self.free.nr_free + self.pcp.iter().map(|l| l.len() as u64).sum::<u64>()
    }

    /// `free_unref_page`: an order-0 page goes to the per-CPU list of its pageblock's
    /// migratetype; past `PCP_HIGH` the oldest `PCP_BATCH` go back to the buddy.
    fn free_pcp(&mut self, pfn: u64) {
        let mt = self.pageblock_mt(pfn);
        if mt == MigrateType::Cma {
            self.free_one(pfn, 0);
            return;
        }
        self.pcp[mt as usize].push(pfn);
        if self.pcp[mt as usize].len() > PCP_HIGH {
            let batch: Vec<u64> = self.pcp[mt as usize].drain(..PCP_BATCH).collect();
            for p in batch {
                self.free_one(p, 0);
            }
        }
    }

    fn contains(&self, pfn: u64) -> bool {
        (self.start_pfn..self.end_pfn).contains(&pfn)
    }

    fn pageblock_mt(&self, pfn: u64) -> MigrateType {
        self.pageblock_mt
            .get(&(pfn >> PAGEBLOCK_ORDER))
            .copied()
            .unwrap_or(MigrateType::Movable)
    }

    fn set_pageblock_mt(&mut self, pfn: u64, order: u32, mt: MigrateType) {
        let first = pfn >> PAGEBLOCK_ORDER;
        let n = 1u64 << order.saturating_sub(PAGEBLOCK_ORDER);
        for b in first..first + n {
            if mt == MigrateType::Movable {
                self.pageblock_mt.remove(&b);
            } else {
                self.pageblock_mt.insert(b, mt);
            }
        }
    }

    /// Frees `[s, e)` in the largest naturally aligned blocks.
    fn free_range(&mut self, mut s: u64, e: u64) {
        while s < e {
            let mut order = (s.trailing_zeros()).min(MAX_PAGE_ORDER);
            while s + (1 << order) > e {
                order -= 1;
            }
            let mt = self.pageblock_mt(s);
            self.free.add(s, order, mt);
            s += 1 << order;
        }
    }

    /// `expand()`: splits a block of `high` down to `low`, returning the upper halves.
    fn expand(&mut self, pfn: u64, mut high: u32, low: u32, mt: MigrateType) {
        while high > low {
            high -= 1;
            self.free.add(pfn + (1 << high), high, mt);
        }
    }

    /// `__rmqueue_smallest` on the CMA lists.
    fn rmqueue_cma(&mut self, order: u32, rng: &mut SimRng) -> Option<u64> {
        for o in order..=MAX_PAGE_ORDER {
            if let Some(pfn) = self.free.take(o, MigrateType::Cma, rng) {
                self.expand(pfn, o, order, MigrateType::Cma);
                return Some(pfn);
            }
        }
        None
    }

    /// `__rmqueue`: own list first, then the fallbacks. Movable requests may use CMA
    /// pageblocks: first when more than half of the zone's free memory is CMA, else
    /// after their own lists (`__rmqueue_cma_fallback`).
    fn rmqueue(&mut self, order: u32, mt: MigrateType, rng: &mut SimRng) -> Option<u64> {
        if mt == MigrateType::Movable && self.free.free_cma() > self.free_pages() / 2 {
            if let Some(pfn) = self.rmqueue_cma(order, rng) {
                return Some(pfn);
            }
        }
        for o in order..=MAX_PAGE_ORDER {
            if let Some(pfn) = self.free.take(o, mt, rng) {
                self.expand(pfn, o, order, mt);
                return Some(pfn);
            }
        }
        if mt == MigrateType::Movable {
            if let Some(pfn) = self.rmqueue_cma(order, rng) {
                return Some(pfn);
            }
        }
        // __rmqueue_fallback: the largest block of another type, so that one
        // stolen pageblock serves many later requests.
        for &ft in mt.fallbacks() {
            for o in (order..=MAX_PAGE_ORDER).rev() {
                if !self.free.has(o, ft) {
                    continue;
                }
                let pfn = self.free.take(o, ft, rng)?;
                let claim = o >= PAGEBLOCK_ORDER / 2;
                let rest = if claim {
                    self.set_pageblock_mt(pfn, o.max(PAGEBLOCK_ORDER), mt);
                    mt
                } else {
                    ft
                };
                self.expand(pfn, o, order, rest);
                return Some(pfn);
            }
        }
        None
    }

    /// The free buddy block holding `pfn`: (first pfn, order).
    fn free_block_of(&self, pfn: u64) -> Option<(u64, u32)> {
        (0..=MAX_PAGE_ORDER).find_map(|o| {
            let start = pfn & !((1u64 << o) - 1);
            self.free.is_free_at(start, o).map(|_| (start, o))
        })
    }

    /// Takes the single page `pfn` out of the free block that holds it, giving the
    /// rest of the block back in aligned pieces. `false` when `pfn` is not free.
    fn take_page(&mut self, pfn: u64) -> bool {
        // Free blocks are aligned and disjoint, so at most one holds `pfn`: the one
        // starting at `pfn` rounded down to its order. Each candidate start is
        // looked up once (orders that round `pfn` down alike share it).
        let mut last = None;
        for o in 0..=MAX_PAGE_ORDER {
            let start = pfn & !((1u64 << o) - 1);
            if last == Some(start) {
                continue;
            }
            last = Some(start);
            if let Some((o, mt)) = self.free.del_holding(start, pfn) {
                self.free.add_around(start, o, pfn, mt);
                return true;
            }
        }
        false
    }

    /// `__free_one_page`: merges with free buddies inside the zone.
    fn free_one(&mut self, mut pfn: u64, mut order: u32) {
        let mt = self.pageblock_mt(pfn);
        while order < MAX_PAGE_ORDER {
            let buddy = pfn ^ (1 << order);
            if !self.contains(buddy) || buddy + (1 << order) > self.end_pfn {
                break;
            }
            match self.free.is_free_at(buddy, order) {
                // CMA blocks never merge with other types (they must stay CMA).
                Some(bmt) if (bmt == MigrateType::Cma) == (mt == MigrateType::Cma) => {}
                _ => break,
            }
            self.free.del(buddy);
            pfn = pfn.min(buddy);
            order += 1;
        }
        let mt = if mt == MigrateType::Cma {
            mt
        } else {
            self.pageblock_mt(pfn)
        };
        self.free.add(pfn, order, mt);
    }
}

/// Why an allocation failed: the zones it could use and what they had.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllocFailure {
    /// The highest zone the request allowed.
    pub classzone: ZoneType,
    /// The order asked for.
    pub order: u32,
    /// Every populated zone: (zone, free pages, managed pages, usable by this request).
    pub zones: Vec<(ZoneType, u64, u64, bool)>,
}

impl AllocFailure {
    /// True when memory was free in zones this request could not use.
    pub fn free_elsewhere(&self) -> u64 {
        self.zones.iter().filter(|z| !z.3).map(|z| z.1).sum()
    }
}

/// The CMA area (`struct cma`, mm/cma.c): a fixed range of pageblocks marked
/// MIGRATE_CMA, lent to movable allocations while `cma_alloc` does not need them.
#[derive(Debug, Clone)]
pub struct CmaArea {
    /// First pfn.
    pub base_pfn: u64,
    /// Pages.
    pub count: u64,
    /// One bit per page (`order_per_bit` = 0): taken by `cma_alloc`.
    pub bitmap: Vec<bool>,
    /// The zone it lies in.
    pub zone: ZoneType,
}

impl CmaArea {
    /// Pages taken by `cma_alloc`.
    pub fn used(&self) -> u64 {
        self.bitmap.iter().filter(|&&b| b).count() as u64
    }
}

/// One memory node (`pglist_data`): its zones.
pub struct Node {
    /// All zone types, indexed by `ZoneType as usize`; absent ones are empty.
    pub zones: Vec<Zone>,
    configured: [bool; MAX_NR_ZONES],
    /// The global CMA area, if one was reserved.
    pub cma: Option<CmaArea>,
}

/// Where each zone ends, as the arch sets it up.
#[derive(Debug, Clone, Copy)]
pub struct ZoneLayout {
    /// Zones the kernel is built with.
    pub configured: [bool; MAX_NR_ZONES],
    /// One past the last byte of each configured zone (physical); ZONE_NORMAL's and
    /// ZONE_HIGHMEM's end is the end of RAM or of lowmem.
    pub ends: [u64; MAX_NR_ZONES],
}

/// Free blocks boot's aging may add to a zone (`Node::age`): each page taken out of
/// a free block of order o leaves o blocks for one, and the pages aged in one
/// region share its blocks, so a boot adds about 3.3 blocks per page taken
/// (measured on the presets); room for 4 per page.
fn aging_room(regions: u64, per_region: u64) -> usize {
    (regions * per_region * 4) as usize
}

impl Node {
    /// Lays RAM `[ram_start, ram_end)` out in zones and frees everything but the
    /// `reserved` physical ranges (the kernel image, boot allocations).
    pub fn new(ram_start: u64, ram_end: u64, layout: &ZoneLayout, reserved: &[(u64, u64)]) -> Node {
        let mut zones: Vec<Zone> = ZoneType::ALL.iter().map(|&z| Zone::empty(z)).collect();
        let mut start = ram_start;
        for z in ZoneType::ALL {
            if !layout.configured[z as usize] {
                continue;
            }
            let end = layout.ends[z as usize].clamp(start, ram_end);
            let zone = &mut zones[z as usize];
            zone.start_pfn = start >> PAGE_SHIFT;
            zone.end_pfn = end >> PAGE_SHIFT;
            // Free what is not reserved, range by range.
            let mut cur = start;
            let mut res: Vec<(u64, u64)> = reserved
                .iter()
                .map(|&(a, b)| (a.clamp(start, end), b.clamp(start, end)))
                .filter(|r| r.0 < r.1)
                .collect();
            res.sort_unstable();
            for (a, b) in res {
                if a > cur {
                    zone.free_range(cur >> PAGE_SHIFT, a >> PAGE_SHIFT);
                }
                cur = cur.max(b.next_multiple_of(PAGE_SIZE));
            }
            if end > cur {
                zone.free_range(cur >> PAGE_SHIFT, end >> PAGE_SHIFT);
            }
            zone.managed = zone.free.nr_free;
            start = end;
        }
        let mut node = Node {
            zones,
            configured: layout.configured,
            cma: None,
        };
        node.setup_watermarks();
        node
    }

    /// `calculate_min_free_kbytes` + `__setup_per_zone_wmarks` +
    /// `setup_per_zone_lowmem_reserve`.
    fn setup_watermarks(&mut self) {
        let lowmem: u64 = self
            .zones
            .iter()
            .filter(|z| z.kind != ZoneType::HighMem)
            .map(|z| z.managed)
            .sum();
        let min_free_kbytes = isqrt(lowmem * (PAGE_SIZE >> 10) * 16).clamp(128, 262_144);
        let pages_min = min_free_kbytes >> (PAGE_SHIFT - 10);
        for z in &mut self.zones {
            z.watermark_min = if z.kind == ZoneType::HighMem {
                // SWAP_CLUSTER_MAX..=128 pages, a 1024th of the zone.
                (z.managed / 1024).clamp(32, 128).min(z.managed)
            } else {
                (pages_min * z.managed).checked_div(lowmem).unwrap_or(0)
            };
        }
        for i in 0..MAX_NR_ZONES {
            let ratio = self.zones[i].kind.lowmem_reserve_ratio();
            let clear = ratio == 0 || self.zones[i].managed == 0;
            let mut upper = 0;
            for j in i + 1..MAX_NR_ZONES {
                upper += self.zones[j].managed;
                self.zones[i].lowmem_reserve[j] = if clear { 0 } else { upper / ratio };
            }
        }
    }

    /// Ages a freshly booted node: the kernel and the page cache have used memory
    /// since boot. About 1/512 of each zone (at most 16 MiB) is taken a page at a
    /// time, 64 random pages in each of a few random 4 MiB regions, and half of it is
    /// given back. Later single-page allocations then come from scattered holes, as
    /// on a system that has been running, while most large blocks stay whole.
    /// Returns the pages left in use.
    pub fn age(&mut self, rng: &mut SimRng) -> Vec<u64> {
        const PER_REGION: u64 = 64;
        let region = 1u64 << MAX_PAGE_ORDER;
        let mut kept = Vec::new();
        // CMA pageblocks hold only movable allocations, which cma_alloc migrates
        // away; kernel data aged in here would wrongly pin the pool.
        let cma = self
            .cma
            .as_ref()
            .map_or(0..0, |c| c.base_pfn..c.base_pfn + c.count);
        for z in &mut self.zones {
            let span = z.end_pfn - z.start_pfn;
            if z.managed == 0 || span < region {
                continue;
            }
            let regions = ((z.managed / 512).min(4096) / PER_REGION).max(1);
            // The map of free blocks would otherwise grow (and rehash all it
            // holds) a few times over while it is filled; its iteration order is
            // never used, so the room changes nothing else.
            z.free.pos.reserve(aging_room(regions, PER_REGION));
            let mut taken = Vec::new();
            for r in 0..regions {
                let base = z.start_pfn + (rng.next_u64() % (span - region + 1));
                // Every other region holds kernel data: its pageblocks are unmovable,
                // so kernel allocations find scattered holes too.
                let aligned = base & !(region - 1);
                if r % 2 == 1
                    && aligned >= z.start_pfn
                    && z.free.is_free_at(aligned, MAX_PAGE_ORDER).is_some()
                {
                    z.free.del(aligned);
                    z.set_pageblock_mt(aligned, MAX_PAGE_ORDER, MigrateType::Unmovable);
                    z.free.add(aligned, MAX_PAGE_ORDER, MigrateType::Unmovable);
                }
                for _ in 0..PER_REGION {
                    let pfn = base + rng.next_u64() % region;
                    if !cma.contains(&pfn) && z.take_page(pfn) {
                        taken.push(pfn);
                    }
                }
            }
            z.allocated += taken.len() as u64;
            for (i, &pfn) in taken.iter().enumerate() {
                if i % 2 == 0 {
                    z.allocated -= 1;
                    z.free_one(pfn, 0);
                } else {
                    kept.push(pfn);
                }
            }
        }
        kept
    }

    /// `cma_declare_contiguous` + `cma_activate_area`: reserves `bytes` (rounded up
    /// to 4 MiB) ending at or below `limit`, top-down as memblock allocates, and turns
    /// its pageblocks into MIGRATE_CMA. The area lies in one zone and was free.
    /// Returns its physical range, or why it could not be placed.
    pub fn reserve_cma(
        &mut self,
        bytes: u64,
        limit: u64,
    ) -> std::result::Result<(u64, u64), String> {
        let block = 1u64 << MAX_PAGE_ORDER;
        let count = (bytes >> PAGE_SHIFT).div_ceil(block) * block;
        for zi in (0..MAX_NR_ZONES).rev() {
            let z = &self.zones[zi];
            let top = z.end_pfn.min(limit >> PAGE_SHIFT) & !(block - 1);
            if z.managed == 0 || top < z.start_pfn + count {
                continue;
            }
            // Highest fully free run of max-order blocks below the limit.
            let mut base = top - count;
            while base >= z.start_pfn {
                if (base..base + count)
                    .step_by(block as usize)
                    .all(|p| z.free.is_free_at(p, MAX_PAGE_ORDER).is_some())
                {
                    let z = &mut self.zones[zi];
                    for p in (base..base + count).step_by(block as usize) {
                        z.free.del(p);
                        z.set_pageblock_mt(p, MAX_PAGE_ORDER, MigrateType::Cma);
                        z.free.add(p, MAX_PAGE_ORDER, MigrateType::Cma);
                    }
                    self.cma = Some(CmaArea {
                        base_pfn: base,
                        count,
                        bitmap: vec![false; count as usize],
                        zone: z.kind,
                    });
                    return Ok((base << PAGE_SHIFT, (base + count) << PAGE_SHIFT));
                }
                if base < block {
                    break;
                }
                base -= block;
            }
        }
        Err(format!(
            "no free {} below {limit:#x}",
            crate::units::human_size(count << PAGE_SHIFT)
        ))
    }

    /// `memblock_alloc_low()` at boot: the highest run of `bytes` (whole pages) of free
    /// memory ending at or below `limit`, inside one zone, taken out of the allocator
    /// for good (the pages stop being managed, as memblock reservations never reach
    /// the buddy allocator). Returns the first byte, or `None` when no run fits.
    pub fn memblock_alloc_low(&mut self, bytes: u64, limit: u64) -> Option<u64> {
        let count = bytes.div_ceil(PAGE_SIZE);
        // The CMA area is a memblock reservation too: never free for memblock.
        let cma = self
            .cma
            .as_ref()
            .map_or(0..0, |c| c.base_pfn..c.base_pfn + c.count);
        for zi in (0..MAX_NR_ZONES).rev() {
            let z = &self.zones[zi];
            let mut top = z.end_pfn.min(limit >> PAGE_SHIFT);
            while top >= z.start_pfn + count {
                let base = top - count;
                // The highest busy page of the run, walking down a free block at a
                // time (a CMA page counts as busy, and so does the whole area).
                let mut p = top;
                let mut busy = None;
                while p > base {
                    let q = p - 1;
                    if cma.contains(&q) {
                        busy = Some(cma.start);
                        break;
                    }
                    match z.free_block_of(q) {
                        Some((start, _)) => p = start,
                        None => {
                            busy = Some(q);
                            break;
                        }
                    }
                }
                if let Some(b) = busy {
                    // Any run that fits must end at or below it.
                    top = b;
                    continue;
                }
                let z = &mut self.zones[zi];
                let mut p = base;
                while p < top {
                    let (start, order) = z.free_block_of(p).expect("checked free");
                    let end = start + (1 << order);
                    if start >= base && end <= top {
                        z.free.del(start);
                        p = end;
                    } else {
                        z.take_page(p);
                        p += 1;
                    }
                }
                z.managed -= count;
                self.setup_watermarks();
                return Some(base << PAGE_SHIFT);
            }
        }
        None
    }

    /// Whether `pfn` is free: on a per-CPU list or inside a free buddy block (for
    /// the invariant checks: a page in use must not be here).
    pub fn is_free(&self, pfn: u64) -> bool {
        let Some(z) = self.zone_of(pfn) else {
            return false;
        };
        let zone = &self.zones[z as usize];
        zone.pcp.iter().any(|l| l.contains(&pfn))
            || (0..=MAX_PAGE_ORDER)
                .any(|o| zone.free.is_free_at(pfn & !((1u64 << o) - 1), o).is_some())
    }

    /// If `pfn` is free in the buddy or per-CPU lists, takes it (for
    /// `alloc_contig_range`).
    pub fn take_free_page(&mut self, pfn: u64) -> bool {
        let Some(z) = self.zone_of(pfn) else {
            return false;
        };
        let zone = &mut self.zones[z as usize];
        for l in &mut zone.pcp {
            if let Some(i) = l.iter().position(|&p| p == pfn) {
                l.remove(i);
                zone.allocated += 1;
                return true;
            }
        }
        if zone.take_page(pfn) {
            zone.allocated += 1;
            return true;
        }
        false
    }

    /// Frees one page straight into the buddy lists (CMA pages skip the per-CPU lists).
    pub fn free_page_buddy(&mut self, pfn: u64) {
        if let Some(z) = self.zone_of(pfn) {
            let zone = &mut self.zones[z as usize];
            zone.allocated -= 1;
            zone.free_one(pfn, 0);
        }
    }

    /// Free pages on the CMA lists.
    pub fn free_cma_pages(&self) -> u64 {
        self.zones.iter().map(|z| z.free.free_cma()).sum()
    }

    /// True when `pfn` lies in the CMA area.
    pub fn in_cma(&self, pfn: u64) -> bool {
        self.cma
            .as_ref()
            .is_some_and(|c| pfn >= c.base_pfn && pfn < c.base_pfn + c.count)
    }

    /// The zone holding `pfn`.
    pub fn zone_of(&self, pfn: u64) -> Option<ZoneType> {
        self.zones.iter().find(|z| z.contains(pfn)).map(|z| z.kind)
    }

    /// Zones the kernel is configured with.
    pub fn configured(&self) -> [bool; MAX_NR_ZONES] {
        self.configured
    }

    /// Free pages in all zones.
    pub fn free_count(&self) -> u64 {
        self.zones.iter().map(Zone::free_pages).sum()
    }

    /// `alloc_pages(gfp, order)`: walks the zonelist from the highest zone `gfp`
    /// allows down to ZONE_DMA, taking from the first zone whose free pages stay
    /// above its min watermark plus its `lowmem_reserve` for that class.
    ///
    /// # Errors
    /// [`AllocFailure`] with each zone's free and managed pages.
    pub fn alloc_pages(
        &mut self,
        order: u32,
        gfp: u64,
        rng: &mut SimRng,
    ) -> Result<u64, AllocFailure> {
        let classzone = gfp_zone(gfp, &self.configured);
        let mt = gfp_migratetype(gfp);
        let fail = |node: &Node| AllocFailure {
            classzone,
            order,
            zones: node
                .zones
                .iter()
                .filter(|z| z.managed > 0)
                .map(|z| (z.kind, z.free_pages(), z.managed, z.kind <= classzone))
                .collect(),
        };
        if order > MAX_PAGE_ORDER {
            return Err(fail(self));
        }
        for zi in (0..=classzone as usize).rev() {
            let zone = &mut self.zones[zi];
            if zone.managed == 0 {
                continue;
            }
            let mut mark = zone.watermark_min;
            if gfp & GFP_HIGH != 0 {
                mark -= mark / 2;
            }
            // Free CMA pages are no use to a request that may not take them
            // (`__zone_watermark_unusable_free`).
            let unusable = if mt == MigrateType::Movable {
                0
            } else {
                zone.free.free_cma()
            };
            let free_after = zone.free_pages() as i64 - unusable as i64 - (1i64 << order) + 1;
            if free_after <= (mark + zone.lowmem_reserve[classzone as usize]) as i64 {
                continue;
            }
            if order == 0 {
                if let Some(pfn) = zone.pcp[mt as usize].pop() {
                    zone.allocated += 1;
                    return Ok(pfn);
                }
            }
            if let Some(pfn) = zone.rmqueue(order, mt, rng) {
                zone.allocated += 1 << order;
                return Ok(pfn);
            }
            // The slow path drains the per-CPU lists so their pages can merge.
            if zone.pcp.iter().any(|l| !l.is_empty()) {
                let cached: Vec<u64> = zone.pcp.iter_mut().flat_map(std::mem::take).collect();
                for p in cached {
                    zone.free_one(p, 0);
                }
                if let Some(pfn) = zone.rmqueue(order, mt, rng) {
                    zone.allocated += 1 << order;
                    return Ok(pfn);
                }
            }
        }
        Err(fail(self))
    }

    /// `__free_pages(pfn, order)`.
    pub fn free_pages(&mut self, pfn: u64, order: u32) {
        if let Some(z) = self.zone_of(pfn) {
            let zone = &mut self.zones[z as usize];
            zone.allocated -= 1 << order;
            if order == 0 {
                zone.free_pcp(pfn);
            } else {
                zone.free_one(pfn, order);
            }
        }
    }
}

/// Integer square root (`int_sqrt`).
fn isqrt(x: u64) -> u64 {
    let mut r = (x as f64).sqrt() as u64;
    while r * r > x {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= x {
        r += 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::mm::gfp::{GFP_ATOMIC, GFP_DMA, GFP_HIGHUSER_MOVABLE, GFP_KERNEL};

    fn layout(dma_end: u64, ram_end: u64) -> ZoneLayout {
        ZoneLayout {
            configured: [true, true, true, false],
            ends: [dma_end, 4 << 30, ram_end, ram_end],
        }
    }

    #[test]
    fn orders() {
        assert_eq!(get_order(1), 0);
        assert_eq!(get_order(4096), 0);
        assert_eq!(get_order(4097), 1);
        assert_eq!(get_order(1 << 20), 8);
    }

    #[test]
    fn boot_frees_everything_but_the_reservations_in_the_right_zones() {
        // 1 GiB at 0x4000_0000, ZONE_DMA up to 0x5000_0000, 32 MiB kernel image.
        let n = Node::new(
            0x4000_0000,
            0x8000_0000,
            &layout(0x5000_0000, 0x8000_0000),
            &[(0x4000_0000, 0x4200_0000)],
        );
        assert_eq!(n.zones[0].managed, (0x1000_0000 - 0x200_0000) >> 12);
        assert_eq!(n.zones[1].managed, (0x3000_0000) >> 12, "DMA32 up to 4 GiB");
        assert_eq!(n.zones[2].managed, 0);
        assert_eq!(n.zone_of(0x4100_0000 >> 12), Some(ZoneType::Dma));
        assert!(n.zones[0].watermark_min > 0);
        assert_eq!(n.zones[0].lowmem_reserve[1], n.zones[1].managed / 256);
    }

    #[test]
    fn memblock_alloc_low_takes_the_highest_free_run_below_the_limit_outside_cma() {
        let mut n = Node::new(
            0x4000_0000,
            0x8000_0000,
            &layout(0x5000_0000, 0x8000_0000),
            &[(0x4000_0000, 0x4200_0000)],
        );
        n.reserve_cma(16 << 20, 0x5000_0000).unwrap();
        let cma = n.cma.as_ref().map(|c| (c.base_pfn, c.count)).unwrap();
        // A busy page just below the CMA area pushes the run under it.
        let busy = cma.0 - 3;
        assert!(n.take_free_page(busy));
        let before = n.free_count();
        let managed = n.zones[0].managed;
        let start = n.memblock_alloc_low(2 << 20, 0x5000_0000).unwrap();
        let (first, last) = (start >> 12, (start + (2 << 20)) >> 12);
        assert_eq!(last, busy, "highest run below the busy page");
        assert!(last <= cma.0 && start >= 0x4200_0000);
        assert_eq!(n.free_count(), before - 512);
        assert_eq!(n.zones[0].managed, managed - 512);
        for p in first..last {
            assert!(!n.take_free_page(p), "pfn {p:#x} still free");
        }
        // Below 0x4300_0000 only 16 MiB are free (the image takes 32): 64 MiB never fit.
        assert_eq!(n.memblock_alloc_low(64 << 20, 0x4300_0000), None);
    }

    #[test]
    fn min_free_kbytes_follows_the_kernel_formula() {
        // 1 GiB of lowmem: sqrt(1048576 * 16) = 4096 KiB = 1024 pages.
        let n = Node::new(0, 1 << 30, &layout(16 << 20, 1 << 30), &[]);
        let total: u64 = n.zones.iter().map(|z| z.watermark_min).sum();
        assert!((1020..=1024).contains(&total), "{total}");
    }

    #[test]
    fn blocks_are_aligned_scattered_and_merge_back() {
        let mut n = Node::new(0, 256 << 20, &layout(16 << 20, 256 << 20), &[]);
        let mut r = SimRng::new(3);
        let kept = n.age(&mut r).len() as u64;
        assert!(kept >= 32, "{kept}");
        let total = n.free_count();
        let mut got = Vec::new();
        for (order, gfp) in [
            (0, GFP_HIGHUSER_MOVABLE),
            (0, GFP_HIGHUSER_MOVABLE),
            (0, GFP_HIGHUSER_MOVABLE),
            (0, GFP_HIGHUSER_MOVABLE),
            (3, GFP_KERNEL),
            (9, GFP_KERNEL),
            (10, GFP_KERNEL),
        ] {
            let pfn = n.alloc_pages(order, gfp, &mut r).unwrap();
            assert_eq!(pfn % (1 << order), 0);
            got.push((pfn, order));
        }
        let four: Vec<u64> = got[..4].iter().map(|g| g.0).collect();
        assert!(
            four.windows(2).any(|w| w[1] != w[0] + 1),
            "order-0 pages are scattered: {four:?}"
        );
        for (pfn, order) in got {
            n.free_pages(pfn, order);
        }
        assert_eq!(n.free_count(), total);
        assert_eq!(n.zones.iter().map(|z| z.allocated).sum::<u64>(), kept);
    }

    /// `Zone::take_page` (one lookup per distinct candidate start) must leave the
    /// free area exactly as the search it replaced — `is_free_at` at each order
    /// from 0 up, then `del` and the split: the same lists in the same order
    /// (`take` draws an index into them, so the order is part of the run's result)
    /// and the same positions, for free pages, taken pages and pages in blocks of
    /// every order.
    #[test]
    fn take_page_changes_the_free_lists_exactly_as_the_order_by_order_search() {
        fn reference(free: &mut FreeArea, pfn: u64) -> bool {
            for o in 0..=MAX_PAGE_ORDER {
                let start = pfn & !((1u64 << o) - 1);
                if let Some(mt) = free.is_free_at(start, o) {
                    free.del(start);
                    free.add_around(start, o, pfn, mt);
                    return true;
                }
            }
            false
        }
        let mut n = Node::new(0, 256 << 20, &layout(16 << 20, 256 << 20), &[]);
        let mut r = SimRng::new(5);
        n.age(&mut r);
        let mut probe = SimRng::new(6);
        let (mut taken, mut refused) = (0, 0);
        for z in 0..n.zones.len() {
            let (start, end) = (n.zones[z].start_pfn, n.zones[z].end_pfn);
            if end <= start {
                continue;
            }
            for _ in 0..3_000 {
                // Clustered probes, so later ones land in blocks earlier ones split.
                let pfn = start + probe.next_u64() % (end - start).min(1 << 14);
                let mut plain = n.zones[z].free.clone();
                let expected = reference(&mut plain, pfn);
                let got = n.zones[z].take_page(pfn);
                assert_eq!(got, expected, "pfn {pfn:#x}");
                assert!(n.zones[z].free == plain, "pfn {pfn:#x}");
                if got {
                    taken += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert!(
            taken > 100 && refused > 100,
            "taken {taken}, refused {refused}"
        );
    }

    /// Boot's aging reserves room in each zone's free-block map up front (a map
    /// that grows rehashes everything it holds each time): the room it reserves
    /// (`aging_room`) covers the blocks aging adds, on small and large memories
    /// and several seeds.
    #[test]
    fn aging_adds_no_more_free_blocks_than_the_room_it_reserves() {
        for &(ram, dma) in &[
            (256u64 << 20, 16u64 << 20),
            (2 << 30, 1 << 30),
            (8 << 30, 4 << 30),
        ] {
            for seed in [0, 3, 7] {
                let mut n = Node::new(0, ram, &layout(dma, ram), &[]);
                let before: Vec<(usize, u64)> = n
                    .zones
                    .iter()
                    .map(|z| (z.free.pos.len(), ((z.managed / 512).min(4096) / 64).max(1)))
                    .collect();
                n.age(&mut SimRng::new(seed));
                for (z, &(len, regions)) in n.zones.iter().zip(&before) {
                    let added = z.free.pos.len().saturating_sub(len);
                    assert!(
                        added <= aging_room(regions, 64),
                        "{ram:#x} seed {seed} {:?}: {added} blocks added, room {}",
                        z.kind,
                        aging_room(regions, 64)
                    );
                }
            }
        }
    }

    #[test]
    fn gfp_dma_stays_in_zone_dma_and_fails_when_it_is_full() {
        let mut n = Node::new(0, 256 << 20, &layout(16 << 20, 256 << 20), &[]);
        let mut r = SimRng::new(1);
        let mut count = 0;
        while let Ok(pfn) = n.alloc_pages(0, GFP_KERNEL | GFP_DMA, &mut r) {
            assert_eq!(n.zone_of(pfn), Some(ZoneType::Dma));
            count += 1;
        }
        let f = n.alloc_pages(0, GFP_KERNEL | GFP_DMA, &mut r).unwrap_err();
        assert!(f.free_elsewhere() > 50_000, "{f:?}");
        assert!(
            count > 3000 && count < 4096,
            "the min watermark keeps a reserve: {count}"
        );
        // GFP_ATOMIC may dig into half of the reserve.
        assert!(n.alloc_pages(0, GFP_ATOMIC | GFP_DMA, &mut r).is_ok());
    }

    #[test]
    fn lowmem_reserve_protects_zone_dma_from_normal_allocations() {
        let mut n = Node::new(0, 64 << 20, &layout(16 << 20, 64 << 20), &[]);
        let mut r = SimRng::new(2);
        while n.alloc_pages(0, GFP_HIGHUSER_MOVABLE, &mut r).is_ok() {}
        let dma = &n.zones[0];
        assert!(
            dma.free_pages() >= dma.watermark_min + dma.lowmem_reserve[ZoneType::Normal as usize]
        );
        assert!(
            n.alloc_pages(0, GFP_KERNEL | GFP_DMA, &mut r).is_ok(),
            "GFP_DMA still gets ZONE_DMA pages"
        );
    }

    #[test]
    fn conservation_under_random_traffic() {
        let mut n = Node::new(0, 64 << 20, &layout(16 << 20, 64 << 20), &[(0, 1 << 20)]);
        let managed: Vec<u64> = n.zones.iter().map(|z| z.managed).collect();
        let mut r = SimRng::new(9);
        let mut ops = SimRng::new(10);
        let mut live: Vec<(u64, u32)> = Vec::new();
        let mut owned = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            if live.is_empty() || ops.below(3) > 0 {
                let order = [0, 0, 0, 1, 2, 4, 9][ops.below(7)];
                let gfp = [GFP_KERNEL, GFP_KERNEL | GFP_DMA, GFP_HIGHUSER_MOVABLE][ops.below(3)];
                if let Ok(pfn) = n.alloc_pages(order, gfp, &mut r) {
                    for p in pfn..pfn + (1 << order) {
                        assert!(owned.insert(p), "pfn {p} handed out twice");
                    }
                    live.push((pfn, order));
                }
            } else {
                let (pfn, order) = live.swap_remove(ops.below(live.len()));
                for p in pfn..pfn + (1 << order) {
                    owned.remove(&p);
                }
                n.free_pages(pfn, order);
            }
            for (z, &m) in n.zones.iter().zip(&managed) {
                assert_eq!(z.free_pages() + z.allocated, m, "zone {:?}", z.kind);
            }
        }
    }
}
