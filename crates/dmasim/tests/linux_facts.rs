//! One test per Linux 6.12 fact the model must follow, each named for the fact and
//! citing the kernel file and function it comes from. docs/fidelity.md lists them.

mod common;

use common::{ids, log_has, ok, script};

/// mm/slab_common.c: __kmalloc_minalign = dma_get_cache_alignment(), which arm64
/// defines as cache_line_size() (arch/arm64/include/asm/cache.h), 4 << CTR_EL0.CWG =
/// 64 on Cortex-A53, not the compile-time ARCH_DMA_MINALIGN of 128. Without a
/// swiotlb pool there is no kmalloc bouncing, so kmalloc(8) objects sit 64 apart.
#[test]
fn kmalloc_minalign_is_cache_line_size_arm64_no_bounce() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ swiotlb: "off" });
        let a = kmalloc(8);
        let b = kmalloc(8);
        expect_eq(b.phys - a.phys, 64, "kmalloc-64 is the smallest cache: 64 bytes apart");
        let c = kmalloc(100);
        let d = kmalloc(100);
        expect_eq(d.phys - c.phys, 128, "100 bytes use kmalloc-128 (96 is not 64-aligned)");
        let e = kmalloc(150);
        let f = kmalloc(150);
        expect_eq(f.phys - e.phys, 192, "kmalloc-192 survives a 64-byte minimum alignment");"#,
    );
    ok(&r);
}

/// The same with a CPU that reports a 128-byte writeback granule: the caches
/// follow cache_line_size() (mm/slab_common.c: new_kmalloc_cache).
#[test]
fn kmalloc_minalign_follows_the_writeback_granule() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ swiotlb: "off", cache_writeback_granule: 128 });
        let a = kmalloc(8);
        let b = kmalloc(8);
        expect_eq(b.phys - a.phys, 128, "CWG 128: kmalloc-128 is the smallest cache");
        let e = kmalloc(150);
        let f = kmalloc(150);
        expect_eq(f.phys - e.phys, 256, "192 is not 128-aligned: kmalloc-256");"#,
    );
    ok(&r);
}

/// drivers/media/common/videobuf2/videobuf2-dma-contig.c: vb2_dc_get_userptr checks
/// IS_ALIGNED(vaddr | size, dma_get_cache_alignment()): 64 on arm64 Cortex-A53, so a
/// user buffer at +64 is accepted and one at +32 is -EINVAL.
#[test]
fn vb2_dc_userptr_alignment_is_dma_get_cache_alignment_64_on_arm64() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ iommu: "smmu" });
        let app = process("cam");
        let b = app.malloc(65536);
        let q = v4l2_open(device("csi0"), #{ alloc: "dma-contig" });
        expect_eq(v4l2_reqbufs_userptr(q, 3, 4096), 3, "three");
        expect_eq(v4l2_qbuf_userptr(q, 0, app, b.va + 64, 4096), 0, "+64 is cache-line aligned");
        expect_eq(v4l2_qbuf_userptr(q, 1, app, b.va + 8192 + 32, 4096), -EINVAL, "+32 is not");
        v4l2_reqbufs_userptr(q, 0, 0);"#,
    );
    ok(&r);
    assert!(log_has(&j, "user data must be aligned to 64 bytes"));
}

/// videobuf2-dma-sg.c: vb2_dma_sg_get_userptr has no alignment check (only
/// dma-contig's get_userptr has one): any user address is accepted.
#[test]
fn vb2_dma_sg_userptr_has_no_alignment_check() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent");
        let app = process("cam");
        let b = app.malloc(65536);
        let q = v4l2_open(device("csi0"), #{ alloc: "dma-sg" });
        expect_eq(v4l2_reqbufs_userptr(q, 3, 4096), 3, "three");
        expect_eq(v4l2_qbuf_userptr(q, 0, app, b.va + 8, 4096), 0, "dma-sg takes +8");
        v4l2_reqbufs_userptr(q, 0, 0);"#,
    );
    ok(&r);
}

