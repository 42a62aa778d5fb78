//! The ftrace text of the DMA API's tracepoints (`include/trace/events/dma.h`,
//! `include/trace/events/swiotlb.h`, Linux 6.12), as `/sys/kernel/tracing/trace`,
//! `trace_pipe` and `trace-cmd report` print it:
//!
//! ```text
//!   insmod-146  [000] .....  10.280693: dma_alloc: 0000:00:05.0 dir=BIDIRECTIONAL dma_addr=ffffe000 size=6726 virt_addr=00000000dd8cfc17 flags=GFP_KERNEL attrs=NO_WARN
//! ```
//!
//! task-pid, `[CPU]`, the irq/preempt flags (absent in `trace-cmd report` without
//! `-l`), the timestamp in seconds, the event name, then the event's `TP_printk`
//! fields. Every `dma:` event of 6.12 is read, and the `dma_map_phys` /
//! `dma_unmap_phys` names of later kernels (same fields as `dma_map_page` /
//! `dma_unmap_page`). `dma_map_sg`'s arrays are capped at `DMA_TRACE_MAX_ENTRIES`
//! (128) by the kernel and marked ` [TRUNCATED]`: the event keeps the full counts so
//! the replay can fill in what is missing. Lines of other events (`iommu:map`,
//! `tracing_mark_write`...) are counted and skipped (markers are kept as phase
//! names); comment lines (`#`) and blank lines are ignored; a line that cannot be
//! read is counted with its number, and only a file where nothing at all parses is
//! an error.
//!
//! The binary `trace.dat` of `trace-cmd record` is not read (no well-kept Rust crate
//! decodes it); convert it with `trace-cmd report -i trace.dat > trace.txt`.

use std::collections::BTreeMap;

use crate::kernel::dma::DmaDirection;

/// `DMA_TRACE_MAX_ENTRIES` (include/trace/events/dma.h): the most array entries an
/// sg event records.
pub const DMA_TRACE_MAX_ENTRIES: usize = 128;
/// The most entries an array field may have before the line counts as garbage (a
/// real line never has more than [`DMA_TRACE_MAX_ENTRIES`]).
const MAX_ARRAY: usize = 4096;

/// The allocation calls `dma_alloc_class` traces (dma.h: `dma_alloc`,
/// `dma_alloc_pages`, `dma_alloc_sgt`; the frees likewise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocKind {
    /// `dma_alloc_attrs` (`dma_alloc_coherent`).
    Coherent,
    /// `dma_alloc_pages` / `dma_alloc_noncoherent`.
    Pages,
    /// `dma_alloc_noncontiguous` (`dma_alloc_sgt`).
    Sgt,
}

