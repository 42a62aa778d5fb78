//! The silicon: CPUs with caches that hold real bytes, DRAM, the MMU, the interconnect
//! ports devices use, a simulated clock and the seeded background noise.
//!
//! Nothing here knows about Linux. The kernel layer drives the machine through what a
//! real kernel has: loads and stores by virtual address, cache maintenance by address,
//! page-table updates. Devices reach memory through a port that either snoops the CPU
//! caches (coherent, ACE-Lite style) or goes straight to DRAM (non-coherent).

pub mod cache;
pub mod dram;
pub mod iommu;
pub mod mmu;
pub mod rng;
pub mod tag_index;

use crate::config::{CostTable, NoiseConfig, PlatformConfig, PAGE_SIZE};
use cache::{Caches, Hit};
use dram::Dram;
use mmu::{MemType, Mmu};
use rng::SimRng;

/// Counters of machine activity that the cache does not keep itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HwStats {
    /// CPU accesses (per 16-byte beat) to Normal-NC or Device memory.
    pub uncached_accesses: u64,
    /// Simulated picoseconds the CPU spent on uncached accesses.
    pub uncached_ps: u64,
    /// Lines filled by the prefetcher (noise or `prefetch()`).
    pub prefetched_lines: u64,
    /// Eviction sweeps by background noise.
    pub evict_sweeps: u64,
    /// Lines those sweeps dropped.
    pub swept_lines: u64,
    /// Bytes devices read or wrote.
    pub dma_bytes: u64,
}

/// Cache maintenance operations, as arm64 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmo {
    /// `DC CVAC`: clean to the point of coherency.
    Clean,
    /// `DC IVAC`: invalidate.
    Invalidate,
    /// `DC CIVAC`: clean and invalidate.
    CleanInvalidate,
}

/// Result of a maintenance range.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CmoResult {
    /// Lines operated on.
    pub lines: u64,
    /// Dirty lines written back.
    pub writebacks: u64,
    /// Dirty lines thrown away by an invalidate.
    pub discarded: u64,
}

/// A device access outside RAM: the interconnect answers with a bus error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusError {
    /// Physical address that decoded to nothing.
    pub pa: u64,
}

const RECENT_PAGES: usize = 8;

/// Does `[pa, pa+len)` reach into a second 4 KiB page?
#[inline(always)]
fn crosses_page(pa: u64, len: u64) -> bool {
    len > 0 && (pa & (PAGE_SIZE - 1)) + len > PAGE_SIZE
}

/// Splits `[pa, pa+len)` into pieces that stay inside one `line`-byte cache line:
/// (address of the piece, range of the piece within the whole access).
#[inline(always)]
fn line_pieces(
    pa: u64,
    len: usize,
    line: usize,
) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        (done < len).then(|| {
            let a = pa.wrapping_add(done as u64);
            let n = (line - (a as usize & (line - 1))).min(len - done);
            let r = done..done + n;
            done += n;
            (a, r)
        })
    })
}

/// Copies `src` into `dst` (same length). Whole 64-byte lines and 8-byte words — the
/// common cases on the hot paths — are copied as one fixed-size block, which the
/// compiler inlines instead of calling `memmove`.
#[inline(always)]
pub(crate) fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    if let (Ok(d), Ok(s)) = (
        <&mut [u8; 64]>::try_from(&mut *dst),
        <&[u8; 64]>::try_from(src),
    ) {
        *d = *s;
    } else if let (Ok(d), Ok(s)) = (
        <&mut [u8; 8]>::try_from(&mut *dst),
        <&[u8; 8]>::try_from(src),
    ) {
        // A descriptor or a word: the page-table walks' loads and stores.
        *d = *s;
    } else {
        dst.copy_from_slice(src);
    }
}

