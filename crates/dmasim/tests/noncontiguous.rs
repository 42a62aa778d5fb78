//! `dma_alloc_noncontiguous`: scattered for the CPU, one segment for the device
//! behind an IOMMU, one contiguous block without one; synced like a reused
//! streaming mapping — checked on the JSON report.

mod common;

use common::{finding, ids, log_has, ok, scenario, script};

#[test]
fn reading_a_frame_without_the_sgtable_sync_gets_the_previous_one() {
    for seed in 0..6 {
        let (r, j) = scenario("noncontiguous-rx.rhai", seed, None);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.exit_code(), 1);
        assert_eq!(ids(&j), vec!["stale-cpu-read"], "seed {seed}");
        assert_eq!(j["findings"][0]["manifested"], true, "seed {seed}");
        assert!(log_has(&j, "frame 2: the CPU reads 1"), "seed {seed}");
        let hist: Vec<&str> = j["findings"][0]["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert!(
            hist[0].starts_with("dma_alloc_noncontiguous DMA_FROM_DEVICE")
                && hist.iter().filter(|e| e.starts_with("dma_sync")).count() <= 3,
            "{hist:?}"
        );
    }
    let (r, j) = scenario("noncontiguous-rx-fixed.rhai", 0, None);
    ok(&r);
    assert!(ids(&j).is_empty());
    assert!(log_has(&j, "frame 2: the CPU reads 2"));
}

#[test]
fn behind_an_iommu_the_pages_scatter_and_the_device_sees_one_segment() {
    let src = |iommu: &str| {
        format!(
            r#"boot("arm64-coherent", #{{ iommu: "{iommu}", noise: "off" }});
            let d = device("d");
            let t = dma_alloc_noncontiguous(d, 768 * 1024, DMA_BIDIRECTIONAL);
            let b = dma_vmap_noncontiguous(d, 768 * 1024, t);
            print(`runs ${{t.orig_nents}} segments ${{t.nents}} len ${{sg_dma_len(t, 0)}} kind ${{b.kind}}`);
            expect_eq(t.nents, 1, "one DMA segment");
            expect_eq(sg_dma_len(t, 0), 768 * 1024, "covering the whole allocation");
            cpu_write(b, 700000, blob(4, 0x5a));
            dma_sync_sgtable_for_device(d, t, DMA_BIDIRECTIONAL);
            expect_eq(dev_read_sg(d, t, 768 * 1024)[700000], 0x5a, "the device reads the CPU's byte");
            dma_free_noncontiguous(d, 768 * 1024, t, DMA_BIDIRECTIONAL);"#
        )
    };
    let (r, j) = script(&src("smmu"));
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    let line = j["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .find(|l| l.contains("script: runs "))
        .unwrap()
        .to_string();
    let runs: u64 = line
        .split("runs ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(runs > 1, "single pages from anywhere: {line}");
    assert!(line.contains("kind noncontiguous"));
    let (r, j) = script(&src("none"));
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(
        log_has(&j, "script: runs 1 segments 1"),
        "one contiguous block"
    );
}

#[test]
fn the_direct_allocation_zeroes_through_the_cache_and_needs_the_first_handover() {
    // Without an IOMMU the zeros are dirty lines; a device write before the first
    // dma_sync_sgtable_for_device can be clobbered by their write-back.
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let t = dma_alloc_noncontiguous(d, 65536, DMA_FROM_DEVICE);
        dev_write_sg(d, t, blob(65536, 0x77));     // no hand-over first
        evict_all();                                // the dirty zeros go to DRAM
        dma_sync_sgtable_for_cpu(d, t, DMA_FROM_DEVICE);
        let b = dma_vmap_noncontiguous(d, 65536, t);
        print(`read ${cpu_read(b, 0, 1)[0]}`);
        dma_free_noncontiguous(d, 65536, t, DMA_FROM_DEVICE);"#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert!(
        ids(&j).contains(&"dirty-writeback-clobber".to_string()),
        "{:?}",
        ids(&j)
    );
    let f = finding(&j, "dirty-writeback-clobber");
    assert_eq!(f["manifested"], true);
    let msg = f["message"].as_str().unwrap();
    assert!(
        msg.contains("dma_alloc_noncontiguous zeroed the buffer")
            && msg.contains("dma_sync_sgtable_for_device"),
        "{msg}"
    );
    assert!(f["help"]
        .as_str()
        .unwrap()
        .contains("dma_sync_sgtable_for_device(dev, sgt, dir)"));
    assert!(log_has(&j, "read 0"), "the zeros won");
}

#[test]
fn frees_are_checked_and_the_table_belongs_to_the_allocation() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu", noise: "off" });
        let d = device("d");
        let t = dma_alloc_noncontiguous(d, 65536, DMA_TO_DEVICE);
        dma_free_noncontiguous(d, 8192, t, DMA_FROM_DEVICE);"#,
    );
    assert!(r.error.is_none());
    assert_eq!(ids(&j), vec!["unmap-size-mismatch", "unmap-dir-mismatch"]);
    let (r, _) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d");
        let t = dma_alloc_noncontiguous(d, 65536, DMA_TO_DEVICE);
        dma_unmap_sgtable(d, t, DMA_TO_DEVICE);"#,
    );
    assert_eq!(r.exit_code(), 2);
    assert!(r
        .error
        .unwrap()
        .contains("free it with dma_free_noncontiguous"));
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d");
        let t = dma_alloc_noncontiguous(d, 65536, DMA_TO_DEVICE);"#,
    );
    assert!(r.error.is_none());
    assert_eq!(
        ids(&j),
        vec!["mapping-leak"],
        "a leak at the end of the run"
    );
}

#[test]
fn allocations_are_given_back() {
    // 64 rounds of 4 MiB on 1 GiB of RAM: only freeing makes that fit.
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu", ram: "1GiB", noise: "off" });
        let d = device("d");
        for i in 0..64 {
            let t = dma_alloc_noncontiguous(d, 4 * 1024 * 1024, DMA_TO_DEVICE);
            expect(t != (), `round ${i}`);
            dma_free_noncontiguous(d, 4 * 1024 * 1024, t, DMA_TO_DEVICE);
        }"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
}
