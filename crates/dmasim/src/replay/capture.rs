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

/// The `System RAM` ranges of a capture's `iomem.txt` (`40000000-7fffffff : System
/// RAM`), `[start, end)`.
pub fn system_ram(iomem: &str) -> Vec<(u64, u64)> {
    iomem
        .lines()
        .filter(|l| l.trim_end().ends_with(": System RAM"))
        .filter_map(|l| {
            let (range, _) = l.trim().split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            Some((hex(a)?, hex(b)?.checked_add(1)?))
        })
        .collect()
}

/// The MSI doorbell page a trace's `iommu:map` events show: on arm64 with a GICv3
/// ITS behind an SMMU, every device that sets up MSIs maps the ITS's
/// `GITS_TRANSLATER` page into its domain (`iommu_dma_get_msi_page`), a page
/// outside RAM mapped once per domain with no DMA API call around it. The page
/// mapped most often outside `ram` (at least twice), or `None`.
pub fn msi_doorbell(trace: &str, ram: &[(u64, u64)]) -> Option<u64> {
    if ram.is_empty() {
        return None;
    }
    let mut seen: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    for line in trace.lines().filter(|l| l.contains(" map: IOMMU: iova=")) {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(hex)
        };
        let (Some(pa), Some(size)) = (field("paddr="), field("size=").or(None)) else {
            continue;
        };
        // size= is decimal in the event; 4096 reads as hex 0x4096.
        if size != 0x4096 || ram.iter().any(|&(a, b)| (a..b).contains(&pa)) {
            continue;
        }
        *seen.entry(pa).or_default() += 1;
    }
    seen.into_iter()
        .filter(|&(_, n)| n >= 2)
        .max_by_key(|&(pa, n)| (n, std::cmp::Reverse(pa)))
        .map(|(pa, _)| pa)
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

    #[test]
    fn the_doorbell_is_the_page_outside_ram_that_many_domains_map() {
        let ram = system_ram("08000000-0800ffff : GICD\n40000000-7fffffff : System RAM\n");
        assert_eq!(ram, vec![(0x4000_0000, 0x8000_0000)]);
        let map = |pa: u64, size: u32| {
            format!("insmod-1 [000] ..... 4.37: map: IOMMU: iova=0x00000000fffff000 - 0x0000000100000000 paddr=0x{pa:016x} size={size}\n")
        };
        let t = [
            map(0x0809_0000, 4096),
            map(0x4733_6000, 4096),
            map(0x4733_6000, 4096),
            map(0x0809_0000, 4096),
            map(0x0900_0000, 8192),
            map(0x0900_0000, 8192),
        ]
        .concat();
        assert_eq!(
            msi_doorbell(&t, &ram),
            Some(0x0809_0000),
            "RAM pages and 8 KiB maps do not count"
        );
        assert_eq!(
            msi_doorbell(&map(0x0809_0000, 4096), &ram),
            None,
            "once is not a pattern"
        );
        assert_eq!(msi_doorbell(&t, &[]), None, "without iomem.txt, no guess");
    }
}