/// The whole machine.
pub struct Machine {
    /// RAM.
    pub dram: Dram,
    /// L1s and L2.
    pub caches: Caches,
    /// Page tables of every address space.
    pub mmu: Mmu,
    /// The IOMMU (bypasses every stream until the kernel attaches domains).
    pub iommu: iommu::Iommu,
    /// Prefetches into watched frames since the sanitizer last looked: (first line,
    /// lines filled), for buffer histories.
    pub watched_prefetches: Vec<(u64, u64)>,
    /// The seeded stream.
    pub rng: SimRng,
    /// Costs of each action.
    pub cost: CostTable,
    /// Background activity rates.
    pub noise: NoiseConfig,
    /// Counters.
    pub stats: HwStats,
    now_ps: u64,
    line: u64,
    recent: [u64; RECENT_PAGES],
    recent_len: usize,
    recent_next: usize,
}

impl Machine {
    /// Builds the machine a platform describes; `cap_frames` bounds the DRAM frames
    /// that may hold data. The configuration must be valid.
    pub fn new(p: &PlatformConfig, seed: u64, cap_frames: u64) -> Machine {
        let mut caches = Caches::new(p.cpus as usize, &p.l1, &p.l2);
        caches.set_write_streaming(p.write_streaming);
        Machine {
            dram: Dram::new(p.ram_base, p.ram, cap_frames),
            caches,
            mmu: Mmu::new(),
            watched_prefetches: Vec::new(),
            iommu: iommu::Iommu::new(
                p.iommu_coherent_walk.unwrap_or(p.coherent_default),
                p.iotlb_entries as usize,
                p.iotlb_ways as usize,
                p.iommu_cost,
            ),
            rng: SimRng::new(seed),
            cost: p.cost,
            noise: p.noise,
            stats: HwStats::default(),
            now_ps: 0,
            line: p.line(),
            recent: [0; RECENT_PAGES],
            recent_len: 0,
            recent_next: 0,
        }
    }

    /// Simulated time in picoseconds.
    #[inline]
    pub fn now_ps(&self) -> u64 {
        self.now_ps
    }

    /// Lets `ps` picoseconds pass.
    #[inline]
    pub fn advance(&mut self, ps: u64) {
        self.now_ps = self.now_ps.saturating_add(ps);
    }

    /// Moves the clock forward to `t_ps` (never back).
    pub fn advance_to(&mut self, t_ps: u64) {
        self.now_ps = self.now_ps.max(t_ps);
    }

    /// Cache line size in bytes.
    #[inline]
    pub fn line(&self) -> u64 {
        self.line
    }

    fn note_page(&mut self, pa: u64) {
        let page = pa & !(PAGE_SIZE - 1);
        let last = (self.recent_next + RECENT_PAGES - 1) % RECENT_PAGES;
        if self.recent_len > 0 && self.recent[last] == page {
            return;
        }
        self.recent[self.recent_next] = page;
        self.recent_next = (self.recent_next + 1) % RECENT_PAGES;
        self.recent_len = (self.recent_len + 1).min(RECENT_PAGES);
    }

    /// A CPU load of `out.len()` bytes at physical `pa` inside one page, with the
    /// mapping's memory type. Charges the clock.
    #[inline]
    pub fn cpu_read_phys(&mut self, cpu: usize, pa: u64, memtype: MemType, out: &mut [u8]) {
        if memtype != MemType::Normal {
            self.dram.read_in_frame(pa, out);
            self.charge_uncached(pa, out.len() as u64, self.cost.uncached_read_beat_ps);
            return;
        }
        self.note_page(pa);
        let wb0 = self.caches.stats.writebacks;
        let mut cost = 0;
        for (a, r) in line_pieces(pa, out.len(), self.line as usize) {
            let hit = self
                .caches
                .read(cpu, a, &mut out[r], &mut self.dram, &mut self.rng);
            cost += self.hit_cost(hit);
        }
        cost += (self.caches.stats.writebacks - wb0) * self.cost.writeback_ps;
        self.advance(cost);
    }

