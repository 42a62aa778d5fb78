//! `dmasim replay`: real ftrace captures of Linux 6.12's `dma:` events replayed
//! through the model. The parser and small replays use excerpts shipped in
//! `tests/data/replay/`; the whole captures come from `../shared/traces/` beside the
//! repository (CI puts a copy there) and those tests say so and pass when it is
//! missing.

use std::path::{Path, PathBuf};

use dmasim::replay::parse::{parse, EventKind};
use dmasim::replay::{replay, Placement, ReplayOptions, ReplayReport};
use proptest::prelude::*;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/replay")
        .join(name)
}

/// The shipped captures: `<repository>/../shared/traces/<name>`.
fn capture(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/traces")
        .join(name);
    if p.join("trace.txt").is_file() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} is missing (the captures live in ../shared/traces beside the repository)",
            p.display()
        );
        None
    }
}

/// Masks as the guests had them (`pci.txt`: e1000 and pcnet32 are 32-bit).
fn pci_masks() -> Vec<(String, String)> {
    vec![
        ("0000:00:06.0".into(), "mask=32".into()),
        ("0000:00:07.0".into(), "mask=32".into()),
        ("0000:00:01.0".into(), "min_align_mask=0xfff".into()),
    ]
}

/// The capture's platform: q35 with 1 GiB and one CPU, dma-direct or a strict
/// IOMMU domain per device.
fn capture_platform(iommu: bool) -> ReplayOptions {
    let mut set = vec![
        ("ram".to_string(), "1GiB".to_string()),
        ("cpus".to_string(), "1".to_string()),
    ];
    if iommu {
        set.push(("iommu".into(), "smmu".into()));
        set.push(("iommu_strict".into(), "true".into()));
    }
    ReplayOptions {
        set,
        device_map: pci_masks(),
        ..ReplayOptions::default()
    }
}

fn run(path: &Path, opts: &ReplayOptions) -> ReplayReport {
    let bytes = std::fs::read(path).unwrap();
    let t = parse(&bytes).unwrap();
    replay(&t, &path.display().to_string(), opts).unwrap()
}

#[test]
fn the_excerpts_parse_every_dma_event_and_count_the_others() {
    let t = parse(&std::fs::read(data("iommu-strict-excerpt.txt")).unwrap()).unwrap();
    // The excerpt's own counts (grep -c on the file): 190 dma: lines.
    let text = std::fs::read_to_string(data("iommu-strict-excerpt.txt")).unwrap();
    let dma_lines = text.lines().filter(|l| l.contains(": dma_")).count();
    assert_eq!(t.events.len(), dma_lines);
    let iommu_lines = text.lines().filter(|l| l.contains(": map: IOMMU")).count() as u64;
    assert_eq!(t.skipped["map"], iommu_lines);
    assert_eq!(t.bad_lines, 0);
    assert_eq!(
        t.truncated, 1,
        "virtio-gpu's framebuffer list (220 entries)"
    );
    assert!(t.devices.iter().all(|d| dmasim::replay::is_pci_name(d)));
    // The virtio-gpu framebuffer: 220 entries merged into one 0x3e8000 segment.
    let fb = t
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::MapSg {
                nents: 220, sizes, ..
            } => Some(sizes.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(fb, [0x3e_8000]);
}

#[test]
fn the_excerpts_replay_with_no_error_findings_on_their_own_platform() {
    let d = run(&data("direct-excerpt.txt"), &capture_platform(false));
    assert_eq!(d.errors, 0, "{:#?}", d.findings);
    assert_eq!(d.counts.unmatched, 0);
    // dma-direct on the same RAM: a streaming map's address is its physical address
    // (dma_direct_map_phys: phys_to_dma), so every sg segment is the trace's.
    assert_eq!(d.fidelity.sg_segments_equal, d.fidelity.sg_segments);
    let i = run(&data("iommu-strict-excerpt.txt"), &capture_platform(true));
    assert_eq!(i.errors, 0, "{:#?}", i.findings);
    // Top-down, size-aligned IOVAs per domain (iova.c) for every map and allocation
    // of the excerpt, the 4 MiB-aligned framebuffer segment included.
    assert_eq!(i.fidelity.equal, i.fidelity.compared);
    assert!(i.fidelity.compared > 100);
}

#[test]
fn a_streamed_replay_is_the_in_memory_one() {
    // replay_bytes holds only the events whose place is not final yet; its report
    // must be the one of the whole parsed trace.
    for f in ["direct-excerpt.txt", "iommu-strict-excerpt.txt"] {
        let bytes = std::fs::read(data(f)).unwrap();
        let o = capture_platform(f.starts_with("iommu"));
        let a = dmasim::replay::replay_bytes(&bytes, f, &o).unwrap();
        let b = replay(&parse(&bytes).unwrap(), f, &o).unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap(),
            "{f}"
        );
    }
    // Garbage: the same error.
    let junk = b"one\ntwo\n";
    assert_eq!(
        dmasim::replay::replay_bytes(junk, "j", &ReplayOptions::default()).unwrap_err(),
        parse(junk).unwrap_err()
    );
}

