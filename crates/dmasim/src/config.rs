//! The platform: one documented configuration struct and the presets built from it.
//!
//! Like Miri's `MiriConfig`, every figure the model uses lives here with a comment that
//! names its source (`../shared/reference/` or the Linux file it comes from). Scripts
//! pick a preset with `boot(name)` and may override fields with `boot(name, #{...})`.
//!
//! Simplifications: RAM is one contiguous bank (x86's PCI hole below 4 GiB is not
//! modelled); all CPUs share one clock; cache costs are per 64-byte line access, not
//! per pipeline cycle.

use serde::Serialize;

/// Size of a page (4K pages, as the reference assumes throughout).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// `MAX_PAGE_ORDER` (include/linux/mmzone.h, v6.12 default 10): the largest buddy block
/// is 4 MiB; larger `kmalloc`/`alloc_pages` requests fail.
pub const MAX_PAGE_ORDER: u32 = 10;

/// CPU architecture of a platform: decides the linear-map layout, the cache
/// operations of the DMA API and the kmalloc alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// AArch64: `arch/arm64/mm/dma-mapping.c` cache operations, PAGE_OFFSET linear map.
    Arm64,
    /// x86-64: every device cache-coherent, direct map at `__PAGE_OFFSET_BASE_L4`.
    X86_64,
    /// 32-bit ARMv7: `arch/arm/mm/cache-v7.S` cache operations, a 3G/1G split with
    /// lowmem linearly mapped and the rest of RAM in ZONE_HIGHMEM.
    Arm32,
}

/// The shape of one cache level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CacheGeometry {
    /// Capacity in bytes.
    pub size: u64,
    /// Associativity.
    pub ways: u32,
    /// Line size in bytes (a power of two, 16..=256).
    pub line: u32,
}

impl CacheGeometry {
    /// Number of sets, or an explanation of why the geometry is impossible.
    ///
    /// # Errors
    /// A message when the line is not a power of two in 16..=256, the ways are 0 or more
    /// than 32, or size / (ways × line) is not a power of two ≥ 1.
    pub fn sets(&self) -> Result<u64, String> {
        if !self.line.is_power_of_two() || !(16..=256).contains(&self.line) {
            return Err(format!(
                "cache line must be a power of two from 16 to 256, not {}",
                self.line
            ));
        }
        if self.ways == 0 || self.ways > 32 {
            return Err(format!("cache ways must be 1..=32, not {}", self.ways));
        }
        let per_set = u64::from(self.ways) * u64::from(self.line);
        if self.size == 0 || self.size % per_set != 0 || !(self.size / per_set).is_power_of_two() {
            return Err(format!(
                "cache size {} is not a power-of-two number of sets of {} ways × {} bytes",
                self.size, self.ways, self.line
            ));
        }
        if self.size > 64 << 20 {
            return Err(format!(
                "cache size {} is larger than the 64 MiB the model allows",
                self.size
            ));
        }
        Ok(self.size / per_set)
    }
}

/// Simulated costs, in picoseconds, of each hardware action.
///
/// Anchors (`../shared/reference/perf-anchors.md` §3.1): on Cortex-A9/A53, reads from
/// non-cacheable memory run 3–5× slower than cached memcpy, while non-cacheable writes
/// run at about the cached rate thanks to write buffering.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostTable {
    /// A load or store that hits in L1.
    pub l1_hit_ps: u64,
    /// A miss in L1 served by L2 (or by another CPU's L1 through a snoop).
    pub l2_hit_ps: u64,
    /// A line fill from DRAM (per line, streaming).
    pub dram_fill_ps: u64,
    /// A dirty line written back to DRAM (mostly hidden by the write buffer).
    pub writeback_ps: u64,
    /// One 16-byte beat of a load from Normal-NC or Device memory.
    pub uncached_read_beat_ps: u64,
    /// One 16-byte beat of a store to Normal-NC or Device memory.
    pub uncached_write_beat_ps: u64,
    /// One `DC CVAC`/`DC IVAC`/`DC CIVAC` on one line (plus a write-back if dirty).
    pub cmo_line_ps: u64,
    /// The fixed part of a maintenance range (`DSB` and the call).
    pub cmo_fixed_ps: u64,
    /// Software cost of a dma-direct map, unmap or sync call, before cache work.
    pub dma_call_ps: u64,
}

/// Background activity drawn from the seeded stream (`noise` in `boot` overrides).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NoiseConfig {
    /// Probability, per noise point, that other work sweeps half of the cache sets
    /// of the current CPU's L1 and of L2, evicting (and writing back) what is there.
    pub evict: f64,
    /// Probability, per noise point, that the prefetcher speculatively fills a few
    /// lines of a page the CPU touched recently.
    pub prefetch: f64,
    /// Probability, per noise point, of a background page migration (used once the
    /// mm model lands; 0 has no effect today).
    pub migrate: f64,
}

