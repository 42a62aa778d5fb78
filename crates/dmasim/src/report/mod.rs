//! Reports: the data of one run (schema `dmasim.report/v1`) and its renderings.
//!
//! The model never prints. A run ends in a [`Report`]; [`text::render`] turns it into
//! the dmesg-style log plus rustc-style findings, and serde turns it into the JSON of
//! `CLI_AND_REPORTS.md`, field for field.

pub mod html;
pub mod text;
pub mod trace;
pub mod visual;

use serde::Serialize;

use crate::check::{Finding, Severity};
use crate::config::{NoiseConfig, PlatformConfig};
use crate::system::System;

/// The JSON schema name of a run report.
pub const SCHEMA: &str = "dmasim.report/v1";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Completed with no finding.
    Clean,
    /// Completed with at least one finding (of any severity).
    Findings,
    /// Stopped by a script error or a limit.
    Error,
}

/// The platform part of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlatformSummary {
    /// Preset name.
    pub preset: String,
    /// Architecture.
    pub arch: crate::config::Arch,
    /// RAM bytes.
    pub ram: u64,
    /// First physical address of RAM.
    pub ram_base: u64,
    /// CPUs.
    pub cpus: u32,
    /// IOMMU mode.
    pub iommu: String,
    /// Devices coherent by default.
    pub coherent_default: bool,
    /// The `swiotlb` boot setting in bytes (`null`: the platform's default; the
    /// pool really made is in `stats.swiotlb.slots_total`).
    pub swiotlb: Option<u64>,
    /// `swiotlb=force`.
    pub swiotlb_force: bool,
    /// CMA bytes.
    pub cma: u64,
    /// L1D geometry.
    pub l1: crate::config::CacheGeometry,
    /// L2 geometry.
    pub l2: crate::config::CacheGeometry,
    /// Noise rates.
    pub noise: NoiseConfig,
}

impl PlatformSummary {
    /// The summary of a configuration.
    pub fn of(p: &PlatformConfig) -> PlatformSummary {
        PlatformSummary {
            preset: p.preset.clone(),
            arch: p.arch,
            ram: p.ram,
            ram_base: p.ram_base,
            cpus: p.cpus,
            iommu: p.iommu.clone(),
            coherent_default: p.coherent_default,
            swiotlb: p.swiotlb,
            swiotlb_force: p.swiotlb_force,
            cma: p.cma,
            l1: p.l1,
            l2: p.l2,
            noise: p.noise,
        }
    }
}

/// One failed expectation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectationFailure {
    /// The script's message.
    pub msg: String,
    /// Script line.
    pub line: u32,
}

/// Expectations of the script.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Expectations {
    /// How many held.
    pub passed: u64,
    /// How many failed.
    pub failed: u64,
    /// The failures, in order.
    pub failures: Vec<ExpectationFailure>,
}

/// Cache counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheStatsOut {
    /// CPU accesses served by a cache (L1, L2 or another CPU's L1).
    pub hits: u64,
    /// CPU accesses that went to DRAM.
    pub misses: u64,
    /// Lines cleaned by cache maintenance.
    pub clean_lines: u64,
    /// Lines invalidated by cache maintenance.
    pub invalidate_lines: u64,
    /// 16-byte CPU accesses to uncached memory.
    pub uncached_accesses: u64,
    /// Whole-line stores that write streaming kept out of L1 (into L2 or DRAM);
    /// absent while write streaming is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streamed_lines: Option<u64>,
    /// Of those, the stores that went to DRAM without allocating in any cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streamed_to_dram: Option<u64>,
}

/// IOMMU counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IommuStatsOut {
    /// IOTLB hits.
    pub iotlb_hits: u64,
    /// IOTLB misses.
    pub iotlb_misses: u64,
    /// Page-table walks.
    pub walks: u64,
    /// Faults.
    pub faults: u64,
    /// Map operations.
    pub maps: u64,
    /// Unmap operations.
    pub unmaps: u64,
}

/// swiotlb counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SwiotlbStatsOut {
    /// Slots in the pool.
    pub slots_total: u64,
    /// Most slots in use at once.
    pub slots_used_max: u64,
    /// "swiotlb buffer is full" errors.
    pub full_errors: u64,
    /// Slots in use at the end of the run.
    pub slots_used: u64,
    /// Simulated time the CPU spent on bounce copies, in ns.
    pub copy_ns: u64,
}

/// CMA counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CmaStatsOut {
    /// Pages in the CMA area.
    pub total_pages: u64,
    /// Pages allocated from it.
    pub used_pages: u64,
    /// Pages migrated out to make room.
    pub migrated_pages: u64,
    /// Failed `cma_alloc` calls.
    pub failures: u64,
}

/// Memory-management counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MmStatsOut {
    /// Pages migrated.
    pub migrated_pages: u64,
    /// Pages swapped out.
    pub swapped_pages: u64,
    /// Pages pinned with FOLL_PIN during the run (`nr_foll_pin_acquired`).
    pub pinned_pages: u64,
}