    /// A CPU store of `data` at physical `pa` inside one page. Charges the clock.
    #[inline]
    pub fn cpu_write_phys(&mut self, cpu: usize, pa: u64, memtype: MemType, data: &[u8]) {
        if memtype != MemType::Normal {
            self.dram.write_in_frame(pa, data);
            self.charge_uncached(pa, data.len() as u64, self.cost.uncached_write_beat_ps);
            return;
        }
        self.note_page(pa);
        let wb0 = self.caches.stats.writebacks;
        let mut cost = 0;
        if let Some(lines) =
            self.caches
                .write_lines_of_uncached_page(cpu, pa, data, &mut self.dram, &mut self.rng)
        {
            // Whole lines of a page no cache holds: every line a DRAM fill.
            cost = lines * self.hit_cost(Hit::Dram);
        } else {
            for (a, r) in line_pieces(pa, data.len(), self.line as usize) {
                let hit = self
                    .caches
                    .write(cpu, a, &data[r], &mut self.dram, &mut self.rng);
                cost += self.hit_cost(hit);
            }
        }
        cost += (self.caches.stats.writebacks - wb0) * self.cost.writeback_ps;
        self.advance(cost);
    }

    /// A CPU load of the 8-byte word at physical `pa` (8-aligned, normal memory):
    /// the same effect and cost as [`Machine::cpu_read_phys`], with a short path for
    /// the L1 hit that page-table walks nearly always are.
    #[inline]
    pub fn cpu_read_u64_phys(&mut self, cpu: usize, pa: u64) -> u64 {
        debug_assert_eq!(pa & 7, 0);
        if let Some(w) = self.caches.read_word_l1_hit(cpu, pa) {
            self.note_page(pa);
            self.advance(self.cost.l1_hit_ps);
            return u64::from_le_bytes(w);
        }
        let mut b = [0u8; 8];
        self.cpu_read_phys(cpu, pa, MemType::Normal, &mut b);
        u64::from_le_bytes(b)
    }

    /// A CPU store of the 8-byte word `v` at physical `pa` (8-aligned, normal
    /// memory), as [`Machine::cpu_write_phys`] with a short path for an L1 hit on a
    /// line this CPU owns.
    #[inline]
    pub fn cpu_write_u64_phys(&mut self, cpu: usize, pa: u64, v: u64) {
        debug_assert_eq!(pa & 7, 0);
        if self.caches.write_word_l1_hit(cpu, pa, v.to_le_bytes()) {
            self.note_page(pa);
            self.advance(self.cost.l1_hit_ps);
            return;
        }
        self.cpu_write_phys(cpu, pa, MemType::Normal, &v.to_le_bytes());
    }

    #[inline(always)]
    fn hit_cost(&self, hit: Hit) -> u64 {
        match hit {
            Hit::L1 => self.cost.l1_hit_ps,
            Hit::L2 => self.cost.l2_hit_ps,
            Hit::Dram => self.cost.dram_fill_ps,
            // No linefill: the line leaves through the write buffer.
            Hit::Streamed => self.cost.writeback_ps,
        }
    }

    fn charge_uncached(&mut self, pa: u64, len: u64, beat_ps: u64) {
        // Beats are 16 bytes, aligned.
        let first = pa / 16;
        let last = (pa + len.max(1) - 1) / 16;
        let beats = last - first + 1;
        self.stats.uncached_accesses += beats;
        let ps = beats * beat_ps;
        self.stats.uncached_ps += ps;
        self.advance(ps);
    }

    /// A CPU load by virtual address in address space `asid`.
    ///
    /// # Errors
    /// The first virtual address that has no translation (nothing is read).
    pub fn cpu_read(
        &mut self,
        cpu: usize,
        asid: usize,
        va: u64,
        out: &mut [u8],
    ) -> Result<(), u64> {
        self.check_mapped(asid, va, out.len() as u64)?;
        for (v, r) in line_pieces(va, out.len(), PAGE_SIZE as usize) {
            let (pa, mt) = self.mmu.translate(asid, v).ok_or(v)?;
            self.cpu_read_phys(cpu, pa, mt, &mut out[r]);
        }
        Ok(())
    }

    /// Fails with the first unmapped address of the range, so that an access either
    /// happens whole or not at all.
    fn check_mapped(&self, asid: usize, va: u64, len: u64) -> Result<(), u64> {
        let mut done = 0;
        while done < len {
            let v = va.wrapping_add(done);
            self.mmu.translate(asid, v).ok_or(v)?;
            done += PAGE_SIZE - (v & (PAGE_SIZE - 1));
        }
        Ok(())
    }

