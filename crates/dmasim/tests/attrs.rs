//! `dma_map_*_attrs` with `DMA_ATTR_SKIP_CPU_SYNC` and the range syncs, as
//! page_pool uses them: no cache maintenance at map or unmap, the driver's first
//! sync for the device is owed — checked on the JSON report.

mod common;

use common::{finding, ids, log_has, ok, scenario, script};

#[test]
fn page_pool_without_sync_dev_loses_packets_to_dirty_lines() {
    for seed in 0..6 {
        let (r, j) = scenario("page-pool-no-sync-dev.rhai", seed, None);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.exit_code(), 1);
        let f = finding(&j, "dirty-writeback-clobber");
        assert_eq!(f["manifested"], true, "seed {seed}");
        let msg = f["message"].as_str().unwrap();
        assert!(msg.contains("DMA_ATTR_SKIP_CPU_SYNC"), "{msg}");
        assert!(f["help"]
            .as_str()
            .unwrap()
            .contains("dma_sync_single_for_device"));
        assert!(ids(&j).contains(&"stale-cpu-read".to_string()));
        assert!(
            !log_has(&j, " 0 of 6 packets arrived corrupted"),
            "seed {seed}"
        );
    }
    for preset in ["arm64-noncoherent", "arm64-coherent", "x86-64", "arm32"] {
        for seed in 0..3 {
            let (r, j) = scenario("page-pool-no-sync-dev-fixed.rhai", seed, Some(preset));
            ok(&r);
            assert!(ids(&j).is_empty(), "{preset} {seed}: {:?}", ids(&j));
            assert!(log_has(&j, " 0 of 6 packets arrived corrupted"));
        }
    }
}

/// A TX buffer the CPU filled, mapped with `attrs`, then `then`, read by the device.
fn tx(attrs: &str, then: &str) -> (dmasim::report::Report, serde_json::Value) {
    script(&format!(
        r#"boot("arm64-noncoherent");
        let d = device("dma0");
        let b = kmalloc(4096);
        cpu_fill(b, 0x77);
        let a = dma_map_single_attrs(d, b, DMA_TO_DEVICE, {attrs});
        if dma_mapping_error(d, a) {{ throw "map"; }}
        {then}
        let got = dev_read(d, a, 4096);
        print(`device sees ${{got[0]}} ${{got[4095]}}`);
        dma_unmap_single_attrs(d, a, 4096, DMA_TO_DEVICE, {attrs});
        kfree(b);"#
    ))
}

#[test]
fn skip_cpu_sync_leaves_the_clean_to_the_driver() {
    // Without the attribute the map cleans: the device sees the fill.
    let (r, j) = tx("0", "");
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(&j, "device sees 119 119"));
    // With it nothing cleans the dirty lines: the device reads DRAM's zeros.
    let (r, j) = tx("DMA_ATTR_SKIP_CPU_SYNC", "");
    assert_eq!(r.exit_code(), 1);
    assert!(log_has(&j, "device sees 0 0"));
    assert_eq!(finding(&j, "stale-device-read")["manifested"], true);
    // The range sync for the device the driver owes, over the whole buffer.
    let (r, j) = tx(
        "DMA_ATTR_SKIP_CPU_SYNC",
        "dma_sync_single_range_for_device(d, a, 0, 4096, DMA_TO_DEVICE);",
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(&j, "device sees 119 119"));
    // Half of it: the other half stays stale.
    let (_, j) = tx(
        "DMA_ATTR_SKIP_CPU_SYNC",
        "dma_sync_single_range_for_device(d, a, 0, 2048, DMA_TO_DEVICE);",
    );
    assert!(log_has(&j, "device sees 119 0"));
}

#[test]
fn an_attrs_map_still_needs_its_mapping_error_check_and_unmap_attrs_skip_the_invalidate() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent");
        let d = device("dma0");
        let p = alloc_pages(0, GFP_KERNEL);
        let a = dma_map_page_attrs(d, p, 0, 4096, DMA_FROM_DEVICE, DMA_ATTR_SKIP_CPU_SYNC | DMA_ATTR_WEAK_ORDERING);
        dma_sync_single_range_for_device(d, a, 0, 4096, DMA_FROM_DEVICE);
        let x = cpu_read(p, 0, 64);            // BUG: the line is cached again
        dev_write(d, a, blob(64, 9));
        dma_unmap_page_attrs(d, a, 4096, DMA_FROM_DEVICE, DMA_ATTR_SKIP_CPU_SYNC);
        print(`cpu sees ${cpu_read(p, 0, 1)[0]}`);"#,
    );
    assert_eq!(r.exit_code(), 1, "{:?}", r.error);
    let got = ids(&j);
    assert!(
        got.contains(&"mapping-error-unchecked".to_string()),
        "{got:?}"
    );
    // The unmap skipped its invalidate: the CPU still sees the line it cached.
    assert!(log_has(&j, "cpu sees 0"));
}
