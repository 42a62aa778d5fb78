//! CPU data caches that hold real bytes: a private L1D per CPU and a shared L2.
//!
//! Physically indexed and tagged, set-associative, write-back and write-allocate.
//! Victims are chosen from the run's seeded stream (invalid ways first), as the
//! pseudo-random replacement of Cortex-A cores does.
//!
//! Line data lives in one pool; a cache entry holds the index of its slot, so moving a
//! line between levels moves an index, not 64 bytes. The hierarchy is *exclusive*: a
//! line sits either in one or more L1s or in L2, never both (a victim of L1 moves into
//! L2; an L2 hit moves the line up). This is a simplification: Cortex-A53's L2 is
//! inclusive of L1D, Arm's DSU L3 is mostly exclusive. What matters for DMA (which
//! copy is newest, which is dirty, what a device reading DRAM sees) is the same.
//!
//! Between L1s, MESI: a read that finds the line Modified in another L1 makes the owner
//! write it back and both keep it Shared (MESI has no Owned state, so Shared lines are
//! always clean); a write invalidates every other copy.
//!
//! Write streaming ("read allocate mode", off unless the platform turns it on): after
//! a run of consecutive stores that each write a whole line that L1 misses, further
//! such stores do not allocate in L1 but go to L2 without a linefill, and after a
//! longer run they go to DRAM without allocating anywhere, as Cortex-A cores do for
//! `memset`/`memcpy` (Arm FAQ ka16133 for Cortex-A7: 3 lines for L1, 127 for L2;
//! Cortex-A35 TRM §A5.6; Cortex-A53 TRM §6.2.5, thresholds in `CPUACTLR_EL1`). A
//! store that writes part of a line ends the run, and so does a load of the line the
//! run wrote last. Simplified: one run per CPU; stores that hit L1 neither count nor
//! end it.
//!
//! Cache maintenance works on one line by physical address, as `DC CVAC` (clean),
//! `DC IVAC` (invalidate) and `DC CIVAC` (clean and invalidate) do to the point of
//! coherency; they act on every CPU's L1 and on L2 (inner-shareable broadcast).

use super::dram::Dram;
use super::rng::SimRng;
use crate::config::CacheGeometry;

const INVALID_TAG: u64 = u64::MAX;

/// Buckets of the per-level page filter (a power of two).
const PAGE_FILTER: usize = 1 << 14;

/// MESI state of a line (L2 uses Exclusive for clean and Modified for dirty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LineState {
    /// Not present.
    Invalid = 0,
    /// Clean, possibly in other L1s too.
    Shared = 1,
    /// Clean, the only cached copy.
    Exclusive = 2,
    /// Dirty: newer than DRAM, the only cached copy.
    Modified = 3,
}

/// Where an access found its line (decides its cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// In this CPU's L1.
    L1,
    /// In the shared L2, or in another CPU's L1 through a snoop.
    L2,
    /// Fetched from DRAM.
    Dram,
    /// A whole-line store that write streaming sent to DRAM without allocating.
    Streamed,
}

/// Counters of cache activity.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Accesses that hit in L1.
    pub l1_hits: u64,
    /// Accesses that hit in L2 or another CPU's L1.
    pub l2_hits: u64,
    /// Accesses that went to DRAM.
    pub misses: u64,
    /// Dirty lines written back to DRAM (evictions and cleans).
    pub writebacks: u64,
    /// Lines cleaned by maintenance (`DC CVAC`, and the clean half of `DC CIVAC`).
    pub clean_lines: u64,
    /// Lines invalidated by maintenance (`DC IVAC`, `DC CIVAC`).
    pub invalidate_lines: u64,
    /// Dirty lines whose data an invalidate threw away.
    pub dirty_discards: u64,
    /// Whole-line stores that write streaming kept out of L1 (written into L2).
    pub streamed_l2: u64,
    /// Whole-line stores that write streaming sent to DRAM without allocating.
    pub streamed_dram: u64,
    /// Cache entries (ways) that background eviction sweeps examined: only those of
    /// sets holding lines, so at most the ways of one set per line dropped.
    pub sweep_entries: u64,
}

/// Write-streaming thresholds: a whole-line store miss that extends a run of more
/// than `l1` such misses skips L1; of more than `l2`, skips L2 too. 0 turns a level's
/// streaming off.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StreamThresholds {
    /// Run length after which stores no longer allocate in L1.
    pub l1: u32,
    /// Run length after which stores no longer allocate in L2 either.
    pub l2: u32,
}

struct Level {
    ways: usize,
    set_mask: u64,
    tags: Vec<u64>,
    state: Vec<LineState>,
    slot: Vec<u32>,
    /// Valid lines: a level with none is skipped by snoops (a cheap snoop filter).
    count: usize,
    /// Valid ways per set: a full set needs no scan for a free way.
    set_valid: Vec<u8>,
    /// A counting filter of the 4 KiB pages this level holds lines of: a device
    /// access to a page whose bucket is 0 in every level needs no per-line snoop
    /// (collisions only cost the slow path).
    pages: Vec<u32>,
    /// log2(lines per 4 KiB page).
    page_lines_shift: u32,
}

/// The page filter bucket of a line.
#[inline(always)]
fn page_bucket(line: u64, page_lines_shift: u32) -> usize {
    let p = line >> page_lines_shift;
    ((p ^ (p >> 14) ^ (p >> 28)) as usize) & (PAGE_FILTER - 1)
}

impl Level {
    fn new(g: &CacheGeometry, line_shift: u32) -> Level {
        let sets = (g.size >> line_shift) as usize / g.ways as usize;
        let n = sets * g.ways as usize;
        Level {
            ways: g.ways as usize,
            set_mask: sets as u64 - 1,
            tags: vec![INVALID_TAG; n],
            state: vec![LineState::Invalid; n],
            slot: vec![0; n],
            count: 0,
            set_valid: vec![0; sets],
            pages: vec![0; PAGE_FILTER],
            page_lines_shift: crate::config::PAGE_SHIFT.saturating_sub(line_shift),
        }
    }

    /// May this level hold a line of the 4 KiB page holding `line`?
    #[inline(always)]
    fn may_hold_page(&self, line: u64) -> bool {
        self.count != 0 && self.pages[page_bucket(line, self.page_lines_shift)] != 0
    }