/// include/linux/dma-mapping.h: dma_get_cache_alignment() returns 1 on x86 (no
/// ARCH_HAS_DMA_MINALIGN), so vb2_dc_get_userptr accepts any address there.
#[test]
fn dma_get_cache_alignment_is_1_on_x86_so_vb2_dc_userptr_takes_any_address() {
    let (r, _) = script(
        r#"boot("x86-64", #{ iommu: "smmu" });
        let app = process("cam");
        let b = app.malloc(65536);
        let q = v4l2_open(device("csi0"), #{ alloc: "dma-contig" });
        expect_eq(v4l2_reqbufs_userptr(q, 3, 4096), 3, "three");
        expect_eq(v4l2_qbuf_userptr(q, 0, app, b.va + 8, 4096), 0, "x86 takes +8");
        v4l2_reqbufs_userptr(q, 0, 0);"#,
    );
    ok(&r);
}

/// include/linux/dma-map-ops.h: dma_kmalloc_needs_bounce / dma_kmalloc_size_aligned
/// bounce a small FROM_DEVICE kmalloc buffer whose size class is not a multiple of
/// dma_get_cache_alignment() (the run-time cache_line_size() on arm64): a
/// 192-byte object is whole 64-byte lines but not whole 128-byte granules.
#[test]
fn dma_kmalloc_needs_bounce_uses_the_runtime_cache_line_size() {
    for (cwg, bounced) in [(64, false), (128, true)] {
        let (r, _) = script(&format!(
            r#"boot("arm64-noncoherent", #{{ cache_writeback_granule: {cwg} }});
            let d = device("nic");
            let b = kmalloc(192);
            let h = dma_map_single(d, b, DMA_FROM_DEVICE);
            expect_eq(h != b.phys, {bounced}, "bounced through swiotlb");
            dma_unmap_single(d, h, 192, DMA_FROM_DEVICE);
            let s = kmalloc(96);
            let h2 = dma_map_single(d, s, DMA_FROM_DEVICE);
            expect_eq(h2 != s.phys, true, "kmalloc-96 is never whole lines");
            dma_unmap_single(d, h2, 96, DMA_FROM_DEVICE);"#
        ));
        ok(&r);
    }
}

/// drivers/iommu/dma-iommu.c: __iommu_dma_map refuses a device whose
/// min_align_mask is wider than the IOVA granule's mask: dev_WARN_ONCE "Unsupported
/// alignment constraint" and DMA_MAPPING_ERROR; 0xfff (NVMe) still maps.
#[test]
fn iommu_dma_map_refuses_min_align_mask_above_the_granule() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ iommu: "smmu" });
        let d = device("odd", #{ min_align_mask: 0x1fff });
        let b = kmalloc(4096);
        let h = dma_map_single(d, b, DMA_TO_DEVICE);
        expect_eq(dma_mapping_error(d, h), true, "min_align_mask 0x1fff > granule mask 0xfff");
        let h2 = dma_map_single(d, b, DMA_TO_DEVICE);
        expect_eq(dma_mapping_error(d, h2), true, "every time");
        let n = device("nvme0", #{ min_align_mask: 0xfff });
        let h3 = dma_map_single(n, b, DMA_TO_DEVICE);
        expect_eq(dma_mapping_error(n, h3), false, "0xfff fits the 4 KiB granule");
        dma_unmap_single(n, h3, 4096, DMA_TO_DEVICE);"#,
    );
    ok(&r);
    let warns = j["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter(|l| {
            l.as_str()
                .unwrap_or("")
                .contains("Unsupported alignment constraint")
        })
        .count();
    assert_eq!(warns, 1, "dev_WARN_ONCE prints once");
}

