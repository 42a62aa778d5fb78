//! Untrusted devices and sub-page exposure behind an IOMMU: the SMMU maps whole
//! 4 KiB pages, so a device given a 64-byte kmalloc buffer reaches its neighbours;
//! Linux bounces such mappings for untrusted devices (`dev_use_swiotlb`), zeroes the
//! padding, forces a strict DMA domain and maps `dma_map_sg` entries one by one.
//! Checked on the JSON report (ids, `manifested`, stats, exit codes) and through the
//! Rust API where the state is not in the report (domain types, the bound flag).

mod common;

use common::{ids, log_has, ok, scenario, script};
use dmasim::config::{NoiseConfig, PlatformConfig};
use dmasim::kernel::device::Device;
use dmasim::kernel::iommu::DomainType;
use dmasim::system::{RunOptions, System};
use serde_json::Value;

fn manifested(j: &Value) -> Vec<Option<bool>> {
    j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["manifested"].as_bool())
        .collect()
}

#[test]
fn a_trusted_device_behind_the_iommu_reads_the_neighbours_of_a_sub_page_buffer() {
    for seed in 0..4 {
        let (r, j) = scenario("iommu-subpage-exposure.rhai", seed, None);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
        // Before, the sanitizer took this for a stale IOTLB entry (dma-after-unmap).
        assert_eq!(ids(&j), vec!["dma-outside-mapping"], "seed {seed}");
        assert_eq!(manifested(&j), vec![Some(true)], "seed {seed}");
        assert_eq!(r.exit_code(), 1);
        let msg = j["findings"][0]["message"].as_str().unwrap();
        assert!(
            msg.contains("4032 of them outside its 64-byte mapping"),
            "{msg}"
        );
        assert_eq!(j["stats"]["bounced_maps"], 0);
    }
}

#[test]
fn an_untrusted_device_sees_zeros_around_its_bounce_buffer_and_cannot_write_past_it() {
    for seed in 0..4 {
        let (r, j) = scenario("untrusted-device.rhai", seed, None);
        assert!(r.error.is_none(), "{:?}", r.error);
        // The script's expectations: the command readable, zeros around it, the key
        // intact after a stray page write, only the mapped 64 bytes copied back.
        assert_eq!(r.expectations.passed, 5);
        assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
        assert_eq!(
            ids(&j),
            vec![
                "dma-outside-mapping",
                "dma-outside-mapping",
                "bounce-buffering"
            ],
            "seed {seed}"
        );
        assert_eq!(manifested(&j), vec![Some(false), Some(false), None]);
        assert_eq!(r.exit_code(), 1);
        assert_eq!(j["stats"]["bounced_maps"], 1);
        // 64 bytes in at the map, 64 back at the unmap (BIDIRECTIONAL).
        assert_eq!(j["stats"]["bounce_bytes"], 128);
        // The allocation is aligned to and made of whole granules: 2 slots of 2 KiB.
        assert_eq!(j["stats"]["swiotlb"]["slots_used_max"], 2);
        assert!(log_has(
            &j,
            "nic0: Adding to iommu group 0; default domain type DMA-FQ"
        ));
        assert!(log_has(
            &j,
            "tb0: Adding to iommu group 1; default domain type DMA"
        ));
        assert!(!log_has(
            &j,
            "tb0: Adding to iommu group 1; default domain type DMA-FQ"
        ));
        assert!(log_has(&j, "at most 262144 bytes"));
    }
}

