//! The IOMMU core as the kernel drives it (`drivers/iommu/iommu.c`,
//! `io-pgtable-arm.c`, the flush queue of `dma-iommu.c`, Linux v6.12): one group and
//! one default domain per device behind the SMMU, the domain's stage-1 page tables
//! written into simulated DRAM by CPU stores, `iommu_map`/`iommu_unmap` with Linux's
//! page-size choice and rules, and IOTLB invalidation — at once (strict) or through
//! a per-CPU flush queue of 256 slots (255 entries) with a 10 ms timer (lazy).
//!
//! Groups: a device is alone in its group unless the script puts devices in one
//! (`iommu_group: "name"`, as PCIe functions behind a bridge without ACS share
//! one); a group's devices share its domain, and a domain change applies to all.
//!
//! Simplifications: no ACS topology is derived, groups are declared; the page-table
//! walk cache and `iotlb_sync_map` do not exist; an unmap that would split a block
//! unmaps nothing (Linux 6.12 splits; 6.13 removed splitting) and the caller WARNs;
//! intermediate tables are freed only when a block is mapped over them
//! (`arm_lpae_init_pte`), not when a block-sized unmap covers them.

pub mod iova;

use std::collections::VecDeque;

use crate::config::{PAGE_SHIFT, PAGE_SIZE};
use crate::hw::iommu::{
    level_shift, Ste, AF, AP_RDONLY, AP_UNPRIV, ATTR_IDX_CACHE, ATTR_IDX_SHIFT, DESC_BLOCK,
    DESC_TABLE, DESC_VALID, IAS, NG, OA_MASK, SH_IS, SH_OS, XN,
};
use crate::hw::mmu::MemType;
use crate::system::System;
use iova::IovaDomain;

/// The physical address `iova` translates to in the tables at `pgd` (`None`: no
/// table, or an invalid descriptor on the way), each descriptor read by
/// `read_desc` (`None`: unreadable).
fn walk_tables(pgd: u64, iova: u64, mut read_desc: impl FnMut(u64) -> Option<u64>) -> Option<u64> {
    if pgd == 0 {
        // No table (its allocation failed): nothing is mapped.
        return None;
    }
    let mut table = pgd;
    for level in 0..4 {
        let d = read_desc(table + ((iova >> level_shift(level)) & 511) * 8)?;
        if d & DESC_VALID == 0 {
            return None;
        }
        if level == 3 || d & 0b11 == DESC_BLOCK {
            let mask = (1u64 << level_shift(level)) - 1;
            return Some((d & OA_MASK & !mask) | (iova & mask));
        }
        table = d & OA_MASK;
    }
    None
}

/// `IOMMU_READ`.
pub const IOMMU_READ: u32 = 1 << 0;
/// `IOMMU_WRITE`.
pub const IOMMU_WRITE: u32 = 1 << 1;
/// `IOMMU_CACHE`.
pub const IOMMU_CACHE: u32 = 1 << 2;
/// `IOMMU_NOEXEC`.
pub const IOMMU_NOEXEC: u32 = 1 << 3;
/// `IOMMU_PRIV`.
pub const IOMMU_PRIV: u32 = 1 << 5;

/// The page sizes of the ARM LPAE 4 KiB-granule format: 4 KiB, 2 MiB, 1 GiB.
pub const PGSIZE_BITMAP: u64 = (1 << 12) | (1 << 21) | (1 << 30);
/// The IOVA granule (the smallest page size).
pub const GRANULE: u64 = 4096;
/// Flush-queue ring slots per CPU (`IOVA_DEFAULT_FQ_SIZE`); it holds one fewer.
pub const FQ_SIZE: usize = 256;
/// Flush-queue timeout (`IOVA_DEFAULT_FQ_TIMEOUT`, 10 ms), in ps.
pub const FQ_TIMEOUT_PS: u64 = 10_000_000_000;

/// `enum iommu_domain type`, as far as the DMA API sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// `IOMMU_DOMAIN_BLOCKED`: every access aborts.
    Blocked,
    /// `IOMMU_DOMAIN_IDENTITY`: passthrough.
    Identity,
    /// `IOMMU_DOMAIN_DMA`: translated, strict invalidation.
    Dma,
    /// `IOMMU_DOMAIN_DMA_FQ`: translated, lazy invalidation through the flush queue.
    DmaFq,
    /// `IOMMU_DOMAIN_UNMANAGED`: mappings owned by a user (VFIO).
    Unmanaged,
}

