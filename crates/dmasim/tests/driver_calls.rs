//! The DMA calls real drivers make beyond map/unmap/sync: dma_get_cache_alignment,
//! dmam_alloc_coherent (devres), dma_alloc_wc / dma_free_wc / dma_mmap_wc,
//! dma_mmap_pages, dma_map_resource / dma_unmap_resource, and the
//! network page_pool with PP_FLAG_DMA_MAP | PP_FLAG_DMA_SYNC_DEV — each checked on
//! addresses, data and the sanitizer's findings in the JSON report.

mod common;

use common::{finding, ids, log_has, ok, script};

/// include/linux/dma-mapping.h dma_get_cache_alignment: arm64's cache_line_size()
/// (the CTR_EL0.CWG write-back granule, 64 on A53, never below the line the model
/// runs), 1 on x86 (no non-coherent DMA).
#[test]
fn dma_get_cache_alignment_is_the_platforms_cache_line() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        expect_eq(dma_get_cache_alignment(), 64, "CTR_EL0.CWG on a Cortex-A53");"#,
    );
    ok(&r);
    let (r, _) = script(
        r#"boot("x86-64", #{ noise: "off" });
        expect_eq(dma_get_cache_alignment(), 1, "x86: coherent DMA only");"#,
    );
    ok(&r);
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off", cache: #{ line: 128 } });
        expect_eq(dma_get_cache_alignment(), 128, "128-byte lines");"#,
    );
    ok(&r);
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let a = dma_get_cache_alignment();
        expect(a >= 32 && (a & (a - 1)) == 0, "a power of two");
        let d = device("d");
        // A buffer padded to the alignment shares no line with its neighbour.
        let b = kmalloc(a);
        expect_eq(b.va % a, 0, "kmalloc of the alignment is aligned");"#,
    );
    ok(&r);
}

/// kernel/dma/mapping.c dmam_alloc_coherent + dmam_release: devres frees the
/// buffer at driver unbind, so remove_device reports no leak; the same buffer from
/// dma_alloc_coherent is a mapping-leak there.
#[test]
fn dmam_alloc_coherent_is_freed_at_remove_device_not_leaked() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let b = dmam_alloc_coherent(d, 8192, GFP_KERNEL);
        expect(b != (), "allocated");
        expect(b.dma != (), "with a DMA address");
        cpu_write(b, 0, pattern("inc", 64));
        expect_eq(dev_read(d, b.dma, 64), pattern("inc", 64), "coherent: no sync needed");
        remove_device(d);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("d");
        let b = dma_alloc_coherent(d, 8192, GFP_KERNEL);
        remove_device(d);"#,
    );
    let f = finding(&j, "mapping-leak");
    assert_eq!(f["line"], 4, "remove_device: {f}");
}

/// dma_alloc_wc is dma_alloc_attrs(DMA_ATTR_WRITE_COMBINE): on arm64
/// pgprot_writecombine is Normal-NC like pgprot_dmacoherent (dma_pgprot), so the
/// device sees CPU stores without syncs; dma_free_wc checks the size as
/// dma_free_coherent does; dma_mmap_wc gives the process the same view.
#[test]
fn dma_alloc_wc_is_uncached_memory_the_device_sees_without_syncs() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("fb0");
        let fb = dma_alloc_wc(d, 16384, GFP_KERNEL);
        expect(fb != (), "allocated");
        expect_eq(fb.kind, "coherent", "a coherent buffer");
        cpu_write(fb, 100, pattern("random", 512, 7));
        expect_eq(dev_read(d, fb.dma + 100, 512), pattern("random", 512, 7), "no sync needed");
        let p = process("xorg");
        let u = dma_mmap_wc(d, p, fb);
        dev_write(d, fb.dma, pattern("ones", 64));
        expect_eq(p.read(u, 0, 64), pattern("ones", 64), "the process sees the device's bytes");
        dma_free_wc(d, 16384, fb);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    let (_, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("fb0");
        let fb = dma_alloc_wc(d, 16384, GFP_KERNEL);
        dma_free_wc(d, 4096, fb);"#,
    );
    assert_eq!(finding(&j, "coherent-free-mismatch")["line"], 4);
}

