//! `dma_alloc_noncoherent` / `dma_free_noncoherent`: cacheable DMA memory the driver
//! syncs like a reused streaming mapping — checked on the JSON report.

mod common;

use common::{ids, log_has, scenario_text, script};
use dmasim::script::{run_source, ScriptOptions};
use serde_json::Value;

fn run(src: &str, seed: u64) -> Value {
    let r = run_source(
        "nc.rhai",
        src,
        &ScriptOptions {
            seed,
            ..ScriptOptions::default()
        },
    );
    serde_json::from_str(&r.to_json()).unwrap()
}

#[test]
fn a_receive_buffer_never_synced_for_the_device_loses_samples_to_the_allocations_zeros() {
    let broken = scenario_text("noncoherent-rx.rhai");
    let fixed = scenario_text("noncoherent-rx-fixed.rhai");
    let mut manifested = 0;
    for seed in 0..20 {
        let j = run(&broken, seed);
        assert!(
            ids(&j).contains(&"dirty-writeback-clobber".to_string()),
            "reported on every seed, latent or not: seed {seed}"
        );
        for id in ids(&j) {
            assert!(
                id == "dirty-writeback-clobber" || id == "stale-cpu-read",
                "seed {seed}: {id}"
            );
        }
        if j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "dirty-writeback-clobber" && f["manifested"] == true)
        {
            manifested += 1;
            assert!(log_has(&j, "script: samples corrupted"), "seed {seed}");
            let f = j["findings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["id"] == "dirty-writeback-clobber")
                .unwrap();
            assert!(f["message"]
                .as_str()
                .unwrap()
                .contains("never handed to adc0 with dma_sync_single_for_device"));
        } else {
            assert!(log_has(&j, "script: samples intact"), "seed {seed}");
            let f = &j["findings"][0];
            assert_eq!(f["manifested"], false, "seed {seed}");
            assert!(f["message"]
                .as_str()
                .unwrap()
                .contains("never handed to it"));
        }
        let j = run(&fixed, seed);
        assert_eq!(ids(&j), Vec::<String>::new(), "fixed, seed {seed}");
        assert!(log_has(&j, "script: samples intact"), "fixed, seed {seed}");
    }
    assert!((10..20).contains(&manifested), "{manifested} of 20 seeds");
}

const TX: &str = r#"
    let d = device("snd0");
    let b = dma_alloc_noncoherent(d, 8192, DMA_TO_DEVICE);
    print(`phys-below-4G=${b.phys < 0x100000000} iova=${b.dma != b.phys}`);
    cpu_fill(b, 0x11);
    SYNC
    let got = dev_read(d, b.dma, 8192);
    print(`device got ${got[100]}`);
    dma_free_noncoherent(d, 8192, b, DMA_TO_DEVICE);
"#;

fn tx(boot: &str, sync: bool) -> (Vec<String>, Value) {
    let body = TX.replace(
        "SYNC",
        if sync {
            "dma_sync_single_for_device(d, b.dma, 8192, DMA_TO_DEVICE);"
        } else {
            ""
        },
    );
    let (_, j) = script(&format!("{boot}\n{body}"));
    (ids(&j), j)
}

