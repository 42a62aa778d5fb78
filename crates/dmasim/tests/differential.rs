//! Differential property test: random sequences of *correct* DMA API use, on every
//! preset, with and without an IOMMU and with and without forced bounce buffering.
//! Every byte a device reads and every byte the CPU reads must be what a plain
//! model of the buffers says (the script's `expect_eq` checks each read), and the
//! sanitizer must report no error: no false positives, no lost data.
//!
//! One rule of the model: a `DMA_FROM_DEVICE` buffer's bytes that the device does
//! not write are undefined after the transfer (ARMv7 invalidates at map time and so
//! drops what the CPU wrote before; arm64 cleans and keeps it), so they are not
//! checked until written again.

use dmasim::check::Severity;
use dmasim::script::{run_source, ScriptOptions};
use proptest::prelude::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Own {
    Unmapped,
    Device,
    Cpu,
}

#[derive(Clone, Copy)]
struct Buf {
    own: Own,
    dir: u8, // 0 bidirectional, 1 to device, 2 from device
    size: usize,
}

const DIRS: [&str; 3] = ["DMA_BIDIRECTIONAL", "DMA_TO_DEVICE", "DMA_FROM_DEVICE"];
const SIZES: [usize; 3] = [512, 4096, 8192];

/// Turns random numbers into a script of correct operations on three buffers, and
/// tracks the bytes each should hold so every read is checked.
fn script(ops: &[(u8, u8, u16, u16, u8)], setup: &str) -> String {
    let mut s = String::from(setup);
    s.push_str("let d = device(\"d\");\n");
    let mut bufs = Vec::new();
    let mut shadow: Vec<Vec<Option<u8>>> = Vec::new();
    for (i, size) in SIZES.iter().enumerate() {
        s.push_str(&format!(
            "let b{i} = kmalloc({size}, GFP);\nlet a{i} = 0;\n"
        ));
        bufs.push(Buf {
            own: Own::Unmapped,
            dir: 0,
            size: *size,
        });
        shadow.push(vec![Some(0u8); *size]);
        s.push_str(&format!("cpu_fill(b{i}, 0);\n"));
    }
    let pat = |seed: u8, len: usize| -> Vec<u8> {
        (0..len)
            .map(|k| {
                (k as u8)
                    .wrapping_mul(31)
                    .wrapping_add(seed)
                    .wrapping_add((k >> 8) as u8)
            })
            .collect()
    };
    let blob = |v: &[u8]| -> String {
        let hex: Vec<String> = v.iter().map(|b| b.to_string()).collect();
        format!("blob_of([{}])", hex.join(","))
    };
    // Checks of the known runs of `want` against `read(off, len)` (a script call).
    let checks = |want: &[Option<u8>],
                  base: usize,
                  read: &dyn Fn(usize, usize) -> String,
                  what: &str|
     -> String {
        let mut out = String::new();
        let mut k = 0;
        while k < want.len() {
            if want[k].is_none() {
                k += 1;
                continue;
            }
            let start = k;
            while k < want.len() && want[k].is_some() {
                k += 1;
            }
            let bytes: Vec<u8> = want[start..k].iter().map(|b| b.unwrap_or(0)).collect();
            out.push_str(&format!(
                "expect_eq({}, {}, \"{what}\");\n",
                read(base + start, k - start),
                blob(&bytes)
            ));
        }
        out
    };
    for &(kind, which, off, len, seed) in ops {
        let i = (which % 3) as usize;
        let b = bufs[i];
        let off = (off as usize) % b.size;
        let len = 1 + (len as usize) % (b.size - off).min(256);
        let range = format!("{off}, {len}");
        match (kind % 8, b.own) {
            // CPU write: the CPU owns the buffer. A mapped one only when it is
            // DMA_TO_DEVICE: stores into a FROM_DEVICE or BIDIRECTIONAL mapping must
            // be handed back with a sync for the device before the unmap, or the
            // unmap's invalidate discards them (cpu-write-discarded).
            (0, Own::Unmapped) | (0, Own::Cpu) if !(b.own == Own::Cpu && b.dir != 1) => {
                let data = pat(seed, len);
                for (k, &x) in data.iter().enumerate() {
                    shadow[i][off + k] = Some(x);
                }
                s.push_str(&format!("cpu_write(b{i}, {off}, {});\n", blob(&data)));
            }
            (1, Own::Unmapped) => {
                let dir = seed % 3;
                bufs[i].own = Own::Device;
                bufs[i].dir = dir;
                if dir == 2 {
                    shadow[i].iter_mut().for_each(|b| *b = None);
                }
                s.push_str(&format!(
                    "a{i} = dma_map_single(d, b{i}, {});\nif dma_mapping_error(d, a{i}) {{ throw \"map\"; }}\n",
                    DIRS[dir as usize]
                ));
            }
            (2, Own::Device) if b.dir != 2 => {
                let want = &shadow[i][off..off + len];
                s.push_str(&checks(
                    want,
                    off,
                    &|o, l| format!("dev_read(d, a{i} + {o}, {l})"),
                    "device read",
                ));
            }
            (3, Own::Device) if b.dir != 1 => {
                let data = pat(seed ^ 0x55, len);
                for (k, &x) in data.iter().enumerate() {
                    shadow[i][off + k] = Some(x);
                }
                s.push_str(&format!("dev_write(d, a{i} + {off}, {});\n", blob(&data)));
            }
            (4, Own::Device) => {
                bufs[i].own = Own::Cpu;
                s.push_str(&format!(
                    "dma_sync_single_for_cpu(d, a{i}, {}, {});\n",
                    b.size, DIRS[b.dir as usize]
                ));
            }
            (5, Own::Cpu) => {
                bufs[i].own = Own::Device;
                s.push_str(&format!(
                    "dma_sync_single_for_device(d, a{i}, {}, {});\n",
                    b.size, DIRS[b.dir as usize]
                ));
            }
            (6, Own::Unmapped) | (6, Own::Cpu) => {
                let want = &shadow[i][off..off + len];
                let _ = &range;
                s.push_str(&checks(
                    want,
                    off,
                    &|o, l| format!("cpu_read(b{i}, {o}, {l})"),
                    "cpu read",
                ));
            }
            (7, Own::Device) | (7, Own::Cpu) => {
                bufs[i].own = Own::Unmapped;
                s.push_str(&format!(
                    "dma_unmap_single(d, a{i}, {}, {});\n",
                    b.size, DIRS[b.dir as usize]
                ));
            }
            _ => {}
        }
    }
    for (i, b) in bufs.iter().enumerate() {
        if b.own != Own::Unmapped {
            s.push_str(&format!(
                "dma_unmap_single(d, a{i}, {}, {});\n",
                b.size, DIRS[b.dir as usize]
            ));
        }
        let want = &shadow[i];
        s.push_str(&checks(
            want,
            0,
            &|o, l| format!("cpu_read(b{i}, {o}, {l})"),
            "final contents",
        ));
    }
    s
}