impl DomainType {
    /// The sysfs name (`/sys/kernel/iommu_groups/N/type`).
    pub fn name(self) -> &'static str {
        match self {
            DomainType::Blocked => "blocked",
            DomainType::Identity => "identity",
            DomainType::Dma => "DMA",
            DomainType::DmaFq => "DMA-FQ",
            DomainType::Unmanaged => "unmanaged",
        }
    }

    /// Does the domain translate (has page tables).
    pub fn is_paging(self) -> bool {
        matches!(
            self,
            DomainType::Dma | DomainType::DmaFq | DomainType::Unmanaged
        )
    }
}

/// A queued IOVA waiting for an IOTLB flush (`struct iova_fq_entry`).
#[derive(Debug, Clone, Copy)]
struct FqEntry {
    pfn: u64,
    pages: u64,
    counter: u64,
    /// Queueing order across the CPUs' rings (the model's; not in Linux).
    seq: u64,
}

/// The flush queue of a DMA-FQ domain: per-CPU rings and the shared timer.
#[derive(Debug, Clone, Default)]
pub struct FlushQueue {
    rings: Vec<VecDeque<FqEntry>>,
    start_cnt: u64,
    finish_cnt: u64,
    next_seq: u64,
    /// When the timer fires (ps), if armed.
    pub timer: Option<u64>,
}

impl FlushQueue {
    /// When the range at `pfn` is queued: the queueing order of the first entry
    /// queued after it in the same IOVA cache class (`order_base_2(pages)`), or
    /// one past the last entry. A flush between the two frees `pfn` and leaves
    /// that entry queued, the only order in which `pfn` is the next one its
    /// class's per-CPU cache hands out (the caches are LIFO).
    fn flush_point_for(&self, pfn: u64) -> Option<u64> {
        let class = |p: u64| p.max(1).next_power_of_two();
        let hit = self.rings.iter().flatten().find(|e| e.pfn == pfn)?;
        let next_same = self
            .rings
            .iter()
            .flatten()
            .filter(|e| e.seq > hit.seq && class(e.pages) == class(hit.pages))
            .map(|e| e.seq)
            .min();
        Some(next_same.unwrap_or(self.next_seq))
    }

    /// The first frames of the IOVA ranges waiting for the next IOTLB flush.
    pub fn pending_pfns(&self) -> impl Iterator<Item = u64> + '_ {
        self.rings.iter().flatten().map(|e| e.pfn)
    }
}

/// One domain.
#[derive(Debug, Clone)]
pub struct IommuDomain {
    /// Type.
    pub kind: DomainType,
    /// The hardware context (index into the IOMMU's table bases).
    pub ctx: usize,
    /// Physical address of the level-0 table.
    pub pgd: u64,
    /// The IOVA allocator of a DMA domain.
    pub iovad: IovaDomain,
    /// The flush queue (DMA-FQ).
    pub fq: FlushQueue,
    /// Table pages allocated (4 KiB each).
    pub table_pages: u64,
}

/// One IOMMU group (`/sys/kernel/iommu_groups/N`): the devices the IOMMU cannot
/// tell apart, which therefore share a domain.
#[derive(Debug, Clone, Default)]
pub struct IommuGroup {
    /// The script's name for a shared group.
    pub tag: Option<String>,
    /// Member devices.
    pub devs: Vec<usize>,
}

/// The kernel's IOMMU state.
#[derive(Debug, Clone, Default)]
pub struct IommuState {
    /// Domains by id.
    pub domains: Vec<IommuDomain>,
    /// Each device's domain (`None`: not behind the IOMMU).
    pub dev_domain: Vec<Option<usize>>,
    /// Groups by id: their devices, and the name the script gave them.
    pub groups: Vec<IommuGroup>,
    /// Each device's group.
    pub dev_group: Vec<Option<usize>>,
    /// Strict invalidation by default.
    pub strict: bool,
    /// `iommu.passthrough=1`.
    pub passthrough: bool,
    /// `iommu_map` calls that mapped something.
    pub maps: u64,
    /// `iommu_unmap` calls.
    pub unmaps: u64,
    /// IOVA allocation failures.
    pub iova_failures: u64,
    /// The flush-queue timers never fire on the model's clock: `dmasim replay`
    /// flushes a domain when the trace hands out again an IOVA still queued there
    /// (a real kernel's timer fires 8–12 ms after arming at HZ=250, on a jiffies
    /// clock the trace's timestamps do not show; under QEMU TCG it lags more), or
    /// when the timer is long past due.
    pub fq_flush_by_evidence: bool,
}

/// `dma_info_to_prot()`: the IOMMU permissions of a DMA direction.
pub fn dma_info_to_prot(dir: crate::kernel::dma::DmaDirection, coherent: bool) -> u32 {
    use crate::kernel::dma::DmaDirection::*;
    let cache = if coherent { IOMMU_CACHE } else { 0 };
    cache
        | match dir {
            Bidirectional => IOMMU_READ | IOMMU_WRITE,
            ToDevice => IOMMU_READ,
            FromDevice => IOMMU_WRITE,
            None => 0,
        }
}

