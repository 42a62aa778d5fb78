//! `dmasim replay`: real kernels' DMA API calls, read from an ftrace capture of the
//! `dma:` events ([`parse`]), replayed in timestamp order through the model's own
//! kernel paths (`dma_map_page_attrs`, `dma_map_sg`, `dma_alloc_coherent`, the syncs,
//! the unmaps and frees), on any platform the model knows. Between a map and its
//! unmap (or a `sync_for_cpu`) the device is assumed to access the whole buffer in
//! the call's direction, so the sanitizer and its dma-debug checks judge the real
//! sequence; the report says what the sequence costs on the chosen platform
//! (bounces, swiotlb slots, IOVA, IOTLB, time) and how many of the addresses the
//! model chose equal the ones the real kernel returned (`docs/replay.md`).
//!
//! Buffers: the trace gives physical addresses of a machine the model does not
//! have; [`Placement`] puts the trace's RAM into the model's (at the same offset
//! from the start of RAM, or at its top). Coherent allocations are the model's own.

pub mod capture;
pub mod html;
pub mod parse;
pub mod timeline;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::check::{MapKind, Severity};
use crate::config::PAGE_SIZE;
use crate::kernel::device::Device;
use crate::kernel::dma::{dma_bit_mask, DmaDirection, DMA_ATTR_SKIP_CPU_SYNC, DMA_MAPPING_ERROR};
use crate::report::Stats;
use crate::script::ScriptOptions;
use crate::system::System;
pub use capture::{capture_pool, CapturePool};
use parse::{AllocKind, Event, EventKind, Trace};
use timeline::{SpanId, SpanKind, Timeline};

/// Schema of the JSON report.
pub const SCHEMA: &str = "dmasim.replay/v1";
/// Differences listed in the report at most.
const MAX_DIFFS: usize = 20;
/// `swiotlb_bounced` events kept per device between maps at most (an sg list's
/// entries, `SG_MAX_SEGMENTS`-sized chains included).
const MAX_SG_BOUNCES: usize = 8192;
/// A lazy IOMMU's flush-queue timer (armed 10 ms ahead, `IOVA_DEFAULT_FQ_TIMEOUT`;
/// 8 to 12 ms at HZ=250, up to 15 ms seen under QEMU TCG) surely fired once it is
/// this much past due: the replay flushes then, when the trace has not shown the
/// flush earlier by handing out a queued IOVA again.
const FQ_SURELY_FIRED_PS: u64 = 100_000_000_000;
/// Of them, coherent allocations at most.
const MAX_ALLOC_DIFFS: usize = 3;

/// Where the trace's physical memory goes in the model's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Trace physical address `p` is the model's `ram_base + p`: on the capture's own
    /// platform the buffers are where they were.
    Trace,
    /// The trace's RAM ends where the model's RAM ends: every buffer as high as the
    /// platform allows (the case of a big machine whose page allocator hands out
    /// high memory first, the worst case for a device with a small mask).
    High,
}

impl Placement {
    /// `trace` or `high`.
    ///
    /// # Errors
    /// Another word.
    pub fn parse(s: &str) -> Result<Placement, String> {
        match s {
            "trace" => Ok(Placement::Trace),
            "high" => Ok(Placement::High),
            _ => Err(format!("placement {s:?}: expected \"trace\" or \"high\"")),
        }
    }
}

/// What a replay runs on.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The preset (default `x86-64`).
    pub preset: String,
    /// Boot options over it (`--set`), as scripts' `boot()` takes them.
    pub set: Vec<(String, String)>,
    /// Per-device options (`--device-map NAME=k=v,...`; `*` for every device), in
    /// order: later ones win.
    pub device_map: Vec<(String, String)>,
    /// Where buffers go.
    pub placement: Placement,
    /// Seed of the model's random stream.
    pub seed: u64,
    /// The captured kernel's swiotlb pool ([`capture_pool`]): with `placement
    /// trace` and a model pool of the same size, the model's pool starts there.
    pub capture_pool: Option<CapturePool>,
    /// Collect the [`Timeline`] for `--html`.
    pub timeline: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            preset: "x86-64".into(),
            set: Vec::new(),
            device_map: Vec::new(),
            placement: Placement::Trace,
            seed: 0,
            capture_pool: None,
            timeline: false,
        }
    }
}

/// One device as the replay set it up.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    /// The trace's name.
    pub name: String,
    /// Streaming mask bits.
    pub mask_bits: u32,
    /// Cache-coherent port.
    pub coherent: bool,
    /// Behind a translating IOMMU domain (dma-iommu).
    pub iommu: bool,
    /// A PCI device behind the IOMMU gets 32-bit IOVAs first (dma-iommu's
    /// `pci_32bit_workaround`).
    pub pci_32bit_iova: bool,
    /// Streaming maps replayed (single + sg).
    pub maps: u64,
    /// Of them, bounced through swiotlb in the model.
    pub bounced_maps: u64,
    /// Bytes copied to or from bounce slots in the model.
    pub bounced_bytes: u64,
    /// Of them, because the buffer was beyond the mask or bus limit.
    pub bounced_beyond_limit: u64,
    /// Of them, because a small buffer of a non-coherent device was not cache-line
    /// aligned (`dma_kmalloc_needs_bounce`).
    pub bounced_kmalloc_unaligned: u64,
    /// Of them, because of `swiotlb=force`.
    pub bounced_forced: u64,
    /// Maps that failed because the pool was full or a mapping too large for it.
    pub swiotlb_full: u64,
    /// Bounces the trace itself shows (`swiotlb:swiotlb_bounced`).
    pub trace_bounced: u64,
    /// Bytes the device moved in the model.
    pub dma_bytes: u64,
    /// Mappings still live when the trace ends.
    pub live_at_end: u64,
}

/// The model's address beside the real kernel's.
#[derive(Debug, Clone, Serialize)]
pub struct AddressDiff {
    /// Trace line.
    pub line: u32,
    /// Device.
    pub device: String,
    /// The call.
    pub call: String,
    /// What Linux returned.
    pub trace: u64,
    /// What the model returned.
    pub model: u64,
    /// Bytes.
    pub size: u64,
}

/// How the model's addresses compare with the real kernel's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fidelity {
    /// Addresses compared: every single map, every coherent allocation and every DMA
    /// segment of an sg map the trace shows.
    pub compared: u64,
    /// Of them, equal.
    pub equal: u64,
    /// Of the compared addresses, those the trace shows in its swiotlb pool (known
    /// from the capture's `swiotlb_pool.txt` or dmesg): bounced maps' slot addresses.
    pub slots_compared: u64,
    /// Of them, equal.
    pub slots_equal: u64,
    /// sg segments compared (address and length).
    pub sg_segments: u64,
    /// Of them, equal.
    pub sg_segments_equal: u64,
    /// The first differences.
    pub first_differences: Vec<AddressDiff>,
}

/// How close a zone came to running out during the replay (the allocations'
/// pressure: coherent buffers of 32-bit devices come from ZONE_DMA32 or ZONE_DMA).
#[derive(Debug, Clone, Serialize)]
pub struct ZonePressure {
    /// `DMA`, `DMA32`, `Normal`, `HighMem`.
    pub zone: &'static str,
    /// Pages the zone manages.
    pub managed_pages: u64,
    /// Fewest free pages after any allocation of the replay.
    pub free_min_pages: u64,
    /// The zone's min watermark: below it only atomic allocations succeed.
    pub watermark_min_pages: u64,
}

/// Where the model's bounce pool is.
#[derive(Debug, Clone, Serialize)]
pub struct PoolPlacement {
    /// First byte (physical).
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// `capture` (the captured kernel's pool address) or `model` (the model's
    /// `memblock_alloc_low`).
    pub from: &'static str,
    /// Why the capture's address was not used, when a capture pool was known.
    pub note: Option<String>,
}

