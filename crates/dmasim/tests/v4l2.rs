//! V4L2 / videobuf2 capture (issue 7): the capture loop, the CMA shortage on
//! REQBUFS, and the errno values of calls out of order.

mod common;

use common::{ids, ok, scenario, script};

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
        expect_eq(v4l2_querybuf(q, 1), 1 << 15, "the mmap offset cookie of buffer 1");
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
    assert_eq!(r.expectations.passed, 19);
}
