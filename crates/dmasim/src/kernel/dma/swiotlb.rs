//! swiotlb, the software IO TLB (`kernel/dma/swiotlb.c`, `include/linux/swiotlb.h`,
//! Linux v6.12): a pool of 2 KiB slots reserved at boot in memory every device can
//! reach, through which dma-direct copies ("bounces") buffers a device cannot address.
//!
//! This file holds the pool's bookkeeping exactly as Linux keeps it: `struct
//! io_tlb_slot` with `orig_addr`, `alloc_size`, `list` (free slots from here to the
//! end of the 128-slot set) and `pad_slots`; per-CPU areas with their own `used`
//! count and rotating `index`; the search of `swiotlb_search_pool_area` with its
//! alignment, stride and segment-boundary rules; the merge of freed slots in
//! `swiotlb_release_slots`; and the address arithmetic of `swiotlb_bounce`. The
//! copies themselves, which are CPU work through the caches, live in
//! [`crate::kernel::dma::direct`]'s bounce path on [`crate::system::System`].
//!
//! Simplifications: one pool (`CONFIG_SWIOTLB_DYNAMIC` off, as in Debian's 6.12
//! kernels, so a full pool fails instead of growing or adding a transient pool); no
//! locks (the simulator runs one CPU at a time), so areas only change where a search
//! starts; no restricted-DMA pools.

/// `IO_TLB_SHIFT`: log2 of the slot size.
pub const IO_TLB_SHIFT: u32 = 11;
/// `IO_TLB_SIZE`: one slot, 2 KiB.
pub const IO_TLB_SIZE: u64 = 1 << IO_TLB_SHIFT;
/// `IO_TLB_SEGSIZE`: slots per set; no allocation spans two sets (so 256 KiB at most).
pub const IO_TLB_SEGSIZE: usize = 128;
/// `IO_TLB_DEFAULT_SIZE`: the default pool, 64 MiB.
pub const IO_TLB_DEFAULT_SIZE: u64 = 64 << 20;
/// `IO_TLB_MIN_SLABS`: the boot allocation is halved down to this (1 MiB of slots).
pub const IO_TLB_MIN_SLABS: usize = ((1 << 20) >> IO_TLB_SHIFT) as usize;
/// `INVALID_PHYS_ADDR`: `orig_addr` of a free slot.
const INVALID_PHYS_ADDR: u64 = u64::MAX;
/// The largest single bounce buffer, `IO_TLB_SEGSIZE` slots.
pub const IO_TLB_MAX_MAPPING: u64 = IO_TLB_SEGSIZE as u64 * IO_TLB_SIZE;

/// `struct io_tlb_slot`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    orig_addr: u64,
    /// Bytes from this slot to the end of the allocation.
    alloc_size: u64,
    /// Free contiguous slots starting here inside the set; 0 = in use.
    list: u16,
    /// Leading slots used only for alignment (first non-padding slot only).
    pad_slots: u16,
}

/// `struct io_tlb_area`.
#[derive(Debug, Clone, Copy, Default)]
struct Area {
    used: usize,
    index: usize,
}

/// What the device adds to a search (`dma_get_min_align_mask`,
/// `dma_get_seg_boundary`, and the bus address of the pool's first byte).
#[derive(Debug, Clone, Copy)]
pub struct DevLimits {
    /// `dma_get_min_align_mask(dev)`: low address bits the bounce must keep.
    pub min_align_mask: u64,
    /// `dma_get_seg_boundary(dev)`: a mapping must not cross a multiple of this + 1.
    pub seg_boundary_mask: u64,
    /// `phys_to_dma_unencrypted(dev, pool->start)`.
    pub pool_dma: u64,
}

/// Why `swiotlb_tbl_map_single` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapFailure {
    /// "swiotlb buffer is full (sz: N bytes), total T (slots), used U (slots)".
    Full {
        /// The padded allocation size asked for.
        size: u64,
        /// Slots in the pool.
        total: u64,
        /// Slots in use.
        used: u64,
    },
}

