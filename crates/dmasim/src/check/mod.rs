//! The sanitizer: dma-debug's bookkeeping plus what only a model with real caches can
//! see.
//!
//! Like `kernel/dma/debug.c`, it keeps one entry per live mapping (device, bus address,
//! size, direction, type, whether the map result was checked) and checks every unmap
//! and sync against it with dma-debug's rules and phrases. Beside each entry it keeps
//! an owner (CPU or device, driven by map, sync and unmap) and two byte sets: what the
//! CPU stored since the last hand-over to the device, and what the device wrote since
//! the last hand-over to the CPU. The [`oracle::Oracle`] holds the coherent truth.
//!
//! A mistake gives one finding whose existence does not depend on luck: the protocol
//! decides that it is a bug, the oracle decides whether it `manifested` this time.
//! The sanitizer only observes: the kernel and device layers call its hooks after the
//! machine did the work, as mapping.c calls the `debug_dma_*` hooks.

mod dmabuf;
mod entries;
pub mod finding;
pub mod oracle;
mod ordset;
mod ownership;
mod pool;
pub mod ranges;

use std::collections::{BTreeMap, BTreeSet};

use entries::{Entries, Indexed};
use ownership::early_store_verdict;

use crate::hw::Machine;
use crate::kernel::dma::{DmaDirection, DMA_MAPPING_ERROR};
pub use finding::{Finding, HistoryEvent, Severity, Text};
use oracle::Oracle;
use ranges::RangeSet;

/// Where and when an event happens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ctx {
    /// Simulated time in ns.
    pub time_ns: u64,
    /// Script line.
    pub line: u32,
}

/// Finding keys of dma-bufs (see `Sanitizer::group_key`), apart from entry ids.
const DMABUF_KEYS: u64 = 1 << 62;
/// Why a read of coherent memory was stale: it went through a cacheable alias.
const COHERENT_ALIAS: &str = "through a cacheable alias of coherent memory";

/// The dma-debug entry type: which API made the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    /// `dma_map_single`.
    Single,
    /// `dma_map_page`.
    Page,
    /// `dma_map_sg` (one entry per segment).
    Sg,
    /// `dma_alloc_coherent`.
    Coherent,
    /// `dma_alloc_noncoherent`: a streaming mapping that starts out CPU-owned.
    Noncoherent,
    /// `dma_map_resource`: an MMIO range (a peripheral's FIFO), no RAM behind it.
    Resource,
}

impl MapKind {
    fn name(self) -> &'static str {
        match self {
            MapKind::Single => "single",
            MapKind::Page => "page",
            MapKind::Sg => "scatter-gather",
            MapKind::Coherent => "coherent",
            MapKind::Noncoherent => "noncoherent",
            MapKind::Resource => "resource",
        }
    }
}

/// A buffer the kernel allocated, as the sanitizer needs to know it.
#[derive(Debug, Clone)]
pub struct BufferRef {
    /// Kernel buffer id.
    pub id: u64,
    /// Physical address of the first byte.
    pub pa: u64,
    /// Length.
    pub len: u64,
    /// How it was allocated ("kmalloc(4096) = 0xffff...").
    pub alloc: HistoryEvent,
}

/// A new mapping, as the map hooks receive it.
#[derive(Debug, Clone)]
pub struct NewMapping {
    /// Device index.
    pub dev: usize,
    /// Device name.
    pub dev_name: std::sync::Arc<str>,
    /// Bus address the device uses.
    pub dev_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Physical address of the first byte.
    pub phys: u64,
    /// Direction.
    pub dir: DmaDirection,
    /// Which API.
    pub kind: MapKind,
    /// The allocation it lies in, if the kernel knows one.
    pub buffer: Option<BufferRef>,
    /// The swiotlb bounce buffer the device really uses (physical address of the
    /// mapping's first byte), when the mapping bounced.
    pub bounce: Option<u64>,
    /// The pages of a physically scattered mapping (an IOMMU coherent buffer): the
    /// oracle watches these instead of `[phys, phys+size)`.
    pub pages: Option<Vec<u64>>,
    /// Text for the history ("dma_map_single TO_DEVICE").
    pub what: std::borrow::Cow<'static, str>,
    /// An allocation the CPU owns first (its call and the sync that hands it to the
    /// device), instead of a mapping the device owns from the start.
    pub cpu_first: Option<CpuFirst>,
    /// The dma-buf (id) an exporter mapped for an importer: the CPU hands it over
    /// with `DMA_BUF_IOCTL_SYNC`, which the messages name; and how that exporter
    /// syncs.
    pub dmabuf: Option<(u64, DmaBufSync)>,
    /// Mapped with `DMA_ATTR_SKIP_CPU_SYNC`: dma-debug does not complain when its
    /// first cache line is another mapping's (`add_dma_entry`).
    pub skip_cpu_sync: bool,
}

/// How the exporter of a dma-buf keeps an importer's mapping in sync with the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaBufSync {
    /// The heaps: `DMA_BUF_IOCTL_SYNC` syncs every mapped attachment, so each
    /// importer mapping follows the ownership rules of a streaming mapping.
    Attachments,
    /// vb2-dma-sg: only the exporter's own mapping is synced (the same lines, so
    /// the data is right); the importer's mapping never changes hands, and only
    /// bytes that really are stale are reported.
    Exporter,
    /// vb2-dma-contig: no sync at all (coherent memory for the exporter); only
    /// stale bytes are reported, with a message saying no call can help.
    Nothing,
}

/// An allocation that starts out CPU-owned: the call that made it and the sync
/// that hands it to the device (for the messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFirst {
    /// "dma_alloc_noncoherent".
    pub alloc: &'static str,
    /// "dma_sync_single_for_device".
    pub sync: &'static str,
    /// The sync's arguments, for the help line: "dev, handle, size, dir".
    pub args: &'static str,
    /// A streaming map with `DMA_ATTR_SKIP_CPU_SYNC` rather than an allocation:
    /// what may be dirty is the CPU's earlier stores, not the allocation's zeros.
    pub skipped_sync: bool,
}

impl CpuFirst {
    /// "a dma_alloc_noncoherent buffer", for the messages.
    fn buffer(&self) -> String {
        if self.skipped_sync {
            "a buffer mapped with DMA_ATTR_SKIP_CPU_SYNC".into()
        } else {
            format!("a {} buffer", self.alloc)
        }
    }

    /// What the CPU caches may hold dirty.
    fn dirt(&self) -> &'static str {
        if self.skipped_sync {
            "lines the CPU dirtied before the map"
        } else {
            "the allocation's zeros"
        }
    }

    /// How the dirty lines got there.
    fn how(&self) -> String {
        if self.skipped_sync {
            format!(
                "{} left the lines the CPU had dirtied in the cache",
                self.alloc
            )
        } else if self.alloc == "dma_alloc_noncoherent" {
            // Linux 6.12 dma_direct_alloc_pages (kernel/dma/direct.c) and
            // dma_common_alloc_pages (kernel/dma/ops_helpers.c) memset the pages
            // through the cacheable linear map and clean nothing.
            format!(
                "{} zeroed the buffer through the cache and cleaned nothing (dma_direct_alloc_pages / dma_common_alloc_pages: memset, no cache maintenance)",
                self.alloc
            )
        } else {
            format!("{} zeroed the buffer through the cache", self.alloc)
        }
    }

    /// The mapping's direction, as the message's last bracket says it.
    fn dir_tag(&self) -> &'static str {
        if self.skipped_sync {
            "mapped with"
        } else {
            "allocated for"
        }
    }
}

/// `dma_alloc_noncoherent`'s hand-over.
const NONCOHERENT_FIRST: CpuFirst = CpuFirst {
    alloc: "dma_alloc_noncoherent",
    sync: "dma_sync_single_for_device",
    args: "dev, handle, size, dir",
    skipped_sync: false,
};

/// A streaming map with `DMA_ATTR_SKIP_CPU_SYNC`: the driver does the cache
/// maintenance, and until its first sync for the device the map did none.
pub const SKIP_CPU_SYNC_FIRST: CpuFirst = CpuFirst {
    alloc: "a map with DMA_ATTR_SKIP_CPU_SYNC",
    sync: "dma_sync_single_for_device",
    args: "dev, addr, size, dir",
    skipped_sync: true,
};

impl NewMapping {
    /// A mapping of `[phys, phys+size)` at `dev_addr` for device `dev`, with no
    /// allocation, bounce buffer or page list known; the builders below add them.
    pub fn new(
        dev: usize,
        dev_name: std::sync::Arc<str>,
        dev_addr: u64,
        size: u64,
        phys: u64,
        dir: DmaDirection,
        kind: MapKind,
    ) -> NewMapping {
        NewMapping {
            dev,
            dev_name,
            dev_addr,
            size,
            phys,
            dir,
            kind,
            buffer: None,
            bounce: None,
            pages: None,
            what: std::borrow::Cow::Borrowed(""),
            cpu_first: None,
            dmabuf: None,
            skip_cpu_sync: false,
        }
    }

    /// An allocation the CPU owns until `first.sync` hands it to the device.
    pub fn cpu_first(mut self, first: CpuFirst) -> NewMapping {
        self.cpu_first = Some(first);
        self
    }

    /// The allocation the mapping lies in.
    pub fn buffer(mut self, b: Option<BufferRef>) -> NewMapping {
        self.buffer = b;
        self
    }

    /// The swiotlb bounce buffer the device really uses.
    pub fn bounce(mut self, b: Option<u64>) -> NewMapping {
        self.bounce = b;
        self
    }

    /// The pages of a physically scattered mapping.
    pub fn pages(mut self, p: Option<Vec<u64>>) -> NewMapping {
        self.pages = p;
        self
    }

    /// Made with `DMA_ATTR_SKIP_CPU_SYNC`.
    pub fn skip_cpu_sync(mut self, skip: bool) -> NewMapping {
        self.skip_cpu_sync = skip;
        self
    }

    /// The dma-buf an exporter mapped this for, if any.
    pub fn dmabuf(mut self, d: Option<(u64, DmaBufSync)>) -> NewMapping {
        self.dmabuf = d;
        self
    }

    /// The history's text for the call.
    pub fn what(mut self, w: impl Into<std::borrow::Cow<'static, str>>) -> NewMapping {
        self.what = w.into();
        self
    }
}

struct Entry {
    dev: usize,
    dev_name: std::sync::Arc<str>,
    dev_addr: u64,
    size: u64,
    phys: u64,
    dir: DmaDirection,
    kind: MapKind,
    checked: bool,
    device_owns: bool,
    /// The device has owned the buffer at least once (a map, or a sync for the
    /// device after `dma_alloc_noncoherent`).
    handed_over: bool,
    /// The device wrote the buffer before it was ever handed over
    /// (`dma_alloc_noncoherent` without the first sync for the device).
    dev_wrote_unsynced: bool,
    /// The allocation starts out CPU-owned (`dma_alloc_noncoherent`,
    /// `dma_alloc_noncontiguous`).
    cpu_first: Option<CpuFirst>,
    /// A dirty CPU line was written back over the device's bytes (reported).
    clobbered: bool,
    /// CPU stores since the last hand-over to the device (offsets).
    cpu_dirty: RangeSet,
    /// The last change of owner: what did it, at which line.
    owner_since: (Handover, u32),
    /// The first of the stores in `cpu_dirty`: its line, and the change of owner
    /// it came after (to tell the sequence that lost them).
    dirty_from: Option<(u32, Handover, u32)>,
    /// CPU stores made while the device owned the buffer (offsets).
    owned_writes: RangeSet,
    /// Device writes since the last hand-over to the CPU (offsets).
    dev_written: RangeSet,
    history: Vec<HistoryEvent>,
    /// Events left out of `history` (it keeps its first and latest ones).
    skipped: u64,
    uncached_read_bytes: u64,
    uncached_read_ps: u64,
    /// The last device transfer in the history, to merge its pages into one event:
    /// (history index, line, write, first bus address, bytes so far).
    last_dev: Option<(usize, u32, bool, u64, u64)>,
    /// The last event, when it tells of background write-backs: (first line's
    /// physical address, lines), so that a sweep is one event, not one per line.
    last_wb: Option<(u64, u64)>,
    /// The last event, when it tells of CPU stores: (first offset, bytes, made while
    /// the device owned the mapping), so that one store call is one event, not one
    /// per page.
    last_cpu: Option<(u64, u64, bool)>,
    /// The allocation the mapping lies in, if known.
    buffer: Option<u64>,
    /// When that allocation was freed while still mapped: (time ns, line).
    freed: Option<(u64, u32)>,
    /// The swiotlb slots the device really uses, when the mapping bounced: device
    /// accesses there stand for the buffer bytes at the same offset.
    bounce: Option<u64>,
    /// The frames of a physically scattered mapping, watched one by one.
    pages: Option<Vec<u64>>,
    /// Its physically contiguous runs (phys, offset, len), sorted by phys; empty for
    /// a contiguous mapping.
    runs: Vec<(u64, u64, u64)>,
    /// The map event, rendered into the history only when someone reads it.
    map_event: Option<MapEvent>,
    /// The dma-buf an exporter mapped this for (see `check::dmabuf`).
    dmabuf: Option<u64>,
    /// How its exporter syncs (see `DmaBufSync`).
    dmabuf_sync: Option<DmaBufSync>,
}

