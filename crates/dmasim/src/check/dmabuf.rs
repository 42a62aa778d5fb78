//! What the sanitizer says about the mappings an exporter made for a dma-buf
//! importer (`dma_buf_map_attachment`). The CPU side of a dma-buf never calls the
//! `dma_sync_*` functions itself: user space brackets its accesses with
//! `DMA_BUF_IOCTL_SYNC`, a kernel importer with `dma_buf_begin_cpu_access` /
//! `dma_buf_end_cpu_access`, and the exporter syncs every mapped attachment
//! (`Documentation/driver-api/dma-buf.rst`, "CPU Access to DMA Buffer Objects").
//! So the messages and fixes name those calls; the finding ids stay the ones the
//! same broken rule has everywhere else.

use crate::kernel::dma::DmaDirection;

/// The fix for a sync whose direction is not the attachment's: the
/// `DMA_BUF_SYNC_*` flags choose the direction (`dma_buf_ioctl`).
pub(super) fn sync_flags_help(mapped: DmaDirection) -> String {
    let flags = match mapped {
        DmaDirection::ToDevice => "DMA_BUF_SYNC_WRITE (devices only read it: DMA_TO_DEVICE)",
        DmaDirection::FromDevice => "DMA_BUF_SYNC_READ (devices only write it: DMA_FROM_DEVICE)",
        _ => "DMA_BUF_SYNC_RW (DMA_BIDIRECTIONAL)",
    };
    format!("DMA_BUF_IOCTL_SYNC's flags become the sync's direction (READ: DMA_FROM_DEVICE, WRITE: DMA_TO_DEVICE, RW: DMA_BIDIRECTIONAL); the importer mapped this buffer {}, so sync it with {flags}, or map it DMA_BIDIRECTIONAL in the importer", mapped.name())
}

/// The fix for every missing dma-buf hand-over.
pub(super) const HELP: &str = "bracket every CPU access to a dma-buf: ioctl(fd, DMA_BUF_IOCTL_SYNC) with DMA_BUF_SYNC_START and the access's READ/WRITE flags before it, and with DMA_BUF_SYNC_END and the same flags after it (in the kernel: dma_buf_begin_cpu_access / dma_buf_end_cpu_access); the exporter then syncs every mapped attachment for the CPU or the device";

/// `cpu-access-device-owned`: a CPU load while the attachment's mapping is the
/// device's.
pub(super) fn read_device_owned(n: u64, dev: &str, len: u64, addr: u64) -> String {
    format!("CPU read {len} bytes of dma-buf #{n} while it is mapped for {dev} and not handed to the CPU (no DMA_BUF_IOCTL_SYNC with DMA_BUF_SYNC_START) [device address={addr:#x}]")
}

/// `cpu-access-device-owned`: CPU stores while the device owned the mapping,
/// found when the buffer is handed to the device again.
pub(super) fn store_device_owned(n: u64, dev: &str, bytes: u64, addr: u64, dir: &str) -> String {
    format!("CPU stored {bytes} bytes into dma-buf #{n} while it was mapped for {dev}, without DMA_BUF_IOCTL_SYNC(DMA_BUF_SYNC_START) first [device address={addr:#x}] [mapped with {dir}]")
}

/// `cpu-access-device-owned`: the device wrote over CPU stores made while it
/// owned the mapping.
pub(super) fn overwritten(n: u64, dev: &str, bytes: u64, addr: u64) -> String {
    format!("CPU stored {bytes} bytes into dma-buf #{n} while it was mapped for {dev} (no DMA_BUF_IOCTL_SYNC with DMA_BUF_SYNC_START); the device then wrote over them [device address={addr:#x}]")
}

/// The fix when the exporter's syncs do nothing (vb2-dma-contig).
pub(super) const SYNCLESS_HELP: &str = "vb2-dma-contig's DMA_BUF_IOCTL_SYNC does no cache maintenance: its memory is coherent for the exporting device only, and a buffer a coherent device exports is cacheable. Share frames with a non-coherent importer through a dma-buf heap buffer both devices import (the heap syncs every attachment), or keep the CPU out of them";

/// A read of a dma-buf that got stale lines: the message and fix, for a reader
/// that skipped the sync (`syncless` false) or behind an exporter whose syncs do
/// nothing (vb2-dma-contig).
#[derive(Clone, Copy)]
pub(super) struct StaleRead<'a> {
    /// The dma-buf.
    pub n: u64,
    /// The importing device.
    pub dev: &'a str,
    /// Bytes read.
    pub len: u64,
    /// Lines that were stale, of `lines`.
    pub bad_lines: u64,
    /// Lines read.
    pub lines: u64,
    /// Bus address of the read.
    pub addr: u64,
}

impl StaleRead<'_> {
    /// `stale-cpu-read`: the CPU read what the device wrote.
    pub(super) fn by_cpu(&self, syncless: bool) -> (String, &'static str) {
        let StaleRead {
            n,
            dev,
            len,
            bad_lines,
            lines,
            addr,
        } = *self;
        if syncless {
            (format!("CPU read {len} bytes of dma-buf #{n} that {dev} wrote; its exporter (vb2-dma-contig) does no cache maintenance, so DMA_BUF_IOCTL_SYNC changes nothing: {bad_lines} of {lines} lines held stale data [device address={addr:#x}]"), SYNCLESS_HELP)
        } else {
            (format!("CPU read {len} bytes of dma-buf #{n} that {dev} wrote, without DMA_BUF_IOCTL_SYNC(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ) first; {bad_lines} of {lines} lines held stale data [device address={addr:#x}]"), HELP)
        }
    }

    /// `stale-device-read`: the device read CPU stores still in the caches.
    pub(super) fn by_device(&self, syncless: bool) -> (String, &'static str) {
        let StaleRead {
            n,
            dev,
            len,
            bad_lines,
            lines,
            addr,
        } = *self;
        if syncless {
            (format!("{dev} read {len} bytes of dma-buf #{n} that the CPU wrote through a cacheable mapping; its exporter (vb2-dma-contig) does no cache maintenance for importers, so DMA_BUF_IOCTL_SYNC changes nothing: {bad_lines} of {lines} lines were stale in DRAM [device address={addr:#x}]"), SYNCLESS_HELP)
        } else {
            (format!("{dev} read {len} bytes of dma-buf #{n} that the CPU wrote with no DMA_BUF_IOCTL_SYNC(DMA_BUF_SYNC_END) since; {bad_lines} of {lines} lines were stale in DRAM [device address={addr:#x}]"), HELP)
        }
    }
}
