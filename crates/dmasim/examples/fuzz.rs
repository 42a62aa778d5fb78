//! The long-running fuzzer: `cargo run --release --example fuzz -- --minutes N`
//! (options: `--from SEED`, `--out DIR`, default `fuzz-failures`).
//!
//! Generates scripts seed after seed ([`dmasim::fuzz::generate`]), checks each
//! ([`dmasim::fuzz::check`]: exit 0/1/2 only, no panic, bounded time, the same
//! report twice on every 8th seed), minimises any failure to a script in the output
//! folder, and prints the number of executions. Exit 1 when a failure was found.

use dmasim::fuzz::{check, generate, minimise};

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
        if let Err(f) = check(&p.text(), seed, twice) {
            failures += 1;
            let small = minimise(&p, seed, &f);
            let _ = std::fs::create_dir_all(&out);
            let file = out.join(format!("fuzz-{seed}.rhai"));
            let text = format!("// dmasim fuzz seed {seed}: {f:?}\n// replay: dmasim run {} --seed {seed} --max-ops 200000 --max-memory 256MiB --max-sim-time 10s\n{}", file.display(), small.text());
            let _ = std::fs::write(&file, text);
            eprintln!("seed {seed}: {f:?} -> {}", file.display());
        }
        seed = seed.wrapping_add(1);
    }
    println!(
        "fuzz: {scripts} scripts (seeds {first}..{seed}), {executions} executions in {:.0} s, {failures} failures",
        start.elapsed().as_secs_f64()
    );
    std::process::exit(i32::from(failures > 0));
}
