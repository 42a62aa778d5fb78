//! Regression tests for the defects of issue 19's hostile-input campaign: each test
//! is named after the item it covers (`r19_NN_...`) and failed before its fix.
//! A hostile script must end in a report (exit 0, 1 or 2), never a panic, an abort
//! or unbounded host memory or time.

mod common;

use common::script;

/// Item 1: `expect_eq` shows its values cut to 60 characters; the cut was at byte 60,
/// which panics inside a multi-byte character.
#[test]
fn r19_01_expect_eq_non_ascii() {
    let (r, _) = script(
        r#"
        let a = "a";
        for i in 0..36 { a += "é"; }
        expect_eq(a, "b", "m");
        "#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 1);
    let msg = &r.expectations.failures[0].msg;
    // "a" and 36 "é" are 37 characters: under 60, shown whole.
    assert!(msg.contains(&format!("left: a{}", "é".repeat(36))), "{msg}");
    let (r, _) = script(
        r#"
        let a = "";
        for i in 0..100 { a += "é"; }
        expect_eq(a, "b", "m");
        "#,
    );
    let msg = &r.expectations.failures[0].msg;
    // 100 characters are cut to the first 60 and an ellipsis.
    assert!(
        msg.contains(&format!("left: {}…,", "é".repeat(60))),
        "{msg}"
    );
}

/// Item 3: `run_for(i64::MAX)` used to take the clock to the end of `u64` picoseconds,
/// where the next device transfer's completion time overflowed. A run's simulated
/// time is now bounded (`--max-sim-time`, one hour by default): the wait is refused
/// with a limit error and exit 2.
#[test]
fn r19_03_clock_overflow_is_a_limit() {
    let (r, _) = script(
        r#"
        boot("arm64-noncoherent");
        let d = device("dev");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_TO_DEVICE);
        run_for(9223372036854775807);
        let j = dev_start_read(d, a, 4096);
        wait(j);
        "#,
    );
    let e = r.error.as_deref().expect("an error");
    assert!(e.contains("t.rhai:6:"), "{e}");
    assert!(e.contains("time limit"), "{e}");
    assert!(e.contains("--max-sim-time"), "{e}");
    assert_eq!(r.exit_code(), 2);
}

/// Item 3: `swiotlb_force` with an NVMe-like `min_align_mask` of 0xfff and a buffer
/// that starts 1500 bytes into a page: swiotlb keeps the low 12 bits of the address
/// in the slot (kernel/dma/swiotlb.c: swiotlb_tbl_map_single, swiotlb_align_offset),
/// so the 4000 bytes need slots from offset 1500 on. The arithmetic underflowed.
#[test]
fn r19_03_swiotlb_min_align_mask_offset() {
    let (r, _) = script(
        r#"
        boot("arm64-noncoherent", #{ swiotlb_force: true, noise: "off" });
        let d = device("nvme", #{ min_align_mask: 0xfff });
        let b = kmalloc(8192);
        let a = dma_map_single(d, b, 1500, 4000, DMA_TO_DEVICE);
        expect(a != DMA_MAPPING_ERROR, "mapped through swiotlb");
        expect_eq(a & 0xfff, (b.phys + 1500) & 0xfff, "the offset in the page is kept");
        dma_unmap_single(d, a, 4000, DMA_TO_DEVICE);
        "#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
}

/// Item 7: a limit error cannot be caught: a `try` around the wait that passes the
/// time bound does not let the script go on; the run still ends with exit 2.
#[test]
fn r19_07_limit_errors_are_not_catchable() {
    let (r, _) = script(
        r#"
        boot("arm64-noncoherent");
        let caught = false;
        try { run_for("2 h"); } catch { caught = true; }
        print("after: " + caught);
        "#,
    );
    let e = r.error.as_deref().expect("an error");
    assert!(e.contains("t.rhai:4:"), "{e}");
    assert!(e.contains("time limit"), "{e}");
    assert!(!r.log.iter().any(|l| l.contains("after:")), "{:?}", r.log);
    // An `eval` wraps every error in one that `try` catches: the run still fails.
    let (r, _) = script(
        r#"
        boot("arm64-noncoherent");
        try { eval("run_for(\"2 h\")"); } catch { print("caught"); }
        run_for("1 us");
        "#,
    );
    assert!(
        r.error.as_deref().unwrap_or("").contains("time limit"),
        "{:?}",
        r.error
    );
    assert_eq!(r.exit_code(), 2);
}

/// Item 7: `loop { run_for("1 ms") }` ends at the default bound of one simulated
/// hour, quickly, instead of running for hours of host time until `--max-ops`.
#[test]
fn r19_07_idle_loop_ends_at_the_sim_time_bound() {
    let t0 = std::time::Instant::now();
    let (r, _) = common::run_json(
        "t.rhai",
        r#"
        boot("arm64-noncoherent");
        loop { run_for("1 ms"); }
        "#,
        &dmasim::script::ScriptOptions {
            max_sim_time_ns: 10_000_000_000,
            ..Default::default()
        },
    );
    let e = r.error.as_deref().expect("an error");
    assert!(e.contains("time limit: the run would pass 10 s"), "{e}");
    assert!(t0.elapsed().as_secs() < 30, "{:?}", t0.elapsed());
}