/// The first call the model could not do although the real kernel did.
#[derive(Debug, Clone, Serialize)]
pub struct FirstFailure {
    /// Trace line.
    pub line: u32,
    /// Device.
    pub device: String,
    /// The call.
    pub call: String,
    /// Bytes.
    pub size: u64,
    /// Why, as far as the model says (`swiotlb-full`, `iova-exhausted`, ...).
    pub why: String,
}

/// Where the simulated time went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimeSplit {
    /// In the DMA API calls: cache maintenance, IOMMU page tables and invalidation,
    /// the calls' own cost (bounce copies excluded).
    pub dma_api_ns: u64,
    /// Bounce copies to and from swiotlb slots.
    pub bounce_copy_ns: u64,
    /// Device transfers.
    pub transfer_ns: u64,
    /// Bytes the devices moved per µs of the three above (MB/s).
    pub throughput_mb_s: f64,
}

/// Counts of what was and was not replayed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Events read.
    pub events: u64,
    /// Events replayed through the model.
    pub replayed: u64,
    /// `dma_map_page`/`dma_map_phys` replayed.
    pub maps: u64,
    /// `dma_map_sg` replayed.
    pub sg_maps: u64,
    /// Allocations replayed.
    pub allocs: u64,
    /// Syncs replayed.
    pub syncs: u64,
    /// Unmaps, frees and syncs of addresses the trace never mapped (the capture
    /// started after the map): counted, not replayed.
    pub unmatched: u64,
    /// Calls the real kernel failed (`DMA_MAPPING_ERROR`, `dma_map_sg_err`): not
    /// replayed.
    pub failed_in_trace: u64,
    /// Calls the model does not replay (`dma_map_resource`, `dma_alloc_sgt`).
    pub not_modelled: u64,
    /// Buffers outside the model's RAM after placement: not replayed.
    pub unplaced: u64,
    /// Calls the model failed while the real kernel succeeded.
    pub model_failures: u64,
    /// Unmaps and frees of what was not replayed (unplaced, or failed in the
    /// model): skipped.
    pub after_failure: u64,
    /// sg maps whose arrays the kernel truncated at 128 entries (the rest of the
    /// list was filled in with page-sized entries of the model's own pages).
    pub truncated_sg: u64,
    /// Lines of other events, skipped.
    pub skipped_lines: u64,
    /// Lines that could not be read.
    pub bad_lines: u64,
    /// Calls replayed before the interrupt handler's calls traced just ahead of
    /// them (a tracepoint fires after its call's work; see `parse::Nester`).
    pub moved_before_irq: u64,
    /// Lazy-IOMMU flush-queue flushes the trace showed: an IOVA still queued by a
    /// lazy unmap was handed out again, so the kernel had flushed (the model's own
    /// flush-queue timer is off in a replay; a full ring still flushes).
    pub fq_flushes_seen: u64,
}

/// The whole replay report (`dmasim.replay/v1`).
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// `dmasim.replay/v1`.
    pub schema: &'static str,
    /// The trace file.
    pub trace: String,
    /// Preset and `--set` options, as given.
    pub config: String,
    /// Where buffers went.
    pub placement: Placement,
    /// The platform.
    pub platform: crate::report::PlatformSummary,
    /// What was replayed.
    pub counts: Counts,
    /// Per device.
    pub devices: Vec<DeviceSummary>,
    /// Addresses: the model against the real kernel.
    pub fidelity: Fidelity,
    /// swiotlb slots used at most (of `stats.swiotlb.slots_total`).
    pub swiotlb_slots_hiwater: u64,
    /// IOVA pages (4 KiB) allocated at most, all domains, per-CPU caches included.
    pub iova_pages_hiwater: u64,
    /// The model's swiotlb pool, and whether it was placed where the capture's was.
    pub swiotlb_pool: Option<PoolPlacement>,
    /// Per populated zone: the fewest free pages after an allocation (CMA's peak
    /// use is `stats.cma.used_pages`).
    pub zones: Vec<ZonePressure>,
    /// The first call the model failed.
    pub first_failure: Option<FirstFailure>,
    /// Time.
    pub time: TimeSplit,
    /// The model's counters.
    pub stats: Stats,
    /// Findings by severity: errors fail the replay.
    pub errors: u64,
    /// Warnings.
    pub warnings: u64,
    /// The findings.
    pub findings: Vec<crate::check::Finding>,
    /// The first unreadable line (number, why).
    pub first_bad_line: Option<(u32, String)>,
    /// The model's dmesg.
    pub log: Vec<String>,
    /// Mapping lives and occupancy over time, when asked for (`--html`; not in the
    /// JSON).
    #[serde(skip)]
    pub timeline: Option<Timeline>,
}

impl ReplayReport {
    /// 0 clean, 1 with error findings.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.errors > 0)
    }

    /// `N of M` as a percentage (100 when nothing was compared).
    pub fn agreement_percent(&self) -> f64 {
        if self.fidelity.compared == 0 {
            100.0
        } else {
            self.fidelity.equal as f64 * 100.0 / self.fidelity.compared as f64
        }
    }
}

/// A PCI name (`0000:00:1f.2`): domain:bus:device.function in hex.
pub fn is_pci_name(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && n.char_indices()
            .filter(|(i, _)| ![4, 7, 10].contains(i))
            .all(|(_, c)| c.is_ascii_hexdigit())
}

/// Per-device options before the device exists.
#[derive(Debug, Clone)]
struct DevOpts {
    mask_bits: u32,
    coherent: Option<bool>,
    iommu: bool,
    dma_bits: Option<u32>,
    min_align_mask: u64,
    max_segment: Option<u64>,
    untrusted: bool,
    bus_dma_limit: Option<u64>,
    /// `dev_is_pci()`; `None`: from the name.
    pci: Option<bool>,
    /// The MSI doorbell page the device's domain maps first (arm64 GICv3 ITS).
    msi_doorbell: Option<u64>,
}

fn parse_num(v: &str) -> Option<u64> {
    crate::units::parse_size(v).ok().or_else(|| {
        v.strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
    })
}

fn parse_bool(k: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{k}={v}: expected true or false")),
    }
}

impl DevOpts {
    fn apply(&mut self, spec: &str) -> Result<(), String> {
        for kv in spec.split(',').filter(|s| !s.trim().is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("{kv:?}: expected KEY=VALUE"))?;
            let num = || parse_num(v).ok_or_else(|| format!("{k}={v}: expected a number"));
            match k {
                "mask" => {
                    let b = num()?;
                    if !(8..=64).contains(&b) {
                        return Err(format!("mask={v}: expected bits 8..=64"));
                    }
                    self.mask_bits = b as u32;
                }
                "coherent" => self.coherent = Some(parse_bool(k, v)?),
                "iommu" => self.iommu = parse_bool(k, v)?,
                "untrusted" => self.untrusted = parse_bool(k, v)?,
                "pci" | "pci32" => self.pci = Some(parse_bool(k, v)?),
                "msi_doorbell" => self.msi_doorbell = Some(num()? & !(PAGE_SIZE - 1)),
                "dma_bits" => {
                    let b = num()?;
                    if !(8..=64).contains(&b) {
                        return Err(format!("dma_bits={v}: expected 8..=64"));
                    }
                    self.dma_bits = Some(b as u32);
                }
                "min_align_mask" => {
                    let m = num()?;
                    if m >= 1 << 20 || !(m + 1).is_power_of_two() {
                        return Err(format!("min_align_mask={v}: expected 2^n - 1 below 1 MiB"));
                    }
                    self.min_align_mask = m;
                }
                "max_segment" => self.max_segment = Some(num()?.max(PAGE_SIZE)),
                "bus_dma_limit" => self.bus_dma_limit = Some(num()?),
                other => {
                    return Err(format!(
                    "unknown device option {other:?} (mask, coherent, iommu, dma_bits, min_align_mask, max_segment, untrusted, bus_dma_limit, pci, msi_doorbell)"
                ))
                }
            }
        }
        Ok(())
    }
}

/// A live streaming mapping of the trace, by the trace's address.
#[derive(Debug, Clone)]
struct LiveMap {
    model: u64,
    size: u64,
    dir: DmaDirection,
    /// The CPU owns it (after a sync_for_cpu): no device access at the unmap.
    cpu_owns: bool,
    span: SpanId,
    /// `dma_map_resource` (MMIO: no device access, `dma_unmap_resource`).
    resource: bool,
}

