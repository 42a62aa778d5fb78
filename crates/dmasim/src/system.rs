//! The simulated system: the machine, the kernel on it, the sanitizer beside it, and
//! the devices' DMA engines running on the simulated clock.
//!
//! Device transfers are jobs on a queue. A job moves its bytes a page at a time, each
//! piece at the simulated time the transfer reaches it (latency + bytes / bandwidth),
//! so CPU work and background noise interleave with the transfer as on a real bus.
//! Pending pieces run whenever the CPU's clock passes them.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::check::{Ctx, DeviceAccess, Sanitizer, UserHit};
use crate::config::{PlatformConfig, PAGE_SIZE};
use crate::hw::mmu::{Block, MemType};
use crate::hw::Machine;
use crate::kernel::device::Device;
use crate::kernel::mm::page::Vacated;
use crate::kernel::Kernel;
use crate::units::human_size;

/// Default cap on DRAM frames with data: 4 GiB of host memory.
pub const DEFAULT_MEMORY_CAP: u64 = 4 << 30;
/// Largest single CPU or device access a script may ask for.
pub const MAX_ACCESS: u64 = 256 << 20;
/// Device transfers that may be in flight at once.
pub const MAX_JOBS_IN_FLIGHT: usize = 4096;
/// Log lines a run keeps; later ones are counted, not kept (a script printing in
/// a loop cannot exhaust host memory).
pub const MAX_LOG_LINES: usize = 20_000;
/// Characters of one log line kept (a longer `print` is cut, with an ellipsis).
pub const MAX_LOG_LINE_CHARS: usize = 2_000;

/// `line` cut to [`MAX_LOG_LINE_CHARS`] characters.
pub(crate) fn cap_line(mut line: String) -> String {
    if let Some((cut, _)) = line.char_indices().nth(MAX_LOG_LINE_CHARS) {
        line.truncate(cut);
        line.push('…');
        // `truncate` keeps the capacity: 20,000 kept lines cut from 64 KiB prints
        // held 1.3 GB (found by the run's heap budget, issue 19).
        line.shrink_to_fit();
    }
    line
}

/// Default bound on a run's simulated time: one hour (`--max-sim-time`).
pub const DEFAULT_MAX_SIM_TIME_NS: u64 = 3_600 * 1_000_000_000;
/// Largest `--max-sim-time` accepted: 100 days, so that the clock (picoseconds in a
/// `u64`, about 213 days) and every time computed from it keep their headroom.
pub const MAX_SIM_TIME_NS: u64 = 100 * 86_400 * 1_000_000_000;
/// Noise points at most per `run_for`/`wait` (one per simulated µs up to this).
const MAX_NOISE_POINTS_PER_WAIT: u64 = 256;

/// Refuses a device transfer longer than [`MAX_ACCESS`] (host memory: the model
/// holds a transfer's bytes).
fn check_transfer_len(len: u64) -> Result<()> {
    if len > MAX_ACCESS {
        return Err(SimError::Invalid(format!(
            "a single transfer is limited to {}",
            human_size(MAX_ACCESS)
        )));
    }
    Ok(())
}

/// Failures of the simulation itself (exit 2), as opposed to kernel-level results.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SimError {
    /// The run touched more DRAM frames than the cap allows.
    #[error("memory limit: the run needed more than {cap} of simulated DRAM with data (raise it with --max-memory)")]
    MemoryCap {
        /// The cap, formatted.
        cap: String,
    },
    /// The run's simulated time passed its bound.
    #[error(
        "time limit: the run would pass {limit} of simulated time (raise it with --max-sim-time)"
    )]
    SimTimeLimit {
        /// The bound, formatted.
        limit: String,
    },
    /// A CPU access to an address with no mapping: a kernel oops in Linux.
    #[error("Unable to handle kernel paging request at virtual address {0:#018x}")]
    PagingRequest(u64),
    /// An argument no kernel function could accept (Linux would BUG or not compile).
    #[error("{0}")]
    Invalid(String),
    /// A bad platform configuration.
    #[error("platform: {0}")]
    Config(String),
}

impl SimError {
    /// A limit of the simulator (host memory, simulated time) rather than a bad
    /// call: a script cannot catch it, and the run ends with exit 2.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            SimError::MemoryCap { .. } | SimError::SimTimeLimit { .. }
        )
    }
}

/// Result alias for simulator failures.
pub type Result<T> = std::result::Result<T, SimError>;

/// One IOMMU fault of a device, as scripts see it (`iommu_faults(dev)`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IommuFault {
    /// The bus address (IOVA) the device used.
    pub addr: u64,
    /// Why the IOMMU refused it: `translation`, `permission`, `blocked` or
    /// `address-size`.
    pub kind: crate::hw::iommu::FaultKind,
    /// A write (else a read).
    pub write: bool,
}

/// Options of one run that are not part of the platform.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Seed of the random stream.
    pub seed: u64,
    /// Host bytes of simulated DRAM that may hold data.
    pub memory_cap: u64,
    /// Record the timeline, buffers and cache snapshots for `--html` / `--trace`.
    pub record: bool,
    /// Simulated nanoseconds the run may last (`--max-sim-time`; at most
    /// [`MAX_SIM_TIME_NS`]).
    pub max_sim_time_ns: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: 0,
            memory_cap: DEFAULT_MEMORY_CAP,
            record: false,
            max_sim_time_ns: DEFAULT_MAX_SIM_TIME_NS,
        }
    }
}

/// A dmesg line at `ps` of simulated time: `[ seconds.micros] text`.
fn dmesg_line(ps: u64, text: &str) -> String {
    let us = ps / 1_000_000;
    format!("[{:5}.{:06}] {text}", us / 1_000_000, us % 1_000_000)
}

/// A device transfer in flight.
#[derive(Debug, Clone)]
pub struct Job {
    dev: usize,
    write: bool,
    bus: u64,
    len: u64,
    data: Vec<u8>,
    done: u64,
    start_ps: u64,
    ps_per_kib: u64,
    latency_ps: u64,
    bus_error: bool,
    line: u32,
}