/// What one trace line says happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// `dma_map_page` / `dma_map_phys` / `dma_map_resource`.
    Map {
        /// `phys_addr`.
        phys: u64,
        /// The address the kernel returned (`DMA_MAPPING_ERROR` on failure).
        dma: u64,
        /// Bytes.
        size: u64,
        /// Direction.
        dir: DmaDirection,
        /// `DMA_ATTR_*` bits.
        attrs: u64,
        /// `dma_map_resource` (MMIO, not RAM).
        resource: bool,
    },
    /// `dma_unmap_page` / `dma_unmap_phys` / `dma_unmap_resource`.
    Unmap {
        /// The address being unmapped.
        dma: u64,
        /// Bytes.
        size: u64,
        /// Direction.
        dir: DmaDirection,
        /// `DMA_ATTR_*` bits.
        attrs: u64,
        /// `dma_unmap_resource`.
        resource: bool,
    },
    /// `dma_map_sg`: the list's entries (physical addresses) and the DMA segments
    /// the kernel made of them.
    MapSg {
        /// Direction.
        dir: DmaDirection,
        /// `nents` of the call (the whole list, even when truncated).
        nents: u32,
        /// DMA segments returned (the whole count).
        ents: u32,
        /// The arrays stop at 128 entries.
        truncated: bool,
        /// `sg_phys()` of the first entries.
        phys: Vec<u64>,
        /// `sg_dma_address()` of the first segments.
        dma: Vec<u64>,
        /// `sg_dma_len()` of the first segments.
        sizes: Vec<u64>,
        /// `DMA_ATTR_*` bits.
        attrs: u64,
    },
    /// `dma_map_sg_err`: a `dma_map_sg` that failed.
    MapSgErr {
        /// Direction.
        dir: DmaDirection,
        /// The -errno.
        err: i64,
    },
    /// `dma_unmap_sg`: only the entries' physical addresses.
    UnmapSg {
        /// Direction.
        dir: DmaDirection,
        /// `sg_phys()` of the first entries.
        phys: Vec<u64>,
        /// `DMA_ATTR_*` bits.
        attrs: u64,
    },
    /// `dma_alloc` / `dma_alloc_pages` / `dma_alloc_sgt`.
    Alloc {
        /// Which call.
        kind: AllocKind,
        /// The DMA address (0 when the allocation failed).
        dma: u64,
        /// Bytes.
        size: u64,
        /// Direction (BIDIRECTIONAL for coherent memory).
        dir: DmaDirection,
        /// `DMA_ATTR_*` bits.
        attrs: u64,
    },
    /// `dma_free` / `dma_free_pages` / `dma_free_sgt`.
    Free {
        /// Which call.
        kind: AllocKind,
        /// The DMA address.
        dma: u64,
        /// Bytes.
        size: u64,
        /// Direction.
        dir: DmaDirection,
    },
    /// `dma_sync_single_for_cpu` / `_for_device`.
    SyncSingle {
        /// The address synced.
        dma: u64,
        /// Bytes.
        size: u64,
        /// Direction.
        dir: DmaDirection,
        /// For the CPU (else for the device).
        for_cpu: bool,
    },
    /// `dma_sync_sg_for_cpu` / `_for_device`: the segments synced.
    SyncSg {
        /// Direction.
        dir: DmaDirection,
        /// Segment addresses.
        dma: Vec<u64>,
        /// Segment lengths.
        sizes: Vec<u64>,
        /// For the CPU (else for the device).
        for_cpu: bool,
    },
    /// `swiotlb:swiotlb_bounced`: a mapping that went through the bounce buffer.
    Bounced {
        /// The device's mask.
        dma_mask: u64,
        /// The address the device could not reach.
        dev_addr: u64,
        /// Bytes.
        size: u64,
        /// `swiotlb=force`.
        force: bool,
    },
}

/// One parsed event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Line number in the file (1-based).
    pub line: u32,
    /// CPU that traced it.
    pub cpu: u32,
    /// Timestamp in ns.
    pub ts_ns: u64,
    /// The context it ran in, from the flags column: 0 task, 1 softirq, 2 hardirq,
    /// 3 NMI (unknown without flags: 0).
    pub irq_level: u8,
    /// Index into [`Trace::devices`].
    pub dev: u32,
    /// The call.
    pub kind: EventKind,
}

/// A parsed trace.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The events, in timestamp order (stable: lines with equal timestamps keep the
    /// file's order).
    pub events: Vec<Event>,
    /// Device names as the trace prints them (`dev_name()`), by first appearance.
    pub devices: Vec<String>,
    /// Lines of other events, by event name (skipped).
    pub skipped: BTreeMap<String, u64>,
    /// `trace_marker` lines: (timestamp ns, text), in file order.
    pub markers: Vec<(u64, String)>,
    /// Lines that could not be read: their count.
    pub bad_lines: u64,
    /// The first unreadable line: (number, why).
    pub first_bad: Option<(u32, String)>,
    /// Events whose arrays the kernel truncated at 128 entries.
    pub truncated: u64,
    /// The file was not in timestamp order (per-CPU files concatenated): the CPUs'
    /// streams were merged by timestamp, each keeping its own order.
    pub reordered: bool,
    /// Calls moved before the interrupt handler's calls traced just ahead of them
    /// (see [`Nester`]).
    pub moved_before_irq: u64,
}