/// The default pool (`io_tlb_default_mem.defpool`) and its counters.
#[derive(Debug, Clone)]
pub struct IoTlbPool {
    /// Physical address of slot 0.
    pub start: u64,
    /// Slots in the pool.
    pub nslabs: usize,
    area_nslabs: usize,
    slots: Vec<Slot>,
    areas: Vec<Area>,
    /// `swiotlb=force` / `SWIOTLB_FORCE`: every streaming mapping bounces.
    pub force: bool,
    /// Slots in use now (`io_tlb_used`).
    pub used: u64,
    /// Most slots in use at once (`io_tlb_used_hiwater`).
    pub used_hiwater: u64,
    /// "swiotlb buffer is full" failures.
    pub full_errors: u64,
    /// Bytes copied between original buffers and slots, both ways.
    pub bounce_bytes: u64,
    /// Mappings that went through the pool.
    pub bounced_maps: u64,
    /// Simulated time spent copying, in ps.
    pub copy_ps: u64,
    /// Slot positions the searches examined (host work, for the tests that show a
    /// failing search stays cheap).
    pub searched_slots: u64,
    /// Allocations and releases so far, and the count (with `used`) that
    /// [`IoTlbPool::consistent`] last verified: the invariant check, run after
    /// every call, scans the slots only when the pool changed.
    changes: u64,
    verified_at: std::cell::Cell<Option<(u64, u64)>>,
    /// A release freed slots that were not in use ([`IoTlbPool::release_problem`]):
    /// the books are now the inconsistent ones Linux would have, and the invariant
    /// check no longer judges them.
    pub corrupted: bool,
}

/// `nr_slots()`: slots covering `bytes`.
pub fn nr_slots(bytes: u64) -> usize {
    bytes.div_ceil(IO_TLB_SIZE) as usize
}

fn io_tlb_offset(i: usize) -> usize {
    i & (IO_TLB_SEGSIZE - 1)
}

/// `iommu_is_span_boundary()`: would `nr` slots from `index` cross a boundary of
/// `boundary_size` slots, with the pool starting `shift` slots into a boundary.
fn is_span_boundary(index: u64, nr: u64, shift: u64, boundary_size: u64) -> bool {
    let s = shift.wrapping_add(index) & (boundary_size - 1);
    s + nr > boundary_size
}

/// `get_max_slots()`: slots per boundary window.
fn max_slots(boundary_mask: u64) -> u64 {
    (boundary_mask >> IO_TLB_SHIFT) + 1
}

/// The pool size Linux ends up with: `swiotlb=<nslabs>` is rounded to whole sets
/// (`setup_io_tlb_npages`), then, with `nareas` areas, raised to `128 × nareas` and
/// rounded up to a power of two (`round_up_default_nslabs`); the area count is cut
/// so that every area holds a whole set (`limit_nareas`). Returns (nslabs, nareas).
pub fn pool_geometry(bytes: u64, nareas: u32) -> (usize, usize) {
    let mut nslabs =
        (bytes >> IO_TLB_SHIFT).div_ceil(IO_TLB_SEGSIZE as u64) as usize * IO_TLB_SEGSIZE;
    let nareas = (nareas.max(1) as usize).next_power_of_two();
    if nslabs < IO_TLB_SEGSIZE * nareas {
        nslabs = (IO_TLB_SEGSIZE * nareas).next_power_of_two();
    } else if !nslabs.is_power_of_two() {
        nslabs = nslabs.next_power_of_two();
    }
    (nslabs, limit_nareas(nareas, nslabs))
}

/// `limit_nareas()`.
pub fn limit_nareas(nareas: usize, nslabs: usize) -> usize {
    if nslabs < nareas * IO_TLB_SEGSIZE {
        (nslabs / IO_TLB_SEGSIZE).max(1)
    } else {
        nareas
    }
}

impl IoTlbPool {
    /// Bytes of one area (each CPU's search domain): the span its mappings rotate
    /// through, as `area->index` moves on.
    pub fn area_bytes(&self) -> u64 {
        self.area_nslabs as u64 * IO_TLB_SIZE
    }

    /// `swiotlb_init_io_tlb_pool()`: every set's slots hold 128, 127, …, 1 and no
    /// original address. (The memory itself reads as zeros: frames start empty.)
    pub fn new(start: u64, nslabs: usize, nareas: usize, force: bool) -> IoTlbPool {
        let nareas = nareas.max(1);
        let slots = (0..nslabs)
            .map(|i| Slot {
                orig_addr: INVALID_PHYS_ADDR,
                alloc_size: 0,
                list: (IO_TLB_SEGSIZE - io_tlb_offset(i)).min(nslabs - i) as u16,
                pad_slots: 0,
            })
            .collect();
        IoTlbPool {
            start,
            nslabs,
            area_nslabs: nslabs / nareas,
            slots,
            areas: vec![Area::default(); nareas],
            force,
            used: 0,
            used_hiwater: 0,
            full_errors: 0,
            bounce_bytes: 0,
            bounced_maps: 0,
            copy_ps: 0,
            searched_slots: 0,
            changes: 0,
            verified_at: std::cell::Cell::new(None),
            corrupted: false,
        }
    }

    /// One past the pool's last byte.
    pub fn end(&self) -> u64 {
        self.start + ((self.nslabs as u64) << IO_TLB_SHIFT)
    }

    /// Number of areas.
    pub fn nareas(&self) -> usize {
        self.areas.len()
    }

    /// `is_swiotlb_buffer()`: does `pa` lie in the pool.
    pub fn contains(&self, pa: u64) -> bool {
        pa >= self.start && pa < self.end()
    }