    #[inline(always)]
    fn set_base(&self, line: u64) -> usize {
        (line & self.set_mask) as usize * self.ways
    }

    #[inline(always)]
    fn find(&self, line: u64) -> Option<usize> {
        if self.count == 0 {
            return None;
        }
        let base = self.set_base(line);
        if self.ways <= 8 {
            // Small sets (L1): stop at the hit, the common case there.
            return self.tags[base..base + self.ways]
                .iter()
                .position(|&t| t == line)
                .map(|w| base + w);
        }
        // Large sets (L2): branch-free scan of the whole set (vector compares), so a
        // miss, the common case on streams, costs no mispredicted early exit.
        let mut hit = usize::MAX;
        for (w, &t) in self.tags[base..base + self.ways].iter().enumerate() {
            if t == line {
                hit = w;
            }
        }
        (hit != usize::MAX).then(|| base + hit)
    }

    /// A free way in the set of `line`, if the set is not full.
    #[inline(always)]
    fn free_way(&self, line: u64) -> Option<usize> {
        let set = (line & self.set_mask) as usize;
        if self.set_valid[set] as usize == self.ways {
            return None;
        }
        let base = set * self.ways;
        self.tags[base..base + self.ways]
            .iter()
            .position(|&t| t == INVALID_TAG)
            .map(|w| base + w)
    }

    fn sets(&self) -> usize {
        self.set_mask as usize + 1
    }

    #[inline(always)]
    fn clear(&mut self, i: usize) {
        if self.tags[i] != INVALID_TAG {
            self.count -= 1;
            self.set_valid[(self.tags[i] & self.set_mask) as usize] -= 1;
            self.pages[page_bucket(self.tags[i], self.page_lines_shift)] -= 1;
        }
        self.tags[i] = INVALID_TAG;
        self.state[i] = LineState::Invalid;
    }

    #[inline(always)]
    fn fill(&mut self, i: usize, line: u64, slot: u32, state: LineState) {
        if self.tags[i] == INVALID_TAG {
            self.count += 1;
            self.set_valid[(line & self.set_mask) as usize] += 1;
        } else {
            self.pages[page_bucket(self.tags[i], self.page_lines_shift)] -= 1;
        }
        self.pages[page_bucket(line, self.page_lines_shift)] += 1;
        self.tags[i] = line;
        self.slot[i] = slot;
        self.state[i] = state;
    }
}

/// Writes back one line (`slot` data) to DRAM at line number `line`; true when the
/// frame is watched by the sanitizer.
#[inline(always)]
fn write_back(
    pool: &[u8],
    line_bytes: usize,
    line_shift: u32,
    slot: u32,
    line: u64,
    dram: &mut Dram,
) -> bool {
    let s = slot as usize * line_bytes;
    dram.write_in_frame_watched(line << line_shift, &pool[s..s + line_bytes])
}

/// The whole cache hierarchy.
pub struct Caches {
    line_shift: u32,
    line_bytes: usize,
    l1: Vec<Level>,
    l2: Level,
    pool: Vec<u8>,
    free: Vec<u32>,
    /// Activity counters.
    pub stats: CacheStats,
    /// Lines written back to watched frames since the sanitizer last looked.
    pub watched_writebacks: Vec<u64>,
    /// Bit `p` set when CPU `p`'s L1 holds any line: snoops skip the empty ones.
    l1_busy: u64,
    /// Write-streaming thresholds (both 0: off).
    stream: StreamThresholds,
    /// Per CPU: the current run of whole-line store misses, and its last line.
    run: Vec<(u32, u64)>,
    /// Lines write streaming stored into watched frames since the sanitizer looked.
    pub watched_streamed: Vec<u64>,
    /// Whether [`Caches::write_lines_of_uncached_page`] may take its short path
    /// (tests turn it off to compare it with the line-by-line one).
    page_store_fast_path: bool,
}

impl Caches {
    /// Builds empty caches for `cpus` CPUs. Geometries must be valid
    /// ([`CacheGeometry::sets`]) and share one line size.
    pub fn new(cpus: usize, l1: &CacheGeometry, l2: &CacheGeometry) -> Caches {
        let line_shift = l1.line.trailing_zeros();
        let line_bytes = l1.line as usize;
        let l1s: Vec<Level> = (0..cpus).map(|_| Level::new(l1, line_shift)).collect();
        let l2 = Level::new(l2, line_shift);
        let slots = l1s.iter().map(|l| l.tags.len()).sum::<usize>() + l2.tags.len() + 1;
        Caches {
            line_shift,
            line_bytes,
            l1: l1s,
            l2,
            pool: vec![0; slots * line_bytes],
            free: (0..slots as u32).rev().collect(),
            stats: CacheStats::default(),
            watched_writebacks: Vec::new(),
            l1_busy: 0,
            stream: StreamThresholds::default(),
            run: vec![(0, INVALID_TAG); cpus],
            watched_streamed: Vec::new(),
            page_store_fast_path: true,
        }
    }

    /// Turns the whole-line store short path off (`false`) or on: for tests that
    /// check it against the line-by-line path.
    #[cfg(test)]
    pub(crate) fn set_page_store_fast_path(&mut self, on: bool) {
        self.page_store_fast_path = on;
    }

