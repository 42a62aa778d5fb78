//! Hot-path benchmarks of the model, each beside a host baseline measured in the same
//! run. `cargo bench -p dmasim --bench hw`; BENCHMARKS.md records the figures.

// criterion's API, the part these benches use (`common/criterion.rs`).
#[path = "common/criterion.rs"]
mod criterion;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use dmasim::check::MapKind;
use dmasim::config::{NoiseConfig, PlatformConfig};
use dmasim::hw::Machine;
use dmasim::kernel::device::Device;
use dmasim::kernel::dma::DmaDirection;
use dmasim::system::{RunOptions, System};

use dmasim::bench::VA;

fn quiet(preset: &str) -> PlatformConfig {
    let mut p = PlatformConfig::preset(preset).unwrap();
    p.noise = NoiseConfig::OFF;
    p
}

fn machine() -> Machine {
    let mut p = quiet("arm64-noncoherent");
    // DMASIM_BENCH_CPUS=1 measures a one-CPU machine (no L1 snoops at all).
    if std::env::var("DMASIM_BENCH_CPUS").is_ok() {
        p.cpus = 1;
    }
    dmasim::bench::linear_machine(&p)
}

/// CPU stores through L1+L2 with line data, counted in line accesses.
fn cpu_lines(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_line_writes");
    g.sample_size(10);
    let page = [0xa5u8; 4096];
    // 64 MiB sequential stream: every line misses L1 and L2, evicts a dirty victim.
    let lines = (64u64 << 20) / 64;
    g.throughput(Throughput::Elements(lines));
    let mut m = machine();
    g.bench_function("all_miss_64MiB_stream", |b| {
        b.iter(|| {
            for i in 0..(64u64 << 20) / 4096 {
                m.cpu_write(0, 0, VA + i * 4096, black_box(&page)).unwrap();
            }
        })
    });
    // 16 KiB working set written a page at a time: every line hits L1.
    g.throughput(Throughput::Elements(64 * 256));
    g.bench_function("l1_resident_16KiB", |b| {
        b.iter(|| {
            for _ in 0..64 {
                for i in 0..4 {
                    m.cpu_write(0, 0, VA + i * 4096, black_box(&page)).unwrap();
                }
            }
        })
    });
    // Host baseline: the same stores into a host buffer of the same size.
    let mut host = vec![0u8; 16 << 10];
    g.bench_function("host_baseline_16KiB_page_copies", |b| {
        b.iter(|| {
            for _ in 0..64 {
                for i in 0..4 {
                    host[i * 4096..i * 4096 + 4096].copy_from_slice(black_box(&page));
                }
            }
            black_box(&host);
        })
    });
    g.finish();
}

fn dma_system(coherent: bool) -> (System, usize, u64) {
    let mut sys = System::boot(quiet("arm64-noncoherent"), RunOptions::default()).unwrap();
    let dev = sys.add_device(Device::new("dev0", coherent, 1_000_000, 0));
    let id = sys
        .kmalloc(64 << 10, dmasim::kernel::mm::gfp::GFP_KERNEL)
        .unwrap()
        .unwrap();
    let va = sys.kernel.buffers[&id].va;
    sys.cpu_write_va(va, &vec![0x42; 64 << 10]).unwrap();
    let addr = sys
        .dma_map_single(dev, va, 64 << 10, DmaDirection::Bidirectional)
        .unwrap();
    (sys, dev, addr)
}