impl Job {
    fn time_at(&self, bytes: u64) -> u64 {
        // Saturates: the run's time bound refuses any wait that would get here.
        let t = u128::from(self.start_ps)
            + u128::from(self.latency_ps)
            + u128::from(bytes) * u128::from(self.ps_per_kib) / 1024;
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// Bytes of the next piece: up to the end of the bus page, or of the job.
    fn piece_len(&self) -> u64 {
        let bus = self.bus.wrapping_add(self.done);
        (PAGE_SIZE - (bus & (PAGE_SIZE - 1))).min(self.len - self.done)
    }

    /// When the next piece ends (ps), as booked.
    fn next_time(&self) -> Option<u64> {
        if self.done >= self.len {
            return None;
        }
        Some(self.time_at(self.done + self.piece_len()))
    }

    /// Completion time in ps.
    pub fn end_ps(&self) -> u64 {
        self.time_at(self.len)
    }
}

/// The whole simulated system.
pub struct System {
    /// The platform it was booted with.
    pub cfg: PlatformConfig,
    /// The silicon.
    pub hw: Machine,
    /// Linux.
    pub kernel: Kernel,
    /// The observer.
    pub check: Sanitizer,
    /// dmesg.
    pub log: Vec<String>,
    /// Script line of the call being run.
    pub line: u32,
    /// CPU the script runs on.
    pub cpu: usize,
    /// Streaming throughput runs, in order (`streams` in the report).
    pub streams: Vec<crate::throughput::StreamResult>,
    /// The pictures' recorder, when the run records.
    pub(crate) recorder: Option<Box<crate::report::visual::Recorder>>,
    /// dmaengine channels and descriptors (`kernel::dmaengine`).
    pub dmaengine: crate::kernel::dmaengine::DmaEngine,
    /// Descriptor rings declared by the script (`ring`).
    pub rings: crate::ring::Rings,
    jobs: BTreeMap<u64, Job>,
    /// The devices' links and the IOMMU's walker, shared by the requests in flight.
    pub paths: crate::outstanding::SharedPaths,
    /// Pending pieces in time order: (time in ps, job id).
    queue: BTreeSet<(u64, u64)>,
    next_job: u64,
    /// The simulated time the run may reach, in ps.
    max_sim_ps: u64,
    /// Log lines not kept past [`MAX_LOG_LINES`].
    pub log_dropped: u64,
    /// A limit the run hit; every later call fails with it (a script cannot go on
    /// past a limit by catching the error).
    limit_hit: Option<SimError>,
}

impl System {
    /// Boots a platform: RAM, caches, the linear map, the kernel's allocators.
    ///
    /// # Errors
    /// [`SimError::Config`] when the configuration cannot work.
    ///
    /// # Examples
    /// ```
    /// use dmasim::config::PlatformConfig;
    /// use dmasim::system::{RunOptions, System};
    /// let sys = System::boot(PlatformConfig::preset("arm64-noncoherent").unwrap(), RunOptions::default()).unwrap();
    /// assert_eq!(sys.kernel.virt_to_phys(sys.kernel.page_offset), Some(0x4000_0000));
    /// ```
    pub fn boot(cfg: PlatformConfig, opts: RunOptions) -> Result<System> {
        cfg.validate().map_err(SimError::Config)?;
        let cap_frames = (opts.memory_cap / PAGE_SIZE).max(16);
        let mut hw = Machine::new(&cfg, opts.seed, cap_frames);
        let kernel = Kernel::new(&cfg);
        hw.mmu.map_block(
            0,
            Block {
                va: cfg.page_offset,
                pa: cfg.ram_base,
                len: cfg.ram.min(cfg.lowmem),
                memtype: MemType::Normal,
            },
        );
        let check = Sanitizer::new(cfg.line(), cfg.cost.dram_fill_ps);
        let mut kernel = kernel;
        // dma_contiguous_reserve(limit): arm64 passes arm64_dma_phys_limit, x86 the
        // end of mapped memory.
        let cma = (cfg.cma > 0).then(|| {
            let limit = match cfg.arch {
                crate::config::Arch::Arm64 | crate::config::Arch::Arm32 => {
                    cfg.zone_dma_limit.saturating_add(1)
                }
                crate::config::Arch::X86_64 => cfg.ram_base + cfg.ram,
            };
            kernel.pages.reserve_cma(cfg.cma, limit)
        });
        let swiotlb = crate::kernel::dma::swiotlb::boot_plan(&cfg);
        let swiotlb_pool = kernel.swiotlb_init(&swiotlb).map_err(SimError::Config)?;
        let mut boot_data = kernel.pages.age(&mut hw.rng);
        boot_data.sort_unstable();
        let aged = boot_data.len() as u64;
        kernel.boot_data = boot_data;
        // hugetlb_hstate_alloc_pages: the boot pool of 2 MiB pages.
        for _ in 0..cfg.hugepages {
            match kernel.pages.alloc_pages(
                crate::kernel::mm::page_alloc::PAGEBLOCK_ORDER,
                crate::kernel::mm::gfp::GFP_KERNEL,
                &mut hw.rng,
            ) {
                Ok(pfn) => kernel.hugepool.push(pfn),
                Err(_) => break,
            }
        }
        let mut sys = System {
            cfg,
            hw,
            kernel,
            check,
            log: Vec::new(),
            line: 0,
            cpu: 0,
            streams: Vec::new(),
            recorder: None,
            dmaengine: crate::kernel::dmaengine::DmaEngine::default(),
            rings: crate::ring::Rings::default(),
            jobs: BTreeMap::new(),
            paths: crate::outstanding::SharedPaths::default(),
            queue: BTreeSet::new(),
            next_job: 1,
            max_sim_ps: opts.max_sim_time_ns.min(MAX_SIM_TIME_NS) * 1000,
            log_dropped: 0,
            limit_hit: None,
        };
        sys.printk(
            "",
            "Booting Linux on physical CPU 0x0000000000 [dmasim]".into(),
        );
        sys.printk("", format!("Machine model: {}", sys.cfg.description));
        let (ram, base) = (sys.cfg.ram, sys.cfg.ram_base);
        sys.printk(
            "",
            format!(
                "Memory: {} at {:#x}-{:#x}, {} CPUs, L1D {} / L2 {}",
                human_size(ram),
                base,
                base + ram - 1,
                sys.cfg.cpus,
                human_size(sys.cfg.l1.size),
                human_size(sys.cfg.l2.size)
            ),
        );
        let coherent = if sys.cfg.coherent_default {
            "coherent (dma-coherent)"
        } else {
            "non-coherent"
        };
        sys.printk("", format!("DMA: devices are {coherent} by default"));
        if sys.cfg.hugepages > 0 {
            let got = sys.kernel.hugepool.len();
            sys.printk(
                "HugeTLB",
                format!("registered 2.00 MiB page size, pre-allocated {got} pages"),
            );
        }
        match cma {
            Some(Ok((a, b))) => {
                sys.printk("cma", format!("Reserved {} at {a:#x}", human_size(b - a)))
            }
            Some(Err(e)) => sys.printk(
                "cma",
                format!("Failed to reserve {}: {e}", human_size(sys.cfg.cma)),
            ),
            None => {}
        }
        sys.log_swiotlb(&swiotlb, swiotlb_pool);
        sys.iommu_init();
        for z in sys.kernel.pages.zones.iter().filter(|z| z.managed > 0) {
            let line = format!(
                "  {:<7} [mem {:#012x}-{:#012x}] {} managed",
                z.kind.name(),
                z.start_pfn * PAGE_SIZE,
                z.end_pfn * PAGE_SIZE - 1,
                human_size(z.managed * PAGE_SIZE)
            );
            sys.log.push(format!("[    0.000000] {line}"));
        }
        sys.printk(
            "",
            format!(
                "Memory: {} in use since boot (kernel data, page cache), scattered over RAM",
                human_size(aged * PAGE_SIZE)
            ),
        );
        if !sys.cfg.noise.is_off() {
            let n = sys.cfg.noise;
            sys.printk(
                "dmasim",
                format!(
                    "background noise: evict {} prefetch {} per noise point",
                    n.evict, n.prefetch
                ),
            );
        }
        if opts.record {
            sys.start_recording();
            sys.check.events = Some(Vec::new());
        }
        Ok(sys)
    }