#[test]
fn whole_pages_map_directly_even_for_an_untrusted_device() {
    let (r, j) = script(
        r#"
        boot("arm64-coherent", #{ iommu: "smmu" });
        let tb = device("tb0", #{ untrusted: true });
        let page = alloc_pages(0, GFP_KERNEL);
        cpu_write(page, 0, pattern("inc", 4096));
        let a = dma_map_single(tb, page, DMA_TO_DEVICE);
        if dma_mapping_error(tb, a) { throw "map failed"; }
        expect_eq(dev_read(tb, a, 4096), pattern("inc", 4096), "the page itself");
        dma_unmap_single(tb, a, 4096, DMA_TO_DEVICE);
        free_pages(page);
        "#,
    );
    ok(&r);
    assert_eq!(ids(&j), Vec::<String>::new());
    assert_eq!(j["stats"]["bounced_maps"], 0);
}

#[test]
fn an_untrusted_device_maps_each_sg_entry_on_its_own() {
    let src = |untrusted: bool| {
        format!(
            r#"
            boot("arm64-coherent", #{{ iommu: "smmu" }});
            let d = device("d", #{{ untrusted: {untrusted} }});
            let buf = vmalloc(16384);
            cpu_write(buf, 0, pattern("inc", 16384));
            let t = sg_from_buffer(buf);
            let n = dma_map_sg(d, t, DMA_TO_DEVICE);
            print(`nents ${{sg_nents(t)}} segments ${{n}}`);
            dma_unmap_sg(d, t, DMA_TO_DEVICE);
            vfree(buf);
            "#
        )
    };
    let segments = |j: &Value| -> (u64, u64) {
        let l = j["log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .find(|l| l.contains("nents"))
            .unwrap()
            .to_string();
        let w: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (w[0], w[1])
    };
    let (r, j) = script(&src(false));
    ok(&r);
    let (nents, merged) = segments(&j);
    assert_eq!(nents, 4);
    assert_eq!(merged, 1, "a trusted device gets one IOVA run");
    let (r, j) = script(&src(true));
    ok(&r);
    assert_eq!(
        segments(&j),
        (4, 4),
        "dev_use_sg_swiotlb: one segment per entry"
    );
    // Whole pages: nothing to bounce.
    assert_eq!(j["stats"]["bounced_maps"], 0);
}

fn boot(f: impl FnOnce(&mut PlatformConfig)) -> System {
    let mut p = PlatformConfig::preset("arm64-coherent").unwrap();
    p.noise = NoiseConfig::OFF;
    p.iommu = "smmu".into();
    f(&mut p);
    System::boot(p, RunOptions::default()).unwrap()
}

fn untrusted(name: &str, group: Option<&str>) -> Device {
    let mut d = Device::new(name, true, 1000, 0);
    d.untrusted = true;
    d.iommu_group = group.map(str::to_string);
    d
}

fn kind(sys: &System, dev: usize) -> DomainType {
    sys.kernel.iommu.as_ref().unwrap().domains[sys.dev_domain(dev).unwrap()].kind
}

#[test]
fn untrusted_devices_get_a_strict_dma_domain_whatever_the_command_line_says() {
    let mut sys = boot(|p| p.iommu_strict = Some(false));
    let nic = sys.add_device(Device::new("nic0", true, 1000, 0));
    let tb = sys.add_device(untrusted("tb0", None));
    assert_eq!(kind(&sys, nic), DomainType::DmaFq);
    assert_eq!(kind(&sys, tb), DomainType::Dma);
    // iommu.passthrough=1 leaves trusted devices untranslated, not untrusted ones.
    let mut sys = boot(|p| p.iommu = "passthrough".into());
    let nic = sys.add_device(Device::new("nic0", true, 1000, 0));
    let tb = sys.add_device(untrusted("tb0", None));
    assert_eq!(kind(&sys, nic), DomainType::Identity);
    assert_eq!(kind(&sys, tb), DomainType::Dma);
    assert!(sys.use_dma_iommu(tb));
    // The group's type may not be changed to anything else (sysfs `type`).
    assert_eq!(sys.iommu_group_set_type(tb, "identity"), -22);
    assert_eq!(sys.iommu_group_set_type(tb, "DMA-FQ"), -22);
    assert_eq!(sys.iommu_group_set_type(tb, "DMA"), 0);
    assert_eq!(sys.iommu_group_set_type(nic, "DMA-FQ"), 0);
}

#[test]
fn an_untrusted_device_moves_an_idle_shared_group_to_a_strict_domain_not_a_busy_one() {
    // The group is idle: it moves to a new strict DMA domain, both devices with it.
    let mut sys = boot(|p| p.iommu_strict = Some(false));
    let nic = sys.add_device({
        let mut d = Device::new("nic0", true, 1000, 0);
        d.iommu_group = Some("slot".into());
        d
    });
    assert_eq!(kind(&sys, nic), DomainType::DmaFq);
    let tb = sys.add_device(untrusted("tb0", Some("slot")));
    assert_eq!(kind(&sys, tb), DomainType::Dma);
    assert_eq!(sys.dev_domain(nic), sys.dev_domain(tb));
    assert!(sys.kernel.devices[tb].bound);

    // nic0 has a live mapping in the lazy domain: a device added to a group in
    // use joins its domain as it is (__iommu_probe_device), lazy for tb0 too.
    let (r, j) = script(
        r#"
        boot("arm64-coherent", #{ iommu: "smmu", iommu_strict: false });
        let nic = device("nic0", #{ iommu_group: "slot" });
        let buf = kmalloc(4096);
        let a = dma_map_single(nic, buf, DMA_TO_DEVICE);
        if dma_mapping_error(nic, a) { throw "map failed"; }
        let tb = device("tb0", #{ untrusted: true, iommu_group: "slot" });
        let b = dma_map_single(tb, buf, DMA_TO_DEVICE);
        expect(!dma_mapping_error(tb, b), "tb0 maps through the group's domain");
        dma_unmap_single(tb, b, 4096, DMA_TO_DEVICE);
        dma_unmap_single(nic, a, 4096, DMA_TO_DEVICE);
        kfree(buf);
        "#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(
        &j,
        "dmasim: tb0 is untrusted but joined iommu group 0, already in use with a DMA-FQ domain"
    ));
}

#[test]
fn without_bounce_buffers_an_untrusted_sub_page_mapping_fails_as_in_linux() {
    let (r, j) = script(
        r#"
        boot("arm64-coherent", #{ iommu: "smmu", swiotlb: "off" });
        let tb = device("tb0", #{ untrusted: true });
        let buf = kmalloc(64);
        let a = dma_map_single(tb, buf, DMA_TO_DEVICE);
        expect(dma_mapping_error(tb, a), "no swiotlb, no unaligned mapping");
        kfree(buf);
        "#,
    );
    ok(&r);
    assert_eq!(ids(&j), Vec::<String>::new());
    assert!(log_has(
        &j,
        "tb0: DMA bounce buffers are inactive, unable to map unaligned transaction."
    ));
}

#[test]
fn dma_max_mapping_size_behind_the_iommu_is_unbounded_unless_untrusted() {
    let mut sys = boot(|_| {});
    let nic = sys.add_device(Device::new("nic0", true, 1000, 0));
    let tb = sys.add_device(untrusted("tb0", None));
    assert_eq!(sys.dma_max_mapping_size(nic), i64::MAX as u64);
    assert_eq!(sys.dma_max_mapping_size(tb), 256 << 10);
}

#[test]
fn an_untrusted_device_without_an_iommu_is_said_to_be_unconfined() {
    let (r, j) = script(
        r#"
        boot("arm64-coherent");
        let tb = device("tb0", #{ untrusted: true });
        let buf = kmalloc(64);
        let a = dma_map_single(tb, buf, DMA_TO_DEVICE);
        expect(!dma_mapping_error(tb, a), "dma-direct maps it as any other");
        expect(a == buf.phys, "no bounce: a physical address");
        dma_unmap_single(tb, a, 64, DMA_TO_DEVICE);
        kfree(buf);
        "#,
    );
    ok(&r);
    assert!(log_has(
        &j,
        "dmasim: tb0 is untrusted but not behind an IOMMU: nothing confines its DMA"
    ));
    assert_eq!(j["stats"]["bounced_maps"], 0);
    // Behind the SMMU there is no such line.
    let (_, j) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu" }); device("tb0", #{ untrusted: true });"#,
    );
    assert!(!log_has(&j, "is untrusted but not behind an IOMMU"));
}
