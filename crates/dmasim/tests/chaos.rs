//! No panic on input: random, often wrong, sequences of script calls with hostile
//! arguments must end in a report with exit 0, 1 or 2 — never a panic or a hang.

use dmasim::hw::rng::SimRng;
use dmasim::script::{run_source, ScriptOptions};

/// Values a correct driver could pass, then hostile ones (the last `BAD`).
const SIZES: &[&str] = &[
    "0",
    "1",
    "63",
    "64",
    "100",
    "4096",
    "4097",
    "65536",
    "\"4 MiB\"",
    "\"5 MiB\"",
    "\"900 TiB\"",
    "-1",
    "\"x\"",
];
const DIRS: &[&str] = &["0", "1", "2", "0", "1", "2", "3", "7", "-1"];
const BAD: usize = 3;

/// Mostly sensible values, sometimes hostile ones, so runs get deep before they fail.
fn pick<'a>(r: &mut SimRng, xs: &[&'a str]) -> &'a str {
    if r.below(10) == 0 {
        xs[r.below(xs.len())]
    } else {
        xs[r.below(xs.len() - BAD)]
    }
}

fn random_script(seed: u64) -> String {
    let mut r = SimRng::new(seed);
    let preset = [
        "arm64-noncoherent",
        "arm64-coherent",
        "x86-64",
        "rpi4",
        "arm32",
    ][r.below(5)];
    let swiotlb = ["\"1 MiB\"", "\"off\"", "\"64 MiB\"", "0"][r.below(4)];
    let iommu = ["\"none\"", "\"smmu\"", "\"passthrough\""][r.below(3)];
    let mut s = format!(
        "boot(\"{preset}\", #{{ hugepages: 2, swiotlb: {swiotlb}, swiotlb_force: {}, iommu: {iommu}, iommu_strict: {}, vfio_noiommu: true }});\nlet d = device(\"d\", #{{ coherent: {} }});\nlet bufs = [];\nlet addrs = [0];\nlet p = process(\"p\");\nlet ubufs = [];\nlet pins = [];\nlet sgs = [];\nlet pools = [];\nlet blks = [];\nlet dbs = [];\n",
        r.below(3) == 0,
        r.below(2) == 0,
        r.below(2) == 1
    );
    for _ in 0..40 {
        let size = pick(&mut r, SIZES);
        let dir = pick(&mut r, DIRS);
        let line = match r.below(42) {
            37 => format!(
                "let nc = dma_alloc_noncontiguous(d, {size}, {dir}); if nc != () {{ let v = dma_vmap_noncontiguous(d, {size}, nc); dma_sync_sgtable_for_device(d, nc, {dir}); let x = dev_read_sg(d, nc, 64); if {} {{ dma_free_noncontiguous(d, {}, nc, {dir}); }} }}",
                r.below(2) == 0,
                pick(&mut r, SIZES)
            ),
            39 => format!(
                "let db = dma_heap_alloc(p, \"{}\", {size}); if type_of(db) == \"DmaBuf\" {{ dbs.push(db); let at = dma_buf_attach(db, d); let t = dma_buf_map_attachment(at, {dir}); let v = p.mmap(db); if type_of(v) == \"Buffer\" {{ p.write(v, 0, pattern(\"inc\", 16)); }} let e = dma_buf_ioctl_sync(db, {}); if type_of(t) == \"SgTable\" {{ let x = dev_read_sg(d, t, 64); if {} {{ dma_buf_unmap_attachment(at, t, {dir}); }} }} if {} {{ dma_buf_detach(db, at); }} }}",
                ["system", "reserved", "linux,cma", "none"][r.below(4)],
                pick(&mut r, &["0", "1", "2", "3", "4", "5", "6", "7", "8", "-1"]),
                r.below(2) == 0,
                r.below(2) == 0
            ),
            41 => format!(
                "if bufs.len() > 0 {{ let a = dma_map_{}_attrs(d, bufs[-1], {dir}, {}); addrs.push(a); dma_sync_single_range_for_{}(d, a, {}, {size}, {dir}); if {} {{ dma_unmap_single_attrs(d, a, {size}, {dir}, 32); }} }}",
                ["single", "page"][r.below(2)],
                pick(&mut r, &["32", "0", "34", "2", "-1", "0x7fffffff"]),
                ["cpu", "device"][r.below(2)],
                pick(&mut r, &["0", "64", "100", "-64", "0x100000"]),
                r.below(2) == 0
            ),
            40 => format!(
                "if dbs.len() > 0 {{ let e = {}; }}",
                [
                    "close(dbs.pop())",
                    "dma_buf_begin_cpu_access(dbs[-1], 2)",
                    "dma_buf_end_cpu_access(dbs[-1], 1)",
                    "dma_buf_ioctl_sync(dbs[-1], 6)",
                    "{ let q = v4l2_open(d, #{ alloc: \"dma-contig\" }); let n = v4l2_reqbufs_dmabuf(q, 3, 4096); let k = v4l2_qbuf_dmabuf(q, 0, dbs[-1]); v4l2_qbuf_dmabuf(q, 1, dbs[0]); v4l2_streamon(q); v4l2_capture(q, pattern(\"inc\", 64)); v4l2_dqbuf(q); v4l2_reqbufs_dmabuf(q, 0, 4096) }",
                    "{ let q = v4l2_open(d, #{ alloc: \"dma-sg\" }); if v4l2_reqbufs(q, 3, 8192) > 0 { let e = v4l2_expbuf(q, 1); if type_of(e) == \"DmaBuf\" { dbs.push(e); let a = dma_buf_attach(e, d); let t = dma_buf_map_attachment(a, 0); dma_buf_ioctl_sync(e, 7); } v4l2_reqbufs(q, 0, 8192); } }"
                ][r.below(6)]
            ),
            38 => format!(
                "if bufs.len() > 0 {{ let u = {}; let x = p.read(u, 0, 8); }}",
                [
                    "remap_pfn_range(p, bufs[-1])",
                    "remap_pfn_range(p, bufs[-1], \"writecombine\")",
                    "dma_mmap_coherent(d, p, bufs[-1])",
                    "remap_pfn_range(p, bufs[-1], \"bogus\")"
                ][r.below(4)]
            ),
            34 => format!(
                "let pl = dma_pool_create(\"p\", d, {size}, {}, {}); if pl != () {{ pools.push(pl); let k = dma_pool_{}alloc(pl, GFP_KERNEL); if k != () {{ blks.push(k); addrs.push(k.dma); }} }}",
                pick(&mut r, &["0", "8", "64", "4096", "48", "-8"]),
                pick(&mut r, &["0", "4096", "1024", "100", "-1"]),
                ["", "z"][r.below(2)]
            ),
            35 => format!(
                "if pools.len() > 0 {{ if blks.len() > 0 {{ dma_pool_free(pools[-1], blks.pop()); }} if {} {{ dma_pool_destroy(pools.pop()); }} }}",
                r.below(3) == 0
            ),
            36 => format!(
                "if bufs.len() > 0 {{ let t = sg_from_buffer(bufs[-1]); let e = dma_map_sgtable(d, t, {dir}); if e == 0 {{ dma_sync_sgtable_for_cpu(d, t, {dir}); let n = t.nents + t.orig_nents; dma_unmap_sgtable(d, t, {dir}); }} }}"
            ),
            30 => format!(
                "let q = v4l2_open(d, #{{ alloc: \"{}\" }}); let n = v4l2_reqbufs(q, {}, {size}); v4l2_qbuf(q, 0); v4l2_qbuf(q, 1); v4l2_streamon(q); let k = v4l2_capture(q, pattern(\"inc\", 64)); let x = v4l2_dqbuf(q); v4l2_streamoff(q);",
                ["dma-contig", "dma-sg"][r.below(2)],
                pick(&mut r, &["4", "1", "0", "40", "-2"])
            ),
            31 => format!(
                "let c = vfio_open(d, p); if c > 0 {{ let u = p.malloc({size}); let m = vfio_map_dma(c, p, u, {}, #{{ read: true, write: true }}); let z = vfio_unmap_dma(c, {}, {size}); }}",
                pick(&mut r, &["0x100000", "4096", "0", "-4096", "0x1000000000000"]),
                pick(&mut r, &["0x100000", "0", "123"])
            ),
            33 => format!(
                "let q = pmd_open(d, p, #{{ iova: \"{}\", ring: {}, buf_size: {} }}); if q > 0 {{ let ok = pmd_inject(q, pattern(\"inc\", {})); let got = pmd_rx_burst(q, {}); let st = pmd_stats(q); }} if ubufs.len() > 0 {{ let ns = netdev_rx(d, p, ubufs[-1], pattern(\"inc\", 16)); }}",
                ["pa", "va", "xx"][r.below(3)],
                pick(&mut r, &["8", "64", "0", "5000", "-1"]),
                pick(&mut r, &["64", "2048", "100", "0", "1000000"]),
                pick(&mut r, &["1", "64", "0", "3000"]),
                pick(&mut r, &["0", "32", "-1", "1000000"])
            ),
            32 => format!(
                "if ubufs.len() > 0 {{ let w = chardev_write(d, p, ubufs[-1]); let rr = chardev_read(d, p, ubufs[-1], pattern(\"inc\", {})); }}",
                pick(&mut r, &["16", "0", "4096", "1"])
            ),
            28 => format!(
                "let t = stream_{}_device(d, {size}, {});",
                ["to", "from"][r.below(2)],
                pick(&mut r, &["1", "3", "17", "0", "-4", "2000000"])
            ),
            29 => format!("dma_set_mask_and_coherent(d, {}); let m = dma_max_mapping_size(d);", pick(&mut r, &["64", "32", "40", "20", "0", "99"])),
            16 => format!("ubufs.push(p.malloc({size}));"),
            17 => "if ubufs.len() > 0 { p.write(ubufs[-1], 0, pattern(\"inc\", 16)); }".into(),
            18 => "if ubufs.len() > 0 { pins.push(pin_user_pages(p, ubufs[-1], #{ longterm: true })); }".into(),
            19 => "if pins.len() > 0 { unpin_user_pages(pins.pop()); }".into(),
            20 => "compact();".into(),
            21 => "if ubufs.len() > 0 { let x = dev_read(d, pagemap(p, ubufs[-1].va) * PAGE_SIZE, 64); }".into(),
            22 => "if pins.len() > 0 { let t = sg_from_pages(pins[-1]); let n = dma_map_sg(d, t, 1); sgs.push(t); }".into(),
            23 => "if sgs.len() > 0 { dma_unmap_sg(d, sgs.pop(), 1); }".into(),
            24 => format!("let v = vmalloc({size}); if v != () {{ bufs.push(v); }}"),
            25 => "if ubufs.len() > 0 { p.munmap(ubufs.pop()); }".into(),
            26 => format!("reclaim({size});"),
            27 => format!("let h = p.mmap({size}, #{{ hugetlb: true }}); if type_of(h) == \"Buffer\" {{ ubufs.push(h); }}"),
            0 => format!("let b = kmalloc({size}); if b != () {{ bufs.push(b); }}"),
            1 => format!("let b = dma_alloc_coherent(d, {size}); if b != () {{ bufs.push(b); addrs.push(b.dma); }}"),
            2 => format!("if bufs.len() > 0 {{ let a = dma_map_single(d, bufs[-1], {dir}); addrs.push(a); }}"),
            3 => format!("dma_unmap_single(d, addrs[-1], {size}, {dir});"),
            4 => format!("dma_sync_single_for_cpu(d, addrs[-1], {size}, {dir});"),
            5 => format!("dma_sync_single_for_device(d, addrs[-1], {size}, {dir});"),
            6 => format!("let x = dev_read(d, addrs[-1], {size});"),
            7 => format!("dev_write(d, addrs[-1], pattern(\"random\", {size}));"),
            8 => "if bufs.len() > 0 { cpu_fill(bufs[-1], 7); }".into(),
            9 => format!("if bufs.len() > 0 {{ let x = cpu_read(bufs[-1], 0, {size}); }}"),
            10 => "if bufs.len() > 0 { kfree(bufs.pop()); }".into(),
            11 => "evict_all(); prefetch(if bufs.len() > 0 { bufs[0] } else { kmalloc(64) });".into(),
            12 => format!("run_for({});", pick(&mut r, &["\"1 us\"", "\"50 us\"", "100", "\"2 ms\"", "\"1e9 s\"", "-5", "\"soon\""])),
            13 => format!("dma_set_mask(d, {dir}{dir});"),
            14 => format!("let x = dev_read(d, {}, 64);", r.next_u64() as i64),
            _ => format!("dma_free_coherent(d, {size}, if bufs.len() > 0 {{ bufs[-1] }} else {{ kmalloc(8) }});"),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s
}

#[test]
fn random_call_sequences_never_panic() {
    for seed in 0..300 {
        let text = random_script(seed);
        let opts = ScriptOptions {
            seed,
            max_operations: 200_000,
            ..ScriptOptions::default()
        };
        let r = run_source("chaos.rhai", &text, &opts);
        let code = r.exit_code();
        assert!((0..=2).contains(&code), "seed {seed}");
        if code == 2 {
            assert!(
                r.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("chaos.rhai")),
                "seed {seed}: {:?}\n{text}",
                r.error
            );
        }
        // The report always serializes.
        assert!(r.to_json().contains("dmasim.report/v1"));
    }
}
