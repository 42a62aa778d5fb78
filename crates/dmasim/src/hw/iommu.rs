//! An SMMU-style IOMMU: a stream table that sends each device (stream ID) to a
//! translation context, stage-1 page tables in the ARM LPAE 4 KiB-granule format
//! **read from simulated DRAM** by a table walker, an IOTLB, and fault records.
//!
//! Descriptor format (`drivers/iommu/io-pgtable-arm.c`, Arm ARM VMSAv8-64 stage 1):
//! bits [1:0] 0b11 = table (levels 0–2) or page (level 3), 0b01 = block (levels 1–2);
//! AttrIndx [4:2]; AP[1] (bit 6, unprivileged) and AP[2] (bit 7, read-only); SH [9:8];
//! AF (bit 10); nG (bit 11); output address [47:12]; XN (bits 53–54). Level shifts
//! are 39, 30 (1 GiB blocks), 21 (2 MiB blocks) and 12 (4 KiB pages), with a 48-bit
//! input address space (four levels from level 0).
//!
//! The walker reads each descriptor through the interconnect: a coherent walker
//! (`coherent_walk`, SMMU_IDR0.COHACC with a snooping port) sees dirty CPU cache
//! lines; a non-coherent one reads DRAM only, so the kernel must clean every table
//! line it writes (`__arm_lpae_sync_pte`), or the walker sees stale descriptors.
//!
//! Simplifications: one stage; no page-walk cache (every IOTLB miss walks from level
//! 0); the IOTLB is tagged by domain (ASID) and set-associative with LRU replacement;
//! costs are throughput costs (a miss adds the walk's descriptor reads to the
//! transfer, as a device with several outstanding requests sees it), calibrated to
//! the pcie-bench IOTLB data (perf-anchors §1.2); the one walker that all devices'
//! misses queue for, and the device requests a miss holds up, are in
//! [`crate::outstanding`]; no ATS, PRI or stall model: a fault
//! terminates the access (SMMU "terminate" mode) and is recorded.

use serde::Serialize;

use super::tag_index::TagIndex;

/// Descriptor bit 0: valid.
pub const DESC_VALID: u64 = 1;
/// Descriptor type bits for a table (levels 0–2) or a page (level 3).
pub const DESC_TABLE: u64 = 0b11;
/// Descriptor type bits for a block (levels 1–2).
pub const DESC_BLOCK: u64 = 0b01;
/// AttrIndx shift (MAIR index in bits [4:2]).
pub const ATTR_IDX_SHIFT: u32 = 2;
/// MAIR index of Normal write-back memory (`ARM_LPAE_MAIR_ATTR_IDX_CACHE`).
pub const ATTR_IDX_CACHE: u64 = 1;
/// AP[1]: unprivileged access allowed (`ARM_LPAE_PTE_AP_UNPRIV`).
pub const AP_UNPRIV: u64 = 1 << 6;
/// AP[2]: read-only (`ARM_LPAE_PTE_AP_RDONLY`).
pub const AP_RDONLY: u64 = 1 << 7;
/// SH = inner shareable.
pub const SH_IS: u64 = 3 << 8;
/// SH = outer shareable.
pub const SH_OS: u64 = 2 << 8;
/// Access flag.
pub const AF: u64 = 1 << 10;
/// Not global (always set for stage 1).
pub const NG: u64 = 1 << 11;
/// XN: PXN and UXN (`ARM_LPAE_PTE_XN`).
pub const XN: u64 = 3 << 53;
/// The output-address field, bits [47:12].
pub const OA_MASK: u64 = ((1u64 << 48) - 1) & !0xfff;
/// Input address size: 48 bits, four levels from level 0.
pub const IAS: u32 = 48;

/// The shift of the address bits each level resolves.
pub fn level_shift(level: u32) -> u32 {
    12 + 9 * (3 - level)
}

/// Why a translation failed (SMMUv3 event types, simplified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `F_TRANSLATION`: no valid descriptor for the address.
    Translation,
    /// `F_PERMISSION`: a write to a read-only page, or an access the page forbids.
    Permission,
    /// The stream is attached to a blocking domain (or has none): every access aborts.
    Blocked,
    /// The address is beyond the input address size (`F_ADDR_SIZE`).
    AddressSize,
}

