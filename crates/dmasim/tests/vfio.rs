//! VFIO type1 and its no-IOMMU mode (issue 7, first part): Linux's error codes, the
//! locked-memory accounting, and the exfiltration demonstration with and without
//! an IOMMU, checked on the JSON reports and on returned values.

mod common;

use common::{ids, ok, script};
use dmasim::script::{run_source, ScriptOptions};

#[test]
fn vfio_returns_linux_error_codes() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu" });
        let nic = device("nic0");
        let p = process("app");
        let c = vfio_open(nic, p);
        expect(c > 0, "opened");
        expect_eq(vfio_open(nic, p), -EBUSY, "one owner at a time");
        let b = p.malloc(65536);
        p.write(b, 0, pattern("inc", 16));
        expect_eq(vfio_map_dma(c, p, b, 0x100800, #{ read: true }), -EINVAL, "unaligned IOVA");
        expect_eq(vfio_map_dma(c, p, b, 0x100000, #{}), -EINVAL, "no permission");
        expect_eq(vfio_map_dma(c, p, b, 0x100000, #{ read: true, write: true }), 0, "mapped");
        expect_eq(vfio_map_dma(c, p, b, 0x10f000, #{ read: true }), -EEXIST, "overlapping map");
        expect_eq(vfio_unmap_dma(c, 0x104000, 4096), -EINVAL, "an unmap that bisects a mapping");
        expect_eq(vfio_unmap_dma(c, 0x100000, 65536), 65536, "a whole mapping");
        expect_eq(vfio_unmap_dma(c, 0x100000, 65536), 0, "nothing left there: success, 0 bytes");"#,
    );
    ok(&r);
    assert_eq!(r.expectations.passed, 9);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(j["stats"]["mm"]["pinned_pages"].as_u64().unwrap() >= 16);
}

#[test]
fn without_an_iommu_vfio_refuses_unless_booted_unsafe_and_a_non_coherent_device_is_refused() {
    let (r, _) = script(
        r#"boot("arm64-coherent");
        let d = device("d");
        let p = process("app");
        expect_eq(vfio_open(d, p), -EINVAL, "no IOMMU group");"#,
    );
    ok(&r);
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ iommu: "smmu" });
        let d = device("d");
        let p = process("app");
        expect_eq(vfio_open(d, p), -EINVAL, "not cache-coherent");"#,
    );
    ok(&r);
    let (r, _) = script(
        r#"boot("arm64-coherent", #{ vfio_noiommu: true });
        let d = device("d");
        let p = process("app");
        let c = vfio_open(d, p);
        expect(c > 0, "unsafe mode opens");
        expect_eq(vfio_map_dma(c, p, p.malloc(4096), 0x1000, #{ read: true }), -25, "no MAP_DMA: ENOTTY");"#,
    );
    ok(&r);
    assert!(r
        .log
        .iter()
        .any(|l| l.contains("Adding kernel taint for vfio-noiommu group on device")));
}

#[test]
fn locked_memory_is_accounted_against_rlimit_memlock() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu" });
        let d = device("d");
        let p = process("app");
        setrlimit_memlock(p, "64 KiB");
        let c = vfio_open(d, p);
        let a = p.malloc(65536);
        let b = p.malloc(4096);
        expect_eq(vfio_map_dma(c, p, a, 0x100000, #{ read: true }), 0, "64 KiB fit");
        expect_eq(vfio_map_dma(c, p, b, 0x200000, #{ read: true }), -ENOMEM, "one page more does not");
        expect_eq(vfio_unmap_dma(c, 0x100000, 65536), 65536, "unmap uncharges");
        expect_eq(vfio_map_dma(c, p, b, 0x200000, #{ read: true }), 0, "now it fits");
        let q = process("root", #{ cap_ipc_lock: true });
        setrlimit_memlock(q, 0);
        let d2 = device("d2");
        let c2 = vfio_open(d2, q);
        expect_eq(vfio_map_dma(c2, q, q.malloc(65536), 0x100000, #{ read: true }), 0, "CAP_IPC_LOCK is not charged");"#,
    );
    ok(&r);
    assert_eq!(ids(&j), vec!["memlock-limit"]);
    assert!(r
        .log
        .iter()
        .any(|l| l.contains("vfio_pin_pages_remote: RLIMIT_MEMLOCK (65536) exceeded")));
}

fn scenario(name: &str) -> (dmasim::report::Report, serde_json::Value) {
    common::scenario(name, 0, None)
}

#[test]
fn exfiltration_leaks_the_secret_without_an_iommu_and_nothing_with_one() {
    let (r, j) = scenario("vfio-noiommu-exfiltrate.rhai");
    ok(&r);
    assert_eq!(ids(&j), vec!["user-dma-without-iommu"]);
    assert_eq!(j["findings"][0]["manifested"], true);
    assert!(j["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("kernel memory"));
    assert!(r.log.iter().any(|l| l.contains("script: leaked: true")));

    let (r, j) = scenario("vfio-iommu-exfiltrate.rhai");
    ok(&r);
    assert_eq!(ids(&j), vec!["iommu-fault"]);
    assert!(r.log.iter().any(|l| l.contains("script: leaked: false")));
}

#[test]
fn the_device_works_inside_its_mappings_and_faults_outside() {
    let (r, j) = script(
        r#"boot("x86-64", #{ iommu: "smmu" });
        let nic = device("nic0");
        let p = process("app");
        let c = vfio_open(nic, p);
        let ring = p.malloc(8192);
        expect_eq(vfio_map_dma(c, p, ring, 0x40000, #{ read: true }), 0, "read-only for the device");
        p.write(ring, 0, pattern("inc", 64));
        expect_eq(dev_read(nic, 0x40000, 64), pattern("inc", 64), "the device reads the process's bytes");
        dev_write(nic, 0x40000, pattern("ones", 8));          // read-only: faults
        let x = dev_read(nic, 0x80000, 64);                   // outside: faults"#,
    );
    ok(&r);
    assert_eq!(ids(&j), vec!["iommu-fault", "iommu-fault"]);
    assert!(j["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("F_PERMISSION"));
    assert_eq!(j["stats"]["iommu"]["faults"], 2);
}

#[test]
fn the_character_device_path_copies_twice_and_hides_the_dma_address() {
    let (r, j) = scenario("chardev-spi.rhai");
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    let u = &j["stats"]["uaccess"];
    assert_eq!(u["copy_from_user_bytes"], 4096);
    assert_eq!(u["copy_to_user_bytes"], 4096);
    assert_eq!(u["transfers"], 2);
    assert!(u["copy_ns"].as_u64().unwrap() > 0, "copies cost CPU time");
    assert_eq!(j["stats"]["dma_bytes"], 8192);
    // On every preset and seed the driver is correct.
    for preset in ["arm64-noncoherent", "arm64-coherent", "arm32", "x86-64"] {
        for seed in 0..10 {
            let src = std::fs::read_to_string(format!(
                "{}/../../scenarios/chardev-spi.rhai",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let r = run_source(
                "c.rhai",
                &src,
                &ScriptOptions {
                    seed,
                    preset: Some(preset),
                    ..ScriptOptions::default()
                },
            );
            ok(&r);
            assert!(r.findings.is_empty(), "{preset} {seed}: {:?}", r.findings);
        }
    }
}

#[test]
fn a_group_is_viable_only_without_kernel_drivers_and_its_devices_share_the_container() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu" });
        let a = device("nic0", #{ iommu_group: "bridge" });
        let b = device("nic1", #{ iommu_group: "bridge" });
        let alone = device("nvme0");
        let p = process("app");
        expect_eq(vfio_open(a, p), -EPERM, "nic1 still has its kernel driver");
        vfio_bind(b);
        let c = vfio_open(a, p);
        expect(c > 0, "viable once nic1 is bound to vfio-pci");
        expect_eq(vfio_open(b, p), c, "nic1 joins the container of its group");
        expect_eq(vfio_open(b, process("other")), -EBUSY, "another process cannot take the group");
        let u = p.malloc(8192);
        p.write(u, 0, pattern("inc", 16));
        expect_eq(vfio_map_dma(c, p, u, 0x100000, #{ read: true, write: true }), 0, "mapped");
        expect_eq(dev_read(b, 0x100000, 16), pattern("inc", 16), "nic1 reaches the mapping");
        dev_write(a, 0x101000, pattern("random", 16, 3));
        expect_eq(p.read(u, 4096, 16), pattern("random", 16, 3), "nic0 too");
        let x = dev_read(alone, 0x100000, 16);"#,
    );
    ok(&r);
    assert_eq!(r.expectations.passed, 7);
    // The device of another group is not in the container's domain: it faults.
    assert_eq!(ids(&j), ["iommu-fault"], "{:?}", ids(&j));
    assert_eq!(j["findings"][0]["device"], "nvme0");
    assert!(j["log"].to_string().contains("group is not viable: nic1"));
}

#[test]
fn the_kernel_cannot_map_for_a_device_bound_to_vfio_pci() {
    let (r, _) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu" });
        let nic = device("nic0");
        vfio_bind(nic);
        let b = kmalloc(64);
        let h = dma_map_single(nic, b, DMA_TO_DEVICE);"#,
    );
    let e = r.error.clone().expect("an error");
    assert!(e.contains("vfio-pci"), "{e}");
    assert_eq!(r.exit_code(), 2);
}

#[test]
fn the_tour_s_vfio_scenarios_fail_and_pass_as_they_say() {
    let run = |name: &str| {
        let src = std::fs::read_to_string(format!(
            "{}/../../scenarios/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let r = run_source(name, &src, &ScriptOptions::default());
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        (r, j)
    };
    let (r, j) = run("vfio-memlock.rhai");
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(ids(&j), ["memlock-limit", "iommu-fault"]);
    assert!(r
        .log
        .iter()
        .any(|l| l.contains("VFIO_IOMMU_MAP_DMA of 16 MiB: -12")));
    let (r, j) = run("vfio-dma.rhai");
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert_eq!(j["stats"]["mm"]["pinned_pages"], 4096);
}

#[test]
fn coherency_is_a_property_of_each_port() {
    let src = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/../../scenarios/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let r = run_source(
        "m",
        &src("coherent-port-mixed.rhai"),
        &ScriptOptions::default(),
    );
    let found: Vec<(&str, Option<bool>)> = r
        .findings
        .iter()
        .map(|f| (f.device.as_deref().unwrap_or(""), f.manifested))
        .collect();
    assert_eq!(found, [("nic0", Some(false)), ("isp0", Some(true))]);
    let r = run_source(
        "s",
        &src("coherent-port-synced.rhai"),
        &ScriptOptions::default(),
    );
    ok(&r);
    assert!(r.findings.is_empty());
    assert!(r
        .log
        .iter()
        .any(|l| l.contains("nic0 (coherent port): the sync invalidated 0 lines")));
    assert!(r
        .log
        .iter()
        .any(|l| l.contains("isp0 (non-coherent port): the sync invalidated 64 lines")));
}