/// The run's counters (`stats` in the JSON report and in scripts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Simulated time in ns.
    pub sim_time_ns: u64,
    /// Bytes devices moved.
    pub dma_bytes: u64,
    /// Bytes copied through bounce buffers.
    pub bounce_bytes: u64,
    /// Mappings that bounced.
    pub bounced_maps: u64,
    /// Cache counters.
    pub cache: CacheStatsOut,
    /// IOMMU counters.
    pub iommu: IommuStatsOut,
    /// swiotlb counters.
    pub swiotlb: SwiotlbStatsOut,
    /// CMA counters.
    pub cma: CmaStatsOut,
    /// mm counters.
    pub mm: MmStatsOut,
    /// Copies between user and kernel memory.
    pub uaccess: crate::uapi::chardev::CopyStats,
    /// Receive paths: poll-mode drivers beside the kernel's interrupt path.
    pub rx: crate::uapi::pmd::RxStats,
}

impl Stats {
    /// The counters of a system so far.
    pub fn of(sys: &System) -> Stats {
        let c = sys.hw.caches.stats;
        Stats {
            sim_time_ns: sys.hw.now_ps() / 1000,
            dma_bytes: sys.hw.stats.dma_bytes,
            cma: CmaStatsOut {
                total_pages: sys.kernel.pages.cma.as_ref().map_or(0, |c| c.count),
                used_pages: sys.kernel.cma_used_max,
                migrated_pages: sys.kernel.cma_migrated,
                failures: sys.kernel.cma_failures,
            },
            mm: MmStatsOut {
                migrated_pages: sys.kernel.migrated_pages,
                swapped_pages: sys.kernel.swapped_pages,
                pinned_pages: sys.kernel.pins_acquired,
            },
            uaccess: sys.kernel.copies,
            rx: crate::uapi::pmd::RxStats::of(sys),
            iommu: {
                let h = sys.hw.iommu.stats;
                let (maps, unmaps) = sys
                    .kernel
                    .iommu
                    .as_ref()
                    .map_or((0, 0), |s| (s.maps, s.unmaps));
                IommuStatsOut {
                    iotlb_hits: h.iotlb_hits,
                    iotlb_misses: h.iotlb_misses,
                    walks: h.walks,
                    faults: h.faults,
                    maps,
                    unmaps,
                }
            },
            bounce_bytes: sys.kernel.swiotlb.as_ref().map_or(0, |p| p.bounce_bytes),
            bounced_maps: sys.kernel.swiotlb.as_ref().map_or(0, |p| p.bounced_maps),
            swiotlb: sys
                .kernel
                .swiotlb
                .as_ref()
                .map_or_else(SwiotlbStatsOut::default, |p| SwiotlbStatsOut {
                    slots_total: p.nslabs as u64,
                    slots_used_max: p.used_hiwater,
                    full_errors: p.full_errors,
                    slots_used: p.used,
                    copy_ns: p.copy_ps / 1000,
                }),
            cache: CacheStatsOut {
                hits: c.l1_hits + c.l2_hits,
                misses: c.misses,
                clean_lines: c.clean_lines,
                invalidate_lines: c.invalidate_lines,
                uncached_accesses: sys.hw.stats.uncached_accesses,
                streamed_lines: (sys.cfg.write_streaming.l1 > 0)
                    .then_some(c.streamed_l2 + c.streamed_dram),
                streamed_to_dram: (sys.cfg.write_streaming.l1 > 0).then_some(c.streamed_dram),
            },
        }
    }
}

/// Everything one run produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// Script name as given.
    pub script: String,
    /// Seed of the run.
    pub seed: u64,
    /// The platform (`None` when the script stopped before `boot`).
    pub platform: Option<PlatformSummary>,
    /// How it ended.
    pub outcome: Outcome,
    /// The error that stopped it: `file:line:col: message`.
    pub error: Option<String>,
    /// Expectations.
    pub expectations: Expectations,
    /// Findings in the order they happened.
    pub findings: Vec<Finding>,
    /// Counters.
    pub stats: Stats,
    /// Streaming throughput runs (`stream_to_device` / `stream_from_device`).
    pub streams: Vec<crate::throughput::StreamResult>,
    /// dmesg-style log.
    pub log: Vec<String>,
    /// The pictures' data (`--html`, `--trace`); absent from the JSON otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visual: Option<Box<visual::Visual>>,
}

impl Report {
    /// The process exit status: 2 on error, 1 with an error-severity finding or a
    /// failed expectation, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.outcome == Outcome::Error {
            2
        } else if self.expectations.failed > 0
            || self.findings.iter().any(|f| f.severity == Severity::Error)
        {
            1
        } else {
            0
        }
    }

    /// The JSON text (pretty, stable field order).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