/// One recorded fault (an SMMU event-queue entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultRecord {
    /// Stream (device index).
    pub stream: usize,
    /// The input (bus) address.
    pub iova: u64,
    /// Write access.
    pub write: bool,
    /// Fault type.
    pub kind: FaultKind,
}

/// What a stream table entry does with a device's accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ste {
    /// Bypass: the bus address is the physical address (identity / passthrough).
    Bypass,
    /// Abort every access (blocking domain).
    Abort,
    /// Translate with the tables of this context (domain).
    Translate(usize),
}

/// IOMMU costs in ps, throughput terms (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IommuCost {
    /// One descriptor read by the walker. pcie-bench (perf-anchors §1.2): 64 B random
    /// reads at 18 ns each drop to 0.35× with every access missing, i.e. about 33 ns
    /// of added throughput cost per miss, over four levels.
    pub walk_level_ps: u64,
    /// An IOTLB hit (overlapped with the transfer on real hardware).
    pub hit_ps: u64,
    /// One TLBI command per invalidated granule (SMMUv3 without range invalidation):
    /// Morello unmap grows about 80 ns per 4 KiB page (perf-anchors §1.3).
    pub inv_page_ps: u64,
    /// `CMD_SYNC` after a batch of invalidations (4 KiB strict unmap ≈ 0.6 µs in all).
    pub sync_ps: u64,
}

impl Default for IommuCost {
    fn default() -> Self {
        IommuCost {
            walk_level_ps: 8_250,
            hit_ps: 0,
            inv_page_ps: 80_000,
            sync_ps: 450_000,
        }
    }
}

/// IOMMU counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IommuStats {
    /// IOTLB hits.
    pub iotlb_hits: u64,
    /// IOTLB misses.
    pub iotlb_misses: u64,
    /// Table walks (descriptor reads / levels).
    pub walks: u64,
    /// Faults.
    pub faults: u64,
    /// IOTLB entries invalidated by address.
    pub invalidated: u64,
    /// Invalidate-all commands.
    pub invalidate_all: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct TlbEntry {
    domain: usize,
    shift: u32,
    /// Output address of the page or block.
    pa: u64,
    writable: bool,
}

/// The lookup key of an entry: domain, page size and page number in one word, so a
/// set is searched with plain integer compares. `INVALID` marks a free way.
#[inline(always)]
fn key(domain: usize, iova: u64, shift: u32) -> u64 {
    let size_code = match shift {
        12 => 0,
        21 => 1,
        _ => 2,
    };
    ((iova >> shift) << 18) | ((domain as u64 & 0xffff) << 2) | size_code
}

/// A free way's key: the index's free-slot key (no valid key is all ones: page
/// numbers have at most 36 bits).
const INVALID: u64 = super::tag_index::FREE;

/// No way (the end of a recency list).
const NIL: u32 = u32::MAX;

/// The page-size code (0: 4 KiB, 1: 2 MiB, 2: 1 GiB) of a valid key.
#[inline(always)]
fn size_code(k: u64) -> usize {
    (k & 3) as usize
}

/// The IOTLB: `sets` × `ways` entries, tagged by domain, LRU inside a set. An entry
/// of page or block size `1 << shift` lives in set `(iova >> shift) % sets`. A
/// one-entry micro-TLB in front remembers the last hit, as SMMU stream caches do.
#[derive(Debug, Clone)]
pub struct Iotlb {
    sets: usize,
    ways: usize,
    keys: Vec<u64>,
    entries: Vec<TlbEntry>,
    /// Each set's ways in order of last use (fill or hit), a doubly linked list
    /// by way index: `newer[i]` / `older[i]` are the neighbours of way `i`, `mru` /
    /// `lru` the ends of each set's list. A hit or a fill moves its way to the
    /// front; the victim of a full set is the back: the way whose last use is the
    /// oldest, found without a scan of the set's ways.
    newer: Vec<u32>,
    older: Vec<u32>,
    mru: Vec<u32>,
    lru: Vec<u32>,
    last: Option<(u64, usize)>,
    /// Key → way of every valid entry: a lookup is a hash probe per page size
    /// instead of a scan of the set (the hardware compares all ways at once).
    index: TagIndex,
    /// Valid entries per page size (4 KiB, 2 MiB, 1 GiB): a lookup or a range
    /// invalidation skips the sizes nothing is cached at.
    by_size: [u32; 3],
}

