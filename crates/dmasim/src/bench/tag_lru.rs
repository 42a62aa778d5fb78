//! The peer `dmasim bench` sets the model's CPU figures beside: a tag-only
//! set-associative LRU cache, L1 32 KiB 8-way over L2 1 MiB 16-way with 64-byte
//! lines, the shape of the C model the issue measured dmasim against. It holds no
//! data and no coherence state, only tags, recency and a dirty bit per line, so it is
//! the cost of the bookkeeping every cache simulator must do; what dmasim does on top
//! (bytes, MESI, seeded victims, write streaming, the sanitizer's hooks) is the
//! difference the ratio shows.

/// One level: `ways` entries per set, each a tag and the time of its last use
/// (its top bit the dirty bit), side by side so that a set is one cache line or two.
struct Level {
    ways: usize,
    set_mask: u64,
    sets: Vec<(u64, u64)>,
}

/// The dirty bit of an entry's time.
const DIRTY: u64 = 1 << 63;

impl Level {
    fn new(size: u64, ways: usize) -> Level {
        let n = (size / LINE) as usize;
        Level {
            ways,
            set_mask: (n / ways) as u64 - 1,
            sets: vec![(u64::MAX, 0); n],
        }
    }

    /// Looks `line` up at time `now`; a miss replaces the least recently used way
    /// (invalid ways have time 0, so they go first). Returns whether it hit and the
    /// line a dirty victim leaves behind.
    #[inline(always)]
    fn access(&mut self, line: u64, write: bool, now: u64) -> (bool, Option<u64>) {
        let base = (line & self.set_mask) as usize * self.ways;
        let set = &mut self.sets[base..base + self.ways];
        let dirty = if write { DIRTY } else { 0 };
        if let Some(e) = set.iter_mut().find(|e| e.0 == line) {
            e.1 = now | (e.1 & DIRTY) | dirty;
            return (true, None);
        }
        let mut lru = 0;
        for (w, &(_, used)) in set.iter().enumerate() {
            if used & !DIRTY < set[lru].1 & !DIRTY {
                lru = w;
            }
        }
        let (tag, used) = set[lru];
        set[lru] = (line, now | dirty);
        (false, (used & DIRTY != 0).then_some(tag))
    }
}

/// Line size of both levels.
pub const LINE: u64 = 64;

/// Counters of the two levels.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TagStats {
    /// Accesses that hit in L1.
    pub l1_hits: u64,
    /// Accesses that missed L1 and hit L2.
    pub l2_hits: u64,
    /// Accesses that missed both.
    pub misses: u64,
    /// Dirty L2 victims (write-backs to memory).
    pub writebacks: u64,
}

/// L1 over L2, non-inclusive: an L1 miss fills from L2 (filling L2 on its own miss),
/// a dirty L1 victim is written into L2.
pub struct TagLru {
    l1: Level,
    l2: Level,
    now: u64,
    /// Counters.
    pub stats: TagStats,
}

impl Default for TagLru {
    fn default() -> Self {
        TagLru {
            l1: Level::new(32 << 10, 8),
            l2: Level::new(1 << 20, 16),
            now: 0,
            stats: TagStats::default(),
        }
    }
}

impl TagLru {
    /// One load or store of the line holding byte address `addr`.
    #[inline]
    pub fn access(&mut self, addr: u64, write: bool) {
        let line = addr / LINE;
        self.now += 1;
        let (hit, victim) = self.l1.access(line, write, self.now);
        if hit {
            self.stats.l1_hits += 1;
            return;
        }
        match self.l2.access(line, false, self.now) {
            (true, _) => self.stats.l2_hits += 1,
            (false, wb) => {
                self.stats.misses += 1;
                self.stats.writebacks += u64::from(wb.is_some());
            }
        }
        if let Some(v) = victim {
            let (_, wb) = self.l2.access(v, true, self.now);
            self.stats.writebacks += u64::from(wb.is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_way_is_the_victim() {
        // Nine lines of one L1 set (64 sets apart): the ninth evicts the one used
        // longest ago, which is line 1 once line 0 has been touched again.
        let mut c = TagLru::default();
        let stride = 64 * LINE;
        for i in 0..8 {
            c.access(i * stride, false);
        }
        c.access(0, false);
        c.access(8 * stride, false);
        assert_eq!(c.stats.l1_hits, 1);
        c.access(0, false);
        assert_eq!(c.stats.l1_hits, 2, "line 0 was used recently and stays");
        c.access(stride, false);
        assert_eq!(c.stats.l1_hits, 2, "line 1 was the victim");
        assert_eq!(c.stats.l2_hits, 1, "and L2 still holds it");
    }

    #[test]
    fn a_stream_larger_than_l2_misses_every_line_and_writes_back_what_leaves_l2() {
        let mut c = TagLru::default();
        let lines = (4u64 << 20) / LINE;
        for l in 0..lines {
            c.access(l * LINE, true);
        }
        assert_eq!(c.stats.misses, lines);
        assert_eq!(c.stats.l1_hits + c.stats.l2_hits, 0);
        // Every dirty line but those still in L1 (512) or L2 (16 384) left L2 dirty;
        // an L1 victim's write into L2 finds the line L2 filled on the miss.
        assert_eq!(c.stats.writebacks, lines - (1 << 20) / LINE);
    }

    #[test]
    fn an_l1_sized_working_set_hits_l1_after_the_first_pass() {
        let mut c = TagLru::default();
        for _ in 0..3 {
            for l in 0..256 {
                c.access(l * LINE, true);
            }
        }
        assert_eq!((c.stats.misses, c.stats.l1_hits), (256, 512));
    }
}