const SETUPS: &[&str] = &[
    "boot(\"arm64-noncoherent\");\nlet GFP = GFP_KERNEL;\n",
    "boot(\"arm64-coherent\");\nlet GFP = GFP_KERNEL;\n",
    "boot(\"arm32\");\nlet GFP = GFP_KERNEL;\n",
    "boot(\"x86-64\");\nlet GFP = GFP_KERNEL;\n",
    "boot(\"rpi4\");\nlet GFP = GFP_DMA;\n",
    "boot(\"arm64-noncoherent\", #{ iommu: \"smmu\" });\nlet GFP = GFP_KERNEL;\n",
    "boot(\"arm64-coherent\", #{ iommu: \"smmu\", iommu_strict: false });\nlet GFP = GFP_KERNEL;\n",
    "boot(\"arm64-noncoherent\", #{ swiotlb_force: true });\nlet GFP = GFP_KERNEL;\n",
    "boot(\"arm64-coherent\", #{ ram: \"8 GiB\" });\nlet GFP = GFP_KERNEL;\n",
    "boot(\"x86-64\", #{ swiotlb_force: true, iommu: \"none\" });\nlet GFP = GFP_KERNEL;\n",
];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn correct_use_reads_what_was_written_everywhere(
        ops in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>(), any::<u8>()), 1..60),
        setup in 0..SETUPS.len(),
        seed in 0u64..1000,
    ) {
        let src = script(&ops, SETUPS[setup]);
        let r = run_source("diff.rhai", &src, &ScriptOptions { seed, ..ScriptOptions::default() });
        prop_assert!(r.error.is_none(), "{:?}\n{src}", r.error);
        prop_assert_eq!(r.expectations.failed, 0, "{:?}\n{}", r.expectations.failures, src);
        let errors: Vec<_> = r.findings.iter().filter(|f| f.severity == Severity::Error).map(|f| (f.id, f.message.clone())).collect();
        prop_assert!(errors.is_empty(), "{:?}\n{}", errors, src);
    }
}