    /// `iommu_subsys_init` with the platform's `iommu` setting: the default domain
    /// type and invalidation policy, logged as Linux does.
    fn iommu_init(&mut self) {
        if self.cfg.iommu == "none" {
            return;
        }
        let passthrough = self.cfg.iommu == "passthrough";
        let strict = self
            .cfg
            .iommu_strict
            .unwrap_or(self.cfg.arch != crate::config::Arch::X86_64);
        self.kernel.iommu = Some(crate::kernel::iommu::IommuState {
            strict,
            passthrough,
            ..Default::default()
        });
        let walk = if self.hw.iommu.coherent_walk {
            "coherent"
        } else {
            "non-coherent"
        };
        self.printk(
            "arm-smmu-v3",
            format!(
                "SMMUv3: {} IOTLB entries ({}-way), {walk} table walk, stage-1 4K/2M/1G pages",
                self.cfg.iotlb_entries, self.cfg.iotlb_ways
            ),
        );
        self.printk(
            "iommu",
            format!(
                "Default domain type: {}",
                if passthrough {
                    "Passthrough"
                } else {
                    "Translated"
                }
            ),
        );
        if !passthrough {
            self.printk(
                "iommu",
                format!(
                    "DMA domain TLB invalidation policy: {} mode",
                    if strict { "strict" } else { "lazy" }
                ),
            );
        }
    }

    /// Context for sanitizer events: now and the current script line.
    pub fn ctx(&self) -> Ctx {
        Ctx {
            time_ns: self.hw.now_ps() / 1000,
            line: self.line,
        }
    }

    /// Appends a dmesg line: `[ seconds.micros] subsystem: message`.
    pub fn printk(&mut self, subsys: &str, msg: String) {
        let prefix = if subsys.is_empty() {
            String::new()
        } else {
            format!("{subsys}: ")
        };
        self.push_log(dmesg_line(self.hw.now_ps(), &format!("{prefix}{msg}")));
    }

    /// `WARN_ONCE` / `dev_WARN_ONCE`: prints `msg` the first time the call site
    /// `site` warns and never again in this run.
    pub fn warn_once(&mut self, site: &'static str, subsys: &str, msg: String) {
        if self.kernel.warned_once.insert(site) {
            self.printk(subsys, msg);
        }
    }

    /// Appends a line to dmesg within the run's caps ([`MAX_LOG_LINES`] lines of at
    /// most [`MAX_LOG_LINE_CHARS`] characters); past them the line is counted.
    pub fn push_log(&mut self, line: String) {
        Self::push_capped(&mut self.log, &mut self.log_dropped, line);
    }

    fn push_capped(log: &mut Vec<String>, dropped: &mut u64, line: String) {
        if log.len() >= MAX_LOG_LINES {
            *dropped += 1;
            return;
        }
        log.push(cap_line(line));
    }

    /// Fails when a simulator limit was hit during the last operation or before.
    pub fn check_limits(&self) -> Result<()> {
        if let Some(e) = &self.limit_hit {
            return Err(e.clone());
        }
        if self.hw.now_ps() > self.max_sim_ps {
            return Err(self.time_limit());
        }
        if self.hw.dram.cap_exceeded() {
            return Err(SimError::MemoryCap {
                cap: human_size(self.hw.dram.cap_frames() * PAGE_SIZE),
            });
        }
        Ok(())
    }

    /// Registers a device and returns its index.
    pub fn add_device(&mut self, mut dev: Device) -> usize {
        // drivers/iommu/dma-iommu.c: iommu_setup_dma_ops sets
        // pci_32bit_workaround = !iommu_dma_forcedac for a PCI device.
        dev.pci_32bit_workaround = dev.pci && !self.cfg.iommu_forcedac;
        let kind = if dev.coherent {
            "coherent"
        } else {
            "non-coherent"
        };
        self.printk(
            &dev.name.clone(),
            format!(
                "DMA master, {kind} port, {}-bit bus, mask {:#x}{}",
                dev.dma_bits,
                dev.dma_mask,
                if dev.untrusted {
                    ", untrusted (external-facing port)"
                } else {
                    ""
                }
            ),
        );
        let behind = dev.iommu;
        let untrusted = dev.untrusted;
        let name = dev.name.clone();
        self.kernel.devices.push(dev);
        let idx = self.kernel.devices.len() - 1;
        if behind && self.kernel.iommu.is_some() {
            self.iommu_probe_device(idx);
        } else if untrusted {
            // Linux says nothing here: pci_dev->untrusted changes only what dma-iommu
            // does. Say what that means, as dmasim, not as the kernel.
            self.printk(
                "dmasim",
                format!("{name} is untrusted but not behind an IOMMU: nothing confines its DMA to its buffers"),
            );
        }
        idx
    }

    /// Runs pending device pieces up to now, then one noise point: what happens
    /// "between" two script operations.
    pub fn step(&mut self) {
        self.run_devices(self.hw.now_ps());
        if self.dmaengine.in_use() {
            // DMA channels chain their next segment or period as the clock passes
            // (their callbacks wait for the script's next time-passing call). A
            // controller removed under a running channel just stops it.
            let now = self.hw.now_ps();
            if self.dmaengine_complete_until(now).is_err() {
                self.dmaengine_stop_all();
            }
        }
        self.hw.noise_point(self.cpu);
        if self.cfg.noise.migrate > 0.0 {
            self.noise_migrate();
        }
        Self::drain_writebacks(&mut self.hw, &mut self.check, self.line);
    }

