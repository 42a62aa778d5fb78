//! What the pictures need: a timeline of the run (CPU calls, device transfers,
//! maps, syncs, faults, background cache events, findings), every buffer's frames,
//! the regions of physical memory, and for each memory finding the buffer's cache
//! lines at that moment beside DRAM and the truth.
//!
//! Recording is off unless a run asks for it (`--html`, `--trace`): every hook is
//! one `Option` test on the hot path. Bounded: at most [`MAX_EVENTS`] events,
//! [`MAX_BUFFERS`] buffers and [`MAX_SNAPSHOT_LINES`] lines per snapshot are kept,
//! and the report says how many events were left out.

use serde::Serialize;

use crate::config::PAGE_SIZE;
use crate::hw::cache::LineState;
use crate::system::System;

/// Events kept per run.
pub const MAX_EVENTS: usize = 200_000;
/// Buffers kept per run.
pub const MAX_BUFFERS: usize = 20_000;
/// Cache lines shown per finding.
pub const MAX_SNAPSHOT_LINES: u64 = 64;
/// Memory findings that get a cache-line snapshot.
pub const MAX_SNAPSHOTS: usize = 64;

/// One event on a track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// Track: `CPU 0`, a device's name, `background` or `findings`.
    pub track: String,
    /// What happened.
    pub name: String,
    /// Kind: `call`, `dma`, `copy`, `map`, `unmap`, `sync`, `fault`, `background`,
    /// `finding`.
    pub cat: &'static str,
    /// Start, simulated ns.
    pub t_ns: u64,
    /// Duration in ns (0: an instant).
    pub dur_ns: u64,
    /// Script line.
    pub line: u32,
}

/// A region of physical memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Region {
    /// What it is: `zone DMA`, `CMA`, `swiotlb`, `hugepages`…
    pub label: String,
    /// Kind for colouring: `zone`, `cma`, `swiotlb`, `hugepages`.
    pub kind: &'static str,
    /// First byte.
    pub start: u64,
    /// Bytes.
    pub len: u64,
}

/// One buffer and the physical runs it occupies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BufferView {
    /// Label: `kmalloc #3`, `vmalloc #4`, `user 100`…
    pub label: String,
    /// Kind for colouring.
    pub kind: &'static str,
    /// Bytes asked for.
    pub len: u64,
    /// Script line of the allocation.
    pub line: u32,
    /// Physical runs: (first byte, bytes).
    pub runs: Vec<(u64, u64)>,
    /// Freed before the end of the run.
    pub freed: bool,
}

/// One cache line of a buffer at the moment of a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineView {
    /// Physical address of the line.
    pub pa: u64,
    /// `dirty`, `clean` or `absent` in the CPU caches.
    pub state: &'static str,
    /// The CPU would load other bytes than the truth.
    pub cpu_stale: bool,
    /// DRAM holds other bytes than the truth.
    pub dram_stale: bool,
    /// First bytes a CPU load would return (hex).
    pub cpu: String,
    /// First bytes in DRAM (hex).
    pub dram: String,
    /// First bytes of the truth: what the last writer, device or CPU, stored (hex).
    pub truth: String,
}

/// The cache lines of a finding's buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineSnapshot {
    /// Index of the finding in the report.
    pub finding: usize,
    /// Physical address of the first line shown.
    pub phys: u64,
    /// Lines.
    pub lines: Vec<LineView>,
}

/// Everything the pictures of one run need (`visual` in the JSON report, present
/// only when recording was asked for).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Visual {
    /// RAM: (first byte, bytes).
    pub ram: (u64, u64),
    /// Regions of physical memory.
    pub regions: Vec<Region>,
    /// Buffers, in allocation order.
    pub buffers: Vec<BufferView>,
    /// Events in time order.
    pub events: Vec<TraceEvent>,
    /// Events not kept (over [`MAX_EVENTS`]).
    pub events_dropped: u64,
    /// Cache-line snapshots of memory findings.
    pub snapshots: Vec<LineSnapshot>,
}

/// The recorder a run carries while recording.
#[derive(Debug, Default)]
pub struct Recorder {
    /// What is being built.
    pub visual: Visual,
    /// Findings already looked at.
    seen_findings: usize,
}

impl Recorder {
    /// Adds an event unless the cap is reached.
    pub fn event(
        &mut self,
        track: &str,
        name: String,
        cat: &'static str,
        t_ns: u64,
        dur_ns: u64,
        line: u32,
    ) {
        if self.visual.events.len() >= MAX_EVENTS {
            self.visual.events_dropped += 1;
            return;
        }
        self.visual.events.push(TraceEvent {
            track: track.to_string(),
            name,
            cat,
            t_ns,
            dur_ns,
            line,
        });
    }

