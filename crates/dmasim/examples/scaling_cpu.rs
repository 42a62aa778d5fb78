//! The issue 19 scaling figures in CPU time: `cargo run --release --example
//! scaling_cpu -- [ROUNDS] [PATH...]`.
//!
//! For each path of [`dmasim::bench::SCALING_PATHS`] (items 8 to 12), runs its
//! script with 0, 1k and 100k objects in alternating rounds (0, 1k, 100k, 0, 1k,
//! 100k, ...; 3 rounds unless ROUNDS says otherwise), timing each run with this
//! thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`: waiting for a core on a loaded
//! host does not count). The cost per object at N is (time(N) - time(0)) / N, boot
//! excluded (divided by N times `scaling_repeats` where a script makes its N objects
//! several times); the line gives the ratio 100k / 1k from the fastest and from the
//! median rounds (1.0 = linear; issue 19 asks for at most 2).

use dmasim::bench::{scaling_repeats, scaling_script, SCALING_PATHS};
use dmasim::script::{run_source, ScriptOptions};

/// This thread's CPU time in ns.
fn thread_cpu_ns() -> u64 {
    dmasim_hostmem::thread_cpu_ns().expect("CLOCK_THREAD_CPUTIME_ID")
}

fn min_median(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let chosen: Vec<&str> = args
        .iter()
        .filter(|a| a.parse::<usize>().is_err())
        .map(String::as_str)
        .collect();
    let opts = ScriptOptions {
        max_operations: u64::MAX,
        ..ScriptOptions::default()
    };
    let sizes = [0u64, 1_000, 100_000];
    println!("path: CPU ms per run at 0 / 1k / 100k objects (fastest, median of {rounds}); per-object µs at 1k and 100k; ratio 100k/1k (fastest, median)");
    for path in SCALING_PATHS {
        if !chosen.is_empty() && !chosen.contains(&path) {
            continue;
        }
        let srcs: Vec<String> = sizes
            .iter()
            .map(|&n| scaling_script(path, n).expect("a known path"))
            .collect();
        let mut t: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
        for _ in 0..rounds {
            for (k, src) in srcs.iter().enumerate() {
                let t0 = thread_cpu_ns();
                let r = run_source("scaling.rhai", src, &opts);
                let dt = thread_cpu_ns() - t0;
                assert!(r.error.is_none(), "{path} {}: {:?}", sizes[k], r.error);
                t[k].push(dt as f64 / 1e6);
            }
        }
        let per = |k: usize, base: f64, at: f64| {
            let objects = sizes[k] * scaling_repeats(path, sizes[k]);
            (at - base).max(0.0) * 1e3 / objects as f64
        };
        let (b0, bm) = min_median(&mut t[0].clone());
        let (s0, sm) = min_median(&mut t[1].clone());
        let (l0, lm) = min_median(&mut t[2].clone());
        let (ps0, psm) = (per(1, b0, s0), per(1, bm, sm));
        let (pl0, plm) = (per(2, b0, l0), per(2, bm, lm));
        println!(
            "{path}: {b0:.1}/{s0:.1}/{l0:.1} ms (median {bm:.1}/{sm:.1}/{lm:.1}); {ps0:.2} / {pl0:.2} µs per object (median {psm:.2} / {plm:.2}); ratio {:.2} (median {:.2})",
            pl0 / ps0,
            plm / psm
        );
    }
}