#[test]
fn a_transmit_buffer_needs_its_sync_for_the_device_on_a_non_coherent_port() {
    let nc = r#"boot("arm64-noncoherent", #{ noise: "off" });"#;
    let (i, j) = tx(nc, false);
    assert_eq!(i, vec!["stale-device-read"]);
    assert_eq!(j["findings"][0]["manifested"], true);
    assert!(log_has(&j, "script: device got 0"));
    let (i, j) = tx(nc, true);
    assert!(i.is_empty(), "{i:?}");
    assert!(log_has(&j, "script: device got 17"));
    // A coherent port hides the missing sync: reported, not manifested.
    let (i, j) = tx(r#"boot("arm64-coherent", #{ noise: "off" });"#, false);
    assert_eq!(i, vec!["stale-device-read"]);
    assert_eq!(j["findings"][0]["manifested"], false);
    assert!(log_has(&j, "script: device got 17"));
    // The coherent mask picks the zone: below 4 GiB on an 8 GiB machine.
    let (_, j) = tx(
        r#"boot("arm64-noncoherent", #{ noise: "off", ram: "8 GiB" });"#,
        true,
    );
    assert!(
        log_has(&j, "script: phys-below-4G=true iova=false"),
        "{:?}",
        j["log"]
    );
    // Behind an IOMMU the handle is an IOVA, and the data gets through.
    let (i, j) = tx(
        r#"boot("arm64-noncoherent", #{ noise: "off", iommu: "smmu" });"#,
        true,
    );
    assert!(i.is_empty(), "{i:?}");
    assert!(log_has(&j, "iova=true"), "{:?}", j["log"]);
    assert!(log_has(&j, "script: device got 17"));
    assert!(j["stats"]["iommu"]["maps"].as_u64().unwrap() >= 1);
    assert_eq!(j["stats"]["iommu"]["unmaps"], j["stats"]["iommu"]["maps"]);
}

#[test]
fn frees_are_checked_as_dma_debug_checks_unmaps() {
    let cases = [
        (
            "dma_free_noncoherent(d, 4096, b, DMA_TO_DEVICE);",
            "unmap-size-mismatch",
        ),
        (
            "dma_free_noncoherent(d, 8192, b, DMA_FROM_DEVICE);",
            "unmap-dir-mismatch",
        ),
        (
            "dma_unmap_single(d, b.dma, 8192, DMA_TO_DEVICE);",
            "unmap-type-mismatch",
        ),
        ("", "mapping-leak"),
        (
            "dma_free_noncoherent(d, 8192, b, DMA_TO_DEVICE); let k = kmalloc(64); dma_free_noncoherent(d, 64, k, DMA_TO_DEVICE);",
            "unmap-unknown",
        ),
    ];
    for (free, want) in cases {
        let (_, j) = script(&format!(
            r#"boot("arm64-noncoherent", #{{ noise: "off" }});
            let d = device("d");
            let b = dma_alloc_noncoherent(d, 8192, DMA_TO_DEVICE);
            {free}"#
        ));
        assert_eq!(ids(&j), vec![want], "{free}");
        if want == "mapping-leak" {
            assert!(j["findings"][0]["help"]
                .as_str()
                .unwrap()
                .contains("dma_free_noncoherent"));
        }
    }
    // Freed right, the pages go back: 150 allocations of 4 MiB (more than the 512 MiB
    // of RAM) one after the other all succeed.
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off", cma: 0, ram: "512 MiB" });
        let d = device("d");
        for i in 0..150 {
            let b = dma_alloc_noncoherent(d, "4 MiB", DMA_BIDIRECTIONAL);
            if b == () { throw "out of memory"; }
            dma_free_noncoherent(d, "4 MiB", b, DMA_BIDIRECTIONAL);
        }"#,
    );
    assert!(j["error"].is_null(), "{}", j["error"]);
    assert_eq!(ids(&j), Vec::<String>::new());
}

#[test]
fn a_lent_dev_write_reports_what_the_copying_form_reports() {
    // `blob.dev_write(dev, addr)` (the blob lent, not copied) against the
    // kernel-named `dev_write(dev, addr, blob)`: same report byte for byte, noise
    // on, two seeds — a correct write, a write into a DMA_TO_DEVICE mapping
    // (dir-violation), a write at an address no mapping covers — and the blob is
    // the script's again afterwards.
    let body = |call: &str| {
        format!(
            r#"boot("arm64-noncoherent");
let dev = device("nic0");
let rx = kmalloc(65536);
let rx_dma = dma_map_single(dev, rx, DMA_FROM_DEVICE);
let tx = kmalloc(8192);
let tx_dma = dma_map_single(dev, tx, DMA_TO_DEVICE);
let data = pattern("inc", 65536);
let small = blob(4096, 7);
{}
dma_sync_single_for_cpu(dev, rx_dma, 65536, DMA_FROM_DEVICE);
expect_eq(cpu_read(rx, 0, 64), pattern("inc", 64), "the CPU sees the device's bytes");
expect_eq(data, pattern("inc", 65536), "the blob is unchanged");
expect_eq(small, blob(4096, 7), "the blob is unchanged");
"#,
            call
        )
    };
    let copied = body(
        "dev_write(dev, rx_dma, data); dev_write(dev, tx_dma, small); dev_write(dev, tx_dma + 1048576, small);",
    );
    let lent = body(
        "data.dev_write(dev, rx_dma); small.dev_write(dev, tx_dma); dev_write(small, dev, tx_dma + 1048576);",
    );
    for seed in [0, 3] {
        let (a, b) = (run(&copied, seed), run(&lent, seed));
        assert_eq!(a, b, "seed {seed}");
        let found = ids(&a);
        assert!(found.iter().any(|i| i == "dir-violation"), "{found:?}");
        assert!(
            found.iter().any(|i| i == "dma-outside-mapping"),
            "{found:?}"
        );
        assert_eq!(a["expectations"]["failed"], 0, "{a}");
        assert_eq!(
            a["expectations"]["passed"], 3,
            "the script ran to its end: {a}"
        );
    }
}