    /// Stores `data`, whole lines at line-aligned `pa` inside one 4 KiB page, when
    /// no cache level may hold any line of that page and write streaming is off;
    /// returns the lines stored (each a DRAM fill, as [`Caches::write`] reports it),
    /// or `None` with nothing done when the store must go line by line.
    ///
    /// The result is exactly that of [`Caches::write`] on each line in turn: with
    /// the page in no level, each line misses in this L1, in every other L1 and in
    /// L2, so the lookups are skipped; the victim of each line is chosen, moved and
    /// written back as there, drawing the same random numbers in the same order.
    /// Only the linefill's read of DRAM is left out: the store replaces every byte
    /// of the line (write-allocate reads it, but nothing can see that read).
    pub fn write_lines_of_uncached_page(
        &mut self,
        cpu: usize,
        pa: u64,
        data: &[u8],
        dram: &mut Dram,
        rng: &mut SimRng,
    ) -> Option<u64> {
        let lb = self.line_bytes;
        if !self.page_store_fast_path
            || self.stream.l1 > 0
            || data.is_empty()
            || pa as usize & (lb - 1) != 0
            || data.len() & (lb - 1) != 0
            || self.page_may_be_cached(pa)
        {
            return None;
        }
        let first = pa >> self.line_shift;
        for (k, bytes) in data.chunks_exact(lb).enumerate() {
            let line = first + k as u64;
            let way = match self.l1[cpu].free_way(line) {
                Some(w) => w,
                None => {
                    let v = self.l1[cpu].set_base(line) + rng.below(self.l1[cpu].ways);
                    self.evict_l1_entry(cpu, v, dram, rng);
                    v
                }
            };
            let slot = self.alloc_slot();
            let s = slot as usize * lb;
            // The linefill's read, as the line-by-line path does: its bytes are
            // overwritten at once, but on the host it brings the frame's line into
            // the host's cache for this line's write-back later, which on a stream
            // larger than the host's caches costs less than a write-back to a cold
            // line (measured: BENCHMARKS.md, issue 21 second part).
            dram.read_in_frame(line << self.line_shift, &mut self.pool[s..s + lb]);
            super::copy_bytes(&mut self.pool[s..s + lb], bytes);
            self.l1[cpu].fill(way, line, slot, LineState::Modified);
        }
        self.l1_busy |= 1 << cpu;
        let n = (data.len() / lb) as u64;
        self.stats.misses += n;
        Some(n)
    }

    /// Turns write streaming on with these thresholds (or off with zeros).
    pub fn set_write_streaming(&mut self, t: StreamThresholds) {
        self.stream = t;
    }

    /// Line size in bytes.
    #[inline]
    pub fn line_bytes(&self) -> usize {
        self.line_bytes
    }

    #[inline(always)]
    fn data(&self, slot: u32) -> &[u8] {
        let s = slot as usize * self.line_bytes;
        &self.pool[s..s + self.line_bytes]
    }

    #[inline(always)]
    fn alloc_slot(&mut self) -> u32 {
        // The pool holds one slot per way of every level plus one, and the caller
        // evicts before it allocates, so the free list is never empty here.
        self.free.pop().unwrap_or(0)
    }

    /// Keeps the `l1_busy` bit of CPU `p` in step with its L1's line count.
    #[inline(always)]
    fn l1_update(&mut self, p: usize) {
        if self.l1[p].count > 0 {
            self.l1_busy |= 1 << p;
        } else {
            self.l1_busy &= !(1 << p);
        }
    }

    #[inline(always)]
    fn wb(&mut self, slot: u32, line: u64, dram: &mut Dram) {
        if write_back(
            &self.pool,
            self.line_bytes,
            self.line_shift,
            slot,
            line,
            dram,
        ) {
            self.watched_writebacks.push(line << self.line_shift);
        }
        self.stats.writebacks += 1;
    }

    /// A way of L2 for `line`: a free one, else a random victim, written back if
    /// dirty and its slot freed.
    #[inline]
    fn l2_way_for(&mut self, line: u64, dram: &mut Dram, rng: &mut SimRng) -> usize {
        if let Some(w) = self.l2.free_way(line) {
            return w;
        }
        let v = self.l2.set_base(line) + rng.below(self.l2.ways);
        let (vline, vslot) = (self.l2.tags[v], self.l2.slot[v]);
        if self.l2.state[v] == LineState::Modified {
            self.wb(vslot, vline, dram);
        }
        self.free.push(vslot);
        v
    }

    /// Moves an L1 victim out: clean Shared copies are dropped, Exclusive and
    /// Modified lines move (by slot) into L2, whose own victim is written back if dirty.
    #[inline]
    fn evict_l1_entry(&mut self, cpu: usize, i: usize, dram: &mut Dram, rng: &mut SimRng) {
        let l1 = &mut self.l1[cpu];
        let line = l1.tags[i];
        let st = l1.state[i];
        let slot = l1.slot[i];
        l1.clear(i);
        self.l1_update(cpu);
        if st == LineState::Shared {
            self.free.push(slot);
            return;
        }
        let way = self.l2_way_for(line, dram, rng);
        let st2 = if st == LineState::Modified {
            LineState::Modified
        } else {
            LineState::Exclusive
        };
        self.l2.fill(way, line, slot, st2);
    }

    /// Makes sure `line` is in `cpu`'s L1 in a state that allows the access, and
    /// returns its entry index and where it was found.
    #[inline]
    fn ensure_l1(
        &mut self,
        cpu: usize,
        line: u64,
        write: bool,
        dram: &mut Dram,
        rng: &mut SimRng,
    ) -> (usize, Hit) {
        if let Some(i) = self.l1[cpu].find(line) {
            if write {
                match self.l1[cpu].state[i] {
                    LineState::Shared => {
                        self.invalidate_peers(cpu, line);
                        self.l1[cpu].state[i] = LineState::Modified;
                    }
                    LineState::Exclusive => self.l1[cpu].state[i] = LineState::Modified,
                    _ => {}
                }
            }
            self.stats.l1_hits += 1;
            return (i, Hit::L1);
        }
        // Make room first, so the slot pool always has a free slot.
        let way = match self.l1[cpu].free_way(line) {
            Some(w) => w,
            None => {
                let v = self.l1[cpu].set_base(line) + rng.below(self.l1[cpu].ways);
                self.evict_l1_entry(cpu, v, dram, rng);
                v
            }
        };
        let (slot, state, hit) = self.fetch_for_l1(cpu, line, write, dram);
        self.l1[cpu].fill(way, line, slot, state);
        self.l1_busy |= 1 << cpu;
        (way, hit)
    }

