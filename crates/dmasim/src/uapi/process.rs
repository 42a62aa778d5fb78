//! Processes: address spaces with VMAs, demand-faulted anonymous memory, `mlock`,
//! `munmap` and `/proc/PID/pagemap`; and what the kernel does to their pages:
//! `get_user_pages`/`pin_user_pages` (`mm/gup.c`) and migration (`mm/migrate.c`,
//! `compact()` and background migration).
//!
//! A user buffer's pages appear at the first touch, one `GFP_HIGHUSER_MOVABLE` page
//! at a time wherever the page allocator finds it, so they are physically scattered.
//! Migration copies a page through the CPU (as `folio_copy` does, so dirty cache lines
//! come along), points the PTE at the new frame and frees the old one; it skips every
//! page whose refcount holds more than its mapping (pinned or `get_user_pages`'d),
//! and it does not care about `mlock` (which only stops reclaim).
//!
//! Address spaces follow the architecture: on arm64 (48-bit VA) mappings start high
//! below 2^48; on x86-64 below the 47-bit `TASK_SIZE`; on 32-bit ARM (3G/1G split)
//! at `TASK_UNMAPPED_BASE` (0x4000_0000) and end at `TASK_SIZE` (0xBF00_0000), so a
//! process has under 2 GiB to map there.
//!
//! Simplifications: private anonymous memory only (no sharing, no fork, no file
//! mappings); `malloc` is an `mmap`; no swap yet; mappings go upwards from the base
//! (Linux's legacy layout; the default layout goes down from below the stack), one
//! guard page apart; once the top is reached, the lowest hole that `munmap` left
//! and that fits is reused (first fit, as `unmapped_area()` searches).

use std::collections::BTreeMap;

use crate::config::{PAGE_SHIFT, PAGE_SIZE};
use crate::hw::mmu::MemType;
use crate::kernel::errno;
use crate::kernel::mm::gfp::GFP_HIGHUSER_MOVABLE;
use crate::kernel::mm::page::{Owner, Vacated, GUP_PIN_COUNTING_BIAS};
use crate::system::{Result, SimError, System};

/// Where `mmap` starts and the end of user space (`TASK_SIZE`), per architecture.
fn user_layout(arch: crate::config::Arch) -> (u64, u64) {
    use crate::config::Arch;
    match arch {
        // 48-bit VA: TASK_SIZE_64 = 2^48 (arch/arm64/include/asm/processor.h).
        Arch::Arm64 => (0x0000_ffff_0000_0000, 1 << 48),
        // 4-level paging: TASK_SIZE_MAX = 2^47 - 4096; mmap_base sits near its top
        // (arch/x86/include/asm/page_64_types.h, arch/x86/mm/mmap.c).
        Arch::X86_64 => (0x0000_7f00_0000_0000, (1 << 47) - PAGE_SIZE),
        // VMSPLIT_3G: TASK_SIZE = PAGE_OFFSET - 16 MiB, TASK_UNMAPPED_BASE =
        // ALIGN(TASK_SIZE / 3, SZ_16M) (arch/arm/include/asm/memory.h).
        Arch::Arm32 => (0x4000_0000, 0xbf00_0000),
    }
}
/// Largest single mapping.
const MAX_MMAP: u64 = 1 << 32;

/// One mapping of a process (`struct vm_area_struct`).
#[derive(Debug, Clone, Copy)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// Length (whole pages).
    pub len: u64,
    /// `VM_LOCKED` (mlock).
    pub locked: bool,
    /// `VM_HUGETLB`: backed by 2 MiB pages from the boot pool.
    pub huge: bool,
    /// `VM_PFNMAP`: a driver's frames mapped into the process (V4L2 mmap); not
    /// anonymous memory, never migrated, swapped or freed by munmap.
    pub pfnmap: bool,
    /// The driver's pages were inserted as pages (`vm_insert_page`, `VM_MIXEDMAP`)
    /// rather than remapped as raw pfns (`remap_pfn_range`, `VM_IO | VM_PFNMAP`):
    /// only then may `get_user_pages` take them (mm/gup.c: check_vma_flags refuses
    /// `VM_IO | VM_PFNMAP` with -EFAULT).
    pub gup_ok: bool,
}

/// A process.
#[derive(Debug, Clone)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Name.
    pub name: String,
    /// Its MMU address space.
    pub asid: usize,
    /// Mappings by start address.
    pub vmas: BTreeMap<u64, Vma>,
    next_va: u64,
    /// Where mappings start (`TASK_UNMAPPED_BASE` or the arch's mmap base).
    va_base: u64,
    /// End of user space (`TASK_SIZE`).
    va_top: u64,
    /// Present pages: virtual page number → pfn.
    pub present: BTreeMap<u64, u64>,
    /// Pages charged to `RLIMIT_MEMLOCK` (`mm->locked_vm`, by VFIO pins).
    pub locked_vm: u64,
    /// `RLIMIT_MEMLOCK` in bytes.
    pub memlock_limit: u64,
    /// `CAP_IPC_LOCK`: pins are not charged.
    pub cap_ipc_lock: bool,
}

