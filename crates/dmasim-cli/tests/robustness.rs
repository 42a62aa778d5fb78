//! Exit codes of the command line on hostile input (issue 19): a run that crashed,
//! a seed range past the last seed, a report that cannot be written, limits on the
//! commands that run many scripts. Each test is named after the item.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn dmasim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmasim"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

fn show(out: &Output) -> String {
    format!(
        "status: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A script file in a fresh folder of its own.
fn script_file(test: &str, src: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let f = d.join("s.rhai");
    std::fs::write(&f, src).unwrap();
    f
}

/// Item 14: a script that crashes dmasim on every seed printed "0 runs … 0 errors"
/// and exited 0 (`--shard` printed nothing, `compare` exited 0). Each crashed run
/// is an error now: exit 2, with the seed that reproduces it.
#[test]
fn r19_14_crashed_runs_exit_2_with_their_seed() {
    let f = script_file("r19_14", "__dmasim_test_panic();\n");
    let f = f.to_str().unwrap();
    let out = dmasim(&["explore", f, "--seeds", "3", "--from", "10", "--jobs", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 runs from seed 10") && text.contains("3 errors"),
        "{}",
        show(&out)
    );
    assert!(text.contains("--seed 10"), "{}", show(&out));
    let out = dmasim(&["explore", f, "--seeds", "4", "--shard", "1/2"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "{}",
        show(&out)
    );
    let out = dmasim(&["compare", f, "--with", "arm64-coherent"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let out = dmasim(&["run", f]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

/// Item 15: `--from 18446744073709551615 --seeds 3` ran no seed and exited 0; the
/// range passes the last seed, so it is refused (exit 2); a range ending on it runs.
#[test]
fn r19_15_explore_seed_range_past_the_last_seed() {
    let f = script_file("r19_15", "boot(\"arm64-coherent\");\n");
    let f = f.to_str().unwrap();
    let out = dmasim(&[
        "explore",
        f,
        "--from",
        "18446744073709551615",
        "--seeds",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--seeds 3"),
        "{}",
        show(&out)
    );
    let out = dmasim(&[
        "explore",
        f,
        "--from",
        "18446744073709551614",
        "--seeds",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 runs from seed 18446744073709551614"),
        "{}",
        show(&out)
    );
    let out = dmasim(&["explore", f, "--seeds", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

/// Item 6: `explore` and `compare` take the limits of `run`, per run.
#[test]
fn r19_06_explore_and_compare_take_the_run_limits() {
    let f = script_file("r19_06", "boot(\"arm64-coherent\");\nloop { }\n");
    let f = f.to_str().unwrap();
    for cmd in ["explore", "compare"] {
        let out = dmasim(&[cmd, f, "--max-ops", "1000", "--json"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ran out of operations"),
            "{cmd}: {}",
            show(&out)
        );
        let out = dmasim(&[cmd, f, "--max-memory", "lots"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", show(&out));
        let out = dmasim(&[
            cmd,
            f,
            "--max-memory",
            "8 GiB",
            "--max-total-memory",
            "4 GiB",
        ]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--max-total-memory"),
            "{}",
            show(&out)
        );
        let out = dmasim(&[cmd, f, "--max-sim-time", "200 days"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", show(&out));
    }
}

/// Item 17: `--json > /dev/full` exited 1 with no message: a report that cannot be
/// written is exit 2 with the OS error.
#[cfg(target_os = "linux")]
#[test]
fn r19_17_report_write_failure_is_exit_2() {
    let f = script_file("r19_17", "boot(\"arm64-coherent\");\n");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dmasim"))
        .args(["run", f.to_str().unwrap(), "--json"])
        .stdout(Stdio::from(full))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left"),
        "{}",
        show(&out)
    );
}