    /// Finds `line` in another L1, in L2 or in DRAM and hands back a slot with its data.
    #[inline]
    fn fetch_for_l1(
        &mut self,
        cpu: usize,
        line: u64,
        write: bool,
        dram: &mut Dram,
    ) -> (u32, LineState, Hit) {
        let peers = self.l1_busy & !(1u64 << cpu);
        if peers != 0 {
            let mut got: Option<(u32, LineState)> = None;
            for p in 0..self.l1.len() {
                if p == cpu || peers & (1 << p) == 0 {
                    continue;
                }
                let Some(j) = self.l1[p].find(line) else {
                    continue;
                };
                let st = self.l1[p].state[j];
                let pslot = self.l1[p].slot[j];
                if write {
                    // Read-for-ownership: take the data, invalidate every copy.
                    self.l1[p].clear(j);
                    self.l1_update(p);
                    match got {
                        None => got = Some((pslot, LineState::Modified)),
                        Some(_) => self.free.push(pslot),
                    }
                } else {
                    if st == LineState::Modified {
                        self.wb(pslot, line, dram);
                    }
                    self.l1[p].state[j] = LineState::Shared;
                    let slot = self.alloc_slot();
                    let (src, dst) = (
                        pslot as usize * self.line_bytes,
                        slot as usize * self.line_bytes,
                    );
                    self.pool.copy_within(src..src + self.line_bytes, dst);
                    got = Some((slot, LineState::Shared));
                    break;
                }
            }
            if let Some((slot, st)) = got {
                self.stats.l2_hits += 1;
                return (slot, st, Hit::L2);
            }
        }
        if let Some(k) = self.l2.find(line) {
            let slot = self.l2.slot[k];
            let dirty = self.l2.state[k] == LineState::Modified;
            self.l2.clear(k);
            self.stats.l2_hits += 1;
            let st = if write || dirty {
                LineState::Modified
            } else {
                LineState::Exclusive
            };
            return (slot, st, Hit::L2);
        }
        let slot = self.alloc_slot();
        // Even a store that replaces the whole line reads it (write-allocate): besides
        // being what the core does, on the host it warms the frame's line for the
        // later write-back.
        let s = slot as usize * self.line_bytes;
        dram.read_in_frame(
            line << self.line_shift,
            &mut self.pool[s..s + self.line_bytes],
        );
        self.stats.misses += 1;
        let st = if write {
            LineState::Modified
        } else {
            LineState::Exclusive
        };
        (slot, st, Hit::Dram)
    }

    fn invalidate_peers(&mut self, cpu: usize, line: u64) {
        for p in 0..self.l1.len() {
            if p == cpu {
                continue;
            }
            if let Some(j) = self.l1[p].find(line) {
                let slot = self.l1[p].slot[j];
                self.l1[p].clear(j);
                self.l1_update(p);
                self.free.push(slot);
            }
        }
    }

    /// A cacheable load of `out.len()` bytes at `pa`, all inside one line.
    #[inline]
    pub fn read(
        &mut self,
        cpu: usize,
        pa: u64,
        out: &mut [u8],
        dram: &mut Dram,
        rng: &mut SimRng,
    ) -> Hit {
        let line = pa >> self.line_shift;
        if self.run[cpu].1 == line {
            // A load of the line being streamed ends the run.
            self.run[cpu] = (0, INVALID_TAG);
        }
        let (i, hit) = self.ensure_l1(cpu, line, false, dram, rng);
        let off = (pa as usize) & (self.line_bytes - 1);
        let s = self.l1[cpu].slot[i] as usize * self.line_bytes + off;
        super::copy_bytes(out, &self.pool[s..s + out.len()]);
        hit
    }

    /// The 8 bytes at `pa` (8-aligned) when `cpu`'s L1 holds the line: the
    /// page-table walks' loads, which almost always hit. `None` sends the caller down
    /// the general path (a miss, with its fill and victim).
    #[inline]
    pub fn read_word_l1_hit(&mut self, cpu: usize, pa: u64) -> Option<[u8; 8]> {
        let (_, s) = self.l1_word(cpu, pa)?;
        self.stats.l1_hits += 1;
        self.pool[s..s + 8].try_into().ok()
    }

    /// `cpu`'s L1 entry holding `pa`'s line and the pool index of `pa`'s byte.
    #[inline(always)]
    fn l1_word(&self, cpu: usize, pa: u64) -> Option<(usize, usize)> {
        let i = self.l1[cpu].find(pa >> self.line_shift)?;
        let s = self.l1[cpu].slot[i] as usize * self.line_bytes
            + ((pa as usize) & (self.line_bytes - 1));
        Some((i, s))
    }

    /// Stores 8 bytes at `pa` (8-aligned) when `cpu`'s L1 holds the line in a state
    /// it may write without telling anyone (Modified or Exclusive); false otherwise.
    #[inline]
    pub fn write_word_l1_hit(&mut self, cpu: usize, pa: u64, word: [u8; 8]) -> bool {
        let Some((i, s)) = self.l1_word(cpu, pa) else {
            return false;
        };
        match self.l1[cpu].state[i] {
            LineState::Modified => {}
            LineState::Exclusive => self.l1[cpu].state[i] = LineState::Modified,
            _ => return false,
        }
        self.stats.l1_hits += 1;
        self.pool[s..s + 8].copy_from_slice(&word);
        true
    }

    /// A cacheable store of `data` at `pa`, all inside one line.
    #[inline]
    pub fn write(
        &mut self,
        cpu: usize,
        pa: u64,
        data: &[u8],
        dram: &mut Dram,
        rng: &mut SimRng,
    ) -> Hit {
        let line = pa >> self.line_shift;
        if self.stream.l1 > 0 {
            if let Some(hit) = self.stream_write(cpu, line, data, dram, rng) {
                return hit;
            }
        }
        let (i, hit) = self.ensure_l1(cpu, line, true, dram, rng);
        let off = (pa as usize) & (self.line_bytes - 1);
        let s = self.l1[cpu].slot[i] as usize * self.line_bytes + off;
        super::copy_bytes(&mut self.pool[s..s + data.len()], data);
        hit
    }

