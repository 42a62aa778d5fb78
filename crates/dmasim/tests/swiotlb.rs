//! Bounce buffers and DMA masks (issue 4): the scenarios in `scenarios/` that
//! exercise swiotlb, checked on the JSON report (finding ids, severity,
//! `manifested`, stats, streams, exit codes), plus targeted scripts.

mod common;

use common::ids;
use dmasim::check::Severity;
use dmasim::report::Report;
use dmasim::script::ScriptOptions;
use serde_json::Value;

fn scenario(name: &str) -> String {
    common::scenario_text(name)
}

fn run_with(name: &str, src: &str, seed: u64, preset: Option<&'static str>) -> (Report, Value) {
    common::run_json(
        name,
        src,
        &ScriptOptions {
            seed,
            preset,
            ..ScriptOptions::default()
        },
    )
}

fn run(name: &str) -> (Report, Value) {
    run_with(name, &scenario(name), 0, None)
}

fn finding<'a>(j: &'a Value, id: &str) -> &'a Value {
    j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {:?}", ids(j)))
}

fn all_passed(r: &Report) {
    common::ok(r);
}

#[test]
fn slot_accounting_and_a_full_pool_as_linux() {
    let (r, j) = run("swiotlb-slots.rhai");
    all_passed(&r);
    assert_eq!(r.expectations.passed, 10);
    let s = &j["stats"]["swiotlb"];
    assert_eq!(s["slots_total"], 32768);
    assert_eq!(s["slots_used_max"], 32768);
    assert_eq!(s["full_errors"], 2, "300 KiB once, the 257th 256 KiB once");
    assert_eq!(s["slots_used"], 0, "every slot came back");
    let full: Vec<&Value> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "swiotlb-full")
        .collect();
    assert_eq!(full.len(), 2);
    assert!(full[0]["message"]
        .as_str()
        .unwrap()
        .contains("sz: 307200 bytes"));
    assert_eq!(full[0]["severity"], "warning");
    assert!(full[0]["manifested"].is_null());
    assert!(full[1]["message"]
        .as_str()
        .unwrap()
        .contains("total 32768 (slots), used 32768 (slots)"));
    // Linux's own log lines.
    let log = j["log"].as_array().unwrap();
    assert!(log
        .iter()
        .any(|l| l.as_str().unwrap().contains(
            "software IO TLB: mapped [mem 0x00000000fb000000-0x00000000ff000000] (64MB)"
        )));
    assert!(log.iter().any(|l| l.as_str().unwrap().contains(
        "swiotlb buffer is full (sz: 262144 bytes), total 32768 (slots), used 32768 (slots)"
    )));
    assert_eq!(j["stats"]["bounced_maps"], 259);
    // Warnings only: the run passes.
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn a_32_bit_nic_on_8_gib_bounces_until_the_mask_is_set_at_half_the_throughput() {
    let (r, j) = run("bounce-nic.rhai");
    all_passed(&r);
    assert_eq!(r.exit_code(), 0);
    let found = ids(&j);
    assert!(found.contains(&"dma-mask-default".to_string()), "{found:?}");
    let b = finding(&j, "bounce-buffering");
    assert_eq!(b["severity"], "warning");
    assert!(b["help"]
        .as_str()
        .unwrap()
        .contains("dma_set_mask_and_coherent(dev, 64)"));
    let streams = j["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    let (bounced, direct) = (&streams[0], &streams[1]);
    assert_eq!(bounced["bounced"], 64);
    assert_eq!(direct["bounced"], 0);
    let ratio = bounced["mb_s"].as_f64().unwrap() / direct["mb_s"].as_f64().unwrap();
    assert!((0.4..0.6).contains(&ratio), "ratio {ratio}");
    // The report explains the figure with the serial model, and the model agrees
    // with the measurement within 15%.
    let model = bounced["model_mb_s"].as_f64().unwrap();
    let got = bounced["mb_s"].as_f64().unwrap();
    assert!((got / model - 1.0).abs() < 0.15, "{got} vs model {model}");
    assert!(bounced["explain"]
        .as_str()
        .unwrap()
        .contains("1/(1/B_dev + 1/B_copy)"));
    assert!(bounced["copy_ns"].as_u64().unwrap() > 0);
    assert_eq!(direct["copy_ns"], 0);
    // 65 bounced maps of 64 KiB, one copy each (transmit).
    assert_eq!(j["stats"]["bounced_maps"], 65);
    assert_eq!(j["stats"]["bounce_bytes"], 65 * 65536);
}

#[test]
fn missing_sync_on_a_bounced_rx_buffer_manifests_even_on_a_coherent_platform() {
    for preset in ["arm64-coherent", "arm64-noncoherent"] {
        for seed in 0..20 {
            let (r, j) = run_with(
                "bounce-rx-no-sync.rhai",
                &scenario("bounce-rx-no-sync.rhai"),
                seed,
                Some(preset),
            );
            all_passed(&r);
            let f = finding(&j, "stale-cpu-read");
            assert_eq!(f["manifested"], true, "{preset} seed {seed}");
            assert_eq!(f["severity"], "error");
            assert!(f["history"].as_array().unwrap().iter().any(|h| h["event"]
                .as_str()
                .unwrap()
                .contains("swiotlb slots at phys=")));
            assert_eq!(r.exit_code(), 1);
        }
    }
}

#[test]
fn synced_bounced_rx_is_clean_on_every_preset_and_seed() {
    for preset in ["arm64-coherent", "arm64-noncoherent"] {
        for seed in 0..20 {
            let (r, _) = run_with(
                "bounce-rx-sync.rhai",
                &scenario("bounce-rx-sync.rhai"),
                seed,
                Some(preset),
            );
            all_passed(&r);
            let errors: Vec<_> = r
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .map(|f| f.id)
                .collect();
            assert!(errors.is_empty(), "{preset} seed {seed}: {errors:?}");
            assert_eq!(r.exit_code(), 0);
        }
    }
}

#[test]
fn rpi4_bounces_above_its_1_gib_window_and_allocates_coherent_memory_in_zone_dma() {
    let (r, j) = run("rpi4-dma-window.rhai");
    all_passed(&r);
    assert_eq!(r.expectations.passed, 8);
    let b = finding(&j, "bounce-buffering");
    assert!(b["message"].as_str().unwrap().contains("bus limit"));
    assert_eq!(j["stats"]["bounced_maps"], 1);
    // The pool lies inside the window, below 1 GiB.
    let log = j["log"].as_array().unwrap();
    let line = log
        .iter()
        .map(|l| l.as_str().unwrap())
        .find(|l| l.contains("software IO TLB: mapped"))
        .unwrap();
    let end = line.split('-').nth(1).unwrap().split(']').next().unwrap();
    assert!(u64::from_str_radix(end.trim_start_matches("0x"), 16).unwrap() <= 1 << 30);
}

fn src(text: &str) -> (Report, Value) {
    run_with("t.rhai", text, 0, None)
}

#[test]
fn without_swiotlb_an_unreachable_buffer_fails_with_the_overflow_warning() {
    let (r, j) = src(
        r#"boot("arm64-noncoherent", #{ ram: "8 GiB", swiotlb: "off", noise: "off" });
        let d = device("d");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_TO_DEVICE);
        expect(dma_mapping_error(d, a), "no pool: DMA_MAPPING_ERROR");
        expect_eq(stats().swiotlb.slots_total, 0, "no pool");"#,
    );
    all_passed(&r);
    assert!(j["log"].as_array().unwrap().iter().any(|l| l
        .as_str()
        .unwrap()
        .contains("overflow (mask ffffffff, bus limit 0)")));
}

