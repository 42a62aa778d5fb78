//! dma-buf and the dma-buf heaps: allocation as the system and CMA heaps do it,
//! importers' mappings, `DMA_BUF_IOCTL_SYNC`, and the findings on a missing sync
//! — checked on the JSON report.

mod common;

use common::{finding, ids, log_has, ok, scenario, script};

/// How many lines the script's "frame N: X of Y lines" log says were wrong.
fn bad_lines(j: &serde_json::Value, frame: u32) -> u64 {
    let tag = format!("frame {frame}: ");
    let line = j["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .find(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("no {tag} line"));
    let rest = &line[line.find(&tag).unwrap() + tag.len()..];
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn drawing_without_dma_buf_sync_puts_stale_pixels_on_screen() {
    for seed in 0..6 {
        let (r, j) = scenario("dmabuf-no-sync.rhai", seed, None);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.exit_code(), 1, "seed {seed}");
        // One finding for the buffer's four chunks (four mappings), not four.
        assert_eq!(ids(&j), ["stale-device-read"], "seed {seed}");
        let f = finding(&j, "stale-device-read");
        assert_eq!(f["manifested"], true, "seed {seed}");
        let msg = f["message"].as_str().unwrap();
        assert!(
            msg.contains("dma-buf #1") && msg.contains("DMA_BUF_SYNC_END"),
            "{msg}"
        );
        assert!(f["help"].as_str().unwrap().contains("DMA_BUF_IOCTL_SYNC"));
        assert!(
            bad_lines(&j, 1) > 0,
            "seed {seed}: the screen showed stale lines"
        );
    }
}

#[test]
fn a_coherent_display_hides_the_bug_and_the_fix_works_everywhere() {
    // The display snoops the caches: every line on screen is right, and the missing
    // sync is still reported, latent (it breaks on the next, non-coherent SoC).
    let (r, j) = scenario("dmabuf-no-sync.rhai", 0, Some("arm64-coherent"));
    assert_eq!(r.exit_code(), 1);
    assert!(!ids(&j).is_empty());
    for f in j["findings"].as_array().unwrap() {
        assert_eq!(f["id"], "stale-device-read");
        assert_eq!(f["manifested"], false);
    }
    assert_eq!(bad_lines(&j, 1), 0);
    assert_eq!(bad_lines(&j, 2), 0);
    for preset in ["arm64-noncoherent", "arm64-coherent", "x86-64", "arm32"] {
        for seed in 0..3 {
            let (r, j) = scenario("dmabuf-no-sync-fixed.rhai", seed, Some(preset));
            ok(&r);
            assert!(ids(&j).is_empty(), "{preset} {seed}: {:?}", ids(&j));
            assert_eq!(bad_lines(&j, 1), 0, "{preset} {seed}");
            assert_eq!(bad_lines(&j, 2), 0, "{preset} {seed}");
        }
    }
}

#[test]
fn a_no_sg_display_needs_the_cma_heap() {
    let (r, j) = scenario("dmabuf-heap-contiguous.rhai", 0, None);
    assert_eq!(r.exit_code(), 1);
    assert_eq!(ids(&j), ["sg-unsupported"]);
    let f = finding(&j, "sg-unsupported");
    assert!(f["message"]
        .as_str()
        .unwrap()
        .contains("dma_map_sgtable mapped it as"));
    assert!(f["help"].as_str().unwrap().contains("CMA heap"));
    assert!(log_has(&j, "scanout fetched 65536 of 307200 bytes"));
    let (r, j) = scenario("dmabuf-heap-contiguous-fixed.rhai", 0, None);
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(&j, "reserved heap: 1 DMA segment(s)"));
    assert!(log_has(&j, "scanout fetched 307200 of 307200 bytes"));
}

