//! V4L2 / videobuf2 capture (issue 7): the capture loop, the CMA shortage on
//! REQBUFS, and the errno values of calls out of order.

mod common;

use common::{ids, log_has, ok, scenario, script};

#[test]
fn a_30_frame_capture_loop_is_intact_and_clean_on_every_seed() {
    for preset in [
        Some("arm64-noncoherent"),
        Some("arm64-coherent"),
        Some("x86-64"),
    ] {
        for seed in 0..10 {
            let (r, j) = scenario("v4l2-capture.rhai", seed, preset);
            ok(&r);
            assert_eq!(r.expectations.passed, 10, "{preset:?} {seed}");
            assert!(ids(&j).is_empty(), "{preset:?} {seed}: {:?}", ids(&j));
        }
    }
}

#[test]
fn dma_contig_with_too_little_cma_allocates_fewer_buffers_or_fails() {
    // Frames over 4 MiB (MAX_PAGE_ORDER) can only come from CMA; a 4 MiB one could
    // still come from the buddy allocator, as in Linux.
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ cma: "16 MiB" });
        let cam = device("csi0");
        let q = v4l2_open(cam, #{ alloc: "dma-contig" });
        expect_eq(v4l2_reqbufs(q, 4, "8 MiB"), -ENOMEM, "two 8 MiB buffers fit in 16 MiB of CMA, the driver needs three");
        expect_eq(v4l2_reqbufs(q, 4, "5 MiB"), 3, "5 MiB buffers: three of the four asked for");"#,
    );
    ok(&r);
    assert!(
        ids(&j).contains(&"cma-exhausted".to_string()),
        "{:?}",
        ids(&j)
    );
    assert!(r.log.iter().any(|l| l.contains("could allocate 2")));
    assert!(r.log.iter().any(|l| l.contains("could allocate 3")));
}

#[test]
fn ioctls_out_of_order_return_linux_errnos() {
    let (r, _) = script(
        r#"boot("arm64-coherent");
        let cam = device("csi0");
        let p = process("app");
        let q = v4l2_open(cam, #{ alloc: "dma-sg" });
        expect_eq(v4l2_streamon(q), -EINVAL, "STREAMON without buffers");
        expect_eq(v4l2_qbuf(q, 0), -EINVAL, "QBUF of a buffer not allocated");
        expect_eq(v4l2_dqbuf(q), -EINVAL, "DQBUF while not streaming");
        expect_eq(v4l2_reqbufs(q, 4, 4096), 4, "REQBUFS");
        expect_eq(v4l2_querybuf(q, 9), -EINVAL, "QUERYBUF of index 9");
        expect_eq(v4l2_querybuf(q, 1), 4096, "QUERYBUF's length is planes[0].length");
        expect_eq(v4l2_querybuf_offset(q, 1), 1 << 15, "the mmap offset cookie of buffer 1");
        expect_eq(v4l2_qbuf(q, 0), 0, "QBUF");
        expect_eq(v4l2_qbuf(q, 0), -EINVAL, "QBUF twice");
        expect_eq(v4l2_streamon(q), 0, "STREAMON");
        expect_eq(v4l2_streamon(q), 0, "STREAMON again is a no-op");
        expect_eq(v4l2_dqbuf(q), -11, "nothing captured yet: -EAGAIN");
        expect_eq(v4l2_reqbufs(q, 2, 4096), -EBUSY, "REQBUFS while streaming");
        expect_eq(v4l2_capture(q, pattern("inc", 64)), -EIO, "one buffer queued: the driver has not started (needs two)");
        expect_eq(v4l2_qbuf(q, 1), 0, "second buffer starts streaming");
        expect_eq(v4l2_capture(q, pattern("inc", 64)), 0, "buffer 0 filled");
        expect_eq(v4l2_dqbuf(q), 0, "DQBUF");
        let m = v4l2_mmap(q, p, 0);
        expect_eq(p.read(m, 0, 64), pattern("inc", 64), "the frame through the mmap");
        expect_eq(v4l2_streamoff(q), 0, "STREAMOFF");
        expect_eq(v4l2_dqbuf(q), -EINVAL, "DQBUF after STREAMOFF");"#,
    );
    ok(&r);
    assert_eq!(r.expectations.passed, 20);
}

#[test]
fn userptr_needs_an_iommu_on_dma_contig_and_captures_into_the_process_memory() {
    for preset in [
        Some("arm64-noncoherent"),
        Some("arm64-coherent"),
        Some("x86-64"),
    ] {
        for seed in 0..6 {
            let (r, j) = scenario("v4l2-userptr.rhai", seed, preset);
            ok(&r);
            assert_eq!(r.expectations.passed, 11, "{preset:?} {seed}");
            assert!(ids(&j).is_empty(), "{preset:?} {seed}: {:?}", ids(&j));
            assert_eq!(r.exit_code(), 0);
            assert!(log_has(
                &j,
                "csi0: vb2-dc: contiguous mapping is too small 4096/65536"
            ));
            // Ten frames written by the device into the application's pages.
            assert_eq!(j["stats"]["dma_bytes"], 10 * 65536);
        }
    }
}

#[test]
fn userptr_on_dma_sg_takes_scattered_pages_without_an_iommu() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent");
        let app = process("cam");
        let b = app.malloc(32768);
        let cam = device("csi0");
        let q = v4l2_open(cam, #{ alloc: "dma-sg" });
        expect_eq(v4l2_reqbufs_userptr(q, 3, 32768), 3, "three");
        for i in 0..3 { expect_eq(v4l2_qbuf_userptr(q, i, app, app.malloc(32768)), 0, "queued"); }
        v4l2_streamon(q);
        let frame = pattern("random", 32768, 5);
        let i = v4l2_capture(q, frame);
        expect_eq(v4l2_dqbuf(q), i, "done");
        v4l2_streamoff(q);
        v4l2_reqbufs_userptr(q, 0, 32768);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert_eq!(j["stats"]["dma_bytes"], 32768);
}

#[test]
fn userptr_qbuf_returns_the_errno_videobuf2_does() {
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ iommu: "smmu" });
        let app = process("cam");
        let b = app.malloc(65536);
        let cam = device("csi0");
        let q = v4l2_open(cam, #{ alloc: "dma-contig" });
        expect_eq(v4l2_qbuf_userptr(q, 0, app, b), -EINVAL, "an MMAP queue takes no user pointer");
        expect_eq(v4l2_reqbufs_userptr(q, 3, 65536), 3, "three");
        expect_eq(v4l2_qbuf(q, 0), -EINVAL, "a USERPTR buffer needs its pointer");
        expect_eq(v4l2_mmap(q, app, 0), -EINVAL, "nothing to mmap");
        expect_eq(v4l2_qbuf_userptr(q, 0, app, b.va + 64, 65536 - 128), -EINVAL, "shorter than the format");
        expect_eq(v4l2_reqbufs_userptr(q, 3, 4096), 3, "smaller frames");
        expect_eq(v4l2_qbuf_userptr(q, 0, app, b.va + 32, 4096), -EINVAL, "not aligned to dma_get_cache_alignment(), 64");
        expect_eq(v4l2_qbuf_userptr(q, 0, app, 0x1000, 4096), -EFAULT, "not the process's memory");
        expect_eq(v4l2_qbuf_userptr(q, 0, app, b.va + 64, 4096), 0, "64-byte aligned is fine (cache_line_size, not ARCH_DMA_MINALIGN)");
        expect_eq(v4l2_qbuf_userptr(q, 0, app, b), -EINVAL, "already queued");
        expect_eq(v4l2_qbuf_userptr(q, 7, app, b), -EINVAL, "no such buffer");
        v4l2_reqbufs_userptr(q, 0, 0);"#,
    );
    ok(&r);
    assert_eq!(r.expectations.passed, 11);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
    assert!(log_has(&j, "user data must be aligned to 64 bytes"));
}