    /// Hands the write-backs the machine did so far to the sanitizer at once.
    pub fn drain_writebacks_now(&mut self) {
        Self::drain_writebacks(&mut self.hw, &mut self.check, self.line);
    }

    /// Tells the oracle where dirty lines were written back into watched frames.
    fn drain_writebacks(hw: &mut Machine, check: &mut Sanitizer, script_line: u32) {
        if !hw.watched_prefetches.is_empty() {
            let pf: Vec<(u64, u64)> = hw.watched_prefetches.drain(..).collect();
            for (pa, lines) in pf {
                check.prefetched(hw, pa, lines, script_line);
            }
        }
        // Streamed stores changed DRAM under watched buffers: the CPU's own stores,
        // already checked as such, so only the oracle needs to know.
        for pa in std::mem::take(&mut hw.caches.watched_streamed) {
            check.oracle.mark_may_differ(pa, hw.line());
        }
        if hw.caches.watched_writebacks.is_empty() {
            return;
        }
        let line = hw.line();
        let pas: Vec<u64> = hw.caches.watched_writebacks.drain(..).collect();
        for pa in pas {
            check.oracle.mark_may_differ(pa, line);
            check.writeback(hw, pa, script_line);
        }
    }

    // ---- CPU accesses -------------------------------------------------------------

    /// A CPU load by virtual address (through the MMU and the caches).
    ///
    /// # Errors
    /// [`SimError::PagingRequest`] for an unmapped address; [`SimError::Invalid`] for a
    /// length over [`MAX_ACCESS`].
    pub fn cpu_read_va(&mut self, va: u64, len: u64) -> Result<Vec<u8>> {
        self.cpu_read_as(0, va, len)
    }

    /// A CPU load in address space `asid` (0 is the kernel's).
    ///
    /// # Errors
    /// As [`System::cpu_read_va`].
    pub fn cpu_read_as(&mut self, asid: usize, va: u64, len: u64) -> Result<Vec<u8>> {
        if len > MAX_ACCESS {
            return Err(SimError::Invalid(format!(
                "a single CPU access is limited to {}",
                human_size(MAX_ACCESS)
            )));
        }
        self.step();
        self.load_as(asid, va, len)
    }

    /// The load of [`System::cpu_read_as`] without its scheduling point: a kernel
    /// function's own access in the middle of one call (`dma_pool_alloc` reading its
    /// free list).
    pub(crate) fn load_as(&mut self, asid: usize, va: u64, len: u64) -> Result<Vec<u8>> {
        let segs = self
            .hw
            .mmu
            .segments(asid, va, len)
            .map_err(SimError::PagingRequest)?;
        let mut out = vec![0u8; len as usize];
        let mut done = 0usize;
        for s in segs {
            let n = s.len as usize;
            let before = self.hw.stats.uncached_ps;
            self.hw
                .cpu_read_phys(self.cpu, s.pa, s.memtype, &mut out[done..done + n]);
            let unc = self.hw.stats.uncached_ps - before;
            let ctx = self.ctx();
            self.check
                .cpu_read(&self.hw, ctx, s.pa, &out[done..done + n], unc);
            done += n;
        }
        Ok(out)
    }

    /// A CPU store by virtual address.
    ///
    /// # Errors
    /// As [`System::cpu_read_va`], plus the memory cap.
    pub fn cpu_write_va(&mut self, va: u64, data: &[u8]) -> Result<()> {
        self.cpu_write_as(0, va, data)
    }

    /// A CPU store in address space `asid` (0 is the kernel's).
    ///
    /// # Errors
    /// As [`System::cpu_write_va`].
    pub fn cpu_write_as(&mut self, asid: usize, va: u64, data: &[u8]) -> Result<()> {
        if data.len() as u64 > MAX_ACCESS {
            return Err(SimError::Invalid(format!(
                "a single CPU access is limited to {}",
                human_size(MAX_ACCESS)
            )));
        }
        self.step();
        self.store_as(asid, va, data)
    }

    /// The store of [`System::cpu_write_as`] without its scheduling point (see
    /// [`System::load_as`]).
    pub(crate) fn store_as(&mut self, asid: usize, va: u64, data: &[u8]) -> Result<()> {
        self.store_pieces(asid, va, data.len() as u64, |done, n| &data[done..done + n])
    }

    /// A CPU `memset` of `len` bytes to `byte` at kernel virtual address `va`: the
    /// same stores as [`System::cpu_write_va`] of `len` copies of `byte`, without
    /// building a buffer of that size on the host (each page's store reads one
    /// reused page-sized piece).
    ///
    /// # Errors
    /// As [`System::cpu_write_va`].
    pub fn cpu_fill_va(&mut self, va: u64, len: u64, byte: u8) -> Result<()> {
        if len > MAX_ACCESS {
            return Err(SimError::Invalid(format!(
                "a single CPU access is limited to {}",
                human_size(MAX_ACCESS)
            )));
        }
        self.step();
        let piece = [byte; PAGE_SIZE as usize];
        self.store_pieces(0, va, len, |_, n| &piece[..n])
    }

    /// Stores `len` bytes at `va` one page segment at a time; `src(done, n)` gives
    /// the `n` bytes that go at offset `done` (segments never exceed a page).
    fn store_pieces<'d>(
        &mut self,
        asid: usize,
        va: u64,
        len: u64,
        src: impl Fn(usize, usize) -> &'d [u8],
    ) -> Result<()> {
        let segs = self
            .hw
            .mmu
            .segments(asid, va, len)
            .map_err(SimError::PagingRequest)?;
        let mut done = 0usize;
        for s in segs {
            let n = s.len as usize;
            let piece = src(done, n);
            self.ring_note_store(s.pa, s.len);
            self.hw.cpu_write_phys(self.cpu, s.pa, s.memtype, piece);
            let ctx = self.ctx();
            self.check.cpu_write(&self.hw, ctx, s.pa, piece);
            done += n;
        }
        self.check_limits()
    }

    /// Speculative fill of the cacheable lines of `[va, va+len)`.
    ///
    /// # Errors
    /// [`SimError::PagingRequest`] for an unmapped address.
    pub fn prefetch_va(&mut self, va: u64, len: u64) -> Result<()> {
        self.step();
        let segs = self
            .hw
            .mmu
            .segments(0, va, len.min(MAX_ACCESS))
            .map_err(SimError::PagingRequest)?;
        for s in segs.iter().filter(|s| s.memtype == MemType::Normal) {
            self.hw.prefetch_phys(self.cpu, s.pa, s.len);
        }
        self.drain_writebacks_now();
        Ok(())
    }

    // ---- Devices doing DMA --------------------------------------------------------