#[test]
fn the_system_heap_takes_the_largest_chunks_that_fit() {
    // 1 MiB + 2 x 64 KiB + 3 x 4 KiB, plus one byte more than that: one more page.
    let (r, j) = script(
        r#"boot("arm64-noncoherent");
        let p = process("app");
        let b = dma_heap_alloc(p, "system", 1048576 + 2 * 65536 + 3 * 4096);
        print(`chunks ${b.chunks} size ${b.size} heap ${b.heap}`);
        let c = dma_heap_alloc(p, "system", 1048576 + 2 * 65536 + 3 * 4096 + 1);
        print(`chunks ${c.chunks} size ${c.size}`);
        let d = dma_heap_alloc(p, "system", 1);
        print(`one byte: chunks ${d.chunks} size ${d.size}`);
        let e = dma_heap_alloc(p, "linux,cma", 3 * 65536);
        print(`cma: chunks ${e.chunks} size ${e.size} heap ${e.heap}`);"#,
    );
    ok(&r);
    assert!(log_has(&j, "chunks 6 size 1191936 heap system"));
    assert!(log_has(&j, "chunks 7 size 1196032"));
    assert!(log_has(&j, "one byte: chunks 1 size 4096"));
    assert!(log_has(&j, "cma: chunks 1 size 196608 heap reserved"));
}

#[test]
fn heap_and_ioctl_errors_are_the_errnos_linux_returns() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ cma: "4 MiB" });
        let p = process("app");
        print(`nope ${dma_heap_alloc(p, "nope", 4096)}`);
        print(`zero ${dma_heap_alloc(p, "system", 0)}`);
        print(`too big for cma ${dma_heap_alloc(p, "reserved", "8 MiB")}`);
        let b = dma_heap_alloc(p, "system", 4096);
        print(`bad flags ${dma_buf_ioctl_sync(b, 8)}`);
        print(`no rw ${dma_buf_ioctl_sync(b, DMA_BUF_SYNC_START)}`);
        print(`ok ${dma_buf_ioctl_sync(b, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW)}`);
        print(`close ${close(b)}`);
        print(`closed ${dma_buf_ioctl_sync(b, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ)}`);"#,
    );
    assert!(r.error.is_some() || r.exit_code() <= 1);
    assert!(log_has(&j, "nope -2"));
    assert!(log_has(&j, "zero -22"));
    assert!(log_has(&j, "too big for cma -12"));
    assert!(log_has(&j, "bad flags -22"));
    assert!(log_has(&j, "no rw -22"));
    assert!(log_has(&j, "ok 0"));
    assert!(log_has(&j, "close 0"));
    // Closing the only reference released the buffer: the script's next use of it
    // is its own error, exit 2.
    assert_eq!(r.exit_code(), 2, "{:?}", r.error);
    assert!(r
        .error
        .as_ref()
        .unwrap()
        .contains("dma-buf #1 was released"));
    assert_eq!(ids(&j), ["cma-exhausted"]);
}

#[test]
fn the_memory_comes_back_when_fd_attachment_and_mapping_are_gone() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent");
        let d = device("gpu0", #{ max_segment: 4294967295 });
        let p = process("app");
        let free0 = zoneinfo()["DMA"].free;
        let b = dma_heap_alloc(p, "system", "2 MiB");
        let a = dma_buf_attach(b, d);
        let v = p.mmap(b);
        p.write(v, 0, blob(8, 9));
        close(b);                       // the mapping and the attachment hold it
        expect_eq(p.read(v, 0, 8), blob(8, 9), "still there after close");
        print(`after close ${zoneinfo()["DMA"].free < free0}`);
        dma_buf_detach(b, a);
        print(`after detach ${zoneinfo()["DMA"].free < free0}`);
        p.munmap(v);
        print(`after munmap ${zoneinfo()["DMA"].free == free0}`);"#,
    );
    ok(&r);
    assert!(log_has(&j, "after close true"));
    assert!(log_has(&j, "after detach true"));
    assert!(log_has(&j, "after munmap true"));
    assert!(log_has(&j, "dma-buf #1 released"));
}