impl Iotlb {
    /// An empty IOTLB of `entries` entries in sets of `ways` (fully associative when
    /// `ways == entries`).
    pub fn new(entries: usize, ways: usize) -> Iotlb {
        let ways = ways.clamp(1, entries.max(1));
        let sets = (entries.max(1) / ways).max(1);
        Iotlb {
            sets,
            ways,
            keys: vec![INVALID; sets * ways],
            entries: vec![TlbEntry::default(); sets * ways],
            newer: (0..sets * ways)
                .map(|i| if i % ways == 0 { NIL } else { i as u32 - 1 })
                .collect(),
            older: (0..sets * ways)
                .map(|i| {
                    if i % ways == ways - 1 {
                        NIL
                    } else {
                        i as u32 + 1
                    }
                })
                .collect(),
            mru: (0..sets).map(|s| (s * ways) as u32).collect(),
            lru: (0..sets).map(|s| (s * ways + ways - 1) as u32).collect(),
            last: None,
            index: TagIndex::new(sets * ways),
            by_size: [0; 3],
        }
    }

    fn set_of(&self, iova: u64, shift: u32) -> std::ops::Range<usize> {
        let s = self.set_index((iova >> shift) as usize);
        s * self.ways..(s + 1) * self.ways
    }

    /// The set of page number `n`. A fully associative IOTLB (the presets' kind)
    /// has one set, and divides nothing on its lookups and fills.
    #[inline(always)]
    fn set_index(&self, n: usize) -> usize {
        if self.sets == 1 {
            0
        } else {
            n % self.sets
        }
    }

    /// The set way `i` belongs to.
    #[inline(always)]
    fn set_of_way(&self, i: usize) -> usize {
        if self.sets == 1 {
            0
        } else {
            i / self.ways
        }
    }

    /// Moves way `i` to the front of its set's recency list.
    #[inline]
    fn touch(&mut self, i: usize) {
        let set = self.set_of_way(i);
        let front = self.mru[set] as usize;
        if front == i {
            return;
        }
        // Unlink (`i` is not the front, so it has a newer neighbour).
        let (n, o) = (self.newer[i], self.older[i]);
        self.older[n as usize] = o;
        if o == NIL {
            self.lru[set] = n;
        } else {
            self.newer[o as usize] = n;
        }
        // Push at the front.
        self.older[i] = front as u32;
        self.newer[front] = i as u32;
        self.newer[i] = NIL;
        self.mru[set] = i as u32;
    }

    #[inline]
    fn hit(&mut self, i: usize) -> (u64, u32, bool) {
        self.touch(i);
        let e = &self.entries[i];
        (e.pa, e.shift, e.writable)
    }

    #[inline]
    fn lookup(&mut self, domain: usize, iova: u64) -> Option<(u64, u32, bool)> {
        if let Some((k, i)) = self.last {
            let shift = self.entries[i].shift;
            if self.keys[i] == k && key(domain, iova, shift) == k {
                return Some(self.hit(i));
            }
        }
        for (code, shift) in [12, 21, 30].into_iter().enumerate() {
            if self.by_size[code] == 0 {
                continue;
            }
            let k = key(domain, iova, shift);
            if let Some(i) = self.index.get(k) {
                self.last = Some((k, i));
                return Some(self.hit(i));
            }
        }
        None
    }

    fn insert(&mut self, domain: usize, iova: u64, shift: u32, pa: u64, writable: bool) {
        let r = self.set_of(iova, shift);
        let base = r.start;
        // A full IOTLB (every set full: the steady state of a stream through it)
        // has no free way to look for.
        let full = self.by_size.iter().sum::<u32>() as usize == self.keys.len();
        let free = if full {
            None
        } else {
            self.keys[r].iter().position(|&x| x == INVALID)
        };
        let w = match free {
            Some(w) => w,
            None => self.lru[self.set_of_way(base)] as usize - base,
        };
        let old = self.keys[base + w];
        if old != INVALID {
            self.index.remove(old);
            self.by_size[size_code(old)] -= 1;
        }
        let k = key(domain, iova, shift);
        if let Some(was) = self.index.insert(k, base + w) {
            // Already cached (a walk raced a hit): keep one copy.
            self.keys[was] = INVALID;
            self.by_size[size_code(k)] -= 1;
        }
        self.by_size[size_code(k)] += 1;
        self.keys[base + w] = k;
        self.entries[base + w] = TlbEntry {
            domain,
            shift,
            pa,
            writable,
        };
        self.touch(base + w);
    }

