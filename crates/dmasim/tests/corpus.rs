//! The correct-driver corpus (`tests/corpus/`): TX, RX, bidirectional, scatter-gather
//! and coherent-ring drivers written by the rules. On every preset, with and without
//! an IOMMU, on many seeds of background noise, they must give **no finding at all**
//! and every expectation must hold: the sanitizer has no false positives here.
//!
//! Each script gets `GFP` from the harness: `GFP_DMA` on `rpi4`, whose DMA masters
//! reach only the first GiB (a correct driver for them allocates there instead of
//! bouncing), `GFP_KERNEL` elsewhere. The scatter-gather scripts use vmalloc, whose
//! pages can be anywhere: on `rpi4` (no IOMMU) they would bounce, which is a
//! `bounce-buffering` warning by design, so they are not run there.

use dmasim::script::{run_source, ScriptOptions};

/// Seeds per script, preset and IOMMU setting: the default (fast) suite runs the
/// first [`FAST_SEEDS`], the full suite (`cargo test -- --ignored`, which CI also
/// runs) the rest.
const SEEDS: u64 = 500;
/// Seeds of the default suite.
const FAST_SEEDS: u64 = 20;

fn corpus() -> Vec<(String, String)> {
    let dir = format!("{}/tests/corpus", env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn run_preset(preset: &str, iommu: &str, seeds: std::ops::Range<u64>) {
    let scripts = corpus();
    assert!(
        scripts.len() >= 10,
        "the corpus has {} scripts",
        scripts.len()
    );
    let gfp = if preset == "rpi4" {
        "GFP_DMA"
    } else {
        "GFP_KERNEL"
    };
    for (name, body) in &scripts {
        if preset == "rpi4" && body.contains("vmalloc(") {
            continue;
        }
        let src =
            format!("boot(\"{preset}\", #{{ iommu: \"{iommu}\" }});\nlet GFP = {gfp};\n{body}");
        for seed in seeds.clone() {
            let r = run_source(
                name,
                &src,
                &ScriptOptions {
                    seed,
                    ..ScriptOptions::default()
                },
            );
            assert!(
                r.error.is_none(),
                "{name} {preset} {iommu} seed {seed}: {:?}",
                r.error
            );
            assert_eq!(
                r.expectations.failed, 0,
                "{name} {preset} {iommu} seed {seed}: {:?}",
                r.expectations.failures
            );
            assert!(
                r.findings.is_empty(),
                "{name} {preset} {iommu} seed {seed}: {:?}",
                r.findings
                    .iter()
                    .map(|f| (f.id, &f.message))
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn corpus_is_clean_on_arm64_noncoherent() {
    run_preset("arm64-noncoherent", "none", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn corpus_is_clean_on_arm64_noncoherent_full() {
    run_preset("arm64-noncoherent", "none", FAST_SEEDS..SEEDS);
}

#[test]
fn corpus_is_clean_on_arm64_noncoherent_behind_an_smmu() {
    run_preset("arm64-noncoherent", "smmu", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn corpus_is_clean_on_arm64_noncoherent_behind_an_smmu_full() {
    run_preset("arm64-noncoherent", "smmu", FAST_SEEDS..SEEDS);
}

#[test]
fn corpus_is_clean_on_arm64_coherent() {
    run_preset("arm64-coherent", "none", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn corpus_is_clean_on_arm64_coherent_full() {
    run_preset("arm64-coherent", "none", FAST_SEEDS..SEEDS);
}

#[test]
fn corpus_is_clean_on_arm64_coherent_lazy_smmu() {
    run_preset("arm64-coherent", "smmu", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn corpus_is_clean_on_arm64_coherent_lazy_smmu_full() {
    run_preset("arm64-coherent", "smmu", FAST_SEEDS..SEEDS);
}

#[test]
fn corpus_is_clean_on_rpi4() {
    run_preset("rpi4", "none", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn corpus_is_clean_on_rpi4_full() {
    run_preset("rpi4", "none", FAST_SEEDS..SEEDS);
}

#[test]
fn corpus_is_clean_on_arm32() {
    run_preset("arm32", "none", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn corpus_is_clean_on_arm32_full() {
    run_preset("arm32", "none", FAST_SEEDS..SEEDS);
}

#[test]
fn corpus_is_clean_on_x86_64() {
    run_preset("x86-64", "none", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn corpus_is_clean_on_x86_64_full() {
    run_preset("x86-64", "none", FAST_SEEDS..SEEDS);
}

#[test]
fn corpus_is_clean_on_x86_64_behind_an_iommu() {
    run_preset("x86-64", "smmu", 0..FAST_SEEDS);
}

#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn corpus_is_clean_on_x86_64_behind_an_iommu_full() {
    run_preset("x86-64", "smmu", FAST_SEEDS..SEEDS);
}
