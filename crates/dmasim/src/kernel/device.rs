//! `struct device` as the DMA layer sees it: masks, coherence, bus offset, and the
//! hardware facts of the bus master behind it.

use serde::Serialize;

use super::dma::dma_bit_mask;

/// A DMA-capable device.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// Name (`adc0`, `eth0`); shared, since every mapping and event carries it.
    pub name: std::sync::Arc<str>,
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
    /// `dev->bus_dma_limit` (DT `dma-ranges`): the highest bus address the
    /// interconnect lets the device reach whatever its mask; 0 = none.
    pub bus_dma_limit: u64,
    /// `dma_get_min_align_mask()`: address bits a bounce buffer must keep (NVMe
    /// sets 4 KiB − 1); 0 by default.
    pub min_align_mask: u64,
    /// `dma_get_seg_boundary()`: no segment may cross a multiple of this + 1.
    pub seg_boundary_mask: u64,
    /// The driver called `dma_set_mask*` (else the 32-bit default stands).
    pub mask_set: bool,
    /// What this device's mappings cost in bounce copies.
    pub bounce: BounceTally,
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
    /// Bound to vfio-pci instead of a kernel driver: user space drives it, the
    /// kernel's DMA API is not used for it.
    pub vfio: bool,
    /// The IOMMU group it shares with the other devices of that name (`None`:
    /// a group of its own).
    pub iommu_group: Option<String>,
    /// `pci_dev->untrusted`: a device behind an external-facing port (Thunderbolt,
    /// USB4, a hot-plug slot the firmware marks `ExternalFacingPort`), which Linux
    /// does not trust with kernel memory. Behind an IOMMU it always gets a strict
    /// DMA domain, and its sub-page streaming mappings bounce through swiotlb with
    /// zeroed padding (`drivers/pci/probe.c`: `set_pcie_untrusted`;
    /// `drivers/iommu/dma-iommu.c`: `dev_use_swiotlb`).
    pub untrusted: bool,
    /// `dev_is_pci()`: on a PCI(e) bus (`bus: "pci"`, or implied by `untrusted`).
    /// dma-iommu gives PCI devices IOVAs below 4 GiB first.
    pub pci: bool,
    /// `dev->iommu->pci_32bit_workaround`: set at probe for a PCI device unless
    /// `iommu.forcedac=1`; cleared for good once the 32-bit IOVA space is full
    /// (drivers/iommu/dma-iommu.c: iommu_setup_dma_ops, iommu_dma_alloc_iova).
    pub pci_32bit_workaround: bool,
}

impl Device {
    /// A device with Linux's defaults: 32-bit masks (`setup_pdev_dma_masks`),
    /// 64 KiB max segment.
    pub fn new(name: &str, coherent: bool, bandwidth: u64, latency_ns: u64) -> Device {
        Device {
            name: name.into(),
            coherent,
            dma_bits: 32,
            dma_mask: dma_bit_mask(32),
            coherent_dma_mask: dma_bit_mask(32),
            dma_offset: 0,
            bus_dma_limit: 0,
            min_align_mask: 0,
            seg_boundary_mask: u64::MAX,
            mask_set: false,
            bounce: BounceTally::default(),
            sg: true,
            iommu: true,
            max_segment: 64 << 10,
            bandwidth,
            latency_ns,
            bound: true,
            vfio: false,
            iommu_group: None,
            untrusted: false,
            pci: false,
            pci_32bit_workaround: false,
        }
    }

    /// `min_not_zero(*dev->dma_mask, dev->bus_dma_limit)`: the highest bus address
    /// a streaming mapping may use.
    pub fn dma_limit(&self) -> u64 {
        min_not_zero(self.dma_mask, self.bus_dma_limit)
    }

    /// The same limit for coherent allocations (`dma_coherent_ok`).
    pub fn coherent_limit(&self) -> u64 {
        min_not_zero(self.coherent_dma_mask, self.bus_dma_limit)
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

/// `min_not_zero()`.
fn min_not_zero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

/// Why a device's mappings bounced, and what it cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BounceTally {
    /// Mappings that went through swiotlb.
    pub maps: u64,
    /// Bytes copied between the buffers and the slots.
    pub bytes: u64,
    /// Simulated time the copies took, in ps.
    pub copy_ps: u64,
    /// Bounced because the address was beyond the mask or bus limit.
    pub beyond_limit: u64,
    /// Bounced because of `swiotlb=force`.
    pub forced: u64,
    /// Bounced because a small kmalloc buffer was not cache-line aligned.
    pub kmalloc_unaligned: u64,
    /// Bounced because an untrusted device must not see the rest of a page.
    pub untrusted: u64,
    /// Mapping failures because the pool was full.
    pub full: u64,
    /// The device's reach (`min_not_zero(mask, bus limit)`) at the first bounce
    /// beyond it.
    pub limit_at_first: u64,
    /// The first bounced mapping: (time ns, script line, what).
    pub first: Option<(u64, u32, String)>,
}
