//! VFIO type1 (`drivers/vfio/vfio_iommu_type1.c`, `vfio_main.c`, `group.c`, Linux
//! v6.12): a process takes a device behind the IOMMU into a container, maps its own
//! memory at IOVAs of its choosing (`VFIO_IOMMU_MAP_DMA`: pages pinned with
//! FOLL_LONGTERM, charged to `RLIMIT_MEMLOCK`, mapped with the given permissions)
//! and programs the device with those IOVAs; everything else faults in the IOMMU.
//! Without an IOMMU, `vfio_noiommu: true` at boot gives the device to the process
//! with no protection at all: no MAP_DMA, physical addresses from `pagemap`, and a
//! tainted kernel.
//!
//! Groups: the container takes the device's whole IOMMU group. The group is
//! viable only when no device of it is left with a kernel driver (each is bound to
//! vfio-pci, `vfio_bind`, or unbound, `remove_device`); otherwise attaching it to
//! the container fails with −EPERM, as `iommu_group_claim_dma_owner` does. Other
//! devices of an owned group join the same container when the process opens them.
//!
//! Simplifications: one group per container; the TYPE1v2 unmap rules (no
//! bisecting); no VADDR updates, dirty tracking or `ALL` unmaps.

use std::collections::BTreeMap;

use crate::check::{MapKind, NewMapping};
use crate::config::{PAGE_SHIFT, PAGE_SIZE};
use crate::kernel::dma::DmaDirection;
use crate::kernel::errno::{EBUSY, EEXIST, EFAULT, EINVAL, ENOMEM, ENOSPC, EPERM};
use crate::kernel::iommu::{DomainType, IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE};
use crate::system::{Result, SimError, System};

/// `dma_entry_limit`: mappings per container (`U16_MAX`).
pub const DMA_ENTRY_LIMIT: u32 = 65535;
/// `ENOTTY`: an ioctl the container does not implement (MAP_DMA on no-IOMMU).
pub const ENOTTY: i64 = 25;
/// Default `RLIMIT_MEMLOCK` (8 MiB since Linux 5.16, `MLOCK_LIMIT`).
pub const DEFAULT_MEMLOCK: u64 = 8 << 20;

/// One `VFIO_IOMMU_MAP_DMA`.
#[derive(Debug, Clone)]
pub struct VfioDma {
    /// IOVA of the first byte.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
    /// The process's virtual address.
    pub vaddr: u64,
    /// The pinned-pages set.
    pub pins: u64,
    /// Pages charged to the process's locked memory.
    pub charged: u64,
}

/// A container with its one group and the group's opened devices.
#[derive(Debug, Clone)]
pub struct VfioContainer {
    /// Owner process.
    pub pid: u32,
    /// The first device opened (the sanitizer records the mappings under it).
    pub dev: usize,
    /// Every device opened through it (all in the one group).
    pub devs: Vec<usize>,
    /// The UNMANAGED domain (none in no-IOMMU mode).
    pub domain: Option<usize>,
    /// `VFIO_NOIOMMU_IOMMU`.
    pub noiommu: bool,
    /// Mappings by IOVA.
    pub dmas: BTreeMap<u64, VfioDma>,
    /// Mappings still allowed.
    pub dma_avail: u32,
}