/// The event names this parser reads.
pub const EVENT_NAMES: &[&str] = &[
    "dma_map_page",
    "dma_map_phys",
    "dma_map_resource",
    "dma_unmap_page",
    "dma_unmap_phys",
    "dma_unmap_resource",
    "dma_map_sg",
    "dma_map_sg_err",
    "dma_unmap_sg",
    "dma_alloc",
    "dma_alloc_pages",
    "dma_alloc_sgt",
    "dma_alloc_sgt_err",
    "dma_free",
    "dma_free_pages",
    "dma_free_sgt",
    "dma_sync_single_for_cpu",
    "dma_sync_single_for_device",
    "dma_sync_sg_for_cpu",
    "dma_sync_sg_for_device",
    "swiotlb_bounced",
];

/// Reads a trace's lines one at a time, keeping what [`parse`] keeps between lines
/// (device names, counts of other events, the first unreadable line), so that a
/// replay can stream a file without holding its events.
#[derive(Debug, Default)]
pub struct LineReader {
    /// Everything about the trace but its events (`events` stays empty).
    pub summary: Trace,
    /// Events read so far.
    pub events: u64,
    dev_index: BTreeMap<String, u32>,
    last_ts: u64,
    trace_lines: u64,
}

impl LineReader {
    /// Reads line `i` (0-based): its event, or `None` for a comment, another event
    /// (counted) or an unreadable line (counted, the first one kept).
    pub fn line(&mut self, i: usize, raw: &str) -> Option<Event> {
        let no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let s = raw.trim_end_matches('\r').trim_start();
        if s.is_empty() || s.starts_with('#') {
            return None;
        }
        // trace-cmd report's header ("version = 6", "cpus=1", "CPU 0 is empty").
        if i < 64 && (s.starts_with("version =") || s.starts_with("cpus=") || s.starts_with("CPU "))
        {
            return None;
        }
        self.trace_lines += 1;
        let t = &mut self.summary;
        match parse_line(s, no, t, &mut self.dev_index) {
            Ok(Some(ev)) => {
                if ev.ts_ns < self.last_ts {
                    t.reordered = true;
                }
                self.last_ts = self.last_ts.max(ev.ts_ns);
                self.events += 1;
                Some(ev)
            }
            Ok(None) => None,
            Err(why) => {
                t.bad_lines += 1;
                if t.first_bad.is_none() {
                    t.first_bad = Some((no, why));
                }
                None
            }
        }
    }

    /// Why a file where no line held a DMA event is refused.
    pub fn no_events_error(&self) -> String {
        let t = &self.summary;
        let skipped: u64 = t.skipped.values().sum();
        match (&t.first_bad, self.trace_lines) {
            (Some((no, why)), _) if skipped == 0 => {
                format!("line {no}: not an ftrace line of a dma: event ({why}); nothing in the file could be read")
            }
            (_, 0) => "no trace lines at all (an empty file, or only # comments)".to_string(),
            _ => format!(
                "no dma: events among {} trace lines ({skipped} of other events{}); enable them with `echo 1 > /sys/kernel/tracing/events/dma/enable` (or `trace-cmd record -e dma`)",
                self.trace_lines,
                t.first_bad
                    .as_ref()
                    .map_or(String::new(), |(no, why)| format!(", first unreadable line {no}: {why}"))
            ),
        }
    }
}

/// Decompressed traces larger than this are refused (a gzip bomb must not take
/// the host's memory): 1 GiB of text is some 8 million events.
pub const MAX_TRACE_BYTES: u64 = 1 << 30;

