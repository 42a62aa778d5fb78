//! The upstream corpus (`tests/upstream/`): scenarios transcribed from real Linux 6.12
//! drivers, each naming its source file and functions in a header comment.
//!
//! - Run as upstream wrote them (`BUG = false`), on every preset with and without an
//!   IOMMU and 200 seeds of background noise, they must give **no error finding** and
//!   every expectation must hold: code that upstream Linux runs correctly is clean.
//!   Notes (`cpu-access-benign`) and performance warnings are allowed and counted.
//! - Each has one realistic injected bug (`BUG = true`, described by its `// bug: ID`
//!   header line, placed at the line marked `// <- bug`), which must be reported with
//!   that id at that line, with a help text, on every seed tried.
//!
//! The harness prepends `boot(...)`, `let GFP = ...;` and `let BUG = ...;` (three
//! lines). `GFP` is `GFP_DMA` on `rpi4`, whose DMA masters reach only the first GiB,
//! `GFP_KERNEL` elsewhere. Scripts that use vmalloc'd buffers (`spi-bcm2835`) are not
//! run on `rpi4` without an IOMMU: there such a buffer above 1 GiB bounces and the
//! driver's RX prologue is really lost (see `spi_bcm2835_rx_prologue_lost_when_bounced`).

use dmasim::check::Severity;
use dmasim::report::Report;
use dmasim::script::{run_source, ScriptOptions};

/// Seeds per script, preset and IOMMU setting: the default (fast) suite runs the
/// first [`FAST_SEEDS`], the full suite (`cargo test -- --ignored`, which CI also
/// runs) the rest.
const SEEDS: u64 = 200;
/// Seeds of the default suite.
const FAST_SEEDS: u64 = 10;
/// Lines the harness puts before each script.
const PROLOGUE_LINES: u32 = 3;

struct Script {
    name: String,
    body: String,
    bug_id: String,
    bug_line: u32,
}