/// The receive loop of page-pool-no-sync-dev.rhai written with the page_pool
/// calls (net/core/page_pool.c): an XDP program stores into each page, the page
/// is put back and reused while the CPU is busy elsewhere. With
/// PP_FLAG_DMA_SYNC_DEV page_pool_put_page syncs max_len bytes from offset for
/// the device (page_pool_dma_sync_for_device) and every packet arrives intact;
/// without it the dirty lines are written back over the next packet.
fn xdp_rx(flags: &str) -> String {
    format!(
        r#"boot("arm64-noncoherent", #{{ noise: "off" }});
        let nic = device("eth0");
        let pool = page_pool_create(nic, #{{ flags: {flags}, order: 0, pool_size: 256,
            dma_dir: DMA_FROM_DEVICE, max_len: 2048, offset: 256 }});
        let pages = [page_pool_dev_alloc_pages(pool), page_pool_dev_alloc_pages(pool)];
        let other = kmalloc("1 MiB");
        let bad = 0;
        for burst in 0..3 {{
            let pkts = [];
            for i in 0..2 {{
                let pkt = pattern("random", 1024, burst * 2 + i);
                dev_write(nic, page_pool_get_dma_addr(pages[i]) + 256, pkt);
                pkts.push(pkt);
            }}
            cpu_fill(other, burst);
            for i in 0..2 {{
                let pg = pages[i];
                let dma = page_pool_get_dma_addr(pg);
                dma_sync_single_range_for_cpu(nic, dma, 256, 1024, DMA_FROM_DEVICE);
                if cpu_read(pg, 256, 1024) != pkts[i] {{ bad += 1; }}
                cpu_write(pg, 256, blob(12, 0xee));
                page_pool_put_page(pool, pg, -1, true);
                let again = page_pool_dev_alloc_pages(pool);
                expect_eq(page_pool_get_dma_addr(again), dma, "recycled with its mapping");
                pages[i] = again;
            }}
        }}
        print(`bad=${{bad}}`);
        for pg in pages {{ page_pool_put_full_page(pool, pg, false); }}
        page_pool_destroy(pool);
        kfree(other);"#
    )
}

#[test]
fn page_pool_sync_dev_keeps_recycled_pages_intact() {
    let (r, j) = script(&xdp_rx("PP_FLAG_DMA_MAP | PP_FLAG_DMA_SYNC_DEV"));
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(&j, "bad=0"), "{}", j["log"]);
    // Without the flag: the hazard page-pool-no-sync-dev.rhai shows by hand.
    let (r, j) = script(&xdp_rx("PP_FLAG_DMA_MAP"));
    ok(&r);
    assert!(
        ids(&j).iter().any(|i| i == "dirty-writeback-clobber"),
        "{:?}",
        ids(&j)
    );
}

/// page_pool_dma_map maps the whole page (PAGE_SIZE << order) with
/// DMA_ATTR_SKIP_CPU_SYNC; page_pool_destroy unmaps and frees the cached pages,
/// so nothing leaks; a page still in flight is reported by
/// page_pool_release_retry and stays mapped (a leak at the end of the run).
#[test]
fn page_pool_maps_whole_pages_and_destroy_gives_them_back() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let nic = device("eth0");
        let pool = page_pool_create(nic, #{ flags: PP_FLAG_DMA_MAP | PP_FLAG_DMA_SYNC_DEV, order: 1,
            dma_dir: DMA_BIDIRECTIONAL, max_len: 8192 });
        let pg = page_pool_dev_alloc_pages(pool);
        expect_eq(pg.len, 8192, "order 1: two pages");
        expect_eq(page_pool_get_dma_addr(pg), pg.dma, "the page carries its DMA address");
        dev_write(nic, pg.dma + 8000, pattern("inc", 192));
        page_pool_put_page(pool, pg, -1, false);
        page_pool_destroy(pool);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let nic = device("eth0");
        let pool = page_pool_create(nic, #{ flags: PP_FLAG_DMA_MAP, dma_dir: DMA_FROM_DEVICE });
        let held = page_pool_dev_alloc_pages(pool);
        page_pool_destroy(pool);"#,
    );
    ok(&r);
    assert!(log_has(&j, "stalled pool shutdown"), "{}", j["log"]);
    assert!(ids(&j).iter().any(|i| i == "mapping-leak"), "{:?}", ids(&j));
}