/// drivers/iommu/dma-iommu.c: iommu_dma_alloc_iova tries IOVAs below 4 GiB first for
/// a PCI device (pci_32bit_workaround, set by iommu_setup_dma_ops unless
/// iommu.forcedac=1), even with a 64-bit mask; a platform device gets the top of its
/// range. Untrusted devices are PCI devices (dev_is_untrusted).
#[test]
fn iommu_dma_alloc_iova_tries_32bit_first_for_pci_devices() {
    let src = |forcedac: bool| {
        format!(
            r#"boot("arm64-noncoherent", #{{ iommu: "smmu", iommu_forcedac: {forcedac} }});
            let plat = device("plat");
            let pci = device("nvme", #{{ bus: "pci" }});
            let ext = device("tb", #{{ untrusted: true }});
            for d in [plat, pci, ext] {{ dma_set_mask_and_coherent(d, 64); }}
            let b = kmalloc(4096);
            let hp = dma_map_single(plat, b, DMA_TO_DEVICE);
            let hn = dma_map_single(pci, b, DMA_TO_DEVICE);
            let he = dma_map_single(ext, b, DMA_TO_DEVICE);
            print(`plat=${{hp}} pci=${{hn}} ext=${{he}}`);
            expect_eq(hp > 0xffffffff, true, "a platform device gets the top of its 48-bit range");
            expect_eq(hn <= 0xffffffff, {pci_low}, "PCI below 4 GiB first");
            expect_eq(he <= 0xffffffff, {pci_low}, "an untrusted device is a PCI device");"#,
            pci_low = !forcedac
        )
    };
    for forcedac in [false, true] {
        let (r, _) = script(&src(forcedac));
        ok(&r);
    }
}

/// The `bus` option: an untrusted device cannot be a platform device, since
/// pci_dev->untrusted exists only for PCI (drivers/iommu/dma-iommu.c: dev_is_untrusted).
#[test]
fn untrusted_platform_device_is_refused() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ iommu: "smmu" });
        device("x", #{ bus: "platform", untrusted: true });"#,
    );
    let e = r.error.expect("an error");
    assert!(e.contains("only a PCI device"), "{e}");
}

/// drivers/iommu/io-pgtable-arm.c: arm_lpae_init_pte replaces a table descriptor
/// with a block: it unmaps and frees the old table first (__arm_lpae_unmap,
/// __arm_lpae_free_pgtable). A table left behind by unmapping 4 KiB pages (unmap
/// clears leaves, never the tables) does not stop a later 2 MiB block at the same
/// IOVA; only a live leaf does (-EEXIST, "we require an unmap first").
#[test]
fn arm_lpae_init_pte_maps_a_block_over_a_table_left_by_4k_pages() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu" });
        let d = device("d", #{ max_segment: 4 * 1024 * 1024 });
        let v = vmalloc(4 * 1024 * 1024);
        let t = sg_from_buffer(v, 65536);
        if dma_map_sgtable(d, t, DMA_TO_DEVICE) != 0 { throw "map"; }
        let a0 = sg_dma_address(t, 0);
        dma_unmap_sgtable(d, t, DMA_TO_DEVICE);
        vfree(v);
        let b = alloc_pages(10, GFP_KERNEL);             // 4 MiB, physically contiguous
        let a = dma_map_single(d, b, DMA_TO_DEVICE);
        expect(!dma_mapping_error(d, a), "a block over the empty table");
        expect_eq(a, a0, "the same IOVA as the 4 KiB pages had");
        let w = stats().iommu.walks;
        dev_read(d, a + 0x1234, 64);
        expect_eq(stats().iommu.walks - w, 3, "a 2 MiB block: the walk ends at level 2");
        dma_unmap_single(d, a, 4 * 1024 * 1024, DMA_TO_DEVICE);
        free_pages(b);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(!log_has(&j, "EEXIST"), "{:?}", j["log"]);
}