fn corpus() -> Vec<Script> {
    let dir = format!("{}/tests/upstream", env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<Script> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let body = std::fs::read_to_string(&p).unwrap();
            assert!(
                body.starts_with("// upstream: "),
                "{name}: the first line names the upstream file and functions"
            );
            let bug_id = body
                .lines()
                .find_map(|l| l.strip_prefix("// bug: "))
                .unwrap_or_else(|| panic!("{name}: no `// bug: ID` line"))
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            let marked: Vec<u32> = body
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains("// <- bug"))
                .map(|(i, _)| i as u32 + 1)
                .collect();
            assert_eq!(marked.len(), 1, "{name}: one line marked `// <- bug`");
            Script {
                name,
                body,
                bug_id,
                bug_line: marked[0] + PROLOGUE_LINES,
            }
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn run(s: &Script, preset: &str, iommu: &str, bug: bool, seed: u64) -> Report {
    let gfp = if preset == "rpi4" {
        "GFP_DMA"
    } else {
        "GFP_KERNEL"
    };
    let src = format!(
        "boot(\"{preset}\", #{{ iommu: \"{iommu}\" }});\nlet GFP = {gfp};\nlet BUG = {bug};\n{}",
        s.body
    );
    run_source(
        &s.name,
        &src,
        &ScriptOptions {
            seed,
            ..ScriptOptions::default()
        },
    )
}

fn clean_on(preset: &str, iommu: &str, seeds: std::ops::Range<u64>) {
    let scripts = corpus();
    assert!(
        scripts.len() >= 8,
        "the corpus has {} scripts",
        scripts.len()
    );
    let (mut runs, mut notes) = (0u64, 0u64);
    for s in &scripts {
        if preset == "rpi4" && iommu == "none" && s.body.contains("vmalloc(") {
            continue;
        }
        for seed in seeds.clone() {
            let r = run(s, preset, iommu, false, seed);
            let ctx = format!("{} on {preset} iommu={iommu} seed {seed}", s.name);
            assert!(r.error.is_none(), "{ctx}: {:?}", r.error);
            assert_eq!(
                r.expectations.failed, 0,
                "{ctx}: {:?}",
                r.expectations.failures
            );
            let errors: Vec<_> = r
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .map(|f| (f.id, f.line, &f.message))
                .collect();
            assert!(errors.is_empty(), "{ctx}: false errors {errors:?}");
            notes += r.findings.len() as u64;
            runs += 1;
        }
    }
    eprintln!(
        "upstream corpus on {preset} iommu={iommu}: {runs} runs, 0 errors, {notes} notes/warnings"
    );
}

#[test]
fn upstream_clean_on_arm64_noncoherent() {
    clean_on("arm64-noncoherent", "none", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn upstream_clean_on_arm64_noncoherent_full() {
    clean_on("arm64-noncoherent", "none", FAST_SEEDS..SEEDS);
}

#[test]
fn upstream_clean_on_arm64_noncoherent_smmu() {
    clean_on("arm64-noncoherent", "smmu", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn upstream_clean_on_arm64_noncoherent_smmu_full() {
    clean_on("arm64-noncoherent", "smmu", FAST_SEEDS..SEEDS);
}

#[test]
fn upstream_clean_on_arm64_coherent() {
    clean_on("arm64-coherent", "none", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn upstream_clean_on_arm64_coherent_full() {
    clean_on("arm64-coherent", "none", FAST_SEEDS..SEEDS);
}

#[test]
fn upstream_clean_on_arm64_coherent_smmu() {
    clean_on("arm64-coherent", "smmu", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn upstream_clean_on_arm64_coherent_smmu_full() {
    clean_on("arm64-coherent", "smmu", FAST_SEEDS..SEEDS);
}

#[test]
fn upstream_clean_on_rpi4() {
    clean_on("rpi4", "none", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn upstream_clean_on_rpi4_full() {
    clean_on("rpi4", "none", FAST_SEEDS..SEEDS);
}

#[test]
fn upstream_clean_on_rpi4_smmu() {
    clean_on("rpi4", "smmu", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn upstream_clean_on_rpi4_smmu_full() {
    clean_on("rpi4", "smmu", FAST_SEEDS..SEEDS);
}

#[test]
fn upstream_clean_on_arm32() {
    clean_on("arm32", "none", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn upstream_clean_on_arm32_full() {
    clean_on("arm32", "none", FAST_SEEDS..SEEDS);
}

#[test]
fn upstream_clean_on_arm32_smmu() {
    clean_on("arm32", "smmu", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn upstream_clean_on_arm32_smmu_full() {
    clean_on("arm32", "smmu", FAST_SEEDS..SEEDS);
}

#[test]
fn upstream_clean_on_x86_64() {
    clean_on("x86-64", "none", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn upstream_clean_on_x86_64_full() {
    clean_on("x86-64", "none", FAST_SEEDS..SEEDS);
}

#[test]
fn upstream_clean_on_x86_64_iommu() {
    clean_on("x86-64", "smmu", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn upstream_clean_on_x86_64_iommu_full() {
    clean_on("x86-64", "smmu", FAST_SEEDS..SEEDS);
}

/// Each injected bug is caught with its id, at its line, with a help text, on every
/// seed and on both a non-coherent and a coherent platform.
#[test]
fn every_injected_bug_is_caught_at_its_line() {
    for s in &corpus() {
        for preset in ["arm64-noncoherent", "arm64-coherent"] {
            for seed in 0..10 {
                let r = run(s, preset, "none", true, seed);
                assert!(r.error.is_none(), "{} {preset}: {:?}", s.name, r.error);
                let hit = r
                    .findings
                    .iter()
                    .find(|f| f.id == s.bug_id && f.line == s.bug_line);
                let hit = hit.unwrap_or_else(|| {
                    panic!(
                        "{} on {preset} seed {seed}: no {} at line {}; got {:?}",
                        s.name,
                        s.bug_id,
                        s.bug_line,
                        r.findings
                            .iter()
                            .map(|f| (f.id, f.line))
                            .collect::<Vec<_>>()
                    )
                });
                assert!(!hit.help.is_empty(), "{}: the finding has a help", s.name);
            }
        }
    }
}

/// `spi-bcm2835.c`'s RX prologue stores 1-3 bytes into the mapped RX buffer and syncs
/// them for the device. When the first sg entry is bounced, swiotlb copies nothing for
/// `DMA_FROM_DEVICE` at that sync (`__swiotlb_sync_single_for_device`), and the sync
/// for the CPU copies the slot back over the bytes: a real loss, reported as an error.
/// On a non-coherent arm64 SoC a 2-byte first entry bounces (`dma_kmalloc_needs_bounce`
/// looks only at the size); on rpi4 a buffer above 1 GiB does.
#[test]
fn spi_bcm2835_rx_prologue_lost_when_bounced() {
    let s = corpus()
        .into_iter()
        .find(|s| s.name == "spi-bcm2835.rhai")
        .expect("the SPI scenario");
    let small_first = Script {
        body: s.body.replace("const OFF = 3094;", "const OFF = 4094;"),
        ..s
    };
    assert_ne!(small_first.body, s_body_of("spi-bcm2835.rhai"));
    for preset in ["arm64-noncoherent", "rpi4"] {
        let r = run(&small_first, preset, "none", false, 0);
        assert!(r.error.is_none(), "{preset}: {:?}", r.error);
        assert_eq!(
            r.expectations.failed, 1,
            "{preset}: the looped-back bytes differ"
        );
        let f = r
            .findings
            .iter()
            .find(|f| f.id == "cpu-access-device-owned")
            .unwrap_or_else(|| panic!("{preset}: {:?}", r.findings));
        assert!(
            f.message.contains("__swiotlb_sync_single_for_device"),
            "{}",
            f.message
        );
    }
    // Where the first entry is not bounced the same stores are only a note.
    let r = run(&small_first, "arm64-coherent", "none", false, 0);
    assert_eq!(r.expectations.failed, 0);
    assert!(r.findings.iter().all(|f| f.severity != Severity::Error));
    assert!(r.findings.iter().any(|f| f.id == "cpu-access-benign"));
}

fn s_body_of(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/upstream/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}