    fn slot_addr(&self, index: usize) -> u64 {
        self.start + ((index as u64) << IO_TLB_SHIFT)
    }

    fn wrap_area_index(&self, index: usize) -> usize {
        if index >= self.area_nslabs {
            0
        } else {
            index
        }
    }

    /// `swiotlb_search_pool_area()`: the first slot of `alloc_size` bytes in area
    /// `ai`, or `None`.
    fn search_area(
        &mut self,
        dev: &DevLimits,
        ai: usize,
        orig_addr: u64,
        alloc_size: u64,
        mut alloc_align_mask: u64,
    ) -> Option<usize> {
        let boundary_mask = dev.seg_boundary_mask;
        let tbl_dma_addr = dev.pool_dma & boundary_mask;
        let max = max_slots(boundary_mask);
        let mut iotlb_align_mask = dev.min_align_mask;
        let nslots = nr_slots(alloc_size);
        let offset = swiotlb_align_offset(dev.min_align_mask, 0, orig_addr);
        // Streaming mappings of a page or more stay page aligned (the legacy rule).
        if alloc_align_mask == 0 && iotlb_align_mask == 0 && alloc_size >= crate::config::PAGE_SIZE
        {
            alloc_align_mask = crate::config::PAGE_SIZE - 1;
        }
        alloc_align_mask |= IO_TLB_SIZE - 1;
        iotlb_align_mask &= !alloc_align_mask;
        let stride = max_slots(alloc_align_mask.max(iotlb_align_mask)) as usize;
        // kernel/dma/swiotlb.c: swiotlb_search_pool_area() rejects at once when the
        // area has fewer free slots than asked (`nslots > pool->area_nslabs -
        // area->used`): a map into a full pool costs no scan, however many fail.
        // `unsigned long` arithmetic: after a double release `used` has wrapped
        // below zero (as Linux's would) and the test lets every search through.
        if nslots > self.area_nslabs.wrapping_sub(self.areas[ai].used) {
            return None;
        }
        let slot_base = ai * self.area_nslabs;
        let mut index = self.areas[ai].index;
        let mut checked = 0usize;
        let found = loop {
            if checked >= self.area_nslabs {
                self.searched_slots += checked as u64;
                return None;
            }
            let slot_index = slot_base + index;
            let tlb_addr = tbl_dma_addr.wrapping_add((slot_index as u64) << IO_TLB_SHIFT);
            if tlb_addr & alloc_align_mask != 0
                || (orig_addr != 0
                    && (tlb_addr & iotlb_align_mask) != (orig_addr & iotlb_align_mask))
            {
                index = self.wrap_area_index(index + 1);
                checked += 1;
                continue;
            }
            if !is_span_boundary(
                slot_index as u64,
                nslots as u64,
                tbl_dma_addr.div_ceil(IO_TLB_SIZE),
                max,
            ) && usize::from(self.slots[slot_index].list) >= nslots
            {
                break slot_index;
            }
            index = self.wrap_area_index(index + stride);
            checked += stride;
        };
        self.searched_slots += checked as u64 + 1;
        self.changes += 1;
        for i in found..found + nslots {
            self.slots[i].list = 0;
            // `size_t` arithmetic as in swiotlb_search_pool_area(): with a
            // min_align_mask offset the last slot's remainder wraps below zero
            // there too (only the first slot's size is read back, at release).
            self.slots[i].alloc_size =
                alloc_size.wrapping_sub(offset + (((i - found) as u64) << IO_TLB_SHIFT));
        }
        self.renumber_before(found, 0);
        let area = &mut self.areas[ai];
        area.index = if index + nslots >= self.area_nslabs {
            0
        } else {
            index + nslots
        };
        area.used = area.used.wrapping_add(nslots);
        self.used = self.used.wrapping_add(nslots as u64);
        // inc_used_and_hiwater(): `total_used` is an atomic_long, signed, so a
        // count a double release took below zero never raises the high-water mark.
        if self.used as i64 > self.used_hiwater as i64 {
            self.used_hiwater = self.used;
        }
        Some(found)
    }

    /// Renumbers the free slots just before `index` inside its set (1, 2, 3, … on
    /// from `count`), stopping at a used slot or the set's start: how both the
    /// search and the release keep `list` right.
    fn renumber_before(&mut self, index: usize, mut count: u16) {
        let mut i = index;
        while i > 0 {
            i -= 1;
            if io_tlb_offset(i) == IO_TLB_SEGSIZE - 1 || self.slots[i].list == 0 {
                break;
            }
            count = count.wrapping_add(1);
            self.slots[i].list = count;
        }
    }