/// drivers/iommu/dma-iommu.c: fq_full() is `((tail + 1) & mod_mask) == head`, so a
/// ring of IOVA_DEFAULT_FQ_SIZE = 256 slots holds 255 entries and queue_iova
/// flushes the IOTLB at the 256th lazy unmap, not the 257th. Seen from the device:
/// the IOTLB entry of the first unmapped IOVA survives 255 lazy unmaps and is gone
/// after the 256th.
#[test]
fn flush_queue_holds_255_entries_and_flushes_at_the_256th_lazy_unmap() {
    let (r, _) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu", iommu_strict: false, cpus: 1 });
        let d = device("nic0");
        let b = kmalloc(4096);
        let first = dma_map_single(d, b, DMA_FROM_DEVICE);
        dev_write(d, first, pattern("inc", 64));          // fills the IOTLB
        dma_unmap_single(d, first, 4096, DMA_FROM_DEVICE);  // lazy unmap 1
        for i in 0..254 {
            let a = dma_map_single(d, b, DMA_TO_DEVICE);
            dma_unmap_single(d, a, 4096, DMA_TO_DEVICE);    // lazy unmaps 2..=255
        }
        dev_write(d, first, pattern("ones", 64));
        expect_eq(stats().iommu.faults, 0, "255 entries wait in the ring: the stale IOTLB entry still translates");
        let a = dma_map_single(d, b, DMA_TO_DEVICE);
        dma_unmap_single(d, a, 4096, DMA_TO_DEVICE);        // lazy unmap 256: ring full
        dev_write(d, first, pattern("zero", 64));
        expect_eq(stats().iommu.faults, 1, "the 256th unmap flushed the IOTLB");"#,
    );
    ok(&r);
}

/// kernel/dma/direct.c: dma_direct_supported compares a mask below 32 bits with the
/// zone_dma_limit variable, which stays DMA_BIT_MASK(24) on 32-bit ARM (only arm64,
/// powerpc and s390 set it; ARM keeps arm_dma_limit): 24- and 30-bit masks are
/// accepted on the arm32 preset, 20 bits is -EIO.
#[test]
fn dma_direct_supported_arm32_keeps_zone_dma_limit_24_bits() {
    let (r, _) = script(
        r#"boot("arm32");
        let d = device("d");
        expect_eq(dma_set_mask(d, 24), 0, "24 bits cover DMA_BIT_MASK(24)");
        expect_eq(dma_set_mask(d, 30), 0, "30 bits too");
        expect_eq(dma_set_mask(d, 20), -EIO, "20 bits do not");"#,
    );
    ok(&r);
}

