//! `dma_map_resource()` / `dma_unmap_resource()` (kernel/dma/mapping.c, Linux
//! 6.12): a bus address for a physical address that is not RAM — a peripheral's
//! FIFO or register window — so that a DMA engine can move data device to device
//! (a memory-to-FIFO transfer, or a FIFO of one device into another's).
//!
//! - dma-direct (`dma_direct_map_resource`): the bus address *is* the physical
//!   address (no `dma_offset` translation), refused with `DMA_MAPPING_ERROR` when
//!   `dma_capable` fails ("DMA addr … overflow"); no cache maintenance and no
//!   swiotlb — there is no RAM to keep coherent or to bounce.
//! - dma-iommu (`iommu_dma_map_resource`): an IOVA from `__iommu_dma_map` with the
//!   direction's permissions, without `IOMMU_CACHE` (the prot also carries
//!   `IOMMU_MMIO`, the Device memory type, which the modelled page tables do not
//!   distinguish); unmapping frees the IOVA (`__iommu_dma_unmap`).
//! - dma-debug records the mapping with type "resource": unmap checks (size,
//!   direction, type) and leaks at driver unbind apply as to any mapping.
//!
//! The model has no peripheral behind such an address: a device access there
//! reaches no RAM and ends in a bus error (logged).

use crate::check::{MapKind, NewMapping};
use crate::kernel::dma::direct::dma_capable;
use crate::kernel::dma::{DmaDirection, DMA_MAPPING_ERROR};
use crate::kernel::iommu::dma_info_to_prot;
use crate::system::{Result, System};

impl System {
    /// `dma_map_resource(dev, phys_addr, size, dir, attrs)`: the bus address of
    /// the MMIO range, or `DMA_MAPPING_ERROR`. The attributes change nothing here
    /// (no CPU sync is ever done for a resource).
    ///
    /// # Errors
    /// [`SimError::Invalid`](crate::system::SimError) for `DMA_NONE` (a kernel
    /// BUG) or an unknown device.
    pub fn dma_map_resource(
        &mut self,
        dev: usize,
        phys: u64,
        size: u64,
        dir: DmaDirection,
    ) -> Result<u64> {
        const CALL: &str = "dma_map_resource";
        self.device_checked(dev, CALL)?;
        Self::valid_dir(CALL, dir)?;
        self.mapping_room()?;
        self.step();
        self.hw.advance(self.cfg.cost.dma_call_ps);
        let name = self.kernel.devices[dev].name.clone();
        let addr = if self.use_dma_iommu(dev) {
            // iommu_dma_map_resource: dma_info_to_prot(dir, false, attrs) | IOMMU_MMIO.
            let prot = dma_info_to_prot(dir, false);
            let limit = self.iommu_dma_limit(dev, false);
            self.iommu_dma_map_raw(dev, phys, size, prot, limit)
                .unwrap_or(DMA_MAPPING_ERROR)
        } else if dma_capable(&self.kernel.devices[dev], phys, size) {
            phys
        } else {
            let d = &self.kernel.devices[dev];
            let msg = format!(
                "DMA addr {phys:#x}+{size} overflow (mask {:x}, bus limit {:x}).",
                d.dma_mask, d.bus_dma_limit
            );
            self.printk(&name, msg);
            DMA_MAPPING_ERROR
        };
        if addr != DMA_MAPPING_ERROR {
            self.sanitizer_map(
                NewMapping::new(dev, name, addr, size, phys, dir, MapKind::Resource)
                    .what("dma_map_resource"),
            );
        }
        Ok(addr)
    }

    /// `dma_unmap_resource(dev, addr, size, dir, attrs)`: nothing to undo for
    /// dma-direct ("uncached and no swiotlb"), the IOVA for dma-iommu; dma-debug
    /// checks it against the mapping.
    ///
    /// # Errors
    /// As [`System::dma_map_resource`].
    pub fn dma_unmap_resource(
        &mut self,
        dev: usize,
        addr: u64,
        size: u64,
        dir: DmaDirection,
    ) -> Result<()> {
        const CALL: &str = "dma_unmap_resource";
        self.device_checked(dev, CALL)?;
        Self::valid_dir(CALL, dir)?;
        self.step();
        self.hw.advance(self.cfg.cost.dma_call_ps);
        if self.use_dma_iommu(dev) && addr != DMA_MAPPING_ERROR {
            self.iommu_dma_unmap_raw(dev, addr, size);
        }
        let ctx = self.ctx();
        let name = &self.kernel.devices[dev].name;
        self.check.unmap(
            &mut self.hw,
            ctx,
            dev,
            name,
            addr,
            size,
            dir,
            MapKind::Resource,
            true,
        );
        Ok(())
    }
}