    /// The pool's books agree (an invariant check): the areas' `used` counts add
    /// up to `used`, and exactly that many slots are taken (`list` 0), so no slot
    /// was handed out twice or lost.
    ///
    /// # Errors
    /// What disagrees.
    pub fn consistent(&self) -> Result<(), String> {
        if self.verified_at.get() == Some((self.changes, self.used)) {
            return Ok(());
        }
        let areas = self
            .areas
            .iter()
            .fold(0usize, |sum, a| sum.wrapping_add(a.used));
        let taken = self.slots.iter().filter(|s| s.list == 0).count();
        if areas as u64 != self.used || taken as u64 != self.used {
            return Err(format!(
                "swiotlb: {} slots used by the count, {areas} by the areas, {taken} taken",
                self.used
            ));
        }
        self.verified_at.set(Some((self.changes, self.used)));
        Ok(())
    }

    /// `swiotlb_tbl_map_single()` without the copy: reserves slots for
    /// `mapping_size` bytes of `orig_addr`, searching from the area of `cpu`, and
    /// records where each slot's bytes come from. Returns the bounce address.
    ///
    /// # Errors
    /// [`MapFailure::Full`] when no area has room (a request over 128 slots after
    /// padding never has).
    pub fn tbl_map_single(
        &mut self,
        dev: &DevLimits,
        cpu: usize,
        orig_addr: u64,
        mapping_size: u64,
        alloc_align_mask: u64,
    ) -> Result<u64, MapFailure> {
        let offset = swiotlb_align_offset(dev.min_align_mask, alloc_align_mask, orig_addr);
        let size = (mapping_size + offset).next_multiple_of(alloc_align_mask + 1);
        let n = self.areas.len();
        // raw_smp_processor_id() & (nareas - 1); nareas is a power of two.
        let start = cpu % n;
        let mut found = None;
        if nr_slots(size) <= IO_TLB_SEGSIZE {
            for k in 0..n {
                let ai = (start + k) % n;
                if let Some(i) = self.search_area(dev, ai, orig_addr, size, alloc_align_mask) {
                    found = Some(i);
                    break;
                }
            }
        }
        let Some(index) = found else {
            self.full_errors += 1;
            return Err(MapFailure::Full {
                size,
                total: self.nslabs as u64,
                used: self.used,
            });
        };
        let pad_slots = (offset >> IO_TLB_SHIFT) as usize;
        let offset = offset & (IO_TLB_SIZE - 1);
        let index = index + pad_slots;
        self.slots[index].pad_slots = pad_slots as u16;
        for i in 0..nr_slots(size) - pad_slots {
            self.slots[index + i].orig_addr = orig_addr + ((i as u64) << IO_TLB_SHIFT);
        }
        self.bounced_maps += 1;
        Ok(self.slot_addr(index) + offset)
    }

    /// Where `swiotlb_release_slots()` starts and how many slots it frees for
    /// `tlb_addr`: the first slot (less the padding slots recorded there) and the
    /// count from that slot's `alloc_size`, both from the unmap's arguments alone
    /// (the device's `min_align_mask` and the address). A count past the pool's
    /// end (an `alloc_size` that had wrapped, read with another device's mask) is
    /// cut there: Linux stores it in an `int` and goes on with a garbage value
    /// (writing past its slot array, or freeing nothing), which no model can follow.
    fn release_span(&self, min_align_mask: u64, tlb_addr: u64) -> (usize, usize, bool) {
        let offset = swiotlb_align_offset(min_align_mask, 0, tlb_addr);
        let index = (tlb_addr.saturating_sub(offset + self.start) >> IO_TLB_SHIFT) as usize;
        let index = index.min(self.nslabs.saturating_sub(1));
        let index = index.saturating_sub(usize::from(self.slots[index].pad_slots));
        // `alloc_size` may have wrapped (see search_area), and so may the sum.
        let nslots = nr_slots(self.slots[index].alloc_size.wrapping_add(offset));
        let room = self.nslabs - index;
        (index, nslots.min(room), nslots > room)
    }

    /// What a `swiotlb_release_slots()` of `tlb_addr` would do to the pool's books
    /// that a release of a live allocation never does, or `None`: Linux frees the
    /// slots the unmap's arguments designate without looking whether they are in
    /// use, so a double unmap (or an unmap with another device's `min_align_mask`)
    /// frees slots that are already free and takes the `used` counts below the
    /// slots really taken; a later map may then get slots a live mapping holds.
    pub fn release_problem(&self, min_align_mask: u64, tlb_addr: u64) -> Option<String> {
        if !self.contains(tlb_addr) {
            return None;
        }
        let (index, nslots, cut) = self.release_span(min_align_mask, tlb_addr);
        if cut {
            return Some(format!(
                "the release from phys {:#x} counted more slots than the pool has left (an allocation size that had wrapped)",
                self.slot_addr(index)
            ));
        }
        let free = self.slots[index..index + nslots]
            .iter()
            .filter(|s| s.list != 0)
            .count();
        (free > 0).then(|| {
            format!(
                "{free} of the {nslots} slot(s) it released from phys {:#x} were already free",
                self.slot_addr(index)
            )
        })
    }