impl NoiseConfig {
    /// No background activity at all.
    pub const OFF: NoiseConfig = NoiseConfig {
        evict: 0.0,
        prefetch: 0.0,
        migrate: 0.0,
    };

    /// True when every rate is zero.
    pub fn is_off(&self) -> bool {
        self.evict == 0.0 && self.prefetch == 0.0 && self.migrate == 0.0
    }
}

/// Everything that describes a simulated platform.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlatformConfig {
    /// Preset name this configuration came from.
    pub preset: String,
    /// One line on what real hardware the preset stands for.
    pub description: String,
    /// CPU architecture.
    pub arch: Arch,
    /// Bytes of RAM.
    pub ram: u64,
    /// Physical address of the first byte of RAM.
    pub ram_base: u64,
    /// Number of CPUs (each with its own L1D).
    pub cpus: u32,
    /// Per-CPU L1 data cache.
    pub l1: CacheGeometry,
    /// Shared L2 cache.
    pub l2: CacheGeometry,
    /// Whether devices are cache-coherent unless `device(name, #{coherent: ...})` says
    /// otherwise (devicetree `dma-coherent`, `dma_default_coherent`).
    pub coherent_default: bool,
    /// `iommu`: "none" (no IOMMU), "smmu" (devices translated through an SMMU with
    /// the kernel's DMA domains) or "passthrough" (an SMMU in identity mode,
    /// `iommu.passthrough=1`).
    pub iommu: String,
    /// `iommu.strict`: invalidate the IOTLB at every unmap (true) or queue it in a
    /// flush queue (false, "lazy"); `None` is the arch default: strict on arm64,
    /// lazy on x86 (`IOMMU_DEFAULT_DMA_STRICT` / `_LAZY`, drivers/iommu/Kconfig).
    pub iommu_strict: Option<bool>,
    /// IOTLB entries (a pcie-bench-derived 64 by default, perf-anchors §1.2).
    pub iotlb_entries: u32,
    /// IOTLB associativity (ways per set; `iotlb_entries` = fully associative).
    pub iotlb_ways: u32,
    /// The table walker snoops the CPU caches (SMMU_IDR0.COHACC on a coherent port);
    /// `None` follows `coherent_default`.
    pub iommu_coherent_walk: Option<bool>,
    /// A broken io-pgtable driver that forgets to clean the table lines it writes on
    /// a non-coherent walker (`__arm_lpae_sync_pte`): for demonstrations only.
    pub iommu_skip_pte_sync: bool,
    /// IOMMU costs.
    pub iommu_cost: crate::hw::iommu::IommuCost,
    /// `vfio.enable_unsafe_noiommu_mode=1`: VFIO hands devices without an IOMMU to
    /// user space (no protection; the kernel is tainted).
    pub vfio_noiommu: bool,
    /// `iommu.forcedac=1`: PCI devices get IOVAs from their whole mask at once
    /// instead of below 4 GiB first (drivers/iommu/dma-iommu.c:
    /// iommu_dma_forcedac_setup).
    pub iommu_forcedac: bool,
    /// `swiotlb=`: the bounce-buffer pool size in bytes; `None` lets the platform
    /// decide as Linux does (64 MiB when RAM reaches past what 32-bit DMA or the
    /// DMA zone covers, arm64's small kmalloc-bounce pool otherwise), `Some(0)` is
    /// `swiotlb=noforce` (no pool at all).
    pub swiotlb: Option<u64>,
    /// `swiotlb=force` (or a confidential guest's `SWIOTLB_FORCE`): every streaming
    /// mapping bounces.
    pub swiotlb_force: bool,
    /// `swiotlb=,<nareas>`: areas (per-CPU search domains); 0 = one per CPU.
    pub swiotlb_areas: u32,
    /// Where the bounce pool starts (physical; 0 = where `memblock_alloc_low` puts
    /// it, top-down below the limit). Not a Linux option: a replay of a real
    /// capture sets it to the pool the captured kernel reported, because that
    /// kernel's memblock held early allocations (initrd, page tables) the model
    /// does not have.
    pub swiotlb_base: u64,
    /// Devicetree `dma-ranges` limit: the highest bus address devices can reach
    /// (`dev->bus_dma_limit`); 0 = none.
    pub bus_dma_limit: u64,
    /// Bytes reserved for CMA (0 = none); the allocator arrives with the mm model.
    pub cma: u64,
    /// Top of ZONE_DMA as a physical limit (`zone_dma_limit`, v6.12).
    pub zone_dma_limit: u64,
    /// `ARCH_DMA_MINALIGN`: the compile-time bound on the cache line a DMA buffer
    /// must not share (arm64: 128). Linux uses it where it needs a constant, e.g.
    /// `dma_kmalloc_size_aligned`'s `size >= 2 * ARCH_DMA_MINALIGN`; the run-time
    /// alignment is [`PlatformConfig::dma_get_cache_alignment`].
    pub dma_minalign: u64,
    /// The CPU's cache writeback granule in bytes, `4 << CTR_EL0.CWG` (64 on
    /// Cortex-A53/A72): the largest block a cache may write back. arm64's
    /// `dma_get_cache_alignment()` is `cache_line_size()`, which reads it
    /// (arch/arm64/include/asm/cache.h: cache_line_size_of_cpu).
    pub cache_writeback_granule: u64,
    /// Virtual address of the linear map's first byte (`PAGE_OFFSET`).
    pub page_offset: u64,
    /// Start of the vmalloc area, where coherent remaps and vmalloc live.
    pub vmalloc_start: u64,
    /// Simulated costs.
    pub cost: CostTable,
    /// Background noise rates.
    pub noise: NoiseConfig,
    /// Default device DMA bandwidth in bytes per microsecond.
    pub dev_bandwidth: u64,
    /// Fixed latency of each device transfer, in nanoseconds.
    pub dev_latency_ns: u64,
    /// Default device bus offset: bus address = physical − `dma_offset` (wrapping;
    /// devicetree `dma-ranges`).
    pub dma_offset: u64,
    /// 2 MiB huge pages reserved at boot (`vm.nr_hugepages`; Linux's default is 0).
    pub hugepages: u64,
    /// Bytes of RAM the kernel maps linearly (lowmem); the rest is ZONE_HIGHMEM.
    /// Only 32-bit platforms set it below `ram`.
    pub lowmem: u64,
    /// `CONFIG_ZONE_DMA32` (64-bit platforms; `zone_dma32: false` builds without it).
    pub zone_dma32: bool,
    /// Write streaming (Arm's read allocate mode): after how many consecutive
    /// whole-line store misses stores stop allocating in L1, and in L2 too. Off
    /// (0, 0) in every preset, so that stores always leave dirty lines behind;
    /// `write_streaming: true` turns on the Cortex-A7/A35 thresholds (3, 127).
    pub write_streaming: crate::hw::cache::StreamThresholds,
}