/// drivers/media/common/videobuf2/videobuf2-v4l2.c: __fill_v4l2_buffer sets
/// QUERYBUF's `length` to vb->planes[0].length (the size REQBUFS set up, or the user
/// memory's length after a USERPTR QBUF); `m.offset` is the mmap cookie
/// index << (PAGE_SHIFT + 3) (videobuf2-core.c: __setup_offsets).
#[test]
fn vidioc_querybuf_length_is_the_plane_length_and_offset_is_the_mmap_cookie() {
    let (r, _) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu" });
        let cam = device("csi0");
        let q = v4l2_open(cam, #{ alloc: "dma-sg" });
        expect_eq(v4l2_reqbufs(q, 3, 65536), 3, "three");
        expect_eq(v4l2_querybuf(q, 2), 65536, "length = planes[0].length");
        expect_eq(v4l2_querybuf_offset(q, 2), 2 << 15, "offset cookie of buffer 2");
        expect_eq(v4l2_querybuf(q, 3), -EINVAL, "no buffer 3");
        v4l2_reqbufs(q, 0, 65536);
        let app = process("app");
        let b = app.malloc(3 * 65536);
        let u = v4l2_open(device("csi1"), #{ alloc: "dma-sg" });
        expect_eq(v4l2_reqbufs_userptr(u, 3, 4096), 3, "three");
        expect_eq(v4l2_querybuf(u, 0), 4096, "the format's size before QBUF");
        expect_eq(v4l2_qbuf_userptr(u, 0, app, b.va, 65536), 0, "a longer user buffer");
        expect_eq(v4l2_querybuf(u, 0), 65536, "the user memory's length after QBUF");
        expect_eq(v4l2_querybuf_offset(u, 0), -EINVAL, "USERPTR buffers have no mmap offset");
        v4l2_reqbufs_userptr(u, 0, 0);"#,
    );
    ok(&r);
}

/// kernel/dma/contiguous.c: dma_alloc_contiguous returns NULL when
/// !gfpflags_allow_blocking(gfp), so a GFP_ATOMIC coherent allocation never comes
/// from CMA (a GFP_KERNEL one of several pages does).
#[test]
fn dma_alloc_contiguous_refuses_gfp_atomic() {
    for preset in ["arm64-coherent", "arm64-noncoherent"] {
        let (r, _) = script(&format!(
            r#"boot("{preset}");
            let d = device("d");
            let a = dma_alloc_coherent(d, 65536, GFP_ATOMIC);
            expect_eq(stats().cma.used_pages, 0, "GFP_ATOMIC: not from CMA");
            let k = dma_alloc_coherent(d, 65536, GFP_KERNEL);
            expect_eq(stats().cma.used_pages, 16, "GFP_KERNEL: 16 pages of CMA");
            let k2 = dma_alloc_coherent(d, 65536);
            expect_eq(stats().cma.used_pages, 32, "the default GFP_KERNEL too");
            dma_free_coherent(d, 65536, a);
            dma_free_coherent(d, 65536, k);
            dma_free_coherent(d, 65536, k2);"#
        ));
        ok(&r);
    }
}

/// kernel/dma/debug.c: check_sync looks the range up with containing_match, so a
/// sync that runs past the mapping's end finds no entry and dma-debug says "device
/// driver tries to sync DMA memory it has not allocated".
#[test]
fn check_sync_past_the_end_says_not_allocated() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent");
        let d = device("d");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, 0, 256, DMA_FROM_DEVICE);
        dma_sync_single_for_cpu(d, a, 512, DMA_FROM_DEVICE);
        dma_unmap_single(d, a, 256, DMA_FROM_DEVICE);"#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    let f = common::finding(&j, "sync-out-of-bounds");
    let m = f["message"].as_str().expect("message");
    assert!(
        m.contains("device driver tries to sync DMA memory it has not allocated"),
        "{m}"
    );
    assert!(!m.contains("outside allocated range"), "{m}");
}

/// docs/script-api.md (iommu_faults): every IOMMU fault is logged as the SMMU's
/// event (drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c: arm_smmu_evtq_thread) and
/// becomes a finding; one at a just-unmapped IOVA is `dma-after-unmap`, latent,
/// and not also `iommu-fault`.
#[test]
fn fault_at_a_just_unmapped_iova_is_dma_after_unmap_not_iommu_fault() {
    let (r, j) = script(
        r#"boot("arm64-coherent", #{ iommu: "smmu" });
        let d = device("nic0");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_FROM_DEVICE);
        if dma_mapping_error(d, a) { throw "map"; }
        dma_unmap_single(d, a, 4096, DMA_FROM_DEVICE);
        dev_write(d, a, pattern("ones", 64));
        dev_write(d, 0x10000000, pattern("ones", 64));
        expect_eq(iommu_faults(d).len(), 2, "the IOMMU recorded both");"#,
    );
    ok(&r);
    assert_eq!(ids(&j), vec!["dma-after-unmap", "iommu-fault"]);
    assert_eq!(common::finding(&j, "dma-after-unmap")["manifested"], false);
    let events = j["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter(|l| l.as_str().unwrap_or("").contains("F_TRANSLATION"))
        .count();
    assert_eq!(events, 2, "both faults are in the log");
}

