//! The oracle: what every watched byte would hold on a perfectly coherent machine.
//!
//! Pages enter the oracle when a DMA buffer on them is mapped or allocated; their
//! first contents are the coherent view (dirty cache lines over DRAM). From then on a
//! CPU store and a device write through a mapping update the oracle, and every read —
//! by the CPU through its caches, by a device through its port — is compared with it.
//! A difference is corruption that manifested. Pages stay while anything holds them
//! (a live mapping, or the buffer until it is freed) and their DRAM frames carry the
//! "watched" bit so that unwatched accesses pay one bit test.
//!
//! A device write of a whole page leaves DRAM equal to the truth there, so the page
//! then shares DRAM's frame instead of copying it ([`Oracle::store_device`]); either
//! side copies the frame before its next change (`Rc::make_mut`, and
//! [`Dram`](crate::hw::dram::Dram)'s own copy on write).

use std::rc::Rc;

use crate::config::{PAGE_SHIFT, PAGE_SIZE};
use crate::fasthash::PageMap;
use crate::hw::dram::SharedFrame;
use crate::hw::Machine;

struct Page {
    data: SharedFrame,
    refs: u32,
    /// DRAM may hold other bytes than the truth here: set by cacheable CPU stores
    /// (the new bytes may sit in a dirty line) and by write-backs; cleared when a
    /// whole-page comparison found them equal. While it is clear, a device read of
    /// DRAM needs no comparison.
    dram_may_differ: bool,
}

/// Pages per chunk of [`PageTable`] (2 MiB of physical address space).
const CHUNK_PAGES: usize = 512;

/// The held pages of one 2 MiB stretch of physical memory, by page index.
struct Chunk {
    pages: [Option<Page>; CHUNK_PAGES],
    held: usize,
}

/// The oracle's pages by physical address: a map of 2 MiB chunks, each an array of
/// pages. A device transfer or a CPU stream looks its pages up one after the other;
/// neighbouring pages share a chunk and sit next to each other in it, where a map
/// keyed by page put every page's entry at a random place (a cache miss or two per
/// 4 KiB page on a large transfer, with the transfer's copies evicting the map).
#[derive(Default)]
struct PageTable {
    chunks: PageMap<Box<Chunk>>,
    len: usize,
}

impl PageTable {
    fn split(p: &u64) -> (u64, usize) {
        (
            p >> (PAGE_SHIFT + 9),
            (*p >> PAGE_SHIFT) as usize & (CHUNK_PAGES - 1),
        )
    }

    #[inline]
    fn get(&self, p: &u64) -> Option<&Page> {
        let (c, i) = Self::split(p);
        self.chunks.get(&c)?.pages[i].as_ref()
    }

    #[inline]
    fn get_mut(&mut self, p: &u64) -> Option<&mut Page> {
        let (c, i) = Self::split(p);
        self.chunks.get_mut(&c)?.pages[i].as_mut()
    }

    fn insert(&mut self, p: u64, page: Page) {
        let (c, i) = Self::split(&p);
        let chunk = self.chunks.entry(c).or_insert_with(|| {
            Box::new(Chunk {
                pages: std::array::from_fn(|_| None),
                held: 0,
            })
        });
        if chunk.pages[i].replace(page).is_none() {
            chunk.held += 1;
            self.len += 1;
        }
    }

