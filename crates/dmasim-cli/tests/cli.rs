//! Integration tests that drive the built `dmasim` binary and assert on its JSON and
//! exit codes (ripgrep's tests/json.rs style).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dmasim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmasim"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

fn show(args: &[&str], out: &Output) -> String {
    format!(
        "dmasim {}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The first line of a scenario's code that contains `needle`.
fn line_of(scenario: &str, needle: &str) -> u64 {
    let text = std::fs::read_to_string(root().join(scenario)).unwrap();
    let i = text
        .lines()
        .position(|l| l.contains(needle) && !l.trim_start().starts_with("//"))
        .expect("the line");
    i as u64 + 1
}

fn json_run(args: &[&str]) -> (i32, Value) {
    let out = dmasim(args);
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", show(args, &out)));
    (out.status.code().expect("exit code"), v)
}

#[test]
fn broken_tx_exits_1_with_a_manifested_stale_device_read() {
    let args = [
        "run",
        "scenarios/tx-after-map.rhai",
        "--json",
        "--noise",
        "off",
    ];
    let (code, v) = json_run(&args);
    assert_eq!(code, 1);
    assert_eq!(v["schema"], "dmasim.report/v1");
    assert_eq!(v["outcome"], "findings");
    assert_eq!(v["platform"]["preset"], "arm64-noncoherent");
    let f = &v["findings"][0];
    assert_eq!(f["id"], "stale-device-read");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["manifested"], true);
    assert_eq!(f["device"], "eth0");
    // Reported where the device read the stale bytes; the history shows the late write.
    assert_eq!(
        f["line"],
        line_of("scenarios/tx-after-map.rhai", "dev_read(")
    );
    assert!(f["help"]
        .as_str()
        .unwrap()
        .contains("dma_sync_single_for_device"));
    assert!(f["history"].as_array().unwrap().len() >= 3);
    assert_eq!(v["stats"]["dma_bytes"], 1500);
}

#[test]
fn on_the_coherent_preset_the_same_bug_is_latent() {
    let (code, v) = json_run(&[
        "run",
        "scenarios/tx-after-map.rhai",
        "--json",
        "--noise",
        "off",
        "--preset",
        "arm64-coherent",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["findings"][0]["id"], "stale-device-read");
    assert_eq!(v["findings"][0]["manifested"], false);
}

#[test]
fn fixed_scenarios_exit_0_with_no_findings() {
    for s in ["scenarios/tx-before-map.rhai", "scenarios/rx-sync.rhai"] {
        let (code, v) = json_run(&["run", s, "--json", "--seed", "3"]);
        assert_eq!(code, 0, "{s}");
        assert_eq!(v["outcome"], "clean");
        assert_eq!(v["findings"].as_array().unwrap().len(), 0);
        assert_eq!(v["expectations"]["failed"], 0);
        assert!(v["stats"]["sim_time_ns"].as_u64().unwrap() > 0);
    }
}

#[test]
fn same_seed_same_bytes() {
    let a = dmasim(&["run", "scenarios/rx-no-sync.rhai", "--json", "--seed", "11"]);
    let b = dmasim(&["run", "scenarios/rx-no-sync.rhai", "--json", "--seed", "11"]);
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn text_report_reads_like_rustc() {
    let args = ["run", "scenarios/rx-no-sync.rhai", "--noise", "off"];
    let out = dmasim(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", show(&args, &out));
    assert!(text.contains("error[stale-cpu-read]"), "{text}");
    let want = format!(
        "--> scenarios/rx-no-sync.rhai:{}",
        line_of("scenarios/rx-no-sync.rhai", "// BUG")
    );
    assert!(text.contains(&want), "{want}\n{text}");
    assert!(
        text.contains("= help: call dma_sync_single_for_cpu"),
        "{text}"
    );
    assert!(
        text.contains("] adc0: DMA master"),
        "dmesg-style log: {text}"
    );
    assert!(!text.contains('\x1b'), "no colour off a terminal");
}

#[test]
fn script_errors_exit_2_with_file_line_col() {
    let dir = std::env::temp_dir().join(format!("dmasim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.rhai");
    std::fs::write(
        &bad,
        "boot(\"arm64-noncoherent\");\nlet x = dma_map_single(;\n",
    )
    .unwrap();
    let p = bad.to_str().unwrap();
    let out = dmasim(&["check", p]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.rhai:2:"),
        "{}",
        show(&["check", p], &out)
    );
    let (code, v) = json_run(&["run", p, "--json"]);
    assert_eq!(code, 2);
    assert_eq!(v["outcome"], "error");
    assert!(v["error"].as_str().unwrap().contains("bad.rhai:2:"));
    let unknown = dir.join("unknown.rhai");
    std::fs::write(&unknown, "boot(\"x86-64\");\n\nno_such_call(1, 2);\n").unwrap();
    let (code, v) = json_run(&["run", unknown.to_str().unwrap(), "--json"]);
    assert_eq!(code, 2);
    assert!(
        v["error"].as_str().unwrap().contains("unknown.rhai:3:"),
        "{v}"
    );
    let out = dmasim(&["run", "does-not-exist.rhai"]);
    assert_eq!(out.status.code(), Some(2));
    let out = dmasim(&["run", "scenarios/rx-sync.rhai", "--preset", "vax"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset"));
    let good = dmasim(&["check", "scenarios/rx-sync.rhai"]);
    assert_eq!(good.status.code(), Some(0));
    // Issue 17: `check` resolves every call, even in a branch no run takes, and an
    // unknown function names the closest ones, at check time and at run time.
    let typo = dir.join("typo.rhai");
    std::fs::write(
        &typo,
        "boot(\"arm64-noncoherent\");\nlet d = device(\"d\");\nlet b = kmalloc(4096);\nif false { dma_map_singel(d, b, DMA_TO_DEVICE); }\ndma_sync_single_for_cpu(d, 0, 4);\n",
    )
    .unwrap();
    let out = dmasim(&["check", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.rhai:4:") && err.contains("did you mean `dma_map_single`"),
        "{err}"
    );
    assert!(
        err.contains("typo.rhai:5:") && err.contains("takes 4 argument(s), not 3"),
        "{err}"
    );
    let (code, v) = json_run(&["run", unknown.to_str().unwrap(), "--json"]);
    assert_eq!(code, 2);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown function `no_such_call`"),
        "{v}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn presets_list_every_field() {
    let out = dmasim(&["presets", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["preset"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "arm64-noncoherent",
            "arm64-coherent",
            "rpi4",
            "arm32",
            "x86-64"
        ]
    );
    assert_eq!(v[0]["coherent_default"], false);
    assert_eq!(v[1]["coherent_default"], true);
    assert!(v[0]["cost"]["uncached_read_beat_ps"].as_u64().unwrap() > 0);
}

#[test]
fn the_tour_lists_and_runs_its_stops() {
    let out = dmasim(&["tour", "--list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tx-stale") && text.contains("rx-stale"),
        "{text}"
    );
    let args = ["tour", "rx-stale"];
    let out = dmasim(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", show(&args, &out));
    assert!(text.contains("stale-cpu-read"), "{text}");
    assert!(text.contains("reported on 20/20 seeds"), "{text}");
    assert!(
        text.contains("Run one yourself: cargo run --release -- run scenarios/rx-no-sync.rhai"),
        "{text}"
    );
    let out = dmasim(&["tour", "page-pool"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("run scenarios/page-pool-no-sync-dev.rhai"),
        "a single stop points to its own scenario: {text}"
    );
    // The README's main command: the whole tour succeeds.
    let out = dmasim(&["tour"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&["tour"], &out));
    let list = String::from_utf8_lossy(&dmasim(&["tour", "--list"]).stdout).into_owned();
    // One stop per hazard of DMA on an MPU (issue 8's fifteen, and the IOMMU's
    // page granularity).
    for hazard in [
        "iommu-granularity",
        "virtual-address",
        "tx-stale",
        "rx-stale",
        "coherent-memory",
        "noncoherent-memory",
        "dma-pool",
        "dma-buf",
        "page-pool",
        "user-mmap",
        "scatter-gather",
        "unpinned-pages",
        "iommu-protection",
        "cma-pool",
        "user-dma-no-iommu",
        "bounce-buffers",
        "arm32-zones",
        "coherent-ports",
        "vfio",
        "v4l2-mmap",
        "poll-mode-driver",
    ] {
        assert!(
            list.lines()
                .any(|l| l.split_whitespace().next() == Some(hazard)),
            "{hazard} in {list}"
        );
    }
    // Each stop alone succeeds and names the broken variant's finding ids.
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let args = ["tour", name];
        let out = dmasim(&args);
        assert_eq!(out.status.code(), Some(0), "{}", show(&args, &out));
        let text = String::from_utf8_lossy(&out.stdout);
        let broken = text
            .lines()
            .find(|l| l.trim_start().starts_with("broken ("))
            .unwrap_or_default();
        let ids = broken.split("): ").nth(1).unwrap_or_default();
        assert!(
            !ids.is_empty()
                && ids != "no findings"
                && ids
                    .split(", ")
                    .all(|id| id.chars().all(|c| c.is_ascii_lowercase() || c == '-')),
            "{name}: {broken}"
        );
    }
}

#[test]
fn presets_name_the_source_of_each_figure() {
    let out = dmasim(&["presets", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v[0]["sources"]["dma_minalign"]
        .as_str()
        .unwrap()
        .contains("ARCH_DMA_MINALIGN"));
    assert!(v[4]["sources"]["zone_dma_limit"]
        .as_str()
        .unwrap()
        .contains("16 MiB"));
}

#[test]
fn a_closed_pipe_is_not_a_crash() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmasim"))
        .args(["presets"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_reports_each_figure_beside_the_host() {
    let out = dmasim(&["bench", "--json", "--quick", "64"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], "dmasim.bench/v1");
    let figs = v["figures"].as_array().unwrap();
    assert_eq!(figs.len(), 10);
    assert!(["thread-cpu", "wall"].contains(&v["clock"].as_str().unwrap()));
    assert!(figs
        .iter()
        .all(|f| f["rounds"].as_u64() == Some(5) && f["model_median"].as_f64().unwrap() > 0.0));
    assert!(figs[5]["name"]
        .as_str()
        .unwrap()
        .starts_with("bounced map+unmap"));
    assert!(figs
        .iter()
        .all(|f| f["host"].as_f64().unwrap() > 0.0 && f["model"].as_f64().unwrap() > 0.0));
    // The issue's peer of the CPU figures and the bounce pair: the tag-only model.
    for i in [0, 1, 2, 5] {
        assert_eq!(figs[i]["peer"]["name"], "tag-only LRU model", "{}", figs[i]);
        assert!(figs[i]["peer"]["ratio_median"].as_f64().unwrap() > 0.0);
    }
    assert!([3, 4, 6, 7, 8, 9]
        .iter()
        .all(|&i| figs[i]["peer"].is_null()));
    // The issue's 64 MiB device jobs, beside memcpy of as many bytes: the write with
    // the blob copied and lent, the SMMU read with 4 KiB and 2 MiB IO pages.
    let name = |i: usize| figs[i]["name"].as_str().unwrap().to_string();
    assert!(name(6).contains("write 64 MiB") && name(6).contains("blob copied"));
    assert!(name(7).contains("write 64 MiB") && name(7).contains("blob lent"));
    assert!(name(8).contains("read 64 MiB through the SMMU, 4 KiB IO pages"));
    assert!(name(9).contains("read 64 MiB through the SMMU, 2 MiB IO pages"));
    let text = dmasim(&["bench", "--quick", "64"]);
    assert_eq!(
        String::from_utf8_lossy(&text.stdout)
            .matches("peer: tag-only LRU model")
            .count(),
        4
    );
}

#[test]
fn memory_scenarios_report_what_the_issue_promises() {
    let (code, v) = json_run(&["run", "scenarios/arm32-zone-dma.rhai", "--json"]);
    assert_eq!(code, 0, "zone exhaustion is a warning: {v}");
    assert_eq!(v["findings"][0]["id"], "zone-exhausted");
    assert!(v["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("HighMem"));
    let (code, v) = json_run(&["run", "scenarios/cma-borrowed.rhai", "--json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["outcome"], "clean");
    assert!(v["stats"]["cma"]["migrated_pages"].as_u64().unwrap() >= 2048);
    let (code, v) = json_run(&["run", "scenarios/mlock-migrates.rhai", "--json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["stats"]["mm"]["migrated_pages"], 1);
    let (code, v) = json_run(&["run", "scenarios/cma-camera.rhai", "--json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["findings"][0]["id"], "cma-exhausted");
    let (code, v) = json_run(&["run", "scenarios/unpinned-dma.rhai", "--json"]);
    assert_eq!(code, 1);
    assert_eq!(v["findings"][0]["id"], "unpinned-user-dma");
    assert_eq!(v["findings"][0]["manifested"], true);
    let (code, v) = json_run(&["run", "scenarios/unpinned-dma-fixed.rhai", "--json"]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = json_run(&["run", "scenarios/malloc-pagemap-sg.rhai", "--json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["stats"]["mm"]["pinned_pages"], 4);
}

#[test]
fn explore_counts_reports_and_manifestations_over_seeds() {
    let (code, v) = json_run(&[
        "explore",
        "scenarios/tx-after-map.rhai",
        "--seeds",
        "30",
        "--jobs",
        "2",
        "--json",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["schema"], "dmasim.explore/v1");
    assert_eq!(v["runs"], 30);
    let f = &v["findings"]["stale-device-read"];
    assert_eq!(f["reported"], 30);
    let m = f["manifested"].as_u64().unwrap();
    assert!(m > 0 && m <= 30);
    let seed = f["first_manifested_seed"].as_u64().unwrap();
    assert_eq!(
        f["reproduce"],
        format!("dmasim run scenarios/tx-after-map.rhai --seed {seed}")
    );
    let (_, one) = json_run(&[
        "explore",
        "scenarios/tx-after-map.rhai",
        "--seeds",
        "30",
        "--jobs",
        "1",
        "--json",
    ]);
    assert_eq!(one, v, "identical whatever --jobs is");
    let (code, _) = json_run(&[
        "explore",
        "scenarios/rx-sync.rhai",
        "--seeds",
        "10",
        "--json",
    ]);
    assert_eq!(code, 0);
}

#[test]
fn explore_shards_merge_into_the_single_machine_summary() {
    let dir = std::env::temp_dir().join(format!("dmasim-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for i in 0..3 {
        let args = [
            "explore",
            "scenarios/rx-no-sync.rhai",
            "--seeds",
            "60",
            "--shard",
            &format!("{i}/3"),
        ];
        let out = dmasim(&args);
        assert_eq!(out.status.code(), Some(1), "{}", show(&args, &out));
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 20, "every third seed");
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["schema"], "dmasim.explore-run/v1");
            assert_eq!(v["seed"].as_u64().unwrap() % 3, i);
        }
        let f = dir.join(format!("shard{i}.jsonl"));
        std::fs::write(&f, text).unwrap();
        files.push(f.display().to_string());
    }
    let mut args = vec!["merge", "--json"];
    args.extend(files.iter().map(String::as_str));
    let merged = dmasim(&args);
    assert_eq!(merged.status.code(), Some(1), "{}", show(&args, &merged));
    let whole = dmasim(&[
        "explore",
        "scenarios/rx-no-sync.rhai",
        "--seeds",
        "60",
        "--json",
    ]);
    assert_eq!(merged.stdout, whole.stdout, "byte-identical summaries");
    let bad = dmasim(&["explore", "scenarios/rx-no-sync.rhai", "--shard", "3/3"]);
    assert_eq!(bad.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}

/// The finding ids of a JSON report, in order.
fn ids_of(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn set_overrides_the_scripts_boot_options() {
    let (code, plain) = json_run(&["run", "scenarios/rogue-device.rhai", "--json"]);
    assert_eq!(code, 1);
    assert_eq!(plain["platform"]["iommu"], "none");
    assert_eq!(ids_of(&plain), vec!["dma-outside-mapping"]);
    // The same driver behind an IOMMU: the stray write faults instead.
    let (code, v) = json_run(&[
        "run",
        "scenarios/rogue-device.rhai",
        "--json",
        "--set",
        "iommu=smmu",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["platform"]["iommu"], "smmu");
    assert_eq!(ids_of(&v), vec!["iommu-fault"]);
    // Sizes and nested maps as boot() takes them.
    let (_, v) = json_run(&[
        "run",
        "scenarios/rx-sync.rhai",
        "--json",
        "--set",
        "ram=1 GiB",
        "--set",
        "l2.size=256KiB",
        "--set",
        "l2.ways=8",
    ]);
    assert_eq!(v["platform"]["ram"], 1u64 << 30);
    assert_eq!(v["platform"]["l2"]["size"], 256 * 1024);
    assert_eq!(v["platform"]["l2"]["ways"], 8);
    for bad in ["warp=9", "iommu=maybe"] {
        let args = ["run", "scenarios/rx-sync.rhai", "--set", bad];
        let out = dmasim(&args);
        assert_eq!(out.status.code(), Some(2), "{}", show(&args, &out));
        let all = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(all.contains("--set:"), "{}", show(&args, &out));
    }
    let args = ["run", "scenarios/rx-sync.rhai", "--set", "novalue"];
    let out = dmasim(&args);
    assert_eq!(out.status.code(), Some(2), "{}", show(&args, &out));
    // explore's replay lines carry the option.
    let (_, v) = json_run(&[
        "explore",
        "scenarios/rogue-device.rhai",
        "--seeds",
        "2",
        "--set",
        "iommu=smmu",
        "--json",
    ]);
    assert_eq!(
        v["findings"]["iommu-fault"]["reproduce"],
        "dmasim run scenarios/rogue-device.rhai --set iommu=smmu --seed 0"
    );
}

#[test]
fn compare_puts_configurations_side_by_side() {
    let args = [
        "compare",
        "scenarios/tx-after-map.rhai",
        "--with",
        "arm64-noncoherent",
        "--with",
        "arm64-coherent",
        "--with",
        "arm64-noncoherent,iommu=smmu",
        "--noise",
        "off",
        "--json",
    ];
    let (code, v) = json_run(&args);
    assert_eq!(code, 1);
    assert_eq!(v["schema"], "dmasim.compare/v1");
    let cols = v["columns"].as_array().unwrap();
    assert_eq!(cols.len(), 3);
    assert_eq!(cols[0]["config"], "arm64-noncoherent");
    assert_eq!(cols[1]["preset"], "arm64-coherent");
    let stale = |c: &Value| c["findings"]["stale-device-read"].clone();
    assert_eq!(stale(&cols[0])["manifested"], 1, "non-coherent: corrupted");
    assert_eq!(stale(&cols[1])["reported"], 1);
    assert_eq!(stale(&cols[1])["manifested"], 0, "coherent: latent");
    assert_eq!(cols[0]["exit"], 1);
    assert!(cols[2]["stats"]["iommu"]["maps"].as_u64().unwrap() > 0);
    assert_eq!(cols[0]["stats"]["iommu"]["maps"], 0);
    assert_eq!(
        stale(&cols[2])["reproduce"],
        "dmasim run scenarios/tx-after-map.rhai --preset arm64-noncoherent --set iommu=smmu --noise off --seed 0"
    );

    // Bounce buffers cost throughput: the same NIC code on 8 GiB and on 2 GiB.
    let args = [
        "compare",
        "scenarios/bounce-nic.rhai",
        "--with",
        "ram=8GiB",
        "--with",
        "ram=2GiB",
    ];
    let out = dmasim(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    // The script expects its buffer above 4 GiB: on 2 GiB that expectation fails.
    assert_eq!(out.status.code(), Some(1), "{}", show(&args, &out));
    let row = |label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row\n{text}"))
            .to_string()
    };
    assert!(
        row("bounced maps").split_whitespace().count() == 4,
        "{text}"
    );
    assert!(
        row("bounced maps").ends_with(" 0"),
        "2 GiB: nothing bounces\n{text}"
    );
    assert!(row("dma-mask-default").ends_with(" -"), "{text}");
    assert!(row("expectations failed").ends_with(" 3"), "{text}");
    assert!(
        row("stream 1 eth0 TX 64x64 KiB MB/s").contains("(64 bounced)"),
        "{text}"
    );
    assert!(
        !row("stream 2 eth0 TX 64x64 KiB MB/s").contains("bounced"),
        "{text}"
    );

    // Counting over seeds, and every preset when no --with is given.
    let (_, v) = json_run(&[
        "compare",
        "scenarios/tx-after-map.rhai",
        "--with",
        "arm64-noncoherent",
        "--seeds",
        "4",
        "--json",
    ]);
    assert_eq!(v["seeds"], 4);
    assert_eq!(
        v["columns"][0]["findings"]["stale-device-read"]["reported"],
        4
    );
    let (_, v) = json_run(&["compare", "scenarios/rx-sync.rhai", "--json"]);
    let presets = dmasim(&["presets", "--json"]);
    let presets: Value = serde_json::from_slice(&presets.stdout).unwrap();
    assert_eq!(
        v["columns"].as_array().unwrap().len(),
        presets.as_array().unwrap().len()
    );
    let args = ["compare", "scenarios/rx-sync.rhai", "--with", "arm65"];
    let out = dmasim(&args);
    assert_eq!(out.status.code(), Some(2), "{}", show(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither a preset"),
        "{}",
        show(&args, &out)
    );
}

#[test]
fn explain_prints_a_findings_page_and_reports_point_to_it() {
    let out = dmasim(&["explain", "stale-cpu-read"]);
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.starts_with("# `stale-cpu-read`"), "{page}");
    assert!(
        page.contains("## Fix") && page.contains("```rhai"),
        "{page}"
    );
    let out = dmasim(&["explain"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("swiotlb-full") && list.contains("warning"),
        "{list}"
    );
    let out = dmasim(&["explain", "stale-cpu-raed"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean \"stale-cpu-read\""));
    let out = dmasim(&["run", "scenarios/rx-no-sync.rhai", "--noise", "off"]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("For more about a finding, try `dmasim explain stale-cpu-read`."));
}

/// The binary is linked position-dependent on Linux with the GNU toolchain
/// (`build.rs`: `-no-pie`), so the dynamic loader has no pointers to relocate at
/// start-up: the ELF header's `e_type` is `ET_EXEC` (2), not `ET_DYN` (3) as a
/// position-independent executable's is (elf(5)).
#[test]
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn the_binary_is_linked_position_dependent_so_start_up_relocates_nothing() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_dmasim")).expect("the binary is readable");
    assert_eq!(&bin[..4], b"\x7fELF");
    let e_type = u16::from_le_bytes([bin[16], bin[17]]);
    assert_eq!(e_type, 2, "ET_EXEC expected, got e_type {e_type}");
}