    /// Starts a device transfer at bus address `addr`: a read of `len` bytes from
    /// memory (`data` = None) or a write of `data`. Returns the job id.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or removed device or an oversized transfer.
    pub fn dev_start(
        &mut self,
        dev: usize,
        addr: u64,
        len: u64,
        data: Option<Vec<u8>>,
    ) -> Result<u64> {
        check_transfer_len(len)?;
        self.step();
        let now = self.hw.now_ps();
        self.dev_start_at(dev, addr, len, data, now)
    }

    /// Starts a device transfer as [`System::dev_start`] does, at `start_ps` (not
    /// before the last piece the machine ran): a DMA controller chaining the next
    /// segment at the moment the last one ended.
    ///
    /// # Errors
    /// As [`System::dev_start`].
    pub(crate) fn dev_start_at(
        &mut self,
        dev: usize,
        addr: u64,
        len: u64,
        data: Option<Vec<u8>>,
        start_ps: u64,
    ) -> Result<u64> {
        self.start_job(dev, addr, len, data, start_ps)
            .map_err(|(e, _)| e)
    }

    /// [`System::dev_start_at`], giving the payload back when the job cannot start.
    fn start_job(
        &mut self,
        dev: usize,
        addr: u64,
        len: u64,
        data: Option<Vec<u8>>,
        start_ps: u64,
    ) -> std::result::Result<u64, (SimError, Option<Vec<u8>>)> {
        let Some(d) = self.kernel.devices.get(dev) else {
            return Err((SimError::Invalid(format!("no device #{dev}")), data));
        };
        if !d.bound {
            let e = SimError::Invalid(format!("device {} was removed", d.name));
            return Err((e, data));
        }
        if self.jobs.len() >= MAX_JOBS_IN_FLIGHT {
            let e = SimError::Invalid(format!(
                "more than {MAX_JOBS_IN_FLIGHT} DMA transfers in flight: wait() for them"
            ));
            return Err((e, data));
        }
        let ps_per_kib = 1024 * 1_000_000 / d.bandwidth.max(1);
        let latency_ps = d.latency_ns * 1000;
        let job = Job {
            dev,
            write: data.is_some(),
            bus: addr,
            len,
            data: data.unwrap_or_else(|| Vec::with_capacity(len as usize)),
            done: 0,
            start_ps,
            ps_per_kib,
            latency_ps,
            bus_error: false,
            line: self.line,
        };
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(id, job);
        if let Some(t) = self.book_next_piece(id) {
            self.queue.insert((t, id));
        }
        Ok(id)
    }

    /// Books the device's link for job `id`'s next piece (outstanding.rs: the
    /// device's jobs take turns on it) and returns when that piece ends, or `None`
    /// when the job has moved all its bytes. A job alone on its device finds the
    /// link free the moment its previous piece ends, and keeps its own times.
    fn book_next_piece(&mut self, id: u64) -> Option<u64> {
        let j = self.jobs.get_mut(&id)?;
        if j.done >= j.len {
            return None;
        }
        let from = j.time_at(j.done);
        let to = j.time_at(j.done + j.piece_len());
        let wait = self.paths.book_link(j.dev, from, to - from);
        j.start_ps = j.start_ps.saturating_add(wait);
        Some(to.saturating_add(wait))
    }

    /// Device `dev`'s requests wait `ps` from `t_ps` for a table walk of job `id`
    /// (in-order translation, outstanding.rs): that job and every other one of the
    /// device with bytes still to move move back by `ps`. Their queued pieces keep
    /// their old, earlier keys; [`System::run_devices`] re-queues a piece whose job
    /// moved when it comes up.
    fn hold_device(&mut self, dev: usize, id: u64, t_ps: u64, ps: u64) {
        self.paths.hold_link(dev, t_ps, ps);
        for (&k, j) in &mut self.jobs {
            if k == id || (j.dev == dev && j.done < j.len) {
                j.start_ps = j.start_ps.saturating_add(ps);
            }
        }
    }

    /// When a job's last byte moves (ps), if it exists.
    pub(crate) fn job_end_ps(&self, job: u64) -> Option<u64> {
        self.jobs.get(&job).map(Job::end_ps)
    }

    /// Bytes a job has moved so far.
    pub(crate) fn job_done_bytes(&self, job: u64) -> u64 {
        self.jobs.get(&job).map_or(0, |j| j.done)
    }

    /// Removes a finished job: the bytes a read got (`None` for a write or a bus
    /// error).
    pub(crate) fn job_finish(&mut self, job: u64) -> Option<Vec<u8>> {
        let j = self.jobs.remove(&job)?;
        self.queue.retain(|&(_, id)| id != job);
        (!j.write && !j.bus_error).then_some(j.data)
    }

    /// Stops a job where it is (the pieces already moved stay moved).
    pub(crate) fn job_abort(&mut self, job: u64) {
        if let Some(j) = self.jobs.remove(&job) {
            // The piece it had booked will not use the link.
            if let Some(end) = j.next_time() {
                self.paths.unbook_link(j.dev, j.time_at(j.done), end);
            }
        }
        self.queue.retain(|&(_, id)| id != job);
    }

    /// Waits for a job: the CPU idles until it completes. Returns the bytes a read
    /// got, `None` for a write or a transfer that ended in a bus error.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown job.
    pub fn wait(&mut self, job: u64) -> Result<Option<Vec<u8>>> {
        let j = self.wait_job(job).map_err(|(e, _)| e)?;
        Ok((!j.write && !j.bus_error).then_some(j.data))
    }

    /// A device writes `data` at bus address `addr` and the CPU waits for it, as
    /// [`System::dev_start`] and [`System::wait`] do, with the bytes lent to the
    /// transfer instead of copied into it: `data` holds the same bytes again when
    /// this returns, error or not. A write never changes its payload, so the
    /// simulated result is the one of `dev_start(.., Some(data.clone()))` + `wait`
    /// (`system::tests::a_lent_write_matches_a_copied_one`).
    ///
    /// # Errors
    /// As [`System::dev_start`] and [`System::wait`].
    pub fn dev_write_lent(&mut self, dev: usize, addr: u64, data: &mut Vec<u8>) -> Result<()> {
        let len = data.len() as u64;
        check_transfer_len(len)?;
        self.step();
        let now = self.hw.now_ps();
        let job = match self.start_job(dev, addr, len, Some(std::mem::take(data)), now) {
            Ok(job) => job,
            Err((e, back)) => {
                *data = back.unwrap_or_default();
                return Err(e);
            }
        };
        match self.wait_job(job) {
            Ok(j) => {
                *data = j.data;
                Ok(())
            }
            Err((e, Some(j))) => {
                *data = j.data;
                Err(e)
            }
            Err((e, None)) => {
                // The job stays queued (the end of the run still moves its bytes):
                // the caller gets a copy of them back.
                if let Some(j) = self.jobs.get(&job) {
                    data.clone_from(&j.data);
                }
                Err(e)
            }
        }
    }

