//! What a capture says about its own machine beyond the trace: where the captured
//! kernel put its swiotlb pool. The model's `memblock_alloc_low` places the pool
//! top-down below 4 GiB in RAM it sees free; the captured kernel's memblock also
//! held the initrd, early page tables and ACPI tables, so its pool sits lower
//! (0x3aa00000 on the kit's 1 GiB q35 guest, 0x3c000000 in the model). Slot
//! addresses can only be compared once the model's pool starts where the real
//! one did.

use serde::Serialize;

/// The bounce pool of the captured kernel, `[start, end)` physical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CapturePool {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl CapturePool {
    /// Slots of 2 KiB (`IO_TLB_SIZE`).
    pub fn nslabs(&self) -> u64 {
        (self.end - self.start) >> crate::kernel::dma::swiotlb::IO_TLB_SHIFT
    }

    /// Whether `addr` is a slot address of this pool.
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The pool from the capture kit's `swiotlb_pool.txt` (a kprobe line
/// `... start=0x3aa00000 end=0x3ea00000 nslabs=32768`) or from a dmesg line of
/// `swiotlb_print_info` (`software IO TLB: mapped [mem 0x..-0x..] (64MB)`, whose end
/// is inclusive). The first non-empty pool wins; `None` when the text has none
/// (a kernel without a pool traces `start=0x0 end=0x0`).
pub fn capture_pool(text: &str) -> Option<CapturePool> {
    for line in text.lines() {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .and_then(hex)
        };
        if let (Some(start), Some(end)) = (field("start"), field("end")) {
            if end > start {
                return Some(CapturePool { start, end });
            }
            continue;
        }
        if let Some(rest) = line
            .split_once("software IO TLB: mapped [mem ")
            .map(|(_, r)| r)
        {
            let range = rest.split(']').next().unwrap_or("");
            if let Some((a, b)) = range.split_once('-') {
                if let (Some(start), Some(last)) = (hex(a), hex(b)) {
                    if last >= start {
                        return Some(CapturePool {
                            start,
                            end: last.saturating_add(1),
                        });
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kits_kprobe_line_and_skips_an_empty_pool() {
        let t = "            sync-417     [000] .....    46.969987: swiotlb_pool: (ksys_sync+0x4/0xb0) start=0x0 end=0x0 nslabs=0\n\
                 sync-418     [000] .....    36.878099: swiotlb_pool: (ksys_sync+0x4/0xb0) start=0x3aa00000 end=0x3ea00000 nslabs=32768\n";
        let p = capture_pool(t).unwrap();
        assert_eq!(
            (p.start, p.end, p.nslabs()),
            (0x3aa0_0000, 0x3ea0_0000, 32768)
        );
        assert!(capture_pool(t.lines().next().unwrap()).is_none());
    }

    #[test]
    fn reads_swiotlb_print_info_from_dmesg() {
        let t = "[    0.000000] software IO TLB: area num 1.\n[    0.412345] software IO TLB: mapped [mem 0x000000003aa00000-0x000000003e9fffff] (64MB)\n";
        let p = capture_pool(t).unwrap();
        assert_eq!((p.start, p.end), (0x3aa0_0000, 0x3ea0_0000));
        assert!(
            capture_pool("junk start=zz end=\n[ 1.0] software IO TLB: mapped [mem x-y]").is_none()
        );
    }
}
