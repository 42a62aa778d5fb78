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
    /// The command that replays the first failing run.
    pub reproduce: Option<String>,
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

/// What one run contributes to a summary: a JSON line of `dmasim explore --shard`
/// (schema `dmasim.explore-run/v1`), so shards run on different machines merge into
/// the same summary one machine would have made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// Always `dmasim.explore-run/v1`.
    pub schema: String,
    /// Script name.
    pub script: String,
    /// Seed.
    pub seed: u64,
    /// The run's exit status (0, 1 or 2).
    pub exit: i32,
    /// At least one expectation failed.
    pub expectations_failed: bool,
    /// The error that stopped the run.
    pub error: Option<String>,
    /// Finding ids reported, each with whether it manifested on this run.
    pub findings: BTreeMap<String, bool>,
}

impl RunRecord {
    /// The record of a finished run.
    pub fn of(script: &str, seed: u64, r: &Report) -> RunRecord {
        let mut findings = BTreeMap::new();
        for f in &r.findings {
            let m = findings.entry(f.id.to_string()).or_insert(false);
            *m |= f.manifested == Some(true);
        }
        RunRecord {
            schema: "dmasim.explore-run/v1".into(),
            script: script.to_string(),
            seed,
            exit: r.exit_code(),
            expectations_failed: r.expectations.failed > 0,
            error: r.error.clone(),
            findings,
        }
    }
}

/// Runs the seeds of `from..from+runs` that belong to shard `shard` of `of` (every
/// `of`-th seed starting at `from + shard`), with `jobs` threads; records in seed
/// order.
#[allow(clippy::too_many_arguments)]
pub fn run_shard(
    name: &str,
    src: &str,
    opts: &ScriptOptions,
    from: u64,
    runs: u64,
    shard: u64,
    of: u64,
    jobs: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<RunRecord> {
    let of = of.max(1);
    let seeds: Vec<u64> = seed_range(from, runs)
        .filter(|s| (s - from) % of == shard)
        .collect();
    let done = std::sync::atomic::AtomicU64::new(0);
    par_map(&seeds, jobs, |&seed| {
        let r = run_source(
            name,
            src,
            &ScriptOptions {
                seed,
                ..opts.clone()
            },
        );
        progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
        RunRecord::of(name, seed, &r)
    })
}

/// The seeds `from`, `from + 1`, … : `runs` of them, or as many as there are up
/// to the last `u64` (the command line refuses a range that passes it).
pub fn seed_range(from: u64, runs: u64) -> std::ops::RangeInclusive<u64> {
    match runs.checked_sub(1) {
        Some(n) => from..=from.saturating_add(n),
        // An empty range: `RangeInclusive` cannot be built empty from bounds alone.
        None => {
            let mut r = 0..=0;
            r.next();
            r
        }
    }
}

/// `f` over `items` on `jobs` threads (1 to 64), each taking every `jobs`-th item;
/// the results come back in the items' order, whatever the number of threads.
pub fn par_map<T: Sync, R: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let jobs = jobs.clamp(1, 64);
    let f = &f;
    let mut out: Vec<(usize, R)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                sc.spawn(move || {
                    items
                        .iter()
                        .enumerate()
                        .skip(j)
                        .step_by(jobs)
                        .map(|(i, x)| (i, f(x)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // A worker that panicked takes its results with it: pass the panic on
        // rather than summarise the runs that are left (run_source catches the
        // panics of a run, so this is a bug of the caller's `f`).
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Merges run records (from any number of shards, in any order; a seed seen twice
/// counts once) into the summary.
pub fn merge(records: &[RunRecord]) -> ExploreReport {
    let mut by_seed: BTreeMap<u64, &RunRecord> = BTreeMap::new();
    for r in records {
        by_seed.entry(r.seed).or_insert(r);
    }
    let name = records.first().map_or("", |r| r.script.as_str());
    let from = by_seed.keys().next().copied().unwrap_or(0);
    let sorted: Vec<&RunRecord> = by_seed.into_values().collect();
    summarise_records(name, from, &sorted)
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
    let records = run_shard(name, src, opts, from, runs, 0, 1, jobs, progress);
    summarise_runs(name, from, &records)
}

/// Builds the summary from run records in seed order.
pub fn summarise_runs(name: &str, from: u64, records: &[RunRecord]) -> ExploreReport {
    let refs: Vec<&RunRecord> = records.iter().collect();
    summarise_records(name, from, &refs)
}

/// Builds the summary from reports in seed order.
pub fn summarise(name: &str, from: u64, results: &[(u64, Report)]) -> ExploreReport {
    let records: Vec<RunRecord> = results
        .iter()
        .map(|(seed, r)| RunRecord::of(name, *seed, r))
        .collect();
    let refs: Vec<&RunRecord> = records.iter().collect();
    summarise_records(name, from, &refs)
}

fn summarise_records(name: &str, from: u64, results: &[&RunRecord]) -> ExploreReport {
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
    for r in results {
        match r.exit {
            2 => {
                rep.errors += 1;
                if rep.first_error.is_none() {
                    rep.first_error = r.error.clone();
                }
            }
            1 => rep.failed_runs += 1,
            _ => {}
        }
        if r.expectations_failed {
            rep.expectations.failed_runs += 1;
            rep.expectations.first_seed.get_or_insert(r.seed);
        }
        for (id, &manifested) in &r.findings {
            let s = rep.findings.entry(id.clone()).or_default();
            s.reported += 1;
            s.first_seed.get_or_insert(r.seed);
            if manifested {
                s.manifested += 1;
                s.first_manifested_seed.get_or_insert(r.seed);
            }
        }
    }
    for s in rep.findings.values_mut() {
        let seed = s.first_manifested_seed.or(s.first_seed).unwrap_or(from);
        s.reproduce = format!("dmasim run {name} --seed {seed}");
    }
    rep.expectations.reproduce = rep
        .expectations
        .first_seed
        .map(|seed| format!("dmasim run {name} --seed {seed}"));
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

    #[test]
    fn failed_expectations_get_a_reproduce_line() {
        let src = "boot(\"arm64-coherent\");\nexpect(false, \"never\");";
        let r = explore("e.rhai", src, &ScriptOptions::default(), 7, 5, 2, &|_| {});
        assert_eq!(r.expectations.failed_runs, 5);
        assert_eq!(r.expectations.first_seed, Some(7));
        assert_eq!(
            r.expectations.reproduce.as_deref(),
            Some("dmasim run e.rhai --seed 7")
        );
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn shards_merge_into_the_single_machine_summary() {
        let opts = ScriptOptions::default();
        let whole = explore("rx.rhai", RX, &opts, 5, 30, 2, &|_| {});
        let mut lines = Vec::new();
        for shard in 0..3 {
            for r in run_shard("rx.rhai", RX, &opts, 5, 30, shard, 3, 1, &|_| {}) {
                lines.push(serde_json::to_string(&r).unwrap());
            }
        }
        lines.reverse(); // any order
        lines.push(lines[0].clone()); // a seed twice counts once
        let records: Vec<RunRecord> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(merge(&records), whole);
    }
}