/// A live sg mapping.
#[derive(Debug, Clone)]
struct LiveSg {
    table: u64,
    dir: DmaDirection,
    /// Segment addresses the trace gave (for sg syncs).
    trace_first_dma: u64,
    /// Blocks (pfn, order) the model allocated for entries the trace truncated.
    filler: Vec<(u64, u32)>,
    cpu_owns: bool,
    len: u64,
    span: SpanId,
}

/// A live allocation: (model buffer or table id, size, kind, direction, span).
type LiveAlloc = (u64, u64, AllocKind, DmaDirection, SpanId);

struct Replayer<'a> {
    sys: System,
    trace: &'a Trace,
    /// Trace device index → model device index.
    devs: Vec<usize>,
    /// Model physical address = trace physical address + this.
    offset: i64,
    ram_end: u64,
    /// Live single maps by the trace's address; dma-direct gives one address to
    /// two live maps of the same buffer (a page mapped twice), so each is a stack.
    singles: HashMap<(u32, u64), Vec<LiveMap>>,
    /// Per device: trace address → live single (for syncs of a sub-range).
    ranges: Vec<BTreeMap<u64, u64>>,
    sgs: HashMap<(u32, u64), Vec<LiveSg>>,
    sg_by_dma: HashMap<(u32, u64), u64>,
    /// Trace addresses (single maps, sg lists by first entry, allocations) the
    /// model failed: their unmaps are skipped.
    failed_keys: std::collections::HashSet<(u32, u64)>,
    allocs: HashMap<(u32, u64), LiveAlloc>,
    counts: Counts,
    fidelity: Fidelity,
    first_failure: Option<FirstFailure>,
    per_dev: Vec<DeviceSummary>,
    api_ps: u64,
    transfer_ps: u64,
    t0: u64,
    /// The model's pool and where it came from.
    pool: Option<PoolPlacement>,
    /// The captured kernel's pool (slot addresses are counted apart).
    capture_pool: Option<CapturePool>,
    /// Per device: the trace's `swiotlb_bounced` events (buffer, size) since the
    /// device's last map; a truncated `dma_map_sg` whose every entry bounced gets
    /// its hidden entries from them.
    bounced_since_map: Vec<Vec<(u64, u64)>>,
    timeline: Option<Timeline>,
    /// The trace time of the event being replayed, ns.
    now_ns: u64,
    /// Per zone: the fewest free pages after an allocation.
    zone_free_min: Vec<u64>,
    iova_pages_hiwater: u64,
}

/// Model address minus trace address. `trace`: the same address when the trace's
/// buffers lie in the model's RAM (a capture of the same platform: q35 RAM at 0,
/// arm64 virt at 1 GiB), else the same offset from the start of RAM (an x86
/// capture on an arm64 preset). `high`: the trace's highest buffer byte at the end
/// of the model's RAM (2 MiB aligned), its lowest not below the model's RAM.
fn placement_offset(p: Placement, pre: &Prescan, ram_base: u64, ram_end: u64) -> i64 {
    let low = pre.low.unwrap_or(0);
    let as_i = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
    match p {
        Placement::Trace if low >= ram_base && pre.span <= ram_end => 0,
        Placement::Trace => as_i(ram_base),
        Placement::High => {
            let top = pre.span.div_ceil(2 << 20) * (2 << 20);
            let off = as_i(ram_end).saturating_sub(as_i(top));
            off.max(as_i(ram_base).saturating_sub(as_i(low)))
        }
    }
}

/// What a replay needs to know of the whole trace before its first event: the
/// trace's RAM (up to the highest physical byte it maps), the longest DMA segment
/// per device, the first timestamp.
#[derive(Debug, Clone, Default)]
struct Prescan {
    span: u64,
    /// The lowest physical address the trace maps (`u64::MAX`: none).
    low: Option<u64>,
    max_seg: Vec<u64>,
    t0: Option<u64>,
    t_end: u64,
}

impl Prescan {
    fn see(&mut self, e: &Event) {
        self.t0.get_or_insert(e.ts_ns);
        self.t_end = self.t_end.max(e.ts_ns);
        let top = match &e.kind {
            EventKind::Map {
                phys,
                size,
                resource: false,
                ..
            } => phys.checked_add(*size),
            EventKind::MapSg { phys, .. } => phys.iter().max().map(|p| p.saturating_add(PAGE_SIZE)),
            _ => None,
        };
        self.span = self.span.max(top.unwrap_or(0));
        let bottom = match &e.kind {
            EventKind::Map {
                phys,
                resource: false,
                ..
            } => Some(*phys),
            EventKind::MapSg { phys, .. } => phys.iter().min().copied(),
            _ => None,
        };
        if let Some(b) = bottom {
            self.low = Some(self.low.map_or(b, |l| l.min(b)));
        }
        // The largest DMA segment the real kernel merged: the device's max segment
        // size was at least that (`dma_get_max_seg_size`, checked by __finalise_sg).
        if let EventKind::MapSg { sizes, .. } = &e.kind {
            let d = e.dev as usize;
            if self.max_seg.len() <= d {
                self.max_seg.resize(d + 1, 64 << 10);
            }
            let m = sizes.iter().copied().max().unwrap_or(0);
            self.max_seg[d] = self.max_seg[d].max(m);
        }
    }
}

/// Replays a parsed trace (held in memory).
///
/// # Errors
/// A configuration that cannot boot, a bad `--device-map`, or a simulator limit
/// (the memory cap) hit during the replay.
pub fn replay(trace: &Trace, name: &str, opts: &ReplayOptions) -> Result<ReplayReport, String> {
    let mut pre = Prescan::default();
    for e in &trace.events {
        pre.see(e);
    }
    let mut r = Replayer::new(trace, &pre, opts)?;
    for e in &trace.events {
        r.event(e)?;
    }
    Ok(r.finish(name, opts))
}

/// Replays a trace file as it streams: a first pass reads what the replay must
/// know beforehand, the second replays each event as soon as its place is final,
/// so memory follows the live mappings, not the file's length. A file whose
/// timestamps go backwards (per-CPU files one after the other) is read into
/// memory to merge its CPUs.
///
/// # Errors
/// As [`parse::parse`] for a file with no DMA event, then as [`replay`].
pub fn replay_bytes(
    bytes: &[u8],
    name: &str,
    opts: &ReplayOptions,
) -> Result<ReplayReport, String> {
    let text = parse::text_of(bytes);
    let mut first = parse::LineReader::default();
    let mut pre = Prescan::default();
    for (i, raw) in text.split('\n').enumerate() {
        if let Some(e) = first.line(i, raw) {
            pre.see(&e);
        }
    }
    if first.events == 0 {
        return Err(first.no_events_error());
    }
    if first.summary.reordered {
        return replay(&parse::parse(bytes)?, name, opts);
    }
    let summary = first.summary;
    let mut reader = parse::LineReader::default();
    let mut nest = parse::Nester::default();
    let mut ready = Vec::new();
    let mut r = Replayer::new(&summary, &pre, opts)?;
    r.counts.events = first.events;
    for (i, raw) in text.split('\n').enumerate() {
        if let Some(e) = reader.line(i, raw) {
            nest.push(e, &mut ready);
            for e in ready.drain(..) {
                r.event(&e)?;
            }
        }
    }
    nest.finish(&mut ready);
    for e in ready.drain(..) {
        r.event(&e)?;
    }
    r.counts.moved_before_irq = nest.moved;
    Ok(r.finish(name, opts))
}

