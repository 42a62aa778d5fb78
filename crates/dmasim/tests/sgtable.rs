//! `dma_map_sgtable` and its companions: 0 or a negative errno that says whether a
//! retry can help, `sgt.nents` / `sgt.orig_nents` — checked on the JSON report.

mod common;

use common::{finding, ids, log_has, ok, scenario, script};

#[test]
fn the_retry_scenario_gets_enomem_then_maps_after_an_unmap() {
    for seed in 0..4 {
        let (r, j) = scenario("sgtable-retry.rhai", seed, None);
        ok(&r);
        assert_eq!(r.exit_code(), 0, "seed {seed}");
        assert_eq!(ids(&j), vec!["iova-exhausted"], "seed {seed}");
        let f = &j["findings"][0];
        assert_eq!(f["severity"], "warning");
        assert!(f["message"]
            .as_str()
            .unwrap()
            .contains("dma_map_sgtable returns -ENOMEM"));
        assert!(log_has(&j, "frame 1: -ENOMEM; hand frame 0 back"));
        assert!(log_has(
            &j,
            "cam0: dma_map_sgtable: iommu_dma_map_sg failed"
        ));
        assert_eq!(j["stats"]["dma_bytes"], 6 << 20, "frame 0 was captured");
    }
}

#[test]
fn dma_direct_failure_is_eio_for_sgtable_and_zero_for_map_sg() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ ram: "8GiB", swiotlb: "off", noise: "off" });
        let d = device("d");
        expect_eq(dma_set_mask_and_coherent(d, 32), 0, "a 32-bit device");
        let b = alloc_pages(0, GFP_KERNEL);
        while b.phys < 0x1_0000_0000 { b = alloc_pages(0, GFP_KERNEL); }
        let t = sg_from_buffer(b);
        expect_eq(dma_map_sgtable(d, t, DMA_TO_DEVICE), -EIO, "dma-direct cannot reach it");
        expect_eq(t.nents, 0, "nothing mapped");
        expect_eq(t.orig_nents, 1, "one page run");
        expect_eq(dma_map_sg(d, t, DMA_TO_DEVICE), 0, "dma_map_sg says 0 instead");"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(&j, "d: dma_map_sgtable: entry at"));
    assert!(log_has(&j, "d: dma_map_sg: entry at"));
}

#[test]
fn nents_counts_dma_segments_orig_nents_the_entries() {
    for (iommu, merged) in [("none", false), ("smmu", true)] {
        let (r, j) = script(&format!(
            r#"boot("arm64-coherent", #{{ iommu: "{iommu}", noise: "off" }});
            let d = device("d");
            let b = vmalloc(65536);
            let t = sg_from_buffer(b);
            expect_eq(t.nents, 0, "unmapped");
            expect_eq(dma_map_sgtable(d, t, DMA_TO_DEVICE), 0, "maps");
            print(`segments ${{t.nents}} of ${{t.orig_nents}}`);
            expect(t.orig_nents > 1, "vmalloc pages are scattered");
            if {merged} {{ expect_eq(t.nents, 1, "merged into one IOVA segment"); }}
            else {{ expect_eq(t.nents, t.orig_nents, "dma-direct never merges"); }}
            dma_unmap_sgtable(d, t, DMA_TO_DEVICE);
            expect_eq(t.nents, 0, "unmapped again");"#
        ));
        ok(&r);
        assert!(ids(&j).is_empty(), "{iommu}: {:?}", ids(&j));
        assert!(log_has(&j, "script: segments "), "{iommu}");
    }
}

#[test]
fn the_sgtable_sync_for_the_cpu_is_the_one_a_receive_needs() {
    let rx = |sync: &str| {
        script(&format!(
            r#"boot("arm64-noncoherent", #{{ noise: "off" }});
            let d = device("d");
            let b = vmalloc(16384);
            let t = sg_from_buffer(b);
            cpu_fill(b, 0x11);                      // old bytes in the cache
            expect_eq(dma_map_sgtable(d, t, DMA_FROM_DEVICE), 0, "maps");
            cpu_read(b, 0, 64);                     // a speculative-looking early read
            dev_write_sg(d, t, blob(16384, 0x77));
            {sync}
            let got = cpu_read(b, 0, 64);
            dma_unmap_sgtable(d, t, DMA_FROM_DEVICE);
            print(`first byte ${{got[0]}}`);"#
        ))
    };
    let (r, j) = rx("");
    assert_eq!(r.exit_code(), 1);
    let stale = finding(&j, "stale-cpu-read");
    assert_eq!(stale["manifested"], true, "non-coherent, no noise");
    assert!(log_has(&j, "first byte 17"), "the cache's old bytes");
    let (r, j) = rx("dma_sync_sgtable_for_cpu(d, t, DMA_FROM_DEVICE);");
    assert!(
        !ids(&j).contains(&"stale-cpu-read".to_string()),
        "{:?}",
        ids(&j)
    );
    assert!(log_has(&j, "first byte 119"), "the device's bytes");
    assert!(r.error.is_none());
}

#[test]
fn an_iova_failure_of_dma_map_sg_says_it_returns_zero() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu", noise: "off" });
        let d = device("d");
        expect_eq(dma_set_mask(d, 20), 0, "dma-iommu accepts any mask");
        let t = sg_from_buffer(vmalloc(2 * 1024 * 1024));
        expect_eq(dma_map_sg(d, t, DMA_TO_DEVICE), 0, "2 MiB do not fit below 1 MiB");"#,
    );
    ok(&r);
    assert_eq!(ids(&j), vec!["iova-exhausted"]);
    assert!(j["findings"][0]["message"]
        .as_str()
        .unwrap()
        .ends_with("dma_map_sg returns 0"));
}

#[test]
fn after_an_entry_longer_than_max_segment_the_iommu_merges_as_linux_unsigned_math_does() {
    // __finalise_sg computes max_len - cur_len in unsigned int: past an oversized
    // entry it wraps and the next entry joins the segment (dma-debug flags it).
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu", noise: "off", hugepages: 2 });
        let d = device("d");
        let p = process("app");
        let h = p.mmap(4 * 1024 * 1024, #{ hugetlb: true });
        let pins = pin_user_pages(p, h, #{ longterm: true });
        let t = sg_from_pages(pins);
        expect_eq(t.orig_nents, 2, "two 2 MiB pages");
        expect_eq(dma_map_sgtable(d, t, DMA_TO_DEVICE), 0, "maps");
        expect_eq(t.nents, 1, "merged");
        expect_eq(sg_dma_len(t, 0), 4 * 1024 * 1024, "into one 4 MiB segment");
        dma_unmap_sgtable(d, t, DMA_TO_DEVICE);
        unpin_user_pages(pins);"#,
    );
    ok(&r);
    assert_eq!(ids(&j), vec!["sg-segment-too-long"]);
}
