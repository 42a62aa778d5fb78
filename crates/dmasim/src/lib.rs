//! dmasim: an executable model of DMA on an MPU running Linux.
//!
//! The silicon ([`hw`]: caches with real bytes, DRAM, MMU, device ports, clock) runs
//! the Linux machinery above it ([`kernel`]: allocators, dma-direct, the mapping API),
//! while the sanitizer ([`check`]) watches every byte that moves. [`script`] runs
//! scenario scripts written with the kernel's own function names, and [`report`]
//! renders what happened as text or JSON.
//!
//! ```
//! let report = dmasim::script::run_source(
//!     "stale.rhai",
//!     r#"
//!     boot("arm64-noncoherent", #{ noise: "off" });
//!     let dev = device("adc0");
//!     let buf = kmalloc(4096);
//!     let addr = dma_map_single(dev, buf, DMA_TO_DEVICE);
//!     cpu_fill(buf, 0xAB);                 // written after the map: the bug
//!     let got = dev_read(dev, addr, 4096); // the device reads stale DRAM
//!     dma_unmap_single(dev, addr, 4096, DMA_TO_DEVICE);
//!     "#,
//!     &dmasim::script::ScriptOptions::default(),
//! );
//! assert_eq!(report.findings[0].id, "stale-device-read");
//! assert_eq!(report.findings[0].manifested, Some(true));
//! assert_eq!(report.exit_code(), 1);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Every program linking dmasim counts the heap bytes each thread holds, so that a
/// run's host memory is bounded without Rhai's per-value size checks, which re-measure
/// a whole array after each `push` (see `dmasim_hostmem` and `script::heap_budget`).
#[global_allocator]
static HEAP: dmasim_hostmem::CountingAllocator = dmasim_hostmem::CountingAllocator;

pub mod bench;
pub mod check;
pub mod compare;
pub mod config;
pub mod explore;
pub mod fasthash;
pub mod fuzz;
pub mod hw;
pub mod kernel;
pub mod outstanding;
pub mod replay;
pub mod report;
pub mod ring;
pub mod script;
pub mod system;
pub mod throughput;
pub mod uapi;
pub mod units;