/// With a known capture pool, `placement trace` and a model pool of the same
/// size, boots again with the pool where the captured kernel had it
/// (`swiotlb_base`); otherwise keeps the model's. A `swiotlb_base` of the user's
/// own (`--set`) wins.
fn place_pool(
    sys: System,
    opts: &ReplayOptions,
    sopts: &ScriptOptions,
    pre: &Prescan,
) -> Result<(System, Option<PoolPlacement>), String> {
    let Some((start, end)) = sys.kernel.swiotlb.as_ref().map(|p| (p.start, p.end())) else {
        return Ok((sys, None));
    };
    let model = |note: Option<String>| PoolPlacement {
        start,
        end,
        from: "model",
        note,
    };
    let Some(cp) = opts.capture_pool else {
        return Ok((sys, Some(model(None))));
    };
    let why_not = if opts.set.iter().any(|(k, _)| k == "swiotlb_base") {
        Some("swiotlb_base set by the user".to_string())
    } else if opts.placement != Placement::Trace {
        Some("placement high: the capture's pool address belongs to placement trace".into())
    } else if cp.end - cp.start != end - start {
        Some(format!(
            "the capture's pool has {} slots, the model's {}",
            cp.nslabs(),
            (end - start) >> crate::kernel::dma::swiotlb::IO_TLB_SHIFT
        ))
    } else {
        None
    };
    if why_not.is_some() {
        return Ok((sys, Some(model(why_not))));
    }
    // Where the trace's buffers go, the pool goes too.
    let ram_end = sys.cfg.ram_base + sys.cfg.ram.min(sys.cfg.lowmem);
    let offset = placement_offset(opts.placement, pre, sys.cfg.ram_base, ram_end);
    let base = cp.start.saturating_add_signed(offset);
    if base == start {
        return Ok((
            sys,
            Some(PoolPlacement {
                start,
                end,
                from: "capture",
                note: None,
            }),
        ));
    }
    let mut again = sopts.clone();
    again
        .boot_set
        .push(("swiotlb_base".into(), format!("{base:#x}")));
    match crate::script::boot_system(&opts.preset, &again) {
        Ok(s2) => {
            let (start, end) = s2
                .kernel
                .swiotlb
                .as_ref()
                .map_or((base, base), |p| (p.start, p.end()));
            Ok((
                s2,
                Some(PoolPlacement {
                    start,
                    end,
                    from: "capture",
                    note: None,
                }),
            ))
        }
        Err(e) => Ok((sys, Some(model(Some(e))))),
    }
}

impl<'a> Replayer<'a> {
    /// Boots the platform and creates the trace's devices.
    fn new(trace: &'a Trace, pre: &Prescan, opts: &ReplayOptions) -> Result<Replayer<'a>, String> {
        let sopts = ScriptOptions {
            seed: opts.seed,
            noise_off: true,
            boot_set: opts.set.clone(),
            ..ScriptOptions::default()
        };
        let mut sys = crate::script::boot_system(&opts.preset, &sopts)?;
        let (sys2, pool_placement) = place_pool(sys, opts, &sopts, pre)?;
        sys = sys2;
        if let Some(st) = sys.kernel.iommu.as_mut() {
            st.fq_flush_by_evidence = true;
        }
        let ram_end = sys.cfg.ram_base + sys.cfg.ram.min(sys.cfg.lowmem);
        let offset = placement_offset(opts.placement, pre, sys.cfg.ram_base, ram_end);
        let mut max_seg = pre.max_seg.clone();
        max_seg.resize(trace.devices.len().max(max_seg.len()), 64 << 10);
        let mut devs = Vec::new();
        let mut per_dev = Vec::new();
        for (i, dname) in trace.devices.iter().enumerate() {
            let mut o = DevOpts {
                mask_bits: 64,
                coherent: None,
                iommu: true,
                dma_bits: None,
                min_align_mask: 0,
                max_segment: Some(max_seg[i]),
                untrusted: false,
                bus_dma_limit: None,
                pci: None,
                msi_doorbell: None,
            };
            for (n, spec) in &opts.device_map {
                if n == "*" || n == dname {
                    o.apply(spec)
                        .map_err(|e| format!("--device-map {n}: {e}"))?;
                }
            }
            let mut d = Device::new(
                dname,
                o.coherent.unwrap_or(sys.cfg.coherent_default),
                sys.cfg.dev_bandwidth,
                sys.cfg.dev_latency_ns,
            );
            d.dma_offset = sys.cfg.dma_offset;
            d.bus_dma_limit = o.bus_dma_limit.unwrap_or(sys.cfg.bus_dma_limit);
            d.dma_mask = dma_bit_mask(o.mask_bits);
            d.coherent_dma_mask = d.dma_mask;
            d.dma_bits = o.dma_bits.unwrap_or(o.mask_bits.max(32));
            d.mask_set = true;
            d.iommu = o.iommu;
            d.untrusted = o.untrusted;
            d.min_align_mask = o.min_align_mask;
            d.max_segment = o.max_segment.unwrap_or(64 << 10);
            // dev_is_pci(): a PCI name (or `pci=true`); an untrusted device is PCI.
            // Behind an IOMMU a PCI device gets IOVAs below 4 GiB first, unless
            // `iommu_forcedac` (dma-iommu.c: iommu_dma_alloc_iova).
            d.pci = o.untrusted || o.pci.unwrap_or(is_pci_name(dname));
            let idx = sys.add_device(d);
            let iommu = sys.use_dma_iommu(idx);
            let pci32 = iommu && sys.kernel.devices[idx].pci_32bit_workaround && o.mask_bits > 32;
            if let Some(pa) = o.msi_doorbell.filter(|_| iommu) {
                // drivers/iommu/dma-iommu.c iommu_dma_get_msi_page: a device whose
                // MSIs are translated (arm64, GICv3 ITS behind an SMMU) maps the
                // doorbell page into its domain when its vectors are set up, at
                // probe, before its DMA: that page takes the domain's first IOVA.
                // IOMMU_WRITE | IOMMU_NOEXEC (| IOMMU_MMIO, which the tables do not model).
                let prot = crate::kernel::iommu::IOMMU_WRITE | crate::kernel::iommu::IOMMU_NOEXEC;
                let limit = sys.iommu_dma_limit(idx, false);
                sys.iommu_dma_map_raw(idx, pa, PAGE_SIZE, prot, limit);
            }
            devs.push(idx);
            per_dev.push(DeviceSummary {
                name: dname.clone(),
                mask_bits: o.mask_bits,
                coherent: sys.kernel.devices[idx].coherent,
                iommu,
                pci_32bit_iova: pci32,
                maps: 0,
                bounced_maps: 0,
                bounced_bytes: 0,
                bounced_beyond_limit: 0,
                bounced_kmalloc_unaligned: 0,
                bounced_forced: 0,
                swiotlb_full: 0,
                trace_bounced: 0,
                dma_bytes: 0,
                live_at_end: 0,
            });
        }
        let n = trace.devices.len();
        let timeline = opts.timeline.then(|| {
            let slots = sys.kernel.swiotlb.as_ref().map_or(0, |p| p.nslabs as u64);
            Timeline::new(pre.t0.unwrap_or(0), pre.t_end, slots)
        });
        Ok(Replayer {
            sys,
            trace,
            devs,
            offset,
            ram_end,
            singles: HashMap::new(),
            ranges: vec![BTreeMap::new(); n],
            sgs: HashMap::new(),
            sg_by_dma: HashMap::new(),
            failed_keys: std::collections::HashSet::new(),
            allocs: HashMap::new(),
            counts: Counts {
                events: trace.events.len() as u64,
                moved_before_irq: trace.moved_before_irq,
                skipped_lines: trace.skipped.values().sum(),
                bad_lines: trace.bad_lines,
                ..Counts::default()
            },
            fidelity: Fidelity::default(),
            first_failure: None,
            per_dev,
            api_ps: 0,
            transfer_ps: 0,
            t0: pre.t0.unwrap_or(0),
            pool: pool_placement,
            capture_pool: opts.capture_pool,
            bounced_since_map: vec![Vec::new(); n],
            timeline,
            now_ns: 0,
            zone_free_min: Vec::new(),
            iova_pages_hiwater: 0,
        })
    }
}

impl Replayer<'_> {
    fn place(&self, phys: u64, size: u64) -> Option<u64> {
        let pa = phys.checked_add_signed(self.offset)?;
        (pa.checked_add(size.max(1))? <= self.ram_end).then_some(pa)
    }