impl System {
    /// Opens `dev` for process `pid` through VFIO: the group, a container, the
    /// device. Returns the container id (positive) or −errno: −EINVAL when the device
    /// has no IOMMU group (and no-IOMMU mode is off) or its DMA is not cache-coherent
    /// (`IOMMU_CAP_CACHE_COHERENCY`), −EBUSY while a kernel driver has DMA mappings.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device or process.
    pub fn vfio_open(&mut self, dev: usize, pid: u32) -> Result<i64> {
        self.step();
        let d = self
            .kernel
            .devices
            .get(dev)
            .ok_or_else(|| SimError::Invalid(format!("vfio_open: no device #{dev}")))?;
        let name = d.name.clone();
        if self.proc_index(pid).is_err() {
            return Err(SimError::Invalid(format!("vfio_open: no process {pid}")));
        }
        if self.vfio_owner(dev).is_some() {
            return Ok(-EBUSY);
        }
        if self.check.device_has_mappings(dev) {
            return Ok(-EBUSY);
        }
        if self.dev_domain(dev).is_some() {
            let group = self.iommu_group_devices(dev);
            // Another device of the group already opened: join its container.
            let owned = self.kernel.vfio.iter().find_map(|(&id, c)| {
                group
                    .iter()
                    .any(|d| c.devs.contains(d))
                    .then_some((id, c.pid))
            });
            if let Some((id, owner)) = owned {
                if owner != pid {
                    return Ok(-EBUSY);
                }
                self.kernel.devices[dev].vfio = true;
                self.kernel.vfio.get_mut(&id).expect("found").devs.push(dev);
                self.printk(&name, format!("vfio: joins container {id} of its group"));
                return Ok(id as i64);
            }
            // Viability: every other device of the group without a kernel driver.
            if let Some(&other) = group.iter().find(|&&d| {
                d != dev && self.kernel.devices[d].bound && !self.kernel.devices[d].vfio
            }) {
                let oname = self.kernel.devices[other].name.clone();
                self.printk(
                    &name,
                    format!(
                        "vfio: group is not viable: {oname} is still bound to a kernel driver; bind every device of the group to vfio-pci (or unbind it): -EPERM"
                    ),
                );
                return Ok(-EPERM);
            }
        }
        let id = self.kernel.next_vfio;
        let container = match self.dev_domain(dev) {
            None if self.cfg.vfio_noiommu => {
                self.printk(
                    &name,
                    "Adding kernel taint for vfio-noiommu group on device".into(),
                );
                self.printk(&name, "vfio-noiommu device opened by user".into());
                VfioContainer {
                    pid,
                    dev,
                    devs: vec![dev],
                    domain: None,
                    noiommu: true,
                    dmas: BTreeMap::new(),
                    dma_avail: 0,
                }
            }
            None => return Ok(-EINVAL),
            Some(_) if !self.dev_is_dma_coherent(dev) => {
                self.printk(
                    &name,
                    "vfio: device DMA is not cache-coherent (no IOMMU_CAP_CACHE_COHERENCY): refused".into(),
                );
                return Ok(-EINVAL);
            }
            Some(_) => {
                let domain = self.iommu_domain_alloc(DomainType::Unmanaged);
                self.iommu_attach_group(dev, domain);
                self.printk(
                    &name,
                    format!("vfio: group owned by pid {pid}, unmanaged domain {domain}"),
                );
                VfioContainer {
                    pid,
                    dev,
                    devs: vec![dev],
                    domain: Some(domain),
                    noiommu: false,
                    dmas: BTreeMap::new(),
                    dma_avail: DMA_ENTRY_LIMIT,
                }
            }
        };
        self.kernel.next_vfio += 1;
        self.kernel.devices[dev].vfio = true;
        self.kernel.vfio.insert(id, container);
        Ok(id as i64)
    }

    fn container(&self, c: u64) -> Result<&VfioContainer> {
        self.kernel
            .vfio
            .get(&c)
            .ok_or_else(|| SimError::Invalid(format!("no VFIO container #{c}")))
    }

