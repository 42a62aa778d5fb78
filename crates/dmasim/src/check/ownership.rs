//! When breaking the ownership rule can corrupt data, and when it cannot.
//!
//! `Documentation/core-api/dma-api-howto.rst` (Linux 6.12) gives a streaming buffer to
//! the device from `dma_map_*` until `dma_sync_*_for_cpu`, and the CPU must not touch
//! it meanwhile. Real drivers break that rule where no architecture can lose data:
//! the SPI core and `spi-bcm2835.c` read a mapped `DMA_TO_DEVICE` buffer for a PIO
//! prologue, store the RX prologue into a mapped `DMA_FROM_DEVICE` buffer and hand the
//! bytes over with `dma_sync_single_for_device`, and drivers refill a mapped TX buffer
//! then sync it for the device without a sync for the CPU first. dma-debug never
//! reports any of this. dmasim keeps an `error` for what can lose bytes on some
//! supported platform and gives a note (`cpu-access-benign`) for the rest:
//!
//! | access while the device owns the mapping | arm64 | ARMv7 | swiotlb | verdict |
//! |---|---|---|---|---|
//! | CPU load of a `DMA_TO_DEVICE` mapping | — | — | — | note: the device never writes it |
//! | store to `TO_DEVICE`/`BIDIRECTIONAL`, then sync for the device | clean | clean | copied to the slot | note |
//! | store to `FROM_DEVICE`, then sync for the device, partial lines | clean | edge lines cleaned | **not copied** | note, error when bounced |
//! | store to `FROM_DEVICE`, then sync for the device, whole lines | clean | **invalidated** | **not copied** | error |
//!
//! Sources: `arch_sync_dma_for_device` (arch/arm64/mm/dma-mapping.c: `dcache_clean_poc`
//! for every direction); `v7_dma_map_area` → `v7_dma_inv_range` for `DMA_FROM_DEVICE`
//! (arch/arm/mm/cache-v7.S: clean+invalidate of a partial line at either end, plain
//! invalidate of whole lines); `__swiotlb_sync_single_for_device` (kernel/dma/swiotlb.c:
//! bounces only for `DMA_TO_DEVICE` and `DMA_BIDIRECTIONAL`, so the unmap's copy back
//! from the slot replaces what the CPU stored into the original).

use super::{DmaDirection, Entry};

/// Why CPU stores made while the device owned a mapping are or are not at risk once
/// the driver syncs them for the device.
pub(super) struct EarlyStore {
    /// How the bytes can be lost, when they can (the finding is then an error).
    pub lost: Option<&'static str>,
    /// The bytes at risk (all stores in the range when bounced, the whole-line ones
    /// on ARMv7).
    pub at_risk: u64,
}

/// Judges the CPU stores into `[s, t)` (offsets into the mapping) that the driver now
/// syncs for the device; `line` is the cache-line size.
pub(super) fn early_store_verdict(e: &Entry, line: u64, s: u64, t: u64) -> EarlyStore {
    let touched = e.owned_writes.overlap(s, t);
    match e.dir {
        DmaDirection::FromDevice if e.bounce.is_some() => EarlyStore {
            lost: Some("bounced"),
            at_risk: touched,
        },
        DmaDirection::FromDevice => {
            // v7_dma_inv_range cleans the partial lines at the ends of the range and
            // only invalidates the lines wholly inside it.
            let phys = |off: u64| e.phys + off;
            let first_full = phys(s).div_ceil(line) * line - e.phys;
            let last_full = phys(t) / line * line;
            let last_full = last_full.saturating_sub(e.phys);
            let at_risk = if first_full < last_full {
                e.owned_writes.overlap(first_full, last_full)
            } else {
                0
            };
            EarlyStore {
                lost: (at_risk > 0).then_some("armv7"),
                at_risk,
            }
        }
        _ => EarlyStore {
            lost: None,
            at_risk: 0,
        },
    }
}

impl EarlyStore {
    /// The finding: (id, message, help, manifested).
    pub fn finding(
        &self,
        e: &Entry,
        touched: u64,
        call: &str,
        manifested: Option<bool>,
    ) -> (&'static str, String, String, Option<bool>) {
        let (dev, addr, dir) = (&e.dev_name, e.dev_addr, e.dir.name());
        match self.lost {
            Some("bounced") => (
                "cpu-access-device-owned",
                format!(
                    "CPU stored {touched} bytes into a {dir} buffer {dev} owned, then {call} handed them over; the mapping is bounced through swiotlb, and a sync for the device copies nothing for DMA_FROM_DEVICE (__swiotlb_sync_single_for_device), so the unmap's copy back from the bounce slot will overwrite them [device address={addr:#x}]"
                ),
                "map the buffer DMA_BIDIRECTIONAL if the CPU writes part of it for the device (swiotlb then copies it to the slot at the sync), or store before dma_map_*".into(),
                Some(false),
            ),
            Some(_) => (
                "cpu-access-device-owned",
                format!(
                    "CPU stored {touched} bytes into a DMA_FROM_DEVICE buffer {dev} owned, then {call} handed them over; {} of them fill whole cache lines, which 32-bit ARM invalidates without cleaning for DMA_FROM_DEVICE (v7_dma_inv_range), so they are lost there{} [device address={addr:#x}]",
                    self.at_risk,
                    if manifested == Some(true) { "; on this run they were" } else { " (arm64 cleans them: latent here)" },
                ),
                "map the buffer DMA_BIDIRECTIONAL if the CPU writes part of it for the device, or call dma_sync_single_for_cpu before the stores".into(),
                manifested,
            ),
            None => (
                "cpu-access-benign",
                format!(
                    "CPU stored {touched} bytes into a {dir} buffer while {dev} owned it, without dma_sync_single_for_cpu first, then {call} handed them over: every architecture's sync for the device cleans them (or copies them to the bounce slot), so no data is at risk [device address={addr:#x}]"
                ),
                "DMA-API-HOWTO.rst: sync for the CPU before touching a mapped buffer; harmless here because the device reads the bytes only after the sync".into(),
                None,
            ),
        }
    }
}

/// The note for a CPU load of a `DMA_TO_DEVICE` mapping the device owns: (message,
/// help).
pub(super) fn benign_read(dev: &str, len: u64, addr: u64) -> (String, String) {
    (
        format!("CPU read {len} bytes of a DMA_TO_DEVICE buffer while {dev} owned it; the device never writes such a mapping, so the bytes are the CPU's own [device address={addr:#x}]"),
        "DMA-API-HOWTO.rst: the CPU should not touch a mapped buffer before dma_sync_single_for_cpu; reading a TO_DEVICE buffer is harmless (the SPI core's PIO prologue does it)".into(),
    )
}

/// The note for CPU stores into a `DMA_TO_DEVICE` mapping that were never handed
/// over and that the device did not read afterwards: (message, help).
pub(super) fn benign_unsynced_store(dev: &str, n: u64, addr: u64) -> (String, String) {
    (
        format!("CPU stored {n} bytes into a DMA_TO_DEVICE buffer while {dev} owned it and never synced them for the device; the device did not read them afterwards, so nothing was lost [device address={addr:#x}]"),
        "DMA-API-HOWTO.rst: sync for the CPU before touching a mapped buffer and for the device before it reads; a device read of these bytes before a sync would be stale-device-read".into(),
    )
}