#[test]
fn without_the_pci_32bit_workaround_iovas_come_from_the_top_of_the_64_bit_space() {
    // dma-iommu.c iommu_dma_alloc_iova tries below 4 GiB first only for PCI devices:
    // turned off, the 64-bit devices' IOVAs no longer match the capture.
    let mut o = capture_platform(true);
    o.device_map.push(("*".into(), "pci=false".into()));
    let r = run(&data("iommu-strict-excerpt.txt"), &o);
    assert!(
        r.fidelity.equal < r.fidelity.compared / 2,
        "{:?}",
        r.fidelity.equal
    );
    assert!(r.devices.iter().all(|d| !d.pci_32bit_iova));
}

#[test]
fn both_captures_replay_with_no_error_findings() {
    for (name, iommu) in [("direct", false), ("iommu-strict", true)] {
        let Some(dir) = capture(name) else { return };
        let t0 = std::time::Instant::now();
        let r = run(&dir.join("trace.txt"), &capture_platform(iommu));
        eprintln!("{name}: replayed in {:?}", t0.elapsed());
        assert_eq!(
            r.errors,
            0,
            "{name}: {:#?}",
            &r.findings[..r.findings.len().min(5)]
        );
        assert_eq!(r.counts.unmatched, 0, "{name}");
        assert_eq!(r.counts.model_failures, 0, "{name}");
        // The README's counts: every dma_map_page and dma_map_sg of the capture.
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        let count = |ev: &str| -> u64 {
            readme
                .lines()
                .find(|l| l.starts_with(&format!("| {ev} |")))
                .and_then(|l| l.split('|').nth(2))
                .and_then(|n| n.trim().parse().ok())
                .unwrap()
        };
        assert_eq!(r.counts.maps, count("dma_map_page"), "{name}");
        assert_eq!(r.counts.sg_maps, count("dma_map_sg"), "{name}");
        // Mappings still live at the end: the README's "still mapped when tracing
        // stopped" (virtio-net's RX ring, 238) and virtio-gpu's framebuffer list.
        let live: u64 = r.devices.iter().map(|d| d.live_at_end).sum();
        assert_eq!(live, 239, "{name}");
    }
}

#[test]
fn iommu_strict_replayed_on_its_platform_gives_the_kernels_iovas() {
    let Some(dir) = capture("iommu-strict") else {
        return;
    };
    let r = run(&dir.join("trace.txt"), &capture_platform(true));
    let f = &r.fidelity;
    eprintln!(
        "{} of {} addresses equal, sg segments {} of {}",
        f.equal, f.compared, f.sg_segments_equal, f.sg_segments
    );
    assert!(
        f.equal * 100 >= f.compared * 99,
        "{} of {}: {:#?}",
        f.equal,
        f.compared,
        f.first_differences
    );
    assert_eq!(f.sg_segments_equal, f.sg_segments, "every merged segment");
    // Every map, allocation and segment of the capture was compared.
    assert_eq!(f.compared, 4855 + 40 + f.sg_segments);
}