/// A trace file's bytes, gunzipped when they start with the gzip magic
/// (`trace.txt.gz`, as `gzip` or `trace-cmd report | gzip` write it).
///
/// # Errors
/// A corrupt gzip stream, or one that decompresses past [`MAX_TRACE_BYTES`].
pub fn decompress(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    use std::io::Read;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .take(MAX_TRACE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip: {e}"))?;
    if out.len() as u64 > MAX_TRACE_BYTES {
        return Err(format!(
            "gzip: the trace decompresses to more than {}",
            crate::units::human_size(MAX_TRACE_BYTES)
        ));
    }
    Ok(out)
}

/// The lines of a file read as text (binary junk becomes replacement characters
/// and fails line by line).
pub fn text_of(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Parses a whole trace file into memory.
///
/// # Errors
/// When no line holds a readable event: a message with the first unreadable line's
/// number, or saying that the file has no `dma:` events at all.
pub fn parse(bytes: &[u8]) -> Result<Trace, String> {
    let text = text_of(bytes);
    let mut r = LineReader::default();
    let mut nest = Nester::default();
    let mut events = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        if let Some(ev) = r.line(i, raw) {
            nest.push(ev, &mut events);
        }
    }
    nest.finish(&mut events);
    if events.is_empty() {
        return Err(r.no_events_error());
    }
    let mut t = r.summary;
    t.moved_before_irq = nest.moved;
    t.events = if t.reordered {
        merge_cpus(events)
    } else {
        events
    };
    Ok(t)
}

/// Merges the CPUs' streams by timestamp; each CPU keeps its file order (ties go to
/// the earlier line).
fn merge_cpus(events: Vec<Event>) -> Vec<Event> {
    let mut per_cpu: BTreeMap<u32, std::collections::VecDeque<Event>> = BTreeMap::new();
    for e in events {
        per_cpu.entry(e.cpu).or_default().push_back(e);
    }
    let mut out = Vec::new();
    loop {
        let next = per_cpu
            .iter()
            .filter_map(|(c, q)| q.front().map(|e| (e.ts_ns, e.line, *c)))
            .min();
        let Some((_, _, c)) = next else { break };
        if let Some(e) = per_cpu
            .get_mut(&c)
            .and_then(std::collections::VecDeque::pop_front)
        {
            out.push(e);
        }
    }
    out
}

/// Every DMA tracepoint fires at the end of its call (`dma_map_page_attrs`,
/// `dma_unmap_page_attrs`... in kernel/dma/mapping.c trace after the work): when an
/// interrupt arrives between a call's work and its tracepoint, the handler's calls
/// are traced first although the interrupted call's work (its IOVA freed into the
/// per-CPU cache, say) came before them. A call traced on the same CPU in the same
/// microsecond as the last of a run of calls from a deeper context (the flags'
/// hardirq/softirq column) is moved back before that run. Events stream through:
/// an event is handed on once no later one can move before it (a task-context
/// event ends every run).
#[derive(Debug, Default)]
pub struct Nester {
    buf: std::collections::VecDeque<Event>,
    /// Events moved.
    pub moved: u64,
}

/// Events a [`Nester`] holds at most (a run of interrupt calls is a few).
const NEST_WINDOW: usize = 4096;

impl Nester {
    /// Takes the next event in file order; appends to `out` those whose place is
    /// final.
    pub fn push(&mut self, e: Event, out: &mut Vec<Event>) {
        let jumps = self.buf.back().is_some_and(|prev| {
            prev.cpu == e.cpu && prev.irq_level > e.irq_level && prev.ts_ns / 1000 == e.ts_ns / 1000
        });
        if jumps {
            let mut start = self.buf.len() - 1;
            while start > 0
                && self.buf[start - 1].cpu == e.cpu
                && self.buf[start - 1].irq_level > e.irq_level
            {
                start -= 1;
            }
            self.buf.insert(start, e);
            self.moved += 1;
        } else {
            self.buf.push_back(e);
        }
        // Nothing moves across a task-context event: all up to the last one is final.
        if let Some(last0) = self.buf.iter().rposition(|x| x.irq_level == 0) {
            out.extend(self.buf.drain(..=last0));
        }
        while self.buf.len() > NEST_WINDOW {
            out.extend(self.buf.pop_front());
        }
    }

    /// Hands on what is left at the end of the file.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        out.extend(self.buf.drain(..));
    }
}

/// The hardirq/softirq column of the flags (`d.h1.`: third character): 0 task, 1
/// softirq, 2 hardirq, 3 NMI.
fn irq_level(flags: &str) -> u8 {
    match flags.as_bytes().get(2) {
        Some(b's') => 1,
        Some(b'h' | b'H') => 2,
        Some(b'z' | b'Z') => 3,
        _ => 0,
    }
}