impl Process {
    /// The mapping holding `va`, if any.
    fn vma_at(&self, va: u64) -> Option<&Vma> {
        self.vmas
            .range(..=va)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| va < v.start + v.len)
    }

    /// Finds room for `len` bytes aligned to `align` and takes it: above the last
    /// mapping (leaving `guard` bytes after it) while there is room below
    /// `TASK_SIZE`, else the lowest hole between mappings (one guard page after
    /// each) that fits. When neither does, mmap's ENOMEM ("no room in the address
    /// space"), which here ends the run with a clear message.
    fn place(&mut self, len: u64, align: u64, guard: u64) -> Result<u64> {
        let fits = |start: u64, end: u64| start.checked_add(len).is_some_and(|e| e <= end);
        let start = self.next_va.next_multiple_of(align);
        if fits(start, self.va_top) {
            self.next_va = start + len + guard;
            return Ok(start);
        }
        let mut cand = self.va_base.next_multiple_of(align);
        for v in self.vmas.values() {
            if fits(cand, v.start.saturating_sub(PAGE_SIZE)) {
                return Ok(cand);
            }
            cand = cand.max((v.start + v.len + PAGE_SIZE).next_multiple_of(align));
        }
        if fits(cand, self.va_top) {
            return Ok(cand);
        }
        Err(SimError::Invalid(format!(
            "{} (pid {}): mmap of {len} bytes: no room left below TASK_SIZE {:#x} (mmap fails with ENOMEM)",
            self.name, self.pid, self.va_top
        )))
    }
}

/// A set of pages taken with `get_user_pages` or `pin_user_pages`.
#[derive(Debug, Clone)]
pub struct PinnedPages {
    /// The frames, in buffer order.
    pub pfns: Vec<u64>,
    /// FOLL_PIN (true) or FOLL_GET (false).
    pub pinned: bool,
    /// Whose pages.
    pub pid: u32,
    /// The frames of `pfns` that are a driver's pages (counted in
    /// `Kernel::kernel_page_refs`), not the process's own.
    pub kernel_pfns: Vec<u64>,
}

/// What [`System::gup`] returns when a page could not leave CMA (-ENOMEM).
pub const GUP_ENOMEM: u64 = u64::MAX;
/// What [`System::gup`] returns for a `VM_IO | VM_PFNMAP` mapping (-EFAULT).
pub const GUP_EFAULT: u64 = u64::MAX - 1;

/// The first process's pid; the n-th process gets `FIRST_PID + n`.
const FIRST_PID: u32 = 100;

/// A fixmap slot for `kmap_local_page` of highmem pages (arm32 `FIXADDR_START`).
const KMAP_VA: u64 = 0xfff0_0000;

impl System {
    /// Kernel stores into any page: through the linear map for lowmem, page by page
    /// through a temporary kmap slot for highmem (`kmap_local_page`).
    pub(crate) fn kmap_write(&mut self, pa: u64, data: &[u8]) {
        if pa + data.len() as u64 <= self.kernel.lowmem_end {
            let _ = self
                .hw
                .cpu_write(self.cpu, 0, self.kernel.phys_to_virt(pa), data);
            return;
        }
        for (k, chunk) in data.chunks(PAGE_SIZE as usize).enumerate() {
            let page = pa + k as u64 * PAGE_SIZE;
            self.hw.mmu.map_page(0, KMAP_VA, page, MemType::Normal);
            let _ = self
                .hw
                .cpu_write(self.cpu, 0, KMAP_VA + (page & (PAGE_SIZE - 1)), chunk);
            self.hw.mmu.unmap_page(0, KMAP_VA);
        }
    }

    /// Kernel loads from any page (see [`System::kmap_write`]).
    pub(crate) fn kmap_read(&mut self, pa: u64, out: &mut [u8]) {
        if pa + out.len() as u64 <= self.kernel.lowmem_end {
            let _ = self
                .hw
                .cpu_read(self.cpu, 0, self.kernel.phys_to_virt(pa), out);
            return;
        }
        for (k, chunk) in out.chunks_mut(PAGE_SIZE as usize).enumerate() {
            let page = pa + k as u64 * PAGE_SIZE;
            self.hw.mmu.map_page(0, KMAP_VA, page, MemType::Normal);
            let _ = self
                .hw
                .cpu_read(self.cpu, 0, KMAP_VA + (page & (PAGE_SIZE - 1)), chunk);
            self.hw.mmu.unmap_page(0, KMAP_VA);
        }
    }