/// Names of the built-in presets, in the order `dmasim presets` lists them.
pub const PRESET_NAMES: &[&str] = &[
    "arm64-noncoherent",
    "arm64-coherent",
    "rpi4",
    "arm32",
    "x86-64",
];

/// The Cortex-A53 class cost table (1.5 GHz, LPDDR4), used by the arm64 presets.
const CORTEX_A53_COSTS: CostTable = CostTable {
    // 3-cycle load-to-use at 1.5 GHz (Cortex-A53 TRM).
    l1_hit_ps: 2_000,
    // About 15 cycles to L2.
    l2_hit_ps: 10_000,
    // ~800 MB/s cached memcpy on Zynq UltraScale+ A53 (perf-anchors §3.1, udmabuf #16):
    // 64 bytes read + 64 written per 80 ns; 60 ns of it is the fill.
    dram_fill_ps: 60_000,
    writeback_ps: 20_000,
    // ~250 MB/s non-cacheable LDP/STP copy on A53 (udmabuf #16): 16 B per 64 ns.
    uncached_read_beat_ps: 60_000,
    // Non-cacheable stores run near the cached rate (Genode #4456: 1137 vs 1062 MiB/s).
    uncached_write_beat_ps: 15_000,
    // A few ns per clean line (perf-anchors §3.2, estimate marked UNVERIFIED there).
    cmo_line_ps: 3_000,
    cmo_fixed_ps: 100_000,
    // dma-direct is address arithmetic plus dma-debug; "well under 1 µs" (§11.3).
    dma_call_ps: 100_000,
};

