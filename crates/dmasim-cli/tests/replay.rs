//! `dmasim replay` on the command line: exit codes, JSON, `--compare`, garbage.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dmasim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmasim"))
        .args(args)
        .output()
        .expect("dmasim runs")
}

fn excerpt(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dmasim/tests/data/replay")
        .join(name)
}

#[test]
fn replay_of_an_excerpt_is_clean_and_its_json_is_replay_v1() {
    let t = excerpt("iommu-strict-excerpt.txt");
    let out = dmasim(&[
        "replay",
        t.to_str().unwrap(),
        "--set",
        "ram=1GiB",
        "--set",
        "iommu=smmu",
        "--set",
        "iommu_strict=true",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], "dmasim.replay/v1");
    assert_eq!(v["errors"], 0);
    // pci.txt beside the excerpt: pcnet32 (0000:00:07.0) has a 32-bit mask.
    let pcnet = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "0000:00:07.0")
        .unwrap();
    assert_eq!(pcnet["mask_bits"], 32);
    assert_eq!(v["fidelity"]["equal"], v["fidelity"]["compared"]);
}

#[test]
fn replay_compare_shows_configurations_side_by_side() {
    let t = excerpt("direct-excerpt.txt");
    let out = dmasim(&[
        "replay",
        t.to_str().unwrap(),
        "--placement",
        "high",
        "--compare",
        "x86-64,ram=1GiB",
        "--compare",
        "arm64-noncoherent,ram=8GiB",
        "--device-map",
        "*=mask=32",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("arm64-noncoherent,ram=8GiB"), "{text}");
    let bounced = text
        .lines()
        .find(|l| l.starts_with("bounced maps"))
        .unwrap();
    let cols: Vec<&str> = bounced.split_whitespace().collect();
    assert_eq!(cols[2], "0", "1 GiB x86: nothing above 4 GiB: {bounced}");
    assert_ne!(cols[3], "0", "8 GiB, buffers high, 32-bit masks: {bounced}");
}

#[test]
fn garbage_is_exit_2_with_the_line_number() {
    let dir = std::env::temp_dir().join(format!("dmasim-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("junk.txt");
    std::fs::write(&f, b"# comment\n\x00\x01binary\xff junk\nmore junk\n").unwrap();
    let out = dmasim(&["replay", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    let out = dmasim(&["replay", f.to_str().unwrap(), "--placement", "sideways"]);
    assert_eq!(out.status.code(), Some(2));
    let bad_map = dmasim(&[
        "replay",
        excerpt("direct-excerpt.txt").to_str().unwrap(),
        "--device-map",
        "0000:00:01.0=mask=3",
    ]);
    assert_eq!(bad_map.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_map.stderr).contains("mask=3"));
    std::fs::remove_dir_all(&dir).ok();
}
