//! The outstanding-request model (`src/outstanding.rs`): concurrent transfers of one
//! device share its link, IOTLB misses of all devices queue for the one walker, a
//! window stream keeps N requests in flight — through scripts and their reports.

mod common;

use common::{ids, ok, script};
use serde_json::Value;

/// The numbers a script printed as `key=value` on its `script:` lines.
fn printed(j: &Value, key: &str) -> f64 {
    j["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|l| l.as_str())
        .filter_map(|l| l.split(&format!("{key}=")).nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no {key}= in {:?}", j["log"]))
}

/// Two 1 MiB reads started together on one device take turns on its link: each
/// ends at about twice the time one alone takes (the first a page earlier). On two
/// devices (two links) each takes the time of one alone.
#[test]
fn two_concurrent_jobs_on_one_device_each_take_twice_as_long_as_one_alone() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d", #{ bandwidth: 1000, latency: 0 });
        let e = device("e", #{ bandwidth: 1000, latency: 0 });
        let b1 = alloc_pages(8, GFP_KERNEL);
        let b2 = alloc_pages(8, GFP_KERNEL);
        let a1 = dma_map_single(d, b1, DMA_TO_DEVICE);
        let a2 = dma_map_single(d, b2, DMA_TO_DEVICE);
        let e2 = dma_map_single(e, b2, DMA_TO_DEVICE);
        if dma_mapping_error(d, a1) || dma_mapping_error(d, a2) || dma_mapping_error(e, e2) { throw "map"; }
        let n = 1024 * 1024;
        let t0 = now();
        wait(dev_start_read(d, a1, n));
        let alone = now() - t0;
        let t0 = now();
        let j1 = dev_start_read(d, a1, n);
        let j2 = dev_start_read(d, a2, n);
        wait(j1);
        let first = now() - t0;
        wait(j2);
        let second = now() - t0;
        let t0 = now();
        let j1 = dev_start_read(d, a1, n);
        let j2 = dev_start_read(e, e2, n);
        wait(j1);
        wait(j2);
        let two_links = now() - t0;
        print(`alone=${alone} first=${first} second=${second} two_links=${two_links}`);
        dma_unmap_single(d, a1, n, DMA_TO_DEVICE);
        dma_unmap_single(d, a2, n, DMA_TO_DEVICE);
        dma_unmap_single(e, e2, n, DMA_TO_DEVICE);
        free_pages(b1);
        free_pages(b2);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    let alone = printed(&j, "alone");
    // 1 MiB at 1000 bytes per µs: 1048.576 µs.
    assert!((alone - 1_048_576.0).abs() < 10.0, "{alone}");
    for k in ["first", "second"] {
        let x = printed(&j, k) / alone;
        assert!((1.95..=2.01).contains(&x), "{k}: {x}x one alone");
    }
    let x = printed(&j, "two_links") / alone;
    assert!((0.999..=1.001).contains(&x), "two devices: {x}x");
}

/// Two devices behind the SMMU, each reading 1 MiB of fresh 4 KiB IO pages so fast
/// that the walks dominate: alone, 256 walks of 33 ns; together, the one walker
/// serves both devices' misses in turn, so each read takes far longer.
#[test]
fn iotlb_misses_of_two_devices_queue_for_the_one_walker() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off", iommu: "smmu" });
        let d = device("d", #{ bandwidth: 1000000, latency: 0 });
        let e = device("e", #{ bandwidth: 1000000, latency: 0 });
        fn window(dev) {
            let v = vmalloc(1024 * 1024);
            let t = sg_from_buffer(v, 65536);
            if dma_map_sgtable(dev, t, DMA_TO_DEVICE) != 0 { throw "map"; }
            sg_dma_address(t, 0)
        }
        let n = 1024 * 1024;
        let a = window(d);
        let t0 = now();
        wait(dev_start_read(d, a, n));
        let alone = now() - t0;
        let ad = window(d);
        let ae = window(e);
        let t0 = now();
        let j1 = dev_start_read(d, ad, n);
        let j2 = dev_start_read(e, ae, n);
        wait(j1);
        let first = now() - t0;
        wait(j2);
        let both = now() - t0;
        print(`alone=${alone} first=${first} both=${both}`);"#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    let alone = printed(&j, "alone");
    // 256 pieces of 4.1 ns plus 256 walks of 4 × 8.25 ns.
    assert!((9_000.0..10_500.0).contains(&alone), "{alone}");
    let first = printed(&j, "first") / alone;
    let both = printed(&j, "both") / alone;
    assert!(
        first > 1.6,
        "the first device waited for the walker: {first}x"
    );
    assert!(both > 1.7 && both < 2.0, "both: {both}x");
}

/// A window stream keeps `outstanding` requests in flight: with one in flight every
/// 64 B read pays the 600 ns latency, so IOTLB misses cost little (0.95x); the same
/// window with 64 in flight is link-bound and the misses cost 0.36x (the scenario
/// `pcie-bench-iotlb.rhai` asserts the figure).
#[test]
fn one_read_in_flight_is_latency_bound_and_hides_most_of_the_misses() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off", iommu: "smmu" });
        let plain = device("plain", #{ iommu: false, bandwidth: 3500, latency: "600 ns" });
        let nfp = device("nfp0", #{ bandwidth: 3500, latency: "600 ns" });
        fn window(dev) {
            let v = vmalloc(64 * 1024 * 1024);
            let t = sg_from_buffer(v, 65536);
            if dma_map_sgtable(dev, t, DMA_TO_DEVICE) != 0 { throw "map"; }
            t
        }
        let wp = window(plain);
        let wn = window(nfp);
        for k in [1, 64] {
            let base = stream_to_device(plain, 64, 2000, #{ window: wp, outstanding: k });
            let r = stream_to_device(nfp, 64, 2000, #{ window: wn, outstanding: k });
            print(`ratio${k}=${r.mb_s / base.mb_s} base${k}=${base.mb_s}`);
        }"#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    let one = printed(&j, "ratio1");
    let many = printed(&j, "ratio64");
    assert!((0.90..0.97).contains(&one), "one in flight: {one}");
    assert!((0.30..=0.40).contains(&many), "64 in flight: {many}");
    // One in flight: 64 B per 618 ns; 64 in flight: the link's 3500 MB/s.
    let (b1, b64) = (printed(&j, "base1"), printed(&j, "base64"));
    assert!((100.0..106.0).contains(&b1), "{b1}");
    assert!((3400.0..=3500.0).contains(&b64), "{b64}");
    let s = &j["streams"][3];
    assert_eq!(s["outstanding"], 64);
    assert_eq!(s["window"], 64 << 20);
    assert!(s["iotlb_misses"].as_u64().unwrap() > 1900, "{s}");
    assert!(
        j["streams"][0].get("iotlb_misses").is_some(),
        "window streams report their misses"
    );
}

/// Requests of 3000 bytes cross page boundaries (two pieces each, taking turns on
/// the link): with one in flight each pays latency + transfer, 3000 B per 600 +
/// 857 ns = 2059 MB/s; with eight in flight the link is never idle, 3500 MB/s.
#[test]
fn requests_across_pages_reach_the_link_rate_with_enough_in_flight() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d", #{ bandwidth: 3500, latency: "600 ns" });
        let v = vmalloc(4 * 1024 * 1024);
        let t = sg_from_buffer(v, 65536);
        if dma_map_sgtable(d, t, DMA_TO_DEVICE) != 0 { throw "map"; }
        let one = stream_to_device(d, 3000, 500, #{ window: t, outstanding: 1 });
        let eight = stream_to_device(d, 3000, 500, #{ window: t, outstanding: 8 });
        print(`one=${one.mb_s} eight=${eight.mb_s}`);
        dma_unmap_sgtable(d, t, DMA_TO_DEVICE);
        vfree(v);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    let one = printed(&j, "one");
    let eight = printed(&j, "eight");
    assert!((2040.0..2080.0).contains(&one), "{one}");
    assert!((3450.0..=3500.0).contains(&eight), "{eight}");
}

/// The map-transfer-unmap form of `stream_to_device` reports no window fields (its
/// JSON is what it was).
#[test]
fn the_plain_stream_report_has_no_window_fields() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d");
        stream_to_device(d, 4096, 4);"#,
    );
    ok(&r);
    let s = j["streams"][0].as_object().unwrap();
    for k in ["window", "outstanding", "iotlb_misses"] {
        assert!(!s.contains_key(k), "{k} in {s:?}");
    }
}

/// Bad window streams are clear errors (exit 2), never panics.
#[test]
fn bad_window_streams_are_refused_with_a_reason() {
    let cases = [
        ("#{ window: t, outstanding: 0 }", "outstanding is 1..=256"),
        ("#{ window: t, outstanding: 257 }", "outstanding is 1..=256"),
        ("#{ window: t, outstanding: -1 }", "non-negative integer"),
        ("#{ outstanding: 4 }", "need a window"),
        ("#{ window: 5 }", "need a window"),
        ("#{ window: t, depth: 4 }", "unknown option \"depth\""),
        ("#{ window: u }", "must be mapped for d"),
        ("#{ window: o }", "must be mapped for d"),
    ];
    for (opts, want) in cases {
        let (r, _) = script(&format!(
            r#"boot("arm64-coherent", #{{ noise: "off" }});
            let d = device("d");
            let o = device("o");
            let b = kmalloc(4096);
            let t = sg_from_buffer(b);
            let u = sg_from_buffer(b);
            let w = sg_from_buffer(b);
            if dma_map_sgtable(d, t, DMA_TO_DEVICE) != 0 {{ throw "map"; }}
            if dma_map_sgtable(o, w, DMA_TO_DEVICE) != 0 {{ throw "map"; }}
            stream_to_device(d, 64, 10, {})"#,
            opts.replace("window: o", "window: w")
        ));
        let e = r
            .error
            .as_deref()
            .unwrap_or_else(|| panic!("{opts}: no error"));
        assert!(e.contains(want), "{opts}: {e}");
        assert_eq!(r.exit_code(), 2, "{opts}");
    }
    let (r, _) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d");
        let b = kmalloc(4096);
        let t = sg_from_buffer(b);
        if dma_map_sgtable(d, t, DMA_TO_DEVICE) != 0 { throw "map"; }
        stream_to_device(d, 8192, 10, #{ window: t })"#,
    );
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("shorter than one"),
        "{:?}",
        r.error
    );
}

/// Same seed, same report, byte for byte: a window stream's offsets come from a
/// generator of its own, its timing from the simulated clock alone.
#[test]
fn a_window_stream_report_is_the_same_on_the_same_seed() {
    let src = r#"boot("arm64-coherent", #{ iommu: "smmu" });
        let d = device("d", #{ bandwidth: 3500, latency: "600 ns" });
        let v = vmalloc(4 * 1024 * 1024);
        let t = sg_from_buffer(v, 65536);
        if dma_map_sgtable(d, t, DMA_BIDIRECTIONAL) != 0 { throw "map"; }
        let r = stream_to_device(d, 64, 3000, #{ window: t, outstanding: 32 });
        let w = stream_from_device(d, 128, 3000, #{ window: t, outstanding: 8 });
        print(`${r.mb_s} ${w.mb_s}`);
        dma_unmap_sgtable(d, t, DMA_BIDIRECTIONAL);
        vfree(v);"#;
    let run = |seed| {
        common::run_json(
            "w.rhai",
            src,
            &dmasim::script::ScriptOptions {
                seed,
                ..dmasim::script::ScriptOptions::default()
            },
        )
    };
    let (a, ja) = run(5);
    let (b, _) = run(5);
    ok(&a);
    assert!(ids(&ja).is_empty(), "{:?}", ids(&ja));
    assert_eq!(a.to_json(), b.to_json());
}