    fn dev_name(&self, d: u32) -> &str {
        &self.trace.devices[d as usize]
    }

    fn diff(&mut self, e: &Event, call: &str, trace: u64, model: u64, size: u64) {
        self.fidelity.compared += 1;
        let slot = self.capture_pool.is_some_and(|p| p.contains(trace));
        self.fidelity.slots_compared += u64::from(slot);
        if trace == model {
            self.fidelity.equal += 1;
            self.fidelity.slots_equal += u64::from(slot);
        } else if self.fidelity.first_differences.len() < MAX_DIFFS
            && (call != "dma_alloc_coherent" || {
                // Coherent allocations come from the model's own page allocator and
                // differ by design: a few of them, not a list that hides the rest.
                let allocs = self.fidelity.first_differences.iter();
                allocs.filter(|d| d.call == call).count() < MAX_ALLOC_DIFFS
            })
        {
            self.fidelity.first_differences.push(AddressDiff {
                line: e.line,
                device: self.dev_name(e.dev).to_string(),
                call: call.to_string(),
                trace,
                model,
                size,
            });
        }
    }

    fn failed(&mut self, e: &Event, call: &str, size: u64, findings_before: usize) {
        self.counts.model_failures += 1;
        if self.first_failure.is_some() {
            return;
        }
        let why = self.sys.check.findings()[findings_before.min(self.sys.check.findings().len())..]
            .first()
            .map_or_else(
                || {
                    self.sys
                        .log
                        .last()
                        .cloned()
                        .unwrap_or_else(|| "the model returned an error".into())
                },
                |f| format!("{}: {}", f.id, f.message),
            );
        self.first_failure = Some(FirstFailure {
            line: e.line,
            device: self.dev_name(e.dev).to_string(),
            call: call.to_string(),
            size,
            why,
        });
    }

    /// An unmap or free with nothing live at its address: of a call the model
    /// failed, or of a map the capture did not see.
    fn skip_unmap(&mut self, dev: u32, key: u64) {
        if self.failed_keys.remove(&(dev, key)) {
            self.counts.after_failure += 1;
        } else {
            self.counts.unmatched += 1;
        }
    }

    /// Lets the model's clock catch up with the trace's (the model never runs
    /// ahead of what it simulates: its own costs come first).
    fn follow_clock(&mut self, e: &Event) -> Result<(), String> {
        let at = e.ts_ns.saturating_sub(self.t0);
        let now = self.sys.hw.now_ps() / 1000;
        if at > now {
            self.sys.run_for(at - now).map_err(|x| x.to_string())?;
        }
        Ok(())
    }