    /// `fork`+`exec` of a new process with an empty address space; returns its pid.
    pub fn process_new(&mut self, name: &str) -> u32 {
        let asid = self.hw.mmu.new_space();
        let pid = FIRST_PID + self.kernel.procs.len() as u32;
        let (base, top) = user_layout(self.cfg.arch);
        self.kernel.procs.push(Process {
            pid,
            name: name.to_string(),
            asid,
            vmas: BTreeMap::new(),
            next_va: base,
            va_base: base,
            va_top: top,
            present: BTreeMap::new(),
            locked_vm: 0,
            memlock_limit: crate::uapi::vfio::DEFAULT_MEMLOCK,
            cap_ipc_lock: false,
        });
        pid
    }

    /// Linux invariants of the memory model (the invariant check mode of tests and
    /// the fuzzer): every page a process maps as its own and every page a pin or
    /// reference holds is off the free lists, the swiotlb pool's books agree (no
    /// slot handed out twice), and no IOVA is handed out twice. An IOVA allocator
    /// or swiotlb pool that a misuse left inconsistent, as Linux's would be, was
    /// reported then (`allocator-corrupted`) and is not judged.
    ///
    /// # Errors
    /// The first broken invariant.
    pub fn check_invariants(&self) -> Result<()> {
        let bad = |m: String| Err(SimError::Invalid(format!("invariant: {m}")));
        for p in &self.kernel.procs {
            for (&vpn, &pfn) in &p.present {
                let own = p.vma_at(vpn << PAGE_SHIFT).is_some_and(|v| !v.pfnmap);
                if own && self.kernel.pages.is_free(pfn) {
                    return bad(format!(
                        "frame {pfn:#x} is mapped by {} (pid {}) at {:#x} and free in the page allocator",
                        p.name,
                        p.pid,
                        vpn << PAGE_SHIFT
                    ));
                }
            }
        }
        for (id, set) in &self.kernel.pins {
            for &pfn in set.pfns.iter().filter(|pfn| !set.kernel_pfns.contains(pfn)) {
                if self.kernel.pages.is_free(pfn) {
                    return bad(format!(
                        "frame {pfn:#x} is held by pinned-pages set #{id} and free in the page allocator"
                    ));
                }
            }
        }
        for (pfn, pg) in self.kernel.user_pages.iter() {
            if pg.refcount == 0 {
                return bad(format!("user page {pfn:#x} has refcount 0 while mapped"));
            }
        }
        // An allocator a misuse left inconsistent, as Linux's would be, was
        // reported then (`allocator-corrupted`, after the misuse's own finding) and
        // is not judged again: what its books say from then on is Linux's state,
        // not a dmasim bug. Every other allocator still is.
        if let Some(pool) = self.kernel.swiotlb.as_ref().filter(|p| !p.corrupted) {
            pool.consistent().or_else(bad)?;
        }
        // No IOVA handed out twice: each DMA domain's allocator, with the ranges
        // its flush queue still holds.
        if let Some(st) = &self.kernel.iommu {
            for d in st.domains.iter().filter(|d| !d.iovad.corrupted) {
                d.iovad.consistent(d.fq.pending_pfns()).or_else(bad)?;
            }
        }
        Ok(())
    }

    /// The index of process `pid` in `kernel.procs`. Processes are never removed
    /// and pids are `FIRST_PID + index`, so this is O(1) (a scan by pid on every
    /// user access made creating processes quadratic).
    pub(crate) fn proc_index(&self, pid: u32) -> Result<usize> {
        pid.checked_sub(FIRST_PID)
            .map(|i| i as usize)
            .filter(|&i| self.kernel.procs.get(i).is_some_and(|p| p.pid == pid))
            .ok_or_else(|| SimError::Invalid(format!("no process {pid}")))
    }

    /// `mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS)`: reserves
    /// the range; pages come at the first touch. Returns the address.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a size of 0 or over 4 GiB.
    pub fn mmap(&mut self, pid: u32, size: u64, locked: bool) -> Result<u64> {
        if size == 0 || size > MAX_MMAP {
            return Err(SimError::Invalid(format!(
                "mmap of {size} bytes (1 byte to 4 GiB)"
            )));
        }
        let i = self.proc_index(pid)?;
        let p = &mut self.kernel.procs[i];
        let len = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let start = p.place(len, PAGE_SIZE, PAGE_SIZE)?;
        p.vmas.insert(
            start,
            Vma {
                start,
                len,
                locked,
                huge: false,
                pfnmap: false,
                gup_ok: true,
            },
        );
        Ok(start)
    }