/// page_pool_init: PP_FLAG_DMA_MAP only for DMA_FROM_DEVICE/BIDIRECTIONAL,
/// PP_FLAG_DMA_SYNC_DEV only with PP_FLAG_DMA_MAP and a max_len, no unknown
/// flags: -EINVAL otherwise.
#[test]
fn page_pool_create_refuses_what_page_pool_init_refuses() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let nic = device("eth0");
        expect_eq(page_pool_create(nic, #{ flags: PP_FLAG_DMA_MAP, dma_dir: DMA_TO_DEVICE }), -EINVAL, "TO_DEVICE");
        expect_eq(page_pool_create(nic, #{ flags: PP_FLAG_DMA_SYNC_DEV, max_len: 2048 }), -EINVAL, "SYNC_DEV without DMA_MAP");
        expect_eq(page_pool_create(nic, #{ flags: PP_FLAG_DMA_MAP | PP_FLAG_DMA_SYNC_DEV }), -EINVAL, "no max_len");
        expect_eq(page_pool_create(nic, #{ flags: 0x100 }), -EINVAL, "unknown flag");
        expect(type_of(page_pool_create(nic, #{ flags: PP_FLAG_DMA_MAP })) == "PagePool", "FROM_DEVICE by default");"#,
    );
    ok(&r);
}

/// kernel/dma/mapping.c dma_mmap_pages: the buffer's pages with the vma's own
/// (cacheable) protection; the process sees what the CPU stored, and what the
/// device wrote once the driver synced for the CPU; a vma larger than
/// PAGE_ALIGN(size) is -ENXIO.
#[test]
fn dma_mmap_pages_maps_a_noncoherent_buffer_cacheable() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ noise: "off" });
        let d = device("isp0");
        let b = dma_alloc_noncoherent(d, 8192, DMA_FROM_DEVICE);
        let p = process("app");
        expect_eq(dma_mmap_pages(d, p, 8192, b, 12288), -ENXIO, "vma beyond the buffer");
        let u = dma_mmap_pages(d, p, 8192, b);
        expect_eq(u.len, 8192, "the whole buffer");
        dma_sync_single_for_device(d, b.dma, 8192, DMA_FROM_DEVICE);
        dev_write(d, b.dma + 4096, pattern("random", 256, 3));
        dma_sync_single_for_cpu(d, b.dma, 8192, DMA_FROM_DEVICE);
        expect_eq(p.read(u, 4096, 256), pattern("random", 256, 3), "the frame through the user mapping");
        dma_free_noncoherent(d, 8192, b, DMA_FROM_DEVICE);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
}

/// kernel/dma/direct.c dma_direct_map_resource: without an IOMMU the bus address
/// of an MMIO range is its physical address, refused (DMA_MAPPING_ERROR) beyond
/// the device's mask; drivers/iommu/dma-iommu.c iommu_dma_map_resource: behind an
/// IOMMU an IOVA with the same page offset. dma-debug checks the unmap like any
/// other ("resource" type) and reports one never undone at driver unbind.
#[test]
fn dma_map_resource_gives_the_fifo_a_bus_address_and_is_checked_as_a_mapping() {
    let fifo = "0x0900_0040";
    let (r, j) = script(&format!(
        r#"boot("arm64-noncoherent", #{{ noise: "off" }});
        let dmac = device("dmac");
        let a = dma_map_resource(dmac, {fifo}, 4, DMA_FROM_DEVICE, 0);
        expect(!dma_mapping_error(dmac, a), "mapped");
        expect_eq(a, {fifo}, "dma-direct: the physical address itself");
        dma_unmap_resource(dmac, a, 4, DMA_FROM_DEVICE, 0);
        let d32 = device("d32");               // the default 32-bit mask
        let bad = dma_map_resource(d32, 0x8_0000_0040, 4, DMA_FROM_DEVICE, 0);
        expect(dma_mapping_error(d32, bad), "beyond the 32-bit mask");"#
    ));
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(&j, "overflow (mask ffffffff"), "{}", j["log"]);
    let (r, j) = script(&format!(
        r#"boot("arm64-noncoherent", #{{ noise: "off", iommu: "smmu" }});
        let dmac = device("dmac");
        let a = dma_map_resource(dmac, {fifo}, 4, DMA_FROM_DEVICE, 0);
        expect(!dma_mapping_error(dmac, a), "mapped");
        expect(a != {fifo}, "an IOVA");
        expect_eq(a & 0xfff, 0x40, "the FIFO's offset in its page");
        dma_unmap_single(dmac, a, 4, DMA_FROM_DEVICE);
        let b = dma_map_resource(dmac, {fifo}, 4, DMA_FROM_DEVICE, 0);
        dma_mapping_error(dmac, b);
        remove_device(dmac);"#
    ));
    ok(&r);
    let f = finding(&j, "unmap-type-mismatch");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("[mapped as resource]"),
        "{f}"
    );
    let leak = finding(&j, "mapping-leak");
    assert_eq!(leak["line"], 10, "{leak}");
    assert!(
        leak["help"]
            .as_str()
            .unwrap()
            .contains("dma_unmap_resource"),
        "{leak}"
    );
}
