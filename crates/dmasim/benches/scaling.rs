//! The paths issue 19 found quadratic, at 1k and 100k objects: the CPU time per
//! object must stay within a factor of 2 (linear). Each benchmark runs one script
//! that makes N objects; criterion times whole runs, and BENCHMARKS.md gives the
//! ratio of the per-object times (100k / 1k). `examples/scaling_cpu.rs` gives the
//! same ratios in thread CPU time from alternating rounds.
//!
//! `cargo bench -p dmasim --bench scaling`; `SCALING_QUICK=1` stops at 10k.

// criterion's API, the part these benches use (`common/criterion.rs`).
#[path = "common/criterion.rs"]
mod criterion;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dmasim::bench::{scaling_script, SCALING_PATHS};
use dmasim::script::{run_source, ScriptOptions};

fn opts() -> ScriptOptions {
    ScriptOptions {
        max_operations: u64::MAX,
        ..ScriptOptions::default()
    }
}

fn scaling(c: &mut Criterion) {
    let sizes: &[u64] = if std::env::var_os("SCALING_QUICK").is_some() {
        &[1_000, 10_000]
    } else {
        &[1_000, 100_000]
    };
    for path in SCALING_PATHS {
        let mut g = c.benchmark_group(format!("scaling/{path}"));
        g.sample_size(10)
            .warm_up_time(std::time::Duration::from_millis(100))
            .measurement_time(std::time::Duration::from_secs(1));
        for &n in sizes {
            let src = scaling_script(path, n).expect("a known path");
            let r = run_source("scaling.rhai", &src, &opts());
            assert!(r.error.is_none(), "{path} {n}: {:?}", r.error);
            g.bench_with_input(BenchmarkId::from_parameter(n), &src, |b, src| {
                b.iter(|| run_source("scaling.rhai", src, &opts()));
            });
        }
        g.finish();
    }
}

criterion_group!(benches, scaling);
criterion_main!(benches);