#[test]
fn masks_follow_dma_direct_supported() {
    let (r, _) = src(r#"boot("rpi4", #{ noise: "off" });
        let d = device("d");
        expect_eq(dma_set_mask(d, 24), -EIO, "24 bits cannot cover ZONE_DMA at bus 0xC000_0000");
        expect_eq(dma_set_mask(d, 32), 0, "every mask of 32 bits or more is accepted");
        expect_eq(dma_set_coherent_mask(d, 64), 0, "64-bit coherent mask");
        expect_eq(dma_set_mask_and_coherent(d, 20), -EIO, "and_coherent returns set_mask's result");"#);
    all_passed(&r);
    assert_eq!(r.expectations.passed, 4);
}

#[test]
fn small_unaligned_kmalloc_buffers_a_device_writes_bounce_on_arm64() {
    let (r, j) = src(r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let small = kmalloc(96);
        let a = dma_map_single(d, small, DMA_FROM_DEVICE);
        expect(!dma_mapping_error(d, a) && is_swiotlb_buffer(d, a), "96 bytes (kmalloc-96) bounce");
        dma_unmap_single(d, a, 96, DMA_FROM_DEVICE);
        let ok = kmalloc(128);
        let a = dma_map_single(d, ok, DMA_FROM_DEVICE);
        expect(!is_swiotlb_buffer(d, a), "128 bytes are two whole lines: no bounce");
        dma_unmap_single(d, a, 128, DMA_FROM_DEVICE);
        let a = dma_map_single(d, small, DMA_TO_DEVICE);
        expect(!is_swiotlb_buffer(d, a), "TO_DEVICE never needs it");
        dma_unmap_single(d, a, 96, DMA_TO_DEVICE);"#);
    all_passed(&r);
    let b = finding(&j, "bounce-buffering");
    assert!(b["message"]
        .as_str()
        .unwrap()
        .contains("not whole cache lines"));
    // A coherent device never needs it.
    let (r, j) = src(r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d");
        let small = kmalloc(96);
        let a = dma_map_single(d, small, DMA_FROM_DEVICE);
        expect(!is_swiotlb_buffer(d, a), "coherent: no bounce");
        dma_unmap_single(d, a, 96, DMA_FROM_DEVICE);"#);
    all_passed(&r);
    assert!(!ids(&j).contains(&"bounce-buffering".to_string()));
}

#[test]
fn x86_coherent_allocations_follow_the_coherent_mask_into_zone_dma_and_run_out() {
    let (r, j) = src(r#"boot("x86-64", #{ noise: "off" });
        let d = device("isa0");
        expect_eq(dma_set_coherent_mask(d, 24), 0, "a 24-bit ISA-style device");
        let got = [];
        loop {
            let c = dma_alloc_coherent(d, 1048576);
            if c == () { break; }
            expect(c.phys + 1048576 <= 0x1000000, "inside ZONE_DMA (16 MiB)");
            got.push(c);
            if got.len() > 64 { break; }
        }
        expect(got.len() >= 4 && got.len() < 16, "ZONE_DMA holds a handful of 1 MiB blocks");
        for c in got { dma_free_coherent(d, 1048576, c); }"#);
    all_passed(&r);
    let z = finding(&j, "zone-exhausted");
    assert_eq!(z["severity"], "warning");
}

#[test]
fn x86_with_more_than_4_gib_gets_the_default_pool_and_a_forced_one_bounces_everything() {
    let (r, j) = src(r#"boot("x86-64", #{ ram: "16 GiB", noise: "off" });
        expect_eq(stats().swiotlb.slots_total, 32768, "RAM above 4 GiB: 64 MiB pool");"#);
    all_passed(&r);
    assert!(ids(&j).is_empty());
    let (r, j) = src(r#"boot("x86-64", #{ swiotlb_force: true, noise: "off" });
        let d = device("nvme0");
        expect_eq(dma_set_mask_and_coherent(d, 64), 0, "64-bit");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_BIDIRECTIONAL);
        expect(is_swiotlb_buffer(d, a), "forced: even a 64-bit device bounces");
        dma_unmap_single(d, a, 4096, DMA_BIDIRECTIONAL);"#);
    all_passed(&r);
    assert!(finding(&j, "bounce-buffering")["help"]
        .as_str()
        .unwrap()
        .contains("swiotlb=force"));
    // Two copies for a bidirectional map+unmap.
    assert_eq!(j["stats"]["bounce_bytes"], 8192);
}

#[test]
fn min_align_mask_keeps_the_offset_in_the_bounce_buffer() {
    let (r, _) = src(
        r#"boot("arm64-coherent", #{ swiotlb_force: true, noise: "off" });
        let d = device("nvme0", #{ min_align_mask: 0xfff });
        let b = kmalloc(8192);
        let a = dma_map_page(d, b, 0x240, 512, DMA_TO_DEVICE);
        expect_eq(a % 4096, (b.phys + 0x240) % 4096, "the low 12 bits survive the bounce");
        expect_eq(dma_max_mapping_size(d), 258048, "256 KiB less the 4 KiB of alignment");
        dma_unmap_page(d, a, 512, DMA_TO_DEVICE);"#,
    );
    all_passed(&r);
}

#[test]
fn scatter_gather_entries_bounce_one_by_one_and_round_trip() {
    let (r, j) = src(
        r#"boot("arm64-noncoherent", #{ swiotlb_force: true, noise: "off" });
        let d = device("d");
        let buf = vmalloc(16384);
        let t = sg_from_buffer(buf);
        let n = dma_map_sg(d, t, DMA_FROM_DEVICE);
        expect_eq(n, sg_nents(t), "dma-direct never merges: one segment per entry");
        for i in 0..n { expect(is_swiotlb_buffer(d, sg_dma_address(t, i)), "each entry bounced"); }
        let data = pattern("random", 16384, 3);
        dev_write_sg(d, t, data);
        dma_sync_sg_for_cpu(d, t, DMA_FROM_DEVICE);
        expect_eq(cpu_read(buf, 0, 16384), data, "the sync copied every entry back");
        dma_unmap_sg(d, t, DMA_FROM_DEVICE);
        expect_eq(stats().swiotlb.slots_used, 0, "all slots back");"#,
    );
    all_passed(&r);
    assert_eq!(r.expectations.passed as usize, 3 + sg_entries(&j));
    let errors: Vec<&str> = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.id)
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

/// Entries of the 16 KiB vmalloc table: the bounced-map count of the run.
fn sg_entries(j: &Value) -> usize {
    j["stats"]["bounced_maps"].as_u64().unwrap() as usize
}