    /// `mmap(MAP_HUGETLB)`: `size` rounded up to 2 MiB pages taken from the boot pool
    /// and mapped at once (the reservation happens at mmap time, as hugetlbfs does).
    /// Returns the address, or `-ENOMEM` when the pool has too few pages.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a size of 0 or over 4 GiB.
    pub fn mmap_huge(&mut self, pid: u32, size: u64) -> Result<std::result::Result<u64, i64>> {
        const HUGE: u64 = 2 << 20;
        if size == 0 || size > MAX_MMAP {
            return Err(SimError::Invalid(format!(
                "mmap of {size} bytes (1 byte to 4 GiB)"
            )));
        }
        let i = self.proc_index(pid)?;
        let n = size.div_ceil(HUGE);
        if (self.kernel.hugepool.len() as u64) < n {
            return Ok(Err(-errno::ENOMEM));
        }
        let p = &mut self.kernel.procs[i];
        let Ok(start) = p.place(n * HUGE, HUGE, HUGE) else {
            return Ok(Err(-errno::ENOMEM));
        };
        p.vmas.insert(
            start,
            Vma {
                start,
                len: n * HUGE,
                locked: true,
                huge: true,
                pfnmap: false,
                gup_ok: true,
            },
        );
        let (asid, pid) = (p.asid, p.pid);
        for h in 0..n {
            let base = self.kernel.hugepool.pop().expect("checked above");
            // clear_huge_page through the kernel's alias.
            self.kmap_write(base << PAGE_SHIFT, &vec![0u8; HUGE as usize]);
            for k in 0..HUGE / PAGE_SIZE {
                let va = start + h * HUGE + k * PAGE_SIZE;
                let pfn = base + k;
                self.hw
                    .mmu
                    .map_page(asid, va, pfn << PAGE_SHIFT, MemType::Normal);
                self.kernel.procs[i].present.insert(va >> PAGE_SHIFT, pfn);
                self.kernel.user_pages.insert(pfn, Owner { pid, va });
                if let Some(pg) = self.kernel.user_pages.get_mut(pfn) {
                    pg.hugetlb = true;
                    pg.mlocked = true;
                }
            }
        }
        Ok(Ok(start))
    }

    /// `mlock()`: marks the range locked (reclaim will not take it; migration still
    /// may, as in Linux).
    ///
    /// # Errors
    /// `-ENOMEM` as Linux when the range is not mapped: returned as `Ok(-ENOMEM)`.
    pub fn mlock(&mut self, pid: u32, va: u64, len: u64) -> Result<i64> {
        let i = self.proc_index(pid)?;
        let Some(vma) = self.kernel.procs[i]
            .vmas
            .values_mut()
            .find(|v| va >= v.start && va + len <= v.start + v.len)
        else {
            return Ok(-errno::ENOMEM);
        };
        vma.locked = true;
        let pages: Vec<u64> = self.kernel.procs[i]
            .present
            .range(va >> PAGE_SHIFT..(va + len).div_ceil(PAGE_SIZE))
            .map(|(_, &pfn)| pfn)
            .collect();
        for pfn in pages {
            if let Some(pg) = self.kernel.user_pages.get_mut(pfn) {
                pg.mlocked = true;
            }
        }
        Ok(0)
    }

    /// Maps a driver's frames into `pid` (`remap_pfn_range` from a driver's mmap):
    /// a `VM_PFNMAP` mapping whose pages are present at once. Returns the address.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown process or an empty list.
    pub fn map_frames(&mut self, pid: u32, pfns: &[u64], memtype: MemType) -> Result<u64> {
        self.map_driver_pages(pid, pfns, memtype, false)
    }

    /// Maps a driver's pages into `pid` with `vm_insert_page` (`VM_MIXEDMAP`: the
    /// CMA heap's fault handler, vb2-dma-sg's `vm_map_pages`): like
    /// [`System::map_frames`], but `get_user_pages` may take these pages.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown process or an empty list.
    pub fn map_inserted_pages(&mut self, pid: u32, pfns: &[u64], memtype: MemType) -> Result<u64> {
        self.map_driver_pages(pid, pfns, memtype, true)
    }

    fn map_driver_pages(
        &mut self,
        pid: u32,
        pfns: &[u64],
        memtype: MemType,
        gup_ok: bool,
    ) -> Result<u64> {
        let i = self.proc_index(pid)?;
        if pfns.is_empty() {
            return Err(SimError::Invalid("map_frames: no frames".into()));
        }
        let len = pfns.len() as u64 * PAGE_SIZE;
        let p = &mut self.kernel.procs[i];
        let va = p.place(len, PAGE_SIZE, PAGE_SIZE)?;
        p.vmas.insert(
            va,
            Vma {
                start: va,
                len,
                locked: false,
                huge: false,
                pfnmap: true,
                gup_ok,
            },
        );
        let asid = p.asid;
        for (k, &pfn) in pfns.iter().enumerate() {
            let v = va + k as u64 * PAGE_SIZE;
            self.kernel.procs[i].present.insert(v >> PAGE_SHIFT, pfn);
            self.hw.mmu.map_page(asid, v, pfn << PAGE_SHIFT, memtype);
        }
        Ok(va)
    }