    /// Invalidates the entries of `domain` that translate any address of
    /// `[iova, iova+size)`. Returns how many were dropped.
    pub fn invalidate_range(&mut self, domain: usize, iova: u64, size: u64) -> u64 {
        let end = iova.saturating_add(size);
        if size == 0 {
            return 0;
        }
        // A small range (the common strict unmap) probes the index for each page and
        // block it covers instead of scanning every way.
        let spans = [12u32, 21, 30].map(|s| ((end - 1) >> s) - (iova >> s) + 1);
        if spans.iter().sum::<u64>() <= self.keys.len() as u64 {
            let mut n = 0;
            for (code, (shift, count)) in [12u32, 21, 30].into_iter().zip(spans).enumerate() {
                if self.by_size[code] == 0 {
                    continue;
                }
                for page in (iova >> shift)..(iova >> shift) + count {
                    let k = key(domain, page << shift, shift);
                    if let Some(i) = self.index.get(k) {
                        if self.entries[i].domain == domain {
                            self.index.remove(k);
                            self.keys[i] = INVALID;
                            self.by_size[code] -= 1;
                            n += 1;
                        }
                    }
                }
            }
            return n;
        }
        self.invalidate_range_scan(domain, iova, end)
    }

    /// The range invalidation by a scan of every way.
    fn invalidate_range_scan(&mut self, domain: usize, iova: u64, end: u64) -> u64 {
        let mut n = 0;
        for (k, e) in self.keys.iter_mut().zip(&self.entries) {
            if *k != INVALID && e.domain == domain {
                let start = (*k >> 18) << e.shift;
                let stop = start + (1u64 << e.shift);
                if start < end && iova < stop {
                    self.index.remove(*k);
                    self.by_size[size_code(*k)] -= 1;
                    *k = INVALID;
                    n += 1;
                }
            }
        }
        n
    }

    /// Invalidates every entry of `domain` (`CMD_TLBI_NH_ASID`).
    pub fn invalidate_domain(&mut self, domain: usize) {
        for (k, e) in self.keys.iter_mut().zip(&self.entries) {
            if e.domain == domain && *k != INVALID {
                self.index.remove(*k);
                self.by_size[size_code(*k)] -= 1;
                *k = INVALID;
            }
        }
    }

    /// Invalidates everything.
    pub fn invalidate_all(&mut self) {
        self.keys.fill(INVALID);
        self.index.clear();
        self.by_size = [0; 3];
    }

    /// Valid entries now.
    pub fn occupancy(&self) -> usize {
        self.keys.iter().filter(|&&k| k != INVALID).count()
    }
}

/// The IOMMU.
#[derive(Debug, Clone)]
pub struct Iommu {
    /// The walker snoops the CPU caches.
    pub coherent_walk: bool,
    /// Stream table, by device index (a missing entry bypasses: a device not behind
    /// this IOMMU).
    pub stes: Vec<Ste>,
    /// Per translation context: physical address of its level-0 table.
    pub ttbr: Vec<u64>,
    /// The IOTLB.
    pub iotlb: Iotlb,
    /// Costs.
    pub cost: IommuCost,
    /// Counters.
    pub stats: IommuStats,
    /// The last faults (bounded), oldest first.
    pub faults: Vec<FaultRecord>,
}

/// Most fault records kept (the event queue is a ring).
pub const MAX_FAULT_RECORDS: usize = 256;

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address.
    pub pa: u64,
    /// Bytes from `pa` to the end of the page or block.
    pub span: u64,
    /// Throughput cost in ps.
    pub cost_ps: u64,
    /// The IOTLB missed and the walker walked the tables (`cost_ps` is the walk).
    pub walked: bool,
}

impl Iommu {
    /// An IOMMU with an IOTLB of `entries` in sets of `ways`.
    pub fn new(coherent_walk: bool, entries: usize, ways: usize, cost: IommuCost) -> Iommu {
        Iommu {
            coherent_walk,
            stes: Vec::new(),
            ttbr: Vec::new(),
            iotlb: Iotlb::new(entries, ways),
            cost,
            stats: IommuStats::default(),
            faults: Vec::new(),
        }
    }

