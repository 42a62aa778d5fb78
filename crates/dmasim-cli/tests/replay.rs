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

#[test]
fn a_gzipped_capture_with_its_pool_file_replays_and_draws_a_timeline() {
    let dir = std::env::temp_dir().join(format!("dmasim-replay-html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let html = dir.join("timeline.html");
    let out = dmasim(&[
        "replay",
        excerpt("swiotlb-force/trace.txt.gz").to_str().unwrap(),
        "--set",
        "ram=1GiB",
        "--set",
        "cpus=1",
        "--set",
        "swiotlb=force",
        "--html",
        html.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // swiotlb_pool.txt beside the trace placed the pool; the slot figure is printed.
    assert!(
        text.contains("swiotlb pool [0x3aa00000-0x3ea00000) placed by the capture's kernel"),
        "{text}"
    );
    let slots = text
        .lines()
        .find(|l| l.contains("swiotlb slot addresses:"))
        .expect("slot line");
    let nums: Vec<u64> = slots
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(nums[0] * 100 >= nums[1] * 99, "{slots}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg class=\"chk\" id=\"mappings\""));
    assert!(page.contains("id=\"swiotlb-slots\""));
    // --no-pool-txt: the model's own pool, and no slot line.
    let out = dmasim(&[
        "replay",
        excerpt("swiotlb-force/trace.txt.gz").to_str().unwrap(),
        "--set",
        "ram=1GiB",
        "--set",
        "swiotlb=force",
        "--no-pool-txt",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("placed by the model"), "{text}");
    assert!(!text.contains("swiotlb slot addresses:"), "{text}");
    // A broken gzip stream and --html with --compare: exit 2 with the reason.
    let bad = dir.join("broken.txt.gz");
    std::fs::write(&bad, b"\x1f\x8b\x08junk").unwrap();
    let out = dmasim(&["replay", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gzip"));
    let out = dmasim(&[
        "replay",
        excerpt("direct-excerpt.txt").to_str().unwrap(),
        "--compare",
        "rpi4",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_arm64_smmuv3_capture_replays_at_its_own_addresses_with_the_msi_doorbell() {
    // The kit's arm64-smmuv3 capture (QEMU virt, RAM at 1 GiB, SMMUv3 strict): the
    // trace's physical addresses are the model's own (same RAM base), the SMMU's
    // own queues are not behind it (iommu_groups.txt), and each domain's first IOVA
    // is the GICv3 ITS doorbell page (iomem.txt + the trace's iommu:map events).
    let run = |extra: &[&str]| {
        let mut args = vec![
            "replay",
            "--json",
            "--preset",
            "arm64-coherent",
            "--set",
            "ram=1GiB",
            "--set",
            "ram_base=0x40000000",
            "--set",
            "cpus=1",
            "--set",
            "iommu=smmu",
            "--set",
            "iommu_strict=true",
        ];
        args.extend_from_slice(extra);
        let p = excerpt("arm64-smmuv3/trace.txt.gz");
        args.push(p.to_str().unwrap());
        let out = dmasim(&args);
        assert_eq!(out.status.code(), Some(0));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = run(&[]);
    let f = &v["fidelity"];
    let (eq, n) = (
        f["equal"].as_u64().unwrap(),
        f["compared"].as_u64().unwrap(),
    );
    assert!(eq * 100 >= n * 98, "{eq} of {n}");
    assert_eq!(v["counts"]["unplaced"], 0);
    let smmu = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "9050000.smmuv3")
        .unwrap();
    assert_eq!(smmu["iommu"], false);
    // Without the capture's files (no groups, no doorbell) far fewer are equal.
    let bare = run(&["--no-pci-txt"]);
    let eq2 = bare["fidelity"]["equal"].as_u64().unwrap();
    assert!(eq2 * 100 < n * 80, "{eq2} of {n}");
}