/// A camera fills the buffer; the application reads it with `sync` before.
fn capture(sync: &str) -> (dmasim::report::Report, serde_json::Value) {
    script(&format!(
        r#"boot("arm64-noncoherent");
        let cam = device("csi0", #{{ max_segment: 4294967295 }});
        let app = process("viewer");
        let b = dma_heap_alloc(app, "system", 65536);
        let v = app.mmap(b);
        app.write(v, 0, blob(64, 1));          // the viewer's last look at it
        let seen = app.read(v, 0, 64);          // the old frame, in the cache
        let a = dma_buf_attach(b, cam);
        let sgt = dma_buf_map_attachment(a, DMA_FROM_DEVICE);  // cleans, keeps the lines
        dev_write_sg(cam, sgt, blob(65536, 7)); // the new frame
        {sync}
        let seen = app.read(v, 0, 64);
        print(`viewer sees ${{seen[0]}}`);
        dma_buf_unmap_attachment(a, sgt, DMA_FROM_DEVICE);
        dma_buf_detach(b, a);"#
    ))
}

#[test]
fn reading_a_captured_frame_needs_sync_start_read() {
    let (r, j) = capture("");
    assert_eq!(r.exit_code(), 1, "{:?}", r.error);
    let f = finding(&j, "stale-cpu-read");
    assert_eq!(f["manifested"], true);
    assert!(f["message"]
        .as_str()
        .unwrap()
        .contains("DMA_BUF_IOCTL_SYNC(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ)"));
    assert!(log_has(&j, "viewer sees 1"));
    for fix in [
        "dma_buf_ioctl_sync(b, DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ);",
        "dma_buf_begin_cpu_access(b, DMA_FROM_DEVICE);",
    ] {
        let (r, j) = capture(fix);
        ok(&r);
        assert!(ids(&j).is_empty(), "{fix}: {:?}", ids(&j));
        assert!(log_has(&j, "viewer sees 7"), "{fix}");
    }
}

#[test]
fn sync_flags_that_do_not_match_an_importer_are_dma_debug_errors() {
    // The display maps for reading only; the compositor syncs read-write.
    let (r, j) = script(
        r#"boot("arm64-noncoherent");
        let lcd = device("lcdif0", #{ max_segment: 4294967295 });
        let app = process("compositor");
        let b = dma_heap_alloc(app, "system", 65536);
        let a = dma_buf_attach(b, lcd);
        let sgt = dma_buf_map_attachment(a, DMA_TO_DEVICE);
        dma_buf_ioctl_sync(b, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW);
        dma_buf_ioctl_sync(b, DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW);
        dma_buf_unmap_attachment(a, sgt, DMA_TO_DEVICE);
        dma_buf_detach(b, a);"#,
    );
    assert_eq!(r.exit_code(), 1, "{:?}", r.error);
    assert!(ids(&j).iter().all(|i| i == "sync-dir-mismatch"));
    let f = finding(&j, "sync-dir-mismatch");
    assert!(f["help"].as_str().unwrap().contains("DMA_BUF_SYNC_WRITE"));
    let hist = f["history"].to_string();
    assert!(
        hist.contains("DMA_BUF_IOCTL_SYNC(START): dma_sync_sgtable_for_cpu"),
        "{hist}"
    );
}

#[test]
fn a_narrow_importer_bounces_and_a_1_mib_chunk_cannot_be_bounced() {
    // 8 GiB: the system heap's pages lie above 4 GiB, out of a 32-bit device's reach.
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ ram: "8 GiB" });
        let d = device("enc0", #{ max_segment: 4294967295 });
        let app = process("app");
        let small = dma_heap_alloc(app, "system", "256 KiB");   // four 64 KiB chunks
        let a = dma_buf_attach(small, d);
        let sgt = dma_buf_map_attachment(a, DMA_TO_DEVICE);
        let v = app.mmap(small);
        dma_buf_ioctl_sync(small, DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE);
        app.write(v, 0, blob(4096, 3));
        dma_buf_ioctl_sync(small, DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE);  // copies to the slots
        expect_eq(dev_read_sg(d, sgt, 4096), blob(4096, 3), "the bounce copy carries the data");
        dma_buf_unmap_attachment(a, sgt, DMA_TO_DEVICE);
        dma_buf_detach(small, a);
        let big = dma_heap_alloc(app, "system", "2 MiB");       // two 1 MiB chunks
        let b = dma_buf_attach(big, d);
        print(`big map ${dma_buf_map_attachment(b, DMA_TO_DEVICE)}`);
        dma_buf_detach(big, b);"#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
    let got = ids(&j);
    assert!(got.contains(&"bounce-buffering".to_string()), "{got:?}");
    assert!(got.contains(&"swiotlb-full".to_string()), "{got:?}");
    assert!(log_has(&j, "big map -5"), "dma_map_sgtable's -EIO");
}

#[test]
fn detaching_a_mapped_attachment_leaks_the_mapping() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent");
        let d = device("gpu0", #{ max_segment: 4294967295 });
        let app = process("app");
        let b = dma_heap_alloc(app, "system", 65536);
        let a = dma_buf_attach(b, d);
        let sgt = dma_buf_map_attachment(a, DMA_BIDIRECTIONAL);
        dma_buf_detach(b, a);
        remove_device(d);"#,
    );
    assert_eq!(r.exit_code(), 1, "{:?}", r.error);
    assert_eq!(ids(&j), ["mapping-leak"]);
}