    /// Adds a buffer unless the cap is reached.
    pub fn buffer(&mut self, b: BufferView) {
        if self.visual.buffers.len() < MAX_BUFFERS {
            self.visual.buffers.push(b);
        }
    }
}

/// Merges sorted frame numbers into (first byte, bytes) runs.
pub fn runs_of(pfns: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for pfn in pfns {
        let pa = pfn * PAGE_SIZE;
        match out.last_mut() {
            Some((s, l)) if *s + *l == pa => *l += PAGE_SIZE,
            _ => out.push((pa, PAGE_SIZE)),
        }
    }
    out
}

fn hex8(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

/// Memory findings: those about bytes the CPU or a device saw.
pub fn is_memory_finding(id: &str) -> bool {
    matches!(
        id,
        "stale-cpu-read"
            | "stale-device-read"
            | "cpu-access-device-owned"
            | "dirty-writeback-clobber"
            | "cpu-write-discarded"
    )
}

impl System {
    /// Starts recording (called at boot when the run asked for pictures): the
    /// regions of physical memory as boot left them.
    pub(crate) fn start_recording(&mut self) {
        let mut v = Visual {
            ram: (self.cfg.ram_base, self.cfg.ram),
            ..Visual::default()
        };
        for z in &self.kernel.pages.zones {
            if z.end_pfn > z.start_pfn {
                v.regions.push(Region {
                    label: format!("zone {}", z.kind.name()),
                    kind: "zone",
                    start: z.start_pfn * PAGE_SIZE,
                    len: (z.end_pfn - z.start_pfn) * PAGE_SIZE,
                });
            }
        }
        if let Some(c) = &self.kernel.pages.cma {
            v.regions.push(Region {
                label: "CMA".into(),
                kind: "cma",
                start: c.base_pfn * PAGE_SIZE,
                len: c.count * PAGE_SIZE,
            });
        }
        if let Some(p) = &self.kernel.swiotlb {
            v.regions.push(Region {
                label: "swiotlb".into(),
                kind: "swiotlb",
                start: p.start,
                len: p.nslabs as u64 * crate::kernel::dma::swiotlb::IO_TLB_SIZE,
            });
        }
        let mut huge = self.kernel.hugepool.clone();
        huge.sort_unstable();
        for (start, len) in runs_of(huge.iter().flat_map(|&b| b..b + 512)) {
            v.regions.push(Region {
                label: "hugepages".into(),
                kind: "hugepages",
                start,
                len,
            });
        }
        v.buffers.push(BufferView {
            label: "kernel data since boot".into(),
            kind: "kernel",
            len: self.kernel.boot_data.len() as u64 * PAGE_SIZE,
            line: 0,
            runs: runs_of(self.kernel.boot_data.iter().copied()),
            freed: false,
        });
        self.recorder = Some(Box::new(Recorder {
            visual: v,
            seen_findings: 0,
        }));
        self.kernel.record_buffers = true;
    }

    /// Records one event when recording (a no-op otherwise).
    pub(crate) fn record(
        &mut self,
        track: &str,
        name: impl FnOnce() -> String,
        cat: &'static str,
        t_ps: u64,
        dur_ps: u64,
    ) {
        if let Some(r) = self.recorder.as_mut() {
            r.event(track, name(), cat, t_ps / 1000, dur_ps / 1000, self.line);
        }
    }

    /// After each script call: buffers allocated, new findings (an instant each,
    /// and the cache lines of memory findings).
    pub(crate) fn record_after_call(&mut self, call: &str, t0_ps: u64) {
        let Some(mut r) = self.recorder.take() else {
            return;
        };
        let now = self.hw.now_ps();
        r.event(
            &format!("CPU {}", self.cpu),
            call.to_string(),
            "call",
            t0_ps / 1000,
            (now - t0_ps) / 1000,
            self.line,
        );
        if let Some(ev) = self.check.events.as_mut() {
            for (track, name, cat, t_ns, line) in ev.drain(..) {
                r.event(&track, name, cat, t_ns, 0, line);
            }
        }
        for b in self.kernel.new_buffers.drain(..) {
            r.buffer(b);
        }
        for label in self.kernel.freed_labels.drain(..) {
            if let Some(b) = r.visual.buffers.iter_mut().rev().find(|b| b.label == label) {
                b.freed = true;
            }
        }
        for id in self.kernel.freed_buffers.drain(..) {
            let label = format!("#{id}");
            if let Some(b) = r
                .visual
                .buffers
                .iter_mut()
                .rev()
                .find(|b| b.label.ends_with(&label))
            {
                b.freed = true;
            }
        }
        let findings = self.check.findings();
        for (i, f) in findings.iter().enumerate() {
            let new = i >= r.seen_findings;
            if new {
                r.event(
                    "findings",
                    f.id.to_string(),
                    "finding",
                    f.time_ns,
                    0,
                    f.line,
                );
            }
            if !is_memory_finding(f.id) {
                continue;
            }
            // A finding seen again in a loop describes the occurrence that bit: so
            // does its picture.
            let existing = r.visual.snapshots.iter().position(|s| s.finding == i);
            let refresh = existing.is_some_and(|k| {
                f.manifested == Some(true)
                    && !r.visual.snapshots[k].lines.iter().any(|l| l.cpu_stale)
            });
            let first = new && existing.is_none();
            if !(first || refresh) {
                continue;
            }
            if existing.is_none() && r.visual.snapshots.len() >= MAX_SNAPSHOTS {
                continue;
            }
            let (Some(dev), Some(addr)) = (f.device.as_deref(), f.addr) else {
                continue;
            };
            let Some(dev) = self.kernel.devices.iter().position(|d| *d.name == *dev) else {
                continue;
            };
            let Some(phys) = self.check.phys_for(dev, addr) else {
                continue;
            };
            let snap = LineSnapshot {
                finding: i,
                phys: phys & !(self.hw.line() - 1),
                lines: self.line_views(phys, f.len.unwrap_or(64)),
            };
            match existing {
                Some(k) => r.visual.snapshots[k] = snap,
                None => r.visual.snapshots.push(snap),
            }
        }
        r.seen_findings = findings.len();
        self.recorder = Some(r);
    }

    /// The cache lines of `[pa, pa+len)` as the CPU, DRAM and the truth see them.
    fn line_views(&self, pa: u64, len: u64) -> Vec<LineView> {
        let line = self.hw.line();
        let first = pa & !(line - 1);
        let n = (pa + len.max(1)).div_ceil(line) - first / line;
        let mut out = Vec::new();
        for k in 0..n.min(MAX_SNAPSHOT_LINES) {
            let a = first + k * line;
            if !self.hw.dram.contains(a, line) {
                break;
            }
            let mut cpu = vec![0u8; line as usize];
            self.hw.caches.cpu_view(a, &mut cpu, &self.hw.dram);
            let mut dram = vec![0u8; line as usize];
            self.hw.dram.read_in_frame(a, &mut dram);
            let truth = self.check.oracle.get(a, line as usize);
            let state = match self.hw.caches.state_of(a) {
                LineState::Modified => "dirty",
                LineState::Invalid => "absent",
                _ => "clean",
            };
            out.push(LineView {
                pa: a,
                state,
                cpu_stale: truth.as_ref().is_some_and(|t| *t != cpu),
                dram_stale: truth.as_ref().is_some_and(|t| *t != dram),
                cpu: hex8(&cpu),
                dram: hex8(&dram),
                truth: truth.as_deref().map(hex8).unwrap_or_default(),
            });
        }
        out
    }

    /// Ends recording: user memory as it is now, events in time order.
    pub(crate) fn finish_recording(&mut self) -> Option<Visual> {
        self.record_after_call("end of run", self.hw.now_ps());
        let mut r = self.recorder.take()?;
        // The last call's span is the bookkeeping above: drop it.
        r.visual.events.retain(|e| e.name != "end of run");
        let mut by_pid: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
        for (pfn, p) in self.kernel.user_pages.iter() {
            by_pid.entry(p.owner.pid).or_default().push(pfn);
        }
        for (pid, mut pfns) in by_pid {
            pfns.sort_unstable();
            let name = self.kernel.procs.iter().find(|p| p.pid == pid).map_or_else(
                || format!("pid {pid}"),
                |p| format!("{} (pid {pid})", p.name),
            );
            let len = pfns.len() as u64 * PAGE_SIZE;
            r.buffer(BufferView {
                label: format!("user pages of {name}"),
                kind: "user",
                len,
                line: 0,
                runs: runs_of(pfns),
                freed: false,
            });
        }
        r.visual.events.sort_by_key(|e| e.t_ns);
        Some(r.visual)
    }
}
