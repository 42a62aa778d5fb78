//! `struct device` as the DMA layer sees it: masks, coherence, bus offset, and the
//! hardware facts of the bus master behind it.

use serde::Serialize;

use super::dma::dma_bit_mask;

/// A DMA-capable device.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// Name (`adc0`, `eth0`).
    pub name: String,
    /// `dev_is_dma_coherent()`: on a snooping port, needs no cache maintenance.
    pub coherent: bool,
    /// Address bits the hardware really drives; higher bus-address bits are lost.
    pub dma_bits: u32,
    /// `*dev->dma_mask`: streaming mappings must fall below it (default 32 bits).
    pub dma_mask: u64,
    /// `dev->coherent_dma_mask` (default 32 bits).
    pub coherent_dma_mask: u64,
    /// Bus address = physical address − `dma_offset` (DT `dma-ranges`).
    pub dma_offset: u64,
    /// Can the device do scatter-gather.
    pub sg: bool,
    /// Behind the IOMMU when the platform has one.
    pub iommu: bool,
    /// `dma_get_max_seg_size()` (64 KiB default).
    pub max_segment: u64,
    /// Transfer bandwidth in bytes per microsecond.
    pub bandwidth: u64,
    /// Fixed latency of each transfer in ns.
    pub latency_ns: u64,
    /// False after `remove_device`.
    pub bound: bool,
}

impl Device {
    /// A device with Linux's defaults: 32-bit masks (`setup_pdev_dma_masks`),
    /// 64 KiB max segment.
    pub fn new(name: &str, coherent: bool, bandwidth: u64, latency_ns: u64) -> Device {
        Device {
            name: name.to_string(),
            coherent,
            dma_bits: 32,
            dma_mask: dma_bit_mask(32),
            coherent_dma_mask: dma_bit_mask(32),
            dma_offset: 0,
            sg: true,
            iommu: true,
            max_segment: 64 << 10,
            bandwidth,
            latency_ns,
            bound: true,
        }
    }

    /// `phys_to_dma()` for dma-direct.
    pub fn phys_to_dma(&self, pa: u64) -> u64 {
        pa.wrapping_sub(self.dma_offset)
    }

    /// `dma_to_phys()` for dma-direct.
    pub fn dma_to_phys(&self, addr: u64) -> u64 {
        addr.wrapping_add(self.dma_offset)
    }

    /// What the device puts on the bus for `addr`: only `dma_bits` bits survive.
    pub fn bus_lines(&self, addr: u64) -> u64 {
        addr & dma_bit_mask(self.dma_bits)
    }
}