    /// Write streaming: counts the run and, past the thresholds, stores a whole line
    /// into L2 without allocating in L1, or into DRAM without allocating at all.
    /// `None` when the store takes the normal write-allocate path.
    fn stream_write(
        &mut self,
        cpu: usize,
        line: u64,
        data: &[u8],
        dram: &mut Dram,
        rng: &mut SimRng,
    ) -> Option<Hit> {
        if data.len() != self.line_bytes {
            // A cacheable store of part of a line ends the run.
            self.run[cpu] = (0, INVALID_TAG);
            return None;
        }
        if self.l1[cpu].find(line).is_some() {
            return None;
        }
        let n = self.run[cpu].0.saturating_add(1);
        self.run[cpu] = (n, line);
        if n <= self.stream.l1 {
            return None;
        }
        // The store still looks up the caches and takes the line from every other
        // CPU (a coherent WriteUnique): other L1s drop their copies.
        if self.l1_busy & !(1u64 << cpu) != 0 {
            self.invalidate_peers(cpu, line);
        }
        let bytes = self.line_bytes;
        if let Some(k) = self.l2.find(line) {
            let s = self.l2.slot[k] as usize * bytes;
            super::copy_bytes(&mut self.pool[s..s + bytes], data);
            self.l2.state[k] = LineState::Modified;
            self.stats.l2_hits += 1;
            self.stats.streamed_l2 += 1;
            return Some(Hit::L2);
        }
        if self.stream.l2 > 0 && n > self.stream.l2 {
            if dram.write_in_frame_watched(line << self.line_shift, data) {
                self.watched_streamed.push(line << self.line_shift);
            }
            self.stats.streamed_dram += 1;
            self.stats.misses += 1;
            return Some(Hit::Streamed);
        }
        // Into L2 without a linefill: the store replaces the whole line.
        let way = self.l2_way_for(line, dram, rng);
        let slot = self.alloc_slot();
        let s = slot as usize * bytes;
        super::copy_bytes(&mut self.pool[s..s + bytes], data);
        self.l2.fill(way, line, slot, LineState::Modified);
        self.stats.streamed_l2 += 1;
        self.stats.misses += 1;
        Some(Hit::L2)
    }

    /// Speculative fill of the line holding `pa` into `cpu`'s L1 (a prefetch).
    /// Returns true when the line was not cached before.
    pub fn prefetch(&mut self, cpu: usize, pa: u64, dram: &mut Dram, rng: &mut SimRng) -> bool {
        let line = pa >> self.line_shift;
        if self.is_cached(line) {
            return false;
        }
        let before = self.stats;
        self.ensure_l1(cpu, line, false, dram, rng);
        // A prefetch is not a demand access: keep the hit/miss counters as they were.
        self.stats.l1_hits = before.l1_hits;
        self.stats.l2_hits = before.l2_hits;
        self.stats.misses = before.misses;
        true
    }

    fn is_cached(&self, line: u64) -> bool {
        self.l2.find(line).is_some() || self.l1.iter().any(|l| l.find(line).is_some())
    }

    /// `DC CVAC` on the line holding `pa`: write it back if dirty, keep it valid.
    /// Returns true if a write-back happened.
    pub fn clean(&mut self, pa: u64, dram: &mut Dram) -> bool {
        let line = pa >> self.line_shift;
        self.stats.clean_lines += 1;
        for p in 0..self.l1.len() {
            if let Some(j) = self.l1[p].find(line) {
                if self.l1[p].state[j] == LineState::Modified {
                    let slot = self.l1[p].slot[j];
                    self.wb(slot, line, dram);
                    self.l1[p].state[j] = LineState::Exclusive;
                    return true;
                }
            }
        }
        if let Some(k) = self.l2.find(line) {
            if self.l2.state[k] == LineState::Modified {
                let slot = self.l2.slot[k];
                self.wb(slot, line, dram);
                self.l2.state[k] = LineState::Exclusive;
                return true;
            }
        }
        false
    }

    /// Counts `clean` cleans and `invalidate` invalidates of lines that no cache
    /// holds (what [`Caches::clean`] and [`Caches::invalidate`] count for such a
    /// line, with nothing to find): the maintenance of a page the filter rules out.
    pub fn count_maintenance_of_uncached_lines(&mut self, clean: u64, invalidate: u64) {
        self.stats.clean_lines += clean;
        self.stats.invalidate_lines += invalidate;
    }

    /// `DC IVAC` on the line holding `pa`: drop every cached copy, dirty data included.
    /// Returns true if a dirty copy was thrown away.
    pub fn invalidate(&mut self, pa: u64) -> bool {
        let line = pa >> self.line_shift;
        self.stats.invalidate_lines += 1;
        let mut discarded = false;
        for p in 0..self.l1.len() {
            if let Some(j) = self.l1[p].find(line) {
                discarded |= self.l1[p].state[j] == LineState::Modified;
                let slot = self.l1[p].slot[j];
                self.l1[p].clear(j);
                self.l1_update(p);
                self.free.push(slot);
            }
        }
        if let Some(k) = self.l2.find(line) {
            discarded |= self.l2.state[k] == LineState::Modified;
            let slot = self.l2.slot[k];
            self.l2.clear(k);
            self.free.push(slot);
        }
        if discarded {
            self.stats.dirty_discards += 1;
        }
        discarded
    }

    /// `DC CIVAC` on the line holding `pa`: write back if dirty, then drop.
    /// Returns true if a write-back happened.
    pub fn clean_invalidate(&mut self, pa: u64, dram: &mut Dram) -> bool {
        let wrote = self.clean(pa, dram);
        self.invalidate(pa);
        wrote
    }

    /// May any cache hold a line of the 4 KiB page holding `pa`? False means a
    /// device access to that page needs no snoop at all (a snoop filter, as
    /// interconnects keep one).
    #[inline]
    pub fn page_may_be_cached(&self, pa: u64) -> bool {
        let line = pa >> self.line_shift;
        self.l2.may_hold_page(line) || self.l1.iter().any(|l| l.may_hold_page(line))
    }

    /// What a snooping (coherent) read of the line holding `pa` returns from the
    /// caches: the dirty copy if one exists (clean copies equal DRAM).
    #[inline]
    pub fn dirty_copy(&self, pa: u64) -> Option<&[u8]> {
        let line = pa >> self.line_shift;
        for l in &self.l1 {
            if let Some(j) = l.find(line) {
                if l.state[j] == LineState::Modified {
                    return Some(self.data(l.slot[j]));
                }
                // Shared or Exclusive: clean, and exclusivity means L2 has none.
                return None;
            }
        }
        match self.l2.find(line) {
            Some(k) if self.l2.state[k] == LineState::Modified => Some(self.data(self.l2.slot[k])),
            _ => None,
        }
    }