    /// Waits for a job (as [`System::wait`]) and removes it. On an error, the job
    /// when it was already removed (a limit hit as it ended).
    fn wait_job(&mut self, job: u64) -> std::result::Result<Job, (SimError, Option<Job>)> {
        self.check_limits().map_err(|e| (e, None))?;
        let mut end = self
            .jobs
            .get(&job)
            .ok_or_else(|| {
                let e = SimError::Invalid(format!("no DMA job #{job} (already waited for?)"));
                (e, None)
            })?
            .end_ps();
        loop {
            self.refuse_past_limit(end).map_err(|e| (e, None))?;
            self.idle_until(end);
            // IOTLB misses may have pushed the end back.
            let later = self.jobs[&job].end_ps();
            if later <= end {
                break;
            }
            end = later;
        }
        let j = self.jobs.remove(&job).expect("job checked above");
        match self.check_limits() {
            Ok(()) => Ok(j),
            Err(e) => Err((e, Some(j))),
        }
    }

    /// The IOMMU faults recorded for device `dev`'s stream, oldest first: what
    /// `iommu_faults(dev)` returns. The IOMMU keeps the last
    /// [`MAX_FAULT_RECORDS`](crate::hw::iommu::MAX_FAULT_RECORDS) faults of all
    /// streams, as an event queue of that depth would.
    pub fn iommu_faults(&self, dev: usize) -> Vec<IommuFault> {
        self.hw
            .iommu
            .faults
            .iter()
            .filter(|f| f.stream == dev)
            .map(|f| IommuFault {
                addr: f.iova,
                kind: f.kind,
                write: f.write,
            })
            .collect()
    }

    /// Lets `ns` of simulated time pass with background activity.
    ///
    /// # Errors
    /// [`SimError::SimTimeLimit`] when the wait would pass the run's time bound (the
    /// clock does not move then).
    pub fn run_for(&mut self, ns: u64) -> Result<()> {
        self.check_limits()?;
        let end = self.hw.now_ps().saturating_add(ns.saturating_mul(1000));
        self.refuse_past_limit(end)?;
        self.idle_until(end);
        self.check_limits()
    }

    /// The error of a run that would pass its simulated-time bound.
    fn time_limit(&self) -> SimError {
        SimError::SimTimeLimit {
            limit: crate::units::human_duration_ns(self.max_sim_ps / 1000),
        }
    }