/// The prefix of a trace line: (cpu, timestamp ns, irq level, event name, the rest).
fn split_prefix(s: &str) -> Result<(u32, u64, u8, &str, &str), String> {
    // The CPU field: the first "[digits]" (task names may hold '-', ' ', digits).
    let mut cpu = None;
    let mut after = 0;
    let b = s.as_bytes();
    let mut k = 0;
    while k < b.len() {
        if b[k] == b'[' {
            let mut j = k + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j > k + 1 && j < b.len() && b[j] == b']' {
                cpu = s[k + 1..j].parse::<u32>().ok();
                after = j + 1;
                break;
            }
        }
        k += 1;
    }
    let cpu = cpu.ok_or("no [CPU] field")?;
    let rest = &s[after..];
    // Optional flags, then "seconds.fraction:", then "event:".
    let mut words = rest.split_whitespace();
    let mut first = words.next().ok_or("nothing after [CPU]")?;
    let mut level = 0;
    if !first.ends_with(':') {
        level = irq_level(first);
        first = words.next().ok_or("no timestamp")?;
    }
    let ts = first
        .strip_suffix(':')
        .ok_or("no timestamp ending in ':'")?;
    let ts_ns = parse_timestamp(ts).ok_or_else(|| format!("bad timestamp {ts:?}"))?;
    let ts_at = rest.find(first).ok_or("no timestamp")? + first.len();
    let tail = rest[ts_at..].trim_start();
    let colon = tail.find(':').ok_or("no event name")?;
    let name = &tail[..colon];
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err("no event name".into());
    }
    // trace-cmd may prefix the system ("dma:dma_map_page" never appears in ftrace).
    let name = name.rsplit(':').next().unwrap_or(name);
    Ok((cpu, ts_ns, level, name, tail[colon + 1..].trim()))
}

/// `12.345678` (µs, the default clock's print) or `12.345678901` → ns; a bare
/// integer is taken as ns (counter clocks).
fn parse_timestamp(ts: &str) -> Option<u64> {
    match ts.split_once('.') {
        Some((s, f)) => {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let secs: u64 = s.parse().ok()?;
            let frac: u64 = f.parse().ok()?;
            let scale = 10u64.pow(9 - f.len() as u32);
            secs.checked_mul(1_000_000_000)?.checked_add(frac * scale)
        }
        None => ts.parse().ok(),
    }
}

fn parse_line(
    s: &str,
    no: u32,
    t: &mut Trace,
    dev_index: &mut BTreeMap<String, u32>,
) -> Result<Option<Event>, String> {
    let (cpu, ts_ns, irq_level, name, fields) = split_prefix(s)?;
    if name == "tracing_mark_write" || name == "print" {
        t.markers.push((ts_ns, fields.chars().take(200).collect()));
        *t.skipped.entry(name.to_string()).or_default() += 1;
        return Ok(None);
    }
    if !EVENT_NAMES.contains(&name) {
        let key: String = name.chars().take(64).collect();
        if t.skipped.len() < 256 || t.skipped.contains_key(&key) {
            *t.skipped.entry(key).or_default() += 1;
        } else {
            *t.skipped.entry("(other)".into()).or_default() += 1;
        }
        return Ok(None);
    }
    let f = Fields::new(name, fields)?;
    let dev_name = f.device.to_string();
    let kind = event_kind(name, &f)?;
    if let EventKind::MapSg {
        truncated: true, ..
    } = kind
    {
        t.truncated += 1;
    }
    let n = dev_index.len() as u32;
    let dev = *dev_index.entry(dev_name.clone()).or_insert_with(|| {
        t.devices.push(dev_name);
        n
    });
    Ok(Some(Event {
        line: no,
        cpu,
        ts_ns,
        irq_level,
        dev,
        kind,
    }))
}

/// The `key=value` fields of an event, after the device name.
struct Fields<'a> {
    device: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
    truncated: bool,
    name: &'a str,
}

