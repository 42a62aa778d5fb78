//! The pictures (issue 8): `--html` pages and `--trace` files, checked as data and,
//! where Chromium is installed (`.ci/run` installs Debian's `chromium`), rendered
//! headless: every tour report loads without script errors, its SVGs have a size,
//! and a screenshot of every report is kept under
//! `target/html-screenshots/` and looked at for non-blank content.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dmasim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dmasim"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run dmasim")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmasim-html-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_dma_buf_is_on_the_memory_map_with_its_chunks() {
    let d = tmp("dmabuf");
    let html = d.join("dmabuf.html");
    let out = dmasim(&[
        "run",
        "scenarios/dmabuf-heap-contiguous.rhai",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let page = std::fs::read_to_string(&html).unwrap();
    // 300 KiB from the system heap: 15 chunks, each its own physical run.
    assert!(
        page.contains("dma-buf #1 (system heap) (freed) (300 KiB, 15 runs)"),
        "the buffer's entry"
    );
    assert!(
        page.contains("background:#c2417a"),
        "its colour in the legend"
    );
}

#[test]
fn run_html_shows_the_finding_s_lines_the_memory_map_and_the_timeline() {
    let d = tmp("run");
    let html = d.join("rx.html");
    let out = dmasim(&[
        "run",
        "scenarios/rx-no-sync.rhai",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the run still fails as without --html"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    for id in ["memory-map", "timeline", "stats-chart", "lines-0"] {
        assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
    }
    assert!(page.contains("error[stale-cpu-read]"));
    // The snapshot: 64 lines, every one stale for the CPU (it read them stale).
    assert!(
        page.contains("64 would give the CPU stale bytes"),
        "snapshot summary"
    );
    // Self-contained: nothing fetched from elsewhere.
    for bad in ["http://", "https://", "src=\"", "<link"] {
        assert!(!page.contains(bad), "{bad}");
    }
    // The JSON report carries the pictures' data only when asked.
    let plain: Value =
        serde_json::from_slice(&dmasim(&["run", "scenarios/rx-no-sync.rhai", "--json"]).stdout)
            .unwrap();
    assert!(plain.get("visual").is_none());
}

#[test]
fn the_trace_has_a_track_per_cpu_and_device_with_spans_and_instants() {
    let d = tmp("trace");
    let trace = d.join("t.json");
    let out = dmasim(&[
        "run",
        "scenarios/bounce-rx-no-sync.rhai",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert!(out.status.code().is_some_and(|c| c <= 1));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let ev = v["traceEvents"].as_array().unwrap();
    let threads: Vec<&str> = ev
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert!(threads.contains(&"CPU 0"), "{threads:?}");
    assert!(
        threads.contains(&"adc0") && threads.contains(&"findings"),
        "{threads:?}"
    );
    let has = |ph: &str, cat: &str| ev.iter().any(|e| e["ph"] == ph && e["cat"] == cat);
    assert!(
        has("X", "call") && has("X", "dma") && has("X", "copy"),
        "spans: calls, transfers, bounce copies"
    );
    assert!(
        has("i", "map") && has("i", "unmap") && has("i", "finding"),
        "instants"
    );
    // Spans are well-formed: non-negative times, durations > 0, in µs.
    for e in ev.iter().filter(|e| e["ph"] == "X") {
        assert!(e["dur"].as_f64().unwrap() > 0.0 && e["ts"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn explore_html_shows_the_counts_and_the_first_corrupted_run() {
    let d = tmp("explore");
    let html = d.join("e.html");
    let out = dmasim(&[
        "explore",
        "scenarios/rx-no-sync.rhai",
        "--seeds",
        "30",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("Exploration: 30 runs from seed 0"), "summary");
    assert!(page.contains("id=\"explore-chart\""));
    assert!(page.contains("stale-cpu-read: manifested"));
    // The page's run is the first seed where the corruption manifested.
    let summary: Value = serde_json::from_slice(
        &dmasim(&[
            "explore",
            "scenarios/rx-no-sync.rhai",
            "--seeds",
            "30",
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    let seed = summary["findings"]["stale-cpu-read"]["first_manifested_seed"]
        .as_u64()
        .unwrap();
    assert!(page.contains(&format!("The rest of this page is the run of seed {seed}.")));
    assert!(page.contains(&format!("<p>seed {seed} ·")));
}

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DMASIM_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn headless(chrome: &Path, extra: &[String], page: &Path) -> std::process::Output {
    Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(["--no-first-run", "--disable-dev-shm-usage"])
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium")
}

/// Share of pixels that differ from the page background.
fn ink(png_path: &Path) -> f64 {
    let dec = png::Decoder::new(std::fs::File::open(png_path).unwrap());
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    let px = &buf[..info.buffer_size()];
    let bg = [0xf6u8, 0xf7, 0xf9];
    let n = px.len() / ch;
    let inked = px
        .chunks(ch)
        .filter(|p| p[..3].iter().zip(bg).any(|(a, b)| a.abs_diff(b) > 8))
        .count();
    inked as f64 / n as f64
}

// The slowest test of all (every tour stop rendered in a browser): full suite only.
#[test]
#[ignore = "full suite: cargo test -- --ignored"]
fn every_tour_report_renders_in_headless_chromium() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must render the reports: install chromium (.ci/run does)"
        );
        eprintln!("skipped: no chromium on PATH (set DMASIM_CHROMIUM or install chromium)");
        return;
    };
    let dir = tmp("tour");
    let out = dmasim(&["tour", "--html", dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "html"))
        .collect();
    pages.sort();
    let index = std::fs::read_to_string(dir.join("index.html")).unwrap();
    let stops = String::from_utf8_lossy(&dmasim(&["tour", "--list"]).stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert!(stops >= 16, "{stops} stops");
    assert_eq!(
        index.matches("-broken.html").count(),
        stops,
        "the index links every stop"
    );
    pages.retain(|p| !p.ends_with("index.html"));
    assert_eq!(pages.len(), 2 * stops, "two pages per stop");
    let shots = root().join("target/html-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // Two browsers at a time.
    let chunks: Vec<Vec<PathBuf>> = pages
        .chunks(pages.len().div_ceil(2))
        .map(<[_]>::to_vec)
        .collect();
    std::thread::scope(|s| {
        for chunk in &chunks {
            let (chrome, shots) = (&chrome, &shots);
            s.spawn(move || {
                for page in chunk {
                    let name = page.file_stem().unwrap().to_string_lossy().into_owned();
                    let dom = headless(chrome, &["--dump-dom".into()], page);
                    let text = String::from_utf8_lossy(&dom.stdout);
                    assert!(
                        text.contains("data-render=\"ok\""),
                        "{name}: SVGs without size: {}",
                        &text[..text.len().min(300)]
                    );
                    assert!(text.contains("data-errors=\"\""), "{name}: script errors");
                    let svgs: usize = text
                        .split("data-svgs=\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    assert!(svgs >= 3, "{name}: memory map, timeline and stats: {svgs}");
                    let log = String::from_utf8_lossy(&dom.stderr);
                    assert!(!log.contains("Uncaught"), "{name}: {log}");
                    // Every report's screenshot is kept and looked at.
                    let png = shots.join(format!("{name}.png"));
                    headless(
                        chrome,
                        &[
                            format!("--screenshot={}", png.display()),
                            "--window-size=1280,2000".into(),
                        ],
                        page,
                    );
                    let share = ink(&png);
                    assert!(
                        share > 0.05,
                        "{name}: the screenshot is blank ({share:.3} inked)"
                    );
                }
            });
        }
    });
}