    /// A CPU store by virtual address in address space `asid`.
    ///
    /// # Errors
    /// The first virtual address that has no translation (nothing is written).
    pub fn cpu_write(&mut self, cpu: usize, asid: usize, va: u64, data: &[u8]) -> Result<(), u64> {
        self.check_mapped(asid, va, data.len() as u64)?;
        for (v, r) in line_pieces(va, data.len(), PAGE_SIZE as usize) {
            let (pa, mt) = self.mmu.translate(asid, v).ok_or(v)?;
            self.cpu_write_phys(cpu, pa, mt, &data[r]);
        }
        Ok(())
    }

    /// One maintenance operation over every line that `[pa, pa+len)` touches,
    /// charging the per-line cost (and write-backs); the fixed `DSB` cost is charged
    /// by [`Machine::cmo_fixed`] once per range.
    pub fn cmo_phys(&mut self, op: Cmo, pa: u64, len: u64) -> CmoResult {
        let mut r = CmoResult::default();
        if len == 0 {
            return r;
        }
        let first = pa & !(self.line - 1);
        let end = pa + len;
        let mut a = first;
        while a < end {
            // The lines of this page the range touches.
            let stop = ((a | (PAGE_SIZE - 1)) + 1).min(end);
            let n = (stop - a).div_ceil(self.line);
            r.lines += n;
            if !self.caches.page_may_be_cached(a) {
                // No cache holds a line of this page (the filter has no false
                // negatives): every line's operation finds nothing, and only counts.
                let (clean, inval) = match op {
                    Cmo::Clean => (n, 0),
                    Cmo::Invalidate => (0, n),
                    Cmo::CleanInvalidate => (n, n),
                };
                self.caches
                    .count_maintenance_of_uncached_lines(clean, inval);
                a += n * self.line;
                continue;
            }
            for _ in 0..n {
                match op {
                    Cmo::Clean => r.writebacks += u64::from(self.caches.clean(a, &mut self.dram)),
                    Cmo::Invalidate => r.discarded += u64::from(self.caches.invalidate(a)),
                    Cmo::CleanInvalidate => {
                        r.writebacks += u64::from(self.caches.clean_invalidate(a, &mut self.dram))
                    }
                }
                a += self.line;
            }
        }
        self.advance(r.lines * self.cost.cmo_line_ps + r.writebacks * self.cost.writeback_ps);
        r
    }

    /// One maintenance operation over a virtual range, as the kernel issues `DC` by VA:
    /// translated page by page, then line by line on the physical address.
    ///
    /// # Errors
    /// The first untranslatable address (maintenance on an unmapped VA faults).
    pub fn cmo_va(&mut self, asid: usize, op: Cmo, va: u64, len: u64) -> Result<CmoResult, u64> {
        self.check_mapped(asid, va, len)?;
        let mut total = CmoResult::default();
        let mut done = 0;
        while done < len {
            let v = va.wrapping_add(done);
            let (pa, _) = self.mmu.translate(asid, v).ok_or(v)?;
            let n = (PAGE_SIZE - (v & (PAGE_SIZE - 1))).min(len - done);
            let r = self.cmo_phys(op, pa, n);
            total.lines += r.lines;
            total.writebacks += r.writebacks;
            total.discarded += r.discarded;
            done += n;
        }
        Ok(total)
    }

    /// Charges the fixed part of a maintenance range (the barrier).
    pub fn cmo_fixed(&mut self) {
        self.advance(self.cost.cmo_fixed_ps);
    }

    /// A device reads `out.len()` bytes of physical memory through its port.
    ///
    /// # Errors
    /// [`BusError`] when the range is not RAM (nothing is read).
    pub fn port_read(&mut self, coherent: bool, pa: u64, out: &mut [u8]) -> Result<(), BusError> {
        if !self.dram.contains(pa, out.len() as u64) {
            return Err(BusError { pa });
        }
        self.stats.dma_bytes += out.len() as u64;
        if coherent {
            self.peek(pa, out);
        } else {
            self.dram.read(pa, out);
        }
        Ok(())
    }