    /// `munmap()`: frees the pages of the mapping at `va` (a pinned page stays
    /// allocated until unpinned, as its refcount says).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown process.
    pub fn munmap(&mut self, pid: u32, va: u64) -> Result<i64> {
        let i = self.proc_index(pid)?;
        let Some(vma) = self.kernel.procs[i].vmas.remove(&va) else {
            return Ok(-errno::EINVAL);
        };
        if vma.pfnmap {
            // The driver's frames stay the driver's.
            let asid = self.kernel.procs[i].asid;
            for off in (0..vma.len).step_by(PAGE_SIZE as usize) {
                let v = vma.start + off;
                self.kernel.procs[i].present.remove(&(v >> PAGE_SHIFT));
                self.hw.mmu.unmap_page(asid, v);
            }
            self.dmabuf_munmapped(pid, va);
            return Ok(0);
        }
        if vma.huge {
            // Huge pages go back to the pool, whole.
            let now = self.ctx().time_ns;
            let asid = self.kernel.procs[i].asid;
            for hoff in (0..vma.len).step_by(2 << 20) {
                let mut base = None;
                let mut busy = false;
                for off in (hoff..hoff + (2 << 20)).step_by(PAGE_SIZE as usize) {
                    let v = vma.start + off;
                    if let Some(pfn) = self.kernel.procs[i].present.remove(&(v >> PAGE_SHIFT)) {
                        self.hw.mmu.unmap_page(asid, v);
                        busy |= self
                            .kernel
                            .user_pages
                            .get(pfn)
                            .is_some_and(|p| p.refcount > 1);
                        self.kernel.user_pages.vacate(pfn, Vacated::Unmapped, now);
                        base.get_or_insert(pfn);
                    }
                }
                if let Some(b) = base {
                    // A pinned huge page stays allocated: the device may still use it.
                    if busy {
                        self.kernel.huge_orphans.insert(b);
                    } else {
                        self.kernel.hugepool.push(b);
                    }
                }
            }
            return Ok(0);
        }
        let vpns: Vec<(u64, u64)> = self.kernel.procs[i]
            .present
            .range(vma.start >> PAGE_SHIFT..(vma.start + vma.len) >> PAGE_SHIFT)
            .map(|(&v, &p)| (v, p))
            .collect();
        let asid = self.kernel.procs[i].asid;
        let now = self.ctx().time_ns;
        let (first, last) = (vma.start >> PAGE_SHIFT, (vma.start + vma.len) >> PAGE_SHIFT);
        self.kernel
            .swap
            .retain(|&(p, v), _| p != pid || v < first || v >= last);
        for (vpn, pfn) in vpns {
            self.kernel.procs[i].present.remove(&vpn);
            self.hw.mmu.unmap_page(asid, vpn << PAGE_SHIFT);
            let extra = self
                .kernel
                .user_pages
                .get(pfn)
                .map_or(0, |p| p.refcount - 1);
            self.kernel.user_pages.vacate(pfn, Vacated::Unmapped, now);
            if extra == 0 {
                self.kernel.pages.free_pages(pfn, 0);
            }
        }
        Ok(0)
    }

