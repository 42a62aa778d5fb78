//! The live mappings, indexed by bus address, by physical address and by first cache
//! line, so that every lookup costs a hash probe or a short ordered-set walk instead
//! of a scan of all mappings (dma-debug hashes by `dev_addr >> 13` for the same
//! reason).

use std::cell::Cell;

use super::ordset::OrdSet;
use crate::fasthash::PageMap;

/// The bus index's key: device and bus address in one integer.
#[inline(always)]
fn bus_key(dev: usize, addr: u64) -> u128 {
    ((dev as u128) << 64) | u128::from(addr)
}

/// Two words in one key, `hi` first: sorts as the pair `(hi, lo)`.
#[inline(always)]
fn pair(hi: u64, lo: u64) -> u128 {
    (u128::from(hi) << 64) | u128::from(lo)
}

/// What the index needs to know of an entry.
pub(super) trait Indexed {
    fn dev(&self) -> usize;
    fn dev_addr(&self) -> u64;
    fn phys(&self) -> u64;
    fn size(&self) -> u64;
    /// The physically contiguous runs `(phys, offset in the entry, len)` of a
    /// scattered entry, sorted by `phys`; empty when the entry is the one run
    /// `[phys, phys + size)`.
    fn runs(&self) -> &[(u64, u64, u64)];
}

/// Every physical run of `e`, `(phys, offset, len)`.
fn phys_runs<E: Indexed>(e: &E) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let whole = e.runs().is_empty().then_some((e.phys(), 0, e.size()));
    whole.into_iter().chain(e.runs().iter().copied())
}

/// The physical run of `e` that holds `pa`, `(phys, offset, len)`.
fn run_holding<E: Indexed>(e: &E, pa: u64) -> Option<(u64, u64, u64)> {
    let runs = e.runs();
    if runs.is_empty() {
        return (pa >= e.phys() && pa - e.phys() < e.size()).then_some((e.phys(), 0, e.size()));
    }
    let i = runs.partition_point(|r| r.0 <= pa).checked_sub(1)?;
    let r = runs[i];
    (pa - r.0 < r.2).then_some(r)
}

/// The part of `[pa, end)` (inside one page) that lies in one of `e`'s physical
/// runs: `(start, end, offset of start in the entry)`.
pub(super) fn piece_of<E: Indexed>(e: &E, pa: u64, end: u64) -> Option<(u64, u64, u64)> {
    // The run holding `pa`, or else the first run that starts inside the range.
    let (rpa, off, len) = run_holding(e, pa).or_else(|| {
        let first = if e.runs().is_empty() {
            (e.phys(), 0, e.size())
        } else {
            *e.runs().get(e.runs().partition_point(|r| r.0 <= pa))?
        };
        (first.0 > pa && first.0 < end).then_some(first)
    })?;
    let (s, t) = (pa.max(rpa), end.min(rpa + len));
    (s < t).then(|| (s, t, off + (s - rpa)))
}

/// Live entries with their indexes.
pub(super) struct Entries<E> {
    /// Entry, the first line it is indexed under, and whether it counts in
    /// `overlapping`; boxed so that inserting and removing moves a pointer, not the
    /// whole entry. Hashed by id: anything that lists entries sorts the ids, so the
    /// order never depends on the hash.
    map: PageMap<(Box<E>, Option<u64>, bool)>,
    /// ((device << 64) | bus address, id): one wide compare per search step.
    by_bus: OrdSet<(u128, u64)>,
    /// (physical address << 64) | id.
    by_phys: OrdSet<u128>,
    /// (first line, id) of the entries the overlap check tracks.
    by_first_line: OrdSet<u128>,
    /// Largest size ever inserted: bounds how far back a containing lookup looks.
    max_size: u64,
    /// Largest physical run ever inserted: the same bound for physical lookups.
    max_run: u64,
    /// The entry the last containing lookup found: consecutive pieces of one
    /// transfer hit the same mapping, so it is tried first. (With overlapping
    /// mappings this may pick another valid container than the walk would; the
    /// choice still depends only on the run's history, so runs stay deterministic.)
    last: Cell<u64>,
    /// Live entries that may overlap another entry of their device's bus range:
    /// those that did when they were inserted, and every entry inserted while
    /// this was not zero. While it is zero, each device's entries are pairwise
    /// disjoint (an overlapping pair has a flagged member), so the only entry that
    /// can hold an address is the one starting last at or below it.
    overlapping: usize,
}