/// `arm_lpae_prot_to_pte()` for stage 1 plus the descriptor type of `level`.
pub fn prot_to_pte(prot: u32, level: u32) -> u64 {
    let mut pte = NG | AF;
    if prot & IOMMU_WRITE == 0 && prot & IOMMU_READ != 0 {
        pte |= AP_RDONLY;
    }
    if prot & IOMMU_PRIV == 0 {
        pte |= AP_UNPRIV;
    }
    if prot & IOMMU_CACHE != 0 {
        pte |= (ATTR_IDX_CACHE << ATTR_IDX_SHIFT) | SH_IS;
    } else {
        pte |= SH_OS;
    }
    if prot & IOMMU_NOEXEC != 0 {
        pte |= XN;
    }
    pte | if level == 3 { DESC_TABLE } else { DESC_BLOCK }
}

/// `iommu_pgsize()`: the largest supported page size that fits the remaining size
/// and the alignment of both addresses.
pub fn pgsize(iova: u64, pa: u64, size: u64) -> u64 {
    let align = iova | pa;
    [1u64 << 30, 1 << 21, 1 << 12]
        .into_iter()
        .find(|&p| p <= size && align & (p - 1) == 0)
        .unwrap_or(1 << 12)
}

/// Errors of `iommu_map` (negated errno values).
pub type MapResult = Result<(), i64>;

impl System {
    /// Sets up the default domain of a device that sits behind the SMMU
    /// (`iommu_probe_device` → `iommu_setup_default_domain`). Logs Linux's lines.
    pub(crate) fn iommu_probe_device(&mut self, dev: usize) {
        let tag = self.kernel.devices[dev].iommu_group.clone();
        let Some(st) = self.kernel.iommu.as_mut() else {
            return;
        };
        if st.dev_group.len() <= dev {
            st.dev_group.resize(dev + 1, None);
        }
        let name = self.kernel.devices[dev].name.clone();
        // A declared shared group: join it and its current domain.
        let shared = tag
            .as_ref()
            .and_then(|t| st.groups.iter().position(|g| g.tag.as_ref() == Some(t)));
        let untrusted = self.kernel.devices[dev].untrusted;
        if let Some(g) = shared {
            st.groups[g].devs.push(dev);
            st.dev_group[dev] = Some(g);
            let first = st.groups[g].devs[0];
            let domain = st.dev_domain.get(first).copied().flatten();
            let kind = domain.map(|d| st.domains[d].kind);
            self.printk(&name, format!("Adding to iommu group {g}"));
            if let Some(domain) = domain {
                self.iommu_attach(dev, domain);
            }
            if let Some(k) = kind.filter(|&k| untrusted && k != DomainType::Dma) {
                self.iommu_group_distrust(dev, g, k);
            }
            return;
        }
        let g = st.groups.len();
        st.groups.push(IommuGroup {
            tag,
            devs: vec![dev],
        });
        st.dev_group[dev] = Some(g);
        // iommu_get_default_domain_type: an untrusted device always gets a
        // translating domain with strict invalidation, whatever the command line
        // asks for (iommu.passthrough=1, iommu.strict=0).
        let kind = if untrusted {
            DomainType::Dma
        } else if st.passthrough {
            DomainType::Identity
        } else if st.strict {
            DomainType::Dma
        } else {
            DomainType::DmaFq
        };
        let id = self.iommu_domain_alloc(kind);
        self.iommu_attach(dev, id);
        self.printk(
            &name,
            format!(
                "Adding to iommu group {g}; default domain type {}",
                kind.name()
            ),
        );
    }

    /// An untrusted device joined group `g`, whose domain is of type `kind` (not
    /// DMA). When the group's devices are probed together, as at boot
    /// (`bus_iommu_probe`), Linux picks the group's default domain type over all of
    /// them and an untrusted one forces DMA (`iommu_get_default_domain_type`): while
    /// no member has live mappings, the group moves to a new strict DMA domain. A
    /// device added to a group already in use joins `group->domain` as it is
    /// (`__iommu_probe_device`), so it stays in a lazy or identity domain; dmasim
    /// says so in the log.
    fn iommu_group_distrust(&mut self, dev: usize, g: usize, kind: DomainType) {
        let name = self.kernel.devices[dev].name.clone();
        let members = self.iommu_group_devices(dev);
        if members.iter().any(|&d| self.check.device_has_mappings(d)) {
            self.printk(
                "dmasim",
                format!(
                    "{name} is untrusted but joined iommu group {g}, already in use with a {} domain: Linux keeps that domain for a device added later, so {name} gets no strict DMA domain",
                    kind.name()
                ),
            );
            return;
        }
        let id = self.iommu_domain_alloc(DomainType::Dma);
        self.iommu_attach_group(dev, id);
        self.printk(
            &name,
            format!("untrusted device: iommu group {g} default domain type DMA"),
        );
    }

