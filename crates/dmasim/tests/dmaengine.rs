//! The dmaengine slave API (issue 17): channels move real bytes on the simulated
//! clock, cyclic transfers wrap until terminated with one callback per period,
//! residue follows the transfer, and releasing memory after
//! `dmaengine_terminate_async` without `dmaengine_synchronize` is a finding.

use dmasim::report::Report;
use dmasim::script::{run_source, ScriptOptions};

fn run(src: &str) -> Report {
    run_source("dmaengine.rhai", src, &ScriptOptions::default())
}

fn ids(r: &Report) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.id).collect()
}

const CHAN: &str = r#"boot("arm64-noncoherent", #{ noise: "off" });
let sdma = device("sdma");
let rx = dma_request_chan(sdma, "rx");
dmaengine_slave_config(rx, #{ direction: DMA_DEV_TO_MEM, src_addr: 0x30010000 });
let dev = dmaengine_get_dma_device(rx);
let buf = dma_alloc_coherent(dev, 16384);
"#;

#[test]
fn cyclic_capture_wraps_with_one_callback_per_period() {
    let r = run(&format!(
        "{CHAN}
let seen = [];
let desc = dmaengine_prep_dma_cyclic(rx, buf.dma, 16384, 4096, DMA_DEV_TO_MEM, DMA_PREP_INTERRUPT);
dmaengine_set_callback(desc, |p| {{ seen.push(p); }});
for i in 0..6 {{ dma_fifo_push(rx, pattern(\"random\", 4096, i)); }}
let cookie = dmaengine_submit(desc);
dma_async_issue_pending(rx);
let guard = 0;
while seen.len() < 6 && guard < 1000 {{ run_for(\"500 ns\"); guard += 1; }}
expect_eq(dmaengine_tx_status(rx, cookie).status, DMA_IN_PROGRESS, \"cyclic never completes\");
dmaengine_terminate_async(rx);
expect(seen.len() >= 6, `periods seen ${{seen.len()}}`);
expect_eq(seen[0], 0, \"period 0 first\");
expect_eq(seen[4], 0, \"the ring wraps after four periods\");
expect_eq(cpu_read(buf, 0, 4096), pattern(\"random\", 4096, 4), \"period 0 holds the fifth\");
expect_eq(cpu_read(buf, 4096, 4096), pattern(\"random\", 4096, 5), \"period 1 the sixth\");
dmaengine_terminate_sync(rx);
let n = seen.len();
run_for(\"100 us\");
expect_eq(seen.len(), n, \"no callback after terminate_sync\");
dma_free_coherent(dev, 16384, buf);
dma_release_channel(rx);"
    ));
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
    assert!(
        !ids(&r).contains(&"dmaengine-unsynchronized"),
        "{:?}",
        ids(&r)
    );
}

#[test]
fn residue_shrinks_as_the_transfer_runs() {
    let r = run(&format!(
        "{CHAN}
let desc = dmaengine_prep_slave_single(rx, buf.dma, 16384, DMA_DEV_TO_MEM, DMA_PREP_INTERRUPT);
let done = 0;
dmaengine_set_callback(desc, || {{ done += 1; }});
let cookie = dmaengine_submit(desc);
let before = dmaengine_tx_status(rx, cookie);
expect_eq(before.residue, 16384, \"nothing moved before issue_pending\");
dma_async_issue_pending(rx);
run_for(\"8 us\");
let mid = dmaengine_tx_status(rx, cookie);
expect(mid.residue > 0 && mid.residue < 16384, `residue ${{mid.residue}}`);
expect_eq(mid.status, DMA_IN_PROGRESS, \"running\");
run_for(\"1 ms\");
expect_eq(dmaengine_tx_status(rx, cookie).status, DMA_COMPLETE, \"done\");
expect_eq(done, 1, \"one callback\");
dma_free_coherent(dev, 16384, buf);"
    ));
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
}

#[test]
fn slave_sg_moves_bytes_to_the_peripheral_fifo() {
    let r = run(r#"boot("arm64-noncoherent", #{ noise: "off" });
let dmac = device("spi-dma");
let tx = dma_request_chan(dmac, "tx");
dmaengine_slave_config(tx, #{ direction: DMA_MEM_TO_DEV, dst_addr: 0x30820008 });
let buf = vmalloc(12288);
let data = pattern("random", 12288, 9);
cpu_write(buf, 0, data);
let sgt = sg_from_buffer(buf);
if dma_map_sgtable(dmac, sgt, DMA_TO_DEVICE, 0) != 0 { throw "map"; }
let desc = dmaengine_prep_slave_sg(tx, sgt, DMA_MEM_TO_DEV, DMA_PREP_INTERRUPT);
let done = false;
dmaengine_set_callback(desc, || { done = true; });
dmaengine_submit(desc);
dma_async_issue_pending(tx);
run_for("1 ms");
expect(done, "completion callback");
expect_eq(dma_fifo_pop(tx), data, "the SPI FIFO got the buffer, segment by segment");
dma_unmap_sgtable(dmac, sgt, DMA_TO_DEVICE, 0);
vfree(buf);"#);
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
    assert!(r.findings.is_empty(), "{:?}", ids(&r));
}

#[test]
fn a_missing_sync_on_a_slave_sg_transfer_is_caught() {
    // The client fills the buffer after the map and never syncs: the controller
    // reads stale DRAM on a non-coherent SoC.
    let r = run(r#"boot("arm64-noncoherent", #{ noise: "off" });
let dmac = device("spi-dma");
let tx = dma_request_chan(dmac, "tx");
dmaengine_slave_config(tx, #{ direction: DMA_MEM_TO_DEV, dst_addr: 0x30820008 });
let buf = kmalloc(4096);
let sgt = sg_init_one(buf, 0, 4096);
if dma_map_sgtable(dmac, sgt, DMA_TO_DEVICE, 0) != 0 { throw "map"; }
cpu_write(buf, 0, pattern("inc", 4096));
let desc = dmaengine_prep_slave_sg(tx, sgt, DMA_MEM_TO_DEV, 0);
dmaengine_submit(desc);
dma_async_issue_pending(tx);
run_for("1 ms");
expect_eq(dma_fifo_pop(tx), pattern("inc", 4096), "the peripheral got the new bytes");
dma_unmap_sgtable(dmac, sgt, DMA_TO_DEVICE, 0);"#);
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 1);
    let f = r
        .findings
        .iter()
        .find(|f| f.id == "stale-device-read")
        .unwrap_or_else(|| panic!("{:?}", ids(&r)));
    assert_eq!(f.manifested, Some(true));
    assert_eq!(f.device.as_deref(), Some("spi-dma"));
}

#[test]
fn freeing_after_terminate_async_without_synchronize_is_reported() {
    let body = "
let desc = dmaengine_prep_dma_cyclic(rx, buf.dma, 16384, 4096, DMA_DEV_TO_MEM, DMA_PREP_INTERRUPT);
let periods = 0;
dmaengine_set_callback(desc, |p| { periods += 1; });
dmaengine_submit(desc);
dma_async_issue_pending(rx);
run_for(\"30 us\");
dmaengine_terminate_async(rx);
SYNC
dma_free_coherent(dev, 16384, buf);
dma_release_channel(rx);";
    let bad = run(&format!("{CHAN}{}", body.replace("SYNC", "")));
    assert!(bad.error.is_none(), "{:?}", bad.error);
    let f: Vec<_> = bad
        .findings
        .iter()
        .filter(|f| f.id == "dmaengine-unsynchronized")
        .collect();
    assert_eq!(f.len(), 2, "the free and the release: {:?}", ids(&bad));
    assert!(
        f[0].message
            .contains("dmaengine_terminate_async at line 14"),
        "{}",
        f[0].message
    );
    assert_eq!(f[0].line, 16);
    assert!(f[0].help.contains("dmaengine_synchronize"));
    assert_eq!(bad.exit_code(), 1);
    let good = run(&format!(
        "{CHAN}{}",
        body.replace("SYNC", "dmaengine_synchronize(rx);")
    ));
    assert!(
        !ids(&good).contains(&"dmaengine-unsynchronized"),
        "{:?}",
        ids(&good)
    );
}

#[test]
fn prep_refuses_what_drivers_refuse() {
    let r = run(r#"boot("arm64-noncoherent", #{ noise: "off" });
let sdma = device("sdma");
let ch = dma_request_chan(sdma, "tx");
let buf = dma_alloc_coherent(sdma, 8192);
expect(dmaengine_prep_slave_single(ch, buf.dma, 8192, DMA_MEM_TO_DEV, 0) == (), "no slave config: NULL");
expect_eq(dmaengine_slave_config(ch, #{ direction: DMA_MEM_TO_DEV }), -EINVAL, "no dst_addr");
dmaengine_slave_config(ch, #{ direction: DMA_MEM_TO_DEV, dst_addr: 0x1000 });
expect(dmaengine_prep_dma_cyclic(ch, buf.dma, 8192, 3000, DMA_MEM_TO_DEV, 0) == (), "not whole periods");
expect(dmaengine_prep_dma_cyclic(ch, buf.dma, 8192, 0, DMA_MEM_TO_DEV, 0) == (), "no period");
expect(dmaengine_prep_slave_single(ch, buf.dma, 0, DMA_MEM_TO_DEV, 0) == (), "empty");
dma_free_coherent(sdma, 8192, buf);"#);
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
}

#[test]
fn hostile_dmaengine_use_is_a_clear_error_not_a_panic() {
    for body in [
        "let d = dmaengine_prep_slave_single(ch, 0, 1 << 40, DMA_MEM_TO_DEV, 0);",
        "dma_release_channel(ch); dma_async_issue_pending(ch);",
        "let d = dmaengine_prep_slave_single(ch, 0, 64, DMA_MEM_TO_DEV, 0); dmaengine_submit(d); dmaengine_submit(d);",
        "dma_fifo_push(ch, blob(16, 1)); dmaengine_tx_status(ch, -5);",
    ] {
        let r = run(&format!(
            "boot(\"arm64-noncoherent\");\nlet sdma = device(\"sdma\");\nlet ch = dma_request_chan(sdma, \"tx\");\ndmaengine_slave_config(ch, #{{ direction: DMA_MEM_TO_DEV, dst_addr: 0x1000 }});\n{body}"
        ));
        // Either a clean run or a script error naming the problem; never a panic.
        if let Some(e) = &r.error {
            assert!(e.contains("dmaengine.rhai:5"), "{body}: {e}");
        }
    }
}