impl<'a> Fields<'a> {
    fn new(name: &'a str, s: &'a str) -> Result<Fields<'a>, String> {
        let mut words = s.split_whitespace();
        let device = if name == "swiotlb_bounced" {
            // "dev_name: 0000:00:01.0 dma_mask=..."
            match words.next() {
                Some("dev_name:") => words.next().ok_or("no device name")?,
                _ => return Err("swiotlb_bounced without dev_name:".into()),
            }
        } else {
            words.next().ok_or("no device name")?
        };
        if device.contains('=') || device.len() > 128 {
            return Err(format!("{name}: no device name before the fields"));
        }
        let mut pairs = Vec::new();
        let mut truncated = false;
        for w in words {
            if w == "[TRUNCATED]" {
                truncated = true;
            } else if let Some((k, v)) = w.split_once('=') {
                pairs.push((k, v));
            } else if name == "swiotlb_bounced" && (w == "FORCE" || w == "NORMAL") {
                pairs.push(("force", w));
            } else {
                return Err(format!("{name}: unexpected word {:?}", short(w)));
            }
        }
        Ok(Fields {
            device,
            pairs,
            truncated,
            name,
        })
    }

    fn get(&self, k: &str) -> Result<&'a str, String> {
        self.pairs
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("{}: no {k}= field", self.name))
    }

    fn hex(&self, k: &str) -> Result<u64, String> {
        let v = self.get(k)?;
        parse_hex(v).ok_or_else(|| format!("{}: {k}={} is not hexadecimal", self.name, short(v)))
    }

    fn dec(&self, k: &str) -> Result<u64, String> {
        let v = self.get(k)?;
        v.parse()
            .map_err(|_| format!("{}: {k}={} is not a number", self.name, short(v)))
    }

    fn dir(&self) -> Result<DmaDirection, String> {
        match self.get("dir")? {
            "BIDIRECTIONAL" => Ok(DmaDirection::Bidirectional),
            "TO_DEVICE" => Ok(DmaDirection::ToDevice),
            "FROM_DEVICE" => Ok(DmaDirection::FromDevice),
            "NONE" => Ok(DmaDirection::None),
            other => Err(format!("{}: unknown dir={}", self.name, short(other))),
        }
    }

    fn attrs(&self) -> Result<u64, String> {
        self.get("attrs").map_or(Ok(0), parse_attrs)
    }

    fn array(&self, k: &str) -> Result<Vec<u64>, String> {
        let v = self.get(k)?;
        let inner = v
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .ok_or_else(|| format!("{}: {k}= is not an array {{...}}", self.name))?;
        if inner.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for x in inner.split(',') {
            if out.len() >= MAX_ARRAY {
                return Err(format!(
                    "{}: {k}= has more than {MAX_ARRAY} entries",
                    self.name
                ));
            }
            out.push(
                parse_hex(x).ok_or_else(|| format!("{}: {k}= holds {:?}", self.name, short(x)))?,
            );
        }
        Ok(out)
    }

    /// `nents=shown/full`: the full count.
    fn count(&self, k: &str) -> Result<u32, String> {
        let v = self.get(k)?;
        let full = v.rsplit('/').next().unwrap_or(v);
        full.parse()
            .map_err(|_| format!("{}: {k}={} is not a count", self.name, short(v)))
    }
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// `%llx` (no prefix) or `0x%x`.
fn parse_hex(v: &str) -> Option<u64> {
    let h = v.strip_prefix("0x").unwrap_or(v);
    if h.is_empty() || h.len() > 16 {
        return None;
    }
    u64::from_str_radix(h, 16).ok()
}

/// `decode_dma_attrs`: `SKIP_CPU_SYNC|NO_WARN` → bits (unknown names are ignored).
fn parse_attrs(v: &str) -> Result<u64, String> {
    let mut bits = 0;
    for n in v.split('|').filter(|n| !n.is_empty()) {
        bits |= match n {
            "WEAK_ORDERING" => 1 << 1,
            "WRITE_COMBINE" => 1 << 2,
            "NO_KERNEL_MAPPING" => 1 << 4,
            "SKIP_CPU_SYNC" => 1 << 5,
            "FORCE_CONTIGUOUS" => 1 << 6,
            "ALLOC_SINGLE_PAGES" => 1 << 7,
            "NO_WARN" => 1 << 8,
            "PRIVILEGED" => 1 << 9,
            "MMIO" => 1 << 10,
            _ => 0,
        };
    }
    Ok(bits)
}