/// What last changed a streaming mapping's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// The map or allocation.
    Map,
    /// A sync for the device.
    ForDevice,
    /// A sync for the CPU.
    ForCpu,
}

/// A map event whose text is built lazily (most mappings never appear in a finding).
#[derive(Debug, Clone)]
struct MapEvent {
    idx: usize,
    what: std::borrow::Cow<'static, str>,
    dev_addr: u64,
    phys: u64,
    size: u64,
    bounce: Option<u64>,
}

impl MapEvent {
    fn fill(&self, h: &mut [HistoryEvent]) {
        if let Some(ev) = h.get_mut(self.idx) {
            let via = self.bounce.map_or(String::new(), |b| {
                format!(" [bounced: swiotlb slots at phys={b:#x}]")
            });
            // The bus address the map returned, then physical ones, labelled.
            ev.event = format!(
                "{} → {:#x} [phys={:#x}] [size={}]{via}",
                self.what, self.dev_addr, self.phys, self.size
            )
            .into();
        }
    }
}

const HISTORY_MAX: usize = 48;

/// A hash of the device and the script lines of a history's events, leaving out what the machine
/// did on its own (prefetches, write-backs: they differ from one buffer to the next
/// by chance): two findings with the same id, line and story lines are one mistake
/// repeated.
fn history_lines(device: Option<&str>, h: &[HistoryEvent]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    device.hash(&mut hasher);
    let chance = |e: &HistoryEvent| {
        e.line == 0 || e.event.ends_with("(background)") || e.event.contains("written back")
    };
    for e in h.iter().filter(|e| !chance(e)) {
        e.line.hash(&mut hasher);
    }
    hasher.finish()
}

/// The physically contiguous runs `(phys, offset, len)` of a mapping of `size`
/// bytes over the frames `pfns`, in order, sorted by `phys` (empty when the frames
/// are one run: the mapping is then simply `[phys, phys + size)`).
fn scattered_runs(pfns: &[u64], size: u64) -> Vec<(u64, u64, u64)> {
    let merged = crate::report::visual::runs_of(pfns.iter().copied());
    if merged.len() <= 1 {
        return Vec::new();
    }
    let mut off = 0;
    let mut runs: Vec<(u64, u64, u64)> = Vec::with_capacity(merged.len());
    for (pa, len) in merged {
        let len = len.min(size.saturating_sub(off));
        if len == 0 {
            break;
        }
        runs.push((pa, off, len));
        off += len;
    }
    runs.sort_unstable();
    runs
}

impl Entry {
    /// The exporter's CPU-access syncs do nothing (vb2-dma-contig).
    fn dmabuf_syncless(&self) -> bool {
        self.dmabuf_sync == Some(DmaBufSync::Nothing)
    }

    /// The exporter, not this mapping, carries the ownership (vb2's exporters):
    /// CPU and device accesses are checked against the truth only.
    fn exporter_synced(&self) -> bool {
        self.dmabuf_sync
            .is_some_and(|d| d != DmaBufSync::Attachments)
    }

    fn push(&mut self, ctx: Ctx, event: impl Into<Text>) {
        self.last_wb = None;
        self.last_cpu = None;
        if let Some((i, _, write, start, n)) = self.last_dev.take() {
            let verb = if write { "wrote" } else { "read" };
            if let Some(ev) = self.history.get_mut(i) {
                ev.event = format!("{} {verb} {n} bytes at {start:#x}", self.dev_name).into();
            }
        }
        if self.history.len() >= HISTORY_MAX {
            // Keep the first events (allocation, map), a marker that says how many
            // were left out, and the most recent ones.
            // Two removals: two events the first time (one slot goes to the
            // marker), then the old marker and one event.
            self.history.remove(8);
            self.history.remove(8);
            self.skipped += if self.skipped == 0 { 2 } else { 1 };
            self.history.insert(
                8,
                HistoryEvent {
                    time_ns: ctx.time_ns,
                    line: 0,
                    event: format!("… {} earlier events skipped …", self.skipped).into(),
                },
            );
        }
        self.history.push(HistoryEvent {
            time_ns: ctx.time_ns,
            line: ctx.line,
            event: event.into(),
        });
    }

    /// A dirty line written back in the background while the device owns the
    /// mapping: one event, or one more line in the event just before when that told
    /// of write-backs at the same moment (an eviction sweep).
    fn note_writeback(&mut self, ctx: Ctx, at: u64) {
        let same = self
            .history
            .last()
            .is_some_and(|ev| ev.time_ns == ctx.time_ns && ev.line == ctx.line);
        match self.last_wb {
            Some((first, n)) if same => {
                let ev = self.history.last_mut().expect("checked above");
                ev.event = format!(
                    "{} dirty CPU lines, the first at phys {first:#x}, were written back to DRAM (eviction or maintenance)",
                    n + 1
                )
                .into();
                self.last_wb = Some((first, n + 1));
            }
            _ => {
                self.push(
                    ctx,
                    format!("a dirty CPU line at phys {at:#x} was written back to DRAM (eviction or maintenance)"),
                );
                self.last_wb = Some((at, 1));
            }
        }
    }

    /// CPU stores of `len` bytes at offset `off`: one event, or the event just
    /// before grown when it told of the stores right below on the same script line.
    fn note_cpu_write(&mut self, ctx: Ctx, off: u64, len: u64) {
        let owned = self.device_owns;
        let text = |start: u64, n: u64| -> Text {
            if owned {
                format!("CPU wrote {n} bytes at +{start:#x} while the device owns the buffer")
                    .into()
            } else {
                format!("CPU wrote {n} bytes at +{start:#x}").into()
            }
        };
        let same_line = self.history.last().is_some_and(|ev| ev.line == ctx.line);
        match self.last_cpu {
            Some((start, n, o)) if same_line && o == owned && start + n == off => {
                self.history.last_mut().expect("checked above").event = text(start, n + len);
                self.last_cpu = Some((start, n + len, owned));
            }
            _ => {
                self.push(ctx, text(off, len));
                self.last_cpu = Some((off, len, owned));
            }
        }
    }

    /// The physical address of byte `off` of the mapping.
    fn phys_at(&self, off: u64) -> u64 {
        self.runs
            .iter()
            .find(|r| off >= r.1 && off < r.1 + r.2)
            .map_or(self.phys + off, |r| r.0 + (off - r.1))
    }

    /// The history with the last device transfer's event brought up to date.
    fn snapshot(&self) -> Vec<HistoryEvent> {
        let mut h = self.history.clone();
        if let Some(m) = &self.map_event {
            m.fill(&mut h);
        }
        if let Some((i, _, write, start, n)) = self.last_dev {
            if let Some(ev) = h.get_mut(i) {
                let verb = if write { "wrote" } else { "read" };
                ev.event = format!("{} {verb} {n} bytes at {start:#x}", self.dev_name).into();
            }
        }
        h
    }

    /// `" at line N"`: where the mapping was made (for messages), or nothing when
    /// the machine made it.
    fn mapped_at(&self) -> String {
        self.map_event
            .as_ref()
            .and_then(|m| self.history.get(m.idx))
            .filter(|ev| ev.line != 0)
            .map_or(String::new(), |ev| format!(" made at line {}", ev.line))
    }

    fn describe(&self) -> String {
        format!(
            "[device address={:#x}] [size={} bytes] [mapped with {}] [mapped as {}]",
            self.dev_addr,
            self.size,
            self.dir.name(),
            self.kind.name()
        )
    }
}

impl Indexed for Entry {
    fn dev(&self) -> usize {
        self.dev
    }
    fn dev_addr(&self) -> u64 {
        self.dev_addr
    }
    fn phys(&self) -> u64 {
        self.phys
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn runs(&self) -> &[(u64, u64, u64)] {
        &self.runs
    }
}

/// The fix for `cpu-write-discarded`.
const DISCARD_HELP: &str = "after the CPU modifies a DMA_FROM_DEVICE or DMA_BIDIRECTIONAL buffer, call dma_sync_single_for_device before the next sync for the CPU or the unmap (and store only between dma_sync_single_for_cpu and that sync); or map it DMA_TO_DEVICE if the device only reads it";

/// Most live mappings a run may hold (a driver that never unmaps ends the run
/// instead of eating host memory); dma-debug preallocates 65536 entries.
pub const MAX_LIVE_MAPPINGS: usize = 1 << 18;

/// Most findings one run keeps; later ones are only counted.
pub const MAX_FINDINGS: usize = 10_000;

/// A device reached a frame that holds, or held, a user page.
#[derive(Debug, Clone)]
pub enum UserHit {
    /// A pinned user page: a valid target for DMA programmed from its physical address.
    Pinned,
    /// A user page that is not pinned: it may move at any time.
    Unpinned(String),
    /// The frame held a user page that has moved or gone since: what it was, when
    /// it left (ns), and that event for the history.
    Gone(String, u64, String),
}

/// A device access, as the device layer reports it to the sanitizer.
#[derive(Debug)]
pub struct DeviceAccess<'a> {
    /// Device index.
    pub dev: usize,
    /// Device name.
    pub dev_name: &'a str,
    /// Bus address the driver programmed.
    pub bus: u64,
    /// Physical address the access reached (`None`: bus error).
    pub pa: Option<u64>,
    /// Bytes read (what the device got) or written.
    pub data: &'a [u8],
    /// True for a device write to memory.
    pub write: bool,
    /// The live buffer whose CPU virtual address `bus` is, if any: its description
    /// and the physical address the device should have used.
    pub va_of: Option<(String, u64)>,
    /// Address bits the device drives; a bus address above them is cut short.
    pub dma_bits: u32,
    /// When no mapping covers the access: the user page at (or formerly at) the
    /// frame the device reached.
    pub user: Option<UserHit>,
    /// The device sits behind a translating IOMMU domain.
    pub translated: bool,
    /// The IOMMU refused the access (it never reached memory).
    pub fault: Option<crate::hw::iommu::FaultKind>,
    /// The process a no-IOMMU VFIO container gave the device to, and the process
    /// whose page the access reached (if it reached a user page).
    pub noiommu: Option<(u32, Option<u32>)>,
    /// For a write of a whole watched page that reached DRAM: DRAM's frame, which
    /// holds exactly `data`, for the oracle to share instead of copying.
    pub frame: Option<crate::hw::dram::SharedFrame>,
    /// The live mapping that covers the access, when the caller already asked
    /// [`Sanitizer::covering`] for it (`Some(None)`: none does); `None` makes
    /// [`Sanitizer::device_access`] look it up.
    pub cover: Option<Option<u64>>,
}