#[test]
fn the_direct_capture_retargeted_to_an_8_gib_machine_bounces_and_hits_the_segment_limit() {
    let Some(dir) = capture("direct") else { return };
    // arm64-noncoherent with 8 GiB, every device limited to 32 bits, buffers high.
    let o = ReplayOptions {
        preset: "arm64-noncoherent".into(),
        set: vec![("ram".into(), "8GiB".into())],
        device_map: vec![("*".into(), "mask=32".into())],
        placement: Placement::High,
        ..ReplayOptions::default()
    };
    let r = run(&dir.join("trace.txt"), &o);
    assert_eq!(r.errors, 0);
    // Every buffer is above 4 GiB: every streaming map that the pool can take
    // bounces (sg maps bounce entry by entry).
    assert!(r.stats.bounced_maps >= r.counts.maps - r.counts.model_failures);
    assert!(r.swiotlb_slots_hiwater > 0);
    assert!(r.swiotlb_slots_hiwater <= r.stats.swiotlb.slots_total);
    // NVMe maps 512 KiB at once: more than one bounce buffer can hold
    // (IO_TLB_SEGSIZE slots, swiotlb_max_mapping_size = 256 KiB).
    let ff = r.first_failure.as_ref().unwrap();
    assert_eq!(ff.device, "0000:00:01.0");
    assert!(ff.size > 256 << 10, "{ff:?}");
    assert!(ff.why.starts_with("swiotlb-full"), "{ff:?}");
    assert!(r.time.bounce_copy_ns > 0);
    let beyond: u64 = r.devices.iter().map(|d| d.bounced_beyond_limit).sum();
    assert!(beyond > 0);
    // The same trace with the trace's own placement on 1 GiB: nothing is beyond
    // the 32-bit masks, but a non-coherent device's buffers smaller than 128 bytes
    // whose kmalloc class is not a cache-line multiple still bounce when the device
    // writes them (include/linux/dma-map-ops.h dma_kmalloc_needs_bounce, arm64's
    // CONFIG_DMA_BOUNCE_UNALIGNED_KMALLOC): virtio's small descriptors.
    let low = ReplayOptions {
        preset: "arm64-noncoherent".into(),
        set: vec![("ram".into(), "1GiB".into())],
        device_map: vec![("*".into(), "mask=32".into())],
        ..ReplayOptions::default()
    };
    let r = run(&dir.join("trace.txt"), &low);
    assert!(r.devices.iter().all(|d| d.bounced_beyond_limit == 0));
    let kmalloc: u64 = r.devices.iter().map(|d| d.bounced_kmalloc_unaligned).sum();
    assert!(kmalloc > 0);
    assert_eq!(kmalloc, r.stats.bounced_maps);
    assert_eq!(r.errors, 0);
}

fn synthetic(lines: &[&str]) -> ReplayReport {
    synthetic_on(&[], lines)
}

#[test]
fn one_page_mapped_twice_at_once_is_unmapped_twice() {
    // dma-direct returns the physical address: two live TO_DEVICE maps of one page
    // share it, and each unmap ends one of them.
    let r = synthetic(&[
        "dma_map_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=100000 size=4096 phys_addr=100000 attrs=",
        "dma_map_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=100000 size=512 phys_addr=100000 attrs=",
        "dma_unmap_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=100000 size=4096 attrs=",
        "dma_unmap_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=100000 size=512 attrs=",
    ]);
    assert_eq!((r.counts.replayed, r.counts.unmatched, r.errors), (4, 0, 0));
    assert_eq!(r.devices[0].live_at_end, 0);
}