    fn remove(&mut self, p: &u64) {
        let (c, i) = Self::split(p);
        let Some(chunk) = self.chunks.get_mut(&c) else {
            return;
        };
        if chunk.pages[i].take().is_some() {
            chunk.held -= 1;
            self.len -= 1;
            if chunk.held == 0 {
                self.chunks.remove(&c);
            }
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Shadow memory for watched pages.
#[derive(Default)]
pub struct Oracle {
    pages: PageTable,
    /// Frames a page let go of for a newer shared one, which nothing else holds:
    /// DRAM reuses them ([`Oracle::take_released`]). At most one waits at a time.
    released: Option<SharedFrame>,
}

fn page_of(pa: u64) -> u64 {
    pa & !(PAGE_SIZE - 1)
}

impl Oracle {
    /// Takes a reference on every page of `[pa, pa+len)`, creating missing pages from
    /// the coherent view. The range must be RAM.
    pub fn hold(&mut self, hw: &mut Machine, pa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut p = page_of(pa);
        while p < pa + len {
            match self.pages.get_mut(&p) {
                Some(pg) => pg.refs += 1,
                None => {
                    let mut data = Rc::new([0u8; PAGE_SIZE as usize]);
                    hw.peek(p, &mut Rc::make_mut(&mut data)[..]);
                    self.pages.insert(
                        p,
                        Page {
                            data,
                            refs: 1,
                            dram_may_differ: true,
                        },
                    );
                    hw.dram.set_watched(p, true);
                }
            }
            p += PAGE_SIZE;
        }
    }

    /// Drops a reference on every page of `[pa, pa+len)`.
    pub fn release(&mut self, hw: &mut Machine, pa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut p = page_of(pa);
        while p < pa + len {
            if let Some(pg) = self.pages.get_mut(&p) {
                pg.refs -= 1;
                if pg.refs == 0 {
                    self.pages.remove(&p);
                    hw.dram.set_watched(p, false);
                }
            }
            p += PAGE_SIZE;
        }
    }

    /// The frame the last shared device write let go of, if nothing else holds
    /// it, for DRAM to reuse ([`Dram::recycle`](crate::hw::dram::Dram::recycle)).
    pub fn take_released(&mut self) -> Option<SharedFrame> {
        self.released.take()
    }

    /// Records a cacheable CPU store: the truth changes, DRAM may lag behind.
    pub fn store_cpu(&mut self, pa: u64, data: &[u8]) {
        self.store(pa, data);
        self.mark_may_differ(pa, data.len() as u64);
    }

    /// Notes that DRAM under `[pa, pa+len)` may no longer equal the truth (a
    /// write-back happened there).
    pub fn mark_may_differ(&mut self, pa: u64, len: u64) {
        let mut p = page_of(pa);
        while p < pa + len.max(1) {
            if let Some(pg) = self.pages.get_mut(&p) {
                pg.dram_may_differ = true;
            }
            p += PAGE_SIZE;
        }
    }

    /// Like [`Oracle::diff`] for bytes read from DRAM by a device (one page at most):
    /// skips the comparison while DRAM is known to equal the truth, and learns that it
    /// does when a whole page compares equal.
    pub fn diff_dram(&mut self, pa: u64, got: &[u8], line: u64) -> (u64, u64) {
        let Some(pg) = self.pages.get(&page_of(pa)) else {
            return (0, 0);
        };
        if !pg.dram_may_differ {
            return (0, 0);
        }
        let r = self.diff(pa, got, line);
        if r.0 == 0 && got.len() as u64 == PAGE_SIZE {
            if let Some(pg) = self.pages.get_mut(&page_of(pa)) {
                pg.dram_may_differ = false;
            }
        }
        r
    }

    /// Records that `data` was stored at `pa` (any length; unwatched parts ignored).
    pub fn store(&mut self, pa: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let a = pa + done as u64;
            let off = (a & (PAGE_SIZE - 1)) as usize;
            let n = (PAGE_SIZE as usize - off).min(data.len() - done);
            if let Some(pg) = self.pages.get_mut(&page_of(a)) {
                Rc::make_mut(&mut pg.data)[off..off + n].copy_from_slice(&data[done..done + n]);
            }
            done += n;
        }
    }

    /// Records a device write of `data` at `pa` that went to DRAM: as
    /// [`Oracle::store`], except that a whole page shares `frame` — DRAM's frame,
    /// which holds exactly `data` now — instead of copying the bytes.
    pub fn store_device(&mut self, pa: u64, data: &[u8], frame: Option<&SharedFrame>) {
        match frame {
            Some(f) if pa & (PAGE_SIZE - 1) == 0 && data.len() as u64 == PAGE_SIZE => {
                debug_assert!(f[..] == *data, "a shared frame holds the written bytes");
                if let Some(pg) = self.pages.get_mut(&pa) {
                    let old = std::mem::replace(&mut pg.data, Rc::clone(f));
                    if Rc::strong_count(&old) == 1 {
                        self.released = Some(old);
                    }
                }
            }
            _ => self.store(pa, data),
        }
    }

    /// Number of bytes of `got` (read at `pa`) that differ from the oracle, and how
    /// many distinct lines of `line` bytes they fall in. Unwatched bytes count as equal.
    pub fn diff(&self, pa: u64, got: &[u8], line: u64) -> (u64, u64) {
        let mut bytes = 0;
        let mut lines = 0;
        let mut last_line = u64::MAX;
        let mut done = 0usize;
        while done < got.len() {
            let a = pa + done as u64;
            let off = (a & (PAGE_SIZE - 1)) as usize;
            let n = (PAGE_SIZE as usize - off).min(got.len() - done);
            if let Some(pg) = self.pages.get(&page_of(a)) {
                let want = &pg.data[off..off + n];
                let have = &got[done..done + n];
                if want != have {
                    // Compare 64-byte chunks first (vector compares) and count bytes
                    // only inside the chunks that differ.
                    const CHUNK: usize = 64;
                    for (c, (w, h)) in want.chunks(CHUNK).zip(have.chunks(CHUNK)).enumerate() {
                        if w == h {
                            continue;
                        }
                        for (i, (x, y)) in w.iter().zip(h).enumerate() {
                            if x != y {
                                bytes += 1;
                                let l = (a + (c * CHUNK + i) as u64) / line;
                                if l != last_line {
                                    lines += 1;
                                    last_line = l;
                                }
                            }
                        }
                    }
                }
            }
            done += n;
        }
        (bytes, lines)
    }

    /// The oracle's bytes at `pa` (watched pages only; others read as `None`).
    pub fn get(&self, pa: u64, len: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        let mut done = 0usize;
        while done < len {
            let a = pa + done as u64;
            let off = (a & (PAGE_SIZE - 1)) as usize;
            let n = (PAGE_SIZE as usize - off).min(len - done);
            out.extend_from_slice(&self.pages.get(&page_of(a))?.data[off..off + n]);
            done += n;
        }
        Some(out)
    }

    /// Number of pages held.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// True when no page is held.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte count `diff` made before it compared 64-byte chunks first.
    fn naive(o: &Oracle, pa: u64, got: &[u8], line: u64) -> (u64, u64) {
        let (mut bytes, mut lines, mut last) = (0, 0, u64::MAX);
        for (i, &y) in got.iter().enumerate() {
            let a = pa + i as u64;
            let Some(pg) = o.pages.get(&page_of(a)) else {
                continue;
            };
            if pg.data[(a & (PAGE_SIZE - 1)) as usize] != y {
                bytes += 1;
                if a / line != last {
                    lines += 1;
                    last = a / line;
                }
            }
        }
        (bytes, lines)
    }

    /// A device's whole-page write shares DRAM's frame; after it, a CPU store to
    /// the truth and a DRAM write each change only their own side.
    #[test]
    fn a_device_page_shares_the_frame_until_either_side_changes() {
        let mut dram = crate::hw::dram::Dram::new(0, 1 << 20, 16);
        let mut o = Oracle::default();
        o.pages.insert(
            0x1000,
            Page {
                data: Rc::new([0u8; PAGE_SIZE as usize]),
                refs: 1,
                dram_may_differ: false,
            },
        );
        let page = vec![0x5au8; PAGE_SIZE as usize];
        dram.set_watched(0x1000, true);
        dram.write(0x1000, &page);
        let frame = dram.shared_frame(0x1000);
        o.store_device(0x1000, &page, frame.as_ref());
        drop(frame);
        let shared = o.pages.get(&0x1000).map(|pg| Rc::clone(&pg.data));
        assert!(
            shared.is_some_and(|f| Some(&f) == dram.shared_frame(0x1000).as_ref()
                && Rc::ptr_eq(&f, &dram.shared_frame(0x1000).unwrap()))
        );
        o.store_cpu(0x1008, &[1, 2, 3]);
        assert_eq!(o.get(0x1008, 3), Some(vec![1, 2, 3]));
        let mut b = [0u8; 3];
        dram.read(0x1008, &mut b);
        assert_eq!(b, [0x5a; 3], "DRAM changed with the truth");
        dram.write(0x1100, &[9; 4]);
        assert_eq!(
            o.get(0x1100, 4),
            Some(vec![0x5a; 4]),
            "the truth changed with DRAM"
        );
        // A part of a page is copied as before.
        o.store_device(0x1200, &[7; 16], None);
        assert_eq!(o.get(0x1200, 16), Some(vec![7; 16]));
    }

    #[test]
    fn diff_counts_the_same_bytes_and_lines_as_a_byte_by_byte_compare() {
        let mut o = Oracle::default();
        // Two watched pages with a gap page between them (unwatched bytes count
        // as equal).
        for p in [0x1000u64, 0x3000] {
            let mut data = Rc::new([0u8; PAGE_SIZE as usize]);
            for (i, b) in Rc::make_mut(&mut data).iter_mut().enumerate() {
                *b = (i as u64 * 7 + p) as u8;
            }
            o.pages.insert(
                p,
                Page {
                    data,
                    refs: 1,
                    dram_may_differ: true,
                },
            );
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..200 {
            // Unaligned starts and lengths, so chunks straddle lines and pages.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pa = 0x1000 + x % 0x2f00;
            let len = (x >> 20) as usize % (0x4000 - (pa - 0x1000) as usize);
            let mut got = vec![0u8; len];
            o.peek_for_test(pa, &mut got);
            // Flip a few bytes, sometimes several in one line, sometimes none.
            for k in 0..(round % 9) {
                if len > 0 {
                    let i = (((x >> (k * 5)) % 0x10000) as usize * 31 + k) % len;
                    got[i] ^= 0x80;
                }
            }
            for line in [32, 64, 128] {
                assert_eq!(
                    o.diff(pa, &got, line),
                    naive(&o, pa, &got, line),
                    "pa {pa:#x} len {len} line {line}"
                );
            }
        }
    }

    #[test]
    fn the_page_table_holds_what_a_map_of_pages_would() {
        // PageTable (2 MiB chunks of page slots) against a plain map: random
        // inserts and removes over 8 MiB with page numbers that share and cross
        // chunks; every lookup, the count and emptiness agree.
        let mut t = PageTable::default();
        let mut m = std::collections::HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for k in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = 0x4000_0000 + (x % 2048) * PAGE_SIZE;
            if x >> 60 < 9 {
                let pg = Page {
                    data: Rc::new([0u8; PAGE_SIZE as usize]),
                    refs: k,
                    dram_may_differ: false,
                };
                t.insert(p, pg);
                m.insert(p, k);
            } else {
                t.remove(&p);
                m.remove(&p);
            }
            assert_eq!(t.get(&p).map(|pg| pg.refs), m.get(&p).copied());
            assert_eq!(t.len(), m.len());
            assert_eq!(t.is_empty(), m.is_empty());
        }
        for i in 0..2048 {
            let p = 0x4000_0000 + i * PAGE_SIZE;
            assert_eq!(t.get(&p).map(|pg| pg.refs), m.get(&p).copied());
            t.remove(&p);
        }
        assert!(
            t.is_empty() && t.chunks.is_empty(),
            "empty chunks are dropped"
        );
    }

    impl Oracle {
        /// The truth at `pa` where watched, zeros elsewhere.
        fn peek_for_test(&self, pa: u64, out: &mut [u8]) {
            for (i, b) in out.iter_mut().enumerate() {
                let a = pa + i as u64;
                *b = self
                    .pages
                    .get(&page_of(a))
                    .map_or(0, |pg| pg.data[(a & (PAGE_SIZE - 1)) as usize]);
            }
        }
    }
}