/// include/linux/dma-direction.h (BIDIRECTIONAL 0, TO_DEVICE 1, FROM_DEVICE 2,
/// NONE 3), include/linux/dma-mapping.h (DMA_MAPPING_ERROR = ~0, DMA_ATTR_WEAK_ORDERING
/// 1 << 1, DMA_ATTR_SKIP_CPU_SYNC 1 << 5) and include/linux/gfp_types.h (GFP_KERNEL
/// 0xcc0, GFP_ATOMIC 0x820, __GFP_DMA 0x01, __GFP_DMA32 0x04).
#[test]
fn script_constants_have_the_kernel_values() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent");
        expect_eq([DMA_BIDIRECTIONAL, DMA_TO_DEVICE, DMA_FROM_DEVICE, DMA_NONE], [0, 1, 2, 3], "enum dma_data_direction");
        expect_eq(DMA_MAPPING_ERROR, -1, "all ones");
        expect_eq(DMA_ATTR_WEAK_ORDERING, 2, "1 << 1");
        expect_eq(DMA_ATTR_SKIP_CPU_SYNC, 32, "1 << 5");
        expect_eq([GFP_KERNEL, GFP_ATOMIC, GFP_DMA, GFP_DMA32], [0xcc0, 0x820, 1, 4], "v6.12 gfp bits");"#,
    );
    ok(&r);
}

/// A 4 KiB buffer of dirty lines mapped and unmapped in each direction; returns the
/// lines (cleaned at map, invalidated at map, invalidated at unmap) per direction.
fn cache_ops(preset: &str) -> Vec<(i64, i64, i64)> {
    let (r, j) = script(&format!(
        r#"boot("{preset}");
        let d = device("d");
        let b = kmalloc(4096);
        for dir in [DMA_TO_DEVICE, DMA_FROM_DEVICE, DMA_BIDIRECTIONAL] {{
            cpu_write(b, 0, pattern("inc", 4096));
            let s0 = stats().cache;
            let a = dma_map_single(d, b, dir);
            dma_mapping_error(d, a);
            let s1 = stats().cache;
            dma_unmap_single(d, a, 4096, dir);
            let s2 = stats().cache;
            print(`ops ${{s1.clean_lines - s0.clean_lines}} ${{s1.invalidate_lines - s0.invalidate_lines}} ${{s2.invalidate_lines - s1.invalidate_lines}}`);
        }}"#
    ));
    ok(&r);
    j["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|l| l.as_str()?.split("script: ops ").nth(1).map(str::to_string))
        .map(|l| {
            let v: Vec<i64> = l.split(' ').map(|x| x.parse().expect("number")).collect();
            (v[0], v[1], v[2])
        })
        .collect()
}

/// arch/arm64/mm/dma-mapping.c: arch_sync_dma_for_device cleans (dcache_clean_poc)
/// for every direction; arch_sync_dma_for_cpu does nothing for TO_DEVICE and
/// invalidates (dcache_inval_poc) for FROM_DEVICE and BIDIRECTIONAL.
#[test]
fn arm64_map_cleans_every_direction_and_unmap_invalidates_all_but_to_device() {
    // 4096 bytes of 64-byte lines.
    assert_eq!(
        cache_ops("arm64-noncoherent"),
        vec![(64, 0, 0), (64, 0, 64), (64, 0, 64)]
    );
}

/// arch/arm/mm/cache-v7.S: v7_dma_map_area invalidates for FROM_DEVICE and cleans
/// otherwise; v7_dma_unmap_area invalidates for all but TO_DEVICE (32-byte lines on
/// the Cortex-A9 preset).
#[test]
fn armv7_map_invalidates_from_device_and_cleans_the_rest() {
    assert_eq!(
        cache_ops("arm32"),
        vec![(128, 0, 0), (0, 128, 128), (128, 0, 128)]
    );
}

/// kernel/dma/direct.h: dma_direct_map_page / dma_direct_unmap_page skip the arch
/// cache maintenance for a coherent device (dev_is_dma_coherent), and x86 devices
/// are all coherent.
#[test]
fn a_coherent_device_gets_no_cache_maintenance() {
    for preset in ["arm64-coherent", "x86-64"] {
        assert_eq!(cache_ops(preset), vec![(0, 0, 0); 3], "{preset}");
    }
}

/// drivers/iommu/Kconfig: IOMMU_DEFAULT_DMA_STRICT is the default on arm64 and
/// IOMMU_DEFAULT_DMA_LAZY on x86; drivers/iommu/iommu.c: iommu_subsys_init logs
/// "DMA domain TLB invalidation policy: strict|lazy mode".
#[test]
fn default_iommu_invalidation_is_strict_on_arm64_and_lazy_on_x86() {
    for (preset, mode) in [("arm64-noncoherent", "strict"), ("x86-64", "lazy")] {
        let (r, j) = script(&format!(r#"boot("{preset}", #{{ iommu: "smmu" }});"#));
        ok(&r);
        assert!(
            log_has(
                &j,
                &format!("DMA domain TLB invalidation policy: {mode} mode")
            ),
            "{preset}"
        );
    }
}

/// kernel/dma/mapping.c: dma_supported is true for every mask when the device uses
/// dma-iommu (the IOVA allocator honours the mask); dma-direct refuses a 20-bit mask
/// that cannot cover ZONE_DMA (kernel/dma/direct.c: dma_direct_supported).
#[test]
fn dma_iommu_accepts_every_mask() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ iommu: "smmu" });
        let d = device("d");
        let p = device("p", #{ iommu: false });
        expect_eq(dma_set_mask(d, 20), 0, "dma-iommu: any mask");
        expect_eq(dma_set_mask(p, 20), -EIO, "dma-direct: 20 bits cannot cover ZONE_DMA");"#,
    );
    ok(&r);
}

