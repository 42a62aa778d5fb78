//! What `dmasim replay --html` draws: every mapping's life per device (map to
//! unmap, allocation to free) on the trace's own clock, and the occupancy of the
//! swiotlb pool and of the IOVA spaces over time. Collected only when asked for
//! ([`super::ReplayOptions::timeline`]); memory stays bounded on any trace: at
//! most [`MAX_SPANS`] lives are kept (the rest are counted) and occupancy is the
//! highest value seen in each of [`BUCKETS`] equal slices of the trace's time.

use serde::Serialize;

/// Mapping lives kept at most.
pub const MAX_SPANS: usize = 20_000;
/// Occupancy samples: the maximum within each of this many slices of time.
pub const BUCKETS: usize = 600;

/// What a life is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// `dma_map_page` / `dma_map_phys`.
    Map,
    /// `dma_map_sg`.
    Sg,
    /// `dma_alloc*`.
    Alloc,
}

/// One mapping's or allocation's life.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    /// Trace device index.
    pub dev: u32,
    /// Trace line of the map.
    pub line: u32,
    /// Trace time of the map, ns.
    pub start_ns: u64,
    /// Trace time of the unmap, or `None` while live at the end.
    pub end_ns: Option<u64>,
    /// Bytes.
    pub bytes: u64,
    /// Map, sg or allocation.
    pub kind: SpanKind,
    /// Went through swiotlb in the model.
    pub bounced: bool,
}

/// The collected timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    /// First and last trace timestamps, ns.
    pub t0_ns: u64,
    /// Last trace timestamp, ns.
    pub t1_ns: u64,
    /// Lives, in map order.
    pub spans: Vec<Span>,
    /// Lives not kept past [`MAX_SPANS`].
    pub dropped: u64,
    /// Most swiotlb slots in use in each slice.
    pub swiotlb_slots: Vec<u64>,
    /// Slots in the pool.
    pub swiotlb_total: u64,
    /// Most IOVA pages allocated (all domains, per-CPU caches included) in each slice.
    pub iova_pages: Vec<u64>,
}

/// Index of a kept span; `NONE` when not kept.
pub type SpanId = u32;
/// No span.
pub const NONE: SpanId = u32::MAX;

impl Timeline {
    /// An empty timeline over `[t0, t1]` (trace ns).
    pub fn new(t0_ns: u64, t1_ns: u64, swiotlb_total: u64) -> Timeline {
        Timeline {
            t0_ns,
            t1_ns: t1_ns.max(t0_ns + 1),
            spans: Vec::new(),
            dropped: 0,
            swiotlb_slots: vec![0; BUCKETS],
            swiotlb_total,
            iova_pages: vec![0; BUCKETS],
        }
    }

    fn bucket(&self, ts: u64) -> usize {
        let span = u128::from(self.t1_ns - self.t0_ns);
        let off = u128::from(ts.saturating_sub(self.t0_ns)).min(span);
        ((off * (BUCKETS as u128 - 1)) / span) as usize
    }

    /// A life begins.
    pub fn open(
        &mut self,
        dev: u32,
        line: u32,
        ts: u64,
        bytes: u64,
        kind: SpanKind,
        bounced: bool,
    ) -> SpanId {
        if self.spans.len() >= MAX_SPANS {
            self.dropped += 1;
            return NONE;
        }
        self.spans.push(Span {
            dev,
            line,
            start_ns: ts,
            end_ns: None,
            bytes,
            kind,
            bounced,
        });
        (self.spans.len() - 1) as SpanId
    }

    /// A life ends.
    pub fn close(&mut self, id: SpanId, ts: u64) {
        if let Some(s) = self.spans.get_mut(id as usize) {
            s.end_ns = Some(ts.max(s.start_ns));
        }
    }

    /// Occupancy at `ts`.
    pub fn sample(&mut self, ts: u64, slots: u64, iova_pages: u64) {
        let b = self.bucket(ts);
        self.swiotlb_slots[b] = self.swiotlb_slots[b].max(slots);
        self.iova_pages[b] = self.iova_pages[b].max(iova_pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_keeps_each_slices_maximum_and_spans_are_capped() {
        let mut t = Timeline::new(1000, 1000 + 600_000, 64);
        t.sample(1000, 3, 0);
        t.sample(1500, 7, 2);
        t.sample(1800, 5, 1);
        assert_eq!((t.swiotlb_slots[0], t.iova_pages[0]), (7, 2));
        t.sample(u64::MAX, 9, 9);
        assert_eq!(
            t.swiotlb_slots[BUCKETS - 1],
            9,
            "past the end: the last slice"
        );
        for i in 0..MAX_SPANS + 5 {
            let id = t.open(0, 1, 1000 + i as u64, 64, SpanKind::Map, false);
            t.close(id, 2000);
        }
        assert_eq!((t.spans.len(), t.dropped), (MAX_SPANS, 5));
        assert!(t
            .spans
            .iter()
            .all(|s| s.end_ns == Some(2000.max(s.start_ns))));
    }
}