    /// The devices of `dev`'s IOMMU group (just `dev` when it has none).
    pub fn iommu_group_devices(&self, dev: usize) -> Vec<usize> {
        self.kernel
            .iommu
            .as_ref()
            .and_then(|s| {
                s.dev_group
                    .get(dev)
                    .copied()
                    .flatten()
                    .map(|g| s.groups[g].devs.clone())
            })
            .unwrap_or_else(|| vec![dev])
    }

    /// Attaches every device of `dev`'s group to `domain`
    /// (`__iommu_group_set_domain`).
    pub(crate) fn iommu_attach_group(&mut self, dev: usize, domain: usize) {
        for d in self.iommu_group_devices(dev) {
            self.iommu_attach(d, domain);
        }
    }

    /// `iommu_domain_alloc` + `iommu_get_dma_cookie`: a new domain; paging domains
    /// get a zeroed level-0 table and an IOVA space starting at frame 1.
    pub(crate) fn iommu_domain_alloc(&mut self, kind: DomainType) -> usize {
        let pgd = if kind.is_paging() {
            self.iopt_alloc_table().unwrap_or(0)
        } else {
            0
        };
        let ctx = self.hw.iommu.ttbr.len();
        self.hw.iommu.ttbr.push(pgd);
        let ncpus = self.cfg.cpus as usize;
        let st = self.kernel.iommu.as_mut().expect("IOMMU present");
        st.domains.push(IommuDomain {
            kind,
            ctx,
            pgd,
            iovad: IovaDomain::new(GRANULE, 1, ncpus),
            fq: FlushQueue {
                rings: vec![VecDeque::new(); ncpus],
                ..FlushQueue::default()
            },
            table_pages: u64::from(kind.is_paging()),
        });
        st.domains.len() - 1
    }

    /// Writes `/sys/kernel/iommu_groups/N/type` for a device's group: "blocked",
    /// "identity", "DMA" or "DMA-FQ". 0, −EBUSY while the device has live DMA
    /// mappings (Linux refuses while a driver is bound), −EINVAL for another name
    /// or for any type but "DMA" when the group holds an untrusted device,
    /// −ENODEV when the device is not behind the IOMMU.
    pub fn iommu_group_set_type(&mut self, dev: usize, name: &str) -> i64 {
        use crate::kernel::errno::{EBUSY, EINVAL};
        if self.dev_domain(dev).is_none() {
            return -19; // ENODEV
        }
        let kind = match name {
            "blocked" => DomainType::Blocked,
            "identity" => DomainType::Identity,
            "DMA" => DomainType::Dma,
            "DMA-FQ" => DomainType::DmaFq,
            _ => return -EINVAL,
        };
        let members = self.iommu_group_devices(dev);
        // iommu_get_default_domain_type(group, target_type): an untrusted member
        // admits only a DMA domain.
        if kind != DomainType::Dma && members.iter().any(|&d| self.kernel.devices[d].untrusted) {
            return -EINVAL;
        }
        if members.iter().any(|&d| self.check.device_has_mappings(d)) {
            return -EBUSY;
        }
        let id = self.iommu_domain_alloc(kind);
        self.iommu_attach_group(dev, id);
        let devname = self.kernel.devices[dev].name.clone();
        self.printk(&devname, format!("iommu group type set to {}", kind.name()));
        0
    }

    /// Points a device's stream table entry at a domain.
    pub(crate) fn iommu_attach(&mut self, dev: usize, domain: usize) {
        let st = self.kernel.iommu.as_mut().expect("IOMMU present");
        if st.dev_domain.len() <= dev {
            st.dev_domain.resize(dev + 1, None);
        }
        st.dev_domain[dev] = Some(domain);
        let d = &st.domains[domain];
        let ste = match d.kind {
            DomainType::Identity => Ste::Bypass,
            DomainType::Blocked => Ste::Abort,
            _ => Ste::Translate(d.ctx),
        };
        self.hw.iommu.set_ste(dev, ste);
        self.hw.iommu.iotlb.invalidate_domain(d.ctx);
    }

    /// The domain a device's DMA goes through, when it is behind the IOMMU.
    pub fn dev_domain(&self, dev: usize) -> Option<usize> {
        self.kernel
            .iommu
            .as_ref()
            .and_then(|s| s.dev_domain.get(dev).copied().flatten())
    }

