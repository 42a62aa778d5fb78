//! GFP flags (`include/linux/gfp_types.h`, v6.12 bit layout) and what they choose:
//! the highest zone an allocation may use (`gfp_zone`) and its migratetype
//! (`gfp_migratetype`).

use serde::Serialize;

/// `__GFP_DMA`.
pub const GFP_DMA: u64 = 1 << 0;
/// `__GFP_HIGHMEM`.
pub const GFP_HIGHMEM: u64 = 1 << 1;
/// `__GFP_DMA32`.
pub const GFP_DMA32: u64 = 1 << 2;
/// `__GFP_MOVABLE`.
pub const GFP_MOVABLE: u64 = 1 << 3;
/// `__GFP_RECLAIMABLE`.
pub const GFP_RECLAIMABLE: u64 = 1 << 4;
/// `__GFP_HIGH`: may dip into half of the min reserve.
pub const GFP_HIGH: u64 = 1 << 5;
/// `__GFP_IO`.
pub const GFP_IO: u64 = 1 << 6;
/// `__GFP_FS`.
pub const GFP_FS: u64 = 1 << 7;
/// `__GFP_ZERO`.
pub const GFP_ZERO: u64 = 1 << 8;
/// `__GFP_DIRECT_RECLAIM`: the caller may sleep.
pub const GFP_DIRECT_RECLAIM: u64 = 1 << 10;
/// `__GFP_KSWAPD_RECLAIM`.
pub const GFP_KSWAPD_RECLAIM: u64 = 1 << 11;
/// `__GFP_NOWARN`.
pub const GFP_NOWARN: u64 = 1 << 13;
/// `__GFP_HARDWALL`.
pub const GFP_HARDWALL: u64 = 1 << 20;
/// `GFP_KERNEL` = `__GFP_RECLAIM | __GFP_IO | __GFP_FS`.
pub const GFP_KERNEL: u64 = GFP_DIRECT_RECLAIM | GFP_KSWAPD_RECLAIM | GFP_IO | GFP_FS;
/// `GFP_ATOMIC` = `__GFP_HIGH | __GFP_KSWAPD_RECLAIM`.
pub const GFP_ATOMIC: u64 = GFP_HIGH | GFP_KSWAPD_RECLAIM;
/// `GFP_USER` = `GFP_KERNEL | __GFP_HARDWALL`.
pub const GFP_USER: u64 = GFP_KERNEL | GFP_HARDWALL;
/// `GFP_HIGHUSER_MOVABLE`: what user pages are allocated with.
pub const GFP_HIGHUSER_MOVABLE: u64 = GFP_USER | GFP_HIGHMEM | GFP_MOVABLE;

/// The zones, in Linux's order (`enum zone_type`, include/linux/mmzone.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ZoneType {
    /// `ZONE_DMA`: below `zone_dma_limit`.
    Dma = 0,
    /// `ZONE_DMA32`: below 4 GiB (64-bit only).
    Dma32 = 1,
    /// `ZONE_NORMAL`: the rest of the directly mapped memory.
    Normal = 2,
    /// `ZONE_HIGHMEM`: 32-bit only, memory the kernel does not map permanently.
    HighMem = 3,
}

/// Number of zone types.
pub const MAX_NR_ZONES: usize = 4;

impl ZoneType {
    /// All zone types, lowest first.
    pub const ALL: [ZoneType; MAX_NR_ZONES] = [
        ZoneType::Dma,
        ZoneType::Dma32,
        ZoneType::Normal,
        ZoneType::HighMem,
    ];

    /// The kernel's name (`/proc/zoneinfo`).
    pub fn name(self) -> &'static str {
        match self {
            ZoneType::Dma => "DMA",
            ZoneType::Dma32 => "DMA32",
            ZoneType::Normal => "Normal",
            ZoneType::HighMem => "HighMem",
        }
    }

    /// `sysctl_lowmem_reserve_ratio` (mm/page_alloc.c): DMA 256, DMA32 256, Normal 32.
    pub fn lowmem_reserve_ratio(self) -> u64 {
        match self {
            ZoneType::Dma | ZoneType::Dma32 => 256,
            ZoneType::Normal => 32,
            ZoneType::HighMem => 0,
        }
    }
}