    /// A kernel call, timed.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut System) -> crate::system::Result<T>,
    ) -> Result<T, String> {
        let t = self.sys.hw.now_ps();
        let r = f(&mut self.sys).map_err(|x| x.to_string());
        self.api_ps += self.sys.hw.now_ps() - t;
        self.sys.check_limits().map_err(|x| x.to_string())?;
        r
    }

    /// The device reads (TO_DEVICE) or writes (FROM_DEVICE, BIDIRECTIONAL) `len`
    /// bytes at `addr`, as it would between the map and the unmap.
    fn access(&mut self, tdev: u32, addr: u64, len: u64, dir: DmaDirection) -> Result<(), String> {
        if len == 0 || len > crate::system::MAX_ACCESS {
            return Ok(());
        }
        let dev = self.devs[tdev as usize];
        let t = self.sys.hw.now_ps();
        let data = (dir != DmaDirection::ToDevice).then(|| vec![0x5a; len as usize]);
        let job = self
            .sys
            .dev_start(dev, addr, len, data)
            .map_err(|x| x.to_string())?;
        self.sys.wait(job).map_err(|x| x.to_string())?;
        self.transfer_ps += self.sys.hw.now_ps() - t;
        self.per_dev[tdev as usize].dma_bytes += len;
        Ok(())
    }

    /// The zones' free pages after an allocation: keep each one's lowest.
    fn note_zone_pressure(&mut self) {
        let zones = &self.sys.kernel.pages.zones;
        self.zone_free_min.resize(zones.len(), u64::MAX);
        for (m, z) in self.zone_free_min.iter_mut().zip(zones) {
            *m = (*m).min(z.free_pages());
        }
    }

    fn access_sg(
        &mut self,
        tdev: u32,
        table: u64,
        len: u64,
        dir: DmaDirection,
    ) -> Result<(), String> {
        let dev = self.devs[tdev as usize];
        let t = self.sys.hw.now_ps();
        let data = (dir != DmaDirection::ToDevice).then(|| vec![0x5a; len as usize]);
        self.sys
            .dev_sg(dev, table, len, data)
            .map_err(|x| x.to_string())?;
        self.transfer_ps += self.sys.hw.now_ps() - t;
        self.per_dev[tdev as usize].dma_bytes += len;
        Ok(())
    }

    fn event(&mut self, e: &Event) -> Result<(), String> {
        self.now_ns = e.ts_ns;
        self.event_inner(e)?;
        let iova = self.sys.kernel.iommu.as_ref().map_or(0, |st| {
            st.domains.iter().map(|d| d.iovad.allocated_pages()).sum()
        });
        self.iova_pages_hiwater = self.iova_pages_hiwater.max(iova);
        if self.timeline.is_some() {
            let slots = self.sys.kernel.swiotlb.as_ref().map_or(0, |p| p.used);
            if let Some(t) = self.timeline.as_mut() {
                t.sample(e.ts_ns, slots, iova);
            }
        }
        Ok(())
    }

    /// A life on the timeline begins (when one is collected).
    fn open_span(&mut self, e: &Event, bytes: u64, kind: SpanKind, model: u64) -> SpanId {
        let bounced = self
            .sys
            .kernel
            .swiotlb
            .as_ref()
            .is_some_and(|p| (p.start..p.end()).contains(&model));
        self.timeline.as_mut().map_or(timeline::NONE, |t| {
            t.open(e.dev, e.line, e.ts_ns, bytes, kind, bounced)
        })
    }

    fn close_span(&mut self, id: SpanId) {
        let now = self.now_ns;
        if let Some(t) = self.timeline.as_mut() {
            t.close(id, now);
        }
    }

    fn event_inner(&mut self, e: &Event) -> Result<(), String> {
        self.follow_clock(e)?;
        let dev = self.devs[e.dev as usize];
        // The trace's CPU: per-CPU IOVA caches and flush queues follow it.
        self.sys.cpu = (e.cpu % self.sys.cfg.cpus.max(1)) as usize;
        self.sys.line = e.line;
        if matches!(e.kind, EventKind::Map { .. }) {
            self.bounced_since_map[e.dev as usize].clear();
        }
        // Flush-queue timers long past due have surely fired in the kernel.
        let now = self.sys.hw.now_ps();
        self.sys.iommu_fq_expire(now, FQ_SURELY_FIRED_PS);
        // An address the kernel handed out again while the model still holds it in
        // the flush queue: the kernel's timer had fired.
        let iova = match &e.kind {
            EventKind::Map {
                dma,
                resource: false,
                ..
            }
            | EventKind::Alloc { dma, .. } => Some(*dma),
            EventKind::MapSg { dma, .. } => dma.first().copied(),
            _ => None,
        };
        if let Some(a) = iova.filter(|&a| a != DMA_MAPPING_ERROR) {
            if self.sys.iommu_fq_flush_if_queued(dev, a & !(PAGE_SIZE - 1)) {
                self.counts.fq_flushes_seen += 1;
            }
        }
        match &e.kind {
            EventKind::Map {
                phys,
                dma,
                size,
                dir,
                attrs,
                resource,
            } => {
                if *dma == DMA_MAPPING_ERROR || *size == 0 {
                    self.counts.failed_in_trace += 1;
                    return Ok(());
                }
                let before = self.sys.check.findings().len();
                let (size, dir, attrs, resource) = (*size, *dir, *attrs, *resource);
                let (addr, call) = if resource {
                    // MMIO of another device (a FIFO register): its bus address is
                    // the same on the model's platform, not a RAM page to place.
                    let phys = *phys;
                    let a = self.call(|s| s.dma_map_resource(dev, phys, size, dir))?;
                    (a, "dma_map_resource")
                } else {
                    let Some(pa) = self.place(*phys, size) else {
                        self.failed_keys.insert((e.dev, *dma));
                        self.counts.unplaced += 1;
                        return Ok(());
                    };
                    let va = self.sys.kernel.phys_to_virt(pa);
                    let a =
                        self.call(|s| s.dma_map_attrs(dev, va, size, dir, MapKind::Page, attrs))?;
                    (a, "dma_map_page")
                };
                self.counts.replayed += 1;
                self.counts.maps += 1;
                self.per_dev[e.dev as usize].maps += 1;
                if addr == DMA_MAPPING_ERROR {
                    self.failed_keys.insert((e.dev, *dma));
                    self.failed(e, call, size, before);
                    return Ok(());
                }
                // The driver checked the address (dma_mapping_error is not traced;
                // the drivers of a capture are assumed to check, as mature ones do).
                self.sys.dma_mapping_error(dev, addr);
                self.diff(e, call, *dma, addr, size);
                let span = self.open_span(e, size, SpanKind::Map, addr);
                self.singles
                    .entry((e.dev, *dma))
                    .or_default()
                    .push(LiveMap {
                        model: addr,
                        size,
                        dir,
                        cpu_owns: false,
                        span,
                        resource,
                    });
                let r = self.ranges[e.dev as usize].entry(*dma).or_insert(0);
                *r = (*r).max(size);
            }
            EventKind::Unmap {
                dma,
                size,
                dir,
                attrs,
                resource,
            } => {
                let key = (e.dev, *dma);
                // The live map of that address with the unmap's size, else the last.
                let Some(m) = self.singles.get_mut(&key).and_then(|v| {
                    let i = v
                        .iter()
                        .rposition(|m| m.size == *size)
                        .unwrap_or(v.len().checked_sub(1)?);
                    Some(v.remove(i))
                }) else {
                    self.skip_unmap(e.dev, *dma);
                    return Ok(());
                };
                if self.singles.get(&key).is_some_and(Vec::is_empty) {
                    self.singles.remove(&key);
                    self.ranges[e.dev as usize].remove(dma);
                }
                let (size, dir, attrs) = (*size, *dir, *attrs);
                if *resource || m.resource {
                    self.call(|s| s.dma_unmap_resource(dev, m.model, size, dir))?;
                    self.close_span(m.span);
                    self.counts.replayed += 1;
                    return Ok(());
                }
                if !m.cpu_owns {
                    self.access(e.dev, m.model, m.size, m.dir)?;
                }
                self.call(|s| s.dma_unmap_attrs(dev, m.model, size, dir, MapKind::Page, attrs))?;
                self.close_span(m.span);
                self.counts.replayed += 1;
            }
            EventKind::MapSg { .. } => self.map_sg(e, dev)?,
            EventKind::UnmapSg { dir, phys, attrs } => {
                let Some(first) = phys.first() else {
                    self.counts.unmatched += 1;
                    return Ok(());
                };
                let key = (e.dev, *first);
                let Some(live) = self.sgs.get_mut(&key).and_then(Vec::pop) else {
                    self.skip_unmap(e.dev, *first);
                    return Ok(());
                };
                if self.sgs.get(&key).is_some_and(Vec::is_empty) {
                    self.sgs.remove(&key);
                }
                self.sg_by_dma.remove(&(e.dev, live.trace_first_dma));
                if !live.cpu_owns {
                    self.access_sg(e.dev, live.table, live.len, live.dir)?;
                }
                let (dir, skip) = (*dir, attrs & DMA_ATTR_SKIP_CPU_SYNC != 0);
                self.call(|s| s.dma_unmap_sg_attrs(dev, live.table, dir, skip))?;
                self.close_span(live.span);
                self.sys.kernel.sg_tables.remove(&live.table);
                for (pfn, order) in live.filler {
                    self.sys.kernel.pages.free_pages(pfn, order);
                }
                self.counts.replayed += 1;
            }
            EventKind::MapSgErr { .. } => self.counts.failed_in_trace += 1,
            EventKind::Alloc {
                kind,
                dma,
                size,
                dir,
                ..
            } => {
                if *dma == 0 || *dma == DMA_MAPPING_ERROR {
                    self.counts.failed_in_trace += 1;
                    return Ok(());
                }
                let before = self.sys.check.findings().len();
                let (size, dir, kind) = (*size, *dir, *kind);
                let id = self.call(|s| match kind {
                    AllocKind::Coherent => s.dma_alloc_coherent(dev, size),
                    AllocKind::Sgt => s.dma_alloc_noncontiguous(dev, size, dir, false),
                    _ => s.dma_alloc_noncoherent(dev, size, dir),
                })?;
                self.counts.replayed += 1;
                self.counts.allocs += 1;
                let call = match kind {
                    AllocKind::Coherent => "dma_alloc_coherent",
                    AllocKind::Sgt => "dma_alloc_noncontiguous",
                    _ => "dma_alloc_pages",
                };
                let Some(id) = id else {
                    self.failed_keys.insert((e.dev, *dma));
                    self.failed(e, call, size, before);
                    return Ok(());
                };
                let model = if kind == AllocKind::Sgt {
                    // The table's first DMA segment, as the trace's dma_addrs start.
                    self.sys
                        .sg(id)
                        .ok()
                        .and_then(|t| t.entries.first().map(|s| s.dma_address))
                        .unwrap_or(DMA_MAPPING_ERROR)
                } else {
                    self.sys
                        .kernel
                        .buffers
                        .get(&id)
                        .and_then(|b| b.dma)
                        .unwrap_or(DMA_MAPPING_ERROR)
                };
                self.diff(e, call, *dma, model, size);
                let span = self.open_span(e, size, SpanKind::Alloc, model);
                self.allocs
                    .insert((e.dev, *dma), (id, size, kind, dir, span));
                self.note_zone_pressure();
            }
            EventKind::Free { dma, size, dir, .. } => {
                let Some((id, _, kind, _, span)) = self.allocs.remove(&(e.dev, *dma)) else {
                    self.skip_unmap(e.dev, *dma);
                    return Ok(());
                };
                let (size, dir) = (*size, *dir);
                self.call(|s| match kind {
                    AllocKind::Coherent => s.dma_free_coherent(dev, size, id),
                    AllocKind::Sgt => s.dma_free_noncontiguous(dev, size, id, dir),
                    _ => s.dma_free_noncoherent(dev, size, id, dir),
                })?;
                self.close_span(span);
                self.counts.replayed += 1;
            }
            EventKind::SyncSingle {
                dma,
                size,
                dir,
                for_cpu,
            } => {
                let found = self.ranges[e.dev as usize]
                    .range(..=*dma)
                    .next_back()
                    .filter(|(a, s)| *dma < **a + (**s).max(1))
                    .map(|(a, _)| *a);
                let Some(base) = found else {
                    self.counts.unmatched += 1;
                    return Ok(());
                };
                let Some(m) = self
                    .singles
                    .get(&(e.dev, base))
                    .and_then(|v| v.last())
                    .cloned()
                else {
                    self.counts.unmatched += 1;
                    return Ok(());
                };
                let at = m.model + (dma - base);
                if *for_cpu && !m.cpu_owns {
                    self.access(e.dev, m.model, m.size, m.dir)?;
                }
                let (size, dir, for_cpu) = (*size, *dir, *for_cpu);
                self.call(|s| s.dma_sync_single(dev, at, size, dir, for_cpu))?;
                if let Some(l) = self
                    .singles
                    .get_mut(&(e.dev, base))
                    .and_then(|v| v.last_mut())
                {
                    l.cpu_owns = for_cpu;
                }
                self.counts.replayed += 1;
                self.counts.syncs += 1;
            }
            EventKind::SyncSg {
                dir, dma, for_cpu, ..
            } => {
                let Some(first) = dma.first() else {
                    self.counts.unmatched += 1;
                    return Ok(());
                };
                let Some(&first_phys) = self.sg_by_dma.get(&(e.dev, *first)) else {
                    self.counts.unmatched += 1;
                    return Ok(());
                };
                let Some(live) = self
                    .sgs
                    .get(&(e.dev, first_phys))
                    .and_then(|v| v.last())
                    .cloned()
                else {
                    self.counts.unmatched += 1;
                    return Ok(());
                };
                if *for_cpu && !live.cpu_owns {
                    self.access_sg(e.dev, live.table, live.len, live.dir)?;
                }
                let (dir, for_cpu) = (*dir, *for_cpu);
                let call = if for_cpu {
                    "dma_sync_sg_for_cpu"
                } else {
                    "dma_sync_sg_for_device"
                };
                self.call(|s| s.dma_sync_sg(dev, live.table, dir, for_cpu, call))?;
                if let Some(l) = self
                    .sgs
                    .get_mut(&(e.dev, first_phys))
                    .and_then(|v| v.last_mut())
                {
                    l.cpu_owns = for_cpu;
                }
                self.counts.replayed += 1;
                self.counts.syncs += 1;
            }
            EventKind::Bounced { dev_addr, size, .. } => {
                self.per_dev[e.dev as usize].trace_bounced += 1;
                let b = &mut self.bounced_since_map[e.dev as usize];
                // More than an sg list can hold: not the entries of one map.
                if b.len() >= MAX_SG_BOUNCES {
                    b.clear();
                }
                b.push((*dev_addr, *size));
            }
        }
        Ok(())
    }

    /// `dma_map_sg`: the list is rebuilt from the trace (see [`sg_entries`]) and
    /// mapped by the model's `dma_map_sg`.
    fn map_sg(&mut self, e: &Event, dev: usize) -> Result<(), String> {
        let EventKind::MapSg {
            dir,
            nents,
            ents,
            truncated,
            phys,
            dma,
            sizes,
            attrs,
        } = &e.kind
        else {
            return Ok(());
        };
        if *ents == 0 || phys.is_empty() {
            self.counts.failed_in_trace += 1;
            return Ok(());
        }
        let max_seg = self.sys.kernel.devices[dev].max_segment;
        let bounced = std::mem::take(&mut self.bounced_since_map[e.dev as usize]);
        let mut entries = if *truncated
            && bounced.len() == *nents as usize
            && bounced.iter().zip(phys).all(|(b, p)| b.0 == *p)
        {
            // dma_direct_map_sg bounced every entry in order (swiotlb_bounced comes
            // from swiotlb_tbl_map_single, one per entry): their buffers and sizes
            // are the whole list, past the 128 the map event shows.
            // The device took these segments: its max segment was at least the
            // longest (the prescan saw only the 128 shown).
            let longest = bounced.iter().map(|b| b.1).max().unwrap_or(0);
            let d = &mut self.sys.kernel.devices[dev];
            d.max_segment = d.max_segment.max(longest);
            bounced.iter().map(|&(p, l)| (Some(p), l)).collect()
        } else {
            sg_entries(phys, *nents, dma, sizes, *ents, max_seg)
        };
        let mut filler = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for (p, len) in entries.drain(..) {
            match p {
                Some(p) => match self.place(p, len) {
                    Some(pa) => placed.push((pa, len)),
                    None => {
                        self.failed_keys.insert((e.dev, phys[0]));
                        self.counts.unplaced += 1;
                        return Ok(());
                    }
                },
                None => {
                    // An entry past the kernel's 128: a block of the model's own.
                    let order = crate::kernel::mm::page_alloc::get_order(len);
                    let pfn = self
                        .sys
                        .kernel
                        .pages
                        .alloc_pages(
                            order,
                            crate::kernel::mm::gfp::GFP_KERNEL,
                            &mut self.sys.hw.rng,
                        )
                        .map_err(|x| {
                            format!("line {}: no memory for an sg entry: {x:?}", e.line)
                        })?;
                    filler.push((pfn, order));
                    placed.push((pfn * PAGE_SIZE, len));
                }
            }
        }
        if *truncated {
            self.counts.truncated_sg += 1;
        }
        let len: u64 = placed.iter().map(|(_, l)| l).sum();
        let table = self
            .sys
            .sg_from_chunks(&placed)
            .map_err(|x| x.to_string())?;
        let before = self.sys.check.findings().len();
        let (dir, skip) = (*dir, attrs & DMA_ATTR_SKIP_CPU_SYNC != 0);
        let n = self.call(|s| s.skipping_cpu_sync(skip, |s| s.dma_map_sg(dev, table, dir)))?;
        self.counts.replayed += 1;
        self.counts.sg_maps += 1;
        self.per_dev[e.dev as usize].maps += 1;
        if n == 0 {
            self.sys.kernel.sg_tables.remove(&table);
            for (pfn, order) in filler {
                self.sys.kernel.pages.free_pages(pfn, order);
            }
            self.failed_keys.insert((e.dev, phys[0]));
            self.failed(e, "dma_map_sg", len, before);
            return Ok(());
        }
        let segs: Vec<(u64, u64)> = self
            .sys
            .sg(table)
            .map(|t| {
                t.entries
                    .iter()
                    .take(t.mapped)
                    .map(|s| (s.dma_address, s.dma_len))
                    .collect()
            })
            .unwrap_or_default();
        for (i, (&td, &tl)) in dma.iter().zip(sizes).enumerate() {
            let (md, ml) = segs.get(i).copied().unwrap_or((DMA_MAPPING_ERROR, 0));
            self.fidelity.sg_segments += 1;
            if td == md && tl == ml {
                self.fidelity.sg_segments_equal += 1;
            }
            self.diff(e, "dma_map_sg", td, md, tl);
        }
        let key = (e.dev, phys[0]);
        let first_model = segs.first().map_or(DMA_MAPPING_ERROR, |s| s.0);
        let span = self.open_span(e, len, SpanKind::Sg, first_model);
        self.sg_by_dma.insert((e.dev, dma[0]), phys[0]);
        self.sgs.entry(key).or_default().push(LiveSg {
            table,
            dir,
            trace_first_dma: dma[0],
            filler,
            cpu_owns: false,
            len,
            span,
        });
        Ok(())
    }

    fn finish(mut self, name: &str, opts: &ReplayOptions) -> ReplayReport {
        // Transfers still running end; no leak check: the drivers were still bound
        // when tracing stopped (dma-debug reports leaks only at unbind).
        self.sys.run_for(0).ok();
        for ((d, _), v) in &self.singles {
            self.per_dev[*d as usize].live_at_end += v.len() as u64;
        }
        for ((d, _), v) in &self.sgs {
            self.per_dev[*d as usize].live_at_end += v.len() as u64;
        }
        for (i, &idx) in self.devs.iter().enumerate() {
            let d = &self.sys.kernel.devices[idx];
            self.per_dev[i].bounced_maps = d.bounce.maps;
            self.per_dev[i].bounced_bytes = d.bounce.bytes;
            self.per_dev[i].bounced_beyond_limit = d.bounce.beyond_limit;
            self.per_dev[i].bounced_kmalloc_unaligned = d.bounce.kmalloc_unaligned;
            self.per_dev[i].bounced_forced = d.bounce.forced;
            self.per_dev[i].swiotlb_full = d.bounce.full;
        }
        let stats = Stats::of(&self.sys);
        let findings = self.sys.check.findings().to_vec();
        let errors = findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count() as u64;
        let warnings = findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count() as u64;
        let copy_ns = stats.swiotlb.copy_ns;
        let api_ns = (self.api_ps / 1000).saturating_sub(copy_ns);
        let transfer_ns = self.transfer_ps / 1000;
        let busy = api_ns + copy_ns + transfer_ns;
        let time = TimeSplit {
            dma_api_ns: api_ns,
            bounce_copy_ns: copy_ns,
            transfer_ns,
            throughput_mb_s: if busy == 0 {
                0.0
            } else {
                stats.dma_bytes as f64 * 1000.0 / busy as f64
            },
        };
        let config = std::iter::once(opts.preset.clone())
            .chain(opts.set.iter().map(|(k, v)| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(",");
        ReplayReport {
            schema: SCHEMA,
            trace: name.to_string(),
            config,
            placement: opts.placement,
            platform: crate::report::PlatformSummary::of(&self.sys.cfg),
            counts: self.counts,
            devices: self.per_dev,
            fidelity: self.fidelity,
            swiotlb_slots_hiwater: stats.swiotlb.slots_used_max,
            iova_pages_hiwater: self.iova_pages_hiwater,
            swiotlb_pool: self.pool,
            zones: self
                .sys
                .kernel
                .pages
                .zones
                .iter()
                .enumerate()
                .filter(|(_, z)| z.managed > 0)
                .map(|(i, z)| ZonePressure {
                    zone: z.kind.name(),
                    managed_pages: z.managed,
                    free_min_pages: self
                        .zone_free_min
                        .get(i)
                        .copied()
                        .unwrap_or(u64::MAX)
                        .min(z.free_pages()),
                    watermark_min_pages: z.watermark_min,
                })
                .collect(),
            first_failure: self.first_failure,
            time,
            stats,
            errors,
            warnings,
            findings,
            first_bad_line: self.trace.first_bad.clone(),
            log: std::mem::take(&mut self.sys.log),
            timeline: self.timeline,
        }
    }
}

/// The entries of a `dma_map_sg` call, as (physical address or `None` when the
/// kernel's 128-entry cap hid it, length). The trace gives each entry's address but
/// only the DMA segments' lengths. Without merging (`nents == ents`, as dma-direct
/// always maps) entry `i` is segment `i`. Under an IOMMU, `__finalise_sg`
/// (drivers/iommu/dma-iommu.c) joins an entry to the previous segment only when that
/// one ended on a page boundary, this one starts at offset 0, and the sum stays
/// within the device's `max_seg` (`dma_get_max_seg_size`); a segment that ends short
/// of `max_seg` although the next one starts aligned was ended by a first entry too
/// long to fit. So each segment gets as many entries as that rule allows (the
/// surplus going to the earliest segments), its last entries a page each (the
/// segment's tail for the last) and its first entry the rest: merged again by the
/// model's `dma_map_sg`, they give the trace's segments, hence its IOVA ranges.
pub fn sg_entries(
    phys: &[u64],
    nents: u32,
    dma: &[u64],
    sizes: &[u64],
    ents: u32,
    max_seg: u64,
) -> Vec<(Option<u64>, u64)> {
    let nents = nents as usize;
    let mut out: Vec<(Option<u64>, u64)> = Vec::with_capacity(nents);
    let merged = nents != ents as usize && !sizes.is_empty() && sizes.len() == ents as usize;
    if !merged {
        for i in 0..nents {
            let len = sizes.get(i).copied().unwrap_or(PAGE_SIZE).max(1);
            out.push((phys.get(i).copied(), len));
        }
        return out;
    }
    let m = sizes.len();
    let pages = |k: usize| -> u64 {
        let off = dma.get(k).map_or(0, |d| d & (PAGE_SIZE - 1));
        (off + sizes[k]).div_ceil(PAGE_SIZE).max(1)
    };
    // The most entries segment k can hold and still be split from segment k-1 by
    // length (its first entry longer than max_seg - L[k-1]).
    let cap = |k: usize| -> u64 {
        let p = pages(k);
        if k == 0 || sizes[k - 1] + sizes[k] <= max_seg {
            return p;
        }
        let over = sizes[k - 1] + sizes[k] - max_seg;
        over.div_ceil(PAGE_SIZE).clamp(1, p)
    };
    let mut counts = vec![1u64; m];
    let mut extra = (nents as u64).saturating_sub(m as u64);
    for (k, c) in counts.iter_mut().enumerate() {
        let add = extra.min(cap(k) - 1);
        *c += add;
        extra -= add;
    }
    for (k, c) in counts.iter_mut().enumerate() {
        let add = extra.min(pages(k) - *c);
        *c += add;
        extra -= add;
    }
    if let Some(c) = counts.last_mut() {
        *c += extra;
    }
    for (k, &c) in counts.iter().enumerate() {
        let off = dma.get(k).map_or(0, |d| d & (PAGE_SIZE - 1));
        let span = off + sizes[k];
        let tail_last = match span % PAGE_SIZE {
            0 => PAGE_SIZE,
            r => r,
        };
        // Tail entries: c - 1 of them, full pages, the very last maybe partial.
        let tail: u64 = if c > 1 {
            (c - 2) * PAGE_SIZE + tail_last
        } else {
            0
        };
        let first = sizes[k].saturating_sub(tail).max(1);
        let i = out.len();
        out.push((phys.get(i).copied(), first));
        for t in 1..c {
            let i = out.len();
            let len = if t == c - 1 { tail_last } else { PAGE_SIZE };
            out.push((phys.get(i).copied(), len));
        }
    }
    out.truncate(nents.max(m));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_names_are_domain_bus_device_function() {
        assert!(is_pci_name("0000:00:1f.2"));
        assert!(!is_pci_name("fe580000.ethernet"));
        assert!(!is_pci_name("0000:00:1f"));
    }

    #[test]
    fn unmerged_sg_entries_are_the_segments() {
        let e = sg_entries(
            &[0x1000, 0x5200],
            2,
            &[0x1000, 0x5200],
            &[0x1000, 0x200],
            2,
            1 << 16,
        );
        assert_eq!(e, [(Some(0x1000), 0x1000), (Some(0x5200), 0x200)]);
    }

    #[test]
    fn merged_sg_entries_merge_back_into_the_trace_segments() {
        // Three pages merged into one 0x2800-byte segment starting 0x800 into a page
        // (dma-iommu.c __finalise_sg): 0x800 + 0x1000 + 0x1000.
        let e = sg_entries(
            &[0x7800, 0x3000, 0x9000],
            3,
            &[0xffff_d800],
            &[0x2800],
            1,
            1 << 16,
        );
        assert_eq!(
            e,
            [
                (Some(0x7800), 0x800),
                (Some(0x3000), 0x1000),
                (Some(0x9000), 0x1000)
            ]
        );
        // The AHCI list of the iommu-strict capture (line 3875): 52 entries, 9
        // segments; a 0xe000 segment was ended by an entry of more than 2 pages.
        let sizes = [
            0x10000, 0xe000, 0xd000, 0x10000, 0x10000, 0x10000, 0x10000, 0x10000, 0x5000,
        ];
        let dma: Vec<u64> = sizes
            .iter()
            .scan(0xffe8_0000u64, |a, s| {
                let d = *a;
                *a += s;
                Some(d)
            })
            .collect();
        let phys: Vec<u64> = (0..52).map(|i| 0x100_0000 + i * 0x10_0000).collect();
        let e = sg_entries(&phys, 52, &dma, &sizes, 9, 1 << 16);
        assert_eq!(e.len(), 52);
        assert_eq!(
            e.iter().map(|x| x.1).sum::<u64>(),
            sizes.iter().sum::<u64>()
        );
        // Re-merge as __finalise_sg does: the same 9 segments.
        let mut segs: Vec<u64> = Vec::new();
        let mut cur = 0u64;
        for (_, len) in &e {
            if cur > 0 && cur % 0x1000 == 0 && (1u64 << 16) - cur >= *len {
                cur += len;
                *segs.last_mut().unwrap() = cur;
            } else {
                cur = *len;
                segs.push(cur);
            }
        }
        assert_eq!(segs, sizes);
    }

    #[test]
    fn truncated_entries_are_filled_with_pages() {
        let e = sg_entries(&[0x1000], 3, &[0xf000_0000], &[0x3000], 1, 1 << 16);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0], (Some(0x1000), 0x1000));
        assert_eq!(e[1].0, None);
        assert_eq!(e.iter().map(|x| x.1).sum::<u64>(), 0x3000);
    }
}
