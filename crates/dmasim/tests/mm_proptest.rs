//! Property tests (proptest, with shrinking) of the memory model's conservation rules:
//! after every operation of a random sequence, free + allocated = managed in every
//! zone, no frame is mapped twice, refcounts stay at least 1, and a pinned page never
//! moves — through migration noise, compaction, reclaim, CMA and munmap.

use std::collections::{BTreeMap, BTreeSet};

use dmasim::config::{NoiseConfig, PlatformConfig, PAGE_SIZE};
use dmasim::kernel::mm::gfp::{GFP_DMA, GFP_KERNEL};
use dmasim::kernel::mm::page::GUP_PIN_COUNTING_BIAS;
use dmasim::kernel::BufKind;
use dmasim::system::{RunOptions, System};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Mmap {
        proc: usize,
        pages: u64,
        locked: bool,
    },
    Pin {
        idx: usize,
        longterm: bool,
    },
    Unpin {
        idx: usize,
    },
    Compact,
    Reclaim {
        pages: u64,
    },
    Munmap {
        idx: usize,
    },
    Kmalloc {
        size: u64,
        dma: bool,
    },
    Kfree {
        idx: usize,
    },
    Coherent {
        pages: u64,
    },
    Step,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 1..16u64, any::<bool>()).prop_map(|(proc, pages, locked)| Op::Mmap { proc, pages, locked }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(idx, longterm)| Op::Pin { idx, longterm }),
        1 => any::<usize>().prop_map(|idx| Op::Unpin { idx }),
        1 => Just(Op::Compact),
        1 => (1..64u64).prop_map(|pages| Op::Reclaim { pages }),
        1 => any::<usize>().prop_map(|idx| Op::Munmap { idx }),
        2 => (1..20_000u64, any::<bool>()).prop_map(|(size, dma)| Op::Kmalloc { size, dma }),
        1 => any::<usize>().prop_map(|idx| Op::Kfree { idx }),
        1 => (2..1024u64).prop_map(|pages| Op::Coherent { pages }),
        1 => Just(Op::Step),
    ]
}

type Pins = BTreeMap<u64, Vec<(u32, u64, u64)>>;

fn invariants(sys: &System, pins: &Pins) -> Result<(), TestCaseError> {
    for z in &sys.kernel.pages.zones {
        prop_assert_eq!(z.free_pages() + z.allocated, z.managed, "zone {:?}", z.kind);
    }
    let mut owned = BTreeSet::new();
    for p in &sys.kernel.procs {
        for &pfn in p.present.values() {
            prop_assert!(owned.insert(pfn), "frame {:#x} mapped twice", pfn);
            prop_assert!(sys
                .kernel
                .user_pages
                .get(pfn)
                .is_some_and(|pg| pg.refcount >= 1));
        }
    }
    for pages in pins.values() {
        for &(pid, va, pfn) in pages {
            prop_assert_eq!(sys.pagemap(pid, va).unwrap(), pfn, "a pinned page moved");
            prop_assert!(sys.kernel.user_pages.get(pfn).unwrap().refcount >= GUP_PIN_COUNTING_BIAS);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn pages_are_conserved_and_pins_hold(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..60)) {
        let mut p = PlatformConfig::preset("arm64-noncoherent").unwrap();
        p.noise = NoiseConfig { evict: 0.0, prefetch: 0.0, migrate: 0.3 };
        p.ram = 128 << 20;
        p.cma = 16 << 20;
        let mut sys = System::boot(p, RunOptions { seed, ..RunOptions::default() }).unwrap();
        let dev = sys.add_device(dmasim::kernel::device::Device::new("d", true, 1000, 0));
        let pids = [sys.process_new("a"), sys.process_new("b")];
        let mut bufs: Vec<(u32, u64, u64)> = Vec::new();
        let mut kbufs: Vec<u64> = Vec::new();
        let mut coherent: Vec<(u64, u64)> = Vec::new();
        let mut pins: Pins = BTreeMap::new();
        for op in ops {
            match op {
                Op::Mmap { proc, pages, locked } => {
                    let pid = pids[proc];
                    let va = sys.mmap(pid, pages * PAGE_SIZE, locked).unwrap();
                    if sys.user_write(pid, va, &vec![7; (pages * PAGE_SIZE) as usize]).is_ok() {
                        bufs.push((pid, va, pages * PAGE_SIZE));
                    }
                }
                Op::Pin { idx, longterm } if !bufs.is_empty() => {
                    let (pid, va, len) = bufs[idx % bufs.len()];
                    let id = sys.gup(pid, va, len, true, longterm).unwrap();
                    if id != u64::MAX {
                        let pfns = sys.kernel.pins[&id].pfns.clone();
                        pins.insert(id, pfns.iter().enumerate().map(|(i, &pfn)| (pid, va + i as u64 * PAGE_SIZE, pfn)).collect());
                    }
                }
                Op::Unpin { idx } if !pins.is_empty() => {
                    let id = *pins.keys().nth(idx % pins.len()).unwrap();
                    pins.remove(&id);
                    sys.gup_release(id, true).unwrap();
                }
                Op::Compact => {
                    sys.compact();
                }
                Op::Reclaim { pages } => {
                    sys.reclaim(pages * PAGE_SIZE);
                }
                Op::Munmap { idx } if !bufs.is_empty() => {
                    let (pid, va, len) = bufs.swap_remove(idx % bufs.len());
                    pins.retain(|_, ps| !ps.iter().any(|&(p, v, _)| p == pid && v >= va && v < va + len));
                    sys.munmap(pid, va).unwrap();
                }
                Op::Kmalloc { size, dma } => {
                    let gfp = if dma { GFP_KERNEL | GFP_DMA } else { GFP_KERNEL };
                    if let Some(id) = sys.kmalloc(size, gfp).unwrap() {
                        kbufs.push(id);
                    }
                }
                Op::Kfree { idx } if !kbufs.is_empty() => {
                    let id = kbufs.swap_remove(idx % kbufs.len());
                    sys.kfree(id, "kfree", BufKind::Kmalloc);
                }
                Op::Coherent { pages } => {
                    if let Some(id) = sys.dma_alloc_coherent(dev, pages * PAGE_SIZE).unwrap() {
                        coherent.push((id, pages * PAGE_SIZE));
                    }
                }
                _ => sys.step(),
            }
            invariants(&sys, &pins)?;
        }
        for (id, size) in coherent {
            sys.dma_free_coherent(dev, size, id).unwrap();
        }
        invariants(&sys, &pins)?;
    }
}