#[test]
fn a_new_user_pointer_releases_the_old_pages_without_discarding_what_the_cpu_wrote() {
    // put_userptr unmaps with DMA_ATTR_SKIP_CPU_SYNC: on a non-coherent port an
    // invalidate there would throw away what the application stored after DQBUF.
    let (r, j) = script(
        r#"boot("arm64-noncoherent", #{ iommu: "smmu" });
        let app = process("cam");
        let a = app.malloc(16384);
        let b = app.malloc(16384);
        let cam = device("csi0");
        let q = v4l2_open(cam, #{ alloc: "dma-contig" });
        v4l2_reqbufs_userptr(q, 3, 16384);
        for i in 0..3 { v4l2_qbuf_userptr(q, i, app, if i == 0 { a } else { app.malloc(16384) }); }
        v4l2_streamon(q);
        let i = v4l2_capture(q, pattern("random", 16384, 1));
        expect_eq(v4l2_dqbuf(q), 0, "buffer 0 done");
        app.write(a, 0, pattern("inc", 256));              // the application edits it
        expect_eq(v4l2_qbuf_userptr(q, 0, app, b), 0, "index 0 now uses b");
        expect_eq(app.read(a, 0, 256), pattern("inc", 256), "a keeps what the CPU wrote");
        v4l2_streamoff(q);
        v4l2_reqbufs_userptr(q, 0, 16384);"#,
    );
    ok(&r);
    assert!(ids(&j).is_empty(), "{:?}", ids(&j));
}

#[test]
fn userptr_pages_stay_pinned_while_queued_and_are_unpinned_at_release() {
    use dmasim::config::{NoiseConfig, PlatformConfig};
    use dmasim::kernel::device::Device;
    use dmasim::system::{RunOptions, System};
    use dmasim::uapi::v4l2::Vb2Alloc;
    let mut p = PlatformConfig::preset("arm64-coherent").unwrap();
    p.noise = NoiseConfig::OFF;
    p.iommu = "smmu".into();
    let mut sys = System::boot(p, RunOptions::default()).unwrap();
    let pid = sys.process_new("cam");
    let va = sys.mmap(pid, 1 << 20, false).unwrap();
    let cam = sys.add_device(Device::new("csi0", true, 1000, 0));
    let q = sys.v4l2_open(cam, Vb2Alloc::Contig).unwrap();
    assert_eq!(sys.v4l2_reqbufs_userptr(q, 3, 65536).unwrap(), 3);
    assert_eq!(sys.v4l2_qbuf_userptr(q, 0, pid, va, 65536).unwrap(), 0);
    assert_eq!(sys.kernel.pins.len(), 1);
    assert_eq!(sys.kernel.pins.values().next().unwrap().pfns.len(), 16);
    assert_eq!(sys.v4l2_reqbufs_userptr(q, 0, 0).unwrap(), 0);
    assert!(sys.kernel.pins.is_empty(), "REQBUFS(0) unpins");
    assert!(sys.kernel.sg_tables.is_empty(), "and drops the tables");
}
