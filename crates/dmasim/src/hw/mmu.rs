//! The CPU's MMU: virtual-to-physical translation with a memory type per mapping.
//!
//! Address spaces hold large linear blocks (the kernel's linear map) and 4 KiB page
//! entries (vmalloc, coherent remaps, user pages). Translation is per page; there is
//! no TLB in the model (translation costs nothing) and the tables live in host
//! memory, not in simulated DRAM — a simplification: CPU page-table walks do not
//! matter for DMA correctness, while the IOMMU's tables (which do) will live in DRAM.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{PAGE_SHIFT, PAGE_SIZE};

/// Memory type of a mapping, as arm64 MAIR attributes distinguish them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemType {
    /// Normal write-back cacheable (the linear map, kmalloc, user memory).
    Normal,
    /// Normal non-cacheable: what `dma_alloc_coherent` gives a non-coherent device on
    /// arm64 (`pgprot_dmacoherent` = MT_NORMAL_NC). Loads go to DRAM; stores are
    /// buffered and merged.
    NormalNc,
    /// Device-nGnRE: uncached, no merging (MMIO).
    Device,
}

/// A block mapping of `len` bytes from `va` to `pa`.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    /// First virtual address.
    pub va: u64,
    /// First physical address.
    pub pa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Memory type.
    pub memtype: MemType,
}

/// One virtual address space.
#[derive(Default)]
pub struct AddressSpace {
    blocks: Vec<Block>,
    pages: BTreeMap<u64, (u64, MemType)>,
}

/// A translated piece of a virtual range: it stays inside one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of the piece.
    pub va: u64,
    /// Physical address of the piece.
    pub pa: u64,
    /// Length (≤ the rest of the page).
    pub len: u64,
    /// Memory type.
    pub memtype: MemType,
}

/// All address spaces; index 0 is the kernel's.
#[derive(Default)]
pub struct Mmu {
    spaces: Vec<AddressSpace>,
}

impl Mmu {
    /// An MMU with an empty kernel address space.
    pub fn new() -> Mmu {
        Mmu {
            spaces: vec![AddressSpace::default()],
        }
    }

    /// Adds a new empty address space and returns its id.
    pub fn new_space(&mut self) -> usize {
        self.spaces.push(AddressSpace::default());
        self.spaces.len() - 1
    }

    /// Maps a block (e.g. the linear map).
    pub fn map_block(&mut self, asid: usize, block: Block) {
        self.spaces[asid].blocks.push(block);
    }

    /// Maps one 4 KiB page.
    pub fn map_page(&mut self, asid: usize, va: u64, pa: u64, memtype: MemType) {
        self.spaces[asid]
            .pages
            .insert(va >> PAGE_SHIFT, (pa & !(PAGE_SIZE - 1), memtype));
    }

    /// Removes the page mapping at `va`.
    pub fn unmap_page(&mut self, asid: usize, va: u64) {
        self.spaces[asid].pages.remove(&(va >> PAGE_SHIFT));
    }

    /// Translates one address.
    #[inline]
    pub fn translate(&self, asid: usize, va: u64) -> Option<(u64, MemType)> {
        let s = self.spaces.get(asid)?;
        for b in &s.blocks {
            if va.wrapping_sub(b.va) < b.len {
                return Some((b.pa + (va - b.va), b.memtype));
            }
        }
        s.pages
            .get(&(va >> PAGE_SHIFT))
            .map(|&(pa, mt)| (pa | (va & (PAGE_SIZE - 1)), mt))
    }

    /// Splits `[va, va+len)` into per-page segments; `None` names the first
    /// untranslatable address.
    pub fn segments(&self, asid: usize, va: u64, len: u64) -> Result<Vec<Segment>, u64> {
        let mut out = Vec::with_capacity((len / PAGE_SIZE + 2) as usize);
        let mut done = 0;
        while done < len {
            let v = va.wrapping_add(done);
            let (pa, memtype) = self.translate(asid, v).ok_or(v)?;
            let n = (PAGE_SIZE - (v & (PAGE_SIZE - 1))).min(len - done);
            out.push(Segment {
                va: v,
                pa,
                len: n,
                memtype,
            });
            done += n;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_pages_translate() {
        let mut m = Mmu::new();
        m.map_block(
            0,
            Block {
                va: 0xffff_0000_0000_0000,
                pa: 0x4000_0000,
                len: 1 << 30,
                memtype: MemType::Normal,
            },
        );
        m.map_page(0, 0xffff_8000_0000_2000, 0x4123_4000, MemType::NormalNc);
        assert_eq!(
            m.translate(0, 0xffff_0000_0000_1234),
            Some((0x4000_1234, MemType::Normal))
        );
        assert_eq!(
            m.translate(0, 0xffff_8000_0000_2008),
            Some((0x4123_4008, MemType::NormalNc))
        );
        assert_eq!(m.translate(0, 0xffff_8000_0000_3000), None);
        assert_eq!(
            m.translate(0, 0xffff_0000_4000_0000),
            None,
            "one past the block"
        );
    }

    #[test]
    fn segments_split_at_pages_and_report_holes() {
        let mut m = Mmu::new();
        m.map_page(0, 0x1000, 0x9000, MemType::Normal);
        m.map_page(0, 0x2000, 0x5000, MemType::Normal);
        let s = m.segments(0, 0x1ff0, 0x20).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].pa, s[0].len), (0x9ff0, 0x10));
        assert_eq!((s[1].pa, s[1].len), (0x5000, 0x10));
        assert_eq!(m.segments(0, 0x2ff0, 0x20), Err(0x3000));
    }
}