/// Migratetypes of pageblocks (`enum migratetype`); the page allocator keeps a free
/// list per type so that unmovable allocations do not scatter over movable memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum MigrateType {
    /// `MIGRATE_UNMOVABLE`: kernel allocations.
    Unmovable = 0,
    /// `MIGRATE_MOVABLE`: user pages, page cache.
    Movable = 1,
    /// `MIGRATE_RECLAIMABLE`: slab caches that can be shrunk.
    Reclaimable = 2,
    /// `MIGRATE_CMA`: reserved for CMA; lent only to movable allocations.
    Cma = 3,
}

/// Number of migratetypes kept here.
pub const NR_MIGRATETYPES: usize = 4;

impl MigrateType {
    /// `fallbacks[]` (mm/page_alloc.c): where an allocation of this type steals from
    /// when its own lists are empty.
    pub fn fallbacks(self) -> &'static [MigrateType] {
        match self {
            MigrateType::Unmovable => &[MigrateType::Reclaimable, MigrateType::Movable],
            MigrateType::Movable => &[MigrateType::Reclaimable, MigrateType::Unmovable],
            MigrateType::Reclaimable => &[MigrateType::Unmovable, MigrateType::Movable],
            MigrateType::Cma => &[],
        }
    }
}

/// `gfp_zone()`: the highest zone a request may use, given the zones the kernel is
/// configured with (`present[z]`, `CONFIG_ZONE_DMA`, `CONFIG_ZONE_DMA32`,
/// `CONFIG_HIGHMEM`; a configured zone may still be empty). A modifier naming a zone
/// that is not configured falls to `ZONE_NORMAL`, as `GFP_ZONE_TABLE` maps it.
pub fn gfp_zone(gfp: u64, present: &[bool; MAX_NR_ZONES]) -> ZoneType {
    let want = if gfp & GFP_DMA != 0 {
        ZoneType::Dma
    } else if gfp & GFP_DMA32 != 0 {
        ZoneType::Dma32
    } else if gfp & GFP_HIGHMEM != 0 {
        ZoneType::HighMem
    } else {
        ZoneType::Normal
    };
    if present[want as usize] {
        want
    } else {
        ZoneType::Normal
    }
}

/// `gfp_migratetype()`.
pub fn gfp_migratetype(gfp: u64) -> MigrateType {
    if gfp & GFP_MOVABLE != 0 {
        MigrateType::Movable
    } else if gfp & GFP_RECLAIMABLE != 0 {
        MigrateType::Reclaimable
    } else {
        MigrateType::Unmovable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_match_linux() {
        assert_eq!(GFP_KERNEL, 0xcc0);
        assert_eq!(GFP_ATOMIC, 0x820);
    }

    #[test]
    fn zone_modifiers_fall_back_to_normal_when_the_zone_is_missing() {
        let arm64 = [true, true, true, false];
        assert_eq!(gfp_zone(GFP_KERNEL | GFP_DMA, &arm64), ZoneType::Dma);
        assert_eq!(gfp_zone(GFP_KERNEL | GFP_DMA32, &arm64), ZoneType::Dma32);
        assert_eq!(gfp_zone(GFP_HIGHUSER_MOVABLE, &arm64), ZoneType::Normal);
        let arm32 = [true, false, true, true];
        assert_eq!(gfp_zone(GFP_HIGHUSER_MOVABLE, &arm32), ZoneType::HighMem);
        assert_eq!(gfp_zone(GFP_KERNEL | GFP_DMA32, &arm32), ZoneType::Normal);
        assert_eq!(gfp_migratetype(GFP_HIGHUSER_MOVABLE), MigrateType::Movable);
        assert_eq!(gfp_migratetype(GFP_KERNEL), MigrateType::Unmovable);
    }
}