    /// Does the DMA API use dma-iommu for this device (a translating domain).
    pub fn use_dma_iommu(&self, dev: usize) -> bool {
        self.dev_domain(dev).is_some_and(|d| {
            matches!(
                self.kernel.iommu.as_ref().expect("has domains").domains[d].kind,
                DomainType::Dma | DomainType::DmaFq
            )
        })
    }

    /// `__arm_lpae_alloc_pages`: a zeroed table page from the page allocator,
    /// cleaned to memory for a non-coherent walker.
    fn iopt_alloc_table(&mut self) -> Option<u64> {
        let pfn = self
            .kernel
            .pages
            .alloc_pages(0, crate::kernel::mm::gfp::GFP_KERNEL, &mut self.hw.rng)
            .ok()?;
        let pa = pfn << PAGE_SHIFT;
        let zero = [0u8; PAGE_SIZE as usize];
        self.hw.cpu_write_phys(self.cpu, pa, MemType::Normal, &zero);
        if !self.hw.iommu.coherent_walk && !self.cfg.iommu_skip_pte_sync {
            self.iopt_sync(pa, PAGE_SIZE);
        }
        Some(pa)
    }

    /// `__arm_lpae_sync_pte`: clean table lines so a non-coherent walker sees them.
    fn iopt_sync(&mut self, pa: u64, len: u64) {
        let va = self.kernel.phys_to_virt(pa);
        let _ = self.hw.cmo_va(0, crate::hw::Cmo::Clean, va, len);
        self.hw.cmo_fixed();
    }

    /// Reads a descriptor as the kernel does (a CPU load).
    fn iopt_read(&mut self, pa: u64) -> u64 {
        self.hw.cpu_read_u64_phys(self.cpu, pa)
    }

    /// Writes a descriptor (a CPU store, cleaned for a non-coherent walker).
    fn iopt_write(&mut self, pa: u64, desc: u64) {
        self.iopt_store(pa, desc);
        self.iopt_sync_walker(pa, 8);
    }

    /// Writes a descriptor without the clean (the caller syncs a run).
    fn iopt_store(&mut self, pa: u64, desc: u64) {
        self.hw.cpu_write_u64_phys(self.cpu, pa, desc);
    }