impl PlatformConfig {
    /// Builds a preset by name.
    ///
    /// # Errors
    /// The list of known names when `name` is not one of them.
    ///
    /// # Examples
    /// ```
    /// let p = dmasim::config::PlatformConfig::preset("arm64-noncoherent").unwrap();
    /// assert!(!p.coherent_default);
    /// assert_eq!(p.dma_minalign, 128);
    /// ```
    pub fn preset(name: &str) -> Result<PlatformConfig, String> {
        match name {
            "arm64-noncoherent" => Ok(PlatformConfig {
                preset: name.into(),
                description: "i.MX8M-class SoC: 4x Cortex-A53, 32 KiB L1D, 512 KiB L2, \
                              2 GiB LPDDR4 at 0x4000_0000, DMA masters on a non-coherent interconnect"
                    .into(),
                arch: Arch::Arm64,
                // i.MX8M Mini EVK: 2 GiB LPDDR4, all of it below 4 GiB (ZONE_DMA).
                ram: 2 << 30,
                // i.MX8M DRAM starts at 0x4000_0000 (reference manual memory map).
                ram_base: 0x4000_0000,
                cpus: 4,
                // Cortex-A53 L1D: 32 KiB, 4-way, 64-byte lines (Cortex-A53 TRM).
                l1: CacheGeometry { size: 32 << 10, ways: 4, line: 64 },
                // i.MX8M Mini: 512 KiB L2, 16-way.
                l2: CacheGeometry { size: 512 << 10, ways: 16, line: 64 },
                coherent_default: false,
                iommu: "none".into(),
                iommu_strict: None,
                iotlb_entries: 64,
                iotlb_ways: 64,
                iommu_coherent_walk: None,
                iommu_skip_pte_sync: false,
                iommu_cost: crate::hw::iommu::IommuCost::default(),
                vfio_noiommu: false,
                iommu_forcedac: false,
                // Decided at boot: with all RAM below 4 GiB arm64 creates only the
                // small pool for kmalloc bouncing, 1 MiB per GiB of RAM
                // (arch/arm64/mm/init.c mem_init); with more RAM, 64 MiB.
                swiotlb: None,
                swiotlb_force: false,
                swiotlb_areas: 0,
                swiotlb_base: 0,
                bus_dma_limit: 0,
                // CONFIG_CMA_SIZE_MBYTES default 16 (kernel/dma/Kconfig).
                cma: 16 << 20,
                // arm64 caps zone_dma_limit at 4 GiB - 1 when DRAM starts below 4 GiB.
                zone_dma_limit: 0xffff_ffff,
                // ARCH_DMA_MINALIGN = 128 on arm64 (arch/arm64/include/asm/cache.h).
                dma_minalign: 128,
                // Cortex-A53 CTR_EL0.CWG = 4: 4 << 4 = 64 bytes (Cortex-A53 TRM,
                // CTR_EL0); the same on Cortex-A72.
                cache_writeback_granule: 64,
                // 48-bit VA: PAGE_OFFSET = 0xffff_0000_0000_0000 (arch/arm64/include/asm/memory.h).
                page_offset: 0xffff_0000_0000_0000,
                // VMALLOC_START = MODULES_END, 2 GiB above _PAGE_END(48).
                vmalloc_start: 0xffff_8000_8000_0000,
                cost: CORTEX_A53_COSTS,
                noise: NoiseConfig { evict: 0.05, prefetch: 0.10, migrate: 0.0 },
                dev_bandwidth: 1000,
                dev_latency_ns: 1000,
                dma_offset: 0,
                hugepages: 0,
                lowmem: u64::MAX,
                zone_dma32: true,
                write_streaming: crate::hw::cache::StreamThresholds::default(),
            }),
            "arm64-coherent" => {
                let mut p = PlatformConfig::preset("arm64-noncoherent")?;
                p.preset = name.into();
                p.description = "Layerscape-class SoC: Cortex-A72 cores, 1 MiB L2, 2 GiB at \
                                 0x8000_0000, DMA masters on ACE-Lite coherent ports (dma-coherent)"
                    .into();
                // Cortex-A72 L1D: 32 KiB, 2-way (Cortex-A72 TRM); L2 1 MiB, 16-way.
                p.l1 = CacheGeometry { size: 32 << 10, ways: 2, line: 64 };
                p.l2 = CacheGeometry { size: 1 << 20, ways: 16, line: 64 };
                // LX2160A DRAM region 1 starts at 0x8000_0000.
                p.ram_base = 0x8000_0000;
                p.coherent_default = true;
                Ok(p)
            }
            "rpi4" => {
                let mut p = PlatformConfig::preset("arm64-noncoherent")?;
                p.preset = name.into();
                p.description = "Raspberry Pi 4 (BCM2711): 4x Cortex-A72, 4 GiB at 0; legacy DMA \
                                 masters see the first GiB at bus 0xC000_0000, non-coherent"
                    .into();
                p.ram = 4 << 30;
                // BCM2711: DRAM from physical 0.
                p.ram_base = 0;
                // Cortex-A72: 32 KiB 2-way L1D; BCM2711 has 1 MiB of shared L2.
                p.l1 = CacheGeometry { size: 32 << 10, ways: 2, line: 64 };
                p.l2 = CacheGeometry { size: 1 << 20, ways: 16, line: 64 };
                // dma-ranges limit the SoC's DMA to 30 bits: ZONE_DMA is the first GiB
                // (of_dma_get_max_cpu_address; linux-dma-facts §4.3).
                p.zone_dma_limit = (1 << 30) - 1;
                // dma-ranges end at bus 0xFFFF_FFFF: devices reach the first GiB
                // only, whatever mask the driver sets (of_dma_configure_id sets
                // bus_dma_limit). RAM ends above the DMA limit, so Linux creates the
                // default 64 MiB swiotlb pool in the first GiB.
                p.bus_dma_limit = 0xFFFF_FFFF;
                // bcm283x.dtsi: linux,cma shared-dma-pool of 64 MiB.
                p.cma = 64 << 20;
                // dma-ranges = <0xc0000000 0x0 0x0 0x40000000>: bus 0xC000_0000 is
                // physical 0, so bus = physical + 0xC000_0000.
                p.dma_offset = 0u64.wrapping_sub(0xC000_0000);
                Ok(p)
            }
            "arm32" => {
                let mut p = PlatformConfig::preset("arm64-noncoherent")?;
                p.preset = name.into();
                p.description = "RealView-class Cortex-A9 board: 32-bit ARMv7, 1 GiB at 0x6000_0000, \
                                 256 MiB ZONE_DMA, 760 MiB lowmem and the rest HIGHMEM, non-coherent DMA"
                    .into();
                p.arch = Arch::Arm32;
                p.ram = 1 << 30;
                // Versatile Express / RealView DRAM at 0x6000_0000.
                p.ram_base = 0x6000_0000;
                p.cpus = 2;
                // Cortex-A9: 32 KiB 4-way L1D with 32-byte lines; PL310 L2, 512 KiB 8-way.
                p.l1 = CacheGeometry { size: 32 << 10, ways: 4, line: 32 };
                p.l2 = CacheGeometry { size: 512 << 10, ways: 8, line: 32 };
                // machine_desc->dma_zone_size = SZ_256M (mach-realview), so
                // arm_dma_limit = PHYS_OFFSET + 256 MiB - 1.
                p.zone_dma_limit = 0x6000_0000 + (256 << 20) - 1;
                // No swiotlb on 32-bit ARM without LPAE (CONFIG_SWIOTLB not selected).
                p.swiotlb = Some(0);
                p.cma = 16 << 20;
                // ARCH_DMA_MINALIGN = L1_CACHE_BYTES = 64 (CONFIG_ARM_L1_CACHE_SHIFT 6).
                p.dma_minalign = 64;
                // Cortex-A9 CTR.CWG = 3: 32 bytes. 32-bit ARM's
                // dma_get_cache_alignment() is the constant ARCH_DMA_MINALIGN, so
                // the model does not use it there.
                p.cache_writeback_granule = 32;
                // VMSPLIT_3G: PAGE_OFFSET 0xC000_0000; 240 MiB of vmalloc leaves 760 MiB
                // of lowmem (arch/arm/mm/mmu.c, vmalloc_size default).
                p.page_offset = 0xC000_0000;
                p.lowmem = 760 << 20;
                // VMALLOC_START = high_memory + VMALLOC_OFFSET (8 MiB).
                p.vmalloc_start = 0xC000_0000 + (760 << 20) + (8 << 20);
                p.cost = CostTable {
                    l1_hit_ps: 6_000,
                    l2_hit_ps: 40_000,
                    // Zynq-7000 A9 at 666 MHz: cached memcpy 1062 MiB/s (perf-anchors
                    // §3.1, Genode #4456): about 30 ns per 32-byte line read.
                    dram_fill_ps: 30_000,
                    writeback_ps: 15_000,
                    // Uncached reads ~210 MiB/s (5x slower): 16 bytes per 75 ns.
                    uncached_read_beat_ps: 75_000,
                    // Uncached writes ~1137 MiB/s.
                    uncached_write_beat_ps: 14_000,
                    cmo_line_ps: 6_000,
                    cmo_fixed_ps: 200_000,
                    dma_call_ps: 200_000,
                };
                p.dev_bandwidth = 400;
                Ok(p)
            }
            "x86-64" => Ok(PlatformConfig {
                preset: name.into(),
                description: "x86-64 server core: 32 KiB 8-way L1D, 1 MiB 16-way L2, \
                              4 GiB at 0, every device cache-coherent"
                    .into(),
                arch: Arch::X86_64,
                ram: 4 << 30,
                ram_base: 0,
                cpus: 4,
                l1: CacheGeometry { size: 32 << 10, ways: 8, line: 64 },
                l2: CacheGeometry { size: 1 << 20, ways: 16, line: 64 },
                // PCIe on x86 snoops the CPU caches: every device is coherent.
                coherent_default: true,
                iommu: "none".into(),
                iommu_strict: None,
                iotlb_entries: 64,
                iotlb_ways: 64,
                iommu_coherent_walk: None,
                iommu_skip_pte_sync: false,
                iommu_cost: crate::hw::iommu::IommuCost::default(),
                vfio_noiommu: false,
                iommu_forcedac: false,
                // x86 enables swiotlb only with RAM above 4 GiB (arch/x86/kernel/pci-dma.c
                // pci_swiotlb_detect); decided at boot.
                swiotlb: None,
                swiotlb_force: false,
                swiotlb_areas: 0,
                swiotlb_base: 0,
                bus_dma_limit: 0,
                // CMA_SIZE_MBYTES is 0 on x86 (kernel/dma/Kconfig).
                cma: 0,
                // ZONE_DMA = first 16 MiB (MAX_DMA_PFN, arch/x86/include/asm/dma.h).
                zone_dma_limit: (16 << 20) - 1,
                // x86 has no ARCH_DMA_MINALIGN; kmalloc aligns to 8 (ARCH_KMALLOC_MINALIGN).
                dma_minalign: 8,
                // 64-byte lines; unused: x86's dma_get_cache_alignment() is 1.
                cache_writeback_granule: 64,
                // __PAGE_OFFSET_BASE_L4 (arch/x86/include/asm/page_64_types.h).
                page_offset: 0xffff_8880_0000_0000,
                // VMALLOC_BASE_L4 (arch/x86/include/asm/pgtable_64_types.h).
                vmalloc_start: 0xffff_c900_0000_0000,
                cost: CostTable {
                    l1_hit_ps: 1_000,
                    l2_hit_ps: 4_000,
                    // ~6-8 GB/s single-core memcpy on DRAM (perf-anchors §6, LOCAL).
                    dram_fill_ps: 10_000,
                    writeback_ps: 5_000,
                    // UC accesses on x86 are serialising and very slow.
                    uncached_read_beat_ps: 100_000,
                    uncached_write_beat_ps: 20_000,
                    // clflush: 4 KiB in 0.6 µs, 1 MiB in 17 µs (perf-anchors §3.2).
                    cmo_line_ps: 1_000,
                    cmo_fixed_ps: 500_000,
                    dma_call_ps: 100_000,
                },
                noise: NoiseConfig { evict: 0.05, prefetch: 0.10, migrate: 0.0 },
                dev_bandwidth: 4000,
                dev_latency_ns: 500,
                dma_offset: 0,
                hugepages: 0,
                lowmem: u64::MAX,
                zone_dma32: true,
                write_streaming: crate::hw::cache::StreamThresholds::default(),
            }),
            other => Err(format!(
                "unknown preset {other:?}; known presets: {}",
                PRESET_NAMES.join(", ")
            )),
        }
    }

