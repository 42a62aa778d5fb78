//! The hugepage poll-mode driver (issue 7): 100,000 frames through the descriptor
//! ring intact in both IOVA modes, the figures beside the kernel's interrupt path,
//! and the errors a user meets.

mod common;

use common::{ids, ok, scenario};
use dmasim::config::PlatformConfig;
use dmasim::kernel::device::Device;
use dmasim::system::{RunOptions, System};
use dmasim::uapi::pmd::IovaMode;

fn boot(iommu: &str, hugepages: u64) -> (System, usize, u32) {
    boot_nic(iommu, hugepages, 64)
}

fn boot_nic(iommu: &str, hugepages: u64, dma_bits: u32) -> (System, usize, u32) {
    let mut p = PlatformConfig::preset("arm64-coherent").unwrap();
    p.noise = dmasim::config::NoiseConfig::OFF;
    p.iommu = iommu.into();
    p.hugepages = hugepages;
    let mut sys = System::boot(p, RunOptions::default()).unwrap();
    let mut d = Device::new("nic0", true, 1250, 0);
    d.dma_bits = dma_bits;
    let nic = sys.add_device(d);
    let pid = sys.process_new("l2fwd");
    (sys, nic, pid)
}

/// A frame whose bytes depend on its number, so a frame delivered into the wrong
/// buffer or a stale one shows.
fn frame(n: u64) -> Vec<u8> {
    let len = 64 + (n * 37) % 1437;
    (0..len)
        .map(|i| (n.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8)
        .collect()
}

/// Injects `total` frames in bursts of 32, polls after each, and checks each one.
fn run(sys: &mut System, q: u64, total: u64) -> u64 {
    let mut next_rx = 0;
    let mut n = 0;
    while n < total {
        for k in 0..32 {
            assert!(sys.pmd_inject(q, frame(n + k)).unwrap(), "ring full at {n}");
        }
        n += 32;
        for f in sys.pmd_rx_burst(q, 32).unwrap() {
            assert_eq!(f, frame(next_rx), "frame {next_rx} corrupted");
            next_rx += 1;
        }
    }
    next_rx
}

#[test]
fn pa_mode_receives_100000_frames_intact() {
    let (mut sys, nic, pid) = boot("none", 2);
    let q = sys.pmd_open(nic, pid, IovaMode::Pa, 512, 2048).unwrap();
    assert!(q >= 0, "pmd_open: {q}");
    let got = run(&mut sys, q as u64, 100_000);
    assert_eq!(got, 100_000);
    let st = sys.pmd_stats(q as u64).unwrap();
    assert_eq!(
        (st.injected, st.received, st.dropped),
        (100_000, 100_000, 0)
    );
    // The device uses physical addresses: the pages are pinned (FOLL_LONGTERM).
    assert!(
        sys.kernel.pins_acquired >= 257,
        "pinned {}",
        sys.kernel.pins_acquired
    );
    assert_eq!(
        sys.hw.iommu.stats.iotlb_hits + sys.hw.iommu.stats.iotlb_misses,
        0
    );
}

#[test]
fn va_mode_goes_through_vfio_and_the_iommu() {
    let (mut sys, nic, pid) = boot("smmu", 2);
    let q = sys.pmd_open(nic, pid, IovaMode::Va, 256, 2048).unwrap();
    assert!(q >= 0, "pmd_open: {q}");
    assert_eq!(run(&mut sys, q as u64, 100_000), 100_000);
    let st = sys.pmd_stats(q as u64).unwrap();
    assert_eq!(st.received, 100_000);
    // Every NIC access (a frame and a descriptor per packet) was translated; VFIO
    // mapped the hugepage as one 2 MiB block, so one IOTLB entry serves them all.
    let t = sys.hw.iommu.stats;
    assert!(t.iotlb_hits + t.iotlb_misses >= 200_000, "{t:?}");
    assert!(t.iotlb_misses <= 2 && t.faults == 0, "{t:?}");
}

#[test]
fn a_full_ring_drops_and_empty_polls_cost_time() {
    let (mut sys, nic, pid) = boot("none", 1);
    let q = sys.pmd_open(nic, pid, IovaMode::Pa, 8, 64).unwrap() as u64;
    for n in 0..10 {
        let delivered = sys.pmd_inject(q, frame(n)[..64].to_vec()).unwrap();
        assert_eq!(delivered, n < 8, "frame {n}");
    }
    assert_eq!(sys.pmd_rx_burst(q, 32).unwrap().len(), 8);
    let before = sys.pmd_stats(q).unwrap();
    assert!(sys.pmd_rx_burst(q, 32).unwrap().is_empty());
    let after = sys.pmd_stats(q).unwrap();
    assert_eq!(
        (after.dropped, after.empty_polls),
        (2, before.empty_polls + 1)
    );
    assert!(
        after.cpu_ns > before.cpu_ns,
        "an empty poll still reads the descriptor"
    );
}

#[test]
fn without_hugepages_pmd_open_is_enomem_and_va_mode_needs_the_iommu() {
    let (mut sys, nic, pid) = boot("none", 0);
    assert_eq!(
        sys.pmd_open(nic, pid, IovaMode::Pa, 512, 2048).unwrap(),
        -12
    );
    let (mut sys, nic, pid) = boot("none", 2);
    let r = sys.pmd_open(nic, pid, IovaMode::Va, 512, 2048).unwrap();
    assert!(r < 0, "VFIO without an IOMMU refuses: {r}");
    assert!(
        sys.pmd_open(nic, pid, IovaMode::Pa, 3, 2048).is_err(),
        "ring too small"
    );
    // A NIC driving 32 address bits cannot take 48-bit user addresses as IOVAs.
    let (mut sys, nic, pid) = boot_nic("smmu", 2, 32);
    assert_eq!(
        sys.pmd_open(nic, pid, IovaMode::Va, 512, 2048).unwrap(),
        -22
    );
    assert!(
        sys.log.iter().any(|l| l.contains("out of range")),
        "EAL says why"
    );
    assert!(
        sys.pmd_open(nic, pid, IovaMode::Pa, 512, 2048).unwrap() >= 0,
        "PA mode works"
    );
}

#[test]
fn the_scenarios_report_the_pmd_ahead_of_the_kernel_path() {
    for (name, iommu) in [("pmd-rx.rhai", false), ("pmd-rx-vfio.rhai", true)] {
        let (r, j) = scenario(name, 1, None);
        ok(&r);
        assert!(ids(&j).is_empty(), "{name}: {:?}", ids(&j));
        let rx = &j["stats"]["rx"];
        let (pmd, kernel) = (&rx["pmd"], &rx["kernel"]);
        assert_eq!(pmd["frames"], 2016, "{name}");
        assert_eq!(kernel["frames"], 2000, "{name}");
        let (p, k) = (
            pmd["ns_per_packet"].as_u64().unwrap(),
            kernel["ns_per_packet"].as_u64().unwrap(),
        );
        assert!(
            p > 0 && p * 2 < k,
            "{name}: PMD {p} ns/packet vs kernel {k}"
        );
        let pps = pmd["packets_per_s"].as_u64().unwrap();
        assert!(
            pps.abs_diff(1_000_000_000 / p) * 100 < pps,
            "{name}: {pps} packets/s vs {p} ns"
        );
        assert!(
            pmd["empty_polls"].as_u64().unwrap() >= 60,
            "{name}: each burst is followed by an empty poll"
        );
        assert!(
            j["stats"]["uaccess"]["copy_to_user_bytes"]
                .as_u64()
                .unwrap()
                >= 2000 * 1500
        );
        let translated = j["stats"]["iommu"]["iotlb_hits"].as_u64().unwrap();
        assert_eq!(translated > 0, iommu, "{name}: IOTLB hits {translated}");
    }
}

#[test]
fn a_device_handed_to_vfio_has_no_kernel_driver() {
    let (mut sys, nic, pid) = boot("smmu", 2);
    assert!(sys.pmd_open(nic, pid, IovaMode::Va, 64, 2048).unwrap() >= 0);
    let va = sys.mmap(pid, 4096, false).unwrap();
    let e = sys
        .netdev_rx(nic, pid, va, vec![1; 64])
        .unwrap_err()
        .to_string();
    assert!(e.contains("vfio-pci"), "{e}");
}

#[test]
fn on_a_non_coherent_port_the_pmd_polls_stale_copies_and_the_sanitizer_says_so() {
    for seed in [0, 7] {
        let (r, j) = scenario("pmd-rx-noncoherent.rhai", seed, None);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(ids(&j), ["stale-cpu-read"], "seed {seed}");
        let f = &j["findings"][0];
        assert_eq!(f["manifested"], true);
        assert_eq!(f["severity"], "error");
        assert!(f["message"].as_str().unwrap().contains("non-coherent port"));
        assert_eq!(r.exit_code(), 1);
    }
}

#[test]
fn tx_on_a_coherent_port_sends_every_frame_and_reclaims_descriptors() {
    for mode in ["none", "smmu"] {
        let (mut sys, nic, pid) = boot(mode, 2);
        let iova = if mode == "smmu" {
            IovaMode::Va
        } else {
            IovaMode::Pa
        };
        let q = sys.pmd_open_with(nic, pid, iova, 16, 2048, true).unwrap();
        assert!(q >= 0, "{mode}: {q}");
        let q = q as u64;
        // Ten laps of a 16-descriptor ring: without reclaiming, the second lap
        // would find it full.
        for lap in 0..10u64 {
            let frames: Vec<Vec<u8>> = (0..16).map(|k| frame(lap * 16 + k)).collect();
            assert_eq!(
                sys.pmd_tx_burst(q, frames.clone()).unwrap(),
                16,
                "lap {lap}"
            );
            assert_eq!(sys.pmd_tx_wire(q).unwrap(), frames, "{mode} lap {lap}");
        }
        // More than the ring holds, without the NIC draining it: 16 queued.
        let many: Vec<Vec<u8>> = (0..20).map(frame).collect();
        assert_eq!(sys.pmd_tx_burst(q, many).unwrap(), 16);
        let s = sys.pmd_stats(q).unwrap();
        assert_eq!(
            (s.tx_queued, s.tx_sent, s.tx_full, s.tx_stale),
            (176, 160, 4, 0),
            "{mode}"
        );
        // An RX-only PMD refuses TX calls with a clear error.
        let (mut sys, nic, pid) = boot(mode, 2);
        let q = sys.pmd_open(nic, pid, iova, 16, 2048).unwrap() as u64;
        let e = sys.pmd_tx_burst(q, vec![frame(0)]).unwrap_err().to_string();
        assert!(e.contains("without tx: true"), "{e}");
    }
}

#[test]
fn tx_on_a_non_coherent_port_sends_stale_bytes_and_the_sanitizer_says_so() {
    // Without noise nothing evicts the CPU's stores: the NIC finds every
    // descriptor of the first lap empty, and the CPU never sees its DD bits.
    let (r, j) = common::run_json(
        "pmd-tx-noncoherent.rhai",
        &common::scenario_text("pmd-tx-noncoherent.rhai"),
        &dmasim::script::ScriptOptions {
            noise_off: true,
            ..dmasim::script::ScriptOptions::default()
        },
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0);
    assert_eq!(ids(&j), vec!["stale-device-read"]);
    assert_eq!(j["findings"][0]["manifested"], true);
    assert!(common::log_has(
        &j,
        "32 queued, 32 sent, 0 right on the wire, 32 wrong, 288 refused (ring full)"
    ));
    // With background noise some lines reach DRAM in time, never all.
    for seed in 0..6 {
        let (r, j) = scenario("pmd-tx-noncoherent.rhai", seed, None);
        assert_eq!(r.exit_code(), 1, "seed {seed}");
        assert_eq!(ids(&j), vec!["stale-device-read"], "seed {seed}");
        assert_eq!(j["findings"][0]["manifested"], true);
    }
    // The same program on a coherent port.
    for seed in 0..6 {
        let (r, j) = scenario("pmd-tx.rhai", seed, None);
        ok(&r);
        assert_eq!(r.expectations.passed, 13);
        assert!(ids(&j).is_empty(), "seed {seed}: {:?}", ids(&j));
    }
}