/// kernel/dma/contiguous.c: dma_alloc_contiguous never takes a single page from the
/// global CMA area ("size <= PAGE_SIZE" goes to the buddy allocator); two pages do.
#[test]
fn cma_never_serves_single_page_coherent_allocations() {
    let (r, _) = script(
        r#"boot("arm64-coherent");
        let d = device("d");
        let a = dma_alloc_coherent(d, 4096);
        expect_eq(stats().cma.used_pages, 0, "one page: buddy");
        let b = dma_alloc_coherent(d, 8192);
        expect_eq(stats().cma.used_pages, 2, "two pages: CMA");
        dma_free_coherent(d, 4096, a);
        dma_free_coherent(d, 8192, b);"#,
    );
    ok(&r);
}

/// Documentation/core-api/dma-api-howto.rst: dma_alloc_coherent memory is aligned
/// to the smallest PAGE_SIZE order that holds it, and it is zeroed
/// (kernel/dma/direct.c: dma_direct_alloc; mm/cma.c: cma_alloc with
/// align = get_order(size), kernel/dma/contiguous.c: dma_alloc_contiguous).
#[test]
fn dma_alloc_coherent_is_zeroed_and_aligned_to_its_order() {
    for preset in ["arm64-noncoherent", "arm64-coherent", "x86-64"] {
        let (r, _) = script(&format!(
            r#"boot("{preset}");
            let d = device("d");
            let junk = kmalloc(65536);
            cpu_write(junk, 0, pattern("ones", 65536));
            kfree(junk);
            let c = dma_alloc_coherent(d, 12288);
            expect_eq(c.dma % 16384, 0, "12 KiB: order 2, 16 KiB aligned");
            expect_eq(cpu_read(c, 0, 12288), pattern("zero", 12288), "zeroed");
            dma_free_coherent(d, 12288, c);"#
        ));
        ok(&r);
    }
}