/// How many frames the V4L2 scenarios' log says arrived intact.
fn intact(j: &serde_json::Value) -> u64 {
    let line = j["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .find(|l| l.contains(" of 6 frames intact"))
        .expect("the intact line");
    let n = line.split("script: ").nth(1).unwrap();
    n.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn v4l2_dmabuf_capture_needs_the_application_to_sync() {
    let mut bitten = 0;
    for seed in 0..12 {
        let (r, j) = scenario("v4l2-dmabuf.rhai", seed, None);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.exit_code(), 1, "seed {seed}: reported even when latent");
        let got = ids(&j);
        assert!(got.iter().all(|i| i == "stale-cpu-read"), "{got:?}");
        let f = finding(&j, "stale-cpu-read");
        assert!(f["message"]
            .as_str()
            .unwrap()
            .contains("DMA_BUF_IOCTL_SYNC"));
        let manifested = j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["manifested"] == true);
        assert_eq!(manifested, intact(&j) < 6, "seed {seed}");
        bitten += u32::from(manifested);
    }
    assert!(bitten >= 8, "{bitten}/12 seeds showed a stale frame");
    for preset in ["arm64-noncoherent", "arm64-coherent", "arm32", "rpi4"] {
        for seed in 0..3 {
            let (r, j) = scenario("v4l2-dmabuf-fixed.rhai", seed, Some(preset));
            ok(&r);
            assert!(ids(&j).is_empty(), "{preset} {seed}: {:?}", ids(&j));
            assert_eq!(intact(&j), 6);
        }
    }
}

