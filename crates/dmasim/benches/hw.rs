//! Hot-path benchmarks of the machine model, each beside a host baseline.
//!
//! Run with `cargo bench -p dmasim --bench hw`; BENCHMARKS.md records the figures.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use dmasim::config::PlatformConfig;
use dmasim::hw::mmu::{Block, MemType};
use dmasim::hw::Machine;

const VA: u64 = 0xffff_0000_0000_0000;

fn machine() -> Machine {
    let mut p = PlatformConfig::preset("arm64-noncoherent").unwrap();
    p.noise = dmasim::config::NoiseConfig::OFF;
    let mut m = Machine::new(&p, 1, 1 << 20);
    m.mmu.map_block(
        0,
        Block {
            va: VA,
            pa: p.ram_base,
            len: p.ram,
            memtype: MemType::Normal,
        },
    );
    m
}

fn cpu_lines(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_line_writes");
    g.sample_size(10);
    // 64 MiB sequential stream: every access misses L1 and L2.
    let lines = (64u64 << 20) / 64;
    g.throughput(Throughput::Elements(lines));
    let mut m = machine();
    let page = [0xa5u8; 4096];
    g.bench_function("all_miss_64MiB_stream", |b| {
        b.iter(|| {
            for i in 0..(64u64 << 20) / 4096 {
                m.cpu_write(0, 0, VA + i * 4096, black_box(&page)).unwrap();
            }
        })
    });
    let data = [0x5au8; 64];
    // 16 KiB working set: every access hits L1.
    let lines = 256u64;
    g.throughput(Throughput::Elements(lines * 64));
    g.bench_function("l1_resident_16KiB", |b| {
        b.iter(|| {
            for _ in 0..64 {
                for i in 0..lines {
                    m.cpu_write(0, 0, VA + i * 64, black_box(&data)).unwrap();
                }
            }
        })
    });
    // Host baseline: the same line-sized stores into a host buffer.
    let mut host = vec![0u8; 16 << 10];
    g.bench_function("host_baseline_l1_resident_16KiB", |b| {
        b.iter(|| {
            for _ in 0..64 {
                for i in 0..lines as usize {
                    host[i * 64..i * 64 + 64].copy_from_slice(black_box(&data));
                }
            }
            black_box(&host);
        })
    });
    g.finish();
}

criterion_group!(benches, cpu_lines);
criterion_main!(benches);
