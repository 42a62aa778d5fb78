//! `struct page` for the pages user space owns: reference count with the pin bias
//! (`include/linux/mm.h`), the owner it is mapped at (a one-entry reverse map), and
//! mlock. Kept sparse (only user pages have an entry), so host memory follows the
//! pages touched, not RAM.

use crate::fasthash::PageMap;

/// `GUP_PIN_COUNTING_BIAS`: a FOLL_PIN reference adds 1024 to the refcount.
pub const GUP_PIN_COUNTING_BIAS: u32 = 1 << 10;

/// Where a user page is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Virtual address of the page in that process.
    pub va: u64,
}

/// The `struct page` fields the model needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// `_refcount`: 1 for the mapping, +1 per `get_user_pages`, +1024 per pin.
    pub refcount: u32,
    /// The reverse map (one mapping per page: no sharing between processes yet).
    pub owner: Owner,
    /// `PG_mlocked`.
    pub mlocked: bool,
    /// Part of a hugetlb page (never migrated or swapped here).
    pub hugetlb: bool,
}

impl Page {
    /// `folio_maybe_dma_pinned()` for a small folio: refcount ≥ the bias (may give a
    /// false positive after 1024 plain references, never a false negative).
    pub fn maybe_dma_pinned(&self) -> bool {
        self.refcount >= GUP_PIN_COUNTING_BIAS
    }

    /// Migration needs the refcount to be exactly what the mappings explain
    /// (`folio_migrate_mapping` fails with -EAGAIN otherwise): any extra reference,
    /// a pin or a plain `get_user_pages`, keeps the page where it is.
    pub fn movable(&self) -> bool {
        self.refcount == 1 && !self.hugetlb
    }
}

/// Why a frame no longer holds the user page it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vacated {
    /// Migrated (compaction or background migration) to another frame.
    Migrated {
        /// Where the page went.
        to_pfn: u64,
    },
    /// The process unmapped it.
    Unmapped,
    /// Reclaim swapped it out.
    Swapped,
}

/// A frame that held a user page once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// Whose page it was.
    pub owner: Owner,
    /// What happened.
    pub why: Vacated,
    /// When (ns).
    pub time_ns: u64,
}

/// All user pages, and the frames user pages left.
#[derive(Default)]
pub struct Pages {
    live: PageMap<Page>,
    /// Frames vacated by user pages (the latest event per frame).
    pub tombstones: PageMap<Tombstone>,
}

impl Pages {
    /// The page at `pfn`, if user space owns it.
    pub fn get(&self, pfn: u64) -> Option<&Page> {
        self.live.get(&pfn)
    }

    /// Mutable access to the page at `pfn`.
    pub fn get_mut(&mut self, pfn: u64) -> Option<&mut Page> {
        self.live.get_mut(&pfn)
    }

    /// A new user page. The frame's tombstone, if any, stays: a device still holding
    /// the old page's address now reaches the new owner.
    pub fn insert(&mut self, pfn: u64, owner: Owner) {
        self.live.insert(
            pfn,
            Page {
                refcount: 1,
                hugetlb: false,
                owner,
                mlocked: false,
            },
        );
    }

    /// The page leaves `pfn`.
    pub fn vacate(&mut self, pfn: u64, why: Vacated, time_ns: u64) -> Option<Page> {
        let p = self.live.remove(&pfn)?;
        self.tombstones.insert(
            pfn,
            Tombstone {
                owner: p.owner,
                why,
                time_ns,
            },
        );
        Some(p)
    }

    /// Every user page with its frame number (in no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Page)> {
        self.live.iter().map(|(&pfn, p)| (pfn, p))
    }

    /// Number of user pages.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when user space owns no page.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Pinned pages right now.
    pub fn pinned(&self) -> u64 {
        self.live.values().filter(|p| p.maybe_dma_pinned()).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_use_the_bias_and_block_migration() {
        let mut ps = Pages::default();
        ps.insert(7, Owner { pid: 1, va: 0x1000 });
        assert!(ps.get(7).unwrap().movable());
        ps.get_mut(7).unwrap().refcount += GUP_PIN_COUNTING_BIAS;
        assert!(ps.get(7).unwrap().maybe_dma_pinned());
        assert!(!ps.get(7).unwrap().movable());
        ps.get_mut(7).unwrap().refcount -= GUP_PIN_COUNTING_BIAS;
        ps.get_mut(7).unwrap().refcount += 1;
        assert!(!ps.get(7).unwrap().maybe_dma_pinned());
        assert!(
            !ps.get(7).unwrap().movable(),
            "a plain get_user_pages reference also blocks migration"
        );
        let old = ps.vacate(7, Vacated::Migrated { to_pfn: 9 }, 5).unwrap();
        assert_eq!(old.owner.pid, 1);
        assert_eq!(ps.tombstones[&7].why, Vacated::Migrated { to_pfn: 9 });
        ps.insert(7, Owner { pid: 2, va: 0 });
        assert!(
            ps.tombstones.contains_key(&7),
            "the frame remembers whose page left it"
        );
    }
}