    /// `iommu_map(domain, iova, paddr, size, prot)`: 0 or −EINVAL (unaligned, no
    /// permission, not a paging domain), −ERANGE (beyond the address sizes), −EEXIST
    /// (over an existing leaf: "we require an unmap first"), −ENOMEM (no memory for
    /// a table). On a partial failure everything mapped so far is unmapped.
    pub fn iommu_map(
        &mut self,
        domain: usize,
        iova: u64,
        pa: u64,
        size: u64,
        prot: u32,
    ) -> MapResult {
        use crate::kernel::errno::EINVAL;
        let (kind, pgd) = {
            let d = &self.kernel.iommu.as_ref().expect("IOMMU").domains[domain];
            (d.kind, d.pgd)
        };
        if !kind.is_paging() {
            return Err(-EINVAL);
        }
        if pgd == 0 {
            // The domain's level-0 table could not be allocated (no free page at
            // iommu_domain_alloc): drivers/iommu/io-pgtable-arm.c:
            // arm_lpae_alloc_pgtable fails with -ENOMEM there, and there is no
            // table to walk (physical 0 is not RAM on every board).
            return Err(-crate::kernel::errno::ENOMEM);
        }
        if (iova | pa | size) & (GRANULE - 1) != 0 || size == 0 {
            self.printk(
                "iommu",
                format!("unaligned: iova {iova:#x} pa {pa:#x} size {size:#x} min_pagesz 0x1000"),
            );
            return Err(-EINVAL);
        }
        if prot & (IOMMU_READ | IOMMU_WRITE) == 0 {
            return Err(-EINVAL);
        }
        if iova.checked_add(size).is_none_or(|e| e > 1 << IAS)
            || pa.checked_add(size).is_none_or(|e| e > 1 << 48)
        {
            return Err(-crate::kernel::errno::ERANGE);
        }
        // __arm_lpae_map maps a run of pages in one table after one descent, and
        // syncs the run's descriptors for a non-coherent walker once.
        let mut done = 0;
        let mut memo: Option<(u32, u64, u64)> = None; // (leaf level, iova >> parent shift, table)
        let mut run: Option<(u64, u64)> = None; // dirty descriptor range to sync
        let mut result = Ok(());
        while done < size {
            let (a, p) = (iova + done, pa + done);
            let pg = pgsize(a, p, size - done);
            let leaf = match pg {
                0x4000_0000 => 1,
                0x20_0000 => 2,
                _ => 3,
            };
            let key = a >> level_shift(leaf - 1);
            let table = match memo {
                Some((l, k, t)) if l == leaf && k == key => t,
                _ => match self.iopt_walk_alloc(domain, pgd, a, leaf) {
                    Ok(t) => {
                        memo = Some((leaf, key, t));
                        t
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
            };
            let slot = table + ((a >> level_shift(leaf)) & 511) * 8;
            let old = self.iopt_read(slot);
            if leaf < 3 && old & 0b11 == DESC_TABLE {
                // A block where a table is: io-pgtable-arm.c arm_lpae_init_pte unmaps
                // and frees the old table first (a table left behind by unmapping
                // 4 KiB pages, which __arm_lpae_unmap never frees).
                self.iopt_free_table(domain, slot, old, leaf + 1);
                self.iommu_tlb_inv_range(domain, a, pg, 1);
            } else if old & DESC_VALID != 0 {
                self.printk(
                    "iommu",
                    format!("io-pgtable: map over a live entry at iova {a:#x}: -EEXIST"),
                );
                result = Err(-crate::kernel::errno::EEXIST);
                break;
            }
            self.iopt_store(slot, (p & OA_MASK) | prot_to_pte(prot, leaf));
            run = self.iopt_extend_run(run, slot);
            done += pg;
        }
        if let Some((s0, e0)) = run {
            self.iopt_sync_walker(s0, e0 - s0);
        }
        if let Err(e) = result {
            if done > 0 {
                self.iommu_unmap_range(domain, iova, done);
            }
            return Err(e);
        }
        self.kernel.iommu.as_mut().expect("IOMMU").maps += 1;
        Ok(())
    }

    /// Descends to the table that holds `iova`'s leaf at `leaf`, allocating the
    /// missing tables; −EEXIST when a block is in the way, −ENOMEM without memory.
    fn iopt_walk_alloc(
        &mut self,
        domain: usize,
        pgd: u64,
        iova: u64,
        leaf: u32,
    ) -> Result<u64, i64> {
        use crate::kernel::errno::{EEXIST, ENOMEM};
        let mut table = pgd;
        for level in 0..leaf {
            let slot = table + ((iova >> level_shift(level)) & 511) * 8;
            let d = self.iopt_read(slot);
            if d & DESC_VALID != 0 {
                if d & 0b11 != DESC_TABLE {
                    return Err(-EEXIST);
                }
                table = d & OA_MASK;
                continue;
            }
            let Some(t) = self.iopt_alloc_table() else {
                return Err(-ENOMEM);
            };
            self.kernel.iommu.as_mut().expect("IOMMU").domains[domain].table_pages += 1;
            self.iopt_write(slot, t | DESC_TABLE);
            table = t;
        }
        Ok(table)
    }

    /// `__arm_lpae_clear_pte` + `__arm_lpae_free_pgtable`: clears the table
    /// descriptor `desc` at `slot` and frees the level-`level` table it points to,
    /// with every table below it.
    fn iopt_free_table(&mut self, domain: usize, slot: u64, desc: u64, level: u32) {
        self.iopt_write(slot, 0);
        let mut stack = vec![(desc & OA_MASK, level)];
        while let Some((t, lvl)) = stack.pop() {
            if lvl < 3 {
                for i in 0..512 {
                    let d = self.iopt_read(t + i * 8);
                    if d & 0b11 == DESC_TABLE {
                        stack.push((d & OA_MASK, lvl + 1));
                    }
                }
            }
            self.kernel.pages.free_pages(t >> PAGE_SHIFT, 0);
            let d = &mut self.kernel.iommu.as_mut().expect("IOMMU").domains[domain];
            d.table_pages = d.table_pages.saturating_sub(1);
        }
    }

    /// Adds the descriptor at `slot` to the run of written descriptors awaiting
    /// one sync, syncing the run first when `slot` does not continue it.
    fn iopt_extend_run(&mut self, run: Option<(u64, u64)>, slot: u64) -> Option<(u64, u64)> {
        match run {
            Some((s0, e0)) if e0 == slot => Some((s0, slot + 8)),
            Some((s0, e0)) => {
                self.iopt_sync_walker(s0, e0 - s0);
                Some((slot, slot + 8))
            }
            None => Some((slot, slot + 8)),
        }
    }

    /// Cleans a run of descriptors for a non-coherent walker.
    fn iopt_sync_walker(&mut self, pa: u64, len: u64) {
        if !self.hw.iommu.coherent_walk && !self.cfg.iommu_skip_pte_sync {
            self.iopt_sync(pa, len);
        }
    }

    /// `iommu_unmap` of the page tables only (no IOTLB work): clears the leaves of
    /// `[iova, iova+size)`, stopping at the first hole or at a block it would have to
    /// split. Returns the bytes unmapped and the leaves cleared.
    pub(crate) fn iommu_unmap_range(&mut self, domain: usize, iova: u64, size: u64) -> (u64, u64) {
        let pgd = self.kernel.iommu.as_ref().expect("IOMMU").domains[domain].pgd;
        if pgd == 0 {
            // No table (its allocation failed): nothing is mapped.
            return (0, 0);
        }
        let mut done = 0;
        let mut leaves = 0;
        let mut run: Option<(u64, u64)> = None;
        'outer: while done < size {
            let a = iova + done;
            let mut table = pgd;
            for level in 0..4 {
                let slot = table + ((a >> level_shift(level)) & 511) * 8;
                let d = self.iopt_read(slot);
                if d & DESC_VALID == 0 {
                    break 'outer;
                }
                let leaf = level == 3 || d & 0b11 == DESC_BLOCK;
                if !leaf {
                    table = d & OA_MASK;
                    continue;
                }
                let pg = 1u64 << level_shift(level);
                if a & (pg - 1) != 0 || size - done < pg {
                    // Would split a block.
                    break 'outer;
                }
                // __arm_lpae_clear_pte: the run of cleared entries is synced once.
                self.iopt_store(slot, 0);
                run = self.iopt_extend_run(run, slot);
                leaves += 1;
                done += pg;
                continue 'outer;
            }
        }
        if let Some((s0, e0)) = run {
            self.iopt_sync_walker(s0, e0 - s0);
        }
        (done, leaves)
    }

    /// Whether `iova` translates in `domain`'s tables: the model's own look at them
    /// (through the coherent view, changing no cache and costing no time), not a
    /// walk the kernel does.
    pub(crate) fn iova_translates(&self, domain: usize, iova: u64) -> bool {
        let pgd = self.kernel.iommu.as_ref().expect("IOMMU").domains[domain].pgd;
        walk_tables(pgd, iova, |pa| {
            self.hw.dram.contains(pa, 8).then(|| {
                let mut b = [0u8; 8];
                self.hw.peek(pa, &mut b);
                u64::from_le_bytes(b)
            })
        })
        .is_some()
    }

    /// `iommu_iova_to_phys`: the software walk the kernel does (0 when unmapped).
    pub fn iommu_iova_to_phys(&mut self, domain: usize, iova: u64) -> u64 {
        let pgd = self.kernel.iommu.as_ref().expect("IOMMU").domains[domain].pgd;
        walk_tables(pgd, iova, |pa| Some(self.iopt_read(pa))).unwrap_or(0)
    }

    /// Strict invalidation of `leaves` leaf entries of `[iova, iova+size)`: one TLBI
    /// per leaf and a `CMD_SYNC`, charged to the CPU (`iommu_iotlb_sync`).
    pub(crate) fn iommu_tlb_inv_range(&mut self, domain: usize, iova: u64, size: u64, leaves: u64) {
        let ctx = self.kernel.iommu.as_ref().expect("IOMMU").domains[domain].ctx;
        let n = self.hw.iommu.iotlb.invalidate_range(ctx, iova, size);
        self.hw.iommu.stats.invalidated += n;
        let c = self.hw.iommu.cost;
        self.hw.advance(leaves * c.inv_page_ps + c.sync_ps);
    }

    /// `fq_flush_iotlb` + `fq_ring_free` for every CPU: the timer fired or a ring
    /// filled up. Frees the queued IOVAs.
    pub(crate) fn iommu_fq_flush(&mut self, domain: usize, charge: bool) {
        let ctx = self.kernel.iommu.as_ref().expect("IOMMU").domains[domain].ctx;
        self.hw.iommu.iotlb.invalidate_domain(ctx);
        self.hw.iommu.stats.invalidate_all += 1;
        if charge {
            // A full ring flushes in the unmap path; the timer's flush runs in a
            // softirq elsewhere and costs this CPU nothing.
            let c = self.hw.iommu.cost;
            self.hw.advance(c.inv_page_ps + c.sync_ps);
        }
        let cpu = self.cpu;
        let d = &mut self.kernel.iommu.as_mut().expect("IOMMU").domains[domain];
        d.fq.start_cnt += 1;
        d.fq.finish_cnt += 1;
        let done = d.fq.finish_cnt;
        let mut freed = Vec::new();
        for ring in &mut d.fq.rings {
            while ring.front().is_some_and(|e| e.counter < done) {
                freed.push(ring.pop_front().expect("front"));
            }
        }
        d.fq.timer = None;
        for e in freed {
            d.iovad.free_fast(cpu, e.pfn, e.pages);
        }
    }

    /// A replay's flush-queue timers (see [`IommuState::fq_flush_by_evidence`]):
    /// every domain whose timer was due `margin_ps` or more before `t_ps` has
    /// surely been flushed by the kernel by now.
    pub(crate) fn iommu_fq_expire(&mut self, t_ps: u64, margin_ps: u64) {
        let Some(st) = self.kernel.iommu.as_ref() else {
            return;
        };
        let is_due = |d: &IommuDomain| {
            d.fq.timer
                .is_some_and(|t| t.saturating_add(margin_ps) <= t_ps)
        };
        // Called before every device piece behind the IOMMU: nothing due (the
        // usual answer) allocates nothing.
        if !st.domains.iter().any(is_due) {
            return;
        }
        let due: Vec<usize> = st
            .domains
            .iter()
            .enumerate()
            .filter(|(_, d)| is_due(d))
            .map(|(i, _)| i)
            .collect();
        for d in due {
            self.iommu_fq_flush(d, false);
        }
    }

    /// The flush a trace shows: when `iova` (an address the real kernel just
    /// returned to `dev`) starts a range still queued in the device's flush queue,
    /// the kernel must have flushed it first; flush now. True when it did.
    ///
    /// The flush is placed as late as the trace allows: it frees the entries
    /// queued before the next entry of `iova`'s size class, which stays queued
    /// (had the kernel flushed it too, its LIFO cache would have handed that one
    /// out first).
    pub(crate) fn iommu_fq_flush_if_queued(&mut self, dev: usize, iova: u64) -> bool {
        let Some(domain) = self.dev_domain(dev) else {
            return false;
        };
        let cpu = self.cpu;
        let ctx = {
            let st = self.kernel.iommu.as_ref().expect("IOMMU");
            let d = &st.domains[domain];
            let Some(limit) = d.fq.flush_point_for(iova >> d.iovad.shift) else {
                return false;
            };
            let ctx = d.ctx;
            let d = &mut self.kernel.iommu.as_mut().expect("IOMMU").domains[domain];
            // fq_flush_iotlb, then fq_ring_free on every CPU's ring, in ring order;
            // what was queued after the flush gets the new counter.
            d.fq.start_cnt += 1;
            d.fq.finish_cnt += 1;
            let counter = d.fq.start_cnt;
            let mut freed = Vec::new();
            for ring in &mut d.fq.rings {
                let (done, kept): (VecDeque<FqEntry>, VecDeque<FqEntry>) =
                    ring.drain(..).partition(|e| e.seq < limit);
                freed.extend(done);
                *ring = kept;
                for e in ring.iter_mut() {
                    e.counter = counter;
                }
            }
            if d.fq.rings.iter().all(VecDeque::is_empty) {
                d.fq.timer = None;
            }
            for e in freed {
                d.iovad.free_fast(cpu, e.pfn, e.pages);
            }
            ctx
        };
        self.hw.iommu.iotlb.invalidate_domain(ctx);
        self.hw.iommu.stats.invalidate_all += 1;
        true
    }

    /// `queue_iova`: an unmapped IOVA waits in this CPU's ring until the next full
    /// IOTLB flush; a full ring flushes at once; the first entry arms the timer.
    /// The ring of `FQ_SIZE` slots holds `FQ_SIZE - 1` entries: one slot stays
    /// empty to tell full from empty, so the 256th lazy unmap flushes
    /// (drivers/iommu/dma-iommu.c: fq_full, `((tail + 1) & mod_mask) == head`).
    pub(crate) fn iommu_queue_iova(&mut self, domain: usize, pfn: u64, pages: u64) {
        let cpu = self.cpu;
        let full = {
            let d = &self.kernel.iommu.as_ref().expect("IOMMU").domains[domain];
            d.fq.rings[cpu % d.fq.rings.len()].len() >= FQ_SIZE - 1
        };
        if full {
            self.iommu_fq_flush(domain, true);
        }
        let now = self.hw.now_ps();
        let d = &mut self.kernel.iommu.as_mut().expect("IOMMU").domains[domain];
        let n = d.fq.rings.len();
        let counter = d.fq.start_cnt;
        let seq = d.fq.next_seq;
        d.fq.next_seq += 1;
        d.fq.rings[cpu % n].push_back(FqEntry {
            pfn,
            pages,
            counter,
            seq,
        });
        if d.fq.timer.is_none() {
            d.fq.timer = Some(now + FQ_TIMEOUT_PS);
        }
    }

    /// Fires every flush-queue timer due at or before `t_ps` (`fq_flush_timeout`).
    pub(crate) fn iommu_timers(&mut self, t_ps: u64) {
        if self
            .kernel
            .iommu
            .as_ref()
            .is_some_and(|s| s.fq_flush_by_evidence)
        {
            return;
        }
        self.iommu_fq_expire(t_ps, 0);
    }
}
