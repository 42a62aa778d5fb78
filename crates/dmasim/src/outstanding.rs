//! Outstanding requests: what happens when a device has several transfers in flight
//! at once. Three things are shared and modelled here:
//!
//! - **A device's link.** Every transfer of one device moves its bytes over the
//!   device's one link at the device's `bandwidth`. Concurrent jobs take turns page
//!   piece by page piece (each piece books the link when the previous piece of its
//!   job ends), so K jobs started together each run at about 1/K of the bandwidth.
//!   The per-transfer `latency` is not shared: requests in flight overlap it, which is
//!   how a device that keeps N reads outstanding reaches its bandwidth with small
//!   reads (N × request time ≥ latency).
//! - **The IOMMU's page-table walker.** There is one walker; an IOTLB miss waits
//!   for it, then walks (the walk's descriptor reads cost
//!   [`IommuCost::walk_level_ps`](crate::hw::iommu::IommuCost) each), so misses of
//!   different devices at the same time queue.
//! - **In-order translation.** A device's requests go through the IOMMU in order:
//!   while one waits for its walk the ones behind it wait too (head-of-line
//!   blocking), so a miss delays every transfer of that device still in flight, and
//!   a stream of missing requests pays transfer + walk for each, not the larger of
//!   the two.
//!
//! With N reads of 64 B in flight, a 600 ns latency and 3.5 GB/s, a device reads
//! at its full bandwidth (18 ns per read) without an IOMMU; through an IOMMU with
//! 4 KiB IO pages over a window far larger than the IOTLB's reach every read misses
//! and costs 18 + 33 ns: 0.36× — the figure pcie-bench measured on an NFP-6000 with
//! VT-d (Neugebauer et al., "Understanding PCIe performance for end host
//! networking", SIGCOMM 2018; raw data `bw_dma_win_sweep_rd_rnd_64` in the
//! pcie-bench/data repository, perf-anchors §1.2: 0.35× at a 64 MiB window, 0.99×
//! at 256 KiB, no loss with superpages). [`System::stream_window`] runs that
//! benchmark from a script (`stream_to_device(dev, 64, n, #{ window, outstanding })`).
//!
//! Simplifications: a link is a single FIFO of page pieces (no PCIe credits, TLP
//! headers, or read-completion splitting; the `bandwidth` option is the payload rate);
//! the walker serves one walk at a time and its cost is the throughput cost the
//! IOMMU model was calibrated with, not the unloaded walk latency (pcie-bench's
//! single-read latency rises by 230–290 ns per miss; here by 33 ns); posted writes
//! are treated as reads (pcie-bench's 64 B write ratio is 0.46×, this model gives
//! the read figure); a stopped job gives back its booked piece only when nothing
//! was booked after it. A job alone on its device and on the walker runs exactly as
//! without this module: the model only changes timings when requests overlap.

use std::collections::VecDeque;

use serde::Serialize;

use crate::config::PAGE_SIZE;
use crate::kernel::dma::DmaDirection;
use crate::system::{Result, SimError, System};
use crate::throughput::StreamResult;

/// Most requests a window stream keeps in flight: 256, the PCIe Tag field with
/// Extended Tag Field Enable set (8-bit tags, one per outstanding non-posted
/// request of a function).
pub const MAX_OUTSTANDING: u64 = 256;

/// Counters of the shared paths (not in the report; a window stream's explanation
/// gives its own walker wait).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PathStats {
    /// Time page pieces waited for their device's link, ps.
    pub link_wait_ps: u64,
    /// Time IOTLB misses waited for the walker (not counting the walks), ps.
    pub walker_wait_ps: u64,
    /// Walks the walker did.
    pub walks: u64,
}

/// The links and the walker: when each is next free, in simulated ps.
#[derive(Debug, Clone, Default)]
pub struct SharedPaths {
    /// Per device (index): when its link finishes the last piece booked on it.
    link_free_ps: Vec<u64>,
    /// When the walker finishes the last walk it accepted.
    walker_free_ps: u64,
    /// Counters.
    pub stats: PathStats,
}

impl SharedPaths {
    /// Books `dur_ps` of device `dev`'s link for a piece that could start at
    /// `from_ps`. Returns how long it must wait (0 when the link is free then).
    pub fn book_link(&mut self, dev: usize, from_ps: u64, dur_ps: u64) -> u64 {
        if self.link_free_ps.len() <= dev {
            self.link_free_ps.resize(dev + 1, 0);
        }
        let free = &mut self.link_free_ps[dev];
        let start = from_ps.max(*free);
        *free = start.saturating_add(dur_ps);
        self.stats.link_wait_ps += start - from_ps;
        start - from_ps
    }