    /// A device reads `len` bytes (inside one page) at `pa` and appends them to `out`
    /// (no zero-fill first: the DMA hot path).
    ///
    /// # Errors
    /// [`BusError`] when the range is not RAM (`out` grows by `len` zero bytes).
    pub fn port_read_append(
        &mut self,
        coherent: bool,
        pa: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), BusError> {
        if !self.dram.contains(pa, len as u64) {
            out.resize(out.len() + len, 0);
            return Err(BusError { pa });
        }
        self.stats.dma_bytes += len as u64;
        if !coherent {
            self.dram.read_append(pa, len, out);
            return Ok(());
        }
        if !crosses_page(pa, len as u64) && !self.caches.page_may_be_cached(pa) {
            // Nothing of this page is cached: the snoop finds nothing.
            self.dram.read_append(pa, len, out);
            return Ok(());
        }
        // DRAM's bytes, then the dirty lines the snoop finds on top (clean copies
        // equal DRAM). Appending first avoids zeroing the page only to overwrite it.
        let start = out.len();
        self.dram.read_append(pa, len, out);
        for (a, r) in line_pieces(pa, len, self.line as usize) {
            if let Some(d) = self.caches.dirty_copy(a) {
                let off = (a as usize) & (self.line as usize - 1);
                out[start + r.start..start + r.end].copy_from_slice(&d[off..off + r.len()]);
            }
        }
        Ok(())
    }

    /// Translates one device access through the IOMMU; the walker reads the tables
    /// through its port (snooping the CPU caches only when `coherent_walk`).
    ///
    /// # Errors
    /// The fault, recorded by the IOMMU.
    #[inline]
    pub fn iommu_translate(
        &mut self,
        stream: usize,
        iova: u64,
        write: bool,
    ) -> Result<iommu::Translation, iommu::FaultKind> {
        let coherent = self.iommu.coherent_walk;
        let (caches, dram) = (&self.caches, &self.dram);
        self.iommu.translate(stream, iova, write, |pa| {
            let mut b = [0u8; 8];
            if dram.contains(pa, 8) {
                if coherent {
                    caches.peek(pa, &mut b, dram);
                } else {
                    dram.read_in_frame(pa, &mut b);
                }
            }
            u64::from_le_bytes(b)
        })
    }

    /// A device writes `data` to physical memory through its port.
    ///
    /// # Errors
    /// [`BusError`] when the range is not RAM (nothing is written).
    pub fn port_write(&mut self, coherent: bool, pa: u64, data: &[u8]) -> Result<(), BusError> {
        if !self.dram.contains(pa, data.len() as u64) {
            return Err(BusError { pa });
        }
        self.stats.dma_bytes += data.len() as u64;
        // A page nothing caches needs no snoop (the filter has no false negatives).
        if coherent && (crosses_page(pa, data.len() as u64) || self.caches.page_may_be_cached(pa)) {
            let line = self.line as usize;
            for (a, r) in line_pieces(pa, data.len(), line) {
                self.caches.snoop_write(a, r.len() == line, &mut self.dram);
            }
        }
        self.dram.write(pa, data);
        Ok(())
    }

    /// The coherent view of physical memory (dirty cache lines over DRAM), without
    /// changing any state. The range must be RAM.
    pub fn peek(&self, pa: u64, out: &mut [u8]) {
        if !crosses_page(pa, out.len() as u64) && !self.caches.page_may_be_cached(pa) {
            // No cache holds a line of this page (the filter has no false
            // negatives): the coherent view is DRAM's, one copy instead of a cache
            // lookup per line.
            self.dram.read_in_frame(pa, out);
            return;
        }
        for (a, r) in line_pieces(pa, out.len(), self.line as usize) {
            self.caches.peek(a, &mut out[r], &self.dram);
        }
    }