    /// `swiotlb_release_slots()`: frees the allocation holding `tlb_addr` and merges
    /// it with free neighbours inside its set. Returns the slots freed.
    pub fn release(&mut self, min_align_mask: u64, tlb_addr: u64) -> usize {
        let (index, nslots, _) = self.release_span(min_align_mask, tlb_addr);
        if nslots == 0 {
            return 0;
        }
        let ai = (index / self.area_nslabs).min(self.areas.len() - 1);
        let set_end = (index + 1).next_multiple_of(IO_TLB_SEGSIZE);
        self.changes += 1;
        let mut count = if index + nslots < set_end {
            self.slots[index + nslots].list
        } else {
            0
        };
        for i in (index..index + nslots).rev() {
            // `++count` stored in an unsigned short: a bogus release longer than a
            // set wraps it as in Linux.
            count = count.wrapping_add(1);
            self.slots[i] = Slot {
                orig_addr: INVALID_PHYS_ADDR,
                alloc_size: 0,
                list: count,
                pad_slots: 0,
            };
        }
        self.renumber_before(index, count);
        // `area->used -= nslots` and dec_used(): unsigned and atomic_long, so a
        // release of slots that were already free wraps below zero in Linux too.
        self.areas[ai].used = self.areas[ai].used.wrapping_sub(nslots);
        self.used = self.used.wrapping_sub(nslots as u64);
        nslots
    }

    /// The original bytes behind `[tlb_addr, tlb_addr+size)`, as `swiotlb_bounce`
    /// finds them: (original address, size clipped to the allocation, whether it had
    /// to be clipped — Linux's "Buffer overflow detected" warning). `None` for a slot
    /// with no original (unmapped).
    pub fn locate(
        &self,
        min_align_mask: u64,
        tlb_addr: u64,
        size: u64,
    ) -> Option<(u64, u64, bool)> {
        if !self.contains(tlb_addr) {
            return None;
        }
        let index = ((tlb_addr - self.start) >> IO_TLB_SHIFT) as usize;
        let s = self.slots[index];
        if s.orig_addr == INVALID_PHYS_ADDR {
            return None;
        }
        // May be negative for an address inside the padding of a later slot.
        let tlb_offset = (tlb_addr & (IO_TLB_SIZE - 1)) as i64
            - swiotlb_align_offset(min_align_mask, 0, s.orig_addr) as i64;
        let orig = s.orig_addr.wrapping_add_signed(tlb_offset);
        let alloc = s.alloc_size.wrapping_add_signed(-tlb_offset);
        if size > alloc {
            Some((orig, alloc, true))
        } else {
            Some((orig, size, false))
        }
    }
}

/// `swiotlb_align_offset()`: the padding before the bounce data that keeps the
/// `min_align_mask` bits of the original address.
pub fn swiotlb_align_offset(min_align_mask: u64, align_mask: u64, addr: u64) -> u64 {
    addr & min_align_mask & (align_mask | (IO_TLB_SIZE - 1))
}

/// `swiotlb_max_mapping_size()`: 256 KiB less the padding a `min_align_mask` may need.
pub fn swiotlb_max_mapping_size(min_align_mask: u64) -> u64 {
    let min_align = if min_align_mask == 0 {
        0
    } else {
        min_align_mask.next_multiple_of(IO_TLB_SIZE)
    };
    IO_TLB_MAX_MAPPING - min_align
}

/// How Linux sets the pool up on a platform at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    /// Slots wanted (0: no pool).
    pub nslabs: usize,
    /// Areas.
    pub nareas: usize,
    /// Every streaming mapping bounces.
    pub force: bool,
    /// The pool must end at or below this physical address (`ARCH_LOW_ADDRESS_LIMIT`
    /// + 1: arm64 `arm64_dma_phys_limit`, 4 GiB elsewhere).
    pub limit: u64,
    /// A fixed start for the pool (`swiotlb_base`), or 0.
    pub base: u64,
    /// Why there is, or is not, a pool (for the boot log).
    pub why: String,
}

