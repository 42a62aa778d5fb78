//! A finding's history tells one call as one event: a store over many pages is
//! one "CPU wrote" event with its total size, and the dirty lines one eviction
//! sweep writes back are one counted event — checked on the JSON report.

mod common;

use common::{finding, script};

#[test]
fn a_big_store_and_an_eviction_sweep_are_one_event_each() {
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let b = kmalloc(65536);
        let a = dma_map_single(d, b, DMA_TO_DEVICE);
        if dma_mapping_error(d, a) { throw "map"; }
        cpu_fill(b, 0x5a);                 // 16 pages, after the map
        evict_all();                       // writes every dirty line back
        cpu_write(b, 0, blob(8, 1));
        let x = dev_read(d, a, 64);
        dma_unmap_single(d, a, 65536, DMA_TO_DEVICE);"#,
    );
    let f = finding(&j, "stale-device-read");
    let events: Vec<&str> = f["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let stores: Vec<&&str> = events
        .iter()
        .filter(|e| e.starts_with("CPU wrote"))
        .collect();
    assert_eq!(
        stores,
        [
            &"CPU wrote 65536 bytes at +0x0 while the device owns the buffer",
            &"CPU wrote 8 bytes at +0x0 while the device owns the buffer"
        ],
        "{events:#?}"
    );
    let sweep: Vec<&&str> = events
        .iter()
        .filter(|e| e.contains("written back"))
        .collect();
    assert_eq!(sweep.len(), 1, "{events:#?}");
    assert!(
        sweep[0].starts_with("1024 dirty CPU lines, the first at phys"),
        "{events:#?}"
    );
}