    /// The stream table entry of `stream` (bypass when none was set).
    #[inline]
    pub fn ste(&self, stream: usize) -> Ste {
        self.stes.get(stream).copied().unwrap_or(Ste::Bypass)
    }

    /// Sets the stream table entry of `stream`.
    pub fn set_ste(&mut self, stream: usize, ste: Ste) {
        if self.stes.len() <= stream {
            self.stes.resize(stream + 1, Ste::Bypass);
        }
        self.stes[stream] = ste;
    }

    fn fault(&mut self, stream: usize, iova: u64, write: bool, kind: FaultKind) -> FaultKind {
        self.stats.faults += 1;
        if self.faults.len() >= MAX_FAULT_RECORDS {
            self.faults.remove(0);
        }
        self.faults.push(FaultRecord {
            stream,
            iova,
            write,
            kind,
        });
        kind
    }

    /// Translates one access of `stream` at `iova`. `read_desc` reads the 8-byte
    /// descriptor at a physical address the way the walker's port sees memory.
    ///
    /// # Errors
    /// The fault, after recording it.
    #[inline]
    pub fn translate(
        &mut self,
        stream: usize,
        iova: u64,
        write: bool,
        mut read_desc: impl FnMut(u64) -> u64,
    ) -> Result<Translation, FaultKind> {
        let domain = match self.ste(stream) {
            Ste::Bypass => {
                return Ok(Translation {
                    pa: iova,
                    span: u64::MAX,
                    cost_ps: 0,
                    walked: false,
                })
            }
            Ste::Abort => return Err(self.fault(stream, iova, write, FaultKind::Blocked)),
            Ste::Translate(d) => d,
        };
        if iova >> IAS != 0 {
            return Err(self.fault(stream, iova, write, FaultKind::AddressSize));
        }
        if let Some((pa, shift, writable)) = self.iotlb.lookup(domain, iova) {
            self.stats.iotlb_hits += 1;
            if write && !writable {
                return Err(self.fault(stream, iova, write, FaultKind::Permission));
            }
            let off = iova & ((1u64 << shift) - 1);
            return Ok(Translation {
                pa: pa + off,
                span: (1u64 << shift) - off,
                cost_ps: self.cost.hit_ps,
                walked: false,
            });
        }
        self.stats.iotlb_misses += 1;
        let mut table = self.ttbr.get(domain).copied().unwrap_or(0);
        let mut cost = 0;
        for level in 0..4 {
            let shift = level_shift(level);
            let idx = (iova >> shift) & 511;
            let desc = read_desc(table + idx * 8);
            self.stats.walks += 1;
            cost += self.cost.walk_level_ps;
            if desc & DESC_VALID == 0 || (level == 3 && desc & 0b11 != DESC_TABLE) {
                return Err(self.fault(stream, iova, write, FaultKind::Translation));
            }
            let leaf = level == 3 || desc & 0b11 == DESC_BLOCK;
            if !leaf {
                table = desc & OA_MASK;
                continue;
            }
            if level == 0 || desc & AF == 0 {
                return Err(self.fault(stream, iova, write, FaultKind::Translation));
            }
            let writable = desc & AP_RDONLY == 0;
            let pa_base = desc & OA_MASK & !((1u64 << shift) - 1);
            self.iotlb.insert(domain, iova, shift, pa_base, writable);
            if write && !writable {
                return Err(self.fault(stream, iova, write, FaultKind::Permission));
            }
            let off = iova & ((1u64 << shift) - 1);
            return Ok(Translation {
                pa: pa_base + off,
                span: (1u64 << shift) - off,
                cost_ps: cost,
                walked: true,
            });
        }
        unreachable!("level 3 always ends the walk")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A tiny table builder over a HashMap "DRAM".
    struct Mem(HashMap<u64, u64>, u64);
    impl Mem {
        fn table(&mut self) -> u64 {
            self.1 += 4096;
            self.1
        }
        fn map(&mut self, root: u64, iova: u64, pa: u64, level_leaf: u32, ro: bool) {
            let mut t = root;
            for level in 0..level_leaf {
                let slot = t + ((iova >> level_shift(level)) & 511) * 8;
                let d = *self.0.get(&slot).unwrap_or(&0);
                t = if d & DESC_VALID != 0 {
                    d & OA_MASK
                } else {
                    let n = self.table();
                    self.0.insert(slot, n | DESC_TABLE);
                    n
                };
            }
            let ty = if level_leaf == 3 {
                DESC_TABLE
            } else {
                DESC_BLOCK
            };
            let ap = if ro { AP_RDONLY } else { 0 };
            let slot = t + ((iova >> level_shift(level_leaf)) & 511) * 8;
            self.0.insert(slot, pa | ty | AF | NG | ap | AP_UNPRIV);
        }
    }

    fn iommu_with(mem: &mut Mem) -> (Iommu, u64) {
        let root = mem.table();
        let mut m = Iommu::new(true, 64, 64, IommuCost::default());
        m.ttbr.push(root);
        m.set_ste(0, Ste::Translate(0));
        (m, root)
    }

    #[test]
    fn walks_four_levels_then_hits_the_iotlb() {
        let mut mem = Mem(HashMap::new(), 0x10_0000);
        let (mut m, root) = iommu_with(&mut mem);
        mem.map(root, 0xfff0_1000, 0x8765_4000, 3, false);
        let t = m
            .translate(0, 0xfff0_1234, false, |a| *mem.0.get(&a).unwrap_or(&0))
            .unwrap();
        assert_eq!(t.pa, 0x8765_4234);
        assert_eq!(t.span, 0x1000 - 0x234);
        assert_eq!(t.cost_ps, 4 * IommuCost::default().walk_level_ps);
        assert_eq!(m.stats.walks, 4);
        let t = m
            .translate(0, 0xfff0_1010, true, |_| panic!("no walk on a hit"))
            .unwrap();
        assert_eq!(t.pa, 0x8765_4010);
        assert_eq!((m.stats.iotlb_hits, m.stats.iotlb_misses), (1, 1));
    }

    #[test]
    fn a_2_mib_block_is_one_entry_and_three_reads() {
        let mut mem = Mem(HashMap::new(), 0x10_0000);
        let (mut m, root) = iommu_with(&mut mem);
        mem.map(root, 0x4000_0000, 0x1_2000_0000, 2, false);
        let t = m
            .translate(0, 0x4012_3456, false, |a| *mem.0.get(&a).unwrap_or(&0))
            .unwrap();
        assert_eq!(t.pa, 0x1_2012_3456);
        assert_eq!(m.stats.walks, 3);
        // Anywhere in the block hits now.
        m.translate(0, 0x401f_ff00, false, |_| panic!("hit"))
            .unwrap();
    }

    #[test]
    fn faults_for_holes_read_only_pages_and_blocked_streams() {
        let mut mem = Mem(HashMap::new(), 0x10_0000);
        let (mut m, root) = iommu_with(&mut mem);
        mem.map(root, 0x1000, 0x9000, 3, true);
        let rd = |a: u64| *mem.0.get(&a).unwrap_or(&0);
        assert_eq!(
            m.translate(0, 0x5000, false, rd),
            Err(FaultKind::Translation)
        );
        assert!(m.translate(0, 0x1000, false, rd).is_ok());
        assert_eq!(m.translate(0, 0x1008, true, rd), Err(FaultKind::Permission));
        m.set_ste(1, Ste::Abort);
        assert_eq!(m.translate(1, 0x1000, false, rd), Err(FaultKind::Blocked));
        assert_eq!(
            m.translate(2, 0x1234, true, rd).unwrap().pa,
            0x1234,
            "bypass"
        );
        assert_eq!(m.stats.faults, 3);
        assert_eq!(m.faults[1].kind, FaultKind::Permission);
        assert!(m.faults[1].write);
    }

    #[test]
    fn invalidation_by_range_drops_only_overlapping_entries() {
        let mut t = Iotlb::new(64, 64);
        for i in 0..8u64 {
            t.insert(0, i << 12, 12, 0x10_0000 + (i << 12), true);
        }
        t.insert(1, 0x3000, 12, 0x9000, true);
        assert_eq!(t.invalidate_range(0, 0x2000, 0x3000), 3);
        assert_eq!(t.occupancy(), 6);
        t.invalidate_domain(0);
        assert_eq!(t.occupancy(), 1);
        assert_eq!(t.by_size, [1, 0, 0]);
        t.invalidate_all();
        assert_eq!(t.occupancy(), 0);
    }

    #[test]
    fn probing_invalidation_drops_what_the_scan_drops() {
        // Pages, 2 MiB blocks and a 1 GiB block of two domains; every small range
        // must drop exactly the entries the full scan drops.
        let mut t = Iotlb::new(256, 8);
        for i in 0..40u64 {
            t.insert((i % 2) as usize, i * 0x3000, 12, i << 12, true);
        }
        for i in 0..6u64 {
            t.insert(0, i << 21, 21, i << 21, true);
        }
        t.insert(1, 1 << 30, 30, 0, false);
        let mut dropped = [0u64; 2];
        for (iova, size) in [
            (0x5000, 0x1000),
            (0x1f_f000, 0x2000),
            (0x3000, 0x9000),
            (0x4000_0000, 0x1000),
            (0x40_0000, 1),
        ] {
            for (d, dropped) in dropped.iter_mut().enumerate() {
                let (mut a, mut b) = (t.clone(), t.clone());
                let na = a.invalidate_range(d, iova, size);
                let nb = b.invalidate_range_scan(d, iova, iova + size);
                assert_eq!(na, nb, "domain {d} range {iova:#x}+{size:#x}");
                assert_eq!(a.keys, b.keys);
                for t in [&a, &b] {
                    let counted: u32 = t.by_size.iter().sum();
                    assert_eq!(t.occupancy(), counted as usize);
                }
                *dropped += na;
            }
        }
        assert!(dropped[0] >= 5 && dropped[1] >= 2, "{dropped:?}");
    }

    #[test]
    fn lru_keeps_the_working_set_of_a_full_iotlb() {
        let mut t = Iotlb::new(4, 4);
        for i in 0..4u64 {
            t.insert(0, i << 12, 12, i << 12, true);
        }
        // Touch 0..3 except 1, then insert a fifth page: page 1 goes.
        for i in [0u64, 2, 3] {
            assert!(t.lookup(0, i << 12).is_some());
        }
        t.insert(0, 9 << 12, 12, 0, true);
        assert!(t.lookup(0, 1 << 12).is_none());
        assert!(t.lookup(0, 0).is_some());
    }

    #[test]
    fn the_recency_lists_evict_what_the_oldest_last_use_would() {
        // The victim of a full set is the way with the oldest last use, as a scan
        // of per-way use times finds it (the IOTLB's former code, kept here as the
        // reference): random fills, lookups and range invalidations, in a fully
        // associative and a set-associative IOTLB.
        for (entries, ways) in [(64usize, 64usize), (32, 4), (8, 1)] {
            let mut t = Iotlb::new(entries, ways);
            let sets = entries / ways;
            // Reference: per way, key and last-use tick.
            let mut rkeys = vec![INVALID; entries];
            let mut rused = vec![0u64; entries];
            let mut tick = 0u64;
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ entries as u64;
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let page = (x >> 8) % 200;
                let iova = page << 12;
                let k = key(0, iova, 12);
                let set = (page as usize % sets) * ways;
                match x % 10 {
                    0 => {
                        let n = t.invalidate_range(0, iova, 3 << 12);
                        let mut rn = 0;
                        for p in page..page + 3 {
                            if let Some(w) = rkeys.iter().position(|&r| r == key(0, p << 12, 12)) {
                                rkeys[w] = INVALID;
                                rn += 1;
                            }
                        }
                        assert_eq!(n, rn);
                    }
                    1..=5 => {
                        let hit = t.lookup(0, iova).is_some();
                        let w = rkeys.iter().position(|&r| r == k);
                        assert_eq!(hit, w.is_some(), "page {page}");
                        if let Some(w) = w {
                            tick += 1;
                            rused[w] = tick;
                        }
                    }
                    _ => {
                        if rkeys.contains(&k) {
                            continue;
                        }
                        t.insert(0, iova, 12, iova, true);
                        tick += 1;
                        let r = set..set + ways;
                        let w = match rkeys[r.clone()].iter().position(|&r| r == INVALID) {
                            Some(w) => set + w,
                            None => {
                                set + rused[r]
                                    .iter()
                                    .enumerate()
                                    .min_by_key(|(_, &u)| u)
                                    .unwrap()
                                    .0
                            }
                        };
                        rkeys[w] = k;
                        rused[w] = tick;
                    }
                }
                assert_eq!(t.keys, rkeys);
            }
        }
    }
}
