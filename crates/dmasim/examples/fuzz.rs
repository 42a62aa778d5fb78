//! The long-running fuzzer: `cargo run --release --example fuzz -- --minutes N`
//! (options: `--from SEED`, `--out DIR`, default `fuzz-failures`).
//!
//! Generates scripts seed after seed ([`dmasim::fuzz::generate`]), checks each
//! ([`dmasim::fuzz::check_with`]: exit 0/1/2 only, no panic, bounded CPU time, the same
//! report twice on every 8th seed), minimises any failure to a script in the output
//! folder, and prints the number of executions (also every 10,000 scripts on stderr,
//! so that a campaign stopped early keeps its figure). Exit 1 when a failure was found.

use dmasim::fuzz::{check_with, generate, minimise_with};

/// This thread's CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`): the time bound of an
/// execution counts its own work, not the other jobs of a loaded host.
fn thread_cpu_ns() -> u64 {
    dmasim_hostmem::thread_cpu_ns().unwrap_or_else(dmasim::fuzz::wall_ns)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let minutes: f64 = arg("--minutes").and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let mut seed: u64 = arg("--from").and_then(|v| v.parse().ok()).unwrap_or(0);
    let out = std::path::PathBuf::from(arg("--out").unwrap_or_else(|| "fuzz-failures".into()));
    // dmasim turns its own panics into error reports; keep the terminal readable.
    std::panic::set_hook(Box::new(|_| {}));
    let start = std::time::Instant::now();
    let budget = std::time::Duration::from_secs_f64(minutes * 60.0);
    let (mut executions, mut scripts, mut failures) = (0u64, 0u64, 0u64);
    let first = seed;
    while start.elapsed() < budget {
        let p = generate(seed);
        let twice = seed % 8 == 0;
        executions += 1 + u64::from(twice);
        scripts += 1;
        if let Err(f) = check_with(&p.text(), seed, twice, thread_cpu_ns) {
            failures += 1;
            let small = minimise_with(&p, seed, &f, thread_cpu_ns);
            let _ = std::fs::create_dir_all(&out);
            let file = out.join(format!("fuzz-{seed}.rhai"));
            let text = format!("// dmasim fuzz seed {seed}: {f:?}\n// replay: dmasim run {} --seed {seed} --max-ops 200000 --max-memory 16MiB --max-sim-time 10s\n{}", file.display(), small.text());
            let _ = std::fs::write(&file, text);
            eprintln!("seed {seed}: {f:?} -> {}", file.display());
        }
        seed = seed.wrapping_add(1);
        // A progress line now and then: a campaign stopped early still has its figure.
        if scripts % 10_000 == 0 {
            eprintln!(
                "fuzz: {scripts} scripts (seeds {first}..{seed}), {executions} executions in {:.0} s ({:.0} s of CPU), {failures} failures so far",
                start.elapsed().as_secs_f64(),
                thread_cpu_ns() as f64 / 1e9
            );
        }
    }
    println!(
        "fuzz: {scripts} scripts (seeds {first}..{seed}), {executions} executions in {:.0} s ({:.0} s of CPU), {failures} failures",
        start.elapsed().as_secs_f64(),
        thread_cpu_ns() as f64 / 1e9
    );
    std::process::exit(i32::from(failures > 0));
}
