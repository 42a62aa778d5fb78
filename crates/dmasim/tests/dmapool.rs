//! The DMA pool allocator (`mm/dmapool.c`): block carving, the free list kept in the
//! free blocks themselves, and what a late device write, a double free and a busy
//! destroy do — checked on the JSON report.

mod common;

use common::{finding, ids, log_has, ok, scenario, script};
use serde_json::Value;

fn manifested(j: &Value, id: &str) -> Value {
    finding(j, id)["manifested"].clone()
}

#[test]
fn a_late_write_back_into_a_freed_qtd_corrupts_the_next_handle() {
    for seed in 0..6 {
        let (r, j) = scenario("dma-pool-late-writeback.rhai", seed, None);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.exit_code(), 1, "seed {seed}");
        assert_eq!(
            ids(&j),
            vec![
                "use-after-free-dma",
                "dma-outside-mapping",
                "dma-pool-bad-free",
                "dma-pool-busy",
                "mapping-leak"
            ],
            "seed {seed}"
        );
        assert_eq!(manifested(&j, "use-after-free-dma"), true, "seed {seed}");
        let uaf = &j["findings"][0];
        assert!(uaf["message"]
            .as_str()
            .unwrap()
            .contains("in a block of dma_pool ehci_qtd freed at line"));
        let events: Vec<&str> = uaf["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert!(events
            .iter()
            .any(|e| e.starts_with("dma_pool_free(ehci_qtd)")));
        assert!(log_has(&j, "handle 0xd00"), "the token became the handle");
        assert!(log_has(&j, "dma_pool_destroy ehci_qtd busy"));
        assert!(j["findings"][2]["message"]
            .as_str()
            .unwrap()
            .ends_with("/0xd00 (bad dma)"));
    }
}

#[test]
fn the_same_write_is_latent_on_32_bit_arm_and_faults_behind_an_iommu() {
    // 4-byte pointers: the header is 8 bytes and the token at offset 8 misses it.
    let (r, j) = scenario("dma-pool-late-writeback.rhai", 0, Some("arm32"));
    assert!(r.error.is_none());
    assert_eq!(ids(&j), vec!["use-after-free-dma"]);
    assert_eq!(manifested(&j, "use-after-free-dma"), false);
    let (_, j) = common::run_json(
        "s.rhai",
        &common::scenario_text("dma-pool-late-writeback.rhai"),
        &dmasim::script::ScriptOptions {
            boot_set: vec![("iommu".into(), "smmu".into())],
            ..Default::default()
        },
    );
    assert!(
        ids(&j).contains(&"iommu-fault".to_string()),
        "{:?}",
        ids(&j)
    );
    assert!(!ids(&j).contains(&"dma-outside-mapping".to_string()));
}

#[test]
fn waiting_for_the_controller_before_the_free_is_clean_everywhere() {
    for preset in [
        "arm64-noncoherent",
        "arm64-coherent",
        "x86-64",
        "arm32",
        "rpi4",
    ] {
        let (r, j) = scenario("dma-pool-late-writeback-fixed.rhai", 1, Some(preset));
        ok(&r);
        assert!(ids(&j).is_empty(), "{preset}: {:?}", ids(&j));
        assert_eq!(r.exit_code(), 0);
    }
}

#[test]
fn create_follows_linux_rules_for_size_align_and_boundary() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d");
        expect(dma_pool_create("a", d, 64, 48, 0) == (), "align not a power of two");
        expect(dma_pool_create("b", d, 0, 8, 0) == (), "size 0");
        expect(dma_pool_create("c", d, 128, 8, 64) == (), "boundary smaller than a block");
        expect(dma_pool_create("c", d, 64, 8, 96) == (), "boundary not a power of two");
        let p = dma_pool_create("small", d, 4, 0, 0);
        expect_eq(p.size, 16, "at least the free-list header");
        let p = dma_pool_create("odd", d, 20, 8, 0);
        expect_eq(p.size, 24, "rounded up to the alignment");
        expect_eq(p.allocation, 4096, "one page per allocation");
        let p = dma_pool_create("a-name-longer-than-thirty-one-bytes", d, 96, 32, 1024);
        expect_eq(p.name, "a-name-longer-than-thirty-one-b", "char name[32]");
        let b = dma_pool_alloc(p, GFP_KERNEL);
        expect_eq(p.nr_blocks, 40, "ten 96-byte blocks per KiB: none crosses the boundary");
        expect_eq(b.dma % 32, 0, "aligned");
        let big = dma_pool_create("big", d, 6000, 8, 0);
        let x = dma_pool_alloc(big, GFP_KERNEL);
        expect_eq(big.allocation, 6000, "one block per allocation");
        expect_eq(big.nr_blocks, 1, "");
        let y = dma_pool_alloc(big, GFP_KERNEL);
        expect_eq(big.nr_pages, 2, "a second allocation for the second block");
        dma_pool_free(p, b); dma_pool_free(big, x); dma_pool_free(big, y);
        dma_pool_destroy(p); dma_pool_destroy(big);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
}