/// A device moves 64 KiB through its port with the sanitizer watching.
fn device_dma(c: &mut Criterion) {
    let mut g = c.benchmark_group("device_dma_64KiB");
    g.throughput(Throughput::Bytes(64 << 10));
    let (mut sys, dev, addr) = dma_system(false);
    g.bench_function("noncoherent_read_sanitizer_on", |b| {
        b.iter(|| {
            let j = sys.dev_start(dev, addr, 64 << 10, None).unwrap();
            black_box(sys.wait(j).unwrap());
        })
    });
    let data = vec![0x17u8; 64 << 10];
    g.bench_function("noncoherent_write_sanitizer_on", |b| {
        b.iter(|| {
            let j = sys
                .dev_start(dev, addr, 64 << 10, Some(data.clone()))
                .unwrap();
            black_box(sys.wait(j).unwrap());
        })
    });
    // The same 64 KiB through the same non-coherent port with nothing watching:
    // the machine's page reads alone, no job queue and no sanitizer (the
    // sanitizer-overhead baseline of issue 6).
    let pa = sys.kernel.devices[dev].dma_to_phys(addr);
    let mut out = Vec::with_capacity(64 << 10);
    g.bench_function("noncoherent_read_sanitizer_off", |b| {
        b.iter(|| {
            out.clear();
            for k in 0..16u64 {
                sys.hw
                    .port_read_append(false, pa + k * 4096, 4096, &mut out)
                    .unwrap();
            }
            black_box(&out);
        })
    });
    let src = vec![0x42u8; 64 << 10];
    let mut dst = vec![0u8; 64 << 10];
    g.bench_function("host_baseline_memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.finish();
}

/// A 4 KiB kmalloc buffer's virtual address.
fn kmalloc_4k(sys: &mut System) -> u64 {
    let id = sys
        .kmalloc(4096, dmasim::kernel::mm::gfp::GFP_KERNEL)
        .unwrap()
        .unwrap();
    sys.kernel.buffers[&id].va
}

/// One checked `dma_map_single` of 4 KiB and its `dma_unmap_single`.
fn map_unmap_4k(sys: &mut System, dev: usize, va: u64, dir: DmaDirection) {
    let a = sys.dma_map_single(dev, va, 4096, dir).unwrap();
    assert!(!sys.dma_mapping_error(dev, a));
    sys.dma_unmap(dev, a, 4096, dir, MapKind::Single).unwrap();
}

/// A 32-bit device on an 8 GiB arm64 machine maps and unmaps a 4 KiB buffer above
/// 4 GiB: every map goes through swiotlb and copies 4 KiB in.
fn bounce_map_unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("swiotlb_4KiB");
    g.throughput(Throughput::Elements(1));
    let mut p = quiet("arm64-coherent");
    p.ram = 8 << 30;
    let mut sys = System::boot(p, RunOptions::default()).unwrap();
    let dev = sys.add_device(Device::new("nic0", true, 1_000_000, 0));
    let va = kmalloc_4k(&mut sys);
    assert!(sys.kernel.virt_to_phys(va).unwrap() >= 1 << 32);
    sys.cpu_write_va(va, &[0x42; 4096]).unwrap();
    g.bench_function("bounced_map_unmap_to_device", |b| {
        b.iter(|| map_unmap_4k(&mut sys, dev, va, DmaDirection::ToDevice))
    });
    g.bench_function("bounced_map_unmap_bidirectional", |b| {
        b.iter(|| map_unmap_4k(&mut sys, dev, va, DmaDirection::Bidirectional))
    });
    let src = vec![0x42u8; 4096];
    let mut dst = vec![0u8; 4096];
    g.bench_function("host_baseline_memcpy_4KiB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.finish();
}

fn iommu_system() -> (System, usize) {
    let mut p = quiet("arm64-coherent");
    p.iommu = "smmu".into();
    let mut sys = System::boot(p, RunOptions::default()).unwrap();
    let dev = sys.add_device(Device::new("dev0", true, 1_000_000, 0));
    (sys, dev)
}

/// A strict 4 KiB map+unmap through the IOMMU, on a machine of its own (measured
/// beside another live machine, the host-cache footprint of both showed up in it).
fn iommu_strict(c: &mut Criterion) {
    let mut g = c.benchmark_group("iommu");
    g.throughput(Throughput::Elements(1));
    let (mut sys, dev) = iommu_system();
    let va = kmalloc_4k(&mut sys);
    g.bench_function("strict_map_unmap_4KiB", |b| {
        b.iter(|| map_unmap_4k(&mut sys, dev, va, DmaDirection::ToDevice))
    });
    g.finish();
}

/// The IOMMU's hot paths: a translation that hits the IOTLB and a 64 KiB device
/// read through the IOMMU.
fn iommu(c: &mut Criterion) {
    let mut g = c.benchmark_group("iommu");
    let (mut sys, dev) = iommu_system();
    let id = sys
        .kmalloc(64 << 10, dmasim::kernel::mm::gfp::GFP_KERNEL)
        .unwrap()
        .unwrap();
    let va = sys.kernel.buffers[&id].va;
    let a = sys
        .dma_map_single(dev, va, 64 << 10, DmaDirection::Bidirectional)
        .unwrap();
    sys.hw.iommu_translate(dev, a, false).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("iotlb_hit_translation", |b| {
        // std::hint::black_box on the u64: criterion's black_box reads a struct
        // byte by byte (volatile), which would cost more than the translation.
        b.iter(|| {
            std::hint::black_box(
                sys.hw
                    .iommu_translate(dev, std::hint::black_box(a + 64), false)
                    .map_or(0, |t| t.pa),
            )
        })
    });
    // Sixteen pages in turn: every lookup misses the micro-TLB and searches the set.
    for k in 0..16 {
        sys.hw.iommu_translate(dev, a + k * 4096, false).unwrap();
    }
    let mut k = 0u64;
    g.bench_function("iotlb_hit_translation_16_pages_in_turn", |b| {
        b.iter(|| {
            k = (k + 1) & 15;
            std::hint::black_box(
                sys.hw
                    .iommu_translate(dev, std::hint::black_box(a + k * 4096), false)
                    .map_or(0, |t| t.pa),
            )
        })
    });
    g.throughput(Throughput::Bytes(64 << 10));
    g.bench_function("device_read_64KiB_through_iommu", |b| {
        b.iter(|| {
            let j = sys.dev_start(dev, a, 64 << 10, None).unwrap();
            black_box(sys.wait(j).unwrap());
        })
    });
    let src = vec![0x42u8; 64 << 10];
    let mut dst = vec![0u8; 64 << 10];
    g.bench_function("host_baseline_memcpy_64KiB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.finish();
}

/// pcie-bench's test (outstanding.rs): 1000 random 64 B reads with 64 in flight over
/// a 64 MiB window of 4 KiB IO pages, nearly all IOTLB misses (a walk and a hold of
/// the device's queued requests each), against the same reads one at a time.
fn window_stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("outstanding");
    let mut p = quiet("arm64-coherent");
    p.iommu = "smmu".into();
    let mut sys = System::boot(p, RunOptions::default()).unwrap();
    let dev = sys.add_device(Device::new("nfp0", true, 3500, 600));
    let id = sys.vmalloc(64 << 20).unwrap().unwrap();
    let va = sys.kernel.buffers[&id].va;
    let t = sys.sg_from_range(va, 64 << 20, 64 << 10).unwrap();
    assert!(sys.dma_map_sg(dev, t, DmaDirection::ToDevice).unwrap() > 0);
    let base = sys.sg(t).unwrap().entries[0].dma_address;
    g.throughput(Throughput::Elements(1000));
    g.bench_function("window_1000_reads_64B_64_in_flight_64MiB", |b| {
        b.iter(|| {
            sys.streams.clear();
            black_box(
                sys.stream_window(dev, 64, 1000, DmaDirection::ToDevice, t, 64)
                    .unwrap()
                    .ns,
            )
        })
    });
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    g.bench_function("serial_1000_reads_64B_64MiB", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let j = sys
                    .dev_start(dev, base + (x % (1 << 20)) * 64, 64, None)
                    .unwrap();
                black_box(sys.wait(j).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    cpu_lines,
    device_dma,
    bounce_map_unmap,
    iommu_strict,
    iommu,
    window_stream
);

/// Diagnostic: an all-miss stream whose frames fit the host's caches (2 MiB), to
/// separate the model's own work from host memory traffic.
fn cpu_lines_small(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_line_writes_diag");
    g.sample_size(10);
    let page = [0xa5u8; 4096];
    let mut m = machine();
    g.throughput(Throughput::Elements((2u64 << 20) / 64 * 8));
    g.bench_function("all_miss_2MiB_stream_x8", |b| {
        b.iter(|| {
            for _ in 0..8 {
                for i in 0..(2u64 << 20) / 4096 {
                    m.cpu_write(0, 0, VA + i * 4096, black_box(&page)).unwrap();
                }
            }
        })
    });
    g.finish();
}

/// The buddy allocator: order-0 alloc+free pairs; and booting a 16 GiB platform.
fn page_alloc(c: &mut Criterion) {
    use dmasim::hw::rng::SimRng;
    use dmasim::kernel::mm::gfp::{GFP_HIGHUSER_MOVABLE, GFP_KERNEL};
    let mut g = c.benchmark_group("page_alloc");
    let p = quiet("arm64-noncoherent");
    let mut node = dmasim::kernel::mm::page_alloc::Node::new(
        p.ram_base,
        p.ram_base + p.ram,
        &dmasim::kernel::zone_layout(&p),
        &[],
    );
    let mut rng = SimRng::new(1);
    node.age(&mut rng);
    let mut live = Vec::with_capacity(64);
    g.throughput(Throughput::Elements(64));
    g.bench_function("order0_alloc_free_pairs_x64", |b| {
        b.iter(|| {
            for i in 0..64 {
                let gfp = if i % 2 == 0 {
                    GFP_KERNEL
                } else {
                    GFP_HIGHUSER_MOVABLE
                };
                live.push(node.alloc_pages(0, gfp, &mut rng).unwrap());
            }
            for pfn in live.drain(..) {
                node.free_pages(pfn, 0);
            }
        })
    });
    g.bench_function("host_baseline_box_page_x64", |b| {
        b.iter(|| {
            let v: Vec<Box<[u8; 4096]>> = (0..64).map(|_| Box::new([0u8; 4096])).collect();
            black_box(v);
        })
    });
    // Migration with data: 10,000 touched user pages moved by compact().
    let mut sys = System::boot(quiet("arm64-noncoherent"), RunOptions::default()).unwrap();
    let pid = sys.process_new("bench");
    let va = sys.mmap(pid, 10_000 * 4096, false).unwrap();
    sys.user_write(pid, va, &vec![0x3c; 10_000 * 4096]).unwrap();
    g.throughput(Throughput::Elements(10_000));
    g.sample_size(10);
    g.bench_function("migrate_10000_pages", |b| {
        b.iter(|| assert_eq!(sys.compact(), 10_000))
    });
    let src = vec![0x3cu8; 10_000 * 4096];
    let mut dst = vec![0u8; 10_000 * 4096];
    g.bench_function("host_baseline_copy_10000_pages", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.throughput(Throughput::Elements(1));
    let mut big = quiet("arm64-noncoherent");
    big.ram = 16 << 30;
    g.bench_function("boot_16GiB_platform", |b| {
        b.iter(|| black_box(System::boot(big.clone(), RunOptions::default()).unwrap()))
    });
    g.finish();
}

criterion_group!(diag, cpu_lines_small, page_alloc);
criterion_main!(benches, diag);
