//! A structured fuzzer of the script API (`examples/fuzz.rs`, `tests/fuzz.rs`).
//!
//! Each seed gives a script: a boot with random overrides at their limits, then a
//! sequence of API calls over pools of the objects made so far (buffers, devices,
//! processes, scatterlists, pins, dma-bufs, VFIO containers, DMA addresses), with
//! extreme sizes, offsets and directions, and stateful misuse: objects used after
//! their release, across processes and devices, freed twice. Most calls sit in a
//! `try` so that a refused call does not end the run before the next one.
//!
//! The properties checked on each script ([`check`]): the run ends in a report with
//! exit 0, 1 or 2 — never a panic of dmasim ("internal error") — within bounded
//! host time, and two runs of the same seed give byte-identical JSON. A failing
//! script is reduced statement by statement ([`minimise`]) to one that still fails
//! the same way.

use crate::hw::rng::SimRng;
use crate::script::{run_source, ScriptOptions};

/// Limits of a fuzz run: small, so that a generated loop or allocation cannot
/// take the host down and each execution stays short. The host-memory cap (16 MiB)
/// is twice the largest size the menu allocates (8 MiB, above the kmalloc and
/// swiotlb limits), so that two such buffers reach it: the cap's path is exercised
/// without each execution zeroing hundreds of MiB.
pub fn fuzz_options(seed: u64) -> ScriptOptions {
    ScriptOptions {
        seed,
        memory_cap: 16 << 20,
        max_operations: 200_000,
        max_sim_time_ns: 10_000_000_000,
        check_invariants: true,
        ..ScriptOptions::default()
    }
}

/// A generated script: its boot line and its statements (kept apart so that the
/// minimiser can drop statements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Pool declarations and `boot(...)`.
    pub prelude: String,
    /// One statement per entry.
    pub stmts: Vec<String>,
}

impl Program {
    /// The script text.
    pub fn text(&self) -> String {
        let mut s = self.prelude.clone();
        for st in &self.stmts {
            s.push_str(st);
            s.push('\n');
        }
        s
    }
}

const SIZES: &[&str] = &[
    "0",
    "1",
    "63",
    "64",
    "100",
    "4095",
    "4096",
    "4097",
    "8192",
    "65536",
    "1048576",
    "\"2 MiB\"",
    "\"8 MiB\"",
    "8388609",
    "1099511627776",
    "-1",
    "9223372036854775807",
];
const OFFSETS: &[&str] = &[
    "0",
    "1",
    "64",
    "1500",
    "4095",
    "4096",
    "-1",
    "9223372036854775807",
];
const DIRS: &[&str] = &[
    "DMA_BIDIRECTIONAL",
    "DMA_TO_DEVICE",
    "DMA_FROM_DEVICE",
    "3",
    "-1",
];
const PRESETS: &[&str] = &[
    "arm64-noncoherent",
    "arm64-coherent",
    "rpi4",
    "x86-64",
    "arm32",
    "no-such-preset",
];
const OVERRIDES: &[&str] = &[
    "iommu: \"smmu\"",
    "iommu: \"none\"",
    "iommu_strict: false",
    "swiotlb: \"off\"",
    "swiotlb: \"4 KiB\"",
    "swiotlb: \"64 KiB\"",
    "swiotlb: \"1 GiB\"",
    "swiotlb_force: true",
    "swiotlb_areas: 1",
    "swiotlb_areas: 64",
    "ram: \"64 MiB\"",
    "ram: \"16 GiB\"",
    "ram: 0",
    "cma: 0",
    "cma: \"32 MiB\"",
    "cma: \"1 TiB\"",
    "hugepages: 4",
    "hugepages: 100000",
    "zone_dma_bits: 20",
    "zone_dma_bits: 64",
    "cpus: 1",
    "cpus: 64",
    "cpus: 0",
    "noise: \"off\"",
    "noise: #{ evict: 1.0, prefetch: 1.0, migrate: 1.0 }",
    "bus_dma_limit: 0xffffffff",
    "vfio_noiommu: true",
    "write_streaming: true",
];

fn pick<'a>(r: &mut SimRng, xs: &[&'a str]) -> &'a str {
    xs[r.below(xs.len())]
}

/// `POOL[k % POOL.len()]` for a random k, guarded by the pool not being empty.
fn from(r: &mut SimRng, pool: &str) -> String {
    format!("{pool}[{} % {pool}.len()]", r.below(1 << 16))
}