    /// Whether every page of `[va, va+len)` lies in a mapping of process `pid` (what
    /// get_user_pages would not fault on with -EFAULT).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown process.
    pub fn user_range_mapped(&self, pid: u32, va: u64, len: u64) -> Result<bool> {
        let p = &self.kernel.procs[self.proc_index(pid)?];
        let Some(end) = va.checked_add(len.max(1)) else {
            return Ok(false);
        };
        let mut a = va & !(PAGE_SIZE - 1);
        while a < end {
            // The next page to check is past the end of the VMA holding `a`.
            match p.vma_at(a) {
                Some(v) => a = v.start + v.len,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Makes the page at `va` present in process `pid` (a page fault), returning its pfn.
    fn fault_in(&mut self, i: usize, va: u64) -> Result<u64> {
        let vpn = va >> PAGE_SHIFT;
        if let Some(&pfn) = self.kernel.procs[i].present.get(&vpn) {
            return Ok(pfn);
        }
        let p = &self.kernel.procs[i];
        let Some(vma) = p.vma_at(va) else {
            return Err(SimError::Invalid(format!(
                "{} (pid {}): segmentation fault at {va:#x} (no mapping there)",
                p.name, p.pid
            )));
        };
        let (pid, asid, locked) = (p.pid, p.asid, vma.locked);
        let pfn = match self
            .kernel
            .pages
            .alloc_pages(0, GFP_HIGHUSER_MOVABLE, &mut self.hw.rng)
        {
            Ok(pfn) => pfn,
            Err(f) => {
                self.alloc_failed("", "page fault", PAGE_SIZE, 0, Some(&f));
                return Err(SimError::Invalid(format!(
                    "out of memory: the page fault at {va:#x} of pid {pid} cannot be served"
                )));
            }
        };
        // clear_user_highpage, or the swapped-out contents (swap_read_folio), through
        // the kernel's alias.
        match self.kernel.swap.remove(&(pid, vpn)) {
            Some(data) => self.kmap_write(pfn << PAGE_SHIFT, &data[..]),
            None => self.kmap_write(pfn << PAGE_SHIFT, &[0u8; PAGE_SIZE as usize]),
        }
        self.hw
            .mmu
            .map_page(asid, vpn << PAGE_SHIFT, pfn << PAGE_SHIFT, MemType::Normal);
        self.kernel.procs[i].present.insert(vpn, pfn);
        self.kernel.user_pages.insert(
            pfn,
            Owner {
                pid,
                va: vpn << PAGE_SHIFT,
            },
        );
        if locked {
            if let Some(pg) = self.kernel.user_pages.get_mut(pfn) {
                pg.mlocked = true;
            }
        }
        Ok(pfn)
    }

    /// A store by process `pid` (page faults first, then the CPU through its caches).
    ///
    /// # Errors
    /// A segmentation fault outside the process's mappings.
    pub fn user_write(&mut self, pid: u32, va: u64, data: &[u8]) -> Result<()> {
        let i = self.proc_index(pid)?;
        let mut off = 0;
        while off < data.len() as u64 {
            self.fault_in(i, va + off)?;
            off += PAGE_SIZE - ((va + off) & (PAGE_SIZE - 1));
        }
        let asid = self.kernel.procs[i].asid;
        self.cpu_write_as(asid, va, data)
    }

    /// A load by process `pid`.
    ///
    /// # Errors
    /// A segmentation fault outside the process's mappings.
    pub fn user_read(&mut self, pid: u32, va: u64, len: u64) -> Result<Vec<u8>> {
        let i = self.proc_index(pid)?;
        let mut off = 0;
        while off < len {
            self.fault_in(i, va + off)?;
            off += PAGE_SIZE - ((va + off) & (PAGE_SIZE - 1));
        }
        let asid = self.kernel.procs[i].asid;
        self.cpu_read_as(asid, va, len)
    }

    /// `/proc/PID/pagemap` as root: the frame number of the page at `va`, 0 when
    /// the page is not present.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown process.
    pub fn pagemap(&self, pid: u32, va: u64) -> Result<u64> {
        let i = self.proc_index(pid)?;
        Ok(self.kernel.procs[i]
            .present
            .get(&(va >> PAGE_SHIFT))
            .copied()
            .unwrap_or(0))
    }

    /// `get_user_pages()` (`pin` = false) or `pin_user_pages()` (`pin` = true) over
    /// `[va, va+len)`: faults the pages in and takes a reference on each (a pin adds
    /// `GUP_PIN_COUNTING_BIAS`); with `longterm` (FOLL_LONGTERM), pages in CMA are
    /// migrated out first. Returns the pinned-pages id, [`GUP_ENOMEM`] when a page
    /// could not leave CMA, or [`GUP_EFAULT`] for a `VM_IO | VM_PFNMAP` mapping.
    /// A driver's page mapped with `vm_insert_page` gets a reference of its own
    /// (never freed by the release: the driver still owns it).
    ///
    /// # Errors
    /// A segmentation fault outside the mappings.
    pub fn gup(&mut self, pid: u32, va: u64, len: u64, pin: bool, longterm: bool) -> Result<u64> {
        let i = self.proc_index(pid)?;
        let first = va & !(PAGE_SIZE - 1);
        let mut pfns = Vec::new();
        let mut kernel_pfns = Vec::new();
        let mut a = first;
        while a < va.saturating_add(len.max(1)) {
            // mm/gup.c: check_vma_flags(): VM_IO | VM_PFNMAP → -EFAULT.
            if self.kernel.procs[i]
                .vma_at(a)
                .is_some_and(|v| v.pfnmap && !v.gup_ok)
            {
                return Ok(GUP_EFAULT);
            }
            let mut pfn = self.fault_in(i, a)?;
            if self.kernel.procs[i].vma_at(a).is_some_and(|v| v.pfnmap) {
                // A driver's page: referenced, never migrated here.
                pfns.push(pfn);
                kernel_pfns.push(pfn);
                a += PAGE_SIZE;
                continue;
            }
            // FOLL_LONGTERM: a page in CMA moves out before it is pinned
            // (check_and_migrate_movable_folios).
            if longterm && self.kernel.pages.in_cma(pfn) {
                if !self.migrate_out_of_cma(pfn) {
                    return Ok(u64::MAX);
                }
                pfn = self.kernel.procs[i].present[&(a >> PAGE_SHIFT)];
            }
            pfns.push(pfn);
            a += PAGE_SIZE;
        }
        let add = if pin { GUP_PIN_COUNTING_BIAS } else { 1 };
        if pin {
            self.kernel.pins_acquired += pfns.len() as u64;
        }
        for &pfn in &pfns {
            if let Some(pg) = self.kernel.user_pages.get_mut(pfn) {
                pg.refcount += add;
            }
        }
        for &pfn in &kernel_pfns {
            *self.kernel.kernel_page_refs.entry(pfn).or_insert(0) += 1;
        }
        let id = self.kernel.next_pins;
        self.kernel.next_pins += 1;
        self.kernel.pins.insert(
            id,
            PinnedPages {
                pfns,
                pinned: pin,
                pid,
                kernel_pfns,
            },
        );
        Ok(id)
    }

    /// `unpin_user_pages()` / `put_page()` on a set from [`System::gup`]. Releasing
    /// pins with `put_page` (or the other way round) is the kernel's refcount
    /// imbalance; it is refused here with an error.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown set or the wrong release call.
    pub fn gup_release(&mut self, id: u64, unpin: bool) -> Result<()> {
        let set = self.kernel.pins.get(&id).ok_or_else(|| {
            SimError::Invalid(format!("no pinned-pages set #{id} (released twice?)"))
        })?;
        if set.pinned != unpin {
            let (got, want) = if set.pinned {
                ("put_page", "unpin_user_pages")
            } else {
                ("unpin_user_pages", "put_page")
            };
            return Err(SimError::Invalid(format!(
                "{got} on pages taken with {}: release them with {want}",
                if set.pinned {
                    "pin_user_pages"
                } else {
                    "get_user_pages"
                }
            )));
        }
        let set = self.kernel.pins.remove(&id).expect("checked above");
        let sub = if set.pinned { GUP_PIN_COUNTING_BIAS } else { 1 };
        for &pfn in &set.kernel_pfns {
            // put_page on a driver's page: its own reference keeps it allocated.
            if let Some(n) = self.kernel.kernel_page_refs.get_mut(&pfn) {
                *n -= 1;
                if *n == 0 {
                    self.kernel.kernel_page_refs.remove(&pfn);
                }
            }
        }
        let kernel: std::collections::BTreeSet<u64> = set.kernel_pfns.iter().copied().collect();
        // Frames unmapped while pinned that another pin set still holds: each set
        // took its own reference (mm/gup.c try_grab_folio), so dropping this one is
        // not the last put. Looked up only when this set has such frames.
        let orphans: std::collections::HashSet<u64> = set
            .pfns
            .iter()
            .copied()
            .filter(|p| !kernel.contains(p) && self.kernel.user_pages.get(*p).is_none())
            .collect();
        let still_held: std::collections::HashSet<u64> = if orphans.is_empty() {
            Default::default()
        } else {
            self.kernel
                .pins
                .values()
                .flat_map(|s| s.pfns.iter().copied())
                .filter(|p| orphans.contains(p))
                .collect()
        };
        for pfn in set.pfns {
            if kernel.contains(&pfn) || still_held.contains(&pfn) {
                continue;
            }
            let orphan_huge = self
                .kernel
                .huge_orphans
                .range(..=pfn)
                .next_back()
                .is_some_and(|&b| pfn < b + 512);
            match self.kernel.user_pages.get_mut(pfn) {
                Some(pg) => pg.refcount = pg.refcount.saturating_sub(sub).max(1),
                // Part of a huge page unmapped while pinned: it stays out of the pool.
                None if orphan_huge => {}
                // Unmapped while pinned: the last reference frees the frame.
                None => self.kernel.pages.free_pages(pfn, 0),
            }
        }
        Ok(())
    }

    /// Migrates one user page to a new frame (`migrate_pages` for one folio): copy
    /// through the CPU, switch the PTE, free the old frame. `false` when the page is
    /// not movable (pinned or referenced) or no frame is free.
    pub fn migrate_page(&mut self, pfn: u64) -> bool {
        self.migrate_page_to(pfn, true)
    }

    /// [`System::migrate_page`], with the new frame allowed to come from CMA or not
    /// (moving out of CMA takes a non-movable target, which CMA never serves).
    pub fn migrate_page_to(&mut self, pfn: u64, allow_cma: bool) -> bool {
        let Some(pg) = self.kernel.user_pages.get(pfn).copied() else {
            return false;
        };
        if !pg.movable() {
            return false;
        }
        let gfp = if allow_cma {
            GFP_HIGHUSER_MOVABLE
        } else {
            GFP_HIGHUSER_MOVABLE & !crate::kernel::mm::gfp::GFP_MOVABLE
        };
        let Ok(new) = self.kernel.pages.alloc_pages(0, gfp, &mut self.hw.rng) else {
            return false;
        };
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        self.kmap_read(pfn << PAGE_SHIFT, &mut buf);
        self.kmap_write(new << PAGE_SHIFT, &buf);
        let Ok(i) = self.proc_index(pg.owner.pid) else {
            return false;
        };
        let asid = self.kernel.procs[i].asid;
        self.hw
            .mmu
            .map_page(asid, pg.owner.va, new << PAGE_SHIFT, MemType::Normal);
        self.kernel.procs[i]
            .present
            .insert(pg.owner.va >> PAGE_SHIFT, new);
        let now = self.ctx().time_ns;
        self.kernel
            .user_pages
            .vacate(pfn, Vacated::Migrated { to_pfn: new }, now);
        self.kernel.user_pages.insert(new, pg.owner);
        if let Some(n) = self.kernel.user_pages.get_mut(new) {
            n.mlocked = pg.mlocked;
        }
        self.kernel.pages.free_pages(pfn, 0);
        self.kernel.migrated_pages += 1;
        true
    }

    /// `reclaim(bytes)`: swaps out up to `bytes` of user pages that are neither
    /// referenced beyond their mapping (pinned, `get_user_pages`) nor mlocked
    /// (`shrink_folio_list` skips both). The next access faults them back in, into
    /// whatever frame the allocator gives. Returns the pages swapped out.
    pub fn reclaim(&mut self, bytes: u64) -> u64 {
        self.step();
        let want = bytes.div_ceil(PAGE_SIZE);
        let mut candidates: Vec<(usize, u64, u64)> = Vec::new();
        for (i, p) in self.kernel.procs.iter().enumerate() {
            for (&vpn, &pfn) in &p.present {
                let ok = self
                    .kernel
                    .user_pages
                    .get(pfn)
                    .is_some_and(|pg| pg.movable() && !pg.mlocked);
                if ok {
                    candidates.push((i, vpn, pfn));
                }
            }
        }
        // The swap device is as large as RAM, at most 4 GiB; a full device stops reclaim.
        let room =
            ((self.cfg.ram.min(4 << 30)) / PAGE_SIZE).saturating_sub(self.kernel.swap.len() as u64);
        let mut done = 0;
        for (i, vpn, pfn) in candidates.into_iter().take(want.min(room) as usize) {
            // swap_writepage: the contents as the CPU sees them, then the frame goes.
            let mut data = Box::new([0u8; PAGE_SIZE as usize]);
            self.kmap_read(pfn << PAGE_SHIFT, &mut data[..]);
            let (pid, asid) = (self.kernel.procs[i].pid, self.kernel.procs[i].asid);
            self.kernel.swap.insert((pid, vpn), data);
            self.kernel.procs[i].present.remove(&vpn);
            self.hw.mmu.unmap_page(asid, vpn << PAGE_SHIFT);
            let now = self.ctx().time_ns;
            self.kernel.user_pages.vacate(pfn, Vacated::Swapped, now);
            self.kernel.pages.free_pages(pfn, 0);
            done += 1;
        }
        self.kernel.swapped_pages += done;
        self.printk("kswapd", format!("reclaimed {done} pages to swap"));
        done
    }

    /// `compact()`: migrates every movable user page (in pfn order), as a full
    /// compaction pass would move the movable pages of the zone. Returns how many moved.
    pub fn compact(&mut self) -> u64 {
        self.step();
        let mut pfns: Vec<u64> = self
            .kernel
            .procs
            .iter()
            .flat_map(|p| p.present.values().copied())
            .collect();
        pfns.sort_unstable();
        let moved = pfns
            .into_iter()
            .filter(|&pfn| self.migrate_page(pfn))
            .count() as u64;
        self.printk("compaction", format!("migrated {moved} pages"));
        moved
    }

    /// One background migration (the `migrate` noise rate): a random movable user page.
    pub(crate) fn noise_migrate(&mut self) {
        let total: usize = self.kernel.procs.iter().map(|p| p.present.len()).sum();
        if total == 0 || !self.hw.rng.chance(self.cfg.noise.migrate) {
            return;
        }
        let mut k = self.hw.rng.below(total);
        let pfn = self.kernel.procs.iter().find_map(|p| {
            if k < p.present.len() {
                p.present.values().nth(k).copied()
            } else {
                k -= p.present.len();
                None
            }
        });
        if let Some(pfn) = pfn {
            self.migrate_page(pfn);
        }
    }
}
