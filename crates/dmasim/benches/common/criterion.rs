//! The few pieces of criterion's API the benches use, in a page of code: groups,
//! `bench_function` / `bench_with_input`, `iter`, throughput, sample size, and the
//! `--warm-up-time` / `--measurement-time` options and a name filter.
//!
//! Criterion itself brought some twenty crates (regex, clap, ciborium, ...) into
//! every `cargo test` build, as a dev-dependency, for two bench targets
//! (BENCHMARKS.md, issue 21, third part). Rounds are timed with the thread's CPU
//! clock (`CLOCK_THREAD_CPUTIME_ID`), so waiting for a core on a shared machine does
//! not count; each bench prints the fastest and the median time per iteration of
//! its samples, and the rate when a throughput is set.

// Each bench target uses a different part of it.
#![allow(dead_code, unused_imports, unused_macros)]

use std::time::Duration;

pub use std::hint::black_box;

/// What one iteration processes, for the printed rate.
#[derive(Clone, Copy)]
pub enum Throughput {
    /// Elements (lines, pairs, requests) per iteration.
    Elements(u64),
    /// Bytes per iteration.
    Bytes(u64),
}

/// A bench's name inside its group.
pub struct BenchmarkId(String);

impl BenchmarkId {
    /// The parameter's value as the name.
    pub fn from_parameter(p: impl std::fmt::Display) -> BenchmarkId {
        BenchmarkId(p.to_string())
    }
}

/// Options from the command line (`cargo bench -- [FILTER] [--warm-up-time S]
/// [--measurement-time S]`); others, like cargo's own `--bench`, are ignored.
pub struct Criterion {
    filter: Option<String>,
    warm_up: Duration,
    measurement: Duration,
}

impl Default for Criterion {
    fn default() -> Criterion {
        let mut c = Criterion {
            filter: None,
            warm_up: Duration::from_secs(3),
            measurement: Duration::from_secs(5),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let secs = |v: Option<String>| {
                Duration::from_secs_f64(v.and_then(|v| v.parse().ok()).unwrap_or(1.0))
            };
            match a.as_str() {
                "--warm-up-time" => c.warm_up = secs(args.next()),
                "--measurement-time" => c.measurement = secs(args.next()),
                s if s.starts_with("--") => {}
                s => c.filter = Some(s.to_string()),
            }
        }
        c
    }
}

impl Criterion {
    /// A group of benches sharing a sample size and throughput.
    pub fn benchmark_group(&mut self, name: impl Into<String>) -> BenchmarkGroup<'_> {
        BenchmarkGroup {
            warm_up: self.warm_up,
            measurement: self.measurement,
            c: self,
            name: name.into(),
            samples: 100,
            throughput: None,
        }
    }
}

/// Benches that print under one name.
pub struct BenchmarkGroup<'a> {
    c: &'a Criterion,
    name: String,
    warm_up: Duration,
    measurement: Duration,
    samples: usize,
    throughput: Option<Throughput>,
}

impl BenchmarkGroup<'_> {
    /// Samples per bench (each a batch of iterations).
    pub fn sample_size(&mut self, n: usize) -> &mut Self {
        self.samples = n.max(2);
        self
    }

    /// Warm-up time of each bench of the group.
    pub fn warm_up_time(&mut self, d: Duration) -> &mut Self {
        self.warm_up = d;
        self
    }

    /// Measurement time of each bench of the group.
    pub fn measurement_time(&mut self, d: Duration) -> &mut Self {
        self.measurement = d;
        self
    }

    /// What each iteration of the following benches processes.
    pub fn throughput(&mut self, t: Throughput) -> &mut Self {
        self.throughput = Some(t);
        self
    }

    /// Times `f`'s routine.
    pub fn bench_function(&mut self, id: &str, mut f: impl FnMut(&mut Bencher)) -> &mut Self {
        let full = format!("{}/{id}", self.name);
        if self.c.filter.as_ref().is_some_and(|p| !full.contains(p)) {
            return self;
        }
        let mut b = Bencher {
            warm_up: self.warm_up,
            measurement: self.measurement,
            samples: self.samples,
            per_iter: Vec::new(),
        };
        f(&mut b);
        b.report(&full, self.throughput);
        self
    }

    /// Times `f`'s routine on `input`.
    pub fn bench_with_input<I: ?Sized>(
        &mut self,
        id: BenchmarkId,
        input: &I,
        mut f: impl FnMut(&mut Bencher, &I),
    ) -> &mut Self {
        self.bench_function(&id.0, |b| f(b, input))
    }

    /// Ends the group (nothing left to print).
    pub fn finish(&mut self) {}
}

/// Runs one bench's routine: a warm-up, then samples of as many iterations as
/// fill the measurement time.
pub struct Bencher {
    warm_up: Duration,
    measurement: Duration,
    samples: usize,
    per_iter: Vec<f64>,
}

/// The thread's CPU time, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

impl Bencher {
    /// Times `routine`.
    pub fn iter<R>(&mut self, mut routine: impl FnMut() -> R) {
        let start = thread_cpu();
        let mut n = 0u64;
        while n == 0 || thread_cpu() - start < self.warm_up.as_secs_f64() {
            black_box(routine());
            n += 1;
        }
        let each = (thread_cpu() - start) / n as f64;
        let budget = self.measurement.as_secs_f64() / self.samples as f64;
        let batch = ((budget / each.max(1e-9)) as u64).max(1);
        for _ in 0..self.samples {
            let t = thread_cpu();
            for _ in 0..batch {
                black_box(routine());
            }
            self.per_iter.push((thread_cpu() - t) / batch as f64);
        }
    }

    fn report(&mut self, name: &str, throughput: Option<Throughput>) {
        if self.per_iter.is_empty() {
            return;
        }
        self.per_iter.sort_by(f64::total_cmp);
        let (fast, median) = (self.per_iter[0], self.per_iter[self.per_iter.len() / 2]);
        let rate = |t: f64| match throughput {
            Some(Throughput::Elements(n)) => format!("  {:.3} M/s", n as f64 / t / 1e6),
            Some(Throughput::Bytes(n)) => format!("  {:.3} GB/s", n as f64 / t / 1e9),
            None => String::new(),
        };
        println!(
            "{name:<60} fastest {}{}  median {}{}  (thread CPU time, {} samples)",
            show(fast),
            rate(fast),
            show(median),
            rate(median),
            self.per_iter.len()
        );
    }
}

fn show(secs: f64) -> String {
    match secs {
        s if s < 1e-6 => format!("{:.1} ns", s * 1e9),
        s if s < 1e-3 => format!("{:.2} µs", s * 1e6),
        s if s < 1.0 => format!("{:.2} ms", s * 1e3),
        s => format!("{s:.2} s"),
    }
}

/// `criterion_group!(name, bench, ...)`: a function running the benches.
macro_rules! criterion_group {
    ($name:ident, $($bench:path),+ $(,)?) => {
        fn $name() {
            let mut c = $crate::criterion::Criterion::default();
            $($bench(&mut c);)+
        }
    };
}

/// `criterion_main!(group, ...)`: `main` running the groups.
macro_rules! criterion_main {
    ($($group:path),+ $(,)?) => {
        fn main() {
            $($group();)+
        }
    };
}

pub(crate) use {criterion_group, criterion_main};