/// One statement of the menu.
fn statement(r: &mut SimRng) -> String {
    let size = pick(r, SIZES);
    let off = pick(r, OFFSETS);
    let dir = pick(r, DIRS);
    let (b, d, p, s, a) = (
        from(r, "B"),
        from(r, "D"),
        from(r, "P"),
        from(r, "S"),
        from(r, "A"),
    );
    let (b2, d2, p2) = (from(r, "B"), from(r, "D"), from(r, "P"));
    let body = match r.below(40) {
        0 => format!("B.push(kmalloc({size}));"),
        1 => format!("B.push(vmalloc({size}));"),
        2 => format!("B.push(alloc_pages({}, GFP_KERNEL));", r.below(12)),
        3 => format!("kfree({b});"),
        4 => format!("vfree({b});"),
        5 => format!("free_pages({b});"),
        6 => format!(
            "D.push(device(\"d{}\", #{{ {} }}));",
            r.below(6),
            device_opts(r)
        ),
        7 => format!("B.push(dma_alloc_coherent({d}, {size}));"),
        8 => format!("dma_free_coherent({d}, {size}, {b});"),
        9 => format!("A.push([{d}, dma_map_single({d}, {b}, {dir}), {size}]);"),
        10 => format!("A.push([{d}, dma_map_single({d}, {b}, {off}, {size}, {dir}), {size}]);"),
        11 => format!("dma_unmap_single({a}[0], {a}[1], {a}[2], {dir});"),
        12 => format!("dma_unmap_single({d}, {a}[1], {size}, {dir});"),
        13 => format!("dma_sync_single_for_cpu({a}[0], {a}[1], {size}, {dir});"),
        14 => format!("dma_sync_single_for_device({a}[0], {a}[1], {size}, {dir});"),
        15 => format!("dma_mapping_error({a}[0], {a}[1]);"),
        16 => format!("S.push(sg_from_buffer({b}));"),
        17 => format!("dma_map_sg({d}, {s}, {dir});"),
        18 => format!("dma_unmap_sg({d}, {s}, {dir});"),
        19 => format!("dma_map_sgtable({d}, {s}, {dir});"),
        20 => format!("dev_read({d}, {a}[1] + {off}, {size});"),
        21 => format!(
            "dev_write({d}, {a}[1] + {off}, blob({}, 7));",
            r.below(9000)
        ),
        22 => format!("cpu_write({b}, {off}, blob({}, 1));", r.below(9000)),
        23 => format!("cpu_read({b}, {off}, {size});"),
        24 => format!("cpu_fill({b}, {});", r.below(256)),
        25 => format!("P.push(process(\"p{}\"));", r.below(4)),
        26 => format!("B.push({p}.malloc({size}));"),
        27 => format!("B.push({p}.mmap({size}));"),
        28 => format!("{p}.munmap({b});"),
        29 => format!(
            "X.push(pin_user_pages({p}, {b}, #{{ longterm: {} }}));",
            r.below(2) == 0
        ),
        30 => format!("X.push(get_user_pages({p2}, {b}));"),
        31 => format!("unpin_user_pages({});", from(r, "X")),
        32 => format!("put_page({});", from(r, "X")),
        33 => format!("B.push(remap_pfn_range({p}, {b}));"),
        34 => format!("B.push(dma_mmap_coherent({d}, {p}, {b}));"),
        35 => {
            let heap = pick(r, &["\"system\"", "\"reserved\"", "\"nope\""]);
            format!("F.push(dma_heap_alloc({p}, {heap}, {size}));")
        }
        36 => {
            let f = from(r, "F");
            match r.below(4) {
                0 => format!("B.push({p}.mmap({f}));"),
                1 => format!("close({f});"),
                2 => format!("dma_buf_map_attachment(dma_buf_attach({f}, {d}), {dir});"),
                _ => format!("dma_buf_ioctl_sync({f}, {});", r.below(8)),
            }
        }
        37 => format!("C.push(vfio_open({d}, {p}));"),
        38 => format!(
            "vfio_map_dma({}, {p}, {b}, {}, #{{ read: true, write: {} }});",
            from(r, "C"),
            pick(r, &["0", "4096", "0x100000", "0xffffffffffff000", "-4096"]),
            r.below(2) == 0
        ),
        _ => match r.below(10) {
            0 => format!(
                "run_for({});",
                pick(r, &["\"1 us\"", "\"1 ms\"", "\"2 h\"", "-1"])
            ),
            1 => "evict_all();".into(),
            2 => "compact();".into(),
            3 => format!("reclaim({size});"),
            4 => format!("remove_device({d2});"),
            5 => format!("wait(dev_start_read({d}, {a}[1], {size}));"),
            6 => format!("cpu_copy({b}, {b2});"),
            7 => format!(
                "dma_set_mask({d}, {});",
                pick(r, &["0", "24", "32", "64", "65", "-1"])
            ),
            8 => format!("{p2}.write({b}, {off}, blob(16, 3));"),
            _ => format!("expect_eq({b}, {size}, \"é{}\");", "é".repeat(r.below(80))),
        },
    };
    if r.below(10) < 8 {
        format!("try {{ {body} }} catch {{}}")
    } else {
        body
    }
}