    /// Checks the whole configuration (after overrides).
    ///
    /// # Errors
    /// A message naming the first field that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        self.l1.sets().map_err(|e| format!("l1: {e}"))?;
        self.l2.sets().map_err(|e| format!("l2: {e}"))?;
        if self.l1.line != self.l2.line {
            return Err("l1 and l2 must have the same line size".into());
        }
        if self.cpus == 0 || self.cpus > 64 {
            return Err(format!("cpus must be 1..=64, not {}", self.cpus));
        }
        if self.ram < 16 << 20 {
            return Err(format!("ram must be at least 16 MiB, not {}", self.ram));
        }
        if self.ram % PAGE_SIZE != 0 || self.ram_base % (2 << 20) != 0 {
            return Err("ram must be whole pages and ram_base 2 MiB aligned".into());
        }
        if self.ram > 1 << 40
            || self
                .ram_base
                .checked_add(self.ram)
                .is_none_or(|e| e > 1 << 44)
        {
            return Err("ram must end below 16 TiB (44-bit physical addresses)".into());
        }
        if !self.cache_writeback_granule.is_power_of_two()
            || !(16..=2048).contains(&self.cache_writeback_granule)
        {
            // CTR_EL0.CWG is 4 bits of log2(words): 16 to 2048 bytes in practice.
            return Err(format!(
                "cache_writeback_granule must be a power of two from 16 to 2048, not {}",
                self.cache_writeback_granule
            ));
        }
        for (n, r) in [
            ("evict", self.noise.evict),
            ("prefetch", self.noise.prefetch),
            ("migrate", self.noise.migrate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("noise.{n} must be a rate from 0.0 to 1.0, not {r}"));
            }
        }
        Ok(())
    }

    /// Where each figure of the preset comes from, field by field (`dmasim presets`).
    pub fn sources(&self) -> Vec<(&'static str, &'static str)> {
        let common: &[(&'static str, &'static str)] = &[
            ("noise", "dmasim's own background model: evict = chance of a sweep over half the sets of L1 and L2 per noise point, prefetch = chance of a speculative fill near a recently touched page"),
            ("dev_bandwidth", "a generic on-chip DMA master (1 GB/s) or PCIe device (4 GB/s); set per device with bandwidth"),
            ("dev_latency_ns", "setup latency of a descriptor-driven transfer, order of magnitude"),
            ("iotlb_entries", "pcie-bench: 64 B random DMA reads lose nothing up to a 256 KiB window of 4 KiB pages and fall off beyond, i.e. about 64 IOTLB entries (perf-anchors §1.2, DERIVED)"),
            ("iommu_cost", "walk_level_ps: pcie-bench 0.35x at a 64 MiB window = ~33 ns throughput cost per miss over 4 levels; inv_page_ps and sync_ps: Morello SMMUv3 strict unmap 0.6 us at 4 KiB, +80 ns per extra page (perf-anchors §1.2, §1.3)"),
            ("iommu_forcedac", "iommu.forcedac=0 by default: PCI devices try IOVAs below 4 GiB first (drivers/iommu/dma-iommu.c: iommu_dma_alloc_iova)"),
            ("iommu_strict", "null = arch default: strict on arm64, lazy on x86 (drivers/iommu/Kconfig IOMMU_DEFAULT_DMA_STRICT / _LAZY)"),
            ("write_streaming", "off (l1 = l2 = 0) so stores always leave dirty lines; Arm cores stream long whole-line store runs past L1 after 3 lines and past L2 after 127 (Arm FAQ ka16133 Cortex-A7, Cortex-A35 TRM A5.6); turn on with write_streaming: true"),
        ];
        let specific: &[(&'static str, &'static str)] = match self.arch {
            Arch::Arm32 => &[
                ("ram_base", "Versatile Express / RealView: DRAM at 0x6000_0000"),
                ("l1", "Cortex-A9 TRM: 32 KiB 4-way L1D, 32-byte lines"),
                ("l2", "PL310 L2 cache controller, 512 KiB 8-way"),
                ("zone_dma_limit", "machine_desc->dma_zone_size SZ_256M (arch/arm/mach-realview)"),
                ("lowmem", "VMSPLIT_3G with 240 MiB of vmalloc: 760 MiB of lowmem, the rest ZONE_HIGHMEM (arch/arm/mm/mmu.c)"),
                ("dma_minalign", "L1_CACHE_BYTES 64 (CONFIG_ARM_L1_CACHE_SHIFT=6)"),
                ("page_offset", "CONFIG_PAGE_OFFSET 0xC0000000 (VMSPLIT_3G)"),
                ("swiotlb", "none: 32-bit ARM without LPAE has no swiotlb (CONFIG_SWIOTLB is selected only with ARM_LPAE)"),
                ("cma", "CONFIG_CMA_SIZE_MBYTES default 16 (kernel/dma/Kconfig)"),
                ("cost", "Zynq-7000 Cortex-A9 at 666 MHz: cached 1062 MiB/s, uncached reads 210 MiB/s, uncached writes 1137 MiB/s (perf-anchors §3.1, Genode #4456)"),
            ],
            Arch::Arm64 => &[
                ("ram_base", "SoC memory map (i.MX8M: 0x4000_0000; LX2160A: 0x8000_0000)"),
                ("l1", "Cortex-A53 / Cortex-A72 TRM: 32 KiB L1D, 64-byte lines"),
                ("l2", "i.MX8M Mini 512 KiB / LX2160A 1 MiB per cluster, 16-way"),
                ("coherent_default", "devicetree dma-coherent (of_dma_is_coherent, drivers/of/address.c)"),
                ("swiotlb", "1 MiB per GiB for kmalloc bouncing when all RAM is below the DMA limit; IO_TLB_DEFAULT_SIZE 64 MiB when it ends above (arch/arm64/mm/init.c mem_init)"),
                ("ram", "i.MX8M Mini EVK / LX2160A boards with 2 GiB, Raspberry Pi 4 with 4 GiB; override with ram"),
                ("hugepages", "vm.nr_hugepages, 0 by default; set it with boot(preset, #{ hugepages: N })"),
                ("dma_offset", "devicetree dma-ranges: Raspberry Pi 4 legacy DMA sees physical 0 at bus 0xC000_0000"),
                ("bus_dma_limit", "devicetree dma-ranges end (of_dma_configure_id): Raspberry Pi 4 legacy DMA reaches bus 0xFFFF_FFFF, the first GiB"),
                ("cma", "CONFIG_CMA_SIZE_MBYTES default 16 (kernel/dma/Kconfig)"),
                ("zone_dma_limit", "arm64 caps zone_dma_limit at 4 GiB - 1 when DRAM starts below 4 GiB (arch/arm64/mm/init.c)"),
                ("dma_minalign", "ARCH_DMA_MINALIGN 128 (arch/arm64/include/asm/cache.h), the compile-time bound"),
                ("cache_writeback_granule", "4 << CTR_EL0.CWG = 64 on Cortex-A53/A72: dma_get_cache_alignment() = cache_line_size() (arch/arm64/include/asm/cache.h); set with boot(preset, #{ cache_writeback_granule: 128 })"),
                ("page_offset", "PAGE_OFFSET for 48-bit VA (arch/arm64/include/asm/memory.h)"),
                ("vmalloc_start", "VMALLOC_START = MODULES_END (arch/arm64/include/asm/pgtable.h)"),
                ("cost", "Cortex-A53 at 1.5 GHz; uncached read/write beats from perf-anchors §3.1 (udmabuf #16, Genode #4456); cache maintenance per line from perf-anchors §3.2 (estimate)"),
            ],
            Arch::X86_64 => &[
                ("ram_base", "RAM from 0 (the PCI hole below 4 GiB is not modelled)"),
                ("l1", "32 KiB 8-way L1D, 64-byte lines (Intel/AMD server cores)"),
                ("l2", "1 MiB 16-way L2 (Skylake-SP class)"),
                ("coherent_default", "PCIe snoops the CPU caches; the kernel has no non-coherent DMA on x86"),
                ("swiotlb", "x86 creates swiotlb only with RAM above 4 GiB (arch/x86/kernel/pci-dma.c)"),
                ("cma", "CONFIG_CMA_SIZE_MBYTES is 0 on x86 (kernel/dma/Kconfig)"),
                ("zone_dma_limit", "ZONE_DMA = first 16 MiB, MAX_DMA_PFN (arch/x86/include/asm/dma.h)"),
                ("dma_minalign", "no ARCH_DMA_MINALIGN on x86; ARCH_KMALLOC_MINALIGN 8"),
                ("page_offset", "__PAGE_OFFSET_BASE_L4 (arch/x86/include/asm/page_64_types.h)"),
                ("vmalloc_start", "VMALLOC_BASE_L4 (arch/x86/include/asm/pgtable_64_types.h)"),
                ("cost", "DRAM fill from single-core memcpy rates (perf-anchors §6, LOCAL); clflush per line from perf-anchors §3.2"),
            ],
        };
        specific.iter().chain(common).copied().collect()
    }

    /// `dma_get_cache_alignment()`: the alignment a buffer needs so that DMA never
    /// shares a cache line with other data. arm64 overrides it with
    /// `cache_line_size()`, the run-time writeback granule (at least the modelled
    /// line); 32-bit ARM has `ARCH_HAS_DMA_MINALIGN` and returns
    /// `ARCH_DMA_MINALIGN`; x86 defines neither and returns 1
    /// (include/linux/dma-mapping.h: dma_get_cache_alignment;
    /// arch/arm64/include/asm/cache.h: `#define dma_get_cache_alignment cache_line_size`).
    pub fn dma_get_cache_alignment(&self) -> u64 {
        match self.arch {
            Arch::Arm64 => self.cache_writeback_granule.max(self.line()),
            Arch::Arm32 => self.dma_minalign,
            Arch::X86_64 => 1,
        }
    }

    /// kernel/dma/direct.c's `zone_dma_limit` variable, which
    /// `dma_direct_supported` and `dma_direct_optimal_gfp_mask` read. It starts at
    /// `DMA_BIT_MASK(24)` and only arm64 (arch/arm64/mm/init.c: zone_sizes_init),
    /// powerpc and s390 change it: 32-bit ARM keeps its ZONE_DMA top in
    /// `arm_dma_limit` instead, and x86's ZONE_DMA is those 16 MiB anyway.
    pub fn dma_direct_zone_dma_limit(&self) -> u64 {
        match self.arch {
            Arch::Arm64 => self.zone_dma_limit,
            Arch::Arm32 | Arch::X86_64 => crate::kernel::dma::dma_bit_mask(24),
        }
    }

    /// Line size shared by both cache levels.
    pub fn line(&self) -> u64 {
        u64::from(self.l1.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid() {
        for name in PRESET_NAMES {
            let p = PlatformConfig::preset(name).unwrap();
            p.validate().unwrap();
            assert_eq!(&p.preset, name);
        }
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let e = PlatformConfig::preset("vax").unwrap_err();
        assert!(e.contains("arm64-noncoherent"), "{e}");
    }

    #[test]
    fn uncached_reads_cost_three_to_five_times_a_cached_fill() {
        // perf-anchors §3.1: the model must keep this ratio.
        let c = PlatformConfig::preset("arm64-noncoherent").unwrap().cost;
        let nc_line = 4 * c.uncached_read_beat_ps;
        let ratio = nc_line as f64 / c.dram_fill_ps as f64;
        assert!((3.0..=5.0).contains(&ratio), "{ratio}");
        let w = 4 * c.uncached_write_beat_ps;
        assert!(w <= c.dram_fill_ps, "uncached writes near cached speed");
    }

    #[test]
    fn bad_geometry_is_rejected() {
        let mut p = PlatformConfig::preset("x86-64").unwrap();
        p.l1.size = 3000;
        assert!(p.validate().is_err());
        p.l1 = CacheGeometry {
            size: 32 << 10,
            ways: 0,
            line: 64,
        };
        assert!(p.validate().is_err());
    }
}