fn event_kind(name: &str, f: &Fields) -> Result<EventKind, String> {
    Ok(match name {
        "dma_map_page" | "dma_map_phys" | "dma_map_resource" => EventKind::Map {
            phys: f.hex("phys_addr")?,
            dma: f.hex("dma_addr")?,
            size: f.dec("size")?,
            dir: f.dir()?,
            attrs: f.attrs()?,
            resource: name == "dma_map_resource",
        },
        "dma_unmap_page" | "dma_unmap_phys" | "dma_unmap_resource" => EventKind::Unmap {
            dma: f.hex("dma_addr")?,
            size: f.dec("size")?,
            dir: f.dir()?,
            attrs: f.attrs()?,
            resource: name == "dma_unmap_resource",
        },
        "dma_map_sg" => {
            let phys = f.array("phys_addrs")?;
            let dma = f.array("dma_addrs")?;
            let sizes = f.array("sizes")?;
            let (nents, ents) = (f.count("nents")?, f.count("ents")?);
            if dma.len() != sizes.len() {
                return Err("dma_map_sg: dma_addrs and sizes differ in length".into());
            }
            let truncated = f.truncated || nents as usize > phys.len() || ents as usize > dma.len();
            if phys.len() > nents as usize || dma.len() > ents as usize {
                return Err("dma_map_sg: more array entries than nents/ents".into());
            }
            EventKind::MapSg {
                dir: f.dir()?,
                nents,
                ents,
                truncated,
                phys,
                dma,
                sizes,
                attrs: f.attrs()?,
            }
        }
        "dma_map_sg_err" => EventKind::MapSgErr {
            dir: f.dir()?,
            err: f
                .get("err")?
                .parse()
                .map_err(|_| "dma_map_sg_err: bad err=")?,
        },
        "dma_unmap_sg" => EventKind::UnmapSg {
            dir: f.dir()?,
            phys: f.array("phys_addrs")?,
            attrs: f.attrs()?,
        },
        "dma_alloc" | "dma_alloc_pages" | "dma_alloc_sgt" | "dma_alloc_sgt_err" => {
            EventKind::Alloc {
                kind: alloc_kind(name),
                dma: if name == "dma_alloc_sgt_err" {
                    0
                } else {
                    f.hex("dma_addr")?
                },
                size: f.dec("size")?,
                dir: f.dir()?,
                attrs: f.attrs()?,
            }
        }
        "dma_free" | "dma_free_pages" | "dma_free_sgt" => EventKind::Free {
            kind: alloc_kind(name),
            dma: f.hex("dma_addr")?,
            size: f.dec("size")?,
            dir: f.dir()?,
        },
        "dma_sync_single_for_cpu" | "dma_sync_single_for_device" => EventKind::SyncSingle {
            dma: f.hex("dma_addr")?,
            size: f.dec("size")?,
            dir: f.dir()?,
            for_cpu: name.ends_with("cpu"),
        },
        "dma_sync_sg_for_cpu" | "dma_sync_sg_for_device" => {
            let dma = f.array("dma_addrs")?;
            let sizes = f.array("sizes")?;
            if dma.len() != sizes.len() {
                return Err(format!("{name}: dma_addrs and sizes differ in length"));
            }
            EventKind::SyncSg {
                dir: f.dir()?,
                dma,
                sizes,
                for_cpu: name.ends_with("cpu"),
            }
        }
        "swiotlb_bounced" => EventKind::Bounced {
            dma_mask: f.hex("dma_mask")?,
            dev_addr: f.hex("dev_addr")?,
            size: f.dec("size")?,
            force: f.get("force").is_ok_and(|v| v == "FORCE"),
        },
        other => return Err(format!("{other}: not a DMA event")),
    })
}

