//! Findings that point at the cause: the lines of the calls that matter are in the
//! message, one mistake repeated on many packets is one finding with a count, a
//! finding inside a script function shows its call chain, and a trimmed history
//! says how much it left out — checked on the JSON report.

mod common;

use common::{finding, ids, script};

fn all<'a>(j: &'a serde_json::Value, id: &str) -> Vec<&'a serde_json::Value> {
    j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == id)
        .collect()
}

/// A receive loop that reads every packet before syncing it: the same mistake on
/// four buffers, mapped at the same line, is one finding with count 4.
#[test]
fn one_mistake_on_many_packets_is_one_finding_with_a_count() {
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("eth0");
        let bufs = [];
        for i in 0..4 {
            let b = kmalloc(2048);
            let a = dma_map_single(d, b, DMA_FROM_DEVICE);
            if dma_mapping_error(d, a) { throw "map"; }
            bufs.push([b, a]);
        }
        for x in bufs {
            dev_write(d, x[1], pattern("random", 64, 1));
            let peek = cpu_read(x[0], 0, 14);
            dma_unmap_single(d, x[1], 2048, DMA_FROM_DEVICE);
        }"#,
    );
    let f = all(&j, "stale-cpu-read");
    assert_eq!(f.len(), 1, "{:?}", ids(&j));
    assert_eq!(f[0]["count"], 4, "{}", f[0]);
    assert_eq!(f[0]["line"], 12);
}

/// The same line and story on two devices is two mistakes, not one.
#[test]
fn the_same_line_on_two_devices_stays_two_findings() {
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let ds = [device("a"), device("b")];
        for d in ds {
            let b = kmalloc(2048);
            let a = dma_map_single(d, b, DMA_FROM_DEVICE);
            if dma_mapping_error(d, a) { throw "map"; }
            dev_write(d, a, pattern("random", 64, 1));
            let peek = cpu_read(b, 0, 14);
            dma_unmap_single(d, a, 2048, DMA_FROM_DEVICE);
        }"#,
    );
    let f = all(&j, "stale-cpu-read");
    assert_eq!(f.len(), 2, "{:?}", ids(&j));
    assert!(f.iter().all(|f| f["count"] == 1), "{f:?}");
}

/// A finding inside script functions carries the lines of the calls that led
/// there, innermost first (`line 8 ← 11 ← 13`).
#[test]
fn a_finding_inside_a_function_shows_the_call_chain() {
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("eth0");
        let b = kmalloc(2048);
        let a = dma_map_single(d, b, DMA_FROM_DEVICE);
        if dma_mapping_error(d, a) { throw "map"; }
        dev_write(d, a, pattern("random", 64, 1));
        fn peek(b) {
            cpu_read(b, 0, 14)
        }
        fn rx(b) {
            peek(b)
        }
        let h = rx(b);
        dma_unmap_single(d, a, 2048, DMA_FROM_DEVICE);"#,
    );
    let f = finding(&j, "stale-cpu-read");
    assert_eq!(f["line"], 8, "{f}");
    assert_eq!(f["called_from"], serde_json::json!([11, 13]), "{f}");
    // A finding at the top level has no chain (the field is left out).
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("eth0");
        let b = kmalloc(2048);
        let a = dma_map_single(d, b, DMA_FROM_DEVICE);
        if dma_mapping_error(d, a) { throw "map"; }
        let h = cpu_read(b, 0, 14);
        dev_write(d, a, pattern("random", 64, 1));
        let h = cpu_read(b, 0, 14);"#,
    );
    assert!(finding(&j, "stale-cpu-read").get("called_from").is_none());
}

/// dir-violation says where the mapping was made.
#[test]
fn dir_violation_names_the_map_line() {
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_TO_DEVICE);
        if dma_mapping_error(d, a) { throw "map"; }
        dev_write(d, a, pattern("inc", 64));
        dma_unmap_single(d, a, 4096, DMA_TO_DEVICE);"#,
    );
    let m = finding(&j, "dir-violation")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.contains("DMA_TO_DEVICE mapping made at line 4"), "{m}");
}

/// A history longer than the sanitizer keeps says how many events it left out:
/// 60 syncs plus allocation, map, the device's write and the read make 64 events,
/// 48 are kept (one of them the marker), so 17 were skipped.
#[test]
fn a_trimmed_history_says_how_many_events_it_skipped() {
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_FROM_DEVICE);
        if dma_mapping_error(d, a) { throw "map"; }
        for i in 0..30 {
            dma_sync_single_for_cpu(d, a, 4096, DMA_FROM_DEVICE);
            dma_sync_single_for_device(d, a, 4096, DMA_FROM_DEVICE);
        }
        dev_write(d, a, pattern("inc", 64));
        let x = cpu_read(b, 0, 64);"#,
    );
    let f = finding(&j, "stale-cpu-read");
    let h = f["history"].as_array().unwrap();
    let marks: Vec<&str> = h
        .iter()
        .filter_map(|e| e["event"].as_str())
        .filter(|e| e.contains("skipped"))
        .collect();
    assert_eq!(marks, ["… 17 earlier events skipped …"], "{h:#?}");
    assert_eq!(h.len(), 48, "{h:#?}");
}

