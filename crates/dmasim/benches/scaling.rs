//! The paths issue 19 found quadratic, at 1k and 100k objects: the CPU time per
//! object must stay within a factor of 2 (linear). Each benchmark runs one script
//! that makes N objects; criterion times whole runs, and BENCHMARKS.md gives the
//! ratio of the per-object times (100k / 1k).
//!
//! `cargo bench -p dmasim --bench scaling`; `SCALING_QUICK=1` stops at 10k.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dmasim::script::{run_source, ScriptOptions};

/// The script of one path with `n` objects.
fn script(path: &str, n: u64) -> String {
    match path {
        // Item 8: each dma_map_sg looked up its buffer by scanning every buffer.
        "dma_map_sg" => format!(
            "boot(\"arm64-noncoherent\", #{{ noise: \"off\" }});\nlet d = device(\"d\");\n\
             for i in 0..{n} {{ let b = kmalloc(64); let s = sg_from_buffer(b); dma_map_sg(d, s, DMA_TO_DEVICE); }}\n\
             allow(\"mapping-leak\");\n"
        ),
        // Item 9: with the swiotlb pool full, every map fails (noise on).
        "swiotlb_full" => format!(
            "boot(\"arm64-noncoherent\", #{{ swiotlb_force: true, swiotlb: \"64 KiB\" }});\nlet d = device(\"d\");\n\
             let big = kmalloc(65536); dma_map_single(d, big, DMA_TO_DEVICE);\nlet b = kmalloc(4096);\n\
             for i in 0..{n} {{ dma_map_single(d, b, DMA_TO_DEVICE); }}\n\
             allow(\"mapping-leak\"); allow(\"swiotlb-full\"); allow(\"mapping-error-unchecked\");\n"
        ),
        // Item 10: every user access looked its process up by scanning them all.
        "process" => format!(
            "boot(\"arm64-coherent\", #{{ noise: \"off\" }});\n\
             for i in 0..{n} {{ let p = process(\"p\"); let b = p.malloc(4096); p.write(b, 0, blob(8, 1)); }}\n"
        ),
        // Item 11: vfio_map_dma cloned the container and scanned its mappings.
        "vfio_map_dma" => format!(
            "boot(\"arm64-coherent\", #{{ iommu: \"smmu\", noise: \"off\" }});\nlet nic = device(\"nic0\");\n\
             let p = process(\"app\", #{{ cap_ipc_lock: true }});\nlet c = vfio_open(nic, p);\n\
             let b = p.mmap(4096);\n\
             for i in 0..{n} {{ vfio_map_dma(c, p, b, 0x100000 + i * 4096, #{{ read: true, write: true }}); }}\n\
             for i in 0..{n} {{ vfio_unmap_dma(c, 0x100000 + i * 4096, 4096); }}\n"
        ),
        _ => unreachable!(),
    }
}

fn opts() -> ScriptOptions {
    ScriptOptions {
        max_operations: u64::MAX,
        ..ScriptOptions::default()
    }
}

fn scaling(c: &mut Criterion) {
    let sizes: &[u64] = if std::env::var_os("SCALING_QUICK").is_some() {
        &[1_000, 10_000]
    } else {
        &[1_000, 100_000]
    };
    for path in ["dma_map_sg", "swiotlb_full", "process", "vfio_map_dma"] {
        let mut g = c.benchmark_group(format!("scaling/{path}"));
        g.sample_size(10)
            .warm_up_time(std::time::Duration::from_millis(100))
            .measurement_time(std::time::Duration::from_secs(1));
        for &n in sizes {
            let src = script(path, n);
            let r = run_source("scaling.rhai", &src, &opts());
            assert!(r.error.is_none(), "{path} {n}: {:?}", r.error);
            g.bench_with_input(BenchmarkId::from_parameter(n), &src, |b, src| {
                b.iter(|| run_source("scaling.rhai", src, &opts()));
            });
        }
        g.finish();
    }
}

criterion_group!(benches, scaling);
criterion_main!(benches);