#[test]
fn v4l2_dma_contig_imports_only_one_contiguous_dma_range() {
    // The system heap's chunks: -EFAULT without an IOMMU, one IOVA range behind it.
    let src = |iommu: &str| {
        format!(
            r#"boot("arm64-noncoherent", #{{ iommu: "{iommu}" }});
            let csi = device("csi0", #{{ max_segment: 4294967295 }});
            let app = process("app");
            let q = v4l2_open(csi, #{{ alloc: "dma-contig" }});
            v4l2_reqbufs_dmabuf(q, 3, "192 KiB");
            let b = dma_heap_alloc(app, "system", "192 KiB");
            print(`qbuf ${{v4l2_qbuf_dmabuf(q, 0, b)}} attachments ${{b.attachments}}`);"#
        )
    };
    let (r, j) = script(&src("none"));
    ok(&r);
    assert!(log_has(&j, "qbuf -14 attachments 0"), "{:?}", j["log"]);
    assert!(log_has(
        &j,
        "vb2-dc: contiguous chunk is too small 65536/196608"
    ));
    let (r, j) = script(&src("smmu"));
    ok(&r);
    assert!(log_has(&j, "qbuf 0 attachments 1"));
}

#[test]
fn v4l2_dmabuf_qbuf_errors_and_the_import_lifetime() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent");
        let csi = device("csi0");
        let app = process("app");
        let q = v4l2_open(csi, #{ alloc: "dma-sg" });
        let small = dma_heap_alloc(app, "system", 4096);
        print(`mmap queue ${v4l2_qbuf_dmabuf(q, 0, small)}`);
        v4l2_reqbufs_dmabuf(q, 3, 65536);
        print(`too small ${v4l2_qbuf_dmabuf(q, 0, small)}`);
        let a = dma_heap_alloc(app, "system", 65536);
        let b = dma_heap_alloc(app, "system", 65536);
        print(`first ${v4l2_qbuf_dmabuf(q, 0, a)} ${a.attachments}`);
        print(`again ${v4l2_qbuf_dmabuf(q, 0, a)}`);
        v4l2_streamon(q);
        v4l2_streamoff(q);
        print(`same fd ${v4l2_qbuf_dmabuf(q, 0, a)} ${a.attachments}`);
        v4l2_streamoff(q);
        print(`other fd ${v4l2_qbuf_dmabuf(q, 0, b)} ${a.attachments} ${b.attachments}`);
        v4l2_streamoff(q);
        close(small);
        let c = dma_heap_alloc(app, "system", 65536);
        close(c);
        let d = dma_heap_alloc(app, "system", 65536);
        v4l2_reqbufs_dmabuf(q, 0, 65536);
        print(`released ${b.attachments}`);"#,
    );
    ok(&r);
    assert!(log_has(&j, "mmap queue -22"));
    assert!(log_has(&j, "too small -22"));
    assert!(log_has(&j, "first 0 1"));
    assert!(log_has(&j, "again -22"), "not dequeued");
    assert!(log_has(&j, "same fd 0 1"), "kept attached");
    assert!(log_has(&j, "other fd 0 0 1"), "the old one detached");
    assert!(log_has(&j, "released 0"));
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
}

#[test]
fn v4l2_buffer_pfn_of_an_imported_buffer_is_an_error_not_a_panic() {
    let (r, _) = script(
        r#"boot("arm64-noncoherent");
        let q = v4l2_open(device("csi0"), #{ alloc: "dma-sg" });
        v4l2_reqbufs_dmabuf(q, 3, 65536);
        let pfn = v4l2_buffer_pfn(q, 0);"#,
    );
    assert_eq!(r.exit_code(), 2);
    assert!(r.error.unwrap().contains("no kernel memory of its own"));
}

/// A kernel importer reads a captured frame through its vmap with `access`
/// before the second read.
fn kernel_reader(access: &str) -> (dmasim::report::Report, serde_json::Value) {
    script(&format!(
        r#"boot("arm64-noncoherent");
        let cam = device("csi0", #{{ max_segment: 4294967295 }});
        let app = process("app");
        let b = dma_heap_alloc(app, "system", 65536);
        let a = dma_buf_attach(b, cam);
        let sgt = dma_buf_map_attachment(a, DMA_FROM_DEVICE);
        let k = dma_buf_vmap(b);
        expect_eq(dma_buf_vmap(b).va, k.va, "one vmap, counted");
        dma_buf_begin_cpu_access(b, DMA_FROM_DEVICE);
        let old = cpu_read(k, 0, 64);                // frame 0: zeros, now cached
        dma_buf_end_cpu_access(b, DMA_FROM_DEVICE);
        dev_write_sg(cam, sgt, blob(65536, 5));
        {access}
        print(`kernel sees ${{cpu_read(k, 0, 64)[0]}}`);
        dma_buf_vunmap(b, k);
        dma_buf_vunmap(b, k);
        dma_buf_unmap_attachment(a, sgt, DMA_FROM_DEVICE);
        dma_buf_detach(b, a);"#
    ))
}

#[test]
fn a_kernel_importer_reads_through_its_vmap_after_begin_cpu_access() {
    let (r, j) = kernel_reader("");
    assert_eq!(r.exit_code(), 1, "{:?}", r.error);
    assert!(log_has(&j, "kernel sees 0"), "the cached zeros");
    let f = finding(&j, "stale-cpu-read");
    assert_eq!(f["manifested"], true);
    let (r, j) = kernel_reader("dma_buf_begin_cpu_access(b, DMA_FROM_DEVICE);");
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(&j, "kernel sees 5"));
    // One vunmap more than vmaps finds no mapping left.
    let (r, _) = script(
        r#"boot("arm64-noncoherent");
        let b = dma_heap_alloc(process("app"), "system", 4096);
        let k = dma_buf_vmap(b);
        dma_buf_vunmap(b, k);
        dma_buf_vunmap(b, k);"#,
    );
    assert_eq!(r.exit_code(), 2);
    assert!(r.error.unwrap().contains("is not the vmap of dma-buf #1"));
}

#[test]
fn a_coherent_camera_s_exported_frame_is_stale_for_a_non_coherent_display() {
    let (r, j) = scenario("v4l2-expbuf-coherency.rhai", 0, None);
    assert_eq!(r.exit_code(), 1, "{:?}", r.error);
    assert_eq!(ids(&j), ["stale-device-read"]);
    let f = finding(&j, "stale-device-read");
    assert_eq!(f["manifested"], true);
    assert!(f["message"]
        .as_str()
        .unwrap()
        .contains("DMA_BUF_IOCTL_SYNC changes nothing"));
    assert!(f["help"].as_str().unwrap().contains("dma-buf heap"));
    assert!(log_has(&j, "128 of 128 overlay lines missing"));
    for seed in 0..3 {
        let (r, j) = scenario("v4l2-expbuf-coherency-fixed.rhai", seed, None);
        ok(&r);
        assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    }
}

#[test]
fn an_exported_vb2_buffer_outlives_its_queue_and_keeps_its_attributes() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ iommu: "smmu" });
        let cam = device("csi0");                          // behind the SMMU
        let lcd = device("lcdif0", #{ iommu: false, max_segment: 4294967295 });
        let app = process("app");
        let q = v4l2_open(cam, #{ alloc: "dma-contig" });
        v4l2_reqbufs(q, 3, "256 KiB");
        print(`userptr-style index ${v4l2_expbuf(q, 7)}`);
        let fb = v4l2_expbuf(q, 1);
        let a = dma_buf_attach(fb, lcd);
        let t = dma_buf_map_attachment(a, DMA_BIDIRECTIONAL);
        print(`display segments ${t.nents}`);             // scattered without its IOMMU
        let v = app.mmap(fb);
        let free0 = zoneinfo()["DMA"].free;
        v4l2_reqbufs(q, 0, "256 KiB");                   // the dma-buf keeps buffer 1
        print(`freed ${zoneinfo()["DMA"].free - free0}`);
        dma_buf_unmap_attachment(a, t, DMA_BIDIRECTIONAL);
        dma_buf_detach(fb, a);
        app.munmap(v);
        close(fb);"#,
    );
    ok(&r);
    assert!(log_has(&j, "userptr-style index -22"));
    let segs: u64 = j["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .find_map(|l| l.split("display segments ").nth(1))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        segs > 1,
        "IOVA-contiguous for the camera, scattered for the display"
    );
    // Two of the three 256 KiB buffers went back; the exported one stayed.
    assert!(log_has(&j, "freed 524288"), "{:?}", j["log"]);
    assert!(log_has(&j, "vb2: buffer freed with its last dma-buf #1"));
}