    /// A coherent device write to the line holding `pa`: every cached copy is
    /// invalidated; for a partial-line write a dirty copy is first written back so the
    /// interconnect can merge (ACE-Lite WriteUnique).
    #[inline]
    pub fn snoop_write(&mut self, pa: u64, full_line: bool, dram: &mut Dram) {
        if !full_line {
            self.clean(pa, dram);
            self.stats.clean_lines -= 1;
        }
        let line = pa >> self.line_shift;
        for p in 0..self.l1.len() {
            if let Some(j) = self.l1[p].find(line) {
                let slot = self.l1[p].slot[j];
                self.l1[p].clear(j);
                self.l1_update(p);
                self.free.push(slot);
            }
        }
        if let Some(k) = self.l2.find(line) {
            let slot = self.l2.slot[k];
            self.l2.clear(k);
            self.free.push(slot);
        }
    }

    /// The coherent view of bytes at `pa` (inside one line): the dirty cached copy if
    /// there is one, else DRAM. Changes nothing.
    pub fn peek(&self, pa: u64, out: &mut [u8], dram: &Dram) {
        let off = (pa as usize) & (self.line_bytes - 1);
        match self.dirty_copy(pa) {
            Some(d) => out.copy_from_slice(&d[off..off + out.len()]),
            None => dram.read_in_frame(pa, out),
        }
    }

    /// What a CPU load at `pa` (inside one line) would return now: any cached copy,
    /// clean or dirty, else DRAM. Changes nothing.
    pub fn cpu_view(&self, pa: u64, out: &mut [u8], dram: &Dram) {
        let line = pa >> self.line_shift;
        let off = (pa as usize) & (self.line_bytes - 1);
        let slot = self
            .l1
            .iter()
            .find_map(|l| l.find(line).map(|j| l.slot[j]))
            .or_else(|| self.l2.find(line).map(|k| self.l2.slot[k]));
        match slot {
            Some(s) => out.copy_from_slice(&self.data(s)[off..off + out.len()]),
            None => dram.read_in_frame(pa, out),
        }
    }

    /// State of the line holding `pa` as `cpu` would find it: in its L1, another L1,
    /// or L2. For reports.
    pub fn state_of(&self, pa: u64) -> LineState {
        let line = pa >> self.line_shift;
        let mut best = LineState::Invalid;
        for l in &self.l1 {
            if let Some(j) = l.find(line) {
                best = best.max_by(l.state[j]);
            }
        }
        if let Some(k) = self.l2.find(line) {
            best = best.max_by(self.l2.state[k]);
        }
        best
    }

    /// Writes back and drops every line (`evict_all()`, or a full cache flush).
    pub fn evict_all(&mut self, dram: &mut Dram) {
        for p in 0..self.l1.len() {
            for i in 0..self.l1[p].tags.len() {
                self.drop_entry_l1(p, i, dram);
            }
        }
        for i in 0..self.l2.tags.len() {
            self.drop_entry_l2(i, dram);
        }
    }

    fn drop_entry_l1(&mut self, p: usize, i: usize, dram: &mut Dram) {
        let line = self.l1[p].tags[i];
        if line == INVALID_TAG {
            return;
        }
        let slot = self.l1[p].slot[i];
        if self.l1[p].state[i] == LineState::Modified {
            self.wb(slot, line, dram);
        }
        self.l1[p].clear(i);
        self.l1_update(p);
        self.free.push(slot);
    }

    fn drop_entry_l2(&mut self, i: usize, dram: &mut Dram) {
        let line = self.l2.tags[i];
        if line == INVALID_TAG {
            return;
        }
        let slot = self.l2.slot[i];
        if self.l2.state[i] == LineState::Modified {
            self.wb(slot, line, dram);
        }
        self.l2.clear(i);
        self.free.push(slot);
    }

    /// Pollution by other work: every line in half of the sets of `cpu`'s L1 and half
    /// of the sets of L2 (each a window starting at a random set) is written back if
    /// dirty and dropped. Returns the number of lines dropped.
    pub fn evict_sweep(&mut self, cpu: usize, dram: &mut Dram, rng: &mut SimRng) -> u64 {
        // The work follows the lines there are to drop, not the size of the window:
        // a set with no valid way is skipped on its count, and a level stops as soon
        // as it is empty. An idle machine (a long `run_for` with nothing cached) then
        // costs a few counter tests per sweep instead of a scan of half the tags. The
        // random windows, the sets visited and the order of the drops are those of a
        // full scan, so every result stays the same.
        let mut dropped = 0;
        let (sets, ways) = (self.l1[cpu].sets(), self.l1[cpu].ways);
        let start = rng.below(sets);
        for k in 0..sets / 2 {
            if self.l1[cpu].count == 0 {
                break;
            }
            let set = (start + k) % sets;
            if self.l1[cpu].set_valid[set] == 0 {
                continue;
            }
            self.stats.sweep_entries += ways as u64;
            let base = set * ways;
            for i in base..base + ways {
                if self.l1[cpu].tags[i] != INVALID_TAG {
                    dropped += 1;
                    self.drop_entry_l1(cpu, i, dram);
                }
            }
        }
        let (sets, ways) = (self.l2.sets(), self.l2.ways);
        let start = rng.below(sets);
        for k in 0..sets / 2 {
            if self.l2.count == 0 {
                break;
            }
            let set = (start + k) % sets;
            if self.l2.set_valid[set] == 0 {
                continue;
            }
            self.stats.sweep_entries += ways as u64;
            let base = set * ways;
            for i in base..base + ways {
                if self.l2.tags[i] != INVALID_TAG {
                    dropped += 1;
                    self.drop_entry_l2(i, dram);
                }
            }
        }
        dropped
    }

    /// Number of valid lines in all levels (tests and reports).
    pub fn valid_lines(&self) -> usize {
        self.l1
            .iter()
            .chain(std::iter::once(&self.l2))
            .map(|l| l.tags.iter().filter(|&&t| t != INVALID_TAG).count())
            .sum()
    }
}

