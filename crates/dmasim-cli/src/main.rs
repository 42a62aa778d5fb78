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

mod tour;

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
        /// Host memory the simulated DRAM may use ("4 GiB").
        #[arg(long, default_value = "4 GiB")]
        max_memory: String,
        /// Script operations before the run is stopped (endless loops end here).
        #[arg(long, default_value_t = 20_000_000)]
        max_ops: u64,
        /// Boot this preset instead of the one the script names.
        #[arg(long)]
        preset: Option<String>,
        /// "off" turns background noise off (cache pollution, prefetch).
        #[arg(long)]
        noise: Option<String>,
    },
    /// Compile a script and report syntax errors without running it.
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
    /// Built-in scenarios, one per DMA hazard, each run broken and fixed with an explanation.
    Tour {
        /// Run only this stop of the tour.
        name: Option<String>,
        /// List the stops.
        #[arg(long)]
        list: bool,
    },
}

fn main() -> ExitCode {
    match try_main() {
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
    }) {
        Command::Run {
            script,
            seed,
            json,
            max_memory,
            max_ops,
            preset,
            noise,
        } => {
            let memory_cap = parse_size(&max_memory).map_err(|e| format!("--max-memory: {e}"))?;
            let preset = match preset {
                None => None,
                Some(p) => Some(*PRESET_NAMES.iter().find(|n| **n == p).ok_or_else(|| {
                    format!(
                        "--preset: unknown preset {p:?}; known: {}",
                        PRESET_NAMES.join(", ")
                    )
                })?),
            };
            let noise_off = match noise.as_deref() {
                None | Some("default") => false,
                Some("off") => true,
                Some(other) => {
                    return Err(format!("--noise: {other:?} is not \"off\" or \"default\""))
                }
            };
            let opts = ScriptOptions {
                seed,
                memory_cap,
                max_operations: max_ops,
                preset,
                noise_off,
            };
            let report = script::run_file(&script, &opts);
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", text::render(&report, std::io::stdout().is_terminal()));
            }
            Ok(report.exit_code() as u8)
        }
        Command::Check { script } => {
            let src = std::fs::read_to_string(&script)
                .map_err(|e| format!("{}: {e}", script.display()))?;
            match script::check_source(&script.display().to_string(), &src) {
                Ok(()) => {
                    println!("{}: ok", script.display());
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
                println!(
                    "{}",
                    serde_json::to_string_pretty(&presets).map_err(|e| e.to_string())?
                );
            } else {
                for p in &presets {
                    println!("{}\n  {}", p.preset, p.description);
                    let v = serde_json::to_value(p).map_err(|e| e.to_string())?;
                    if let Some(m) = v.as_object() {
                        for (k, v) in m
                            .iter()
                            .filter(|(k, _)| *k != "preset" && *k != "description")
                        {
                            println!("  {k:<16} {v}");
                        }
                    }
                    println!();
                }
            }
            Ok(0)
        }
        Command::Tour { name, list } => tour::run(name.as_deref(), list),
    }
}
