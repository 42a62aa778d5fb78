//! Findings as data: built by the sanitizer, rendered only by `report/`.

use serde::Serialize;

/// How bad a finding is: errors fail the run (exit 1), warnings and infos do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A performance hint or a note.
    Info,
    /// Works, but costs or risks something.
    Warning,
    /// A bug: data corrupted now or on another machine.
    Error,
}

/// One event in a buffer's history (dma-debug's "Mapped at:", Miri's "allocated here").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEvent {
    /// Simulated time in ns.
    pub time_ns: u64,
    /// Script line (0 when the event came from the machine itself).
    pub line: u32,
    /// What happened.
    pub event: Text,
}

/// An event's text: a constant, or a string shared by every history that holds
/// it (a buffer's allocation event is copied into each of its mappings' histories,
/// so a copy costs a reference count, and a constant costs nothing).
#[derive(Clone)]
pub struct Text(TextRepr);

#[derive(Clone)]
enum TextRepr {
    Static(&'static str),
    Shared(std::sync::Arc<str>),
}

impl Text {
    /// The empty text of an event filled in later (a map, a device transfer).
    pub const EMPTY: Text = Text(TextRepr::Static(""));
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        match &self.0 {
            TextRepr::Static(s) => s,
            TextRepr::Shared(s) => s,
        }
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(TextRepr::Shared(s.into()))
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text(TextRepr::Static(s))
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

/// One reported mistake.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Stable id (`CLI_AND_REPORTS.md`).
    pub id: &'static str,
    /// Severity of this id.
    pub severity: Severity,
    /// True: the reader got bytes that differ from the coherent truth; false: the bug
    /// was real but hidden this time; `None`: the idea does not apply.
    pub manifested: Option<bool>,
    /// Device name, when a device is involved.
    pub device: Option<String>,
    /// Address the finding is about (bus address for DMA, else physical or virtual).
    pub addr: Option<u64>,
    /// Length in bytes.
    pub len: Option<u64>,
    /// Simulated time in ns.
    pub time_ns: u64,
    /// Script line.
    pub line: u32,
    /// When `line` is inside script functions: the lines of the calls that led
    /// there, innermost first (`line 82 ← 140 ← 171` is `line` 82 and `[140, 171]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub called_from: Vec<u32>,
    /// On how many mappings (chunks, packets, buffers) this mistake was seen at
    /// this line: the same id and device, and a history with the same script
    /// lines, is one mistake repeated. Repeats on one mapping count once.
    pub count: u64,
    /// What went wrong, dma-debug style: fixed phrase plus `[key=value]` facts.
    pub message: String,
    /// The concrete fix.
    pub help: String,
    /// The buffer's history up to the finding.
    pub history: Vec<HistoryEvent>,
}

/// Every finding id with its severity and a one-line meaning; `dmasim` documents the
/// ids from this table.
pub const FINDING_IDS: &[(&str, Severity, &str)] = &[
    (
        "unmap-unknown",
        Severity::Error,
        "unmap of an address that is not mapped (never, or already unmapped)",
    ),
    (
        "unmap-size-mismatch",
        Severity::Error,
        "unmap with a size other than the mapping's",
    ),
    (
        "unmap-dir-mismatch",
        Severity::Error,
        "unmap with a direction other than the mapping's",
    ),
    (
        "unmap-type-mismatch",
        Severity::Error,
        "unmapped with the wrong function (single, page, sg, coherent)",
    ),
    (
        "mapping-error-unchecked",
        Severity::Error,
        "a mapping's address was never passed to dma_mapping_error",
    ),
    (
        "map-non-linear",
        Severity::Error,
        "dma_map_single of memory outside the linear map (vmalloc, coherent remap, user)",
    ),
    (
        "sync-unknown",
        Severity::Error,
        "sync of an address that no mapping contains",
    ),
    (
        "sync-dir-mismatch",
        Severity::Error,
        "sync with a direction the mapping does not allow",
    ),
    (
        "sync-out-of-bounds",
        Severity::Error,
        "sync past the end of the mapping",
    ),
    (
        "coherent-free-mismatch",
        Severity::Error,
        "dma_free_coherent with another size or address than allocated",
    ),
    (
        "overlapping-mapping",
        Severity::Error,
        "two live mappings share a cache line",
    ),
    (
        "mapping-leak",
        Severity::Error,
        "a mapping still alive at remove_device or at the end of the run",
    ),
    (
        "sg-unsupported",
        Severity::Error,
        "a device without scatter-gather was given more than one DMA segment",
    ),
    (
        "sg-segment-too-long",
        Severity::Error,
        "an sg segment is longer than the device's max_segment",
    ),
    (
        "dir-violation",
        Severity::Error,
        "a device wrote a DMA_TO_DEVICE mapping or read a DMA_FROM_DEVICE one",
    ),
    (
        "stale-device-read",
        Severity::Error,
        "a device read bytes whose newest value was still in a CPU cache",
    ),
    (
        "stale-cpu-read",
        Severity::Error,
        "the CPU read cached bytes older than what a device wrote",
    ),
    (
        "cpu-access-device-owned",
        Severity::Error,
        "the CPU touched a streaming buffer while the device owned it",
    ),
    (
        "cpu-access-benign",
        Severity::Info,
        "the CPU touched a streaming buffer the device owned in a way no supported platform corrupts (a DMA-API-HOWTO rule, not a data hazard)",
    ),
    (
        "dmaengine-unsynchronized",
        Severity::Error,
        "memory or a channel released after dmaengine_terminate_async without dmaengine_synchronize, while a completion callback may still run",
    ),
    (
        "descriptor-order",
        Severity::Error,
        "a device fetched a descriptor whose OWN bit was not ordered after its other fields (no dma_wmb), or after a writel_relaxed doorbell",
    ),
    (
        "dirty-writeback-clobber",
        Severity::Error,
        "a dirty line was written back over bytes a device had written",
    ),
    (
        "cpu-write-discarded",
        Severity::Error,
        "CPU stores to a FROM_DEVICE/BIDIRECTIONAL mapping were discarded by a later sync for the CPU or the unmap",
    ),
    (
        "use-after-free-dma",
        Severity::Error,
        "a device used a mapping of memory that had been freed",
    ),
    (
        "virtual-address-as-dma",
        Severity::Error,
        "a device was given a CPU virtual address of a live buffer",
    ),
    (
        "dma-outside-mapping",
        Severity::Error,
        "a device touched memory that no live mapping of it covers",
    ),
    (
        "unpinned-user-dma",
        Severity::Error,
        "a device used the physical address of a user page that was not pinned",
    ),
    (
        "uncached-cpu-heavy",
        Severity::Warning,
        "heavy CPU use of uncached coherent memory",
    ),
    (
        "cma-exhausted",
        Severity::Warning,
        "CMA could not provide a contiguous allocation",
    ),
    (
        "zone-exhausted",
        Severity::Warning,
        "an allocation failed in its zone while other zones had free memory",
    ),
    ("enomem", Severity::Warning, "an allocation failed"),
    (
        "swiotlb-full",
        Severity::Warning,
        "a mapping needed a bounce buffer and the swiotlb pool had none (or it was over 256 KiB)",
    ),
    (
        "bounce-buffering",
        Severity::Warning,
        "mappings were copied through swiotlb bounce buffers (costs CPU time and throughput)",
    ),
    (
        "iommu-fault",
        Severity::Error,
        "the IOMMU stopped a device access (no mapping, or a write to a read-only one)",
    ),
    (
        "dma-after-unmap",
        Severity::Error,
        "a device used an address after its unmap (lazy invalidation may let it through)",
    ),
    (
        "iova-exhausted",
        Severity::Warning,
        "no IOVA space was left below the device's limit",
    ),
    (
        "allocator-corrupted",
        Severity::Error,
        "an unmap with another address, size or device than its map (or a second unmap) left the IOVA allocator or the swiotlb pool inconsistent, as Linux's would be",
    ),
    (
        "user-dma-without-iommu",
        Severity::Error,
        "a device a process controls without an IOMMU reached memory outside that process",
    ),
    (
        "memlock-limit",
        Severity::Warning,
        "pinning for VFIO would exceed the process's RLIMIT_MEMLOCK",
    ),
    (
        "cacheable-alias",
        Severity::Error,
        "a cacheable mapping of memory the kernel maps uncached for a non-coherent device",
    ),
    (
        "mmap-beyond-buffer",
        Severity::Error,
        "remap_pfn_range gave a process whole pages a kernel buffer does not fill",
    ),
    (
        "dma-pool-bad-free",
        Severity::Error,
        "dma_pool_free of a block already free, or of an address the pool never handed out",
    ),
    (
        "dma-pool-busy",
        Severity::Error,
        "dma_pool_destroy while blocks were still allocated: the pool's pages leak",
    ),
    (
        "double-free",
        Severity::Error,
        "kfree, vfree or free_pages of a buffer that is not a live allocation of that kind (freed twice, or with the wrong call)",
    ),
    (
        "dma-mask-default",
        Severity::Warning,
        "a device kept the default 32-bit DMA mask on a machine with RAM above 4 GiB",
    ),
];

/// The severity of an id (unknown ids are errors).
pub fn severity_of(id: &str) -> Severity {
    FINDING_IDS
        .iter()
        .find(|(i, _, _)| *i == id)
        .map_or(Severity::Error, |&(_, s, _)| s)
}
