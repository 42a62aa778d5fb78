//! `dmasim bench`: the model's own speed on this host, each figure beside a host
//! baseline measured in the same run (the criterion benches in `benches/` are the
//! precise instrument; this is the quick look a user can take anywhere).

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use crate::config::{NoiseConfig, PlatformConfig};
use crate::hw::mmu::{Block, MemType};
use crate::hw::Machine;
use crate::kernel::device::Device;
use crate::kernel::dma::DmaDirection;
use crate::system::{RunOptions, System};

pub mod tag_lru;
use tag_lru::TagLru;

/// One measured figure: the model and its host baseline, measured in alternating
/// rounds (model, host, model, host, ...) so that a change in the host's load hits
/// both alike.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured.
    pub name: &'static str,
    /// The model's rate in its fastest round, in `unit`.
    pub model: f64,
    /// The host doing the same bytes with plain memory copies, fastest round, in `unit`.
    pub host: f64,
    /// `model / host` (fastest rounds).
    pub ratio: f64,
    /// The model's rate in its median round.
    pub model_median: f64,
    /// The host's rate in its median round.
    pub host_median: f64,
    /// `model_median / host_median`.
    pub ratio_median: f64,
    /// Rounds of each side.
    pub rounds: usize,
    /// The peer for this figure when it is not the host copy: the same line
    /// accesses through a tag-only LRU cache model, in the same alternating rounds.
    pub peer: Option<Peer>,
    /// Unit of both rates.
    pub unit: &'static str,
}

/// A figure's peer: the same work done by a tag-only LRU cache model
/// ([`tag_lru::TagLru`]: L1 32 KiB 8-way, L2 1 MiB 16-way, 64-byte lines).
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    /// What the peer is.
    pub name: &'static str,
    /// The peer's rate in its fastest round, in the figure's unit.
    pub rate: f64,
    /// The peer's rate in its median round.
    pub rate_median: f64,
    /// The model's fastest rate over the peer's.
    pub ratio: f64,
    /// The model's median rate over the peer's.
    pub ratio_median: f64,
}

/// The whole `dmasim bench` result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Always `dmasim.bench/v1`.
    pub schema: &'static str,
    /// What the rounds were timed with: `thread-cpu` (this thread's CPU time, so
    /// time spent waiting for a core on a loaded host is not counted) or `wall`.
    pub clock: &'static str,
    /// The figures.
    pub figures: Vec<Figure>,
}

/// A stopwatch: this thread's CPU time when the caller supplies a clock for it
/// (the model forbids `unsafe`, so the command line reads `CLOCK_THREAD_CPUTIME_ID`),
/// else wall time.
#[derive(Clone, Copy)]
enum Clock {
    ThreadCpu(fn() -> u64),
    Wall,
}

impl Clock {
    fn name(self) -> &'static str {
        match self {
            Clock::ThreadCpu(_) => "thread-cpu",
            Clock::Wall => "wall",
        }
    }

    /// Seconds `f` took.
    fn time(self, f: &mut dyn FnMut()) -> f64 {
        match self {
            Clock::ThreadCpu(now_ns) => {
                let t0 = now_ns();
                f();
                now_ns().saturating_sub(t0) as f64 / 1e9
            }
            Clock::Wall => {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            }
        }
    }
}

/// Fastest and median seconds of each side over `rounds` alternating rounds.
fn alternate(
    clock: Clock,
    rounds: usize,
    mut model: impl FnMut(),
    mut host: impl FnMut(),
) -> ((f64, f64), (f64, f64)) {
    let t = alternate_all(clock, rounds, &mut [&mut model, &mut host]);
    (t[0], t[1])
}

/// Fastest and median seconds of each of `sides`, run one after the other in each of
/// `rounds` rounds.
fn alternate_all(clock: Clock, rounds: usize, sides: &mut [&mut dyn FnMut()]) -> Vec<(f64, f64)> {
    let mut t = vec![Vec::with_capacity(rounds); sides.len()];
    for _ in 0..rounds.max(1) {
        for (side, times) in sides.iter_mut().zip(&mut t) {
            times.push(clock.time(side));
        }
    }
    t.iter_mut().map(|v| min_median(v)).collect()
}

/// (min, median) of `v`, each at least 1 ns so that rates stay finite.
fn min_median(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (v[0].max(1e-9), med.max(1e-9))
}

