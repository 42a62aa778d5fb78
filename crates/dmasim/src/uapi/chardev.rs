//! The path most user space takes to a DMA device without knowing it: a kernel
//! character-device driver in the style of spidev. `write()` copies the user buffer
//! into a kernel bounce buffer (`copy_from_user`), maps it, lets the device read it,
//! unmaps and frees it; `read()` maps a kernel buffer for the device, copies the
//! result out (`copy_to_user`). User space never holds a DMA address, and pays for
//! two copies per transfer — which the report counts.
//!
//! Simplifications: one transfer per call, no message queue; the kernel buffer is
//! allocated per call with kmalloc (spidev keeps one), so each call also maps.

use serde::Serialize;

use crate::check::MapKind;
use crate::kernel::dma::DmaDirection;
use crate::kernel::mm::gfp::GFP_KERNEL;
use crate::kernel::BufKind;
use crate::system::{Result, SimError, System, MAX_ACCESS};

/// Counters of the copies between user and kernel memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CopyStats {
    /// Bytes `copy_from_user` moved.
    pub copy_from_user_bytes: u64,
    /// Bytes `copy_to_user` moved.
    pub copy_to_user_bytes: u64,
    /// Simulated time of those copies, ns.
    pub copy_ns: u64,
    /// Character-device transfers.
    pub transfers: u64,
}

impl System {
    /// A device handed to user space through VFIO has no kernel driver: vfio-pci
    /// is bound to it instead, so a kernel path cannot use it.
    pub(crate) fn kernel_driver_bound(&self, dev: usize) -> Result<()> {
        match self.vfio_owner(dev) {
            Some(pid) => Err(SimError::Invalid(format!(
                "{} is bound to vfio-pci (process {pid} owns it): no kernel driver can use it; give the kernel path its own device",
                self.kernel.devices[dev].name
            ))),
            None => Ok(()),
        }
    }

    fn chardev_checks(&self, dev: usize, len: u64) -> Result<()> {
        if self.kernel.devices.get(dev).is_none_or(|d| !d.bound) {
            return Err(SimError::Invalid(format!("chardev: no device #{dev}")));
        }
        self.kernel_driver_bound(dev)?;
        if len == 0 || len > MAX_ACCESS {
            return Err(SimError::Invalid(
                "chardev: a transfer is 1 byte to 256 MiB".into(),
            ));
        }
        Ok(())
    }

    /// `write(fd, buf, len)` on the device's character device: `copy_from_user`
    /// into a kmalloc buffer, `dma_map_single(DMA_TO_DEVICE)`, the device reads it,
    /// unmap, free. Returns what the device received (or −errno: −ENOMEM, −EIO when
    /// the map failed).
    ///
    /// # Errors
    /// A fault on the user buffer; an unknown device.
    pub fn chardev_write(
        &mut self,
        dev: usize,
        pid: u32,
        va: u64,
        len: u64,
    ) -> Result<std::result::Result<Vec<u8>, i64>> {
        self.chardev_checks(dev, len)?;
        let Some(id) = self.kmalloc(len, GFP_KERNEL)? else {
            return Ok(Err(-crate::kernel::errno::ENOMEM));
        };
        let kva = self.kernel.buffers[&id].va;
        let t0 = self.hw.now_ps();
        let data = self.user_read(pid, va, len)?;
        self.cpu_write_va(kva, &data)?;
        let dt = self.hw.now_ps() - t0;
        self.kernel.copies.copy_from_user_bytes += len;
        self.kernel.copies.copy_ns += dt / 1000;
        let addr = self.dma_map_single(dev, kva, len, DmaDirection::ToDevice)?;
        if self.dma_mapping_error(dev, addr) {
            self.kfree(id, "kfree", BufKind::Kmalloc);
            return Ok(Err(-crate::kernel::errno::EIO));
        }
        let job = self.dev_start(dev, addr, len, None)?;
        let got = self.wait(job)?.unwrap_or_default();
        self.dma_unmap(dev, addr, len, DmaDirection::ToDevice, MapKind::Single)?;
        self.kfree(id, "kfree", BufKind::Kmalloc);
        self.kernel.copies.transfers += 1;
        Ok(Ok(got))
    }

    /// `read(fd, buf, len)`: a kmalloc buffer mapped `DMA_FROM_DEVICE`, the device
    /// writes `data` into it, unmap, `copy_to_user`, free. Returns the bytes copied
    /// or −errno.
    ///
    /// # Errors
    /// A fault on the user buffer; an unknown device.
    pub fn chardev_read(&mut self, dev: usize, pid: u32, va: u64, data: Vec<u8>) -> Result<i64> {
        let len = data.len() as u64;
        self.chardev_checks(dev, len)?;
        let Some(id) = self.kmalloc(len, GFP_KERNEL)? else {
            return Ok(-crate::kernel::errno::ENOMEM);
        };
        let kva = self.kernel.buffers[&id].va;
        let addr = self.dma_map_single(dev, kva, len, DmaDirection::FromDevice)?;
        if self.dma_mapping_error(dev, addr) {
            self.kfree(id, "kfree", BufKind::Kmalloc);
            return Ok(-crate::kernel::errno::EIO);
        }
        let job = self.dev_start(dev, addr, len, Some(data))?;
        self.wait(job)?;
        self.dma_unmap(dev, addr, len, DmaDirection::FromDevice, MapKind::Single)?;
        let t0 = self.hw.now_ps();
        let bytes = self.cpu_read_va(kva, len)?;
        self.user_write(pid, va, &bytes)?;
        let dt = self.hw.now_ps() - t0;
        self.kernel.copies.copy_to_user_bytes += len;
        self.kernel.copies.copy_ns += dt / 1000;
        self.kfree(id, "kfree", BufKind::Kmalloc);
        self.kernel.copies.transfers += 1;
        Ok(len as i64)
    }
}