    /// `VFIO_IOMMU_MAP_DMA`: maps `size` bytes of the owner's memory at `vaddr` to
    /// `iova` with the device's read/write permissions. 0 or −errno: −EINVAL
    /// (no permission, unaligned, zero, wrapping, outside the aperture), −EEXIST
    /// (overlaps a mapping), −ENOSPC (`dma_entry_limit`), −ENOMEM (over
    /// `RLIMIT_MEMLOCK`, with the `memlock-limit` finding), −ENOTTY on a no-IOMMU
    /// container.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown container; a fault outside the process's
    /// mappings.
    pub fn vfio_map_dma(
        &mut self,
        c: u64,
        vaddr: u64,
        iova: u64,
        size: u64,
        read: bool,
        write: bool,
    ) -> Result<i64> {
        self.step();
        // The few fields needed, not a copy of every mapping (a container holds up
        // to 65535): the checks below are O(log n), as vfio_find_dma's rb-tree walk.
        let cont = self.container(c)?;
        let (cont_domain, cont_pid, cont_dev, dma_avail) =
            (cont.domain, cont.pid, cont.dev, cont.dma_avail);
        let Some(domain) = cont_domain else {
            return Ok(-ENOTTY);
        };
        if !read && !write {
            return Ok(-EINVAL);
        }
        if size == 0 || (size | iova | vaddr) & (PAGE_SIZE - 1) != 0 {
            return Ok(-EINVAL);
        }
        if iova
            .checked_add(size)
            .is_none_or(|e| e > 1 << crate::hw::iommu::IAS)
            || vaddr.checked_add(size).is_none()
        {
            return Ok(-EINVAL);
        }
        // Mappings never overlap one another, so only the last one starting before
        // the new end can overlap it (vfio_find_dma).
        if self
            .container(c)?
            .dmas
            .range(..iova + size)
            .next_back()
            .is_some_and(|(_, m)| iova < m.iova + m.size)
        {
            return Ok(-EEXIST);
        }
        if dma_avail == 0 {
            return Ok(-ENOSPC);
        }
        let pi = self
            .proc_index(cont_pid)
            .map_err(|_| SimError::Invalid("the container's process is gone".into()))?;
        // Pages newly pinned count against RLIMIT_MEMLOCK unless CAP_IPC_LOCK.
        let pages = size / PAGE_SIZE;
        let (locked, limit, cap) = {
            let p = &self.kernel.procs[pi];
            (p.locked_vm, p.memlock_limit, p.cap_ipc_lock)
        };
        if !cap && (locked + pages) * PAGE_SIZE > limit {
            let name = self.kernel.devices[cont_dev].name.clone();
            self.printk(
                "vfio",
                format!("vfio_pin_pages_remote: RLIMIT_MEMLOCK ({limit}) exceeded"),
            );
            let ctx = self.ctx();
            self.check.report_plain(
                "memlock-limit",
                None,
                Some(&name),
                Some(iova),
                Some(size),
                ctx,
                format!(
                    "VFIO_IOMMU_MAP_DMA of {} would lock {} of pinned memory, over RLIMIT_MEMLOCK ({}): -ENOMEM",
                    crate::units::human_size(size),
                    crate::units::human_size((locked + pages) * PAGE_SIZE),
                    crate::units::human_size(limit)
                ),
                "raise the process's locked-memory limit (setrlimit RLIMIT_MEMLOCK, ulimit -l, or systemd LimitMEMLOCK) to cover every buffer it maps, or give it CAP_IPC_LOCK".into(),
                vec![],
            );
            return Ok(-ENOMEM);
        }
        let pins = self.gup(cont_pid, vaddr, size, true, true)?;
        if pins == crate::uapi::process::GUP_ENOMEM {
            return Ok(-ENOMEM);
        }
        // A VM_PFNMAP range: vfio type1 would map the raw pfns unpinned
        // (vaddr_get_pfns → follow_fault_pfn); not modelled, refused as GUP does.
        if pins == crate::uapi::process::GUP_EFAULT {
            return Ok(-EFAULT);
        }
        let pfns = self.kernel.pins[&pins].pfns.clone();
        let prot = (if read { IOMMU_READ } else { 0 })
            | (if write { IOMMU_WRITE } else { 0 })
            | IOMMU_CACHE;
        // vfio_pin_map_dma: pin a run of physically contiguous pages, then map the
        // run with one iommu_map, which picks the largest page sizes that fit (a
        // hugepage becomes a 2 MiB block and costs one IOTLB entry).
        let mut k = 0;
        while k < pfns.len() {
            let mut n = 1;
            while k + n < pfns.len() && pfns[k + n] == pfns[k] + n as u64 {
                n += 1;
            }
            let a = iova + k as u64 * PAGE_SIZE;
            let len = n as u64 * PAGE_SIZE;
            if let Err(e) = self.iommu_map(domain, a, pfns[k] << PAGE_SHIFT, len, prot) {
                self.iommu_unmap_range(domain, iova, k as u64 * PAGE_SIZE);
                self.gup_release(pins, true)?;
                return Ok(e);
            }
            k += n;
        }
        self.kernel.procs[pi].locked_vm += pages;
        let dev = cont_dev;
        let name = self.kernel.devices[dev].name.clone();
        let dir = match (read, write) {
            (true, false) => DmaDirection::ToDevice,
            (false, true) => DmaDirection::FromDevice,
            _ => DmaDirection::Bidirectional,
        };
        self.sanitizer_map(
            // User memory: the process, not the DMA API, orders CPU and device
            // access, as with coherent memory.
            NewMapping::new(
                dev,
                name,
                iova,
                size,
                pfns[0] << PAGE_SHIFT,
                dir,
                MapKind::Coherent,
            )
            .pages(Some(pfns))
            .what("VFIO_IOMMU_MAP_DMA"),
        );
        let cm = self.kernel.vfio.get_mut(&c).expect("checked above");
        cm.dma_avail -= 1;
        cm.dmas.insert(
            iova,
            VfioDma {
                iova,
                size,
                vaddr,
                pins,
                charged: pages,
            },
        );
        Ok(0)
    }