    /// Refuses (and remembers, so that every later call fails too) a wait that
    /// would take the clock past the run's bound.
    pub(crate) fn refuse_past_limit(&mut self, end_ps: u64) -> Result<()> {
        if end_ps > self.max_sim_ps {
            let e = self.time_limit();
            self.limit_hit = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Lets time pass until `end_ps` with background activity and device pieces.
    pub(crate) fn idle_until(&mut self, end_ps: u64) {
        let now = self.hw.now_ps();
        let span = end_ps.saturating_sub(now);
        let points = (span / 1_000_000).clamp(1, MAX_NOISE_POINTS_PER_WAIT);
        for k in 1..=points {
            let t = now + span / points * k;
            self.run_devices(t);
            self.hw.advance_to(t);
            self.hw.noise_point(self.cpu);
        }
        self.run_devices(end_ps);
        self.hw.advance_to(end_ps);
    }

    /// Runs every pending device piece whose time is ≤ `t_ps`, in time order.
    pub fn run_devices(&mut self, t_ps: u64) {
        while let Some(&(t, id)) = self.queue.first() {
            if t > t_ps {
                break;
            }
            self.queue.pop_first();
            // A table walk held the job up after its piece was queued: the piece
            // runs at its new time.
            match self.jobs.get(&id).and_then(Job::next_time) {
                Some(moved) if moved > t => {
                    self.queue.insert((moved, id));
                    continue;
                }
                None => continue,
                Some(_) => {}
            }
            // Run this job's pieces for as long as it stays first in line, without
            // a queue round trip per piece.
            loop {
                self.device_piece(id);
                let Some(next) = self.book_next_piece(id) else {
                    break;
                };
                let first = self.queue.first().copied();
                if next <= t_ps && first.is_none_or(|f| (next, id) < f) {
                    continue;
                }
                self.queue.insert((next, id));
                break;
            }
        }
    }

    fn device_piece(&mut self, id: u64) {
        let (devi, write, bus, n, t) = {
            let j = &self.jobs[&id];
            let n = j.piece_len();
            (
                j.dev,
                j.write,
                j.bus.wrapping_add(j.done),
                n,
                j.time_at(j.done + n),
            )
        };
        // Through the IOMMU when the device sits behind one: a translation (which
        // may walk the tables and delays the rest of the transfer) or a fault.
        let lines = self.kernel.devices[devi].bus_lines(bus);
        let (pa, fault, translated) = if self.dev_domain(devi).is_some() {
            self.iommu_timers(t);
            match self.hw.iommu_translate(devi, lines, write) {
                Ok(tr) => {
                    if tr.walked {
                        // An IOTLB miss: the shared walker (queueing behind other
                        // devices' walks), and the device's requests behind it wait.
                        let ps = self.paths.walk(t, tr.cost_ps);
                        self.hold_device(devi, id, t, ps);
                    } else if let Some(j) = self.jobs.get_mut(&id) {
                        j.start_ps += tr.cost_ps;
                    }
                    (tr.pa, None, self.use_dma_iommu(devi))
                }
                Err(k) => (0, Some(k), true),
            }
        } else {
            (self.kernel.devices[devi].dma_to_phys(lines), None, false)
        };
        let noiommu = self.noiommu_owner(devi).map(|owner| {
            let frame = self
                .kernel
                .user_pages
                .get(pa >> crate::config::PAGE_SHIFT)
                .map(|pg| pg.owner.pid);
            (owner, frame)
        });
        // A VFIO container's mappings are recorded under its first device; every
        // device of the group reaches them.
        let sdev = self.vfio_lead(devi).unwrap_or(devi);
        let j = self.jobs.get_mut(&id).expect("pending job");
        let line = j.line;
        let dev = &self.kernel.devices[devi];
        let off = j.done as usize;
        Self::drain_writebacks(&mut self.hw, &mut self.check, line);
        let ok = if fault.is_some() {
            if !write {
                j.data.resize(j.data.len() + n as usize, 0);
            }
            false
        } else if write {
            self.hw
                .port_write(dev.coherent, pa, &j.data[off..off + n as usize])
                .is_ok()
        } else {
            // Pieces run in order, so a read's bytes are appended.
            self.hw
                .port_read_append(dev.coherent, pa, n as usize, &mut j.data)
                .is_ok()
        };
        let piece = &j.data[off..off + n as usize];
        let cover = self.check.covering(sdev, bus, n);
        // Only an access no mapping covers needs to know whose memory it reached.
        let (user, va_of) = if cover.is_some() {
            (None, None)
        } else {
            Self::uncovered_context(&self.kernel, bus, pa, ok)
        };
        let ctx = Ctx {
            time_ns: t / 1000,
            line,
        };
        // A whole watched page written to DRAM: the oracle shares the frame.
        let whole_page = n == PAGE_SIZE && pa & (PAGE_SIZE - 1) == 0;
        let frame = if ok && write && whole_page && self.hw.dram.is_watched(pa) {
            self.hw.dram.shared_frame(pa)
        } else {
            None
        };
        self.check.device_access(
            ctx,
            DeviceAccess {
                dev: sdev,
                dev_name: &dev.name,
                bus,
                pa: ok.then_some(pa),
                data: piece,
                write,
                va_of,
                dma_bits: dev.dma_bits,
                user,
                translated,
                fault,
                noiommu,
                frame,
                cover: Some(cover),
            },
        );
        if let Some(f) = self.check.oracle.take_released() {
            self.hw.dram.recycle(f);
        }
        if fault.is_some() || !ok {
            Self::log_piece_error(
                &mut self.log,
                &mut self.log_dropped,
                &dev.name,
                fault,
                write,
                t,
                bus,
                lines,
                pa,
            );
        }
        j.bus_error |= !ok;
        j.done += n;
        if j.bus_error {
            // The engine stops at the first error.
            j.done = j.len;
        }
        if j.done >= j.len && self.recorder.is_some() {
            let (start, end, len, bus) = (j.start_ps, j.time_at(j.len), j.len, j.bus);
            let what = if write { "write" } else { "read" };
            let name = dev.name.clone();
            let failed = if fault.is_some() || !ok {
                " (stopped)"
            } else {
                ""
            };
            self.record(
                &name,
                || format!("{what} {len} bytes at {bus:#x}{failed}"),
                "dma",
                start,
                end.saturating_sub(start),
            );
        }
        if let Some(k) = fault {
            if self.recorder.is_some() {
                let name = self.kernel.devices[devi].name.clone();
                self.record(
                    &name,
                    || format!("IOMMU fault ({k:?}) at {bus:#x}"),
                    "fault",
                    t,
                    0,
                );
            }
        }
    }

    /// The kernel log line of a piece that did not reach memory: the SMMU's event
    /// record for a fault, or else a bus error. Out of line: pieces rarely fail.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn log_piece_error(
        log: &mut Vec<String>,
        dropped: &mut u64,
        dev_name: &str,
        fault: Option<crate::hw::iommu::FaultKind>,
        write: bool,
        t: u64,
        bus: u64,
        lines: u64,
        pa: u64,
    ) {
        let text = match fault {
            Some(k) => {
                // SMMUv3 event record types (Arm IHI 0070, "Event records").
                let (code, name) = match k {
                    crate::hw::iommu::FaultKind::Translation => (0x10, "F_TRANSLATION"),
                    crate::hw::iommu::FaultKind::AddressSize => (0x11, "F_ADDR_SIZE"),
                    crate::hw::iommu::FaultKind::Permission => (0x13, "F_PERMISSION"),
                    crate::hw::iommu::FaultKind::Blocked => (0x04, "C_BAD_STE"),
                };
                let verb = if write { "write" } else { "read" };
                // What reached the SMMU: the bits the device drives (`lines`).
                format!("arm-smmu-v3: event {code:#04x} received ({name}): {dev_name} {verb} at IOVA {lines:#x}")
            }
            None => format!("{dev_name}: DMA bus error at {bus:#x} (physical {pa:#x} is not RAM)"),
        };
        Self::push_capped(log, dropped, dmesg_line(t, &text));
    }

    /// What a device access no live mapping covers reached: the user page at (or
    /// formerly at) frame `pa` (`ok`: it reached memory), and the live buffer whose
    /// CPU virtual address `bus` is. Out of line: the common piece is covered.
    #[cold]
    #[inline(never)]
    fn uncovered_context(
        kernel: &Kernel,
        bus: u64,
        pa: u64,
        ok: bool,
    ) -> (Option<UserHit>, Option<(String, u64)>) {
        let user = if !ok {
            None
        } else {
            let pfn = pa >> crate::config::PAGE_SHIFT;
            let name_of = |pid: u32| {
                kernel
                    .procs
                    .iter()
                    .find(|p| p.pid == pid)
                    .map_or(format!("pid {pid}"), |p| format!("{} (pid {pid})", p.name))
            };
            match (
                kernel.user_pages.get(pfn),
                kernel.user_pages.tombstones.get(&pfn),
            ) {
                (Some(pg), _) if pg.maybe_dma_pinned() => Some(UserHit::Pinned),
                (Some(pg), None) => Some(UserHit::Unpinned(format!(
                    "the user page at {:#x} of {}",
                    pg.owner.va,
                    name_of(pg.owner.pid)
                ))),
                (_, Some(t)) => {
                    let why = match t.why {
                        Vacated::Migrated { to_pfn } => {
                            format!("was migrated to frame {to_pfn:#x}")
                        }
                        Vacated::Unmapped => "was unmapped".to_string(),
                        Vacated::Swapped => "was swapped out".to_string(),
                    };
                    Some(UserHit::Gone(
                        format!(
                            "the user page at {:#x} of {} used to be; it {why} at {} ns",
                            t.owner.va,
                            name_of(t.owner.pid),
                            t.time_ns
                        ),
                        t.time_ns,
                        format!(
                            "the user page at {:#x} of {} {why}, leaving frame {pfn:#x}",
                            t.owner.va,
                            name_of(t.owner.pid)
                        ),
                    ))
                }
                _ => None,
            }
        };
        let va_of = kernel.buffer_at_va(bus).map(|b| {
            (
                format!(
                    "{} buffer #{} (allocated at line {})",
                    b.kind.name(),
                    b.id,
                    b.alloc.line
                ),
                b.phys + (bus - b.va),
            )
        });
        (user, va_of)
    }

    /// End of run: waits for transfers still in flight, then reports leaks and
    /// heavy uncached use.
    pub fn finish(&mut self) {
        // IOTLB misses may push transfers back while they run: wait until none is left.
        loop {
            let last = self.jobs.values().map(Job::end_ps).max().unwrap_or(0);
            if last <= self.hw.now_ps() {
                break;
            }
            self.idle_until(last);
        }
        self.report_bounce_buffering();
        self.vfio_release_all();
        let ctx = self.ctx();
        self.check.uncached_use(ctx);
        self.check
            .leaks(&mut self.hw, ctx, None, "at the end of the run");
        if self.check.suppressed > 0 {
            let n = self.check.suppressed;
            self.printk(
                "dmasim",
                format!(
                    "{n} more findings were not kept (at most {} per run)",
                    crate::check::MAX_FINDINGS
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::dma::DmaDirection;

    /// Boots the noisy default machine and allocates a watched 16 KiB buffer (a
    /// mapping makes the oracle hold its pages, so the sanitizer sees the stores).
    fn machine_with_buffer() -> (System, u64) {
        let p = PlatformConfig::preset("arm64-noncoherent").expect("preset");
        let mut sys = System::boot(p, RunOptions::default()).expect("boot");
        let id = sys
            .kmalloc(16 << 10, crate::kernel::mm::gfp::GFP_KERNEL)
            .expect("kmalloc")
            .expect("memory");
        let va = sys.kernel.buffers[&id].va;
        (sys, va)
    }

    #[test]
    fn cpu_fill_stores_exactly_what_a_written_buffer_would() {
        // `cpu_fill` stores from a reused page-sized piece instead of a buffer of
        // the whole size: the simulated result (bytes, cache counters, time, the
        // random stream's position) must be the same as writing `len` copies.
        let (mut a, va) = machine_with_buffer();
        let (mut b, vb) = machine_with_buffer();
        assert_eq!(va, vb);
        let (off, len) = (100u64, 9000usize);
        a.cpu_fill_va(va + off, len as u64, 0x5a).expect("fill");
        b.cpu_write_va(vb + off, &vec![0x5a; len]).expect("write");
        assert_eq!(a.hw.caches.stats, b.hw.caches.stats);
        assert_eq!(a.hw.stats, b.hw.stats);
        assert_eq!(a.hw.now_ps(), b.hw.now_ps());
        let ga = a.cpu_read_va(va, 16 << 10).expect("read");
        let gb = b.cpu_read_va(vb, 16 << 10).expect("read");
        assert_eq!(ga, gb);
        assert!(ga[off as usize..off as usize + len]
            .iter()
            .all(|&x| x == 0x5a));
        assert_eq!(a.hw.caches.stats, b.hw.caches.stats);
    }

    #[test]
    fn cpu_fill_refuses_what_cpu_write_refuses() {
        let (mut sys, va) = machine_with_buffer();
        assert!(matches!(
            sys.cpu_fill_va(va, MAX_ACCESS + 1, 0),
            Err(SimError::Invalid(_))
        ));
        assert!(matches!(
            sys.cpu_fill_va(0x10, 64, 0),
            Err(SimError::PagingRequest(_))
        ));
    }

    /// A device, a `DMA_TO_DEVICE` streaming mapping of a kmalloc buffer and a
    /// `dma_alloc_coherent` buffer on the noisy default machine: a device write into
    /// the first is a finding (dir-violation), into the second a plain write.
    fn machine_with_device() -> (System, usize, u64, u64) {
        let (mut sys, va) = machine_with_buffer();
        let dev = sys.add_device(Device::new("w", false, 1_000_000, 0));
        let streaming = sys
            .dma_map_single(dev, va, 16 << 10, DmaDirection::ToDevice)
            .expect("map");
        let coherent = sys
            .dma_alloc_coherent(dev, 64 << 10)
            .expect("alloc")
            .and_then(|id| sys.kernel.buffers[&id].dma)
            .expect("memory");
        (sys, dev, streaming, coherent)
    }

    #[test]
    fn a_lent_write_matches_a_copied_one() {
        // `data.dev_write(dev, addr)` lends the blob to the transfer instead of
        // copying it (`dev_write_lent`); the simulated result must be the one of the
        // copying form: memory, counters, time, findings, the random stream.
        let (mut a, dev, streaming, coherent) = machine_with_device();
        let (mut b, ..) = machine_with_device();
        let payload: Vec<u8> = (0..(40u32 << 10)).map(|i| (i * 7 + 3) as u8).collect();
        for (addr, len) in [(coherent + 100, 40 << 10), (streaming + 8, 5000)] {
            let mut lent = payload[..len].to_vec();
            a.dev_write_lent(dev, addr, &mut lent).expect("lent write");
            assert_eq!(lent, payload[..len], "the blob is given back unchanged");
            let j = b
                .dev_start(dev, addr, len as u64, Some(payload[..len].to_vec()))
                .expect("start");
            assert_eq!(b.wait(j).expect("wait"), None);
        }
        assert_eq!(a.hw.now_ps(), b.hw.now_ps());
        assert_eq!(a.hw.stats, b.hw.stats);
        assert_eq!(a.hw.caches.stats, b.hw.caches.stats);
        assert_eq!(a.check.findings(), b.check.findings());
        assert!(
            a.check.findings().iter().any(|f| f.id == "dir-violation"),
            "the write into the TO_DEVICE mapping is seen: {:?}",
            a.check.findings()
        );
        for addr in [coherent, streaming] {
            let pa = a.kernel.devices[dev].dma_to_phys(addr);
            let (mut ga, mut gb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
            a.hw.peek(pa, &mut ga[..16 << 10]);
            b.hw.peek(pa, &mut gb[..16 << 10]);
            assert_eq!(ga, gb);
        }
        let pa = a.kernel.devices[dev].dma_to_phys(coherent + 100);
        let mut got = vec![0u8; 40 << 10];
        a.hw.peek(pa, &mut got);
        assert_eq!(got, payload, "the device's bytes reached memory");
        assert_eq!(a.hw.rng.next_u64(), b.hw.rng.next_u64());
    }

    #[test]
    fn a_lent_write_that_cannot_start_gives_the_blob_back() {
        let (mut sys, dev, _, coherent) = machine_with_device();
        let mut data = vec![9u8; 4096];
        assert!(matches!(
            sys.dev_write_lent(dev + 7, coherent, &mut data),
            Err(SimError::Invalid(_))
        ));
        assert_eq!(data, vec![9u8; 4096]);
        sys.remove_device(dev).expect("remove");
        assert!(matches!(
            sys.dev_write_lent(dev, coherent, &mut data),
            Err(SimError::Invalid(_))
        ));
        assert_eq!(data, vec![9u8; 4096]);
    }
}
