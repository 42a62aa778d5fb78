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

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured.
    pub name: &'static str,
    /// The model's rate, in `unit`.
    pub model: f64,
    /// The host doing the same bytes with plain memory copies, in `unit`.
    pub host: f64,
    /// `model / host`.
    pub ratio: f64,
    /// Unit of both rates.
    pub unit: &'static str,
}

/// The whole `dmasim bench` result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Always `dmasim.bench/v1`.
    pub schema: &'static str,
    /// The figures.
    pub figures: Vec<Figure>,
}

/// Best (smallest) seconds of `reps` runs of `f`.
fn best_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
        .max(1e-9)
}

fn figure(name: &'static str, unit: &'static str, work: f64, model_s: f64, host_s: f64) -> Figure {
    let (model, host) = (work / model_s, work / host_s);
    Figure {
        name,
        model,
        host,
        ratio: model / host,
        unit,
    }
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

/// Runs the measurements. `scale` divides the work (1 = full size, larger = quicker).
pub fn run(scale: u64) -> BenchReport {
    let scale = scale.max(1);
    let mut p = PlatformConfig::preset("arm64-noncoherent").expect("built-in preset");
    p.noise = NoiseConfig::OFF;
    let mut figures = Vec::new();

    // CPU stores streaming through L1 and L2, every line a miss.
    let bytes = (64u64 << 20) / scale;
    let mut m = linear_machine(&p);
    let page = [0xa5u8; 4096];
    let model = best_secs(3, || {
        for i in 0..bytes / 4096 {
            let _ = m.cpu_write(0, 0, VA + i * 4096, black_box(&page));
        }
    });
    let mut host_buf = vec![0u8; bytes as usize];
    let host = best_secs(3, || {
        for c in host_buf.chunks_exact_mut(4096) {
            c.copy_from_slice(black_box(&page));
        }
        black_box(&host_buf);
    });
    figures.push(figure(
        "cpu line writes, all-miss stream",
        "M lines/s",
        bytes as f64 / 64.0 / 1e6,
        model,
        host,
    ));

    // CPU stores to an L1-resident working set.
    let rounds = 4096 / scale;
    let model = best_secs(3, || {
        for _ in 0..rounds {
            for i in 0..4 {
                let _ = m.cpu_write(0, 0, VA + i * 4096, black_box(&page));
            }
        }
    });
    let mut small = vec![0u8; 16 << 10];
    let host = best_secs(3, || {
        for _ in 0..rounds {
            for c in small.chunks_exact_mut(4096) {
                c.copy_from_slice(black_box(&page));
            }
        }
        black_box(&small);
    });
    figures.push(figure(
        "cpu line writes, L1-resident 16 KiB",
        "M lines/s",
        (rounds * 256) as f64 / 1e6,
        model,
        host,
    ));

    // A device reads 64 KiB through a non-coherent port with the sanitizer on.
    if let Ok(mut sys) = System::boot(p.clone(), RunOptions::default()) {
        let dev = sys.add_device(Device::new("bench0", false, 1_000_000, 0));
        if let Ok(Some(id)) = sys.kmalloc(64 << 10, crate::kernel::mm::gfp::GFP_KERNEL) {
            let va = sys.kernel.buffers[&id].va;
            let addr = sys
                .dma_map_single(dev, va, 64 << 10, DmaDirection::ToDevice)
                .unwrap_or(u64::MAX);
            let reps = 2000 / scale;
            let model = best_secs(3, || {
                for _ in 0..reps {
                    if let Ok(j) = sys.dev_start(dev, addr, 64 << 10, None) {
                        let _ = black_box(sys.wait(j));
                    }
                }
            });
            let src = vec![0x42u8; 64 << 10];
            let mut dst = vec![0u8; 64 << 10];
            let host = best_secs(3, || {
                for _ in 0..reps {
                    dst.copy_from_slice(black_box(&src));
                    black_box(&dst);
                }
            });
            figures.push(figure(
                "device DMA 64 KiB, non-coherent, sanitizer on",
                "GB/s",
                (reps * (64 << 10)) as f64 / 1e9,
                model,
                host,
            ));
        }
    }
    if let Some(f) = bounced_map_unmap(scale) {
        figures.push(f);
    }
    BenchReport {
        schema: "dmasim.bench/v1",
        figures,
    }
}

/// Bounced `dma_map_single` + `dma_unmap_single` of 4 KiB (`TO_DEVICE`, a 32-bit
/// device on 8 GiB, sanitizer on) against the host copying 4 KiB into a rotating
/// pool the size of one swiotlb area — the slots' access pattern, as Linux's
/// `area->index` moves on with every mapping.
fn bounced_map_unmap(scale: u64) -> Option<Figure> {
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
    let model = best_secs(3, || {
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
    });
    let src = vec![0x42u8; 4096];
    let mut pool = vec![0u8; area.max(4096)];
    let mut off = 0;
    let host = best_secs(3, || {
        for _ in 0..pairs {
            pool[off..off + 4096].copy_from_slice(black_box(&src));
            off = (off + 4096) % (pool.len() / 4096 * 4096);
        }
        black_box(&pool);
    });
    ok.then(|| {
        figure(
            "bounced map+unmap 4 KiB (host: memcpy into a swiotlb-area pool)",
            "k pairs/s",
            pairs as f64 / 1e3,
            model,
            host,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_is_measured_and_positive() {
        let r = run(64);
        assert_eq!(r.figures.len(), 4);
        for f in &r.figures {
            assert!(f.model.is_finite() && f.model > 0.0, "{f:?}");
            assert!(f.host.is_finite() && f.host > 0.0, "{f:?}");
            assert!((f.ratio - f.model / f.host).abs() < 1e-9);
        }
    }
}
