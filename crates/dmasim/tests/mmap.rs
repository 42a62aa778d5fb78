//! A driver's mmap of coherent memory: `dma_mmap_coherent` keeps the buffer's
//! attributes, `remap_pfn_range` with the default protection makes a cacheable alias
//! that a non-coherent device does not see — checked on the JSON report.

mod common;

use common::{finding, ids, log_has, ok, scenario, script};

#[test]
fn a_cacheable_alias_is_reported_at_the_mmap_and_bites_on_most_seeds() {
    let mut stale_reads = 0;
    for seed in 0..12 {
        let (r, j) = scenario("mmap-cacheable-alias.rhai", seed, None);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.exit_code(), 1);
        let got = ids(&j);
        assert_eq!(got[0], "cacheable-alias", "seed {seed}");
        assert_eq!(j["findings"][0]["line"], 19, "at the mmap");
        assert!(j["findings"][0]["manifested"].is_null());
        // The doorbell line stays dirty in the cache on every seed here.
        assert!(
            got.contains(&"stale-device-read".to_string()),
            "seed {seed}"
        );
        if got.contains(&"stale-cpu-read".to_string()) {
            stale_reads += 1;
            assert!(
                log_has(&j, "application sees frame counter 0"),
                "seed {seed}"
            );
            let f = finding(&j, "stale-cpu-read");
            assert_eq!(f["manifested"], true);
            assert!(f["message"]
                .as_str()
                .unwrap()
                .contains("coherent buffer through a cacheable mapping"));
        } else {
            assert!(
                log_has(&j, "application sees frame counter 1"),
                "seed {seed}"
            );
        }
    }
    assert!(
        stale_reads >= 6,
        "{stale_reads}/12: the cache usually keeps the polled line"
    );
}

#[test]
fn dma_mmap_coherent_is_clean_on_every_platform() {
    for preset in [
        "arm64-noncoherent",
        "arm64-coherent",
        "x86-64",
        "arm32",
        "rpi4",
    ] {
        for seed in 0..3 {
            let (r, j) = scenario("mmap-cacheable-alias-fixed.rhai", seed, Some(preset));
            ok(&r);
            assert!(ids(&j).is_empty(), "{preset} {seed}: {:?}", ids(&j));
        }
    }
}

#[test]
fn a_cacheable_mapping_is_right_for_a_coherent_device() {
    let (r, j) = scenario("mmap-cacheable-alias.rhai", 0, Some("arm64-coherent"));
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(&j, "application sees frame counter 1"));
}

#[test]
fn write_combining_and_uncached_protections_are_no_alias() {
    for prot in ["writecombine", "dmacoherent", "noncached"] {
        let (r, j) = script(&format!(
            r#"boot("arm64-noncoherent", #{{ noise: "off" }});
            let d = device("d");
            let b = dma_alloc_coherent(d, 4096);
            let p = process("app");
            let v = remap_pfn_range(p, b, "{prot}");
            let x = p.read(v, 0, 8);
            dev_write(d, b.dma, blob(8, 7));
            expect_eq(p.read(v, 0, 8), blob(8, 7), "uncached: the device's bytes");
            dma_free_coherent(d, 4096, b);"#
        ));
        ok(&r);
        assert!(ids(&j).is_empty(), "{prot}: {:?}", ids(&j));
    }
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let b = dma_alloc_coherent(d, 4096);
        let v = remap_pfn_range(process("app"), b, "sometimes");"#,
    );
    assert_eq!(r.exit_code(), 2);
    assert!(r.error.unwrap().contains("unknown protection"));
}

#[test]
fn dma_mmap_coherent_refuses_memory_that_is_not_the_devices_coherent_buffer() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let e = device("e");
        let b = dma_alloc_coherent(d, 4096);
        let v = dma_mmap_coherent(e, process("app"), b);"#,
    );
    assert_eq!(r.exit_code(), 2);
    assert!(r
        .error
        .unwrap()
        .contains("not a live dma_alloc_coherent buffer of e"));
}

#[test]
fn behind_an_iommu_the_scattered_pages_are_mapped_in_order() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ iommu: "smmu", noise: "off" });
        let d = device("d");
        let b = dma_alloc_coherent(d, 65536);
        cpu_write(b, 40000, blob(4, 9));
        let p = process("app");
        let v = dma_mmap_coherent(d, p, b);
        expect_eq(p.read(v, 40000, 4), blob(4, 9), "the same byte through both mappings");
        dma_free_coherent(d, 65536, b);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
}

#[test]
fn mapping_a_kmalloc_buffer_hands_over_its_slab_neighbours() {
    let src = |neighbour: &str| {
        format!(
            r#"boot("arm64-coherent", #{{ noise: "off" }});
            {neighbour}
            let buf = kmalloc(256);
            let app = process("app");
            let view = remap_pfn_range(app, buf);
            expect_eq(view.len, 4096, "whole pages");
            let page = app.read(view, 0, 4096);
            let n = 0;
            for i in 0..page.len() {{ if page[i] == 0x5e {{ n += 1; }} }}
            print(`0x5e bytes seen: ${{n}}`);"#
        )
    };
    let (r, j) = script(&src(
        "let secret = kmalloc(256); cpu_write(secret, 0, blob(8, 0x5e));",
    ));
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(ids(&j), vec!["mmap-beyond-buffer"]);
    let f = &j["findings"][0];
    assert_eq!(f["manifested"], true);
    assert!(f["message"]
        .as_str()
        .unwrap()
        .contains("3840 bytes beyond kmalloc buffer"));
    assert!(f["message"]
        .as_str()
        .unwrap()
        .contains("and with them kmalloc #1 (256 bytes)"));
    assert!(
        log_has(&j, "0x5e bytes seen: 8"),
        "the process reads the neighbour's bytes"
    );
    let (_, j) = script(&src(""));
    assert_eq!(ids(&j), vec!["mmap-beyond-buffer"]);
    assert_eq!(
        j["findings"][0]["manifested"], false,
        "nobody shares the page yet"
    );
    // Whole pages of their own: nothing to report.
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let b = alloc_pages(1, GFP_KERNEL);
        let v = remap_pfn_range(process("app"), b);
        expect_eq(v.len, 8192, "two pages");"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
}