/// Without an IOMMU, a device still reading a buffer that was unmapped and freed
/// (dma-direct: the bus address stays valid) is named with the unmap and the
/// free lines, like dma-after-unmap behind an IOMMU.
#[test]
fn unmap_and_free_while_the_device_reads_names_both_lines() {
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_TO_DEVICE);
        if dma_mapping_error(d, a) { throw "map"; }
        let job = dev_start_read(d, a, 4096);
        dma_unmap_single(d, a, 4096, DMA_TO_DEVICE);
        kfree(b);
        let late = dev_read(d, a, 64);"#,
    );
    assert!(
        !ids(&j).iter().any(|i| i == "dma-outside-mapping"),
        "{:?}",
        ids(&j)
    );
    let f = finding(&j, "dma-after-unmap");
    let m = f["message"].as_str().unwrap();
    assert!(
        m.contains("unmapped at line 7") && m.contains("freed at line 8"),
        "{m}"
    );
    let lines: Vec<u64> = f["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert!(lines.contains(&4) && lines.contains(&8), "{lines:?}");
}

/// A store made while the device owned the mapping (after the map, no sync for
/// the CPU) is lost at the sync for the CPU that follows: the finding is at that
/// sync and tells the real sequence.
#[test]
fn cpu_write_discarded_names_the_store_after_a_sync_for_the_device_and_the_losing_sync() {
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_FROM_DEVICE);
        if dma_mapping_error(d, a) { throw "map"; }
        dma_sync_single_for_cpu(d, a, 4096, DMA_FROM_DEVICE);
        dma_sync_single_for_device(d, a, 4096, DMA_FROM_DEVICE);
        cpu_write(b, 0, pattern("ones", 64));
        dma_sync_single_for_cpu(d, a, 4096, DMA_FROM_DEVICE);
        let x = cpu_read(b, 0, 64);
        dma_unmap_single(d, a, 4096, DMA_FROM_DEVICE);"#,
    );
    let f = finding(&j, "cpu-write-discarded");
    assert_eq!(f["line"], 9, "{f}");
    assert_eq!(f["manifested"], true, "{f}");
    let m = f["message"].as_str().unwrap();
    assert!(
        m.contains("at line 8 while d owned it (after the sync for the device at line 7"),
        "{m}"
    );
    assert!(m.contains("dma_sync_single_for_cpu at line 9"), "{m}");
    assert!(!m.contains("after the sync for the CPU"), "{m}");
}

/// The documented case: a store after a sync for the CPU, never handed back,
/// lost at the unmap's sync for the CPU.
#[test]
fn cpu_write_discarded_after_a_sync_for_the_cpu_names_it_and_the_unmap() {
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_BIDIRECTIONAL);
        if dma_mapping_error(d, a) { throw "map"; }
        dma_sync_single_for_cpu(d, a, 4096, DMA_BIDIRECTIONAL);
        cpu_write(b, 0, pattern("ones", 64));
        dma_unmap_single(d, a, 4096, DMA_BIDIRECTIONAL);"#,
    );
    let f = finding(&j, "cpu-write-discarded");
    assert_eq!(f["line"], 8, "{f}");
    let m = f["message"].as_str().unwrap();
    assert!(
        m.contains("at line 7, after the sync for the CPU at line 6"),
        "{m}"
    );
    assert!(m.contains("unmap at line 8"), "{m}");
}

/// A bounce's story labels every address: the bus address the map returned, the
/// buffer's and the slots' physical addresses — never a bare address beside a
/// physical one (the slot used to be "swiotlb 0x…", a physical address that read
/// like the bus address before it).
#[test]
fn bounce_events_label_physical_and_bus_addresses() {
    let (_, j) = common::scenario("bounce-rx-no-sync.rhai", 0, None);
    let events: Vec<String> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["history"].as_array().unwrap().iter())
        .filter_map(|e| e["event"].as_str())
        .filter(|e| e.contains("swiotlb"))
        .map(str::to_string)
        .collect();
    assert!(events.len() >= 2, "{events:#?}");
    for e in &events {
        assert!(!e.contains("via swiotlb 0x"), "{e}");
        assert!(e.contains("swiotlb slots at phys"), "{e}");
    }
    let stolen = events
        .iter()
        .find(|e| e.contains("bytes at phys"))
        .expect("the bounce-buffering event");
    assert!(
        stolen.contains("bounced through the swiotlb slots at phys 0x")
            && stolen.contains("beyond what the device can address"),
        "{stolen}"
    );
}

#[test]
fn a_run_repeated_for_a_call_chain_reports_everything_once() {
    // A run first goes without Rhai's call stack and runs again with it when a
    // finding inside a script function needs its chain (script::run_source_inner):
    // the report must be that of one run — one printed line, one expectation, both
    // findings, the chain on the nested one only.
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        print("once");
        let d = device("eth0");
        let b = kmalloc(2048);
        let a = dma_map_single(d, b, DMA_FROM_DEVICE);
        if dma_mapping_error(d, a) { throw "map"; }
        dev_write(d, a, pattern("random", 64, 1));
        fn rx(b) {
            cpu_read(b, 0, 14)
        }
        let h = rx(b);
        expect_eq(1, 1, "counted once");
        let v = kmalloc(64);
        kfree(v);
        kfree(v);"#,
    );
    let f = finding(&j, "stale-cpu-read");
    assert_eq!(f["called_from"], serde_json::json!([11]), "{f}");
    assert!(finding(&j, "double-free").get("called_from").is_none());
    assert_eq!(r.expectations.passed, 1);
    let log = j["log"].to_string();
    assert_eq!(log.matches("script: once").count(), 1, "{log}");
}