fn alloc_kind(name: &str) -> AllocKind {
    if name.contains("pages") {
        AllocKind::Pages
    } else if name.contains("sgt") {
        AllocKind::Sgt
    } else {
        AllocKind::Coherent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "    kworker/u4:0-12      [000] .....    14.549829: dma_map_page: 0000:00:01.0 dir=FROM_DEVICE dma_addr=6d50000 size=4096 phys_addr=6d50000 attrs=";

    #[test]
    fn a_dma_map_page_line_of_linux_6_12() {
        let t = parse(MAP.as_bytes()).unwrap();
        assert_eq!(t.devices, ["0000:00:01.0"]);
        let e = &t.events[0];
        assert_eq!((e.line, e.cpu, e.ts_ns), (1, 0, 14_549_829_000));
        assert_eq!(
            e.kind,
            EventKind::Map {
                phys: 0x6d5_0000,
                dma: 0x6d5_0000,
                size: 4096,
                dir: DmaDirection::FromDevice,
                attrs: 0,
                resource: false
            }
        );
    }

    #[test]
    fn trace_cmd_report_lines_without_flags_and_map_phys() {
        let l = "  insmod-146 [001]    10.280693: dma_map_phys: fe580000.ethernet dir=TO_DEVICE dma_addr=0x80001000 size=1514 phys_addr=0x80001000 attrs=SKIP_CPU_SYNC";
        let t = parse(l.as_bytes()).unwrap();
        assert_eq!(t.devices, ["fe580000.ethernet"]);
        assert_eq!(t.events[0].cpu, 1);
        assert!(matches!(
            t.events[0].kind,
            EventKind::Map {
                attrs: 32,
                size: 1514,
                ..
            }
        ));
    }

    #[test]
    fn a_truncated_sg_keeps_its_full_counts() {
        let l = "insmod-199 [000] ..... 15.519121: dma_map_sg: 0000:00:08.0 dir=BIDIRECTIONAL nents=2/220 ents=1/1 [TRUNCATED] dma_addrs={0xffc00000} sizes={0x3e8000} phys_addrs={0x6c4c000,0x6e25000} attrs=";
        let t = parse(l.as_bytes()).unwrap();
        assert_eq!(t.truncated, 1);
        match &t.events[0].kind {
            EventKind::MapSg {
                nents,
                ents,
                truncated,
                phys,
                sizes,
                ..
            } => {
                assert_eq!((*nents, *ents, *truncated), (220, 1, true));
                assert_eq!(phys.len(), 2);
                assert_eq!(sizes, &[0x3e_8000]);
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn other_events_are_counted_and_interleaved_cpus_sorted() {
        let text = "# tracer: nop\n\
            a-1 [001] d..1. 2.000000: dma_unmap_page: d0 dir=TO_DEVICE dma_addr=1000 size=8 attrs=\n\
            a-1 [000] ..... 1.500000: map: IOMMU: iova=0x0000000000001000 - 0x0000000000002000 paddr=0x0000000000001000 size=4096\n\
            a-1 [000] ..... 1.000000: dma_map_page: d0 dir=TO_DEVICE dma_addr=1000 size=8 phys_addr=1000 attrs=\n\
            init-1 [000] ..... 1.2: tracing_mark_write: === phase\n";
        let t = parse(text.as_bytes()).unwrap();
        assert!(t.reordered);
        assert_eq!(t.events[0].line, 4, "the earlier timestamp first");
        assert_eq!(t.skipped["map"], 1);
        assert_eq!(t.markers, [(1_200_000_000, "=== phase".to_string())]);
    }

    #[test]
    fn garbage_is_an_error_with_the_line_number_only_when_nothing_parses() {
        let e = parse(b"# c\nhello world\n\x00\xff\xfe junk").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let mixed = format!("junk\n{MAP}\n[000] 1.0: dma_map_page: x dir=UP\n");
        let t = parse(mixed.as_bytes()).unwrap();
        assert_eq!(t.events.len(), 1);
        assert_eq!(t.bad_lines, 2);
        assert_eq!(t.first_bad.as_ref().unwrap().0, 1);
        let none = parse(b"a-1 [000] ..... 1.0: sched_switch: x\n").unwrap_err();
        assert!(none.contains("no dma: events"), "{none}");
        assert!(parse(b"").unwrap_err().contains("empty"));
    }

    #[test]
    fn attrs_names_are_the_dma_attr_bits() {
        // include/linux/dma-mapping.h: DMA_ATTR_SKIP_CPU_SYNC (1UL << 5), NO_WARN (1UL << 8).
        assert_eq!(
            parse_attrs("SKIP_CPU_SYNC|NO_WARN").unwrap(),
            (1 << 5) | (1 << 8)
        );
        assert_eq!(parse_attrs("").unwrap(), 0);
    }
}