/// Rounds per figure: odd, so the median is a measured round.
const ROUNDS: usize = 5;

fn figure(
    name: &'static str,
    unit: &'static str,
    work: f64,
    (model_s, host_s): ((f64, f64), (f64, f64)),
) -> Figure {
    let (model, host) = (work / model_s.0, work / host_s.0);
    let (model_median, host_median) = (work / model_s.1, work / host_s.1);
    Figure {
        name,
        model,
        host,
        ratio: model / host,
        model_median,
        host_median,
        ratio_median: model_median / host_median,
        rounds: ROUNDS,
        unit,
        peer: None,
    }
}

/// A figure whose rounds timed the model, the host copy and the tag-only model.
fn figure_with_peer(name: &'static str, unit: &'static str, work: f64, t: &[(f64, f64)]) -> Figure {
    let mut f = figure(name, unit, work, (t[0], t[1]));
    let (rate, rate_median) = (work / t[2].0, work / t[2].1);
    f.peer = Some(Peer {
        name: "tag-only LRU model",
        rate,
        rate_median,
        ratio: f.model / rate,
        ratio_median: f.model_median / rate_median,
    });
    f
}

/// Where [`linear_machine`] maps RAM (arm64's `PAGE_OFFSET`).
pub const VA: u64 = 0xffff_0000_0000_0000;