impl<E: Indexed> Entries<E> {
    pub(super) fn new() -> Self {
        Entries {
            map: PageMap::default(),
            by_bus: OrdSet::new(),
            by_phys: OrdSet::new(),
            by_first_line: OrdSet::new(),
            max_size: 1,
            max_run: 1,
            last: Cell::new(0),
            overlapping: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Inserts entry `id`; `first_line` indexes it for the overlap check when given.
    pub(super) fn insert(&mut self, id: u64, e: E, first_line: Option<u64>) {
        self.max_size = self.max_size.max(e.size().max(1));
        // With the entries disjoint so far, a new one overlaps another exactly
        // when it overlaps the entry before it or the one after it.
        let flagged = self.overlapping > 0 || self.overlaps_neighbour(&e);
        self.overlapping += usize::from(flagged);
        self.by_bus.insert((bus_key(e.dev(), e.dev_addr()), id));
        for (pa, _, len) in phys_runs(&e) {
            self.max_run = self.max_run.max(len.max(1));
            self.by_phys.insert(pair(pa, id));
        }
        if let Some(l) = first_line {
            self.by_first_line.insert(pair(l, id));
        }
        self.map.insert(id, (Box::new(e), first_line, flagged));
    }

    /// Whether `e`'s bus range meets that of the entry of its device starting
    /// last at or before it, or first after it.
    fn overlaps_neighbour(&self, e: &E) -> bool {
        let (dev, start) = (e.dev(), e.dev_addr());
        let end = start.saturating_add(e.size().max(1));
        let key = bus_key(dev, start);
        let before = self.by_bus.range(..=(key, u64::MAX)).next_back();
        let after = self.by_bus.range((key, u64::MAX)..).next();
        let meets = |&&(_, id): &&(u128, u64)| {
            let o = &self.map[&id].0;
            o.dev() == dev
                && o.dev_addr() < end
                && start < o.dev_addr().saturating_add(o.size().max(1))
        };
        before.is_some_and(|k| meets(&k)) || after.is_some_and(|k| meets(&k))
    }

    pub(super) fn remove(&mut self, id: u64) -> Option<Box<E>> {
        let (e, first_line, flagged) = self.map.remove(&id)?;
        self.overlapping -= usize::from(flagged);
        self.by_bus.remove(&(bus_key(e.dev(), e.dev_addr()), id));
        for (pa, _, _) in phys_runs(&*e) {
            self.by_phys.remove(&pair(pa, id));
        }
        if let Some(l) = first_line {
            self.by_first_line.remove(&pair(l, id));
        }
        Some(e)
    }

    pub(super) fn get(&self, id: u64) -> &E {
        &self.map[&id].0
    }

    /// Entry `id` if it is live.
    pub(super) fn try_get(&self, id: u64) -> Option<&E> {
        self.map.get(&id).map(|(e, ..)| &**e)
    }

    pub(super) fn get_mut(&mut self, id: u64) -> &mut E {
        &mut self.map.get_mut(&id).expect("live entry").0
    }

    /// Every live id, in order.
    pub(super) fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.map.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The first entry of `dev` mapped exactly at `addr`.
    pub(super) fn exact(&self, dev: usize, addr: u64) -> Option<u64> {
        self.by_bus
            .range((bus_key(dev, addr), 0)..=(bus_key(dev, addr), u64::MAX))
            .next()
            .map(|&(_, id)| id)
    }

    /// The first entry of `dev` mapped exactly at `addr` that `pred` accepts.
    pub(super) fn exact_where(
        &self,
        dev: usize,
        addr: u64,
        pred: impl Fn(&E) -> bool,
    ) -> Option<u64> {
        self.by_bus
            .range((bus_key(dev, addr), 0)..=(bus_key(dev, addr), u64::MAX))
            .map(|&(_, id)| id)
            .find(|id| pred(&self.map[id].0))
    }

    /// The first entry of `dev` (in bus-address order) whose range holds `addr` (and
    /// `len` bytes from it, when `len` is given) and that `pred` accepts.
    pub(super) fn containing(
        &self,
        dev: usize,
        addr: u64,
        len: Option<u64>,
        pred: impl Fn(&E) -> bool,
    ) -> Option<u64> {
        let fits = |e: &E| {
            e.dev() == dev
                && addr >= e.dev_addr()
                && addr - e.dev_addr() < e.size().max(1)
                && len.is_none_or(|l| l <= e.size() - (addr - e.dev_addr()))
                && pred(e)
        };
        let last = self.last.get();
        if self.map.get(&last).is_some_and(|(e, ..)| fits(e)) {
            return Some(last);
        }
        if self.overlapping == 0 {
            // Disjoint entries: only the one starting last at or below `addr` can
            // hold it (the walk below would find the same one, visiting every
            // entry in the `max_size` before it).
            let found = self
                .by_bus
                .range(..=(bus_key(dev, addr), u64::MAX))
                .next_back()
                .map(|&(_, id)| id)
                .filter(|id| fits(&self.map[id].0));
            if let Some(id) = found {
                self.last.set(id);
            }
            return found;
        }
        let from = addr.saturating_sub(self.max_size - 1);
        // From the lower bound on, stopping past `addr` (one descent of the tree
        // instead of the two a closed range makes).
        let to = bus_key(dev, addr);
        let found = self
            .by_bus
            .range((bus_key(dev, from), 0)..)
            .take_while(|&&(k, _)| k <= to)
            .map(|&(_, id)| id)
            .find(|id| fits(&self.map[id].0));
        if let Some(id) = found {
            self.last.set(id);
        }
        found
    }

    /// An entry of `dev` whose IOVA range, widened to whole `granule`s (what an
    /// IOMMU maps for it), holds `[addr, addr+len)`: a device access there reaches
    /// memory the IOMMU lets through although the mapping does not cover it.
    pub(super) fn granule_holding(
        &self,
        dev: usize,
        addr: u64,
        len: u64,
        granule: u64,
    ) -> Option<u64> {
        let end = addr.checked_add(len)?;
        let from = addr.saturating_sub(self.max_size.saturating_add(granule));
        let to = addr.saturating_add(granule);
        self.by_bus
            .range((bus_key(dev, from), 0)..=(bus_key(dev, to), u64::MAX))
            .map(|&(_, id)| id)
            .find(|id| {
                let e = &self.map[id].0;
                let lo = e.dev_addr() & !(granule - 1);
                let hi = e
                    .dev_addr()
                    .saturating_add(e.size().max(1))
                    .checked_next_multiple_of(granule)
                    .unwrap_or(u64::MAX);
                e.dev() == dev && addr >= lo && end <= hi
            })
    }

    /// Ids of the entries whose physical range overlaps `[pa, end)`.
    pub(super) fn overlapping_phys(&self, pa: u64, end: u64) -> Vec<u64> {
        let from = pa.saturating_sub(self.max_run - 1);
        let mut ids: Vec<u64> = Vec::new();
        for &k in self.by_phys.range(pair(from, 0)..pair(end, 0)) {
            let (run_pa, id) = ((k >> 64) as u64, k as u64);
            let e = &self.map[&id].0;
            let len = run_holding(&**e, run_pa).map_or(0, |r| r.2);
            // Only a scattered entry can meet the range with two runs.
            if run_pa + len > pa && (e.runs().is_empty() || !ids.contains(&id)) {
                ids.push(id);
            }
        }
        ids
    }

    /// An entry whose first line is `line`, if any.
    pub(super) fn with_first_line(&self, line: u64) -> Option<u64> {
        self.by_first_line
            .range(pair(line, 0)..=pair(line, u64::MAX))
            .next()
            .map(|&k| k as u64)
    }

    /// Ids of `dev`'s entries (all devices for `None`).
    pub(super) fn of_device(&self, dev: Option<usize>) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, (e, ..))| dev.is_none_or(|d| e.dev() == d))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A bare mapping: device, bus address, size.
    struct M(usize, u64, u64);