/// The arch's swiotlb decision at boot: arm64 `mem_init` (a pool when RAM ends past
/// `arm64_dma_phys_limit`, else the small kmalloc-bounce pool of 1 MiB per GiB,
/// unless `swiotlb=` gave a size), x86 `pci_swiotlb_detect` (a pool only with RAM
/// above 4 GiB, or when forced), none on 32-bit ARM without LPAE; then
/// `swiotlb_init_remap` with its area and size rounding.
pub fn boot_plan(p: &crate::config::PlatformConfig) -> BootPlan {
    use crate::config::Arch;
    let ram_end = p.ram_base + p.ram;
    let none = |why: &str| BootPlan {
        nslabs: 0,
        nareas: 0,
        force: false,
        limit: 0,
        base: 0,
        why: why.to_string(),
    };
    if p.arch == Arch::Arm32 {
        return none("32-bit ARM without LPAE has no swiotlb");
    }
    if p.swiotlb == Some(0) {
        return none("swiotlb=noforce: no bounce buffers");
    }
    let (limit, bytes, why) = match p.arch {
        Arch::Arm64 => {
            let limit = p.zone_dma_limit.saturating_add(1).min(ram_end);
            if ram_end > limit {
                (
                    limit,
                    p.swiotlb.unwrap_or(IO_TLB_DEFAULT_SIZE),
                    "RAM ends above the DMA zone".to_string(),
                )
            } else {
                // CONFIG_DMA_BOUNCE_UNALIGNED_KMALLOC: 1 MiB per GiB of RAM.
                let small = p.ram.div_ceil(1024).min(IO_TLB_DEFAULT_SIZE);
                (
                    limit,
                    p.swiotlb.unwrap_or(small),
                    "for small unaligned kmalloc buffers".to_string(),
                )
            }
        }
        _ => {
            if ram_end <= 1 << 32 && !p.swiotlb_force {
                return none("all RAM below 4 GiB: no swiotlb on x86");
            }
            (
                1 << 32,
                p.swiotlb.unwrap_or(IO_TLB_DEFAULT_SIZE),
                "RAM above 4 GiB".to_string(),
            )
        }
    };
    let areas = if p.swiotlb_areas > 0 {
        p.swiotlb_areas
    } else {
        p.cpus
    };
    let (nslabs, nareas) = pool_geometry(bytes, areas);
    BootPlan {
        nslabs,
        nareas,
        force: p.swiotlb_force,
        limit,
        base: p.swiotlb_base,
        why: if p.swiotlb_force {
            "swiotlb=force: every DMA bounces".into()
        } else {
            why
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: DevLimits = DevLimits {
        min_align_mask: 0,
        seg_boundary_mask: u64::MAX,
        pool_dma: 0x1000_0000,
    };

    fn pool(bytes: u64) -> IoTlbPool {
        let (n, a) = pool_geometry(bytes, 4);
        IoTlbPool::new(0x1000_0000, n, a, false)
    }

    #[test]
    fn slot_accounting_follows_linux() {
        let mut p = pool(64 << 20);
        assert_eq!(p.nslabs, 32768);
        let a = p.tbl_map_single(&PLAIN, 0, 0x4000_0010, 100, 0).unwrap();
        assert_eq!(p.used, 1, "100 bytes take one slot");
        let b = p.tbl_map_single(&PLAIN, 0, 0x4001_0000, 5000, 0).unwrap();
        assert_eq!(p.used, 4, "5,000 bytes take three slots");
        // A mapping of a page or more is page aligned (the legacy rule).
        assert_eq!(b % 4096, 0);
        assert!(p
            .tbl_map_single(&PLAIN, 0, 0x4010_0000, 256 << 10, 0)
            .is_ok());
        let err = p
            .tbl_map_single(&PLAIN, 0, 0x4020_0000, 300 << 10, 0)
            .unwrap_err();
        assert!(matches!(err, MapFailure::Full { size, .. } if size == 300 << 10));
        assert_eq!(p.release(0, a), 1);
        assert_eq!(p.release(0, b), 3);
        assert_eq!(p.used, 128);
        assert_eq!(p.used_hiwater, 132);
    }

    /// The invariant check: a slot taken without being counted (or counted twice)
    /// is a slot the pool could hand out twice; `consistent` says so.
    #[test]
    fn invariant_check_catches_a_slot_handed_out_twice() {
        let mut p = pool(2 << 20);
        let a = p.tbl_map_single(&PLAIN, 0, 0x4000_0000, 4096, 0).unwrap();
        assert_eq!(p.consistent(), Ok(()));
        // The slots of `a` handed out again by a search that skipped the books.
        p.used += 2;
        p.areas[0].used += 2;
        let e = p.consistent().unwrap_err();
        assert!(e.contains("taken"), "{e}");
        p.used -= 2;
        p.areas[0].used -= 2;
        p.release(0, a);
        assert_eq!(p.consistent(), Ok(()));
    }

    /// kernel/dma/swiotlb.c: swiotlb_release_slots frees what the address says
    /// without checking: a second release of the same bounce buffer frees a free
    /// slot again and takes `area->used` (unsigned long) and the total below zero,
    /// without a panic; `release_problem` names it beforehand, and the invariant
    /// check sees the books disagree.
    #[test]
    fn a_double_release_wraps_the_counts_as_linux_and_is_named() {
        let dev = DevLimits {
            min_align_mask: 0xfff,
            ..PLAIN
        };
        let mut p = pool(1 << 20);
        // Fuzz seed 40354591: 0 bytes at offset 0x5dc of a page.
        let t = p.tbl_map_single(&dev, 0, 0x4000_05dc, 0, 0).unwrap();
        assert_eq!(p.used, 1);
        assert_eq!(p.release_problem(0xfff, t), None);
        assert_eq!(p.release(0xfff, t), 1);
        assert_eq!(p.consistent(), Ok(()));
        let e = p.release_problem(0xfff, t).unwrap();
        assert!(e.contains("already free"), "{e}");
        assert_eq!(p.release(0xfff, t), 1);
        assert_eq!(p.used as i64, -1);
        assert!(p.consistent().is_err());
        // The pool still maps: the wrapped area count lets the search through.
        let u = p.tbl_map_single(&PLAIN, 0, 0x4000_1000, 64, 0).unwrap();
        assert_eq!(p.used, 0, "-1 + 1");
        assert_eq!(
            p.used_hiwater, 1,
            "a count below zero never raises the mark"
        );
        p.release(0, u);
        // Another device's min_align_mask on the last slot of a padded mapping:
        // the wrapped alloc_size gives a slot count past the pool, which the model
        // cuts at the pool's end instead of panicking.
        let mut p = pool(1 << 20);
        let t = p.tbl_map_single(&dev, 0, 0x4000_05dc, 0x300, 0).unwrap();
        assert_eq!(p.used, 2);
        let e = p.release_problem(0, t + 0x800).unwrap();
        assert!(e.contains("more slots than the pool has left"), "{e}");
        p.release(0, t + 0x800);
    }

    /// Issue 19 item 9: maps into a full pool are refused before any search
    /// (kernel/dma/swiotlb.c: swiotlb_search_pool_area, `nslots >
    /// pool->area_nslabs - area->used`), so they examine no slot at all, at 1k as at
    /// 100k failures. With free but fragmented slots Linux scans each area, the same
    /// amount for every map: the work per failing map stays the same from 1k to 100k.
    #[test]
    fn r19_09_failing_maps_cost_the_same_per_map_from_1k_to_100k() {
        let per_map = |n: u64, fragmented: bool| {
            let mut p = pool(2 << 20);
            let mut got = Vec::new();
            while let Ok(a) =
                p.tbl_map_single(&PLAIN, 0, 0x4000_0000 + (got.len() as u64) * 4096, 4096, 0)
            {
                got.push(a);
            }
            assert_eq!(p.used, 1024, "full");
            if fragmented {
                // Every other 2-slot mapping freed: half the pool free, no 4 slots in a row.
                for a in got.iter().step_by(2) {
                    p.release(0, *a);
                }
            }
            let before = p.searched_slots;
            for i in 0..n {
                let r = p.tbl_map_single(&PLAIN, (i % 4) as usize, 0x8000_0000, 8192, 0);
                assert!(r.is_err());
            }
            (p.searched_slots - before) as f64 / n as f64
        };
        assert_eq!(per_map(1_000, false), 0.0, "a full pool is not searched");
        assert_eq!(per_map(100_000, false), 0.0, "a full pool is not searched");
        let (small, large) = (per_map(1_000, true), per_map(100_000, true));
        assert!(small > 0.0, "a fragmented pool is searched");
        assert!(
            large <= 2.0 * small && small <= 2.0 * large,
            "{small} vs {large} slots per map"
        );
    }

    #[test]
    fn the_257th_concurrent_256k_mapping_fails_in_a_64m_pool() {
        let mut p = pool(64 << 20);
        let mut got = Vec::new();
        for i in 0..256u64 {
            let cpu = (i % 4) as usize;
            got.push(
                p.tbl_map_single(&PLAIN, cpu, 0x1_0000_0000 + (i << 18), 256 << 10, 0)
                    .unwrap_or_else(|e| panic!("mapping {i}: {e:?}")),
            );
        }
        assert_eq!(p.used, 32768);
        assert!(p
            .tbl_map_single(&PLAIN, 0, 0x2_0000_0000, 256 << 10, 0)
            .is_err());
        assert!(p.tbl_map_single(&PLAIN, 1, 0x2_0000_0000, 64, 0).is_err());
        p.release(0, got[17]);
        assert!(p
            .tbl_map_single(&PLAIN, 3, 0x2_0000_0000, 256 << 10, 0)
            .is_ok());
    }

    #[test]
    fn release_merges_free_neighbours_inside_the_set() {
        let mut p = pool(1 << 20);
        let xs: Vec<u64> = (0..4)
            .map(|i| {
                p.tbl_map_single(&PLAIN, 0, 0x5000_0000 + i * 2048, 2048, 0)
                    .unwrap()
            })
            .collect();
        for &x in &xs {
            p.release(0, x);
        }
        assert_eq!(p.used, 0);
        // After everything is free again a whole set is one run of 128.
        let set0: Vec<u16> = p.slots[..IO_TLB_SEGSIZE].iter().map(|s| s.list).collect();
        let want: Vec<u16> = (1..=128).rev().collect();
        assert_eq!(set0, want);
    }

    #[test]
    fn min_align_mask_keeps_the_low_bits_and_pads() {
        // NVMe: min_align_mask = 4 KiB - 1.
        let dev = DevLimits {
            min_align_mask: 0xfff,
            ..PLAIN
        };
        let mut p = pool(1 << 20);
        let orig = 0x4000_0a40;
        let t = p.tbl_map_single(&dev, 0, orig, 512, 0).unwrap();
        assert_eq!(t & 0xfff, orig & 0xfff);
        // Bit 11 is kept by choosing the slot, bits 0-10 by 0x240 bytes of padding
        // inside it: one slot.
        assert_eq!(p.used, 1);
        let (o, n, clipped) = p.locate(0xfff, t + 16, 64).unwrap();
        assert_eq!((o, n, clipped), (orig + 16, 64, false));
        assert_eq!(p.release(0xfff, t), 1);
        // dma-iommu style: the space must start on a 4 KiB granule, so 0xa40 bytes of
        // padding take a whole pad slot, remembered for the release.
        let t = p.tbl_map_single(&dev, 0, orig, 512, 0xfff).unwrap();
        assert_eq!(t & 0xfff, orig & 0xfff);
        assert_eq!(p.used, 2);
        assert_eq!(p.release(0xfff, t), 2);
        assert_eq!(p.used, 0);
        assert_eq!(swiotlb_max_mapping_size(0xfff), 252 << 10);
    }

    #[test]
    fn locate_clips_a_sync_past_the_allocation() {
        let mut p = pool(1 << 20);
        let t = p.tbl_map_single(&PLAIN, 0, 0x4000_0000, 3000, 0).unwrap();
        assert_eq!(p.locate(0, t, 3000), Some((0x4000_0000, 3000, false)));
        assert_eq!(p.locate(0, t + 2048, 2000), Some((0x4000_0800, 952, true)));
        p.release(0, t);
        assert_eq!(p.locate(0, t, 16), None);
    }

    #[test]
    fn segment_boundary_is_never_crossed() {
        // A device whose segments may not cross 64 KiB.
        let dev = DevLimits {
            seg_boundary_mask: 0xffff,
            ..PLAIN
        };
        let mut p = pool(1 << 20);
        for i in 0..40 {
            let t = p
                .tbl_map_single(&dev, 0, 0x4000_0000 + i * 8192, 6000, 0)
                .unwrap();
            assert_eq!(t >> 16, (t + 5999) >> 16, "mapping {i} crosses 64 KiB");
        }
    }

    fn preset(name: &str) -> crate::config::PlatformConfig {
        crate::config::PlatformConfig::preset(name).unwrap()
    }

    #[test]
    fn boot_plan_follows_each_arch() {
        // arm64, 2 GiB all below 4 GiB: the kmalloc-bounce pool, 1 MiB per GiB.
        let p = boot_plan(&preset("arm64-noncoherent"));
        assert_eq!((p.nslabs, p.nareas), (1024, 4));
        // 8 GiB: RAM past the DMA zone, the default 64 MiB below 4 GiB.
        let mut c = preset("arm64-noncoherent");
        c.ram = 8 << 30;
        let p = boot_plan(&c);
        assert_eq!((p.nslabs, p.limit), (32768, 1 << 32));
        // rpi4: below the 1 GiB DMA zone.
        assert_eq!(boot_plan(&preset("rpi4")).limit, 1 << 30);
        // x86 with 4 GiB: none, unless forced.
        assert_eq!(boot_plan(&preset("x86-64")).nslabs, 0);
        let mut x = preset("x86-64");
        x.swiotlb_force = true;
        assert!(boot_plan(&x).force && boot_plan(&x).nslabs == 32768);
        assert_eq!(boot_plan(&preset("arm32")).nslabs, 0);
        c.swiotlb = Some(0);
        assert_eq!(boot_plan(&c).nslabs, 0);
    }

    #[test]
    fn geometry_rounds_like_linux() {
        assert_eq!(pool_geometry(64 << 20, 4), (32768, 4));
        // swiotlb=1536 slabs with 4 areas is rounded up to a power of two.
        assert_eq!(pool_geometry(3 << 20, 4), (2048, 4));
        // A tiny pool keeps whole sets per area.
        assert_eq!(pool_geometry(256 << 10, 8), (1024, 8));
        assert_eq!(limit_nareas(8, 256), 2);
    }
}