/// A bare machine of preset `p` with all of RAM mapped at [`VA`] (the setup of every
/// CPU-side benchmark, here and in `benches/`).
pub fn linear_machine(p: &PlatformConfig) -> Machine {
    let mut m = Machine::new(p, 1, 1 << 20);
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

/// Runs the measurements on wall time. `scale` divides the work (1 = full size,
/// larger = quicker).
pub fn run(scale: u64) -> BenchReport {
    run_timed(scale, None)
}

/// Runs the measurements, timing each round with `thread_cpu_ns` (this thread's CPU
/// time in ns, monotonic) when given, else with wall time.
pub fn run_timed(scale: u64, thread_cpu_ns: Option<fn() -> u64>) -> BenchReport {
    let scale = scale.max(1);
    let clock = thread_cpu_ns.map_or(Clock::Wall, Clock::ThreadCpu);
    let mut p = PlatformConfig::preset("arm64-noncoherent").expect("built-in preset");
    p.noise = NoiseConfig::OFF;
    let mut figures = Vec::new();

    // CPU stores streaming through L1 and L2, every line a miss.
    let bytes = (64u64 << 20) / scale;
    let mut m = linear_machine(&p);
    let page = [0xa5u8; 4096];
    let mut host_buf = vec![0u8; bytes as usize];
    let mut tags = TagLru::default();
    let t = alternate_all(
        clock,
        ROUNDS,
        &mut [
            &mut || {
                for i in 0..bytes / 4096 {
                    let _ = m.cpu_write(0, 0, VA + i * 4096, black_box(&page));
                }
            },
            &mut || {
                for c in host_buf.chunks_exact_mut(4096) {
                    c.copy_from_slice(black_box(&page));
                }
                black_box(&host_buf);
            },
            &mut || {
                for a in (0..bytes).step_by(tag_lru::LINE as usize) {
                    tags.access(black_box(a), true);
                }
            },
        ],
    );
    let lines = bytes as f64 / 64.0 / 1e6;
    figures.push(figure_with_peer(
        "cpu line writes, all-miss stream",
        "M lines/s",
        lines,
        &t,
    ));

    // CPU loads streaming through L1 and L2 over the region the stores above
    // wrote (larger than L2, so every line misses and many victims are dirty).
    let mut got = [0u8; 4096];
    let mut host_got = [0u8; 4096];
    let t = alternate_all(
        clock,
        ROUNDS,
        &mut [
            &mut || {
                for i in 0..bytes / 4096 {
                    let _ = m.cpu_read(0, 0, VA + i * 4096, &mut got);
                    black_box(&got);
                }
            },
            &mut || {
                for c in host_buf.chunks_exact(4096) {
                    host_got.copy_from_slice(black_box(c));
                    black_box(&host_got);
                }
            },
            &mut || {
                for a in (0..bytes).step_by(tag_lru::LINE as usize) {
                    tags.access(black_box(a), false);
                }
            },
        ],
    );
    figures.push(figure_with_peer(
        "cpu line reads, all-miss stream",
        "M lines/s",
        lines,
        &t,
    ));

    // CPU stores to an L1-resident working set.
    let rounds = 4096 / scale;
    let mut small = vec![0u8; 16 << 10];
    let t = alternate_all(
        clock,
        ROUNDS,
        &mut [
            &mut || {
                for _ in 0..rounds {
                    for i in 0..4 {
                        let _ = m.cpu_write(0, 0, VA + i * 4096, black_box(&page));
                    }
                }
            },
            &mut || {
                for _ in 0..rounds {
                    for c in small.chunks_exact_mut(4096) {
                        c.copy_from_slice(black_box(&page));
                    }
                }
                black_box(&small);
            },
            &mut || {
                for _ in 0..rounds {
                    for a in (0..16u64 << 10).step_by(tag_lru::LINE as usize) {
                        tags.access(black_box(a), true);
                    }
                }
            },
        ],
    );
    figures.push(figure_with_peer(
        "cpu line writes, L1-resident 16 KiB",
        "M lines/s",
        (rounds * 256) as f64 / 1e6,
        &t,
    ));
    black_box(tags.stats);

    // A device reads, then writes new data into, 64 KiB through a non-coherent port
    // with the sanitizer on.
    if let Ok(mut sys) = System::boot(p.clone(), RunOptions::default()) {
        let dev = sys.add_device(Device::new("bench0", false, 1_000_000, 0));
        if let Ok(Some(id)) = sys.kmalloc(64 << 10, crate::kernel::mm::gfp::GFP_KERNEL) {
            let va = sys.kernel.buffers[&id].va;
            let addr = sys
                .dma_map_single(dev, va, 64 << 10, DmaDirection::Bidirectional)
                .unwrap_or(u64::MAX);
            let reps = 2000 / scale;
            let src = vec![0x42u8; 64 << 10];
            let mut dst = vec![0u8; 64 << 10];
            let gb = (reps * (64 << 10)) as f64 / 1e9;
            let t = alternate(
                clock,
                ROUNDS,
                || {
                    for _ in 0..reps {
                        if let Ok(j) = sys.dev_start(dev, addr, 64 << 10, None) {
                            let _ = black_box(sys.wait(j));
                        }
                    }
                },
                || {
                    for _ in 0..reps {
                        dst.copy_from_slice(black_box(&src));
                        black_box(&dst);
                    }
                },
            );
            figures.push(figure(
                "device DMA read 64 KiB, non-coherent, sanitizer on",
                "GB/s",
                gb,
                t,
            ));
            // Each write brings bytes other than the buffer holds (alternating
            // payloads), and pays for its own copy of the payload as a script's
            // `dev_write(dev, addr, blob)` does.
            let payloads = [vec![0x11u8; 64 << 10], vec![0x22u8; 64 << 10]];
            let mut k = 0;
            let t = alternate(
                clock,
                ROUNDS,
                || {
                    for _ in 0..reps {
                        k ^= 1;
                        let data = black_box(&payloads[k]).clone();
                        if let Ok(j) = sys.dev_start(dev, addr, 64 << 10, Some(data)) {
                            let _ = black_box(sys.wait(j));
                        }
                    }
                },
                || {
                    for _ in 0..reps {
                        dst.copy_from_slice(black_box(&src));
                        black_box(&dst);
                    }
                },
            );
            figures.push(figure(
                "device DMA write 64 KiB of new data, non-coherent, sanitizer on",
                "GB/s",
                gb,
                t,
            ));
        }
    }
    if let Some(f) = bounced_map_unmap(clock, scale) {
        figures.push(f);
    }
    figures.extend(large_device_jobs(clock, scale));
    BenchReport {
        schema: "dmasim.bench/v1",
        clock: clock.name(),
        figures,
    }
}

/// A machine for the large device jobs: `arm64-noncoherent` with noise off, a
/// 256 MiB CMA area and `iommu` (`"none"` or `"smmu"`), and a non-coherent device
/// that called `dma_set_max_seg_size(dev, UINT_MAX)` (so `dma_map_sg` through the
/// IOMMU merges a whole table into one DMA segment, `__finalise_sg`).
fn large_job_system(iommu: &str) -> Option<(System, usize)> {
    let mut p = PlatformConfig::preset("arm64-noncoherent").ok()?;
    p.noise = NoiseConfig::OFF;
    p.cma = 256 << 20;
    p.iommu = iommu.into();
    let mut sys = System::boot(p, RunOptions::default()).ok()?;
    let mut d = Device::new("bench2", false, 1_000_000, 0);
    d.max_segment = u64::from(u32::MAX);
    let dev = sys.add_device(d);
    Some((sys, dev))
}

/// The device write job: a `dma_alloc_coherent` buffer of `bytes` without an
/// IOMMU (CMA). Returns the machine, the device and the buffer's DMA address.
fn write_job_target(bytes: u64) -> Option<(System, usize, u64)> {
    let (mut sys, dev) = large_job_system("none")?;
    let id = sys.dma_alloc_coherent(dev, bytes).ok()??;
    let addr = sys.kernel.buffers[&id].dma?;
    Some((sys, dev, addr))
}

/// The IOMMU read job with 4 KiB IO pages, as Linux gets them: a `vmalloc` buffer
/// (single pages from wherever the buddy allocator finds them, so physically
/// scattered) filled with `fill`, its `sg_table` (`sg_alloc_table_from_pages`), and
/// `dma_map_sg(dev, sgt, DMA_TO_DEVICE)` behind the SMMU: `iommu_dma_map_sg` maps each
/// entry at the next IOVA with the largest page `iommu_pgsize` allows, which for a
/// run of scattered pages is 4 KiB. Returns the machine, the device and the table.
fn smmu_scattered_read_target(bytes: u64, fill: u8) -> Option<(System, usize, u64)> {
    let (mut sys, dev) = large_job_system("smmu")?;
    let id = sys.vmalloc(bytes).ok()??;
    let va = sys.kernel.buffers[&id].va;
    sys.cpu_fill_va(va, bytes, fill).ok()?;
    let sgt = sys.sg_from_range(va, bytes, u64::from(u32::MAX)).ok()?;
    (sys.dma_map_sg(dev, sgt, DmaDirection::ToDevice).ok()? > 0).then_some((sys, dev, sgt))
}

/// The IOMMU read job with the IO pages `iommu_dma_alloc` chooses: a
/// `dma_alloc_coherent` buffer of `bytes` behind the SMMU (2 MiB blocks where its
/// pages allow). Returns the machine, the device and the buffer's IOVA.
fn smmu_coherent_read_target(bytes: u64) -> Option<(System, usize, u64)> {
    let (mut sys, dev) = large_job_system("smmu")?;
    let id = sys.dma_alloc_coherent(dev, bytes).ok()??;
    let addr = sys.kernel.buffers[&id].dma?;
    Some((sys, dev, addr))
}

/// The large device jobs against `memcpy` of as many bytes, non-coherent
/// device, sanitizer on: a device writing 64 MiB of new data into a CMA buffer (no
/// IOMMU), once as a script's `dev_write(dev, addr, blob)` does it (Rhai copies the
/// blob into the call) and once as `blob.dev_write(dev, addr)` does (the blob lent
/// to the transfer); and a device reading 64 MiB through the SMMU, from a scattered
/// buffer mapped with `dma_map_sg` (4 KiB IO pages, the row) and from a
/// `dma_alloc_coherent` buffer (2 MiB IO pages). A round whose transfer fails
/// drops its figure.
fn large_device_jobs(clock: Clock, scale: u64) -> Vec<Figure> {
    let mut out = Vec::new();
    let bytes = (64u64 << 20) / scale;
    let gb = bytes as f64 / 1e9;
    let mut src = vec![0x42u8; bytes as usize];
    let mut dst = vec![0u8; bytes as usize];
    let mut memcpy = || {
        src[0] ^= 1;
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
    };
    if let Some((mut sys, dev, addr)) = write_job_target(bytes) {
        // Each write brings bytes other than the buffer holds (alternating payloads).
        let mut payloads = [vec![0x11u8; bytes as usize], vec![0x22u8; bytes as usize]];
        for lent in [false, true] {
            let mut k = 0;
            let mut ok = true;
            let t = alternate(
                clock,
                ROUNDS,
                || {
                    k ^= 1;
                    ok &= if lent {
                        sys.dev_write_lent(dev, addr, black_box(&mut payloads[k]))
                            .is_ok()
                    } else {
                        let data = black_box(&payloads[k]).clone();
                        sys.dev_start(dev, addr, bytes, Some(data))
                            .and_then(|j| sys.wait(j))
                            .is_ok()
                    };
                },
                &mut memcpy,
            );
            let name = if lent {
                "device DMA write 64 MiB of new data, blob lent (blob.dev_write(dev, addr))"
            } else {
                "device DMA write 64 MiB of new data, blob copied (dev_write(dev, addr, blob))"
            };
            if ok {
                out.push(figure(name, "GB/s", gb, t));
            }
        }
    }
    if let Some((mut sys, dev, sgt)) = smmu_scattered_read_target(bytes, 0x5a) {
        let mut ok = true;
        let t = alternate(
            clock,
            ROUNDS,
            || {
                let got = sys.dev_sg(dev, sgt, bytes, None);
                ok &= matches!(&got, Ok(Some(b)) if b.len() as u64 == bytes);
                black_box(got).ok();
            },
            &mut memcpy,
        );
        if ok {
            out.push(figure(
                "device DMA read 64 MiB through the SMMU, 4 KiB IO pages (vmalloc + dma_map_sg)",
                "GB/s",
                gb,
                t,
            ));
        }
    }
    if let Some((mut sys, dev, addr)) = smmu_coherent_read_target(bytes) {
        let mut ok = true;
        let t = alternate(
            clock,
            ROUNDS,
            || {
                let got = sys
                    .dev_start(dev, addr, bytes, None)
                    .and_then(|j| sys.wait(j));
                ok &= matches!(&got, Ok(Some(b)) if b.len() as u64 == bytes);
                black_box(got).ok();
            },
            &mut memcpy,
        );
        if ok {
            out.push(figure(
                "device DMA read 64 MiB through the SMMU, 2 MiB IO pages (dma_alloc_coherent)",
                "GB/s",
                gb,
                t,
            ));
        }
    }
    out
}

/// Bounced `dma_map_single` + `dma_unmap_single` of 4 KiB (`TO_DEVICE`, a 32-bit
/// device on 8 GiB, sanitizer on) against the host copying 4 KiB into a rotating
/// pool the size of one swiotlb area — the slots' access pattern, as Linux's
/// `area->index` moves on with every mapping.
fn bounced_map_unmap(clock: Clock, scale: u64) -> Option<Figure> {
    use crate::check::MapKind;
    let mut p = PlatformConfig::preset("arm64-coherent").ok()?;
    p.noise = NoiseConfig::OFF;
    p.ram = 8 << 30;
    let mut sys = System::boot(p, RunOptions::default()).ok()?;
    let dev = sys.add_device(Device::new("bench1", true, 1_000_000, 0));
    let id = sys
        .kmalloc(4096, crate::kernel::mm::gfp::GFP_KERNEL)
        .ok()??;
    let va = sys.kernel.buffers[&id].va;
    sys.cpu_write_va(va, &[0x42; 4096]).ok()?;
    let area = sys.kernel.swiotlb.as_ref()?.area_bytes() as usize;
    let pairs = (20_000 / scale).max(1);
    let mut ok = true;
    let src = vec![0x42u8; 4096];
    let mut pool = vec![0u8; area.max(4096)];
    let mut off = 0;
    // The peer: the pair's line accesses (64 loads of the buffer, 64 stores into
    // the slot, which moves on through the area) through the tag-only model.
    let mut tags = TagLru::default();
    let slots = (area as u64 / 4096).max(1);
    let mut slot = 0;
    let t = alternate_all(
        clock,
        ROUNDS,
        &mut [
            &mut || {
                for _ in 0..pairs {
                    match sys.dma_map_single(dev, va, 4096, DmaDirection::ToDevice) {
                        Ok(a) if !sys.dma_mapping_error(dev, a) => {
                            ok &= sys
                                .dma_unmap(dev, a, 4096, DmaDirection::ToDevice, MapKind::Single)
                                .is_ok();
                        }
                        _ => ok = false,
                    }
                }
            },
            &mut || {
                for _ in 0..pairs {
                    pool[off..off + 4096].copy_from_slice(black_box(&src));
                    off = (off + 4096) % (pool.len() / 4096 * 4096);
                }
                black_box(&pool);
            },
            &mut || {
                for _ in 0..pairs {
                    let dst = (1 << 30) + slot * 4096;
                    for l in (0..4096).step_by(tag_lru::LINE as usize) {
                        tags.access(black_box(l), false);
                        tags.access(black_box(dst + l), true);
                    }
                    slot = (slot + 1) % slots;
                }
                black_box(tags.stats);
            },
        ],
    );
    ok.then(|| {
        figure_with_peer(
            "bounced map+unmap 4 KiB (host: memcpy into a swiotlb-area pool)",
            "k pairs/s",
            pairs as f64 / 1e3,
            &t,
        )
    })
}

/// The paths issue 19 found quadratic (items 8 to 12), each as a script that makes
/// `n` objects: `benches/scaling.rs` and `examples/scaling_cpu.rs` time them at 1k
/// and 100k objects, and the CPU time per object must stay within a factor of 2.
pub const SCALING_PATHS: [&str; 5] = [
    "dma_map_sg",
    "swiotlb_full",
    "process",
    "vfio_map_dma",
    "rhai_push",
];

/// How many times the script of `path` makes its `n` objects: 1, except for
/// `rhai_push`, which builds a fresh array of `n` elements until 100k pushes are done
/// (at 1k objects one array costs ~0.2 ms, within the noise of a run's start-up; the
/// same number of pushes at every size compares like with like).
pub fn scaling_repeats(path: &str, n: u64) -> u64 {
    match path {
        "rhai_push" if n > 0 => (100_000 / n).max(1),
        _ => 1,
    }
}

/// The script of one of [`SCALING_PATHS`] with `n` objects (`None` for another name),
/// made [`scaling_repeats`] times: the cost per object is
/// `(time(n) - time(0)) / (n * scaling_repeats(path, n))`.
pub fn scaling_script(path: &str, n: u64) -> Option<String> {
    Some(match path {
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
        // Item 12: a Rhai array grown by push was recounted whole after each push.
        "rhai_push" => format!(
            "boot(\"arm64-coherent\", #{{ noise: \"off\" }});\nlet a = [];\n\
             for r in 0..{reps} {{ a = []; for i in 0..{n} {{ a.push(i); }} }}\n\
             expect_eq(a.len(), {n}, \"all pushed\");\n",
            reps = scaling_repeats(path, n)
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_is_measured_and_positive() {
        let r = run(64);
        assert_eq!(r.figures.len(), 10, "{:?}", r.figures);
        for f in &r.figures {
            assert!(f.model.is_finite() && f.model > 0.0, "{f:?}");
            assert!(f.host.is_finite() && f.host > 0.0, "{f:?}");
            assert!((f.ratio - f.model / f.host).abs() < 1e-9);
            assert!((f.ratio_median - f.model_median / f.host_median).abs() < 1e-9);
            // The fastest round is never slower than the median one.
            assert!(
                f.model >= f.model_median && f.host >= f.host_median,
                "{f:?}"
            );
            assert_eq!(f.rounds, ROUNDS);
        }
        // The CPU figures and the bounce pair have the tag-only model beside them.
        let with_peer: Vec<&str> = r
            .figures
            .iter()
            .filter(|f| f.peer.is_some())
            .map(|f| f.name)
            .collect();
        assert_eq!(with_peer.len(), 4, "{with_peer:?}");
        assert!(with_peer
            .iter()
            .all(|n| n.starts_with("cpu") || n.starts_with("bounced")));
        for f in &r.figures {
            if let Some(p) = &f.peer {
                assert!(p.rate.is_finite() && p.rate >= p.rate_median && p.rate_median > 0.0);
                assert!((p.ratio - f.model / p.rate).abs() < 1e-9, "{f:?}");
                assert!((p.ratio_median - f.model_median / p.rate_median).abs() < 1e-9);
            }
        }
        assert_eq!(r.clock, "wall");
    }

    #[test]
    fn min_median_of_odd_and_even_rounds() {
        assert_eq!(min_median(&mut [3.0, 1.0, 2.0]), (1.0, 2.0));
        assert_eq!(min_median(&mut [4.0, 1.0, 2.0, 3.0]), (1.0, 2.5));
    }

    #[test]
    fn a_supplied_clock_times_the_rounds() {
        // A fake CPU clock that advances 1 ms per reading: every round then lasts
        // exactly 1 ms whatever the host does, so the rates are work / 1 ms.
        use std::sync::atomic::{AtomicU64, Ordering};
        static T: AtomicU64 = AtomicU64::new(0);
        fn fake() -> u64 {
            T.fetch_add(1_000_000, Ordering::Relaxed)
        }
        let r = run_timed(256, Some(fake));
        assert_eq!(r.clock, "thread-cpu");
        for f in &r.figures {
            assert!((f.ratio - 1.0).abs() < 1e-9, "{f:?}");
            if let Some(p) = &f.peer {
                assert!((p.ratio - 1.0).abs() < 1e-9, "{f:?}");
            }
            assert!((f.model - f.model_median).abs() < 1e-9, "{f:?}");
        }
    }

    #[test]
    fn the_4k_smmu_read_job_maps_scattered_pages_with_4k_io_pages() {
        // iommu_dma_map_sg maps each entry with the largest page iommu_pgsize
        // allows (drivers/iommu/dma-iommu.c, drivers/iommu/iommu.c): a vmalloc
        // buffer's scattered pages get 4 KiB IO pages, every one of which the
        // device's read walks for (a measurement of 2 MiB blocks would fail here).
        let bytes = 1u64 << 20;
        let (mut sys, dev, sgt) = smmu_scattered_read_target(bytes, 0x5a).expect("target");
        let t = sys.sg(sgt).expect("table").clone();
        assert!(
            t.entries.len() > 16,
            "scattered pages: {} runs",
            t.entries.len()
        );
        assert_eq!(
            t.mapped, 1,
            "dma_set_max_seg_size(UINT_MAX): one DMA segment"
        );
        let iova = t.entries[0].dma_address;
        assert_eq!(t.entries[0].dma_len, bytes);
        let misses = sys.hw.iommu.stats.iotlb_misses;
        let got = sys
            .dev_sg(dev, sgt, bytes, None)
            .expect("read")
            .expect("bytes");
        assert_eq!(
            got,
            vec![0x5a; bytes as usize],
            "the device read the buffer"
        );
        assert!(
            sys.hw.iommu.stats.iotlb_misses - misses >= bytes / 4096,
            "one walk per 4 KiB IO page"
        );
        for page in 0..bytes / 4096 {
            let tr = sys.hw.iommu_translate(dev, iova + page * 4096, false);
            assert_eq!(tr.map(|t| t.span), Ok(4096), "IO page {page}");
        }
        assert!(
            sys.check.findings().is_empty(),
            "{:?}",
            sys.check.findings()
        );
    }

    #[test]
    fn the_coherent_smmu_read_job_gets_2m_io_pages() {
        // The second SMMU row: iommu_dma_alloc's pages allow 2 MiB blocks.
        let bytes = 4u64 << 20;
        let (mut sys, dev, iova) = smmu_coherent_read_target(bytes).expect("target");
        let tr = sys.hw.iommu_translate(dev, iova, false).expect("mapped");
        assert_eq!(tr.span, 2 << 20);
        let j = sys.dev_start(dev, iova, bytes, None).expect("start");
        assert_eq!(
            sys.wait(j).expect("wait").map(|b| b.len() as u64),
            Some(bytes)
        );
    }

    #[test]
    fn the_write_jobs_write_the_payload_both_ways() {
        // The two write rows measure the same write: a copied payload and a lent
        // one leave the same bytes in the buffer and the lent blob intact.
        let bytes = 1u64 << 20;
        let (mut sys, dev, addr) = write_job_target(bytes).expect("target");
        let pa = sys.kernel.devices[dev].dma_to_phys(addr);
        let mut payload = vec![0x11u8; bytes as usize];
        sys.dev_write_lent(dev, addr, &mut payload).expect("lent");
        assert_eq!(payload, vec![0x11u8; bytes as usize]);
        let mut got = vec![0u8; bytes as usize];
        sys.hw.peek(pa, &mut got);
        assert_eq!(got, payload);
        let j = sys
            .dev_start(dev, addr, bytes, Some(vec![0x22; bytes as usize]))
            .expect("start");
        assert_eq!(sys.wait(j).expect("wait"), None);
        sys.hw.peek(pa, &mut got);
        assert_eq!(got, vec![0x22u8; bytes as usize]);
        assert!(
            sys.check.findings().is_empty(),
            "{:?}",
            sys.check.findings()
        );
    }
}