fn device_opts(r: &mut SimRng) -> String {
    let opts = [
        "coherent: true",
        "coherent: false",
        "dma_bits: 24",
        "dma_bits: 32",
        "dma_bits: 64",
        "iommu: true",
        "untrusted: true",
        "min_align_mask: 0xfff",
        "max_segment: 512",
        "seg_boundary: 0xffff",
        "sg: false",
        "bandwidth: 1",
    ];
    let n = r.below(3);
    // One value per key: a map literal may not repeat one (`coherent: true` and
    // `coherent: false` together made the whole script a parse error).
    let mut by_key = std::collections::BTreeMap::new();
    for _ in 0..n {
        let o = opts[r.below(opts.len())];
        by_key.insert(o.split(':').next().unwrap_or(o), o);
    }
    by_key.into_values().collect::<Vec<_>>().join(", ")
}

/// The script of `seed`: a boot and 10 to 50 statements (short enough for a million
/// executions in an hour of one core, long enough for stateful misuse).
pub fn generate(seed: u64) -> Program {
    let mut r = SimRng::new(seed ^ 0x5eed_f022);
    let preset = pick(&mut r, PRESETS);
    let n = r.below(4);
    // One value per key (a map literal may not repeat a key).
    let mut over: Vec<&str> = (0..n).map(|_| pick(&mut r, OVERRIDES)).collect();
    over.sort_unstable();
    over.dedup_by_key(|o| o.split(':').next().unwrap_or("").to_string());
    let prelude = format!(
        "let B = []; let D = []; let P = []; let S = []; let A = []; let X = []; let F = []; let C = [];\n\
         boot(\"{preset}\", #{{ {} }});\n\
         D.push(device(\"dev\"));\nP.push(process(\"app\"));\nB.push(kmalloc(4096));\n",
        over.join(", ")
    );
    let count = 10 + r.below(41);
    let stmts = (0..count).map(|_| statement(&mut r)).collect();
    Program { prelude, stmts }
}

/// How a script failed the properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// dmasim panicked (the message).
    Panic(String),
    /// An exit status other than 0, 1 or 2.
    ExitCode(i32),
    /// Two runs of the same seed gave different reports.
    Nondeterministic,
    /// A run took longer than the bound (ms).
    Slow(u128),
}

impl Failure {
    /// Whether `other` is the same kind of failure (what the minimiser keeps).
    pub fn same_kind(&self, other: &Failure) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Host time one fuzz execution may take.
pub const MAX_RUN_MS: u128 = 20_000;

/// A clock in nanoseconds: how [`check_with`] measures an execution's host time.
pub type NowNs = fn() -> u64;

/// Nanoseconds of wall-clock time since the first call (the default clock; the
/// long-running fuzzer passes this thread's CPU time instead, which a loaded host
/// does not inflate).
pub fn wall_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// Runs `src` on `seed` (twice when `twice`) and checks the properties.
///
/// # Errors
/// The first property that failed.
pub fn check(src: &str, seed: u64, twice: bool) -> Result<(), Failure> {
    check_with(src, seed, twice, wall_ns)
}

/// [`check`], timing the execution with `now`.
///
/// # Errors
/// The first property that failed.
pub fn check_with(src: &str, seed: u64, twice: bool, now: NowNs) -> Result<(), Failure> {
    let opts = fuzz_options(seed);
    let t0 = now();
    let r = run_source("fuzz.rhai", src, &opts);
    let ms = u128::from(now().saturating_sub(t0) / 1_000_000);
    if let Some(e) = r.error.as_deref().filter(|e| e.contains("internal error")) {
        return Err(Failure::Panic(e.to_string()));
    }
    let code = r.exit_code();
    if !(0..=2).contains(&code) {
        return Err(Failure::ExitCode(code));
    }
    if ms > MAX_RUN_MS {
        return Err(Failure::Slow(ms));
    }
    if twice && run_source("fuzz.rhai", src, &opts).to_json() != r.to_json() {
        return Err(Failure::Nondeterministic);
    }
    Ok(())
}

/// Drops statements (halves, then quarters, … then one at a time) for as long as
/// the script still fails the same way; returns the smallest program found.
pub fn minimise(p: &Program, seed: u64, failure: &Failure) -> Program {
    minimise_with(p, seed, failure, wall_ns)
}

/// [`minimise`], timing executions with `now`.
pub fn minimise_with(p: &Program, seed: u64, failure: &Failure, now: NowNs) -> Program {
    let twice = matches!(failure, Failure::Nondeterministic);
    let fails = |q: &Program| {
        check_with(&q.text(), seed, twice, now)
            .err()
            .is_some_and(|f| f.same_kind(failure))
    };
    let mut best = p.clone();
    let mut chunk = best.stmts.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut progressed = false;
        while i < best.stmts.len() {
            let mut q = best.clone();
            let end = (i + chunk).min(q.stmts.len());
            q.stmts.drain(i..end);
            if fails(&q) {
                best = q;
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 && !progressed {
            return best;
        }
        if !progressed {
            chunk = (chunk / 2).max(1);
        }
    }
}
