//! The oracle: what every watched byte would hold on a perfectly coherent machine.
//!
//! Pages enter the oracle when a DMA buffer on them is mapped or allocated; their
//! first contents are the coherent view (dirty cache lines over DRAM). From then on a
//! CPU store and a device write through a mapping update the oracle, and every read —
//! by the CPU through its caches, by a device through its port — is compared with it.
//! A difference is corruption that manifested. Pages stay while anything holds them
//! (a live mapping, or the buffer until it is freed) and their DRAM frames carry the
//! "watched" bit so that unwatched accesses pay one bit test.

use crate::config::PAGE_SIZE;
use crate::fasthash::PageMap;
use crate::hw::Machine;

struct Page {
    data: Box<[u8; PAGE_SIZE as usize]>,
    refs: u32,
    /// DRAM may hold other bytes than the truth here: set by cacheable CPU stores
    /// (the new bytes may sit in a dirty line) and by write-backs; cleared when a
    /// whole-page comparison found them equal. While it is clear, a device read of
    /// DRAM needs no comparison.
    dram_may_differ: bool,
}

/// Shadow memory for watched pages.
#[derive(Default)]
pub struct Oracle {
    pages: PageMap<Page>,
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
                    let mut data = Box::new([0u8; PAGE_SIZE as usize]);
                    hw.peek(p, &mut data[..]);
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
                pg.data[off..off + n].copy_from_slice(&data[done..done + n]);
            }
            done += n;
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
                    for (i, (x, y)) in want.iter().zip(have).enumerate() {
                        if x != y {
                            bytes += 1;
                            let l = (a + i as u64) / line;
                            if l != last_line {
                                lines += 1;
                                last_line = l;
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