    /// Gives back a booked piece `[from_ps, end_ps)` of device `dev`'s link that will
    /// not run (its job was stopped), when nothing was booked after it.
    pub fn unbook_link(&mut self, dev: usize, from_ps: u64, end_ps: u64) {
        if let Some(free) = self.link_free_ps.get_mut(dev) {
            if *free == end_ps {
                *free = from_ps;
            }
        }
    }

    /// A walk of `cost_ps` asked for at `t_ps`: the delay to the request, its wait
    /// for the walker plus the walk.
    pub fn walk(&mut self, t_ps: u64, cost_ps: u64) -> u64 {
        let start = t_ps.max(self.walker_free_ps);
        self.walker_free_ps = start.saturating_add(cost_ps);
        self.stats.walks += 1;
        self.stats.walker_wait_ps += start - t_ps;
        self.walker_free_ps - t_ps
    }

    /// Device `dev`'s requests are held for `ps` from `t_ps` (a walk at the head
    /// of its queue): its link is not free before the hold ends, and every piece
    /// booked after `t_ps` moves back by `ps` (the caller moves those jobs).
    pub fn hold_link(&mut self, dev: usize, t_ps: u64, ps: u64) {
        if self.link_free_ps.len() <= dev {
            self.link_free_ps.resize(dev + 1, 0);
        }
        let free = &mut self.link_free_ps[dev];
        *free = (*free).max(t_ps).saturating_add(ps);
    }
}

/// A small deterministic generator for the offsets of a window stream (xorshift64*,
/// seeded per stream so a run's other random choices do not depend on it).
struct Offsets(u64);

impl Offsets {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((u128::from(x) * u128::from(n)) >> 64) as u64
    }
}