    /// `VFIO_IOMMU_UNMAP_DMA` (TYPE1v2): unmaps the whole mappings inside
    /// `[iova, iova+size)` and unpins their pages. Returns the bytes unmapped, or
    /// −EINVAL for an unaligned or zero request or one that bisects a mapping
    /// (nothing is unmapped then).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown container.
    pub fn vfio_unmap_dma(&mut self, c: u64, iova: u64, size: u64) -> Result<i64> {
        self.step();
        let cont = self.container(c)?;
        let (cont_domain, cont_pid, cont_dev) = (cont.domain, cont.pid, cont.dev);
        let Some(domain) = cont_domain else {
            return Ok(-ENOTTY);
        };
        if size == 0 || (iova | size) & (PAGE_SIZE - 1) != 0 || iova.checked_add(size).is_none() {
            return Ok(-EINVAL);
        }
        let end = iova + size;
        // Only the mapping holding `iova` and the one holding `end` can be cut in
        // two (mappings never overlap): two O(log n) lookups.
        let holds = |at: u64| {
            cont.dmas
                .range(..at)
                .next_back()
                .is_some_and(|(_, m)| at < m.iova + m.size)
        };
        if holds(iova) || holds(end) {
            return Ok(-EINVAL);
        }
        let victims: Vec<VfioDma> = cont
            .dmas
            .range(iova..end)
            .map(|(_, m)| m)
            .filter(|m| m.iova + m.size <= end)
            .cloned()
            .collect();
        let mut done = 0;
        let name = self.kernel.devices[cont_dev].name.clone();
        for m in victims {
            let (_, leaves) = self.iommu_unmap_range(domain, m.iova, m.size);
            self.iommu_tlb_inv_range(domain, m.iova, m.size, leaves);
            let ctx = self.ctx();
            self.check.unmap(
                &mut self.hw,
                ctx,
                cont_dev,
                &name,
                m.iova,
                m.size,
                DmaDirection::Bidirectional,
                MapKind::Coherent,
                false,
            );
            self.gup_release(m.pins, true)?;
            if let Ok(pi) = self.proc_index(cont_pid) {
                let p = &mut self.kernel.procs[pi];
                p.locked_vm = p.locked_vm.saturating_sub(m.charged);
            }
            let cm = self.kernel.vfio.get_mut(&c).expect("checked above");
            cm.dmas.remove(&m.iova);
            cm.dma_avail += 1;
            done += m.size;
        }
        Ok(done as i64)
    }

    /// Process exit closes its VFIO files: every container's mappings are unmapped
    /// and unpinned (`vfio_iommu_type1_release`), so they are not kernel leaks.
    pub(crate) fn vfio_release_all(&mut self) {
        let all: Vec<(u64, Vec<(u64, u64)>)> = self
            .kernel
            .vfio
            .iter()
            .map(|(&id, c)| (id, c.dmas.values().map(|m| (m.iova, m.size)).collect()))
            .collect();
        for (id, maps) in all {
            for (iova, size) in maps {
                let _ = self.vfio_unmap_dma(id, iova, size);
            }
        }
    }

    /// `setrlimit(RLIMIT_MEMLOCK)` for a process.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown process.
    pub fn setrlimit_memlock(&mut self, pid: u32, bytes: u64) -> Result<()> {
        let p = self
            .kernel
            .procs
            .iter_mut()
            .find(|p| p.pid == pid)
            .ok_or_else(|| SimError::Invalid(format!("no process {pid}")))?;
        p.memlock_limit = bytes;
        Ok(())
    }

    /// Binds `dev` to vfio-pci (`driver_override` + `bind`): its kernel driver lets
    /// go (its live mappings are reported as leaks, as at `remove_device`) and user
    /// space may then take the device, or make its IOMMU group viable.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or removed device.
    pub fn vfio_bind(&mut self, dev: usize) -> Result<()> {
        let d = self
            .kernel
            .devices
            .get(dev)
            .filter(|d| d.bound)
            .ok_or_else(|| SimError::Invalid(format!("vfio_bind: no bound device #{dev}")))?;
        if d.vfio {
            return Ok(());
        }
        let name = d.name.clone();
        self.step();
        let ctx = self.ctx();
        self.check.leaks(
            &mut self.hw,
            ctx,
            Some(dev),
            "while its driver was unbound for vfio-pci",
        );
        self.kernel.devices[dev].vfio = true;
        self.printk(&name, "vfio-pci: bound (driver_override)".into());
        Ok(())
    }

    /// The container that holds `dev`, and its first device (under which the
    /// sanitizer records the container's mappings).
    pub(crate) fn vfio_lead(&self, dev: usize) -> Option<usize> {
        self.vfio_container_of(dev).map(|c| c.dev)
    }

    /// The container `dev` was opened into, if any.
    fn vfio_container_of(&self, dev: usize) -> Option<&VfioContainer> {
        self.kernel.vfio.values().find(|c| c.devs.contains(&dev))
    }

    /// The process that owns `dev` through VFIO (vfio-pci bound), if any.
    pub fn vfio_owner(&self, dev: usize) -> Option<u32> {
        self.vfio_container_of(dev).map(|c| c.pid)
    }

    /// The process that owns `dev` through a no-IOMMU VFIO container, if any.
    pub fn noiommu_owner(&self, dev: usize) -> Option<u32> {
        self.vfio_container_of(dev)
            .filter(|c| c.noiommu)
            .map(|c| c.pid)
    }
}