impl LineState {
    fn max_by(self, other: LineState) -> LineState {
        if (other as u8) > (self as u8) {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn setup(cpus: usize) -> (Caches, Dram, SimRng) {
        let l1 = CacheGeometry {
            size: 1024,
            ways: 2,
            line: 64,
        };
        let l2 = CacheGeometry {
            size: 4096,
            ways: 4,
            line: 64,
        };
        (
            Caches::new(cpus, &l1, &l2),
            Dram::new(0, 1 << 24, 4096),
            SimRng::new(1),
        )
    }

    #[test]
    fn a_store_stays_in_the_cache_until_cleaned() {
        let (mut c, mut d, mut r) = setup(1);
        assert_eq!(c.write(0, 0x1000, &[7; 8], &mut d, &mut r), Hit::Dram);
        let mut b = [0u8; 8];
        d.read(0x1000, &mut b);
        assert_eq!(b, [0; 8], "DRAM is stale while the line is dirty");
        assert_eq!(c.state_of(0x1000), LineState::Modified);
        assert!(c.clean(0x1000, &mut d));
        d.read(0x1000, &mut b);
        assert_eq!(b, [7; 8]);
        assert_eq!(c.state_of(0x1000), LineState::Exclusive);
        assert!(!c.clean(0x1000, &mut d), "a clean line writes nothing back");
    }

    #[test]
    fn invalidate_throws_dirty_data_away() {
        let (mut c, mut d, mut r) = setup(1);
        c.write(0, 0x40, &[9; 4], &mut d, &mut r);
        assert!(c.invalidate(0x40));
        let mut b = [1u8; 4];
        c.read(0, 0x40, &mut b, &mut d, &mut r);
        assert_eq!(b, [0; 4]);
        assert_eq!(c.stats.dirty_discards, 1);
    }

    #[test]
    fn a_clean_line_hides_a_newer_dram_value() {
        let (mut c, mut d, mut r) = setup(1);
        let mut b = [0u8; 4];
        c.read(0, 0x80, &mut b, &mut d, &mut r);
        d.write(0x80, &[5; 4]); // a non-coherent device writes DRAM
        c.read(0, 0x80, &mut b, &mut d, &mut r);
        assert_eq!(b, [0; 4], "the stale cached copy wins");
        c.invalidate(0x80);
        c.read(0, 0x80, &mut b, &mut d, &mut r);
        assert_eq!(b, [5; 4]);
    }

    #[test]
    fn data_survives_eviction_through_l2_to_dram() {
        let (mut c, mut d, mut r) = setup(1);
        // 64 lines: far more than L1 (16) + L2 (64) can hold with conflicts.
        for i in 0..256u64 {
            c.write(0, i * 64, &[i as u8; 64], &mut d, &mut r);
        }
        for i in 0..256u64 {
            let mut b = [0u8; 64];
            c.read(0, i * 64, &mut b, &mut d, &mut r);
            assert_eq!(b, [i as u8; 64], "line {i}");
        }
        assert!(c.stats.writebacks > 0);
        c.evict_all(&mut d);
        assert_eq!(c.valid_lines(), 0);
        let mut b = [0u8; 64];
        d.read(255 * 64, &mut b);
        assert_eq!(b, [255; 64]);
    }

    #[test]
    fn mesi_keeps_two_cpus_coherent() {
        let (mut c, mut d, mut r) = setup(2);
        c.write(0, 0x100, &[1; 8], &mut d, &mut r);
        let mut b = [0u8; 8];
        c.read(1, 0x100, &mut b, &mut d, &mut r);
        assert_eq!(b, [1; 8], "CPU1 sees CPU0's dirty line");
        assert_eq!(c.state_of(0x100), LineState::Shared);
        c.write(1, 0x100, &[2; 8], &mut d, &mut r);
        c.read(0, 0x100, &mut b, &mut d, &mut r);
        assert_eq!(b, [2; 8], "CPU0's shared copy was invalidated");
    }

    #[test]
    fn snooped_reads_see_dirty_lines_and_snooped_writes_invalidate() {
        let (mut c, mut d, mut r) = setup(1);
        c.write(0, 0x200, &[3; 64], &mut d, &mut r);
        assert_eq!(c.dirty_copy(0x200).unwrap(), &[3u8; 64][..]);
        d.write(0x200, &[4; 64]);
        c.snoop_write(0x200, true, &mut d);
        let mut b = [0u8; 64];
        c.read(0, 0x200, &mut b, &mut d, &mut r);
        assert_eq!(b, [4; 64]);
    }

    #[test]
    fn slots_are_never_lost() {
        let (mut c, mut d, mut r) = setup(2);
        let total = c.free.len();
        for i in 0..2000u64 {
            let pa = (i * 7919 % 512) * 64;
            if i % 3 == 0 {
                c.write((i % 2) as usize, pa, &[1], &mut d, &mut r);
            } else {
                let mut b = [0u8; 1];
                c.read((i % 2) as usize, pa, &mut b, &mut d, &mut r);
            }
            if i % 97 == 0 {
                c.invalidate(pa);
            }
            if i % 101 == 0 {
                c.evict_sweep(0, &mut d, &mut r);
            }
        }
        assert_eq!(c.free.len() + c.valid_lines(), total);
    }

    /// Write streaming: the first whole-line store misses allocate as usual, the next
    /// ones skip L1, those past the second threshold reach DRAM without allocating;
    /// a partial store or a load of the streamed line starts over.
    #[test]
    fn write_streaming_skips_l1_then_l2() {
        let (mut c, mut d, mut r) = setup(1);
        c.set_write_streaming(StreamThresholds { l1: 3, l2: 20 });
        for i in 0..40u64 {
            let hit = c.write(0, 0x10_0000 + i * 64, &[i as u8; 64], &mut d, &mut r);
            let want = match i {
                0..=2 => Hit::Dram,
                3..=19 => Hit::L2,
                _ => Hit::Streamed,
            };
            assert_eq!(hit, want, "line {i}");
        }
        assert_eq!((c.stats.streamed_l2, c.stats.streamed_dram), (17, 20));
        let mut b = [0u8; 64];
        d.read(0x10_0000 + 30 * 64, &mut b);
        assert_eq!(b, [30; 64], "a streamed line is in DRAM at once");
        assert_eq!(c.state_of(0x10_0000 + 30 * 64), LineState::Invalid);
        d.read(0x10_0000, &mut b);
        assert_eq!(b, [0; 64], "an allocated line is dirty in the cache");
        assert_eq!(c.state_of(0x10_0000), LineState::Modified);
        for i in 0..40u64 {
            c.read(0, 0x10_0000 + i * 64, &mut b, &mut d, &mut r);
            assert_eq!(b, [i as u8; 64], "line {i} reads back");
        }
        // A partial store ends the run: the next whole-line miss allocates in L1.
        c.write(0, 0x20_0000, &[1; 8], &mut d, &mut r);
        assert_eq!(c.write(0, 0x20_0040, &[2; 64], &mut d, &mut r), Hit::Dram);
        assert_eq!(c.state_of(0x20_0040), LineState::Modified);
        // So does a load of the line last streamed.
        for i in 0..4u64 {
            c.write(0, 0x30_0000 + i * 64, &[3; 64], &mut d, &mut r);
        }
        c.read(0, 0x30_0000 + 3 * 64, &mut b, &mut d, &mut r);
        assert_eq!(c.write(0, 0x30_0100, &[4; 64], &mut d, &mut r), Hit::Dram);
    }

    /// The page filter has no false negatives: every cached line's page is flagged,
    /// and once everything is evicted no page is.
    #[test]
    fn the_page_filter_never_misses_a_cached_line() {
        let (mut c, mut d, mut r) = setup(2);
        for i in 0..5000u64 {
            let pa = (i * 7919 % 512) * 64;
            match i % 5 {
                0 | 1 => {
                    c.write((i % 2) as usize, pa, &[1], &mut d, &mut r);
                }
                2 | 3 => {
                    let mut b = [0u8; 1];
                    c.read((i % 2) as usize, pa, &mut b, &mut d, &mut r);
                }
                _ => {
                    c.invalidate(pa);
                }
            }
            if i % 211 == 0 {
                c.evict_sweep(1, &mut d, &mut r);
            }
            if i % 50 == 0 {
                for l in c.l1.iter().chain(std::iter::once(&c.l2)) {
                    for &t in l.tags.iter().filter(|&&t| t != INVALID_TAG) {
                        assert!(c.page_may_be_cached(t << c.line_shift), "line {t:#x}");
                    }
                }
            }
        }
        c.evict_all(&mut d);
        assert!(!c.page_may_be_cached(0) && !c.page_may_be_cached(0x4000));
        for l in c.l1.iter().chain(std::iter::once(&c.l2)) {
            assert!(l.pages.iter().all(|&n| n == 0), "counts return to zero");
        }
    }
}

#[cfg(test)]
mod coherence_property {
    use super::*;

    /// MESI plus exclusive L2 plus write-backs must never lose a store: with only CPU
    /// traffic (any CPU, any line, evictions, cleans, sweeps), every load returns the
    /// last value stored, and after a full flush DRAM holds it too.
    #[test]
    fn cpu_loads_always_see_the_last_store() {
        for seed in 0..12u64 {
            let (mut c, mut d, _) = super::tests::setup(3);
            let mut r = SimRng::new(seed);
            let mut ops = SimRng::new(seed + 1000);
            let mut shadow = vec![0u8; 64 * 1024];
            let total = c.free.len();
            for _ in 0..6000 {
                let cpu = ops.below(3);
                let pa = ops.below(shadow.len() - 16) as u64;
                let len = 1 + ops.below(16).min(63 - (pa as usize % 64));
                match ops.below(10) {
                    0..=3 => {
                        let v: Vec<u8> = (0..len).map(|_| ops.below(256) as u8).collect();
                        c.write(cpu, pa, &v, &mut d, &mut r);
                        shadow[pa as usize..pa as usize + len].copy_from_slice(&v);
                    }
                    4..=7 => {
                        let mut got = vec![0u8; len];
                        c.read(cpu, pa, &mut got, &mut d, &mut r);
                        assert_eq!(
                            got,
                            &shadow[pa as usize..pa as usize + len],
                            "seed {seed} pa {pa:#x}"
                        );
                    }
                    8 => {
                        c.clean(pa, &mut d);
                    }
                    _ => {
                        c.evict_sweep(cpu, &mut d, &mut r);
                    }
                }
            }
            flushed_dram_matches(&mut c, &mut d, total, &shadow, seed);
        }
    }

    /// No slot was lost, and after a full flush DRAM holds `shadow`.
    fn flushed_dram_matches(c: &mut Caches, d: &mut Dram, slots: usize, shadow: &[u8], seed: u64) {
        assert_eq!(c.free.len() + c.valid_lines(), slots, "no slot lost");
        c.evict_all(d);
        let mut all = vec![0u8; shadow.len()];
        d.read(0, &mut all);
        assert_eq!(all, shadow, "seed {seed}: DRAM after the flush");
    }

    /// Write streaming never loses a store either: runs of whole-line stores mixed
    /// with partial stores, loads, cleans and sweeps on several CPUs, and every load
    /// returns the last value stored; after a flush DRAM holds them all.
    #[test]
    fn streamed_stores_are_never_lost() {
        for seed in 0..8u64 {
            let (mut c, mut d, _) = super::tests::setup(2);
            c.set_write_streaming(StreamThresholds { l1: 3, l2: 12 });
            let mut r = SimRng::new(seed);
            let mut ops = SimRng::new(seed + 77);
            let mut shadow = vec![0u8; 32 * 1024];
            let total = c.free.len();
            let mut next = 0usize;
            for _ in 0..4000 {
                let cpu = ops.below(2);
                match ops.below(10) {
                    0..=4 => {
                        // A run of whole lines, continuing where the last one ended.
                        let v = ops.below(256) as u8;
                        for _ in 0..1 + ops.below(24) {
                            let pa = next % shadow.len();
                            c.write(cpu, pa as u64, &[v; 64], &mut d, &mut r);
                            shadow[pa..pa + 64].fill(v);
                            next = pa + 64;
                        }
                    }
                    5 => {
                        let pa = ops.below(shadow.len() - 8);
                        let v = ops.below(256) as u8;
                        let len = 1 + ops.below(8).min(63 - pa % 64);
                        c.write(cpu, pa as u64, &vec![v; len], &mut d, &mut r);
                        shadow[pa..pa + len].fill(v);
                    }
                    6..=8 => {
                        let pa = ops.below(shadow.len() / 64) * 64;
                        let mut got = [0u8; 64];
                        c.read(cpu, pa as u64, &mut got, &mut d, &mut r);
                        assert_eq!(&got[..], &shadow[pa..pa + 64], "seed {seed} pa {pa:#x}");
                    }
                    _ => {
                        c.evict_sweep(cpu, &mut d, &mut r);
                    }
                }
            }
            assert!(c.stats.streamed_dram > 0 && c.stats.streamed_l2 > 0);
            flushed_dram_matches(&mut c, &mut d, total, &shadow, seed);
        }
    }
}
