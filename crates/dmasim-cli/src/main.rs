//! The `dmasim` command: glue between the command line and the dmasim library.
//!
//! `main` → `try_main`; exit codes are decided in one place: 0 clean, 1 findings or
//! failed expectations, 2 script/argument/limit errors.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dmasim::config::{PlatformConfig, PRESET_NAMES};
use dmasim::report::text;
use dmasim::script::{self, ScriptOptions};
use dmasim::units::parse_size;

mod explain;
mod replay;
mod tour;

/// This thread's CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`): what `dmasim bench`
/// times its rounds with, so that waiting for a core on a loaded host does not
/// count (0 where the clock is missing).
fn thread_cpu_ns() -> u64 {
    dmasim_hostmem::thread_cpu_ns().unwrap_or(0)
}

/// The first error writing to stdout other than a closed pipe: the command then
/// exits 2 with it (`--json > /dev/full`), whatever the run's own outcome.
static WRITE_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Writes to stdout; a closed pipe (`dmasim presets | head`) is not an error, any
/// other failure is remembered for the exit status.
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            if let Ok(mut w) = WRITE_ERROR.lock() {
                w.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// `emit` with `format!` arguments and a newline.
#[macro_export]
macro_rules! outln {
    () => { $crate::emit("\n") };
    ($($arg:tt)*) => { $crate::emit(&format!("{}\n", format!($($arg)*))) };
}

#[derive(Parser)]
#[command(
    name = "dmasim",
    version,
    about = "DMA on an MPU running Linux, executable: caches with real data, the kernel's DMA API, and a sanitizer that explains every misuse."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Limits of each script run and where its imports come from, shared by every
/// command that runs scripts.
#[derive(clap::Args, Clone)]
struct Limits {
    /// The folder `import "name"` reads `name.rhai` from (default: the script's
    /// folder); paths outside it are refused.
    #[arg(long, value_name = "DIR")]
    lib: Option<PathBuf>,
    /// Host memory the simulated DRAM of one run may use ("4 GiB").
    #[arg(long, default_value = "4 GiB")]
    max_memory: String,
    /// Script operations before a run is stopped (endless loops end here).
    #[arg(long, default_value_t = 20_000_000)]
    max_ops: u64,
    /// Simulated time a run may last ("1 h", "30 s"; at most 100 days): a wait past
    /// it ends the run with exit 2.
    #[arg(long, default_value = "1 h")]
    max_sim_time: String,
}

impl Limits {
    /// The run options these limits give, over `base`, for `script`.
    fn apply(
        &self,
        script: &std::path::Path,
        base: ScriptOptions,
    ) -> Result<ScriptOptions, String> {
        let memory_cap = parse_size(&self.max_memory).map_err(|e| format!("--max-memory: {e}"))?;
        let max_sim_time_ns = dmasim::units::parse_duration_ns(&self.max_sim_time)
            .map_err(|e| format!("--max-sim-time: {e}"))?;
        if max_sim_time_ns == 0 || max_sim_time_ns > dmasim::system::MAX_SIM_TIME_NS {
            return Err(format!(
                "--max-sim-time: {:?} is not between 1 ns and 100 days",
                self.max_sim_time
            ));
        }
        Ok(ScriptOptions {
            memory_cap,
            max_operations: self.max_ops,
            max_sim_time_ns,
            lib_dir: Some(
                self.lib
                    .clone()
                    .unwrap_or_else(|| script::script_folder(script)),
            ),
            ..base
        })
    }
}

/// The worker threads of a command running many scripts: `--jobs` (else the CPUs),
/// fewer when `--max-total-memory` cannot hold that many runs at their
/// `--max-memory` each plus the host memory a run may hold beside it
/// (`HOST_HEAP_SLACK`). The number of workers never changes a result.
fn worker_count(jobs: Option<usize>, memory_cap: u64, total: &str) -> Result<usize, String> {
    let total = parse_size(total).map_err(|e| format!("--max-total-memory: {e}"))?;
    let per_run = memory_cap.saturating_add(dmasim::script::HOST_HEAP_SLACK);
    if total < per_run {
        return Err(format!(
            "--max-total-memory ({}) is less than one run may hold: --max-memory ({}) plus {} \
             for the script's values and the model's tables",
            dmasim::units::human_size(total),
            dmasim::units::human_size(memory_cap),
            dmasim::units::human_size(dmasim::script::HOST_HEAP_SLACK)
        ));
    }
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok(jobs.clamp(1, (total / per_run.max(1)).max(1) as usize))
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario script and report what happened.
    Run {
        /// The script (*.rhai).
        script: PathBuf,
        /// Seed of the run's random stream (cache victims, background noise).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print only the JSON report (schema dmasim.report/v1).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        limits: Limits,
        /// Boot this preset instead of the one the script names.
        #[arg(long)]
        preset: Option<String>,
        /// "off" turns background noise off (cache pollution, prefetch).
        #[arg(long)]
        noise: Option<String>,
        /// A boot option over the script's own, as `boot()` takes it: `iommu=smmu`,
        /// `swiotlb=off`, `ram=8GiB`, `l2.size=1MiB` (repeat for more).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        set: Vec<(String, String)>,
        /// Also write a self-contained HTML report (memory map, cache lines of each
        /// finding, timeline, charts) to this file.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Also write the timeline as Chrome trace-event JSON (Perfetto) to this file.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
    },
    /// Run a script over many seeds in parallel: how often each finding was reported and
    /// how often the corruption manifested, with the command that replays it.
    Explore {
        /// The script (*.rhai).
        script: PathBuf,
        /// Number of seeds.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Worker threads (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        #[command(flatten)]
        limits: Limits,
        /// Host memory all runs in flight may use together: fewer workers run when
        /// --jobs runs of --max-memory (plus 512 MiB for their values) would pass it.
        #[arg(long, default_value = "16 GiB")]
        max_total_memory: String,
        /// Print only the JSON summary (schema dmasim.explore/v1).
        #[arg(long)]
        json: bool,
        /// Run only shard I of N (every N-th seed from --from + I) and print one
        /// JSON line per run (schema dmasim.explore-run/v1), for `dmasim merge`.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// Boot this preset instead of the one the script names (the replay lines
        /// carry the flag).
        #[arg(long)]
        preset: Option<String>,
        /// A boot option over the script's own (`iommu=smmu`; repeat for more; the
        /// replay lines carry it).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        set: Vec<(String, String)>,
        /// Also write an HTML report: the exploration summary and the full report of
        /// the first seed where a finding manifested (or was reported).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Merge the JSON lines of `explore --shard` runs into one summary.
    Merge {
        /// Files of JSON lines ("-" for standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print only the JSON summary (schema dmasim.explore/v1).
        #[arg(long)]
        json: bool,
    },
    /// Run a script on several configurations and show the outcomes side by side:
    /// findings, cache and bounce traffic, throughput.
    Compare {
        /// The script (*.rhai).
        script: PathBuf,
        /// A configuration: a preset, KEY=VALUE boot options, or both, separated by
        /// commas ("arm64-noncoherent,iommu=smmu"). Repeat for each column; without
        /// it, every preset.
        #[arg(long = "with", value_name = "CONFIG")]
        with: Vec<String>,
        /// Seed of the runs whose figures are shown.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Seeds per configuration over which findings are counted (as explore).
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// "off" turns background noise off in every configuration.
        #[arg(long)]
        noise: Option<String>,
        /// Worker threads (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        #[command(flatten)]
        limits: Limits,
        /// Host memory all runs in flight may use together: fewer workers run when
        /// --jobs runs of --max-memory (plus 512 MiB for their values) would pass it.
        #[arg(long, default_value = "16 GiB")]
        max_total_memory: String,
        /// Print only the JSON (schema dmasim.compare/v1).
        #[arg(long)]
        json: bool,
    },
    /// Replay an ftrace capture of the kernel's `dma:` events (`trace.txt`; convert a
    /// trace.dat with `trace-cmd report`) through the model: findings, what the
    /// sequence costs on the chosen platform, and how many addresses equal the real
    /// kernel's (docs/replay.md).
    Replay {
        /// The trace (ftrace text).
        trace: PathBuf,
        /// The platform (default x86-64).
        #[arg(long)]
        preset: Option<String>,
        /// A boot option (`iommu=smmu`, `ram=8GiB`, `swiotlb=force`; repeat for more).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        set: Vec<(String, String)>,
        /// Options of a trace device: `0000:00:06.0=mask=32,coherent=false` (`*` for
        /// every device; keys mask, coherent, iommu, dma_bits, min_align_mask,
        /// max_segment, untrusted, bus_dma_limit, pci). Repeat for more.
        #[arg(long = "device-map", value_name = "NAME=OPTIONS")]
        device_map: Vec<String>,
        /// Where the trace's buffers go in the model's RAM: `trace` (same offset from
        /// the start of RAM) or `high` (at the top of RAM).
        #[arg(long, default_value = "trace")]
        placement: String,
        /// Replay on several configurations side by side (as `compare --with`:
        /// "rpi4,ram=8GiB"); repeat for each column.
        #[arg(long, value_name = "CONFIG")]
        compare: Vec<String>,
        /// Do not read the masks from a `pci.txt` beside the trace.
        #[arg(long)]
        no_pci_txt: bool,
        /// Do not start the model's swiotlb pool where the captured kernel's was
        /// (`swiotlb_pool.txt` or `dmesg.txt` beside the trace).
        #[arg(long)]
        no_pool_txt: bool,
        /// Print only the JSON (schema dmasim.replay/v1).
        #[arg(long)]
        json: bool,
        /// Write an HTML timeline (mappings per device, swiotlb and IOVA occupancy
        /// over time) to this file.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Explain a finding id: what it means, why it matters on real hardware, the fix
    /// and a script that shows it (`dmasim explain stale-cpu-read`).
    Explain {
        /// The finding id; without it, the list of ids.
        id: Option<String>,
    },
    /// Compile a script and resolve every call against the API (unknown functions and
    /// wrong argument counts, with the closest names) without running it.
    Check {
        /// The script (*.rhai).
        script: PathBuf,
    },
    /// List the platform presets with every field.
    Presets {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The model's own speed on this host, each figure beside a host baseline.
    Bench {
        /// JSON (schema dmasim.bench/v1) instead of a table.
        #[arg(long)]
        json: bool,
        /// Divide the work by this factor for a quicker, rougher look.
        #[arg(long, default_value_t = 1)]
        quick: u64,
    },
    /// Built-in scenarios, one per DMA hazard, each run broken and fixed with an explanation.
    Tour {
        /// Run only this stop of the tour.
        name: Option<String>,
        /// List the stops.
        #[arg(long)]
        list: bool,
        /// Write an HTML report of each stop's broken and fixed run into this directory.
        #[arg(long, value_name = "DIR")]
        html: Option<PathBuf>,
    },
}

/// `--set KEY=VALUE`: one boot option.
fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE (e.g. iommu=smmu), got {s:?}")),
    }
}

/// `--noise`: true for "off".
fn parse_noise(noise: Option<&str>) -> Result<bool, String> {
    match noise {
        None | Some("default") => Ok(false),
        Some("off") => Ok(true),
        Some(other) => Err(format!("--noise: {other:?} is not \"off\" or \"default\"")),
    }
}

/// The replay flags of `--set` pairs (quoted when a value has a space).
fn set_flags(set: &[(String, String)]) -> String {
    set.iter()
        .map(|(k, v)| {
            if v.contains(' ') {
                format!(" --set '{k}={v}'")
            } else {
                format!(" --set {k}={v}")
            }
        })
        .collect()
}

/// `--shard I/N`: shard I (0-based) of N.
fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--shard {s:?}: expected I/N with 0 <= I < N, e.g. 0/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (u64, u64) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// Prints an exploration summary as text or JSON.
fn print_explore(r: &dmasim::explore::ExploreReport, json: bool) -> Result<(), String> {
    if json {
        return print_json(r);
    }
    let name = &r.script;
    outln!(
        "{name}: {} runs from seed {}: {} failed, {} errors",
        r.runs,
        r.from,
        r.failed_runs,
        r.errors
    );
    for (id, f) in &r.findings {
        outln!(
            "  {id:<26} reported {:>5}/{}  manifested {:>5}/{}   {}",
            f.reported,
            r.runs,
            f.manifested,
            r.runs,
            f.reproduce
        );
    }
    if r.expectations.failed_runs > 0 {
        outln!(
            "  expectations failed on {} runs, first seed {}   {}",
            r.expectations.failed_runs,
            r.expectations.first_seed.unwrap_or(0),
            r.expectations.reproduce.as_deref().unwrap_or("")
        );
    }
    if let Some(e) = &r.first_error {
        outln!("  first error: {e}");
    }
    Ok(())
}

/// A progress bar of `total` runs on standard error, hidden when that is not a terminal.
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        if std::io::stderr().is_terminal() {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {per_sec}, eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// The built-in preset called `p`.
fn preset_named(p: &str) -> Result<&'static str, String> {
    PRESET_NAMES
        .iter()
        .copied()
        .find(|n| *n == p)
        .ok_or_else(|| {
            format!(
                "--preset: unknown preset {p:?}; known: {}",
                PRESET_NAMES.join(", ")
            )
        })
}

/// Writes a report file, creating its directory.
pub(crate) fn write_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Prints a value as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Keeps large host buffers in the process's heap. glibc serves every allocation
/// above 32 MiB at most with a fresh `mmap` and gives it back on free, so each
/// large device job (the payload a script's `dev_write` copies, the bytes a
/// `dev_read` returns) paid for faulting in new zeroed pages; from the heap, a
/// freed buffer's pages serve the next one. The simulated DRAM's frames are small
/// allocations and already come from the heap.
fn keep_large_buffers_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread
    // starts, with options and values glibc documents (mallopt(3)).
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() -> ExitCode {
    keep_large_buffers_in_the_heap();
    let result = try_main();
    // The process ends here: the kernel frees the heap at once, so the script
    // engine's thousands of records need not be freed one by one.
    script::forget_thread_engine();
    if let Some(e) = WRITE_ERROR.lock().ok().and_then(|mut w| w.take()) {
        eprintln!("dmasim: cannot write to standard output: {e}");
        return ExitCode::from(2);
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("dmasim: {msg}");
            ExitCode::from(2)
        }
    }
}

fn try_main() -> Result<u8, String> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Tour {
        name: None,
        list: false,
        html: None,
    }) {
        Command::Run {
            script,
            seed,
            json,
            limits,
            preset,
            noise,
            set,
            html,
            trace,
        } => {
            let preset = preset.as_deref().map(preset_named).transpose()?;
            let opts = limits.apply(
                &script,
                ScriptOptions {
                    seed,
                    preset,
                    noise_off: parse_noise(noise.as_deref())?,
                    record: html.is_some() || trace.is_some(),
                    boot_set: set,
                    ..ScriptOptions::default()
                },
            )?;
            let report = script::run_file(&script, &opts);
            if let Some(path) = &html {
                write_file(path, &dmasim::report::html::render(&report, None))?;
            }
            if let Some(path) = &trace {
                write_file(path, &dmasim::report::trace::chrome_trace(&report))?;
            }
            if json {
                outln!("{}", report.to_json());
            } else {
                emit(&text::render(&report, std::io::stdout().is_terminal()));
            }
            Ok(report.exit_code() as u8)
        }
        Command::Explore {
            script,
            seeds,
            from,
            jobs,
            limits,
            max_total_memory,
            json,
            shard,
            preset,
            set,
            html,
        } => {
            // Seeds are u64: a range that would pass the last one is refused
            // rather than cut short (or wrapped) without a word.
            if seeds == 0 || from.checked_add(seeds - 1).is_none() {
                return Err(format!(
                    "--from {from} --seeds {seeds}: expected at least one seed, the last at most {}",
                    u64::MAX
                ));
            }
            let src = std::fs::read_to_string(&script)
                .map_err(|e| format!("{}: {e}", script.display()))?;
            let preset = preset.as_deref().map(preset_named).transpose()?;
            // The name goes into every replay line, so it carries the flags.
            let name = match preset {
                Some(p) => format!("{} --preset {p}", script.display()),
                None => script.display().to_string(),
            } + set_flags(&set).as_str();
            let base = limits.apply(
                &script,
                ScriptOptions {
                    preset,
                    boot_set: set,
                    ..ScriptOptions::default()
                },
            )?;
            let jobs = worker_count(jobs, base.memory_cap, &max_total_memory)?;
            let (part, parts) = match &shard {
                None => (0, 1),
                Some(sh) => parse_shard(sh)?,
            };
            let total = dmasim::explore::seed_range(from, seeds)
                .filter(|s| (s - from) % parts == part)
                .count() as u64;
            let bar = progress_bar(total);
            let progress = |_done: u64| bar.inc(1);
            let records = dmasim::explore::run_shard(
                &name, &src, &base, from, seeds, part, parts, jobs, &progress,
            );
            bar.finish_and_clear();
            if shard.is_some() {
                let mut out = String::new();
                for r in &records {
                    out.push_str(&serde_json::to_string(r).map_err(|e| e.to_string())?);
                    out.push('\n');
                }
                emit(&out);
                return Ok(records.iter().map(|r| r.exit).max().unwrap_or(0) as u8);
            }
            let r = dmasim::explore::summarise_runs(&name, from, &records);
            if let Some(path) = &html {
                // The run worth looking at: the first corruption, else the first report.
                let seed = r
                    .findings
                    .values()
                    .filter_map(|f| f.first_manifested_seed)
                    .min()
                    .or_else(|| r.findings.values().filter_map(|f| f.first_seed).min())
                    .unwrap_or(from);
                let report = script::run_source(
                    &name,
                    &src,
                    &ScriptOptions {
                        seed,
                        record: true,
                        ..base.clone()
                    },
                );
                let extra = dmasim::report::html::explore_section(&r, seed);
                write_file(path, &dmasim::report::html::render(&report, Some(&extra)))?;
            }
            print_explore(&r, json)?;
            Ok(r.exit_code() as u8)
        }
        Command::Merge { files, json } => {
            let mut records = Vec::new();
            for f in &files {
                let text = if f.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
                } else {
                    std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?
                };
                for (i, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let r: dmasim::explore::RunRecord =
                        serde_json::from_str(line).map_err(|e| {
                            format!(
                                "{}:{}: not a dmasim.explore-run/v1 line: {e}",
                                f.display(),
                                i + 1
                            )
                        })?;
                    records.push(r);
                }
            }
            if records.is_empty() {
                return Err("merge: no run records in the input".into());
            }
            let r = dmasim::explore::merge(&records);
            print_explore(&r, json)?;
            Ok(r.exit_code() as u8)
        }
        Command::Compare {
            script,
            with,
            seed,
            seeds,
            noise,
            jobs,
            limits,
            max_total_memory,
            json,
        } => {
            let src = std::fs::read_to_string(&script)
                .map_err(|e| format!("{}: {e}", script.display()))?;
            let configs = if with.is_empty() {
                dmasim::compare::Config::every_preset()
            } else {
                with.iter()
                    .map(|w| dmasim::compare::Config::parse(w).map_err(|e| format!("--with {e}")))
                    .collect::<Result<Vec<_>, _>>()?
            };
            if configs.len() > dmasim::compare::MAX_CONFIGS {
                return Err(format!(
                    "--with: at most {} configurations",
                    dmasim::compare::MAX_CONFIGS
                ));
            }
            if seeds == 0 || seeds > 100_000 {
                return Err("--seeds: expected 1..=100000".into());
            }
            if seed.checked_add(seeds - 1).is_none() {
                return Err(format!(
                    "--seed {seed} --seeds {seeds}: the last seed would pass {}",
                    u64::MAX
                ));
            }
            let base = limits.apply(
                &script,
                ScriptOptions {
                    seed,
                    noise_off: parse_noise(noise.as_deref())?,
                    ..ScriptOptions::default()
                },
            )?;
            let jobs = worker_count(jobs, base.memory_cap, &max_total_memory)?;
            let bar = progress_bar(configs.len() as u64 * seeds);
            let progress = || bar.inc(1);
            let r = dmasim::compare::compare(
                &script.display().to_string(),
                &src,
                &configs,
                &base,
                seeds,
                jobs,
                &progress,
            );
            bar.finish_and_clear();
            if json {
                print_json(&r)?;
            } else {
                emit(&dmasim::compare::render(&r));
            }
            Ok(r.exit_code() as u8)
        }
        Command::Explain { id } => explain::run(id.as_deref()),
        Command::Replay {
            trace,
            preset,
            set,
            device_map,
            placement,
            compare,
            no_pci_txt,
            no_pool_txt,
            json,
            html,
        } => replay::run(&replay::Args {
            trace,
            preset,
            set,
            device_map,
            placement,
            compare,
            json,
            no_pci_txt,
            no_pool_txt,
            html,
        }),
        Command::Check { script } => {
            let src = std::fs::read_to_string(&script)
                .map_err(|e| format!("{}: {e}", script.display()))?;
            match script::check_source(&script.display().to_string(), &src) {
                Ok(()) => {
                    outln!("{}: ok", script.display());
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(2)
                }
            }
        }
        Command::Presets { json } => {
            let presets: Vec<PlatformConfig> = PRESET_NAMES
                .iter()
                .map(|n| PlatformConfig::preset(n).expect("built-in preset"))
                .collect();
            if json {
                let out: Vec<serde_json::Value> = presets
                    .iter()
                    .map(|p| {
                        let mut v = serde_json::to_value(p).unwrap_or_default();
                        let src: serde_json::Map<String, serde_json::Value> = p
                            .sources()
                            .into_iter()
                            .map(|(k, s)| (k.to_string(), s.into()))
                            .collect();
                        v["sources"] = src.into();
                        v
                    })
                    .collect();
                print_json(&out)?;
            } else {
                for p in &presets {
                    outln!("{}\n  {}", p.preset, p.description);
                    let v = serde_json::to_value(p).map_err(|e| e.to_string())?;
                    let sources = p.sources();
                    if let Some(m) = v.as_object() {
                        for (k, v) in m
                            .iter()
                            .filter(|(k, _)| *k != "preset" && *k != "description")
                        {
                            let shown = match (k.as_str(), v.as_u64()) {
                                (
                                    "ram_base" | "page_offset" | "vmalloc_start" | "zone_dma_limit"
                                    | "bus_dma_limit",
                                    Some(x),
                                ) => format!("{x:#x}"),
                                ("swiotlb", _) => {
                                    let plan = dmasim::kernel::dma::swiotlb::boot_plan(p);
                                    let setting = if v.is_null() {
                                        "default".to_string()
                                    } else {
                                        v.to_string()
                                    };
                                    format!(
                                        "{setting}: {} ({})",
                                        dmasim::units::human_size((plan.nslabs as u64) * 2048),
                                        plan.why
                                    )
                                }
                                _ => v.to_string(),
                            };
                            outln!("  {k:<16} {shown}");
                            if let Some((_, s)) = sources.iter().find(|(f, _)| f == k) {
                                outln!("  {:<16} ↳ {s}", "");
                            }
                        }
                    }
                    outln!();
                }
            }
            Ok(0)
        }
        Command::Tour { name, list, html } => tour::run(name.as_deref(), list, html.as_deref()),
        Command::Bench { json, quick } => {
            let r = dmasim::bench::run_timed(quick, Some(thread_cpu_ns));
            if json {
                print_json(&r)?;
            } else {
                let w = r.figures.iter().map(|f| f.name.len()).max().unwrap_or(6);
                outln!(
                    "{} rounds each, model, host copy and peer alternating, timed by {} clock; fastest / median round",
                    r.figures.first().map_or(0, |f| f.rounds),
                    r.clock
                );
                outln!(
                    "{:<w$} {:>21} {:>21} {:>15}",
                    "figure",
                    "model",
                    "host",
                    "ratio"
                );
                for f in &r.figures {
                    outln!(
                        "{:<w$} {:>10.1} / {:<8.1} {:>10.1} / {:<8.1} {:>6.3} / {:<6.3}  ({})",
                        f.name,
                        f.model,
                        f.model_median,
                        f.host,
                        f.host_median,
                        f.ratio,
                        f.ratio_median,
                        f.unit
                    );
                    if let Some(p) = &f.peer {
                        outln!(
                            "{:<w$} {:>21} {:>10.1} / {:<8.1} {:>6.3} / {:.3}",
                            format!("  ↳ peer: {}", p.name),
                            "",
                            p.rate,
                            p.rate_median,
                            p.ratio,
                            p.ratio_median
                        );
                    }
                }
            }
            Ok(0)
        }
    }
}
