//! The user guide is executable (issue 8): the getting-started steps run as written,
//! every script in `docs/` compiles and those that state an exit code exit with it,
//! every registered script function is in the API reference, and links resolve.

use std::path::{Path, PathBuf};
use std::process::Command;

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(docs().join(name)).unwrap_or_else(|e| panic!("docs/{name}: {e}"))
}

/// ```` ```lang info ```` blocks of a Markdown text: (info string, body).
fn blocks(md: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = md.lines();
    while let Some(l) = lines.next() {
        if let Some(info) = l.strip_prefix("```") {
            let mut body = String::new();
            for b in lines.by_ref() {
                if b.starts_with("```") {
                    break;
                }
                body.push_str(b);
                body.push('\n');
            }
            out.push((info.trim().to_string(), body));
        }
    }
    out
}

/// Writes every ```` ```rhai title=NAME ```` block of `md` into `dir`.
fn write_scripts(md: &str, dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (info, body) in blocks(md) {
        if let Some(name) = info.strip_prefix("rhai title=") {
            std::fs::write(dir.join(name), &body).unwrap();
            out.push((name.to_string(), body));
        }
    }
    out
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmasim-guide-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn dmasim(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dmasim"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run dmasim")
}

#[test]
fn getting_started_runs_as_written() {
    let md = read("getting-started.md");
    let dir = tmp("start");
    let scripts = write_scripts(&md, &dir);
    assert!(scripts.len() >= 2, "the page writes scripts");
    let mut ran = 0;
    for (info, body) in blocks(&md) {
        if info != "sh" {
            continue;
        }
        for line in body.lines() {
            let Some(cmd) = line.trim().strip_prefix("cargo run --release -- ") else {
                continue;
            };
            let (cmd, comment) = cmd.split_once('#').unwrap_or((cmd, ""));
            let want: i32 = comment
                .trim()
                .strip_prefix("exit ")
                .and_then(|c| c.split(|ch: char| !ch.is_ascii_digit()).next())
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let args: Vec<&str> = cmd.split_whitespace().collect();
            let out = dmasim(&dir, &args);
            assert_eq!(
                out.status.code(),
                Some(want),
                "`{cmd}`: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if let Some(i) = args.iter().position(|a| *a == "--html") {
                let page = std::fs::read_to_string(dir.join(args[i + 1])).unwrap();
                assert!(page.contains("id=\"memory-map\""));
            }
            ran += 1;
        }
    }
    assert!(ran >= 6, "every step ran: {ran}");
}

#[test]
fn every_script_in_the_guide_compiles_and_exits_as_it_says() {
    let dir = tmp("all");
    let mut checked = 0;
    for entry in std::fs::read_dir(docs()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let md = std::fs::read_to_string(&path).unwrap();
        for (name, body) in write_scripts(&md, &dir) {
            let out = dmasim(&dir, &["check", &name]);
            assert_eq!(out.status.code(), Some(0), "{}: {name}", path.display());
            if let Some(code) = body
                .lines()
                .find_map(|l| l.trim().strip_prefix("// exit: "))
                .and_then(|c| c.trim().parse::<i32>().ok())
            {
                let out = dmasim(&dir, &["run", &name]);
                assert_eq!(
                    out.status.code(),
                    Some(code),
                    "{name}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked} scripts");
}

#[test]
fn the_api_reference_names_every_registered_function() {
    let api = read("script-api.md");
    let missing: Vec<String> = dmasim::script::function_names()
        .into_iter()
        .filter(|f| !api.contains(&format!("### {f}\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "undocumented script functions: {missing:?}"
    );
}

#[test]
fn links_between_guide_pages_resolve() {
    for entry in std::fs::read_dir(docs()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let md = std::fs::read_to_string(&path).unwrap();
        for part in md.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or_default();
            if target.starts_with("http") {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            if file.is_empty() {
                continue;
            }
            assert!(
                docs().join(file).exists(),
                "{}: link to {target}",
                path.display()
            );
        }
    }
}

/// `docs/ci.md` runs as written: every `sh` block through bash, and every
/// `run: dmasim ...` step of the workflow, against a clean driver script, with the
/// freshly built `dmasim` first on `PATH` (issue 17: the page's snippets had an
/// allow id that does not exist and a placeholder install URL).
#[test]
fn ci_page_commands_run_as_written() {
    let md = read("ci.md");
    let dir = tmp("ci");
    let driver = std::fs::read_to_string(docs().join("../scenarios/rx-sync.rhai")).unwrap();
    std::fs::write(dir.join("driver.rhai"), &driver).unwrap();
    std::fs::create_dir_all(dir.join("drivers/eth")).unwrap();
    std::fs::write(dir.join("drivers/eth/rx.rhai"), &driver).unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_dmasim"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let bash = |script: &str| {
        let out = Command::new("bash")
            .args(["-e", "-c", script])
            .env("PATH", &path)
            .current_dir(&dir)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "`{script}`: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let mut ran = 0;
    for (info, body) in blocks(&md) {
        match info.as_str() {
            "sh" => {
                bash(&body);
                ran += 1;
            }
            "yaml" => {
                for step in body
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("- run: "))
                {
                    if step.starts_with("dmasim ") {
                        bash(step);
                        ran += 1;
                    }
                }
            }
            _ => {}
        }
    }
    assert!(ran >= 5, "the page's commands ran: {ran}");
    // Every `allow("...")` the guide shows names a real finding id.
    for entry in std::fs::read_dir(docs()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for part in text.split("allow(\"").skip(1) {
            let id = part.split('"').next().unwrap();
            if id == "id" {
                continue; // the syntax itself: `allow("id")`
            }
            assert!(
                dmasim::check::finding::FINDING_IDS
                    .iter()
                    .any(|(i, _, _)| *i == id),
                "{}: allow(\"{id}\") is not a finding id",
                p.display()
            );
        }
    }
}