#[test]
fn blocks_keep_the_free_list_unless_zeroed() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let p = dma_pool_create("p", d, 64, 64, 0);
        let a = dma_pool_alloc(p, GFP_KERNEL);
        let next = cpu_read(a, 0, 8);
        print(`next pointer ${next}`);
        expect(next != blob(8, 0), "a fresh block still holds the address of the next free block");
        let z = dma_pool_zalloc(p, GFP_KERNEL);
        expect(cpu_read(z, 0, 64) == blob(64, 0), "dma_pool_zalloc clears the whole block");
        let g = dma_pool_alloc(p, GFP_KERNEL | 0x100);
        expect(cpu_read(g, 0, 64) == blob(64, 0), "__GFP_ZERO does the same");
        expect_eq(z.va - a.va, 64, "blocks are handed out in address order");
        dma_pool_free(p, a); dma_pool_free(p, z); dma_pool_free(p, g);
        dma_pool_destroy(p);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
}

#[test]
fn a_double_free_hands_one_block_to_two_owners_and_wraps_nr_active() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d");
        let p = dma_pool_create("p", d, 64, 64, 0);
        let a = dma_pool_alloc(p, GFP_KERNEL);
        dma_pool_free(p, a);
        dma_pool_free(p, a);
        expect_eq(p.nr_active, -1, "the count wraps, as size_t does");
        let x = dma_pool_alloc(p, GFP_KERNEL);
        let y = dma_pool_alloc(p, GFP_KERNEL);
        expect(x.va == y.va, "two owners of one block");
        expect_eq(p.nr_active, 1, "the pool thinks one block is in use");"#,
    );
    ok(&r);
    assert_eq!(ids(&j)[0], "dma-pool-bad-free");
    assert!(j["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("already free"));
    assert_eq!(j["findings"][0]["line"], 6);
}

#[test]
fn a_mismatched_handle_is_a_bad_free_and_changes_nothing() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d");
        let p = dma_pool_create("p", d, 64, 64, 0);
        let a = dma_pool_alloc(p, GFP_KERNEL);
        let b = dma_pool_alloc(p, GFP_KERNEL);
        dma_pool_free(p, a.va, b.dma);
        expect_eq(p.nr_active, 2, "the free was refused");
        dma_pool_free(p, a); dma_pool_free(p, b); dma_pool_destroy(p);"#,
    );
    ok(&r);
    assert_eq!(ids(&j), vec!["dma-pool-bad-free"]);
    assert!(j["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("(bad vaddr"));
}

#[test]
fn destroying_a_busy_pool_leaks_its_pages_and_a_clean_destroy_frees_them() {
    let busy = r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d");
        let p = dma_pool_create("rx", d, 256, 64, 0);
        let a = dma_pool_alloc(p, GFP_KERNEL);
        let b = dma_pool_alloc(p, GFP_KERNEL);
        FREE
        dma_pool_destroy(p);"#;
    let (r, j) = script(&busy.replace("FREE", "dma_pool_free(p, a);"));
    assert_eq!(r.exit_code(), 1);
    assert_eq!(ids(&j), vec!["dma-pool-busy", "mapping-leak"]);
    assert!(log_has(&j, "d: dma_pool_destroy rx busy"));
    assert!(j["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("1 block(s) still allocated"));
    let (r, j) = script(&busy.replace("FREE", "dma_pool_free(p, a); dma_pool_free(p, b);"));
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
}

#[test]
fn a_device_read_of_a_freed_block_is_reported_latent() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ noise: "off" });
        let d = device("d");
        let p = dma_pool_create("p", d, 64, 64, 0);
        let a = dma_pool_alloc(p, GFP_KERNEL);
        dma_pool_free(p, a);
        dev_read(d, a.dma, 64);
        dev_write(d, a.dma + 32, blob(8, 1));     // past the header
        let b = dma_pool_alloc(p, GFP_KERNEL);
        expect(b.dma == a.dma, "the list is intact");
        dev_write(d, b.dma, blob(8, 1));           // allocated again: fine
        dma_pool_free(p, b); dma_pool_destroy(p);"#,
    );
    assert!(r.error.is_none());
    assert_eq!(ids(&j), vec!["use-after-free-dma", "use-after-free-dma"]);
    for f in j["findings"].as_array().unwrap() {
        assert_eq!(f["manifested"], false, "{f}");
    }
    assert_eq!(r.expectations.failed, 0);
}

#[test]
fn a_managed_pool_goes_with_the_driver_unless_a_block_is_still_out() {
    let src = |free: &str, create: &str| {
        format!(
            r#"boot("arm64-coherent", #{{ noise: "off" }});
            let d = device("d");
            let p = {create}("desc", d, 64, 64, 0);
            let a = dma_pool_alloc(p, GFP_KERNEL);
            {free}
            remove_device(d);"#
        )
    };
    // Everything freed: devres destroys the pool before dma-debug looks for leaks.
    let (r, j) = script(&src("dma_pool_free(p, a);", "dmam_pool_create"));
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(&j, "d: driver unbound"));
    // A block still out: "busy", and the page leaks at unbind.
    let (r, j) = script(&src("", "dmam_pool_create"));
    assert_eq!(r.exit_code(), 1);
    assert_eq!(ids(&j), vec!["dma-pool-busy", "mapping-leak"]);
    assert!(finding(&j, "mapping-leak")["message"]
        .as_str()
        .unwrap()
        .contains("while released from device"));
    // An unmanaged pool nobody destroyed: its page is a leak, no "busy".
    let (_, j) = script(&src("dma_pool_free(p, a);", "dma_pool_create"));
    assert_eq!(ids(&j), vec!["mapping-leak"]);
}