impl System {
    /// pcie-bench's bandwidth test from a script: device `dev` makes `count`
    /// requests of `size` bytes at random `size`-aligned offsets of a window the
    /// driver mapped once (the DMA segments of scatter-gather table `sgt`, mapped
    /// for `dev`), keeping `outstanding` of them in flight; reads for
    /// `DMA_TO_DEVICE`, writes of a pattern for `DMA_FROM_DEVICE`. Nothing is mapped
    /// or unmapped per request. The result is recorded for the report's `streams`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a bad device, direction, size, count, table (not
    /// mapped for `dev`, or segments shorter than `size`) or `outstanding`.
    pub fn stream_window(
        &mut self,
        dev: usize,
        size: u64,
        count: u64,
        dir: DmaDirection,
        sgt: u64,
        outstanding: u64,
    ) -> Result<StreamResult> {
        let name = self.stream_device(dev, dir)?;
        if !(1..=MAX_OUTSTANDING).contains(&outstanding) {
            return Err(SimError::Invalid(format!(
                "stream: outstanding is 1..={MAX_OUTSTANDING} (8-bit PCIe tags)"
            )));
        }
        if size == 0
            || size > crate::system::MAX_ACCESS
            || count == 0
            || count > crate::throughput::MAX_STREAM_COUNT
            || size.saturating_mul(count) > crate::throughput::MAX_STREAM_BYTES
        {
            return Err(SimError::Invalid(format!(
                "stream: size must be 1 byte to {}, count 1..={} and size × count at most {}",
                crate::units::human_size(crate::system::MAX_ACCESS),
                crate::throughput::MAX_STREAM_COUNT,
                crate::units::human_size(crate::throughput::MAX_STREAM_BYTES)
            )));
        }
        let t = self.sg(sgt)?;
        if t.mapped == 0 || t.dev != Some(dev) {
            return Err(SimError::Invalid(format!(
                "stream: the window (table #{sgt}) must be mapped for {name} with dma_map_sgtable first"
            )));
        }
        // Request slots per DMA segment: a request never crosses a segment's end.
        let mut segs: Vec<(u64, u64)> = Vec::new();
        let mut slots = 0u64;
        let mut window = 0u64;
        for e in &t.entries[..t.mapped] {
            window += e.dma_len;
            let n = e.dma_len / size;
            if n > 0 {
                slots += n;
                segs.push((slots, e.dma_address));
            }
        }
        if slots == 0 {
            return Err(SimError::Invalid(format!(
                "stream: the window's segments are shorter than one {size}-byte request"
            )));
        }
        let pattern: Vec<u8> = (0..size).map(|i| (i as u8) ^ 0x5a).collect();
        let mut rng = Offsets(0x9e37_79b9_7f4a_7c15 ^ (self.streams.len() as u64 + 1));
        let iommu0 = self.hw.iommu.stats;
        let paths0 = self.paths.stats;
        let t0 = self.hw.now_ps();
        let mut inflight: VecDeque<u64> = VecDeque::with_capacity(outstanding as usize);
        // Requests within one page are one piece each: they book the link in the
        // order they start and a walk's hold moves all of them alike, so they end
        // in that order and the oldest frees the next slot. A request over a page
        // boundary takes turns piece by piece and may end out of order.
        let mut in_order = true;
        for _ in 0..count {
            if inflight.len() as u64 == outstanding {
                let k = if in_order {
                    0
                } else {
                    // The slot that frees first takes the next request.
                    (0..inflight.len())
                        .min_by_key(|&k| (self.job_end_ps(inflight[k]).unwrap_or(0), k))
                        .expect("slots in flight")
                };
                let j = inflight.remove(k).expect("a slot in flight");
                self.wait(j)?;
            }
            let slot = rng.below(slots);
            let i = segs.partition_point(|&(end, _)| end <= slot);
            let first = if i == 0 { 0 } else { segs[i - 1].0 };
            let addr = segs[i].1 + (slot - first) * size;
            in_order &= (addr & (PAGE_SIZE - 1)) + size <= PAGE_SIZE;
            let data = (dir == DmaDirection::FromDevice).then(|| pattern.clone());
            let now = self.hw.now_ps();
            inflight.push_back(self.dev_start_at(dev, addr, size, data, now)?);
        }
        for j in inflight {
            self.wait(j)?;
        }
        let ns = (self.hw.now_ps() - t0) / 1000;
        let bytes = count * size;
        let st = self.hw.iommu.stats;
        let misses = st.iotlb_misses - iommu0.iotlb_misses;
        let lookups = misses + st.iotlb_hits - iommu0.iotlb_hits;
        let walker_wait_ns = (self.paths.stats.walker_wait_ps - paths0.walker_wait_ps) / 1000;
        let mb_s = if ns == 0 {
            0.0
        } else {
            bytes as f64 * 1000.0 / ns as f64
        };
        let overlap = if outstanding == 1 {
            "one in flight: each pays the device's latency in full"
        } else {
            "the requests in flight overlap their latencies, not their transfers or table walks"
        };
        let explain = format!(
            "{count} random {size}-byte {} over a {} window, {outstanding} in flight: {}; {overlap}{}",
            if dir == DmaDirection::ToDevice { "reads" } else { "writes" },
            crate::units::human_size(window),
            if lookups == 0 {
                "no IOMMU translation".to_string()
            } else {
                format!("{misses} of {lookups} IOTLB lookups missed, each holding up the device's requests for a table walk")
            },
            if walker_wait_ns > 0 {
                format!(" (walks waited {walker_wait_ns} ns for the shared walker)")
            } else {
                String::new()
            }
        );
        let r = StreamResult {
            device: name.to_string(),
            dir: dir.const_name(),
            size,
            count,
            done: count,
            failed_maps: 0,
            bytes,
            ns,
            mb_s,
            bounced: 0,
            copy_ns: 0,
            transfer_ns: ns,
            other_ns: 0,
            device_mb_s: mb_s,
            copy_mb_s: 0.0,
            model_mb_s: mb_s,
            explain,
            window: Some(window),
            outstanding: Some(outstanding),
            iotlb_misses: Some(misses),
        };
        self.streams.push(r.clone());
        self.check_limits()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_link_delays_the_next_piece_by_what_is_left() {
        let mut p = SharedPaths::default();
        assert_eq!(p.book_link(2, 1000, 500), 0);
        assert_eq!(p.book_link(2, 1200, 500), 300, "waits for the first piece");
        assert_eq!(
            p.book_link(1, 1200, 500),
            0,
            "another device's link is free"
        );
        assert_eq!(p.book_link(2, 5000, 10), 0, "free again later");
        assert_eq!(p.stats.link_wait_ps, 300);
    }

    #[test]
    fn misses_at_once_queue_for_the_one_walker() {
        let mut p = SharedPaths::default();
        assert_eq!(p.walk(100, 33), 33);
        assert_eq!(p.walk(110, 33), 23 + 33, "waits for the first walk");
        assert_eq!(p.walk(1000, 33), 33);
        assert_eq!(p.stats.walker_wait_ps, 23);
        assert_eq!(p.stats.walks, 3);
    }

    #[test]
    fn a_held_link_is_not_free_before_the_hold_ends() {
        let mut p = SharedPaths::default();
        p.book_link(0, 0, 100);
        p.hold_link(0, 50, 40);
        assert_eq!(
            p.book_link(0, 100, 10),
            40,
            "pieces booked behind move back"
        );
        p.hold_link(0, 1000, 40);
        assert_eq!(p.book_link(0, 1000, 10), 40, "an idle link is held from t");
    }

    #[test]
    fn a_stopped_piece_gives_the_link_back_only_when_it_was_the_last_booked() {
        let mut p = SharedPaths::default();
        p.book_link(0, 0, 100);
        p.unbook_link(0, 0, 100);
        assert_eq!(p.book_link(0, 10, 5), 0, "free again");
        p.book_link(0, 15, 100);
        p.unbook_link(0, 10, 15);
        assert_eq!(p.book_link(0, 20, 5), 95, "a later piece keeps its booking");
    }
}