/// An unmap the sanitizer remembers, to tell a device's use of a stale address.
#[derive(Debug, Clone)]
struct RecentUnmap {
    dev: usize,
    phys: u64,
    dev_addr: u64,
    size: u64,
    time_ns: u64,
    line: u32,
    history: Vec<HistoryEvent>,
    map_event: Option<MapEvent>,
    /// The allocation the mapping lay in, and when it was freed since: (ns, line).
    buffer: Option<u64>,
    freed: Option<(u64, u32)>,
}

/// A timeline event the sanitizer saw: (track, what, kind, time in ns, script line).
pub type CheckEvent = (String, String, &'static str, u64, u32);

/// Unmaps remembered per run (most recent first out).
const RECENT_UNMAPS: usize = 64;

/// The sanitizer's whole state.
pub struct Sanitizer {
    entries: Entries<Entry>,
    next_id: u64,
    /// The coherent truth of watched pages.
    pub oracle: Oracle,
    findings: Vec<Finding>,
    seen: BTreeMap<(&'static str, u64, u32), usize>,
    /// Findings by (id, line, hash of their history's lines): the same mistake
    /// on another chunk or packet.
    groups: BTreeMap<(&'static str, u32, u64), usize>,
    /// The script line of the current call and, when it is inside script
    /// functions, the lines of the calls that led there (innermost first).
    pub callers: (u32, Vec<u32>),
    /// The current call is inside a script function (or a callback, or an imported
    /// module) but the engine keeps no call stack, so `callers` has no chain.
    pub callers_untracked: bool,
    /// A finding was made while `callers_untracked` was set: its `called_from` is
    /// missing, and the run must be repeated with the call stack kept.
    pub call_chain_missing: bool,
    held: crate::fasthash::PageMap<(u64, u64)>,
    allowed: BTreeSet<String>,
    /// Findings not kept because [`MAX_FINDINGS`] were already recorded.
    pub suppressed: u64,
    recent_unmaps: std::collections::VecDeque<RecentUnmap>,
    line: u64,
    uncached_fill_ps: u64,
    /// Map, unmap, sync and background events for the timeline, when a run records
    /// one: (track, what, kind, time in ns, script line).
    pub events: Option<Vec<CheckEvent>>,
    /// Blocks freed back to their `dma_pool` (their page stays mapped).
    pool_blocks: pool::PoolBlocks,
}

impl Sanitizer {
    /// An empty sanitizer for a machine with `line`-byte cache lines; `fill_ps` is the
    /// cost of a cached line fill, used to price the alternative to uncached reads.
    pub fn new(line: u64, fill_ps: u64) -> Sanitizer {
        Sanitizer {
            entries: Entries::new(),
            next_id: 1,
            oracle: Oracle::default(),
            findings: Vec::new(),
            seen: BTreeMap::new(),
            groups: BTreeMap::new(),
            callers: (0, Vec::new()),
            callers_untracked: false,
            call_chain_missing: false,
            held: Default::default(),
            allowed: BTreeSet::new(),
            suppressed: 0,
            recent_unmaps: std::collections::VecDeque::new(),
            line,
            uncached_fill_ps: fill_ps,
            events: None,
            pool_blocks: pool::PoolBlocks::default(),
        }
    }

    fn event(&mut self, track: &str, what: impl FnOnce() -> String, cat: &'static str, ctx: Ctx) {
        if let Some(ev) = self.events.as_mut() {
            if ev.len() < crate::report::visual::MAX_EVENTS {
                ev.push((track.to_string(), what(), cat, ctx.time_ns, ctx.line));
            }
        }
    }

    /// The physical address behind device `dev`'s bus address `addr`: a live
    /// mapping's, or a recently unmapped one's. For reports.
    pub fn phys_for(&self, dev: usize, addr: u64) -> Option<u64> {
        let inside = |d: usize, a: u64, size: u64| d == dev && addr >= a && addr - a < size.max(1);
        self.entries
            .of_device(Some(dev))
            .into_iter()
            .map(|id| self.entries.get(id))
            .find(|e| inside(e.dev, e.dev_addr, e.size))
            .map(|e| e.phys_at(addr - e.dev_addr))
            .or_else(|| {
                self.recent_unmaps
                    .iter()
                    .rev()
                    .find(|u| inside(u.dev, u.dev_addr, u.size))
                    .map(|u| u.phys + (addr - u.dev_addr))
            })
    }

    /// Findings so far, in the order they happened.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Silences a finding id for the rest of the run (`allow(id)` in scripts).
    pub fn allow(&mut self, id: &str) {
        self.allowed.insert(id.to_string());
    }

    /// Number of live mappings (all devices).
    pub fn live_mappings(&self) -> usize {
        self.entries.len()
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        id: &'static str,
        key: u64,
        manifested: Option<bool>,
        device: Option<&str>,
        addr: Option<u64>,
        len: Option<u64>,
        ctx: Ctx,
        message: String,
        help: String,
        history: Vec<HistoryEvent>,
    ) {
        if self.allowed.contains(id) {
            return;
        }
        // The same mistake again: on the same mapping (a loop), or on another
        // chunk or packet whose story has the same lines (a loop over a ring). One
        // finding counts them; when this occurrence is the one that bit, the
        // finding describes it.
        let group = (id, ctx.line, history_lines(device, &history));
        let same = self.seen.get(&(id, key, ctx.line)).copied();
        let again = same.or_else(|| self.groups.get(&group).copied());
        if let Some(i) = again {
            let f = &mut self.findings[i];
            if same.is_none() {
                // Another mapping (chunk, packet, buffer) with the same mistake.
                self.seen.insert((id, key, ctx.line), i);
                f.count += 1;
            }
            if manifested == Some(true) && f.manifested != Some(true) {
                f.manifested = Some(true);
                f.message = message;
                f.history = history;
                f.time_ns = ctx.time_ns;
                f.addr = addr;
                f.len = len;
            }
            return;
        }
        if self.findings.len() >= MAX_FINDINGS {
            // A loop making a new mistake each time: keep the host's memory bounded.
            self.suppressed += 1;
            return;
        }
        self.seen.insert((id, key, ctx.line), self.findings.len());
        self.groups.insert(group, self.findings.len());
        let called_from = if ctx.line != 0 && ctx.line == self.callers.0 {
            self.call_chain_missing |= self.callers_untracked;
            self.callers.1.clone()
        } else {
            Vec::new()
        };
        self.findings.push(Finding {
            id,
            severity: finding::severity_of(id),
            manifested,
            device: device.map(str::to_string),
            addr,
            len,
            time_ns: ctx.time_ns,
            line: ctx.line,
            called_from,
            count: 1,
            message,
            help,
            history,
        });
    }

    /// Reports a finding about a device access: the device, bus address and length
    /// come from the access itself.
    /// The key a finding about entry `id` is kept under: the entry, or for the
    /// entries of a dma-buf mapping (one per scatterlist entry, one per chunk of
    /// the system heap) the dma-buf, so that one missing `DMA_BUF_IOCTL_SYNC` is one
    /// finding per script line and not one per chunk.
    fn group_key(&self, id: u64) -> u64 {
        self.entries
            .try_get(id)
            .and_then(|e| e.dmabuf)
            .map_or(id, |n| DMABUF_KEYS | n)
    }

    #[allow(clippy::too_many_arguments)]
    fn report_access(
        &mut self,
        id: &'static str,
        key: u64,
        manifested: Option<bool>,
        a: &DeviceAccess<'_>,
        ctx: Ctx,
        message: String,
        help: String,
        history: Vec<HistoryEvent>,
    ) {
        let len = a.data.len() as u64;
        self.report(
            id,
            key,
            manifested,
            Some(a.dev_name),
            Some(a.bus),
            Some(len),
            ctx,
            message,
            help,
            history,
        );
    }

    /// Reports a finding that no mapping entry carries (used by the kernel for
    /// resource and misuse findings).
    #[allow(clippy::too_many_arguments)]
    pub fn report_plain(
        &mut self,
        id: &'static str,
        manifested: Option<bool>,
        device: Option<&str>,
        addr: Option<u64>,
        len: Option<u64>,
        ctx: Ctx,
        message: String,
        help: String,
        history: Vec<HistoryEvent>,
    ) {
        self.report(
            id,
            addr.unwrap_or(0),
            manifested,
            device,
            addr,
            len,
            ctx,
            message,
            help,
            history,
        );
    }

    /// `debug_dma_map_*` / `debug_dma_alloc_coherent`: records a mapping.
    pub fn map(&mut self, hw: &mut Machine, ctx: Ctx, m: NewMapping) -> u64 {
        self.event(
            &m.dev_name,
            || {
                format!(
                    "{} {:#x} ({} bytes, {})",
                    m.what,
                    m.dev_addr,
                    m.size,
                    m.dir.const_name()
                )
            },
            "map",
            ctx,
        );
        let buffer_id = m.buffer.as_ref().map(|b| b.id);
        let id = self.next_id;
        self.next_id += 1;
        match &m.pages {
            Some(pfns) => {
                for &p in pfns {
                    self.oracle
                        .hold(hw, p << crate::config::PAGE_SHIFT, crate::config::PAGE_SIZE);
                }
            }
            // An MMIO range holds no RAM to keep the truth of.
            None if m.kind == MapKind::Resource => {}
            None => self.oracle.hold(hw, m.phys, m.size),
        }
        let mut history = Vec::with_capacity(4);
        if let Some(b) = m.buffer {
            if !self.held.contains_key(&b.id) {
                self.oracle.hold(hw, b.pa, b.len);
                self.held.insert(b.id, (b.pa, b.len));
            }
            history.push(b.alloc);
        }
        // dma-debug's active-cacheline check: the first line of a mapping the device
        // may write must not be the first line of another such mapping.
        // A bounced mapping's device writes land in swiotlb slots, never in the
        // buffer's lines, so it cannot clash (dma-debug skips the check whenever
        // kmalloc bouncing is possible; this is the precise version).
        let tracked =
            m.dir != DmaDirection::ToDevice && m.kind != MapKind::Coherent && m.bounce.is_none();
        if tracked {
            let line = m.phys / self.line;
            let clash = self
                .entries
                .with_first_line(line)
                .map(|cid| self.entries.get(cid))
                .filter(|_| !m.skip_cpu_sync);
            if let Some(e) = clash {
                let msg = format!(
                    "cacheline tracking EEXIST, overlapping mappings aren't supported [cacheline={:#x}] [first mapping: {}]",
                    line * self.line,
                    e.describe()
                );
                let hist = e.snapshot();
                self.report(
                    "overlapping-mapping",
                    id,
                    None,
                    Some(&m.dev_name),
                    Some(m.dev_addr),
                    Some(m.size),
                    ctx,
                    msg,
                    "give each buffer the device writes its own cache lines: allocate them separately \
                     (kmalloc aligns to dma_get_cache_alignment(), or bounces a small buffer it \
                     cannot align) instead of mapping parts of one buffer"
                        .into(),
                    hist,
                );
            }
        }
        let cpu_first = m
            .cpu_first
            .or_else(|| (m.kind == MapKind::Noncoherent).then_some(NONCOHERENT_FIRST));
        let alloc = m.kind == MapKind::Coherent || cpu_first.is_some();
        // A map (not an allocation) that skipped its sync still returns an address
        // to check.
        let mapped = cpu_first.is_some_and(|f| f.skipped_sync);
        let mut e = Entry {
            dev: m.dev,
            dev_name: m.dev_name,
            dev_addr: m.dev_addr,
            size: m.size,
            phys: m.phys,
            dir: m.dir,
            kind: m.kind,
            // Allocations return NULL on failure: nothing for dma_mapping_error.
            checked: alloc && !mapped,
            // dma_alloc_noncoherent hands the memory to the CPU first: the driver
            // fills it and syncs for the device (Documentation/core-api/dma-api.rst).
            device_owns: !alloc,
            handed_over: !alloc,
            dev_wrote_unsynced: false,
            cpu_first,
            clobbered: false,
            cpu_dirty: RangeSet::default(),
            owner_since: (Handover::Map, ctx.line),
            dirty_from: None,
            owned_writes: RangeSet::default(),
            dev_written: RangeSet::default(),
            history,
            skipped: 0,
            uncached_read_bytes: 0,
            uncached_read_ps: 0,
            last_dev: None,
            last_wb: None,
            last_cpu: None,
            buffer: buffer_id,
            freed: None,
            bounce: m.bounce,
            runs: m
                .pages
                .as_deref()
                .map_or_else(Vec::new, |p| scattered_runs(p, m.size)),
            pages: m.pages,
            map_event: None,
            dmabuf: m.dmabuf.map(|d| d.0),
            dmabuf_sync: m.dmabuf.map(|d| d.1),
        };
        e.push(ctx, Text::EMPTY);
        e.map_event = Some(MapEvent {
            idx: e.history.len() - 1,
            what: m.what,
            dev_addr: e.dev_addr,
            phys: e.phys,
            size: e.size,
            bounce: e.bounce,
        });
        let first_line = tracked.then(|| e.phys / self.line);
        self.entries.insert(id, e, first_line);
        id
    }

    fn release_entry(oracle: &mut Oracle, hw: &mut Machine, e: &Entry) {
        if e.kind == MapKind::Resource {
            return;
        }
        match &e.pages {
            Some(pfns) => {
                for &p in pfns {
                    oracle.release(hw, p << crate::config::PAGE_SHIFT, crate::config::PAGE_SIZE);
                }
            }
            None => oracle.release(hw, e.phys, e.size),
        }
    }

    /// `debug_dma_mapping_error`: marks the first unchecked exact match as checked.
    pub fn mapping_error(&mut self, dev: usize, addr: u64) {
        if let Some(id) = self.entries.exact_where(dev, addr, |e| !e.checked) {
            self.entries.get_mut(id).checked = true;
        }
    }

    /// `check_unmap`: the unmap or free of `[addr, addr+size)` by `dev` with `dir`,
    /// called after the kernel did the unmap's cache work. With `skip_cpu_sync`
    /// (`DMA_ATTR_SKIP_CPU_SYNC`) the unmap synced nothing, so it discarded no CPU
    /// stores.
    #[allow(clippy::too_many_arguments)]
    pub fn unmap(
        &mut self,
        hw: &mut Machine,
        ctx: Ctx,
        dev: usize,
        dev_name: &str,
        addr: u64,
        size: u64,
        dir: DmaDirection,
        kind: MapKind,
        skip_cpu_sync: bool,
    ) {
        let found = self.entries.exact(dev, addr);
        let what = match kind {
            MapKind::Coherent => "dma_free_coherent",
            MapKind::Noncoherent => "dma_free_noncoherent",
            MapKind::Resource => "dma_unmap_resource",
            _ => "unmap",
        };
        let Some(id) = found else {
            let (msg, help) = if addr == DMA_MAPPING_ERROR {
                (
                    "device driver tries to free an invalid DMA memory address".to_string(),
                    "check the map result with dma_mapping_error() and do not unmap a failed mapping".to_string(),
                )
            } else {
                (
                    format!(
                        "device driver tries to free DMA memory it has not allocated [device address={addr:#x}] [size={size} bytes]"
                    ),
                    "unmap each mapping exactly once, with the address the map call returned".to_string(),
                )
            };
            let id = if kind == MapKind::Coherent {
                "coherent-free-mismatch"
            } else {
                "unmap-unknown"
            };
            self.report(
                id,
                addr,
                None,
                Some(dev_name),
                Some(addr),
                Some(size),
                ctx,
                msg,
                help,
                vec![],
            );
            return;
        };
        let e = self.entries.remove(id).expect("entry found above");
        // CPU stores since the last hand-over to the device, on a mapping the unmap
        // syncs for the CPU: its invalidate (or a bounce copy back) discards them.
        let discards = !skip_cpu_sync
            && e.kind != MapKind::Coherent
            && e.dir != DmaDirection::ToDevice
            && !e.cpu_dirty.is_empty();
        let clean = e.size == size
            && e.kind == kind
            && (e.dir == dir || kind == MapKind::Coherent)
            && e.checked
            && e.owned_writes.is_empty()
            && (!e.dev_wrote_unsynced || e.clobbered)
            && !discards;
        if clean {
            // The common case: nothing to report, so no history to build.
            self.uncached_check(ctx, id, &e);
            Self::release_entry(&mut self.oracle, hw, &e);
            self.remember_unmap(ctx, e);
            return;
        }
        let mut hist = e.snapshot();
        hist.push(HistoryEvent {
            time_ns: ctx.time_ns,
            line: ctx.line,
            event: format!("{what} {:#x} size={size} {}", addr, dir.name()).into(),
        });
        if e.size != size {
            let id_s = if kind == MapKind::Coherent {
                "coherent-free-mismatch"
            } else {
                "unmap-size-mismatch"
            };
            self.report(
                id_s,
                id,
                None,
                Some(dev_name),
                Some(addr),
                Some(size),
                ctx,
                format!("device driver frees DMA memory with different size [device address={addr:#x}] [map size={} bytes] [unmap size={size} bytes]", e.size),
                format!("pass the size that was mapped ({} bytes) to the unmap", e.size),
                hist.clone(),
            );
        }
        if e.kind != kind {
            self.report(
                "unmap-type-mismatch",
                id,
                None,
                Some(dev_name),
                Some(addr),
                Some(size),
                ctx,
                format!("device driver frees DMA memory with wrong function [device address={addr:#x}] [size={size} bytes] [mapped as {}] [unmapped as {}]", e.kind.name(), kind.name()),
                format!("undo a {} mapping with its own unmap function", e.kind.name()),
                hist.clone(),
            );
        }
        if e.dir != dir && kind != MapKind::Coherent {
            self.report(
                "unmap-dir-mismatch",
                id,
                None,
                Some(dev_name),
                Some(addr),
                Some(size),
                ctx,
                format!("device driver frees DMA memory with different direction [device address={addr:#x}] [size={size} bytes] [mapped with {}] [unmapped with {}]", e.dir.name(), dir.name()),
                format!("unmap with the direction used to map ({})", e.dir.name()),
                hist.clone(),
            );
        }
        if !e.checked {
            self.report(
                "mapping-error-unchecked",
                id,
                None,
                Some(dev_name),
                Some(addr),
                Some(size),
                ctx,
                format!("device driver failed to check map error [device address={addr:#x}] [size={size} bytes] [mapped as {}]", e.kind.name()),
                "after every dma_map_*, test the result with dma_mapping_error(dev, addr) before giving it to the device".into(),
                hist.clone(),
            );
        }
        if discards {
            self.cpu_writes_discarded(hw, ctx, &e, hist.clone(), what);
        }
        if e.dev_wrote_unsynced && !e.clobbered {
            // No eviction happened to write the allocation's dirty zeros over the
            // device's bytes on this run; the missing hand-over is still a bug.
            let first = e.cpu_first.unwrap_or(NONCOHERENT_FIRST);
            self.report(
                "dirty-writeback-clobber",
                id,
                Some(false),
                Some(&e.dev_name),
                Some(e.dev_addr),
                Some(e.size),
                ctx,
                format!(
                    "{} wrote {} that was never handed to it with {}: {} could still be dirty in the CPU cache, and an eviction before the sync for the CPU writes them back over the device's bytes [device address={:#x}] [{} {}]",
                    e.dev_name, first.buffer(), first.sync, first.dirt(), e.dev_addr, first.dir_tag(), e.dir.name()
                ),
                format!("call {}({}) after {}, and after every CPU write, before the device uses the buffer: it cleans the dirty lines", first.sync, first.args, first.alloc),
                hist.clone(),
            );
        }
        if !e.owned_writes.is_empty() {
            self.cpu_wrote_device_owned(hw, ctx, &e, hist);
        }
        self.uncached_check(ctx, id, &e);
        Self::release_entry(&mut self.oracle, hw, &e);
        self.remember_unmap(ctx, e);
    }

    /// Keeps an unmapped entry's address and history (moved, not copied) so that a
    /// later device access to it can be told apart from a random one.
    fn remember_unmap(&mut self, ctx: Ctx, e: Box<Entry>) {
        if self.recent_unmaps.len() >= RECENT_UNMAPS {
            self.recent_unmaps.pop_front();
        }
        self.event(
            &e.dev_name,
            || format!("unmap {:#x} ({} bytes)", e.dev_addr, e.size),
            "unmap",
            ctx,
        );
        self.recent_unmaps.push_back(RecentUnmap {
            dev: e.dev,
            phys: e.phys,
            dev_addr: e.dev_addr,
            size: e.size,
            time_ns: ctx.time_ns,
            line: ctx.line,
            history: e.history,
            map_event: e.map_event,
            buffer: e.buffer,
            freed: e.freed,
        });
    }

    /// `cpu-write-discarded` at an unmap: the CPU stored into a
    /// FROM_DEVICE/BIDIRECTIONAL mapping after it was last handed to the device and
    /// never handed it back, and the unmap syncs it for the CPU, which invalidates
    /// those lines or copies the bounce buffer over them. Manifested when the bytes
    /// are gone.
    fn cpu_writes_discarded(
        &mut self,
        hw: &Machine,
        ctx: Ctx,
        e: &Entry,
        hist: Vec<HistoryEvent>,
        by: &str,
    ) {
        let (msg, lost) = self.discard_message(hw, e, 0, e.size, by, ctx.line);
        self.report(
            "cpu-write-discarded",
            e.dev_addr,
            Some(lost > 0),
            Some(&e.dev_name),
            Some(e.dev_addr),
            Some(e.size),
            ctx,
            msg,
            DISCARD_HELP.into(),
            hist,
        );
    }

    /// The message of `cpu-write-discarded` for the stores in `[s, t)` of `e` that
    /// `by` at line `at` discards, naming the sequence that lost them (stored after a
    /// sync for the CPU, or while the device owned the mapping), and the bytes lost.
    fn discard_message(
        &self,
        hw: &Machine,
        e: &Entry,
        s: u64,
        t: u64,
        by: &str,
        at: u32,
    ) -> (String, u64) {
        let mut lost = 0;
        for &(a, b) in e.cpu_dirty.ranges() {
            let (x, y) = (a.max(s), b.min(t));
            if x < y {
                let mut now = vec![0u8; (y - x) as usize];
                hw.cpu_view(e.phys_at(x), &mut now);
                lost += self.oracle.diff(e.phys_at(x), &now, self.line).0;
            }
        }
        let n = e.cpu_dirty.overlap(s, t);
        let dir = e.dir.name();
        let stored = match e.dirty_from {
            Some((l, Handover::ForCpu, h)) => format!(
                "CPU stored {n} bytes into a {dir} mapping at line {l}, after the sync for the CPU at line {h}, and never handed them back with dma_sync_single_for_device"
            ),
            Some((l, Handover::ForDevice, h)) => format!(
                "CPU stored {n} bytes into a {dir} mapping at line {l} while {} owned it (after the sync for the device at line {h}, with no sync for the CPU first)",
                e.dev_name
            ),
            Some((l, Handover::Map, h)) => format!(
                "CPU stored {n} bytes into a {dir} mapping at line {l} while {} owned it (mapped at line {h}, with no sync for the CPU first)",
                e.dev_name
            ),
            None => format!("CPU stored {n} bytes into a {dir} mapping and never handed them back with dma_sync_single_for_device"),
        };
        (
            format!(
                "{stored}; {by} at line {at} synced it for the CPU, which invalidates those cache lines (or copies the bounce buffer over them) and discards the stores: {lost} bytes lost there [device address={:#x}]",
                e.dev_addr
            ),
            lost,
        )
    }

    fn cpu_wrote_device_owned(
        &mut self,
        hw: &Machine,
        ctx: Ctx,
        e: &Entry,
        hist: Vec<HistoryEvent>,
    ) {
        // Did the stores survive? Compare what the CPU would load now with the truth.
        let mut bytes = 0;
        for &(s, t) in e.owned_writes.ranges() {
            let mut now = vec![0u8; (t - s) as usize];
            hw.cpu_view(e.phys + s, &mut now);
            bytes += self.oracle.diff(e.phys + s, &now, self.line).0;
        }
        let n = e.owned_writes.overlap(0, e.size);
        if e.dir == DmaDirection::ToDevice {
            // No architecture invalidates a TO_DEVICE mapping at unmap and swiotlb
            // copies nothing back: the stores stay the CPU's (a device read of them
            // before a sync is stale-device-read, reported on its own).
            let (msg, help) = ownership::benign_unsynced_store(&e.dev_name, n, e.dev_addr);
            self.report(
                "cpu-access-benign",
                e.dev_addr,
                None,
                Some(&e.dev_name),
                Some(e.dev_addr),
                Some(e.size),
                ctx,
                msg,
                help,
                hist,
            );
            return;
        }
        self.report(
            "cpu-access-device-owned",
            e.dev_addr,
            Some(bytes > 0),
            Some(&e.dev_name),
            Some(e.dev_addr),
            Some(e.size),
            ctx,
            format!(
                "CPU stored {n} bytes into a buffer while {} owned it and never handed it back with a sync_for_device [device address={:#x}] [mapped with {}]",
                e.dev_name, e.dev_addr, e.dir.name()
            ),
            "write to a streaming buffer only before dma_map_* or between dma_sync_single_for_cpu and dma_sync_single_for_device".into(),
            hist,
        );
    }

    /// `check_sync`: a sync of `[addr, addr+size)`, called after the kernel's cache work.
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        hw: &Machine,
        ctx: Ctx,
        dev: usize,
        dev_name: &str,
        addr: u64,
        size: u64,
        dir: DmaDirection,
        for_cpu: bool,
        call: &str,
    ) {
        self.event(
            dev_name,
            || format!("{call} {addr:#x} ({size} bytes)"),
            "sync",
            ctx,
        );
        let found = self
            .entries
            .containing(dev, addr, None, |e| e.kind != MapKind::Coherent);
        let Some(id) = found else {
            self.report(
                "sync-unknown",
                addr,
                None,
                Some(dev_name),
                Some(addr),
                Some(size),
                ctx,
                format!("device driver tries to sync DMA memory it has not allocated [device address={addr:#x}] [size={size} bytes]"),
                "sync only addresses inside a live streaming mapping of this device".into(),
                vec![],
            );
            return;
        };
        let mut problems: Vec<(&'static str, String, String, Option<bool>)> = Vec::new();
        {
            let e = self.entries.get(id);
            if addr + size > e.dev_addr + e.size {
                problems.push((
                    "sync-out-of-bounds",
                    // kernel/dma/debug.c: check_sync finds no entry that contains a
                    // range running past the mapping's end (containing_match), so it
                    // says "not allocated"; its "outside allocated range" branch
                    // cannot fire.
                    format!("device driver tries to sync DMA memory it has not allocated [device address={addr:#x}] [size={size} bytes]"),
                    format!("keep the sync inside the mapping ({} bytes from {:#x})", e.size, e.dev_addr),
                    None,
                ));
            }
            if e.dir != DmaDirection::Bidirectional {
                if e.dir != dir {
                    problems.push((
                        "sync-dir-mismatch",
                        format!("device driver syncs DMA memory with different direction [device address={addr:#x}] [size={size} bytes] [mapped with {}] [synced with {}]", e.dir.name(), dir.name()),
                        match e.dmabuf {
                            Some(_) => dmabuf::sync_flags_help(e.dir),
                            None => format!("sync with the direction used to map ({})", e.dir.name()),
                        },
                        None,
                    ));
                } else if for_cpu
                    && e.dir != DmaDirection::FromDevice
                    && dir != DmaDirection::ToDevice
                {
                    problems.push((
                        "sync-dir-mismatch",
                        "device driver syncs device read-only DMA memory for cpu".into(),
                        "only DMA_FROM_DEVICE and DMA_BIDIRECTIONAL mappings need a sync for the CPU".into(),
                        None,
                    ));
                }
            }
        }
        let mut discarded = None;
        let hist = {
            let e = self.entries.get_mut(id);
            e.push(ctx, format!("{call} {addr:#x} size={size} {}", dir.name()));
            let (s, t) = (addr - e.dev_addr, (addr - e.dev_addr + size).min(e.size));
            if for_cpu {
                e.device_owns = false;
                e.dev_written.remove(s, t);
                e.owner_since = (Handover::ForCpu, ctx.line);
                // Stores not handed back to the device: this sync invalidates the
                // lines that hold them (or copies the bounce slots over them).
                if e.dir != DmaDirection::ToDevice
                    && e.dmabuf.is_none()
                    && e.cpu_dirty.overlap(s, t) > 0
                {
                    discarded = Some((s, t));
                }
            } else {
                e.device_owns = true;
                e.handed_over = true;
                e.owner_since = (Handover::ForDevice, ctx.line);
                e.cpu_dirty.remove(s, t);
                if e.cpu_dirty.is_empty() {
                    e.dirty_from = None;
                }
                let touched = e.owned_writes.overlap(s, t);
                if let (true, Some(n)) = (touched > 0, e.dmabuf) {
                    problems.push((
                        "cpu-access-device-owned",
                        dmabuf::store_device_owned(
                            n,
                            &e.dev_name,
                            touched,
                            e.dev_addr,
                            e.dir.name(),
                        ),
                        dmabuf::HELP.into(),
                        Some(false),
                    ));
                } else if touched > 0 {
                    // Stored while the device owned the buffer, then handed over with
                    // this sync: whether that can lose data depends on the direction
                    // and on what the sync does on each architecture.
                    let verdict = early_store_verdict(e, self.line, s, t);
                    let manifested = verdict.lost.is_some().then(|| {
                        let mut lost = 0;
                        for &(a, b) in e.owned_writes.ranges() {
                            let (x, y) = (a.max(s), b.min(t));
                            if x < y {
                                let mut now = vec![0u8; (y - x) as usize];
                                hw.cpu_view(e.phys_at(x), &mut now);
                                lost += self.oracle.diff(e.phys_at(x), &now, self.line).0;
                            }
                        }
                        lost > 0
                    });
                    problems.push(verdict.finding(e, touched, call, manifested));
                }
                e.owned_writes.remove(s, t);
            }
            if problems.is_empty() && discarded.is_none() {
                return;
            }
            e.snapshot()
        };
        if let Some((s, t)) = discarded {
            let e = self.entries.get(id);
            let (msg, lost) = self.discard_message(hw, e, s, t, call, ctx.line);
            let (dev_addr, size) = (e.dev_addr, e.size);
            self.report(
                "cpu-write-discarded",
                dev_addr,
                Some(lost > 0),
                Some(dev_name),
                Some(dev_addr),
                Some(size),
                ctx,
                msg,
                DISCARD_HELP.into(),
                hist.clone(),
            );
            let e = self.entries.get_mut(id);
            e.cpu_dirty.remove(s, t);
            e.owned_writes.remove(s, t);
            if e.cpu_dirty.is_empty() {
                e.dirty_from = None;
            }
        }
        let key = self.group_key(id);
        for (pid, msg, help, manifested) in problems {
            self.report(
                pid,
                key,
                manifested,
                Some(dev_name),
                Some(addr),
                Some(size),
                ctx,
                msg,
                help,
                hist.clone(),
            );
        }
    }

    /// A CPU load of `got` from physical `pa` (one page at most). `uncached_ps` is what
    /// the load cost when it went to uncached memory (0 otherwise).
    pub fn cpu_read(&mut self, hw: &Machine, ctx: Ctx, pa: u64, got: &[u8], uncached_ps: u64) {
        if !hw.dram.is_watched(pa) {
            return;
        }
        let end = pa + got.len() as u64;
        let line = self.line;
        let mut out = Vec::new();
        for id in self.entries.overlapping_phys(pa, end) {
            let e = self.entries.get_mut(id);
            let Some((s, t, os)) = entries::piece_of(&*e, pa, end) else {
                continue;
            };
            let piece = &got[(s - pa) as usize..(t - pa) as usize];
            let (bad, bad_lines) = self.oracle.diff(s, piece, line);
            let len = t - s;
            if e.kind == MapKind::Coherent {
                e.uncached_read_bytes += len;
                e.uncached_read_ps += uncached_ps * len / got.len() as u64;
            }
            // Which rule this read breaks, if any: bytes the device wrote and nobody
            // synced for the CPU; any read while the device owns a streaming buffer;
            // or, with no rule broken, bytes that still differ from the truth.
            let ruled = e.kind != MapKind::Coherent && !e.exporter_synced();
            let verdict = if ruled && e.dev_written.overlap(os, os + len) > 0 {
                Some(("stale-cpu-read", "without a sync for the CPU"))
            } else if ruled && e.device_owns && e.dir == DmaDirection::ToDevice {
                // The device never writes a TO_DEVICE mapping: the load returns the
                // CPU's own bytes on every platform (see check::ownership).
                Some(("cpu-access-benign", "while the device owns the buffer"))
            } else if ruled && e.device_owns {
                Some((
                    "cpu-access-device-owned",
                    "while the device owns the buffer",
                ))
            } else if bad > 0 && e.kind == MapKind::Coherent {
                // Coherent memory read stale: only a cacheable alias of memory the
                // kernel maps uncached can do that (see uapi::mmap).
                Some(("stale-cpu-read", COHERENT_ALIAS))
            } else if bad > 0 {
                Some(("stale-cpu-read", "and got bytes that differ from the truth"))
            } else {
                None
            };
            if let Some((fid, why)) = verdict {
                e.push(ctx, format!("CPU read {len} bytes at +{os:#x} {why}"));
                out.push((
                    fid,
                    id,
                    bad > 0,
                    bad_lines,
                    len,
                    e.dev_name.clone(),
                    e.dev_addr + os,
                    e.snapshot(),
                    e.dir,
                    why,
                    e.dmabuf.map(|n| (n, e.dmabuf_syncless())),
                ));
            }
        }
        for (id, key, manifested, bad_lines, len, dev, addr, hist, dir, why, dmabuf) in out {
            let lines = len.div_ceil(line);
            let (msg, help) = match (id, dmabuf) {
                ("stale-cpu-read", Some((n, syncless))) if syncless || why.starts_with("without") => {
                    let (msg, help) = dmabuf::StaleRead { n, dev: &dev, len, bad_lines, lines, addr }
                        .by_cpu(syncless);
                    (msg, help.into())
                }
                ("cpu-access-device-owned", Some((n, _))) => (
                    dmabuf::read_device_owned(n, &dev, len, addr),
                    dmabuf::HELP.into(),
                ),
                ("cpu-access-benign", _) => ownership::benign_read(&dev, len, addr),
                _ => match id {
                "stale-cpu-read" if why == COHERENT_ALIAS => (
                    format!(
                        "CPU read {len} bytes of {dev}'s coherent buffer through a cacheable mapping, and {bad_lines} of {lines} lines were stale copies in the cache, older than what the device wrote [device address={addr:#x}]"
                    ),
                    "map coherent memory with its own attributes: dma_mmap_coherent in the driver's mmap, not remap_pfn_range with the default vm_page_prot (cacheable-alias)".into(),
                ),
                "stale-cpu-read" if why.starts_with("and got") => (
                    format!(
                        "CPU read {len} bytes of a buffer {dev} wrote, after the sync, and {bad_lines} of {lines} lines differ from what was written: the data was lost before the CPU could see it [device address={addr:#x}]"
                    ),
                    "look at the history: a dirty line written back over device data (dirty-writeback-clobber), a sync of the wrong range or direction, or a CPU store while the device owned the buffer".into(),
                ),
                "stale-cpu-read" => (
                    format!(
                        "CPU read {len} bytes that {dev} wrote, without dma_sync_single_for_cpu; {bad_lines} of {lines} lines held stale data [device address={addr:#x}]"
                    ),
                    format!(
                        "call dma_sync_single_for_cpu(dev, addr, len, {}) after the transfer and before the CPU reads (or dma_unmap_single)",
                        dir.const_name()
                    ),
                ),
                _ => (
                    format!("CPU read {len} bytes of a buffer that {dev} owns (mapped, not synced for the CPU) [device address={addr:#x}]"),
                    "read a streaming buffer only after dma_sync_single_for_cpu or dma_unmap_single".into(),
                ),
                },
            };
            let key = self.group_key(key);
            self.report(
                id,
                key,
                (id != "cpu-access-benign").then_some(manifested),
                Some(&dev),
                Some(addr),
                Some(len),
                ctx,
                msg,
                help,
                hist,
            );
        }
    }

    /// A dirty line was written back to watched memory at `pa` (an eviction, noise, or
    /// the clean half of a maintenance operation). If a device wrote bytes of that
    /// line since the buffer was last handed to the CPU, and DRAM no longer holds
    /// them, the write-back clobbered device data: `dirty-writeback-clobber`.
    pub fn writeback(&mut self, hw: &Machine, pa: u64, script_line: u32) {
        let line = self.line;
        let (ls, le) = (pa, pa + line);
        let ctx = Ctx {
            time_ns: hw.now_ps() / 1000,
            line: script_line,
        };
        self.event(
            "background",
            || format!("dirty line {pa:#x} written back"),
            "background",
            ctx,
        );
        let mut out = Vec::new();
        let mut quiet = Vec::new();
        for id in self.entries.overlapping_phys(ls, le) {
            let e = self.entries.get(id);
            if e.kind == MapKind::Coherent || e.bounce.is_some() {
                continue;
            }
            let Some((s, t, os)) = entries::piece_of(e, ls, le) else {
                continue;
            };
            let ot = os + (t - s);
            let mut lost = 0;
            for &(a, b) in e.dev_written.ranges() {
                let (x, y) = (a.max(os), b.min(ot));
                if x < y {
                    let mut now = vec![0u8; (y - x) as usize];
                    // The piece is one physical run: offset x sits at s + (x - os).
                    let at = s + (x - os);
                    hw.dram.read_in_frame(at, &mut now);
                    lost += self.oracle.diff(at, &now, line).0;
                }
            }
            if lost > 0 {
                out.push((id, lost, s));
            } else if e.device_owns {
                // Background activity on a buffer the device owns goes into its
                // history: it explains a corruption that happens later.
                quiet.push((id, s));
            }
        }
        for (id, at) in quiet {
            self.entries.get_mut(id).note_writeback(ctx, at);
        }
        for (id, lost, at) in out {
            let e = self.entries.get_mut(id);
            e.clobbered = true;
            e.push(
                ctx,
                format!("a dirty CPU line at phys {at:#x} was written back over {lost} bytes the device had written"),
            );
            let (dev, addr, dir, hist) = (e.dev_name.clone(), e.dev_addr, e.dir, e.snapshot());
            let (msg, help) = if let (Some(first), false) = (e.cpu_first, e.handed_over) {
                // The CPU's own stores since the allocation dirty lines too (ALSA's
                // snd_pcm_hw_params memsets the buffer it just allocated).
                let stores = e
                    .history
                    .iter()
                    .rev()
                    .find(|ev| ev.event.starts_with("CPU wrote"))
                    .map_or(String::new(), |ev| {
                        format!(", the CPU stored into it at line {} (still dirty)", ev.line)
                    });
                (
                    format!(
                        "a dirty CPU cache line was written back to DRAM over {lost} bytes the device had written: {}{stores}, and it was never handed to {dev} with {} [device address={addr:#x}] [{} {}]",
                        first.how(), first.sync, first.dir_tag(),
                        dir.name()
                    ),
                    format!("call {}({}) after {}, and after every CPU write, before the device uses the buffer: it cleans the dirty lines", first.sync, first.args, first.alloc),
                )
            } else {
                (
                    format!(
                        "a CPU cache line dirtied while {dev} owned the buffer was written back to DRAM over {lost} bytes the device had written [device address={addr:#x}] [mapped with {}]",
                        dir.name()
                    ),
                    "never store to a buffer the device owns: finish CPU writes before dma_map_single, or sync for the CPU first; and keep DMA_FROM_DEVICE buffers in whole cache lines of their own (kmalloc, or dma_get_cache_alignment() alignment), so no neighbour's dirty line shares them".to_string(),
                )
            };
            self.report(
                "dirty-writeback-clobber",
                id,
                Some(true),
                Some(&dev),
                Some(addr + (at - self.entries.get(id).phys)),
                Some(line),
                ctx,
                msg,
                help,
                hist,
            );
        }
    }

    /// The prefetcher filled `lines` cache lines from `pa` in a watched frame: goes
    /// into the history of a mapping the device owns (it is how a CPU read without a
    /// sync later gets stale bytes).
    pub fn prefetched(&mut self, hw: &Machine, pa: u64, lines: u64, script_line: u32) {
        let end = pa + lines * self.line;
        let ctx = Ctx {
            time_ns: hw.now_ps() / 1000,
            line: script_line,
        };
        self.event(
            "background",
            || format!("prefetch of {lines} line(s) at {pa:#x}"),
            "background",
            ctx,
        );
        for id in self.entries.overlapping_phys(pa, end) {
            let e = self.entries.get_mut(id);
            if e.kind != MapKind::Coherent && e.device_owns {
                e.push(
                    ctx,
                    format!("the CPU's prefetcher filled {lines} cache line(s) at phys {pa:#x} (background)"),
                );
            }
        }
    }

    /// A CPU store of `data` at physical `pa` (one page at most), after the machine did it.
    pub fn cpu_write(&mut self, hw: &Machine, ctx: Ctx, pa: u64, data: &[u8]) {
        if !hw.dram.is_watched(pa) {
            return;
        }
        self.oracle.store_cpu(pa, data);
        let end = pa + data.len() as u64;
        for id in self.entries.overlapping_phys(pa, end) {
            let e = self.entries.get_mut(id);
            let Some((s, t, os)) = entries::piece_of(&*e, pa, end) else {
                continue;
            };
            if e.kind == MapKind::Coherent {
                continue;
            }
            if e.exporter_synced() {
                e.push(ctx, format!("CPU wrote {} bytes at +{os:#x}", t - s));
                continue;
            }
            let ot = os + (t - s);
            if e.cpu_dirty.is_empty() {
                e.dirty_from = Some((ctx.line, e.owner_since.0, e.owner_since.1));
            }
            e.cpu_dirty.insert(os, ot);
            e.dev_written.remove(os, ot);
            if e.device_owns {
                e.owned_writes.insert(os, ot);
            }
            e.note_cpu_write(ctx, os, t - s);
        }
    }

    /// A device access through its port (one page at most), after the machine did it.
    pub fn device_access(&mut self, ctx: Ctx, a: DeviceAccess<'_>) {
        let len = a.data.len() as u64;
        let cover = a.cover.unwrap_or_else(|| self.covering(a.dev, a.bus, len));
        if cover.is_none() && (a.translated || a.fault.is_some()) && self.wider_than_bus(ctx, &a) {
            return;
        }
        if let Some(kind) = a.fault {
            self.iommu_fault(ctx, &a, kind, cover);
            return;
        }
        let Some(id) = cover else {
            if a.translated {
                // The IOMMU translated an address no live mapping covers: either it
                // lies in a page the IOMMU maps for a smaller mapping (it maps whole
                // granules), or a stale IOTLB entry (lazy invalidation) let it through.
                if let Some(id) =
                    self.entries
                        .granule_holding(a.dev, a.bus, len, crate::config::PAGE_SIZE)
                {
                    self.beyond_mapping(ctx, &a, id);
                } else {
                    self.after_unmap(ctx, &a, true);
                }
                return;
            }
            self.unmapped_device_access(ctx, &a);
            return;
        };
        if a.dma_bits < 64 && a.bus >> a.dma_bits != 0 {
            self.cut_bus_address(ctx, &a, id);
            return;
        }
        if let Some((t, l)) = self.entries.get(id).freed {
            self.use_after_free_dma(ctx, &a, id, t, l);
            return;
        }
        self.pool_access(ctx, &a, id);
        let line = self.line;
        // The buffer byte this access stands for: the frame it reached, or for a
        // bounced mapping the original buffer at the same offset (the slots are a
        // copy; the truth is kept for the buffer).
        let (os, logical) = {
            let e = self.entries.get(id);
            let os = a.bus - e.dev_addr;
            (os, e.bounce.map(|_| e.phys + os))
        };
        let (bad, bad_lines) = match (logical, a.pa) {
            (Some(lpa), Some(_)) if !a.write => self.oracle.diff(lpa, a.data, line),
            // Only a read's verdict uses the comparison; a device write replaces
            // the truth below, so comparing its bytes first would be wasted work.
            (None, Some(pa)) if !a.write => self.oracle.diff_dram(pa, a.data, line),
            _ => (0, 0),
        };
        let e = self.entries.get_mut(id);
        let ot = os + len;
        match e.last_dev {
            // The next page of the same transfer: grow the event instead of adding one.
            Some((i, l, w, start, n))
                if l == ctx.line
                    && w == a.write
                    && start + n == a.bus
                    && i + 1 == e.history.len() =>
            {
                e.last_dev = Some((i, l, w, start, n + len));
            }
            _ => {
                e.push(ctx, Text::EMPTY);
                e.last_dev = Some((e.history.len() - 1, ctx.line, a.write, a.bus, len));
            }
        }
        let dir = e.dir;
        let mut out: Vec<(&'static str, Option<bool>, String, String)> = Vec::new();
        if a.write {
            if dir == DmaDirection::ToDevice {
                out.push((
                    "dir-violation",
                    None,
                    format!(
                        "{} wrote {len} bytes into a DMA_TO_DEVICE mapping{} [device address={:#x}]",
                        a.dev_name, e.mapped_at(), a.bus
                    ),
                    "map with DMA_FROM_DEVICE or DMA_BIDIRECTIONAL if the device writes the buffer"
                        .into(),
                ));
            }
            match (logical, a.pa) {
                // The buffer itself is not written until the copy back.
                (Some(lpa), Some(_)) => self.oracle.store_cpu(lpa, a.data),
                (None, Some(pa)) => self.oracle.store_device(pa, a.data, a.frame.as_ref()),
                _ => {}
            }
            if e.kind != MapKind::Coherent {
                let overwritten = e.owned_writes.overlap(os, ot);
                if let (true, Some(n)) = (overwritten > 0, e.dmabuf) {
                    out.push((
                        "cpu-access-device-owned",
                        Some(false),
                        dmabuf::overwritten(n, a.dev_name, overwritten, e.dev_addr),
                        dmabuf::HELP.into(),
                    ));
                } else if overwritten > 0 {
                    // The CPU stored into the buffer while the device owned it, and
                    // the device has now written over those bytes: the store is lost.
                    out.push((
                        "cpu-access-device-owned",
                        Some(false),
                        format!(
                            "CPU stored {overwritten} bytes into a buffer while {} owned it; the device then wrote over them [device address={:#x}] [mapped with {}]",
                            a.dev_name, e.dev_addr, dir.name()
                        ),
                        "write to a streaming buffer only before dma_map_* or between dma_sync_single_for_cpu and dma_sync_single_for_device".into(),
                    ));
                }
                if !e.exporter_synced() {
                    e.dev_written.insert(os, ot);
                }
                e.cpu_dirty.remove(os, ot);
                e.owned_writes.remove(os, ot);
                e.dev_wrote_unsynced |= e.cpu_first.is_some() && !e.handed_over;
            }
        } else {
            if dir == DmaDirection::FromDevice {
                out.push((
                    "dir-violation",
                    None,
                    format!(
                        "{} read {len} bytes of a DMA_FROM_DEVICE mapping{} [device address={:#x}]",
                        a.dev_name,
                        e.mapped_at(),
                        a.bus
                    ),
                    "map with DMA_TO_DEVICE or DMA_BIDIRECTIONAL if the device reads the buffer"
                        .into(),
                ));
            }
            let pending = e.cpu_dirty.overlap(os, ot);
            if bad > 0 && e.kind == MapKind::Coherent {
                // Coherent memory stale in DRAM: the CPU wrote it through a
                // cacheable alias and the lines are still in its cache.
                let lines = len.div_ceil(line);
                out.push((
                    "stale-device-read",
                    Some(true),
                    format!(
                        "{} read {len} bytes of its coherent buffer, and {bad_lines} of {lines} lines were stale in DRAM: the CPU wrote them through a cacheable mapping and they are still in its cache [device address={:#x}]",
                        a.dev_name, a.bus
                    ),
                    "map coherent memory with its own attributes: dma_mmap_coherent in the driver's mmap, not remap_pfn_range with the default vm_page_prot (cacheable-alias)".into(),
                ));
            } else if let (true, Some(n)) = (pending > 0 || bad > 0, e.dmabuf) {
                let lines = len.div_ceil(line);
                let read = dmabuf::StaleRead {
                    n,
                    dev: a.dev_name,
                    len,
                    bad_lines,
                    lines,
                    addr: a.bus,
                };
                let (msg, help) = read.by_device(e.dmabuf_syncless());
                out.push(("stale-device-read", Some(bad > 0), msg, help.into()));
                e.cpu_dirty.remove(os, ot);
                e.owned_writes.remove(os, ot);
            } else if pending > 0 || bad > 0 {
                let lines = len.div_ceil(line);
                out.push((
                    "stale-device-read",
                    Some(bad > 0),
                    format!(
                        "{} read {len} bytes the CPU wrote after the last hand-over to the device (no dma_sync_single_for_device since); {bad_lines} of {lines} lines were stale in DRAM [device address={:#x}]",
                        a.dev_name, a.bus
                    ),
                    "finish CPU writes before dma_map_single, or call dma_sync_single_for_device(dev, addr, len, DMA_TO_DEVICE) after them and before starting the device".into(),
                ));
                e.cpu_dirty.remove(os, ot);
                e.owned_writes.remove(os, ot);
            }
        }
        if out.is_empty() {
            return;
        }
        let hist = e.snapshot();
        let key = self.group_key(id);
        for (fid, manifested, msg, help) in out {
            self.report_access(fid, key, manifested, &a, ctx, msg, help, hist.clone());
        }
    }

    /// A covered access whose bus address the device cannot drive: it went to the
    /// address with the high bits cut off. Out of line: rare.
    #[cold]
    #[inline(never)]
    fn cut_bus_address(&mut self, ctx: Ctx, a: &DeviceAccess<'_>, id: u64) {
        // The mapping is right, but the hardware cannot put this address on the
        // bus: the access went to the address with the high bits cut off.
        let e = self.entries.get(id);
        let hist = e.snapshot();
        let reached =
            a.pa.map_or("a bus error".to_string(), |pa| format!("physical {pa:#x}"));
        let msg = format!(
            "{} drives only {} address bits: bus address {:#x} of a live mapping became {reached} [device address={:#x}] [mask set by the driver covers it]",
            a.dev_name, a.dma_bits, a.bus, e.dev_addr
        );
        self.report_access(
            "dma-outside-mapping",
            id,
            Some(true),
            a,
            ctx,
            msg,
            format!(
                "set the DMA mask to what the device can address: dma_set_mask(dev, {})",
                a.dma_bits
            ),
            hist,
        );
        if let (true, Some(pa)) = (a.write, a.pa) {
            self.oracle.store_device(pa, a.data, a.frame.as_ref());
        }
    }

    /// A device access to a mapping of memory already freed. Out of line: rare.
    #[cold]
    #[inline(never)]
    fn use_after_free_dma(&mut self, ctx: Ctx, a: &DeviceAccess<'_>, id: u64, t: u64, l: u32) {
        let len = a.data.len();
        let e = self.entries.get(id);
        let hist = e.snapshot();
        let verb = if a.write { "wrote" } else { "read" };
        let msg = format!(
            "{} {verb} {len} bytes at {:#x}, a mapping of memory freed at line {l} ({t} ns) [device address={:#x}] [mapped with {}]",
            a.dev_name, a.bus, e.dev_addr, e.dir.name()
        );
        self.report_access(
            "use-after-free-dma",
            id,
            Some(true),
            a,
            ctx,
            msg,
            "stop the device and unmap the buffer (dma_unmap_*) before freeing it".into(),
            hist,
        );
    }

    /// A device behind an IOMMU given a bus address wider than it drives: the
    /// IOMMU saw only the low `dma_bits` (the device cannot put the rest on the
    /// bus), so what it translated or refused is another address than the script
    /// meant; said so instead of a stale-IOTLB or no-mapping story about the wide
    /// one. True when reported.
    fn wider_than_bus(&mut self, ctx: Ctx, a: &DeviceAccess<'_>) -> bool {
        if a.dma_bits >= 64 || a.bus >> a.dma_bits == 0 {
            return false;
        }
        let len = a.data.len() as u64;
        let seen = a.bus & ((1u64 << a.dma_bits) - 1);
        let verb = if a.write { "write" } else { "read" };
        let outcome = match (a.fault, a.pa) {
            (Some(k), _) => format!("the IOMMU refused it ({k:?} fault)"),
            (None, Some(pa)) => format!("the IOMMU translated it to physical {pa:#x}"),
            (None, None) => "it ended in a bus error".to_string(),
        };
        let msg = format!(
            "{} drives only {} address bits: the {verb} of {len} bytes at bus address {:#x} reached the IOMMU as IOVA {seen:#x}, and {outcome}",
            a.dev_name, a.dma_bits, a.bus
        );
        self.report_access(
            "dma-outside-mapping",
            a.bus,
            Some(a.pa.is_some()),
            a,
            ctx,
            msg,
            "give the device only addresses returned by dma_map_* or dma_alloc_coherent; they fit its DMA mask".into(),
            vec![],
        );
        if let (true, Some(pa)) = (a.write, a.pa) {
            self.oracle.store_device(pa, a.data, a.frame.as_ref());
        }
        true
    }

    /// The IOMMU stopped an access: `dma-after-unmap` (latent) when the address was
    /// this device's until a recent unmap, else `iommu-fault`.
    fn iommu_fault(
        &mut self,
        ctx: Ctx,
        a: &DeviceAccess<'_>,
        kind: crate::hw::iommu::FaultKind,
        cover: Option<u64>,
    ) {
        use crate::hw::iommu::FaultKind;
        let len = a.data.len() as u64;
        let verb = if a.write { "write" } else { "read" };
        if cover.is_none() && self.recent_unmap(a).is_some() {
            self.after_unmap(ctx, a, false);
            return;
        }
        let (why, help, hist) = match (kind, cover) {
            (FaultKind::Permission, Some(id)) => {
                let e = self.entries.get(id);
                (
                    format!("a {verb} into a mapping the IOMMU maps read-only (mapped with {}{})", e.dir.name(), e.mapped_at()),
                    "map with DMA_FROM_DEVICE or DMA_BIDIRECTIONAL if the device writes the buffer".to_string(),
                    e.snapshot(),
                )
            }
            (FaultKind::AddressSize, _) => (
                format!(
                    "the IOVA is beyond the IOMMU's {}-bit input address size",
                    crate::hw::iommu::IAS
                ),
                "give the device only addresses returned by dma_map_* or dma_alloc_coherent".to_string(),
                vec![],
            ),
            (FaultKind::Blocked, _) => (
                "the device's domain blocks all DMA".to_string(),
                "a device is blocked while its group has no owner (VFIO took it, or the driver unbound); attach a domain first".to_string(),
                vec![],
            ),
            _ => (
                "no mapping at that IOVA".to_string(),
                "give the device only addresses returned by dma_map_* or dma_alloc_coherent, and only while they are mapped; without an IOMMU this access would have reached memory".to_string(),
                vec![],
            ),
        };
        let code = match kind {
            FaultKind::Translation => "F_TRANSLATION",
            FaultKind::Permission => "F_PERMISSION",
            FaultKind::Blocked => "C_BAD_STE",
            FaultKind::AddressSize => "F_ADDR_SIZE",
        };
        self.report_access(
            "iommu-fault",
            a.bus,
            None,
            a,
            ctx,
            format!(
                "{}: IOMMU fault {code}: {verb} of {len} bytes at IOVA {:#x} stopped, nothing reached memory ({why})",
                a.dev_name, a.bus
            ),
            help,
            hist,
        );
    }

    fn recent_unmap(&self, a: &DeviceAccess<'_>) -> Option<&RecentUnmap> {
        self.recent_unmaps
            .iter()
            .rev()
            .find(|u| u.dev == a.dev && a.bus >= u.dev_addr && a.bus - u.dev_addr < u.size.max(1))
    }

    /// `dma-after-unmap`: a device used an address after its unmap; `through` when the
    /// IOMMU (a stale IOTLB entry) let it reach memory.
    fn after_unmap(&mut self, ctx: Ctx, a: &DeviceAccess<'_>, through: bool) {
        let len = a.data.len() as u64;
        let verb = if a.write { "wrote" } else { "read" };
        let (when, mut hist) = match self.recent_unmap(a) {
            Some(u) => {
                let mut h = u.history.clone();
                if let Some(m) = &u.map_event {
                    m.fill(&mut h);
                }
                (format!("unmapped at line {} ({} ns)", u.line, u.time_ns), h)
            }
            None => ("no longer mapped".to_string(), vec![]),
        };
        let outcome = match (through, a.pa) {
            (true, Some(pa)) => format!("the IOTLB still held the translation, so the access reached physical {pa:#x}, memory that may belong to someone else by now"),
            _ => "the IOMMU blocked it".to_string(),
        };
        hist.push(HistoryEvent {
            time_ns: ctx.time_ns,
            line: ctx.line,
            event: format!(
                "{} {verb} {len} bytes at IOVA {:#x} after the unmap",
                a.dev_name, a.bus
            )
            .into(),
        });
        self.report_access(
            "dma-after-unmap",
            a.bus,
            Some(through),
            a,
            ctx,
            format!(
                "{} {verb} {len} bytes at IOVA {:#x}, {when}: {outcome}",
                a.dev_name, a.bus
            ),
            "stop the device (and wait for it) before dma_unmap_*; with lazy invalidation (iommu.strict=0) an unmapped buffer stays reachable until the flush queue's next IOTLB flush".into(),
            hist,
        );
    }

    /// `dma-outside-mapping` behind an IOMMU: the access left mapping `id` but stayed
    /// inside the granules the IOMMU maps for it, so it reached memory. Manifested
    /// when it read non-zero bytes beyond the mapping (someone else's data, or what
    /// an earlier user left in the bounce slots) or wrote anywhere but the padding of
    /// the mapping's own bounce buffer.
    fn beyond_mapping(&mut self, ctx: Ctx, a: &DeviceAccess<'_>, id: u64) {
        let e = self.entries.get(id);
        let len = a.data.len() as u64;
        let (start, end) = (e.dev_addr, e.dev_addr + e.size);
        // The bytes of the access outside [start, end).
        let outside = |i: usize| {
            let b = a.bus + i as u64;
            b < start || b >= end
        };
        let beyond = (0..a.data.len()).filter(|&i| outside(i)).count() as u64;
        let manifested = if a.write {
            e.bounce.is_none()
        } else {
            a.data
                .iter()
                .enumerate()
                .any(|(i, &v)| v != 0 && outside(i))
        };
        let verb = if a.write { "write" } else { "read" };
        let reached = match (a.pa, e.bounce) {
            (_, Some(_)) => "the padding of its swiotlb bounce buffer".to_string(),
            (Some(pa), None) => format!("physical {pa:#x}, memory around the buffer that belongs to others (kernel objects sharing its page)"),
            (None, None) => "nothing (a bus error)".to_string(),
        };
        let exposed = if a.write {
            String::new()
        } else if manifested {
            " — the device got non-zero bytes that are not its buffer's".to_string()
        } else {
            " — they were all zero".to_string()
        };
        let mut hist = e.snapshot();
        hist.push(HistoryEvent {
            time_ns: ctx.time_ns,
            line: ctx.line,
            event: format!(
                "{} {verb} of {len} bytes at {:#x}, {beyond} of them outside the mapping",
                a.dev_name, a.bus
            )
            .into(),
        });
        let msg = format!(
            "{} did a {verb} of {len} bytes at IOVA {:#x}, {beyond} of them outside its {}-byte mapping at {start:#x}; the IOMMU maps whole 4 KiB pages, so it let the access through to {reached}{exposed}",
            a.dev_name, a.bus, e.size
        );
        let help = "a device must stay inside the bytes it was given: the IOMMU protects only whole pages, so a sub-page buffer (kmalloc) exposes its neighbours; for devices you do not trust (external ports) Linux marks them untrusted and bounces such mappings through swiotlb with zeroed padding (device option untrusted: true); or give the device whole pages (alloc_pages, dma_alloc_coherent)";
        self.report_access(
            "dma-outside-mapping",
            a.bus,
            Some(manifested),
            a,
            ctx,
            msg,
            help.into(),
            hist,
        );
    }

    fn unmapped_device_access(&mut self, ctx: Ctx, a: &DeviceAccess<'_>) {
        let len = a.data.len() as u64;
        let verb = if a.write { "write" } else { "read" };
        if let Some((owner, frame)) = a.noiommu {
            if frame == Some(owner) {
                // The process's own memory: what it is allowed to reach.
                return;
            }
            let whose = match (a.pa, frame) {
                (None, _) => "nothing (a bus error)".to_string(),
                (Some(pa), Some(pid)) => {
                    format!("physical {pa:#x}, a page of another process (pid {pid})")
                }
                (Some(pa), None) => format!("physical {pa:#x}, kernel memory"),
            };
            self.report_access(
                "user-dma-without-iommu",
                a.bus,
                Some(a.pa.is_some()),
                a,
                ctx,
                format!(
                    "{} (given to pid {owner} by VFIO without an IOMMU) did a {verb} of {len} bytes at {:#x}, outside the process's memory: it reached {whose}",
                    a.dev_name, a.bus
                ),
                "without an IOMMU nothing confines a device a process controls: use VFIO with an IOMMU (the access would fault), or keep the driver in the kernel".into(),
                vec![],
            );
            return;
        }
        let reached = match a.pa {
            Some(pa) => format!("it reached physical {pa:#x}"),
            None => "it got a bus error".into(),
        };
        if a.bus == DMA_MAPPING_ERROR || a.bus.wrapping_add(len) < a.bus {
            self.report_access("mapping-error-unchecked", a.bus, None, a, ctx, format!("{} was given DMA_MAPPING_ERROR as a DMA address ({verb} of {len} bytes); {reached}", a.dev_name),
                "test every map result with dma_mapping_error(dev, addr) and do not start the device when it fails".into(),
                vec![],
            );
            return;
        }
        match &a.user {
            Some(UserHit::Pinned) => return,
            Some(UserHit::Unpinned(what) | UserHit::Gone(what, ..)) => {
                let gone = matches!(a.user, Some(UserHit::Gone(..)));
                // The page's story: when it left the frame (a background migration,
                // swap or unmap), then the device's access.
                let mut history = Vec::with_capacity(2);
                if let Some(UserHit::Gone(_, t, event)) = &a.user {
                    history.push(HistoryEvent {
                        time_ns: *t,
                        line: 0,
                        event: event.clone().into(),
                    });
                }
                history.push(HistoryEvent {
                    time_ns: ctx.time_ns,
                    line: ctx.line,
                    event: format!("{} {verb} of {len} bytes at {:#x}", a.dev_name, a.bus).into(),
                });
                let msg = if gone {
                    format!("{} did a {verb} of {len} bytes at {:#x}, where {what}; the bytes went to a frame that is no longer that buffer", a.dev_name, a.bus)
                } else {
                    format!("{} did a {verb} of {len} bytes at {:#x}, the frame of {what}, which is not pinned: the kernel may migrate, swap or reuse it at any moment", a.dev_name, a.bus)
                };
                self.report_access("unpinned-user-dma", a.bus, Some(gone), a, ctx, msg,
                    "pin user pages for as long as a device may use them (pin_user_pages with FOLL_LONGTERM for long-lived DMA) and map them (dma_map_sg), or use VFIO".into(),
                    history,
                );
                return;
            }
            None => {}
        }
        if let Some((what, meant)) = &a.va_of {
            // Manifested unless the truncated number happened to hit the buffer itself.
            let hit_wrong = a.pa.is_none_or(|pa| pa != *meant);
            self.report_access("virtual-address-as-dma", a.bus, Some(hit_wrong), a, ctx, format!(
                    "{} was given {:#x}, the CPU virtual address of {what}; devices see bus addresses, so the {verb} of {len} bytes did not touch that buffer: {reached}",
                    a.dev_name, a.bus
                ),
                "map the buffer with dma_map_single(dev, buf, dir) and give the device the returned dma_addr_t".into(),
                vec![],
            );
            return;
        }
        if let Some(u) = self.recent_unmap(a) {
            // dma-direct: the unmap changed nothing the device sees, so the access
            // reached the memory, which the driver may also have freed by now.
            let mut hist = u.history.clone();
            if let Some(m) = &u.map_event {
                m.fill(&mut hist);
            }
            let freed = u.freed.map_or(String::new(), |(t, l)| {
                hist.push(HistoryEvent {
                    time_ns: t,
                    line: l,
                    event: "the buffer was freed".into(),
                });
                format!(" and its memory freed at line {l}")
            });
            let unmapped = format!("unmapped at line {} ({} ns){freed}", u.line, u.time_ns);
            hist.sort_by_key(|h| h.time_ns);
            hist.push(HistoryEvent {
                time_ns: ctx.time_ns,
                line: ctx.line,
                event: format!(
                    "{} did a {verb} of {len} bytes at {:#x} after the unmap",
                    a.dev_name, a.bus
                )
                .into(),
            });
            self.report_access(
                "dma-after-unmap",
                a.bus,
                Some(a.pa.is_some()),
                a,
                ctx,
                format!(
                    "{} did a {verb} of {len} bytes at bus address {:#x}, {unmapped}: without an IOMMU nothing stops a device from using an address after its unmap, so {reached}, memory that may belong to someone else by now",
                    a.dev_name, a.bus
                ),
                "stop the device (and wait for it) before dma_unmap_* and before freeing the buffer".into(),
                hist,
            );
            return;
        }
        self.report_access("dma-outside-mapping", a.bus, Some(a.pa.is_some()), a, ctx, format!(
                "{} did a {verb} of {len} bytes at bus address {:#x}, which no live mapping of it covers; {reached}",
                a.dev_name, a.bus
            ),
            "give the device only addresses returned by dma_map_* or dma_alloc_coherent, and only while they are mapped".into(),
            vec![],
        );
    }

    /// The kernel freed buffer `id` (kfree, free_pages, dma_free_coherent).
    pub fn free_buffer(&mut self, hw: &mut Machine, ctx: Ctx, id: u64) {
        if let Some((pa, len)) = self.held.remove(&id) {
            self.oracle.release(hw, pa, len);
        }
        // Mappings unmapped a moment ago: a device still using one without an IOMMU
        // now reaches memory the allocator may hand to someone else.
        for u in self.recent_unmaps.iter_mut() {
            if u.buffer == Some(id) && u.freed.is_none() {
                u.freed = Some((ctx.time_ns, ctx.line));
            }
        }
        // Mappings still alive over the freed memory: a device using them writes into
        // memory the allocator may already have handed to someone else.
        for eid in self.entries.ids() {
            let e = self.entries.get_mut(eid);
            if e.buffer == Some(id) && e.freed.is_none() {
                e.freed = Some((ctx.time_ns, ctx.line));
                e.push(ctx, "the buffer was freed while still mapped");
            }
        }
    }

    /// Reports the live mappings of `dev` (all devices for `None`) as leaks.
    pub fn leaks(&mut self, hw: &mut Machine, ctx: Ctx, dev: Option<usize>, at: &str) {
        let ids = self.entries.of_device(dev);
        for id in ids {
            let e = self.entries.remove(id).expect("listed above");
            // At the end of the run no script line is running: name the line that
            // made the mapping (or allocation) instead of line 0.
            let ctx = if ctx.line == 0 {
                let line = e
                    .map_event
                    .as_ref()
                    .and_then(|m| e.history.get(m.idx))
                    .or_else(|| e.history.first())
                    .map_or(0, |h| h.line);
                Ctx { line, ..ctx }
            } else {
                ctx
            };
            let help = match e.kind {
                MapKind::Coherent => {
                    "free coherent buffers with dma_free_coherent before the driver goes away"
                        .to_string()
                }
                MapKind::Noncoherent => "free dma_alloc_noncoherent buffers with dma_free_noncoherent before the driver goes away".to_string(),
                MapKind::Resource => "undo every dma_map_resource with dma_unmap_resource when the transfers are done".to_string(),
                _ => format!(
                    "unmap every mapping (dma_unmap_{}) when the device is done with it",
                    if e.kind == MapKind::Page {
                        "page"
                    } else {
                        "single"
                    }
                ),
            };
            self.report(
                "mapping-leak",
                id,
                None,
                Some(&e.dev_name.clone()),
                Some(e.dev_addr),
                Some(e.size),
                ctx,
                format!(
                    "device driver has pending DMA allocations {at} {}",
                    e.describe()
                ),
                help,
                e.snapshot(),
            );
            Self::release_entry(&mut self.oracle, hw, &e);
        }
    }

    /// End-of-run check: heavy uncached use of the coherent buffers still alive (freed
    /// ones were checked at `dma_free_coherent`).
    pub fn uncached_use(&mut self, ctx: Ctx) {
        for id in self.entries.ids() {
            let e = self.entries.get(id);
            if e.kind != MapKind::Coherent || e.uncached_read_ps == 0 {
                continue;
            }
            let e = self.entries.remove(id).expect("listed above");
            self.uncached_check(ctx, id, &e);
            self.entries.insert(id, *e, None);
        }
    }

    fn uncached_check(&mut self, ctx: Ctx, id: u64, e: &Entry) {
        if e.kind != MapKind::Coherent || e.uncached_read_ps == 0 {
            return;
        }
        // The alternative: a streaming buffer, invalidated once, read through the
        // cache (one line fill per line read).
        let lines = e.uncached_read_bytes.div_ceil(self.line);
        let cached = lines * self.uncached_fill_ps;
        let (bytes, ps) = (e.uncached_read_bytes, e.uncached_read_ps);
        if bytes < 4096 || ps < 2 * cached {
            return;
        }
        self.report(
            "uncached-cpu-heavy",
            id,
            None,
            Some(&e.dev_name),
            Some(e.dev_addr),
            Some(bytes),
            ctx,
            format!(
                "CPU spent {:.1} µs reading {bytes} bytes of uncached coherent memory; through a cached streaming mapping the same reads would cost about {:.1} µs ({:.1}x less)",
                ps as f64 / 1e6,
                cached as f64 / 1e6,
                ps as f64 / cached.max(1) as f64
            ),
            "use dma_alloc_coherent for descriptors and small shared state; for bulk data the CPU processes, use kmalloc + dma_map_single with dma_sync_single_for_cpu".into(),
            e.snapshot(),
        );
    }

    /// The live mapping of `dev` that covers `[bus, bus+len)` (the first in
    /// bus-address order), for [`DeviceAccess::cover`].
    pub fn covering(&self, dev: usize, bus: u64, len: u64) -> Option<u64> {
        self.entries.containing(dev, bus, Some(len), |_| true)
    }

    /// Does `dev` hold any live mapping.
    pub fn device_has_mappings(&self, dev: usize) -> bool {
        self.entries
            .ids()
            .into_iter()
            .any(|id| self.entries.get(id).dev == dev)
    }

    /// Is there a live mapping of `dev` starting at `dev_addr`.
    pub fn has_mapping(&self, dev: usize, dev_addr: u64) -> bool {
        self.entries.exact(dev, dev_addr).is_some()
    }
}
