//! Exploration over seeds (`dmasim explore`): the same script run on seeds
//! `from..from+runs`, in parallel, summarised per finding id — how often it was
//! reported, how often the corruption manifested, the first seed of each and the
//! command that replays it (schema `dmasim.explore/v1`).
//!
//! Runs are independent (each builds its own engine and machine), split over worker
//! threads by seed; the summary is built in seed order, so it is the same whatever the
//! number of jobs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::report::Report;
use crate::script::{run_source, ScriptOptions};

/// The summary of one finding id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FindingSummary {
    /// Runs that reported it.
    pub reported: u64,
    /// Runs where it manifested (the reader got corrupted bytes).
    pub manifested: u64,
    /// First seed that reported it.
    pub first_seed: Option<u64>,
    /// First seed where it manifested.
    pub first_manifested_seed: Option<u64>,
    /// The command that replays the first manifested run (or the first report).
    pub reproduce: String,
}

/// Failed expectations over the runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExpectationSummary {
    /// Runs with at least one failed expectation.
    pub failed_runs: u64,
    /// First such seed.
    pub first_seed: Option<u64>,
}

/// The whole exploration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExploreReport {
    /// Always `dmasim.explore/v1`.
    pub schema: &'static str,
    /// Script name.
    pub script: String,
    /// First seed.
    pub from: u64,
    /// Number of runs.
    pub runs: u64,
    /// Runs that stopped with an error (would exit 2).
    pub errors: u64,
    /// Runs that would exit 1.
    pub failed_runs: u64,
    /// Per finding id, in id order.
    pub findings: BTreeMap<String, FindingSummary>,
    /// Failed expectations.
    pub expectations: ExpectationSummary,
    /// The first error message, if any run stopped with one.
    pub first_error: Option<String>,
}

impl ExploreReport {
    /// Exit status of the exploration: 2 if any run errored, 1 if any run failed,
    /// else 0.
    pub fn exit_code(&self) -> i32 {
        if self.errors > 0 {
            2
        } else if self.failed_runs > 0 {
            1
        } else {
            0
        }
    }
}

/// Runs `src` on `runs` seeds from `from` with `jobs` worker threads, calling
/// `progress(done)` as runs finish (from worker threads).
pub fn explore(
    name: &str,
    src: &str,
    opts: &ScriptOptions,
    from: u64,
    runs: u64,
    jobs: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> ExploreReport {
    let jobs = jobs.clamp(1, 64) as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    let mut results: Vec<(u64, Report)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                let done = &done;
                sc.spawn(move || {
                    let mut out = Vec::new();
                    let mut seed = from + j;
                    while seed < from + runs {
                        let r = run_source(name, src, &ScriptOptions { seed, ..*opts });
                        out.push((seed, r));
                        progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
                        seed += jobs;
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    results.sort_by_key(|(s, _)| *s);
    summarise(name, from, &results)
}

/// Builds the summary from reports in seed order.
pub fn summarise(name: &str, from: u64, results: &[(u64, Report)]) -> ExploreReport {
    let mut rep = ExploreReport {
        schema: "dmasim.explore/v1",
        script: name.to_string(),
        from,
        runs: results.len() as u64,
        errors: 0,
        failed_runs: 0,
        findings: BTreeMap::new(),
        expectations: ExpectationSummary::default(),
        first_error: None,
    };
    for (seed, r) in results {
        match r.exit_code() {
            2 => {
                rep.errors += 1;
                if rep.first_error.is_none() {
                    rep.first_error = r.error.clone();
                }
            }
            1 => rep.failed_runs += 1,
            _ => {}
        }
        if r.expectations.failed > 0 {
            rep.expectations.failed_runs += 1;
            rep.expectations.first_seed.get_or_insert(*seed);
        }
        let mut seen: BTreeMap<&str, bool> = BTreeMap::new();
        for f in &r.findings {
            let m = seen.entry(f.id).or_insert(false);
            *m |= f.manifested == Some(true);
        }
        for (id, manifested) in seen {
            let s = rep.findings.entry(id.to_string()).or_default();
            s.reported += 1;
            s.first_seed.get_or_insert(*seed);
            if manifested {
                s.manifested += 1;
                s.first_manifested_seed.get_or_insert(*seed);
            }
        }
    }
    for s in rep.findings.values_mut() {
        let seed = s.first_manifested_seed.or(s.first_seed).unwrap_or(from);
        s.reproduce = format!("dmasim run {name} --seed {seed}");
    }
    rep
}

#[cfg(test)]
mod tests {
    use super::*;

    const RX: &str = r#"
        boot("arm64-noncoherent");
        let adc = device("adc0");
        let buf = kmalloc(4096);
        cpu_fill(buf, 0);
        let addr = dma_map_single(adc, buf, DMA_FROM_DEVICE);
        dma_mapping_error(adc, addr);
        dev_write(adc, addr, pattern("inc", 4096));
        let samples = cpu_read(buf, 0, 4096);
        dma_unmap_single(adc, addr, 4096, DMA_FROM_DEVICE);
    "#;

    #[test]
    fn a_missing_sync_is_reported_on_every_seed_and_the_summary_ignores_jobs() {
        let opts = ScriptOptions::default();
        let one = explore("rx.rhai", RX, &opts, 0, 40, 1, &|_| {});
        let four = explore("rx.rhai", RX, &opts, 0, 40, 4, &|_| {});
        assert_eq!(one, four, "the same summary whatever the number of jobs");
        let s = &one.findings["stale-cpu-read"];
        assert_eq!(s.reported, 40);
        assert!(
            s.manifested > 0 && s.manifested < 40,
            "intermittent: {}",
            s.manifested
        );
        let seed = s.first_manifested_seed.unwrap();
        assert_eq!(s.reproduce, format!("dmasim run rx.rhai --seed {seed}"));
        let again = run_source("rx.rhai", RX, &ScriptOptions { seed, ..opts });
        assert_eq!(
            again.findings[0].manifested,
            Some(true),
            "the reproduce line replays it"
        );
        assert_eq!(one.failed_runs, 40);
        assert_eq!(one.exit_code(), 1);
    }
}
