//! The fuzzer in CI, bounded: generated scripts for at most ~30 s of host time
//! (issue 19's harness). Every script must end in a report with exit 0, 1 or 2,
//! never a panic, and every 4th is run twice for a byte-identical report; a few are
//! explored with 1 and 2 workers for the same summary.

use dmasim::fuzz::{check, fuzz_options, generate, minimise};

#[test]
fn generated_scripts_never_panic_and_are_deterministic() {
    let start = std::time::Instant::now();
    let budget = std::time::Duration::from_secs(30);
    let mut seed = 0u64;
    let mut failures = Vec::new();
    while start.elapsed() < budget && seed < 5_000 {
        let p = generate(seed);
        if let Err(f) = check(&p.text(), seed, seed % 4 == 0) {
            let small = minimise(&p, seed, &f);
            failures.push(format!("seed {seed}: {f:?}\n{}", small.text()));
        }
        if seed % 50 == 0 {
            let src = p.text();
            let a = dmasim::explore::explore("f.rhai", &src, &fuzz_options(0), 0, 4, 1, &|_| {});
            let b = dmasim::explore::explore("f.rhai", &src, &fuzz_options(0), 0, 4, 2, &|_| {});
            assert_eq!(a, b, "seed {seed}: explore depends on --jobs\n{src}");
        }
        seed += 1;
    }
    assert!(seed >= 50, "only {seed} scripts in the time budget");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_generator_is_a_function_of_the_seed_and_makes_valid_scripts() {
    assert_eq!(generate(7), generate(7));
    assert_ne!(generate(7).text(), generate(8).text());
    // Most scripts get past boot and run calls (a generator that only produced
    // syntax errors would test nothing).
    let ran = (0..40)
        .filter(|&s| {
            let r = dmasim::script::run_source("f.rhai", &generate(s).text(), &fuzz_options(s));
            r.platform.is_some()
        })
        .count();
    assert!(ran >= 20, "only {ran} of 40 scripts booted");
}