/// include/media/videobuf2-core.h: VB2_MAX_FRAME = 32; vb2_core_reqbufs clamps the
/// count to [min_reqbufs_allocation, max_num_buffers].
#[test]
fn vb2_reqbufs_clamps_to_vb2_max_frame() {
    let (r, _) = script(
        r#"boot("arm64-coherent");
        let q = v4l2_open(device("csi0"), #{ alloc: "dma-sg" });
        expect_eq(v4l2_reqbufs(q, 40, 4096), 32, "at most VB2_MAX_FRAME");
        expect_eq(v4l2_querybuf(q, 31), 4096, "buffer 31 exists");
        expect_eq(v4l2_querybuf(q, 32), -EINVAL, "buffer 32 does not");
        v4l2_reqbufs(q, 0, 4096);"#,
    );
    ok(&r);
}

/// kernel/dma/swiotlb.c: swiotlb_max_mapping_size = IO_TLB_SIZE * IO_TLB_SEGSIZE
/// (256 KiB) minus min_align_mask rounded up to IO_TLB_SIZE; dma-direct reports it
/// when bouncing is forced (kernel/dma/direct.c: dma_direct_max_mapping_size).
#[test]
fn swiotlb_max_mapping_size_is_256k_less_the_min_align_mask() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent", #{ swiotlb_force: true });
        let d = device("d");
        let n = device("nvme", #{ min_align_mask: 0xfff });
        expect_eq(dma_max_mapping_size(d), 262144, "128 slots of 2 KiB");
        expect_eq(dma_max_mapping_size(n), 262144 - 4096, "less roundup(0xfff, 2 KiB)");"#,
    );
    ok(&r);
}

/// kernel/dma/swiotlb.c: swiotlb_tbl_map_single always copies the original into
/// the bounce buffer (swiotlb_bounce(..., DMA_TO_DEVICE)) whatever the direction,
/// so bytes a FROM_DEVICE transfer does not write come back unchanged at unmap.
#[test]
fn swiotlb_map_copies_the_original_even_for_from_device() {
    let (r, _) = script(
        r#"boot("arm64-coherent", #{ swiotlb_force: true });
        let d = device("d");
        let b = kmalloc(4096);
        cpu_write(b, 0, pattern("inc", 4096));
        let a = dma_map_single(d, b, DMA_FROM_DEVICE);
        expect_eq(dma_mapping_error(d, a), false, "bounced");
        expect(a != b.phys, "the device sees the bounce buffer");
        dev_write(d, a, pattern("ones", 64));
        dma_unmap_single(d, a, 4096, DMA_FROM_DEVICE);
        expect_eq(cpu_read(b, 0, 64), pattern("ones", 64), "what the device wrote");
        expect_eq(cpu_read(b, 64, 4032), pattern("inc", 4096).extract(64), "the rest as it was");"#,
    );
    ok(&r);
}

/// docs/fidelity.md lists at least 60 facts, and every test it names exists: a
/// renamed or deleted test cannot leave the table pointing at nothing.
#[test]
fn the_fidelity_table_names_only_tests_that_exist() {
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(format!("{root}/docs/fidelity.md")).expect("fidelity.md");
    let mut sources = String::new();
    for dir in ["crates/dmasim/tests", "crates/dmasim/src"] {
        let mut stack = vec![std::path::PathBuf::from(format!("{root}/{dir}"))];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    sources.push_str(&std::fs::read_to_string(&p).expect("source"));
                }
            }
        }
    }
    let mut facts = 0;
    for row in doc
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| fact"))
    {
        let cells: Vec<&str> = row.split(" | ").collect();
        let Some(tests) = cells.last() else { continue };
        let names: Vec<&str> = tests
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|n| !n.ends_with(".rs"))
            .map(|n| n.rsplit("::").next().unwrap_or(n))
            .collect();
        if names.is_empty() {
            continue;
        }
        facts += 1;
        for n in names {
            assert!(
                sources.contains(&format!("fn {n}(")),
                "docs/fidelity.md names a missing test {n}"
            );
        }
    }
    assert!(facts >= 60, "only {facts} facts in docs/fidelity.md");
}