#[test]
fn dma_debug_checks_judge_the_real_sequence() {
    // kernel/dma/debug.c check_unmap: "frees DMA memory with different size".
    let r = synthetic(&[
        "dma_map_page: 0000:00:02.0 dir=FROM_DEVICE dma_addr=200000 size=4096 phys_addr=200000 attrs=",
        "dma_unmap_page: 0000:00:02.0 dir=FROM_DEVICE dma_addr=200000 size=2048 attrs=",
    ]);
    assert_eq!(r.errors, 1);
    assert_eq!(r.findings[0].id, "unmap-size-mismatch");
    assert_eq!(r.findings[0].line, 2, "the trace's line");
    // A sync of an address the trace never mapped is counted, not judged.
    let r = synthetic(&[
        "dma_sync_single_for_cpu: 0000:00:02.0 dir=FROM_DEVICE dma_addr=300000 size=64",
    ]);
    assert_eq!((r.counts.unmatched, r.errors), (1, 0));
}

#[test]
fn garbage_is_a_clear_error_with_the_first_bad_line() {
    let e = parse(b"# tracer: nop\n\nthis is not ftrace\n\x7fELF\x02\x01\x01\n").unwrap_err();
    assert!(e.contains("line 3"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Truncated lines, mixed formats and binary junk never panic: a parse error, or
    /// a trace whose replay ends (and never panics).
    #[test]
    fn the_parser_and_replay_never_panic(
        cut in 0usize..400,
        junk in proptest::collection::vec(any::<u8>(), 0..200),
        pick in proptest::collection::vec(0usize..200, 1..30),
    ) {
        let text = std::fs::read_to_string(data("iommu-strict-excerpt.txt")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut input = Vec::new();
        for (k, &i) in pick.iter().enumerate() {
            let l = lines[(i * 7) % lines.len()];
            let l = if k == 0 { &l[..cut.min(l.len())] } else { l };
            input.extend_from_slice(l.as_bytes());
            input.push(b'\n');
            if k == 1 {
                input.extend_from_slice(&junk);
                input.push(b'\n');
            }
        }
        if let Ok(t) = parse(&input) {
            let _ = replay(&t, "fuzz", &capture_platform(true));
        }
        let _ = parse(&junk);
    }
}

/// The kit's `swiotlb=force` capture (shipped gzipped with its `swiotlb_pool.txt`).
fn swiotlb_force(capture_pool: bool, timeline: bool) -> ReplayReport {
    let dir = data("swiotlb-force");
    let bytes = dmasim::replay::parse::decompress(std::fs::read(dir.join("trace.txt.gz")).unwrap())
        .unwrap();
    let pool = std::fs::read_to_string(dir.join("swiotlb_pool.txt")).unwrap();
    let mut o = capture_platform(false);
    o.set.push(("swiotlb".into(), "force".into()));
    o.capture_pool = capture_pool.then(|| dmasim::replay::capture_pool(&pool).unwrap());
    o.timeline = timeline;
    dmasim::replay::replay_bytes(&bytes, "swiotlb-force", &o).unwrap()
}

#[test]
fn swiotlb_force_replayed_with_the_captures_pool_gives_the_kernels_slot_addresses() {
    // kernel/dma/swiotlb.c: next-fit from the pool start, page alignment from 4 KiB,
    // NVMe's min_align_mask; the pool where the captured kernel's memblock put it.
    let r = swiotlb_force(true, false);
    let f = &r.fidelity;
    assert_eq!(r.errors, 0, "{:?}", r.findings.first());
    let pool = r.swiotlb_pool.as_ref().unwrap();
    assert_eq!((pool.start, pool.from), (0x3aa0_0000, "capture"));
    assert!(f.slots_compared > 8000, "{}", f.slots_compared);
    assert!(
        f.slots_equal * 100 >= f.slots_compared * 99,
        "{} of {} slot addresses",
        f.slots_equal,
        f.slots_compared
    );
    // virtio-gpu's 175-entry framebuffer list is truncated at 128 in the map event;
    // its swiotlb_bounced events give the rest, so every segment is the kernel's.
    assert_eq!(r.counts.truncated_sg, 1);
    assert_eq!(f.sg_segments_equal, f.sg_segments);
    // Every map of the capture bounced, in the model as in the kernel.
    for d in &r.devices {
        assert_eq!(d.bounced_maps, d.trace_bounced, "{}", d.name);
    }
    // The per-device bytes add up to the model's own count.
    let moved: u64 = r.devices.iter().map(|d| d.dma_bytes).sum();
    assert_eq!(moved, r.stats.dma_bytes);
}

#[test]
fn without_the_captures_pool_no_slot_address_is_the_kernels() {
    // The model's memblock puts the 64 MiB pool at the top of the first 4 GiB it sees
    // free (0x3c000000 on 1 GiB), the captured kernel's 22 MiB lower: every slot
    // differs by that much.
    let r = swiotlb_force(false, false);
    let pool = r.swiotlb_pool.as_ref().unwrap();
    assert_eq!(pool.from, "model");
    assert_ne!(pool.start, 0x3aa0_0000);
    assert_eq!(
        r.fidelity.slots_compared, 0,
        "no capture pool, nothing known to be a slot"
    );
    assert!(r.fidelity.equal * 100 < r.fidelity.compared * 5);
}

#[test]
fn swiotlb_base_places_the_pool_or_refuses() {
    use dmasim::script::{boot_system, ScriptOptions};
    let boot = |base: &str| {
        let o = ScriptOptions {
            boot_set: vec![
                ("ram".into(), "1GiB".into()),
                ("swiotlb".into(), "force".into()),
                ("swiotlb_base".into(), base.into()),
            ],
            ..ScriptOptions::default()
        };
        boot_system("x86-64", &o)
    };
    let s = boot("0x3aa00000").unwrap();
    assert_eq!(s.kernel.swiotlb.as_ref().unwrap().start, 0x3aa0_0000);
    // Past the end of RAM, not page aligned, or a run the model's memblock cannot
    // give (across the end of ZONE_DMA): refused.
    for bad in ["0x3f000000", "0x3aa00800", "0x1000"] {
        let e = boot(bad).err().unwrap_or_default();
        assert!(e.contains("swiotlb_base"), "{bad}: {e}");
    }
}

#[test]
fn the_timeline_holds_every_mapping_life_and_the_page_draws_them() {
    let r = swiotlb_force(true, true);
    let t = r.timeline.as_ref().unwrap();
    let maps = r.counts.maps + r.counts.sg_maps + r.counts.allocs;
    assert_eq!(t.spans.len() as u64 + t.dropped, maps);
    // Every span of this capture bounced except the coherent allocations.
    let bounced = t.spans.iter().filter(|s| s.bounced).count() as u64;
    assert_eq!(bounced, r.counts.maps + r.counts.sg_maps);
    assert_eq!(t.swiotlb_slots.iter().max(), Some(&r.swiotlb_slots_hiwater));
    let live = t.spans.iter().filter(|s| s.end_ns.is_none()).count() as u64;
    let live_maps: u64 = r.devices.iter().map(|d| d.live_at_end).sum();
    assert!(live >= live_maps, "{live} {live_maps}");
    let page = dmasim::replay::html::render(&r);
    assert_eq!(page.matches("<title>line ").count(), t.spans.len());
    for id in ["id=\"mappings\"", "id=\"swiotlb-slots\"", "data-render"] {
        assert!(page.contains(id), "{id}");
    }
    assert!(
        !page.contains("id=\"iova-pages\""),
        "no IOMMU, no IOVA chart"
    );
    // Without --html nothing is collected.
    assert!(swiotlb_force(true, false).timeline.is_none());
}

#[test]
fn map_resource_and_alloc_sgt_are_replayed_through_the_model() {
    // kernel/dma/mapping.c dma_map_resource (dma-direct: the bus address is the
    // physical one, no cache maintenance, no device access to RAM) and
    // dma_alloc_noncontiguous / dma_free_noncontiguous (the trace's dma_alloc_sgt).
    let r = synthetic(&[
        "dma_map_resource: 0000:00:02.0 dir=TO_DEVICE dma_addr=fe000040 size=4 phys_addr=fe000040 attrs=",
        "dma_alloc_sgt: 0000:00:02.0 dir=FROM_DEVICE dma_addr=200000 size=16384 phys_addrs={0x200000,0x201000,0x202000,0x203000} flags=GFP_KERNEL attrs=",
        "dma_free_sgt: 0000:00:02.0 dir=FROM_DEVICE dma_addr=200000 size=16384 phys_addrs={0x200000,0x201000,0x202000,0x203000}",
        "dma_unmap_resource: 0000:00:02.0 dir=TO_DEVICE dma_addr=fe000040 size=4 attrs=",
    ]);
    assert_eq!(r.counts.not_modelled, 0);
    assert_eq!(r.counts.replayed, 4);
    assert_eq!((r.counts.maps, r.counts.allocs), (1, 1));
    assert_eq!(r.errors, 0, "{:?}", r.findings.first());
    assert_eq!(r.devices[0].live_at_end, 0);
    assert_eq!(r.devices[0].dma_bytes, 0, "MMIO: nothing moved from RAM");
    // dma-direct: the resource's bus address is the trace's.
    assert!(r.fidelity.compared >= 1);
    assert!(r.fidelity.equal >= 1);
    // An unmap with the wrong size is dma-debug's check on the resource too.
    let r = synthetic(&[
        "dma_map_resource: 0000:00:02.0 dir=TO_DEVICE dma_addr=fe000040 size=4 phys_addr=fe000040 attrs=",
        "dma_unmap_resource: 0000:00:02.0 dir=TO_DEVICE dma_addr=fe000040 size=8 attrs=",
    ]);
    assert_eq!(
        r.findings.first().map(|f| f.id),
        Some("unmap-size-mismatch")
    );
}

#[test]
fn zone_and_cma_pressure_follow_the_allocations() {
    // Two coherent allocations of 64 KiB on arm64 (CMA serves blocking coherent
    // allocations: kernel/dma/contiguous.c dma_alloc_contiguous): CMA's peak holds
    // both, and the DMA zone's fewest free pages fall by at least as much.
    let lines = [
        "dma_alloc: 0000:00:02.0 dir=BIDIRECTIONAL dma_addr=100000 size=65536 virt_addr=0000000022fe9c69 flags=GFP_KERNEL attrs=",
        "dma_alloc: 0000:00:02.0 dir=BIDIRECTIONAL dma_addr=110000 size=65536 virt_addr=000000007d72e2e2 flags=GFP_KERNEL attrs=",
    ];
    let text: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("  kworker/0:1-12 [000] ..... 1.{:06}: {l}\n", i + 1))
        .collect();
    let o = ReplayOptions {
        preset: "arm64-noncoherent".into(),
        ..ReplayOptions::default()
    };
    let r = dmasim::replay::replay_bytes(text.as_bytes(), "cma", &o).unwrap();
    assert_eq!(r.counts.allocs, 2);
    assert_eq!(r.stats.cma.used_pages, 32, "2 × 16 pages");
    let dma = r.zones.iter().find(|z| z.zone == "DMA").unwrap();
    assert!(dma.free_min_pages + 32 <= dma.managed_pages, "{dma:?}");
}

#[test]
fn iova_high_water_counts_the_live_ranges_and_the_timeline_agrees() {
    // Three live 8 KiB maps through a strict IOMMU domain: alloc_iova_fast rounds
    // each to a power of two (2 pages), so at least 6 IOVA pages at the peak.
    let r = synthetic_on(
        &[("iommu", "smmu"), ("iommu_strict", "true")],
        &[
            "dma_map_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=fffe0000 size=8192 phys_addr=200000 attrs=",
            "dma_map_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=fffdc000 size=8192 phys_addr=210000 attrs=",
            "dma_map_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=fffd8000 size=8192 phys_addr=220000 attrs=",
            "dma_unmap_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=fffe0000 size=8192 attrs=",
        ],
    );
    assert_eq!(r.errors, 0);
    assert!(r.iova_pages_hiwater >= 6, "{}", r.iova_pages_hiwater);
    let t = r.timeline.as_ref().unwrap();
    assert_eq!(t.iova_pages.iter().max(), Some(&r.iova_pages_hiwater));
    assert!(dmasim::replay::html::render(&r).contains("id=\"iova-pages\""));
}

fn synthetic_on(set: &[(&str, &str)], lines: &[&str]) -> ReplayReport {
    let text: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("  kworker/0:1-12 [000] ..... 1.{:06}: {l}\n", i + 1))
        .collect();
    let mut o = ReplayOptions {
        set: vec![("ram".into(), "1GiB".into())],
        timeline: true,
        ..ReplayOptions::default()
    };
    o.set
        .extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    dmasim::replay::replay_bytes(text.as_bytes(), "synthetic", &o).unwrap()
}

#[test]
fn a_lazy_flush_the_trace_shows_frees_only_what_was_queued_before_it() {
    // drivers/iommu/dma-iommu.c queue_iova / fq_flush_timeout: a lazy unmap's IOVA
    // waits in the flush queue; the kernel's timer fires on a jiffies clock the
    // trace does not show. The trace shows the flush when a queued IOVA comes
    // back: A came back although B was queued after it, so the flush came between
    // the two (had B been freed too, the LIFO IOVA cache would have handed out B).
    let r = synthetic_on(
        &[("iommu", "smmu"), ("iommu_strict", "false")],
        &[
            "dma_map_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=fffff000 size=4096 phys_addr=200000 attrs=",
            "dma_unmap_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=fffff000 size=4096 attrs=",
            "dma_map_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=ffffe000 size=4096 phys_addr=201000 attrs=",
            "dma_unmap_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=ffffe000 size=4096 attrs=",
            "dma_map_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=fffff000 size=4096 phys_addr=202000 attrs=",
            "dma_map_page: 0000:00:02.0 dir=TO_DEVICE dma_addr=ffffd000 size=4096 phys_addr=203000 attrs=",
        ],
    );
    assert_eq!(r.errors, 0);
    assert_eq!(r.counts.fq_flushes_seen, 1);
    assert_eq!(
        (r.fidelity.equal, r.fidelity.compared),
        (4, 4),
        "{:?}",
        r.fidelity.first_differences
    );
}

#[test]
fn the_lazy_iommu_capture_replays_clean_and_mostly_address_for_address() {
    // The kit's iommu-lazy capture (intel_iommu=on iommu.strict=0), shipped gzipped.
    let dir = data("iommu-lazy");
    let bytes = dmasim::replay::parse::decompress(std::fs::read(dir.join("trace.txt.gz")).unwrap())
        .unwrap();
    let mut o = capture_platform(true);
    o.set.retain(|(k, _)| k != "iommu_strict");
    o.set.push(("iommu_strict".into(), "false".into()));
    let r = dmasim::replay::replay_bytes(&bytes, "iommu-lazy", &o).unwrap();
    assert_eq!(r.errors, 0, "{:?}", r.findings.first());
    assert!(
        r.counts.fq_flushes_seen > 50,
        "{}",
        r.counts.fq_flushes_seen
    );
    let f = &r.fidelity;
    assert!(
        f.equal * 100 >= f.compared * 90,
        "{} of {}",
        f.equal,
        f.compared
    );
    assert!(f.sg_segments_equal * 100 >= f.sg_segments * 99);
}