    impl Indexed for M {
        fn dev(&self) -> usize {
            self.0
        }
        fn dev_addr(&self) -> u64 {
            self.1
        }
        fn phys(&self) -> u64 {
            self.1
        }
        fn size(&self) -> u64 {
            self.2
        }
        fn runs(&self) -> &[(u64, u64, u64)] {
            &[]
        }
    }

    proptest! {
        /// Whatever was inserted and removed (overlapping or not), `containing`
        /// finds an entry that holds the range exactly when one exists; and while
        /// the live entries are disjoint it finds that one, whichever it tried
        /// first. Page-granular addresses in a small window make overlaps, reuse of
        /// freed ranges and neighbours of several devices common.
        #[test]
        fn containing_finds_the_holder_with_or_without_overlaps(
            ops in proptest::collection::vec((0u8..3, 0usize..2, 0u64..64, 1u64..6), 1..300),
            probes in proptest::collection::vec((0usize..2, 0u64..70 * 4096, 1u64..8192), 1..40),
        ) {
            let mut es: Entries<M> = Entries::new();
            let mut live: Vec<(u64, usize, u64, u64)> = Vec::new();
            for (i, (op, dev, page, pages)) in ops.into_iter().enumerate() {
                if op == 0 && !live.is_empty() {
                    let (id, ..) = live.remove(page as usize % live.len());
                    prop_assert!(es.remove(id).is_some());
                } else {
                    let id = i as u64 + 1;
                    es.insert(id, M(dev, page * 4096, pages * 4096), None);
                    live.push((id, dev, page * 4096, pages * 4096));
                }
                for &(dev, addr, len) in &probes {
                    let holders: Vec<u64> = live
                        .iter()
                        .filter(|&&(_, d, a, s)| d == dev && addr >= a && addr + len <= a + s)
                        .map(|&(id, ..)| id)
                        .collect();
                    let got = es.containing(dev, addr, Some(len), |_| true);
                    match got {
                        Some(id) => prop_assert!(holders.contains(&id), "{id} holds nothing"),
                        None => prop_assert!(holders.is_empty(), "missed {holders:?}"),
                    }
                }
                if es.overlapping == 0 {
                    // Disjoint: no two live entries of a device meet.
                    for (k, &(_, d, a, s)) in live.iter().enumerate() {
                        for &(_, d2, a2, s2) in &live[k + 1..] {
                            prop_assert!(d != d2 || a + s <= a2 || a2 + s2 <= a);
                        }
                    }
                }
            }
            // Once every entry is gone, the index is back to disjoint.
            for (id, ..) in live.drain(..) {
                es.remove(id);
            }
            prop_assert_eq!(es.overlapping, 0);
        }
    }

    /// Each new page of a transfer over many small disjoint mappings is found
    /// without walking the mappings before it: the disjoint path answers from the
    /// one neighbour below the address.
    #[test]
    fn disjoint_mappings_take_the_direct_path() {
        let mut es: Entries<M> = Entries::new();
        // One large mapping far below, which sets how far back the walk would look.
        es.insert(1, M(0, 0, 64 << 20), None);
        for p in 0..1000u64 {
            es.insert(p + 2, M(0, (64 << 20) + p * 4096, 4096), None);
        }
        assert_eq!(es.overlapping, 0);
        for p in 0..1000u64 {
            assert_eq!(
                es.containing(0, (64 << 20) + p * 4096 + 8, Some(64), |_| true),
                Some(p + 2)
            );
        }
        // An overlapping mapping turns the walk back on, and it still answers.
        es.insert(5000, M(0, (64 << 20) + 4096, 8192), None);
        assert_eq!(es.overlapping, 1);
        assert!(es
            .containing(0, (64 << 20) + 4096, Some(4096), |_| true)
            .is_some_and(|id| id == 3 || id == 5000));
        es.remove(5000);
        assert_eq!(es.overlapping, 0);
    }
}