    /// What the CPU would load at `pa` right now (the copy in any cache, else DRAM),
    /// without changing any state. The range must be RAM.
    pub fn cpu_view(&self, pa: u64, out: &mut [u8]) {
        // Clean cached copies can be stale against DRAM, so look them up too.
        for (a, r) in line_pieces(pa, out.len(), self.line as usize) {
            self.caches.cpu_view(a, &mut out[r], &self.dram);
        }
    }

    /// Speculatively fills the lines of `[pa, pa+len)` into `cpu`'s L1.
    pub fn prefetch_phys(&mut self, cpu: usize, pa: u64, len: u64) {
        let mut a = pa & !(self.line - 1);
        let mut filled = 0;
        while a < pa + len {
            if self.caches.prefetch(cpu, a, &mut self.dram, &mut self.rng) {
                self.stats.prefetched_lines += 1;
                filled += 1;
            }
            a += self.line;
        }
        if filled > 0 && self.dram.is_watched(pa) {
            self.watched_prefetches
                .push((pa & !(self.line - 1), filled));
        }
    }

    /// Writes back and drops every cached line.
    pub fn evict_all(&mut self) {
        self.caches.evict_all(&mut self.dram);
    }

    /// One noise point on `cpu`: maybe an eviction sweep, maybe a prefetch of a few
    /// lines of a page this CPU touched recently. Draws nothing when noise is off.
    pub fn noise_point(&mut self, cpu: usize) {
        if self.noise.evict > 0.0 && self.rng.chance(self.noise.evict) {
            self.stats.evict_sweeps += 1;
            self.stats.swept_lines += self.caches.evict_sweep(cpu, &mut self.dram, &mut self.rng);
        }
        if self.noise.prefetch > 0.0 && self.recent_len > 0 && self.rng.chance(self.noise.prefetch)
        {
            let page = self.recent[self.rng.below(self.recent_len)];
            let lines_per_page = (PAGE_SIZE / self.line) as usize;
            let first = self.rng.below(lines_per_page) as u64;
            let count = 1 + self.rng.below(8) as u64;
            let start = page + first * self.line;
            let len = (count * self.line).min(page + PAGE_SIZE - start);
            self.prefetch_phys(cpu, start, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NoiseConfig;

    const VA: u64 = 0xffff_0000_0000_0000;

    fn machine() -> Machine {
        let mut p = PlatformConfig::preset("arm64-noncoherent").unwrap();
        p.noise = NoiseConfig::OFF;
        let mut m = Machine::new(&p, 3, 1 << 16);
        m.mmu.map_block(
            0,
            mmu::Block {
                va: VA,
                pa: p.ram_base,
                len: 1 << 30,
                memtype: MemType::Normal,
            },
        );
        m.mmu.map_page(
            0,
            0xffff_8000_0000_0000,
            p.ram_base + 0x10_0000,
            MemType::NormalNc,
        );
        m
    }

    /// What a run of stores and loads leaves behind: DRAM bytes, what the CPUs
    /// read back, cache counters, write-backs to watched frames, the clock and the
    /// next numbers of the random stream.
    type Outcome = (Vec<u8>, Vec<u8>, cache::CacheStats, Vec<u64>, u64, Vec<u64>);

    /// Stores (whole pages, whole lines, parts of lines) and loads by 4 CPUs over
    /// 8 MiB (past L2, so victims are dirty and written back), with the whole-page
    /// short path on or off; also how many stores found their page in no cache.
    fn store_mix(fast: bool) -> (Outcome, usize) {
        let mut m = machine();
        m.caches.set_page_store_fast_path(fast);
        let pages = 2048u64;
        for p in (0..pages).step_by(7) {
            m.dram.set_watched(0x4000_0000 + p * 4096, true);
        }
        let mut work = SimRng::new(11);
        let mut uncached = 0;
        let mut got = vec![0u8; 4096];
        for step in 0..6000u64 {
            let cpu = work.below(4);
            let va = VA + work.below(pages as usize) as u64 * 4096;
            let fill = vec![step as u8; 4096];
            let (off, len) = match work.below(5) {
                0 | 1 => (0, 4096),
                2 => (1024, 2048),
                3 => (13, 100),
                _ => {
                    m.cpu_read(cpu, 0, va + 64, &mut got[..256]).unwrap();
                    continue;
                }
            };
            if off % 64 == 0 && !m.caches.page_may_be_cached(va - VA + 0x4000_0000) {
                uncached += 1;
            }
            m.cpu_write(cpu, 0, va + off, &fill[..len]).unwrap();
        }
        let mut dram = vec![0u8; (pages * 4096) as usize];
        m.dram.read(0x4000_0000, &mut dram);
        let stats = m.caches.stats;
        let wbs = std::mem::take(&mut m.caches.watched_writebacks);
        let now = m.now_ps();
        let next = (0..4).map(|_| m.rng.next_u64()).collect();
        let mut seen = vec![0u8; (pages * 4096) as usize];
        m.cpu_read(1, 0, VA, &mut seen).unwrap();
        ((dram, seen, stats, wbs, now, next), uncached)
    }

    #[test]
    fn maintenance_skips_uncached_pages_with_the_per_line_result() {
        // `cmo_phys` skips the line lookups of a page no cache holds. Two machines
        // get the same stores; one then runs maintenance ranges through
        // `cmo_phys`, the other line by line as before: results, cache counters,
        // DRAM and the clock must agree.
        let (mut fast, mut slow) = (machine(), machine());
        let mut work = SimRng::new(9);
        for step in 0..2000u64 {
            let va = VA + work.below(256) as u64 * 4096 + work.below(4000) as u64;
            let (cpu, data) = (work.below(4), [step as u8; 80]);
            fast.cpu_write(cpu, 0, va, &data).unwrap();
            slow.cpu_write(cpu, 0, va, &data).unwrap();
        }
        let base = fast.dram.base();
        let mut skipped = 0;
        for k in 0..400u64 {
            let op = [Cmo::Clean, Cmo::Invalidate, Cmo::CleanInvalidate][(k % 3) as usize];
            let pa = base + work.below(260) as u64 * 4096 + work.below(4096) as u64;
            let len = 1 + work.below(3 * 4096) as u64;
            skipped += usize::from(!fast.caches.page_may_be_cached(pa));
            let got = fast.cmo_phys(op, pa, len);
            let mut want = CmoResult::default();
            let mut a = pa & !(slow.line - 1);
            while a < pa + len {
                want.lines += 1;
                match op {
                    Cmo::Clean => {
                        want.writebacks += u64::from(slow.caches.clean(a, &mut slow.dram))
                    }
                    Cmo::Invalidate => want.discarded += u64::from(slow.caches.invalidate(a)),
                    Cmo::CleanInvalidate => {
                        want.writebacks +=
                            u64::from(slow.caches.clean_invalidate(a, &mut slow.dram));
                    }
                }
                a += slow.line;
            }
            slow.advance(
                want.lines * slow.cost.cmo_line_ps + want.writebacks * slow.cost.writeback_ps,
            );
            assert_eq!(got, want, "range {k}: {op:?} {pa:#x}+{len}");
            assert_eq!(fast.caches.stats, slow.caches.stats, "range {k}");
            assert_eq!(fast.now_ps(), slow.now_ps(), "range {k}");
        }
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        for p in 0..260u64 {
            fast.dram.read(base + p * 4096, &mut a);
            slow.dram.read(base + p * 4096, &mut b);
            assert_eq!(a, b, "DRAM page {p}");
        }
        // Both paths were taken.
        assert!(skipped > 20 && skipped < 380, "{skipped}");
    }

    #[test]
    fn peek_of_an_uncached_page_is_the_per_line_coherent_view() {
        // `peek` reads a page no cache holds straight from DRAM: after stores by
        // 4 CPUs (some lines dirty in an L1 or L2, some pages never cached, some
        // written back and dropped), every page and piece of a page must read as
        // the per-line coherent view (dirty copy, else DRAM) says.
        let mut m = machine();
        let mut work = SimRng::new(5);
        let pages = 512u64;
        for step in 0..3000u64 {
            let va = VA + work.below(pages as usize) as u64 * 4096 + work.below(4000) as u64;
            m.cpu_write(work.below(4), 0, va, &[step as u8; 96])
                .unwrap();
        }
        let mut uncached = 0;
        for p in 0..pages + 8 {
            let pa = m.dram.base() + p * 4096;
            uncached += usize::from(!m.caches.page_may_be_cached(pa));
            for (off, len) in [(0usize, 4096usize), (100, 900), (4000, 96)] {
                let mut fast = vec![0u8; len];
                m.peek(pa + off as u64, &mut fast);
                let mut slow = vec![0u8; len];
                for (a, r) in line_pieces(pa + off as u64, len, m.line as usize) {
                    m.caches.peek(a, &mut slow[r], &m.dram);
                }
                assert_eq!(fast, slow, "page {p} at +{off}");
            }
        }
        // Both paths were taken.
        assert!(
            uncached > 8 && uncached < (pages + 8) as usize,
            "{uncached}"
        );
    }

    #[test]
    fn whole_page_store_short_path_matches_line_by_line_stores() {
        // Caches::write_lines_of_uncached_page skips the lookups of stores into a
        // page no cache holds: bytes, counters, time and random stream must be those
        // of the line-by-line path (ensure_l1 on each line).
        let (fast, uncached) = store_mix(true);
        let (slow, _) = store_mix(false);
        assert!(uncached > 500, "the short path ran {uncached} times only");
        assert!(
            fast.2.writebacks > 10_000 && !fast.3.is_empty(),
            "{:?}",
            fast.2
        );
        assert!(fast.0 == slow.0, "DRAM bytes differ");
        assert!(fast.1 == slow.1, "the bytes the CPUs see differ");
        assert_eq!(fast.2, slow.2);
        assert_eq!(fast.3, slow.3);
        assert_eq!((fast.4, &fast.5), (slow.4, &slow.5));
    }

    #[test]
    fn ports_differ_exactly_in_snooping() {
        let mut m = machine();
        m.cpu_write(0, 0, VA + 0x2000, &[9; 64]).unwrap();
        let mut nc = [0u8; 64];
        m.port_read(false, 0x4000_2000, &mut nc).unwrap();
        assert_eq!(nc, [0; 64], "a non-coherent port reads stale DRAM");
        let mut co = [0u8; 64];
        m.port_read(true, 0x4000_2000, &mut co).unwrap();
        assert_eq!(co, [9; 64], "a coherent port sees the dirty line");
        assert_eq!(
            m.port_read(false, 0x1000, &mut nc),
            Err(BusError { pa: 0x1000 })
        );
    }

    #[test]
    fn maintenance_by_va_cleans_and_faults_on_holes() {
        let mut m = machine();
        m.cpu_write(0, 0, VA + 0x3000, &[5; 128]).unwrap();
        let r = m.cmo_va(0, Cmo::Clean, VA + 0x3000, 128).unwrap();
        assert_eq!((r.lines, r.writebacks), (2, 2));
        let mut d = [0u8; 128];
        m.port_read(false, 0x4000_3000, &mut d).unwrap();
        assert_eq!(d, [5; 128]);
        assert!(m.cmo_va(0, Cmo::Invalidate, 0x1234_0000, 64).is_err());
    }

    #[test]
    fn non_cacheable_accesses_bypass_the_caches_and_cost_more_to_read() {
        let mut m = machine();
        let t0 = m.now_ps();
        m.cpu_write(0, 0, 0xffff_8000_0000_0000, &[7; 64]).unwrap();
        let t_write = m.now_ps() - t0;
        let mut d = [0u8; 64];
        m.port_read(false, 0x4010_0000, &mut d).unwrap();
        assert_eq!(d, [7; 64], "the store went straight to DRAM");
        let t1 = m.now_ps();
        m.cpu_read(0, 0, 0xffff_8000_0000_0000, &mut d).unwrap();
        let t_read = m.now_ps() - t1;
        assert_eq!(m.stats.uncached_accesses, 8, "4 beats each way");
        assert!(t_read >= 3 * t_write, "reads {t_read} vs writes {t_write}");
        assert_eq!(m.caches.valid_lines(), 0);
    }
}
