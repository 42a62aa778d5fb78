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

/// Item 7: the other limits cannot be caught either: `--max-ops` met inside a `try`
/// (an endless loop) and `--max-memory` met by a fill inside a `try` end the run
/// with exit 2; the statements after the `catch` never run.
#[test]
fn r19_07_ops_and_memory_limits_are_not_catchable() {
    let (r, _) = common::run_json(
        "t.rhai",
        r#"
        boot("arm64-noncoherent");
        try { loop { } } catch { print("caught ops"); }
        print("after ops");
        "#,
        &dmasim::script::ScriptOptions {
            max_operations: 100_000,
            ..Default::default()
        },
    );
    assert!(r.error.is_some());
    assert!(
        !r.log
            .iter()
            .any(|l| l.contains("caught") || l.contains("after")),
        "{:?}",
        r.log
    );
    assert_eq!(r.exit_code(), 2);
    let (r, _) = common::run_json(
        "t.rhai",
        r#"
        boot("arm64-noncoherent");
        try { let b = vmalloc("64 MiB"); cpu_fill(b, 1); } catch { print("caught memory"); }
        print("after memory");
        "#,
        &dmasim::script::ScriptOptions {
            memory_cap: 16 << 20,
            ..Default::default()
        },
    );
    let e = r.error.as_deref().expect("an error");
    assert!(e.contains("memory"), "{e}");
    assert!(
        !r.log
            .iter()
            .any(|l| l.contains("caught") || l.contains("after")),
        "{:?}",
        r.log
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

/// Item 7: background noise works in proportion to what happened, not to idle time.
/// A wait gives up to 256 noise points; each eviction sweep used to examine every way
/// of half the sets of L1 and L2 (about 4,400 tags on this preset) even with nothing
/// cached, so an idle `loop { run_for("1 ms") }` cost ~95 µs of host CPU per call.
/// Now a sweep visits only sets that hold lines, at most 32 ways
/// (`CacheGeometry::validate`) per line it drops, and stops when a level is empty:
/// 2,000 more idle waits (512,000 sweeps here) examine no entry at all.
#[test]
fn r19_07_idle_noise_work_follows_events_not_time() {
    use dmasim::config::{NoiseConfig, PlatformConfig};
    use dmasim::system::{RunOptions, System};
    let mut p = PlatformConfig::preset("arm64-noncoherent").unwrap();
    // Every noise point sweeps; no prefetch, so idle time brings no new lines.
    p.noise = NoiseConfig {
        evict: 1.0,
        prefetch: 0.0,
        migrate: 0.0,
    };
    let mut sys = System::boot(p, RunOptions::default()).unwrap();
    let pid = sys.process_new("app");
    let va = sys.mmap(pid, 65536, false).unwrap();
    sys.user_write(pid, va, &[1; 65536]).unwrap();
    assert!(sys.hw.caches.valid_lines() > 0);
    for _ in 0..10 {
        sys.run_for(1_000_000).unwrap();
    }
    assert_eq!(
        sys.hw.caches.valid_lines(),
        0,
        "the sweeps emptied the caches"
    );
    let busy = sys.hw.caches.stats.sweep_entries;
    let sweeps = sys.hw.stats.evict_sweeps;
    assert!(busy > 0);
    assert!(
        busy <= 32 * sys.hw.stats.swept_lines,
        "{busy} entries for {} lines",
        sys.hw.stats.swept_lines
    );
    for _ in 0..2_000 {
        sys.run_for(1_000_000).unwrap();
    }
    assert_eq!(
        sys.hw.stats.evict_sweeps - sweeps,
        2_000 * 256,
        "every point swept"
    );
    assert_eq!(
        sys.hw.caches.stats.sweep_entries, busy,
        "idle sweeps examined entries"
    );
}

/// Found by the fuzz campaign (seed 30172451): 64 MiB of RAM and a 1 GiB swiotlb
/// leave no page for the SMMU domain's level-0 table; the domain kept physical 0 as
/// its table and the first `iommu_map` read "RAM" below the first frame (a panic
/// on the subtraction, internal error). A paging domain without a table now maps
/// nothing: iommu_map is -ENOMEM (drivers/iommu/io-pgtable-arm.c:
/// arm_lpae_alloc_pgtable), so the dma-buf map fails like any failed map.
#[test]
fn r19_fuzz_iommu_domain_without_a_table_maps_nothing() {
    let (r, _) = common::run_json(
        "t.rhai",
        r#"
        boot("arm64-noncoherent", #{ iommu: "smmu", ram: "64 MiB", swiotlb: "1 GiB" });
        let d = device("dev");
        let p = process("app");
        let f = dma_heap_alloc(p, "reserved", 1048576);
        let sgt = dma_buf_map_attachment(dma_buf_attach(f, d), DMA_FROM_DEVICE);
        "#,
        &dmasim::script::ScriptOptions {
            seed: 30172451,
            ..Default::default()
        },
    );
    let e = r.error.as_deref().unwrap_or("");
    assert!(!e.contains("internal error"), "{e}");
    assert!((0..=2).contains(&r.exit_code()));
}

/// A fresh folder under the target directory for a test's script files.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Item 4: a script that imports itself overflowed the host stack (SIGABRT). The
/// nesting is now bounded: a clear error, exit 2.
#[test]
fn r19_04_self_import_is_bounded() {
    let d = scratch("r19_04_self");
    std::fs::write(d.join("me.rhai"), "import \"me\" as m;\n").unwrap();
    let r = dmasim::script::run_file(&d.join("me.rhai"), &Default::default());
    let e = r.error.as_deref().expect("an error");
    assert!(e.contains("nested imports"), "{e}");
    assert_eq!(r.exit_code(), 2);
}

/// Item 4: imports read only below the script's folder: `..`, absolute paths and
/// links that leave it are refused; a module beside the script works.
#[test]
fn r19_04_imports_stay_in_the_script_folder() {
    let d = scratch("r19_04_folder");
    std::fs::create_dir_all(d.join("lib")).unwrap();
    std::fs::write(d.join("secret.rhai"), "export const X = 1;\n").unwrap();
    std::fs::write(d.join("lib/util.rhai"), "fn twice(x) { x * 2 }\n").unwrap();
    let run = |src: &str| {
        std::fs::write(d.join("lib/main.rhai"), src).unwrap();
        dmasim::script::run_file(&d.join("lib/main.rhai"), &Default::default())
    };
    let r = run("import \"util\" as u;\nexpect_eq(u::twice(21), 42, \"imported\");\n");
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.passed, 1);
    for bad in ["../secret", "/etc/passwd"] {
        let r = run(&format!("import \"{bad}\" as s;\n"));
        let e = r.error.as_deref().expect("an error");
        assert!(
            e.contains("relative path inside the script's folder"),
            "{bad}: {e}"
        );
        assert!(e.contains("main.rhai:1:"), "{e}");
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(d.join("secret.rhai"), d.join("lib/link.rhai")).unwrap();
        let r = run("import \"link\" as s;\n");
        let e = r.error.as_deref().expect("an error");
        assert!(e.contains("outside the script's folder"), "{e}");
    }
    // A script given as text has no folder: import is refused.
    let (r, _) = script("import \"util\" as u;");
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("no script folder"),
        "{:?}",
        r.error
    );
}

/// Item 13: a module was cached per worker thread, so the objects it made in one
/// run (here a boot-time buffer) were seen by the next run. Every run evaluates
/// its imports afresh now.
#[test]
fn r19_13_imports_are_not_cached_between_runs() {
    let d = scratch("r19_13");
    std::fs::write(d.join("m.rhai"), "export const BUF = kmalloc(4096);\n").unwrap();
    std::fs::write(
        d.join("main.rhai"),
        "boot(\"arm64-noncoherent\", #{ noise: \"off\" });\nimport \"m\" as m;\nkfree(m::BUF);\n",
    )
    .unwrap();
    for seed in 0..3 {
        let r = dmasim::script::run_file(
            &d.join("main.rhai"),
            &dmasim::script::ScriptOptions {
                seed,
                ..Default::default()
            },
        );
        // A cached module would hand the second run the first run's buffer, which
        // this run's kernel never allocated.
        assert!(r.error.is_none(), "seed {seed}: {:?}", r.error);
        assert!(r.findings.is_empty(), "seed {seed}: {:?}", r.findings);
    }
}

/// Item 14: a run that panics (a dmasim bug) is an error run with the seed that
/// reproduces it; explore counts it instead of losing it.
#[cfg(debug_assertions)]
#[test]
fn r19_14_a_panicking_run_is_an_error_with_its_seed() {
    let src = format!("{}();", dmasim::script::TEST_PANIC_FN);
    let (r, _) = script(&src);
    let e = r.error.as_deref().expect("an error");
    assert!(
        e.contains("internal error") && e.contains("--seed 0"),
        "{e}"
    );
    assert_eq!(r.exit_code(), 2);
    let x = dmasim::explore::explore("p.rhai", &src, &Default::default(), 5, 4, 2, &|_| {});
    assert_eq!(x.runs, 4);
    assert_eq!(x.errors, 4);
    assert!(
        x.first_error.as_deref().unwrap_or("").contains("--seed 5"),
        "{:?}",
        x.first_error
    );
    assert_eq!(x.exit_code(), 2);
}

/// Item 15: the seed range ends at the last `u64`, inclusive.
#[test]
fn r19_15_seed_range_reaches_the_last_seed() {
    let r: Vec<u64> = dmasim::explore::seed_range(u64::MAX - 1, 2).collect();
    assert_eq!(r, vec![u64::MAX - 1, u64::MAX]);
    assert_eq!(dmasim::explore::seed_range(3, 0).count(), 0);
}

/// Item 17: an error inside `eval("...")` named line 1 of the script (the line in
/// the eval'd text); it names the `eval` call's line now.
#[test]
fn r19_17_eval_error_names_the_eval_line() {
    let (r, _) = script("let a = 1;\nlet b = 2;\neval(\"let x = 1;\\nundefined_fn();\");\n");
    let e = r.error.as_deref().expect("an error");
    assert!(e.starts_with("t.rhai:3:"), "{e}");
    assert!(e.contains("undefined_fn"), "{e}");
}

/// Item 17: `--max-ops` met between two kernel calls (here in a constant lookup
/// loop) gave an error without a line; it names the last kernel call's line.
#[test]
fn r19_17_ops_limit_has_a_line() {
    let (r, _) = common::run_json(
        "t.rhai",
        "boot(\"arm64-coherent\");\nconst K = 5;\nlet x = 0;\nlet b = kmalloc(64);\nloop { x = K; }\n",
        &dmasim::script::ScriptOptions {
            max_operations: 10_000,
            ..Default::default()
        },
    );
    let e = r.error.as_deref().expect("an error");
    assert!(e.contains("ran out of operations"), "{e}");
    assert!(e.starts_with("t.rhai:"), "{e}");
    assert!(!e.starts_with("t.rhai: "), "a line: {e}");
}

/// Item 2: a CMA heap buffer mapped into a process (cma_heap_vm_fault inserts the
/// pages), pinned, closed, unmapped and unpinned: the unpin freed the driver's frame,
/// so the next allocations handed it out twice and `cma_alloc` panicked. The pin now
/// takes a reference of its own on the driver's page and the release drops only
/// that (mm/gup.c: try_grab_folio / unpin_user_pages).
#[test]
fn r19_02_pin_of_a_cma_heap_mapping_does_not_free_the_driver_page() {
    let (r, _) = script(
        r#"
        boot("arm64-noncoherent", #{ noise: "off" });
        let p = process("app");
        let b = dma_heap_alloc(p, "reserved", 4096);
        let m = p.mmap(b);
        let pins = pin_user_pages(p, m);
        expect(type_of(pins) != "i64", "the CMA heap's pages may be pinned");
        close(b);
        p.munmap(m);
        unpin_user_pages(pins);
        let c = dma_heap_alloc(p, "reserved", 4096);
        let d = dma_heap_alloc(p, "reserved", 4096);
        let e = dma_heap_alloc(p, "reserved", 4096);
        expect(type_of(c) != "i64" && type_of(d) != "i64" && type_of(e) != "i64", "allocated");
        "#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
}

/// Item 2: `remap_pfn_range` and `dma_mmap_coherent` give `VM_IO | VM_PFNMAP`
/// mappings, which get_user_pages refuses with -EFAULT (mm/gup.c:
/// check_vma_flags); before, the pin "worked" and its release freed the driver's
/// page (a silent double free).
#[test]
fn r19_02_gup_on_pfnmap_is_efault() {
    let (r, _) = script(
        r#"
        boot("arm64-noncoherent", #{ noise: "off" });
        let dev = device("cam");
        let p = process("app");
        let k = kmalloc(4096);
        let u = remap_pfn_range(p, k);
        expect_eq(pin_user_pages(p, u), -EFAULT, "remap_pfn_range: VM_PFNMAP");
        expect_eq(get_user_pages(p, u), -EFAULT, "get_user_pages too");
        let c = dma_alloc_coherent(dev, 4096);
        let cu = dma_mmap_coherent(dev, p, c);
        expect_eq(pin_user_pages(p, cu), -EFAULT, "dma_mmap_coherent: VM_PFNMAP");
        p.munmap(u);
        p.munmap(cu);
        kfree(k);
        dma_free_coherent(dev, 4096, c);
        let again = kmalloc(4096);
        expect(again.phys != 0, "allocations go on");
        "#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
}

/// Item 16: a 32-bit device behind the SMMU given a mapped IOVA + 2^40 read the
/// mapped page (the device drives only 32 address bits, so the SMMU saw the mapped
/// IOVA) but was reported as a manifested `dma-after-unmap` of a stale IOTLB entry;
/// a write at + 2^60 said F_PERMISSION "no mapping at that IOVA". Both now say the
/// address was wider than the device's bus and what the IOMMU saw; a 64-bit device
/// gets the SMMU's address-size fault (input address size 48 bits).
#[test]
fn r19_16_iova_wider_than_the_bus() {
    let (r, j) = script(
        r#"
        boot("arm64-noncoherent", #{ iommu: "smmu" });
        let d = device("dev");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_TO_DEVICE);
        dma_mapping_error(d, a);
        dev_read(d, a + (1 << 40), 16);
        dev_write(d, a + (1 << 60), blob(16, 1));
        dma_unmap_single(d, a, 4096, DMA_TO_DEVICE);
        let w = device("wide", #{ dma_bits: 64 });
        let a2 = dma_map_single(w, b, DMA_TO_DEVICE);
        dma_mapping_error(w, a2);
        dev_read(w, a2 + (1 << 60), 16);
        expect_eq(iommu_faults(w)[0].kind, "address-size", "F_ADDR_SIZE");
        dma_unmap_single(w, a2, 4096, DMA_TO_DEVICE);
        "#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
    let ids = common::ids(&j);
    assert_eq!(
        ids,
        vec!["dma-outside-mapping", "dma-outside-mapping", "iommu-fault"],
        "{}",
        j["findings"]
    );
    let m0 = j["findings"][0]["message"].as_str().unwrap();
    assert!(
        m0.contains("drives only 32 address bits") && m0.contains("translated"),
        "{m0}"
    );
    let m1 = j["findings"][1]["message"].as_str().unwrap();
    assert!(m1.contains("refused it (Permission"), "{m1}");
    let m2 = j["findings"][2]["message"].as_str().unwrap();
    assert!(
        m2.contains("F_ADDR_SIZE") && m2.contains("48-bit input address size"),
        "{m2}"
    );
}

/// Item 17: a double `kfree` was only a logged warning; Linux stops there (SLUB's
/// freelist check BUGs, mm/slub.c:set_freepointer), so it is a `double-free` error
/// finding (exit 1); freeing with the wrong call is the same error.
#[test]
fn r19_17_double_kfree_is_an_error_finding() {
    let (r, j) = script(
        r#"
        boot("arm64-coherent");
        let b = kmalloc(64);
        kfree(b);
        kfree(b);
        let v = vmalloc(8192);
        kfree(v);
        vfree(v);
        "#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(common::ids(&j), vec!["double-free", "double-free"]);
    assert_eq!(j["findings"][0]["line"], 5);
    assert_eq!(j["findings"][1]["line"], 7);
    assert!(j["findings"][1]["message"]
        .as_str()
        .unwrap()
        .contains("a live vmalloc buffer, not a kmalloc one"));
    assert_eq!(r.exit_code(), 1);
}

/// Item 17: `mapping-leak` findings at the end of the run said line 0; they name
/// the line that made the mapping.
#[test]
fn r19_17_mapping_leak_names_the_map_line() {
    let (_, j) = script(
        r#"
        boot("arm64-noncoherent");
        let d = device("d");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_TO_DEVICE);
        dma_mapping_error(d, a);
        "#,
    );
    assert_eq!(common::ids(&j), vec!["mapping-leak"]);
    assert_eq!(j["findings"][0]["line"], 5);
}

/// Item 5: `print` and failed `expect` messages were kept without a cap (a 1 MB
/// string printed 20,000 times exhausted memory). A run keeps at most
/// `MAX_LOG_LINES` lines of `MAX_LOG_LINE_CHARS` characters and
/// `MAX_EXPECTATION_FAILURES` messages, and counts the rest. Each kept line was cut
/// but kept its 64 KiB capacity (1.3 GB in all), which the run's heap budget (512 MiB
/// beside the simulated memory, item 12) now stops: this run must end without error.
#[test]
fn r19_05_log_and_expectation_messages_are_capped() {
    use dmasim::system::{MAX_LOG_LINES, MAX_LOG_LINE_CHARS};
    let (r, _) = script(
        r#"
        let s = "x";
        for i in 0..16 { s += s; }            // 65,536 characters
        for i in 0..30000 { print(s); }
        boot("arm64-coherent");
        for i in 0..30000 { print(s); expect(false, s); }
        "#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert!(r.log.len() <= MAX_LOG_LINES + 1, "{}", r.log.len());
    assert!(r
        .log
        .iter()
        .all(|l| l.chars().count() <= MAX_LOG_LINE_CHARS + 1));
    let last = r.log.last().unwrap();
    assert!(last.contains("more log lines were not kept"), "{last}");
    assert_eq!(r.expectations.failed, 30_000);
    assert_eq!(
        r.expectations.failures.len(),
        dmasim::script::MAX_EXPECTATION_FAILURES
    );
    let json = r.to_json();
    assert!(json.len() < 200 << 20, "{} bytes", json.len());
}

/// The invariant check mode: a page a process maps that is also on the free lists
/// (the double free of item 2) is caught; item 2's sequence keeps every invariant.
#[test]
fn r19_invariants_catch_a_mapped_page_on_the_free_lists() {
    use dmasim::config::PlatformConfig;
    use dmasim::system::{RunOptions, System};
    let mut sys = System::boot(
        PlatformConfig::preset("arm64-coherent").unwrap(),
        RunOptions::default(),
    )
    .unwrap();
    let pid = sys.process_new("app");
    let va = sys.mmap(pid, 4096, false).unwrap();
    sys.user_write(pid, va, &[1; 8]).unwrap();
    assert!(sys.check_invariants().is_ok());
    let pfn = sys.pagemap(pid, va).unwrap();
    sys.kernel.pages.free_pages(pfn, 0);
    let e = sys.check_invariants().unwrap_err().to_string();
    assert!(e.contains("free in the page allocator"), "{e}");
    // Item 2's sequence under the check: no invariant breaks.
    let (r, _) = common::run_json(
        "t.rhai",
        r#"
        boot("arm64-noncoherent", #{ noise: "off" });
        let p = process("app");
        let b = dma_heap_alloc(p, "reserved", 4096);
        let m = p.mmap(b);
        let pins = pin_user_pages(p, m);
        close(b);
        p.munmap(m);
        unpin_user_pages(pins);
        let q = p.malloc(8192);
        p.write(q, 0, blob(8192, 1));
        let pins2 = pin_user_pages(p, q);
        p.munmap(q);
        unpin_user_pages(pins2);
        "#,
        &dmasim::script::ScriptOptions {
            check_invariants: true,
            ..Default::default()
        },
    );
    assert!(r.error.is_none(), "{:?}", r.error);
}

#[test]
fn r19_fuzz_a_page_unmapped_while_pinned_twice_stays_until_the_last_release() {
    // Fuzz seeds 30437418 and 30406095: two pin sets on one buffer, munmap, then
    // one set released. mm/gup.c: each get_user_pages/pin_user_pages takes its own
    // reference, so the frame stays allocated until the last set lets go; the model
    // freed it at the first release (invariant: pinned page on the free lists).
    for (take, release) in [
        ("get_user_pages", "put_page"),
        ("pin_user_pages", "unpin_user_pages"),
    ] {
        let src = format!(
            r#"
            boot("x86-64", #{{ noise: "off" }});
            let p = process("app");
            let q = p.malloc(8192);
            p.write(q, 0, blob(8192, 1));
            let a = {take}(p, q);
            let b = {take}(p, q);
            p.munmap(q);
            {release}(b);
            let more = [];
            for i in 0..64 {{ more.push(kmalloc(4096)); }}
            {release}(a);
            "#
        );
        let (r, _) = common::run_json(
            "pinned-twice.rhai",
            &src,
            &dmasim::script::ScriptOptions {
                check_invariants: true,
                ..Default::default()
            },
        );
        assert!(r.error.is_none(), "{take}: {:?}", r.error);
    }
}

/// This thread's CPU time in ns (a loaded host does not inflate it).
fn thread_cpu_ns() -> u64 {
    dmasim_hostmem::thread_cpu_ns().expect("CLOCK_THREAD_CPUTIME_ID")
}

/// Item 12: a Rhai array grown with `push` cost O(n) per push: Rhai's per-value size
/// limits (`max_array_size` and the others, set for item 5) re-measured the whole
/// array after every call that may change it (`calc_array_sizes`). The run's host
/// memory is now bounded as a whole in constant time per operation
/// (`script::heap_budget`), the engine has no per-value limit, and one array of 100k
/// pushes costs about what ten arrays of 10k cost in CPU time (quadratic: ten times).
#[test]
fn r19_12_push_is_linear() {
    let e = dmasim::script::engine_for_check();
    assert_eq!(
        (e.max_array_size(), e.max_string_size(), e.max_map_size()),
        (0, 0, 0),
        "a per-value size limit makes Rhai re-measure a value after each call"
    );
    let opts = dmasim::script::ScriptOptions {
        max_operations: u64::MAX,
        ..Default::default()
    };
    let fastest = |n: u64| {
        let src = dmasim::bench::scaling_script("rhai_push", n).unwrap();
        (0..3)
            .map(|_| {
                let t0 = thread_cpu_ns();
                let r = dmasim::script::run_source("push.rhai", &src, &opts);
                let dt = thread_cpu_ns() - t0;
                assert!(r.error.is_none() && r.expectations.failed == 0, "{r:?}");
                dt as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    assert_eq!(dmasim::bench::scaling_repeats("rhai_push", 10_000), 10);
    let base = fastest(0);
    let small = (fastest(10_000) - base).max(1.0);
    let large = fastest(100_000) - base;
    assert!(
        large < 3.0 * small,
        "an array of 100k pushes took {:.1} ms, ten of 10k took {:.1} ms: not linear",
        large / 1e6,
        small / 1e6
    );
}

/// Items 5 and 12: with Rhai's per-value limits gone, a script's values are bounded by
/// the run's host-memory budget: whatever grows a value — one operation after another,
/// many small values, or one call asked for a huge size (`blob(n)`, `pad`) — ends the
/// run with exit 2, past any `try`/`catch`, before the host runs out. The simulated
/// memory is bounded by `--max-memory` apart and does not count against the budget.
#[test]
fn r19_12_script_values_are_bounded_by_the_run_heap_budget() {
    let opts = dmasim::script::ScriptOptions {
        heap_slack: 8 << 20,
        ..Default::default()
    };
    for (what, body) in [
        ("doubling", r#"let s = "x"; for i in 0..40 { s += s; }"#),
        (
            "many values",
            r#"let a = []; for i in 0..10000000 { a.push("0123456789abcdef" + i); }"#,
        ),
        ("blob(n)", "let b = blob(1000000000000, 7);"),
        ("array pad", "let a = []; a.pad(1 << 40, [1, 2, 3]);"),
        ("blob pad", "let b = blob(1); b.pad(1 << 40, 1);"),
        ("string pad", r#"let s = ""; s.pad(1 << 40, '€');"#),
        (
            "string pad by string",
            r#"let s = ""; s.pad(1 << 40, "ab");"#,
        ),
    ] {
        let src = format!("try {{ {body} }} catch {{ print(\"caught\"); }}\nprint(\"after\");");
        let (r, _) = common::run_json("t.rhai", &src, &opts);
        let e = r
            .error
            .as_deref()
            .unwrap_or_else(|| panic!("{what}: no error"));
        assert!(
            e.contains("8 MiB of host memory beside the simulated memory"),
            "{what}: {e}"
        );
        assert!(r.log.is_empty(), "{what}: {:?}", r.log);
        assert_eq!(r.exit_code(), 2, "{what}");
    }
    // The built-ins the budget stands in for keep Rhai's results.
    let (r, _) = common::run_json(
        "t.rhai",
        r#"
        let x = [1, 2]; x.pad(4, 9); x.pad(1, 0); x.pad(-1, 0);
        let b = blob(3, 0x1ff); b.pad(5, 0x42);
        let s = "ab"; s.pad(7, "xyz"); let t = "é"; t.pad(3, '*');
        expect_eq(x, [1, 2, 9, 9], "array pad");
        expect_eq(b, blob(3, 0xff) + blob(2, 0x42), "blob pad");
        expect_eq(blob(-5).len(), 0, "negative size");
        expect_eq(s, "abxyzxy", "string pad");
        expect_eq(t, "é**", "char pad counts characters");
        "#,
        &opts,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(
        (r.expectations.passed, r.expectations.failed),
        (5, 0),
        "{:?}",
        r.expectations
    );
    // 32 MiB of simulated memory under an 8 MiB budget: not the budget's business.
    let (r, _) = common::run_json(
        "t.rhai",
        r#"
        boot("arm64-noncoherent", #{ noise: "off" });
        let b = vmalloc("32 MiB");
        cpu_fill(b, 1);
        vfree(b);
        "#,
        &opts,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
}

/// Runs `src` with the invariant check mode on and background noise off.
fn run_checked(name: &str, src: &str) -> (dmasim::report::Report, serde_json::Value) {
    common::run_json(
        name,
        src,
        &dmasim::script::ScriptOptions {
            check_invariants: true,
            noise_off: true,
            ..Default::default()
        },
    )
}

/// How many findings `id` the report has.
fn count_of(j: &serde_json::Value, id: &str) -> usize {
    j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == id)
        .count()
}

/// The message of the run's one `allocator-corrupted` finding, which must be at
/// script line `line` (the finding comes once per IOVA domain or swiotlb pool).
fn corrupted_at(j: &serde_json::Value, line: u64) -> &str {
    assert_eq!(
        count_of(j, "allocator-corrupted"),
        1,
        "once per domain or pool"
    );
    finding_at(j, "allocator-corrupted", line)["message"]
        .as_str()
        .unwrap()
}

/// The first finding `id` at script line `line`, with its help.
fn finding_at<'a>(j: &'a serde_json::Value, id: &str, line: u64) -> &'a serde_json::Value {
    let f = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id && f["line"] == line)
        .unwrap_or_else(|| panic!("no {id} at line {line}: {:?}", common::ids(j)));
    assert!(!f["help"].as_str().unwrap().is_empty(), "{id}: help");
    f
}

#[test]
fn r19_fuzz_an_iova_cached_inside_a_live_range_is_linux_state_reported_not_an_internal_error() {
    // Fuzz seeds 40425147 (unmap with another device's handle and a larger size)
    // and 40494636 (another device's handle, 1 byte), minimised: the unmapping
    // device's domain has a live 2-granule range at 0xffffe000 and the handle
    // points at its second granule. drivers/iommu/dma-iommu.c: iommu_dma_unmap_page
    // finds a page mapped there, __iommu_dma_unmap clears what the size says and
    // iommu_dma_free_iova -> drivers/iommu/iova.c: free_iova_fast puts IOVA
    // 0xfffff000 into the per-CPU cache without looking at the tree: Linux's own
    // allocator is now inconsistent. dma-debug's check_unmap reports the misuse
    // (no mapping of that device at that address); the invariant mode used to
    // call the resulting state an internal error of dmasim.
    for (seed, unmap) in [
        (40425147, "dma_unmap_single(d2, h, 8192, DMA_FROM_DEVICE);"),
        (40494636, "dma_unmap_single(d2, h, 1, DMA_BIDIRECTIONAL);"),
    ] {
        let src = format!(
            r#"boot("arm64-coherent", #{{ iommu: "smmu" }});
let dev = device("dev");
let d2 = device("d2");
let b = kmalloc(4096);
let p = alloc_pages(1, GFP_KERNEL);
let h = dma_map_single(dev, b, 1, 4095, DMA_FROM_DEVICE);
let h2 = dma_map_single(d2, p, DMA_TO_DEVICE);
expect_eq(h2 + 4097, h, "d2's live range holds dev's handle");
{unmap}
let q = kmalloc(4096);
let h3 = dma_map_single(d2, q, DMA_TO_DEVICE);
"#
        );
        let (r, j) = run_checked("iova.rhai", &src);
        assert!(r.error.is_none(), "seed {seed}: {:?}", r.error);
        common::ok(&r);
        finding_at(&j, "unmap-unknown", 9);
        let msg = corrupted_at(&j, 9);
        assert!(msg.contains("IOVA allocator of d2's domain"), "{msg}");
        assert!(msg.contains("0xffffe000-0xffffffff"), "{msg}");
    }
}

#[test]
fn r21_fuzz_an_unmap_of_zero_bytes_caches_a_still_mapped_iova_as_linux_reported_not_an_internal_error(
) {
    // Fuzz seeds 50639052 (an unmap of 0 bytes, then one of 8 MiB + 1 byte) and
    // 50650565 (an unmap of 0 bytes, then one of 4096), minimised.
    // drivers/iommu/dma-iommu.c: __iommu_dma_unmap of 0 bytes aligns the size to 0,
    // iommu_unmap_fast clears nothing (and WARN_ON(unmapped != size) holds), and
    // iommu_dma_free_iova -> drivers/iommu/iova.c: free_iova_fast(pfn, 0) puts the
    // IOVA into the per-CPU cache of 1-granule ranges (order_base_2(0) == 0) while
    // its page stays mapped: Linux's allocator can hand it out again. The second
    // unmap then frees the range out of the tree under the cached entry (8 MiB)
    // or caches it a second time (4096). The invariant mode called the state an
    // internal error of dmasim.
    for (seed, second) in [
        (
            50639052,
            "dma_unmap_single(dev, h, 8388609, DMA_TO_DEVICE);",
        ),
        (50650565, "dma_unmap_single(dev, h, 4096, DMA_TO_DEVICE);"),
    ] {
        let src = format!(
            r#"boot("arm64-noncoherent", #{{ iommu: "smmu", ram: "64 MiB" }});
let dev = device("dev");
let b = kmalloc(4096);
let h = dma_map_single(dev, b, DMA_FROM_DEVICE);
dma_unmap_single(dev, h, 0, DMA_TO_DEVICE);
{second}
let q = kmalloc(4096);
let h2 = dma_map_single(dev, q, DMA_TO_DEVICE);
"#
        );
        let (r, j) = run_checked("iova0.rhai", &src);
        assert!(r.error.is_none(), "seed {seed}: {:?}", r.error);
        let msg = corrupted_at(&j, 5);
        assert!(msg.contains("still maps"), "seed {seed}: {msg}");
    }
}

#[test]
fn r19_after_the_misuse_the_next_mapping_gets_an_iova_a_live_range_holds_as_in_linux() {
    // The docs page's script (docs/findings/allocator-corrupted.md): the state the
    // model keeps after the misuse is Linux's, with its consequence: the next
    // 1-granule mapping of the domain pops IOVA 0xfffff000 from the per-CPU cache
    // (iova.c: iova_rcache_get), the second granule of the live coherent ring.
    let (r, j) = run_checked(
        "consequence.rhai",
        r#"boot("arm64-coherent", #{ iommu: "smmu" });
let a = device("a");
let b = device("b");
let buf = kmalloc(4096);
let h = dma_map_single(a, buf, DMA_TO_DEVICE);
if dma_mapping_error(a, h) { throw "map"; }
let ring = dma_alloc_coherent(b, 8192);
dma_unmap_single(b, h, 4096, DMA_TO_DEVICE);
let other = kmalloc(4096);
let h2 = dma_map_single(b, other, DMA_FROM_DEVICE);
expect_eq(h2, ring.dma + 4096, "the next mapping gets an IOVA inside the live ring");
"#,
    );
    common::ok(&r);
    finding_at(&j, "unmap-unknown", 8);
    corrupted_at(&j, 8);
}

#[test]
fn r19_fuzz_a_double_unmap_of_a_bounce_buffer_wraps_the_slot_counts_as_linux_without_a_panic() {
    // Fuzz seed 40354591, minimised: a 0-byte bounce of a device with
    // min_align_mask 0xfff, unmapped twice. kernel/dma/swiotlb.c:
    // swiotlb_release_slots frees the slots the address designates without
    // checking them, so the second unmap releases a free slot again and takes
    // `area->used` (unsigned long) and `total_used` below zero; dma-debug's
    // check_unmap reports the second unmap (not mapped). With noise off the model
    // panicked on the subtraction (overflow checks); with noise on the invariant
    // mode called the counts an internal error.
    for noise_off in [true, false] {
        let src = r#"boot("arm64-noncoherent", #{ swiotlb_force: true });
let dev = device("dev");
let b = kmalloc(4096);
let d1 = device("d1", #{ min_align_mask: 0xfff });
let h = dma_map_single(d1, b, 1500, 0, DMA_FROM_DEVICE);
try { dma_unmap_single(d1, h, 4097, DMA_TO_DEVICE); } catch {}
dma_unmap_single(d1, h, 0, DMA_BIDIRECTIONAL);
"#;
        let (r, j) = common::run_json(
            "swiotlb.rhai",
            src,
            &dmasim::script::ScriptOptions {
                check_invariants: true,
                noise_off,
                ..Default::default()
            },
        );
        assert!(r.error.is_none(), "noise off {noise_off}: {:?}", r.error);
        finding_at(&j, "unmap-size-mismatch", 6);
        finding_at(&j, "unmap-unknown", 7);
        let msg = corrupted_at(&j, 7);
        assert!(msg.contains("were already free"), "{msg}");
        if noise_off {
            // Nothing else bounced: the count is -1, as Linux's atomic_long.
            assert!(msg.contains("counts -1 slot(s) in use"), "{msg}");
        }
    }
}

/// The invariant mode still fires on an allocator no misuse corrupted: with one
/// IOVA domain inconsistent after a reported misuse, a range cached twice in
/// another domain (an IOVA handed out twice), and a swiotlb slot taken without
/// being counted, are internal errors as before.
#[test]
fn r19_invariants_still_catch_allocators_no_misuse_corrupted() {
    use dmasim::check::MapKind;
    use dmasim::config::PlatformConfig;
    use dmasim::kernel::device::Device;
    use dmasim::kernel::dma::DmaDirection;
    use dmasim::system::{RunOptions, System};
    let mut p = PlatformConfig::preset("arm64-coherent").unwrap();
    p.noise = dmasim::config::NoiseConfig::OFF;
    p.iommu = "smmu".into();
    let mut sys = System::boot(p, RunOptions::default()).unwrap();
    let a = sys.add_device(Device::new("a", true, 1000, 0));
    let b = sys.add_device(Device::new("b", true, 1000, 0));
    let _ring = sys.dma_alloc_coherent(b, 8192).unwrap().unwrap();
    assert!(sys.check_invariants().is_ok());
    // The misuse: b unmaps the second granule of its own live range.
    sys.dma_unmap(
        b,
        0xffff_f000,
        4096,
        DmaDirection::ToDevice,
        MapKind::Single,
    )
    .unwrap();
    let (da, db) = (sys.dev_domain(a).unwrap(), sys.dev_domain(b).unwrap());
    let st = sys.kernel.iommu.as_mut().unwrap();
    assert!(st.domains[db].iovad.corrupted);
    assert!(
        st.domains[db].iovad.consistent([]).is_err(),
        "b's books are inconsistent, as Linux's"
    );
    assert!(
        sys.check_invariants().is_ok(),
        "reported as a finding instead"
    );
    // a's domain: one range freed twice sits twice in the CPU's magazine.
    let iovad = &mut sys.kernel.iommu.as_mut().unwrap().domains[da].iovad;
    let pfn = iovad.alloc_fast(0, 1, 0xf_ffff, true).unwrap();
    iovad.free_fast(0, pfn, 1);
    iovad.free_fast(0, pfn, 1);
    let e = sys.check_invariants().unwrap_err().to_string();
    assert!(e.contains("cached twice"), "{e}");
    let iovad = &mut sys.kernel.iommu.as_mut().unwrap().domains[da].iovad;
    iovad.alloc_fast(0, 1, 0xf_ffff, true).unwrap();
    assert!(sys.check_invariants().is_ok());
    // The swiotlb pool: a slot counted by no area.
    sys.kernel.swiotlb.as_mut().unwrap().used += 1;
    let e = sys.check_invariants().unwrap_err().to_string();
    assert!(e.contains("swiotlb"), "{e}");
}

#[test]
fn r19_a_second_unmap_through_the_iommu_gives_the_iova_back_twice_as_linux() {
    // drivers/iommu/dma-iommu.c: __iommu_dma_unmap frees the IOVA whatever
    // iommu_unmap_fast found (WARN_ON(unmapped != size) only), so a second
    // dma_unmap_resource gives back again a range that already waits in the
    // per-CPU cache (strict) or the flush queue (lazy). Strict: the next two
    // mappings get the same IOVA and the second fails because the page tables
    // already map it (io-pgtable-arm: -EEXIST; __iommu_dma_map gives the IOVA back
    // once more). The model skipped the free when nothing was unmapped; now it
    // keeps Linux's state, says so (allocator-corrupted beside dma-debug's
    // unmap-unknown), and the invariant mode does not call it an internal error.
    for strict in [true, false] {
        let consequence = if strict {
            r#"let x = dma_map_resource(d, 0x10001000, 4096, DMA_TO_DEVICE, 0);
expect(!dma_mapping_error(d, x), "x maps");
let y = dma_map_resource(d, 0x10002000, 4096, DMA_TO_DEVICE, 0);
expect(dma_mapping_error(d, y), "y got x's IOVA again, which the tables refuse");
"#
        } else {
            ""
        };
        let src = format!(
            r#"boot("arm64-coherent", #{{ iommu: "smmu", iommu_strict: {strict} }});
let d = device("d");
let a = dma_map_resource(d, 0x10000000, 4096, DMA_TO_DEVICE, 0);
dma_unmap_resource(d, a, 4096, DMA_TO_DEVICE, 0);
dma_unmap_resource(d, a, 4096, DMA_TO_DEVICE, 0);
{consequence}"#
        );
        let (r, j) = run_checked("resource.rhai", &src);
        assert!(r.error.is_none(), "strict {strict}: {:?}", r.error);
        common::ok(&r);
        finding_at(&j, "unmap-unknown", 5);
        let msg = corrupted_at(&j, 5);
        assert!(msg.contains("given back already"), "{msg}");
        assert_eq!(
            common::log_has(&j, "iommu_map of 0x1000 bytes at IOVA 0xfffff000 failed"),
            strict,
            "the second mapping got the first one's IOVA"
        );
    }
}
