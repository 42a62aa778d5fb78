//! Scenario scripts: Rhai with the kernel's function names (`SCRIPT_API.md`).
//!
//! A script boots a preset, declares devices and then reads like driver code. The
//! engine runs with resource limits (operations, call depth, simulated time, and the
//! host memory the run holds, `heap_budget`), so an endless loop or a hostile size
//! ends in a clear error (exit 2), never a hang or a host out-of-memory. Errors point at `file:line:col`.

mod api;
mod dmabuf;
mod dmaengine;
mod dmapool;
mod heap_budget;
mod imports;
mod mmap;
mod noncontiguous;
mod page_pool;
mod resolve;
mod ring;
mod values;

use std::cell::RefCell;
use std::rc::Rc;

use rhai::{Engine, EvalAltResult, Position};

use crate::report::{Expectations, Outcome, PlatformSummary, Report, Stats, SCHEMA};
use crate::system::{System, DEFAULT_MAX_SIM_TIME_NS, DEFAULT_MEMORY_CAP};

pub use heap_budget::HOST_HEAP_SLACK;
pub use imports::{MAX_IMPORTS_PER_RUN, MAX_IMPORT_DEPTH};
pub use values::{BufferObj, DeviceObj, JobObj, PagesObj, ProcessObj, SgObj};

/// Limits and options of a script run.
#[derive(Debug, Clone)]
pub struct ScriptOptions {
    /// Seed of the random stream.
    pub seed: u64,
    /// Host bytes of simulated DRAM that may hold data.
    pub memory_cap: u64,
    /// Rhai operations before the run is stopped (an endless loop ends here).
    pub max_operations: u64,
    /// Host bytes the run may hold beside its simulated memory: the script's values,
    /// the log and the model's tables ([`HOST_HEAP_SLACK`] by default).
    pub heap_slack: u64,
    /// Simulated nanoseconds a run may last (`--max-sim-time`).
    pub max_sim_time_ns: u64,
    /// Boot this preset whatever the script's `boot()` names (its overrides still apply).
    pub preset: Option<&'static str>,
    /// Force background noise off (`noise: "off"`), after the script's overrides.
    pub noise_off: bool,
    /// Record the timeline, buffers and cache snapshots (`--html`, `--trace`).
    pub record: bool,
    /// Boot options that override the script's own (`--set key=value`), applied
    /// after them, in order. Values are read as `true`/`false`, integers (decimal or
    /// `0x` hex) or else strings (sizes like `"64 MiB"`, `"smmu"`), as in a script.
    pub boot_set: Vec<(String, String)>,
    /// The folder `import "name"` reads `name.rhai` from: the script's own folder
    /// for a script file (`--lib DIR` chooses another); none for a script given
    /// as text, where `import` is refused.
    pub lib_dir: Option<std::path::PathBuf>,
    /// Check Linux invariants of the memory model after every call (tests and the
    /// fuzzer; [`System::check_invariants`]): a broken one ends the run with an
    /// "internal error".
    pub check_invariants: bool,
}

impl Default for ScriptOptions {
    fn default() -> Self {
        ScriptOptions {
            seed: 0,
            memory_cap: DEFAULT_MEMORY_CAP,
            max_operations: 20_000_000,
            heap_slack: HOST_HEAP_SLACK,
            max_sim_time_ns: DEFAULT_MAX_SIM_TIME_NS,
            preset: None,
            noise_off: false,
            record: false,
            boot_set: Vec::new(),
            lib_dir: None,
            check_invariants: false,
        }
    }
}

/// The state a running script shares with its functions.
pub(crate) struct Session {
    pub(crate) sys: Option<System>,
    pub(crate) opts: ScriptOptions,
    pub(crate) expectations: Expectations,
    pub(crate) early_log: Vec<String>,
    /// dmaengine completion callbacks by descriptor: the function and its param.
    pub(crate) callbacks: std::collections::BTreeMap<u64, (rhai::FnPtr, Option<rhai::Dynamic>)>,
    /// `print` lines before `boot` not kept past the log's cap.
    pub(crate) early_dropped: u64,
    /// Imports being evaluated, one inside the other.
    pub(crate) import_depth: usize,
    /// Imports evaluated so far in the run.
    pub(crate) imports: usize,
}

pub(crate) type Shared = Rc<RefCell<Session>>;

// register_debugger is "volatile", not deprecated (its own note says so).
#[allow(deprecated)]
fn build_engine(session: &Shared, opts: &ScriptOptions, call_stack: bool) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(opts.max_operations)
        .set_max_call_levels(64)
        .set_max_expr_depths(128, 64)
        .set_max_modules(MAX_IMPORTS_PER_RUN);
    // No `max_string_size`/`max_array_size`/`max_map_size`: the run's host memory is
    // bounded as a whole instead, in constant time per operation (`heap_budget`).
    heap_budget::register(&mut engine, session);
    engine.set_module_resolver(imports::FolderResolver {
        session: session.clone(),
    });
    // A debugger that never stops: it makes Rhai keep its call stack, from which
    // a finding inside a script function gets its call chain (`api::with_sys`).
    // It costs every call a frame (with copies of its arguments) and every
    // statement a check, so a run first goes without it (`run_source_inner`).
    if call_stack {
        engine.register_debugger(
            |_, dbg| dbg,
            |_, _, _, _, _| Ok(rhai::debugger::DebuggerCommand::Continue),
        );
    }
    api::register(&mut engine, session);
    dmabuf::register(&mut engine, session);
    dmapool::register(&mut engine, session);
    mmap::register(&mut engine, session);
    noncontiguous::register(&mut engine, session);
    dmaengine::register(&mut engine, session);
    ring::register(&mut engine, session);
    page_pool::register(&mut engine, session);
    // Test builds only: a call that panics, so the tests of the path that turns a
    // dmasim bug into an error run (exit 2 with the seed) have a bug to meet.
    #[cfg(debug_assertions)]
    engine.register_fn(TEST_PANIC_FN, test_panic);
    engine
}

/// Failed expectations whose message a report keeps (the count goes on).
pub const MAX_EXPECTATION_FAILURES: usize = 1_000;

/// The name of the test-build hook that panics (not in release builds).
#[cfg(debug_assertions)]
pub const TEST_PANIC_FN: &str = "__dmasim_test_panic";

#[cfg(debug_assertions)]
fn test_panic() {
    panic!("the test hook {TEST_PANIC_FN}() was called");
}

/// Builds the engine without running anything (for `dmasim check` and docs tools).
pub fn engine_for_check() -> Engine {
    let s = new_session(&ScriptOptions::default());
    build_engine(&s, &ScriptOptions::default(), true)
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" (line ") {
        Some(i) if msg.ends_with(')') => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

/// `file:line:col: message` for a Rhai error.
///
/// The position is the innermost one that is a line of this script: an error
/// inside `eval("...")` or an imported module has positions in that other text, so
/// the `eval` call or the `import` is named instead (with the module's name).
/// `last_line` (the line of the last kernel call) stands in for an error Rhai
/// gives no position (an operation limit met between calls). An unknown function
/// names the closest existing ones (`api`: the engine and script that tell which).
fn describe_error(
    name: &str,
    err: &EvalAltResult,
    last_line: u32,
    api: Option<(&Engine, &rhai::AST)>,
) -> String {
    let inner = err.unwrap_inner();
    let mut pos = err.position();
    let mut layer = err;
    let mut module = None;
    loop {
        match layer {
            EvalAltResult::ErrorInFunctionCall(f, _, e, p) => {
                if f == "eval" {
                    break;
                }
                if !p.is_none() {
                    pos = *p;
                }
                layer = e;
            }
            EvalAltResult::ErrorInModule(m, _, p) => {
                if !p.is_none() {
                    pos = *p;
                }
                module = Some(m.clone());
                break;
            }
            other => {
                if !other.position().is_none() {
                    pos = other.position();
                }
                break;
            }
        }
    }
    if pos.is_none() && last_line > 0 {
        pos = Position::new(last_line.min(u16::MAX as u32) as u16, 0);
    }
    let msg = match inner {
        EvalAltResult::ErrorFunctionNotFound(sig, _) if api.is_some() => {
            let (engine, ast) = api.expect("checked by the guard");
            let (f, n, types) = resolve::parse_not_found(sig);
            resolve::Api::of(engine, Some(ast)).explain(&f, n, Some(&types))
        }
        EvalAltResult::ErrorRuntime(d, _) | EvalAltResult::ErrorTerminated(d, _) => d.to_string(),
        EvalAltResult::ErrorTooManyOperations(_) => {
            "the script ran out of operations (an endless loop?); raise the limit with --max-ops"
                .to_string()
        }
        other => strip_position(&other.to_string()),
    };
    let msg = match module {
        Some(m) => format!("in module {m:?}: {msg}"),
        None => msg,
    };
    locate(name, pos, &msg)
}

fn locate(name: &str, pos: Position, msg: &str) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{name}:{l}:{c}: {msg}"),
        (Some(l), None) => format!("{name}:{l}: {msg}"),
        _ => format!("{name}: {msg}"),
    }
}

/// The names of every function and method a script can call (each once, sorted),
/// for the API reference and its completeness test.
pub fn function_names() -> Vec<String> {
    let mut names: Vec<String> = resolve::engine_functions(&engine_for_check(), false)
        .into_iter()
        .filter_map(|(name, _)| {
            // Property getters/setters and operators are not called by name.
            // Names starting `__` are test hooks, not part of the API; Rhai's own
            // built-ins that the heap budget re-registers are Rhai's.
            (!name.is_empty()
                && !name.starts_with("__")
                && !heap_budget::RHAI_BUILTINS.contains(&name.as_str())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then_some(name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Compiles a script without running it.
///
/// # Errors
/// `file:line:col: message` for the first syntax error.
/// Every call is resolved against the registered API, Rhai's built-ins and the
/// script's own functions, so a misspelt name in a branch no run takes is found too.
///
/// # Errors
/// `file:line:col: message` for the first syntax error, or one such line per call
/// to a function that does not exist (with the closest names).
pub fn check_source(name: &str, src: &str) -> Result<(), String> {
    let mut engine = engine_for_check();
    // Keep dead branches (`if false { ... }`): their calls must resolve too.
    engine.set_optimization_level(rhai::OptimizationLevel::None);
    let ast = engine.compile(src).map_err(|e| {
        let pos = e.position();
        locate(name, pos, &strip_position(&e.to_string()))
    })?;
    let unresolved = resolve::Api::of(&engine, Some(&ast)).unresolved(&ast);
    if unresolved.is_empty() {
        return Ok(());
    }
    Err(unresolved
        .iter()
        .map(|(pos, msg)| locate(name, *pos, msg))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Runs a script and returns its report. Never panics on bad input: syntax errors,
/// unknown functions, wrong types and limits end in a report with outcome `error`.
/// A panic of dmasim itself (a bug) is caught too and ends the run with an error
/// that says so and names the seed, so `explore` and `compare` count it as an
/// error run (exit 2) instead of losing it.
pub fn run_source(name: &str, src: &str, opts: &ScriptOptions) -> Report {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_source_inner(name, src, opts)
    })) {
        Ok(r) => r,
        Err(payload) => {
            // The thread's engine may be mid-call: drop it, the next run builds one.
            let _ = ENGINE.try_with(|c| c.try_borrow_mut().map(|mut c| c.take()));
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            error_report(
                name,
                opts,
                format!(
                    "{name}: internal error (a dmasim bug, please report it with this script and --seed {}): {what}",
                    opts.seed
                ),
            )
        }
    }
}

fn run_source_inner(name: &str, src: &str, opts: &ScriptOptions) -> Report {
    // Building an engine (Rhai's standard package and our few hundred functions)
    // costs more than a short run itself, and `explore` runs one script thousands
    // of times per thread: each thread keeps its engine, its session slot and the
    // last script's AST, and every run starts from a fresh session.
    let mut cached = ENGINE.with(|c| c.borrow_mut().take()).unwrap_or_else(|| {
        let session = new_session(opts);
        let engine = build_engine(&session, opts, false);
        CachedEngine {
            session,
            engine,
            traced: None,
            ast: None,
        }
    });
    *cached.session.borrow_mut() = Session::fresh(opts);
    let compiled = match cached.ast.take() {
        Some((text, ast)) if text == src => Ok((text, ast)),
        _ => cached.engine.compile(src).map(|ast| (src.to_string(), ast)),
    };
    let error = match compiled {
        Err(e) => Some(locate(name, e.position(), &strip_position(&e.to_string()))),
        Ok((text, ast)) => {
            // First without Rhai's call stack; a run that made a finding inside a
            // script function, where the report names the calls that led there,
            // runs again with it (runs are deterministic: the same seed gives the
            // same run).
            let mut r = run_ast(&cached.session, &mut cached.engine, opts, name, &ast);
            let missing = cached
                .session
                .borrow()
                .sys
                .as_ref()
                .is_some_and(|s| s.check.call_chain_missing);
            if missing {
                let traced = cached
                    .traced
                    .get_or_insert_with(|| build_engine(&cached.session, opts, true));
                r = run_ast(&cached.session, traced, opts, name, &ast);
            }
            cached.ast = Some((text, ast));
            r
        }
    };
    let report = finish_run(name, opts, &cached.session, error);
    // The run's machine goes now, not when the thread next runs a script.
    cached.session.borrow_mut().sys = None;
    ENGINE.with(|c| *c.borrow_mut() = Some(cached));
    report
}

/// Runs `ast` on `engine` from a fresh session: the error, if any.
fn run_ast(
    session: &Shared,
    engine: &mut Engine,
    opts: &ScriptOptions,
    name: &str,
    ast: &rhai::AST,
) -> Option<String> {
    *session.borrow_mut() = Session::fresh(opts);
    engine.set_max_operations(opts.max_operations);
    heap_budget::start(opts.heap_slack);
    let result = engine.run_ast(ast);
    heap_budget::stop();
    result.err().map(|e| {
        let last_line = session.borrow().sys.as_ref().map_or(0, |s| s.line);
        describe_error(name, &e, last_line, Some((engine, ast)))
    })
}

/// Lets this thread's cached engine (and its last script) go without freeing them,
/// for a process about to exit: freeing an engine's thousands of function records
/// one by one costs more CPU than a short run, and the kernel takes the whole heap
/// back at exit anyway. The next run on this thread builds a new engine.
pub fn forget_thread_engine() {
    if let Ok(Some(cached)) =
        ENGINE.try_with(|c| c.try_borrow_mut().map(|mut c| c.take()).ok().flatten())
    {
        std::mem::forget(cached);
    }
}

/// A thread's engine, bound to its session slot, the same engine keeping Rhai's
/// call stack once a run has needed it, and the last script compiled.
struct CachedEngine {
    session: Shared,
    engine: Engine,
    traced: Option<Engine>,
    ast: Option<(String, rhai::AST)>,
}

thread_local! {
    static ENGINE: RefCell<Option<CachedEngine>> = const { RefCell::new(None) };
}

fn new_session(opts: &ScriptOptions) -> Shared {
    Rc::new(RefCell::new(Session::fresh(opts)))
}

impl Session {
    /// The state of a run that has not booted yet.
    fn fresh(opts: &ScriptOptions) -> Session {
        Session {
            sys: None,
            opts: opts.clone(),
            expectations: Expectations::default(),
            early_log: Vec::new(),
            callbacks: std::collections::BTreeMap::new(),
            early_dropped: 0,
            import_depth: 0,
            imports: 0,
        }
    }
}

/// The report of a finished run: ends the machine's run (when the script got
/// through) and collects findings, stats and log from the session.
fn finish_run(name: &str, opts: &ScriptOptions, session: &Shared, error: Option<String>) -> Report {
    let mut s = session.borrow_mut();
    let mut error = error;
    if error.is_none() {
        if let Some(sys) = s.sys.as_mut() {
            // A limit the script got past (an `eval` turns every error into one a
            // `try` can catch) still ends the run as an error.
            match sys.check_limits() {
                Err(e) => error = Some(format!("{name}:{}: {e}", sys.line)),
                Ok(()) => {
                    sys.line = 0;
                    sys.finish();
                }
            }
        }
    }
    let early_dropped = s.early_dropped;
    let expectations = std::mem::take(&mut s.expectations);
    let mut log = std::mem::take(&mut s.early_log);
    let (platform, findings, stats, streams, visual) = match s.sys.as_mut() {
        Some(sys) => {
            let visual = sys.finish_recording().map(Box::new);
            log.append(&mut sys.log);
            let mut dropped = sys.log_dropped + early_dropped;
            // The lines before boot and the machine's each had the cap: keep it
            // for the whole log.
            if log.len() > crate::system::MAX_LOG_LINES {
                dropped += (log.len() - crate::system::MAX_LOG_LINES) as u64;
                log.truncate(crate::system::MAX_LOG_LINES);
            }
            if dropped > 0 {
                log.push(format!(
                    "dmasim: {dropped} more log lines were not kept (at most {} per run)",
                    crate::system::MAX_LOG_LINES
                ));
            }
            (
                Some(PlatformSummary::of(&sys.cfg)),
                sys.check.findings().to_vec(),
                Stats::of(sys),
                std::mem::take(&mut sys.streams),
                visual,
            )
        }
        None => (None, Vec::new(), Stats::default(), Vec::new(), None),
    };
    let outcome = if error.is_some() {
        Outcome::Error
    } else if findings.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Findings
    };
    Report {
        schema: SCHEMA,
        script: name.to_string(),
        seed: opts.seed,
        platform,
        outcome,
        error,
        expectations,
        findings,
        stats,
        streams,
        log,
        visual,
    }
}

/// The report of a run that ended before it could start or in a dmasim bug.
fn error_report(name: &str, opts: &ScriptOptions, error: String) -> Report {
    Report {
        schema: SCHEMA,
        script: name.to_string(),
        seed: opts.seed,
        platform: None,
        outcome: Outcome::Error,
        error: Some(error),
        expectations: Expectations::default(),
        findings: Vec::new(),
        stats: Stats::default(),
        streams: Vec::new(),
        log: Vec::new(),
        visual: None,
    }
}

/// The folder a script file imports from: its own.
pub fn script_folder(path: &std::path::Path) -> std::path::PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Reads and runs a script file; an unreadable file gives an error report. Its
/// imports resolve in its own folder unless `opts.lib_dir` names another.
pub fn run_file(path: &std::path::Path, opts: &ScriptOptions) -> Report {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => {
            let opts = ScriptOptions {
                lib_dir: Some(opts.lib_dir.clone().unwrap_or_else(|| script_folder(path))),
                ..opts.clone()
            };
            run_source(&name, &src, &opts)
        }
        Err(e) => error_report(
            name.as_str(),
            opts,
            format!("{name}: cannot read the script: {e}"),
        ),
    }
}

/// Boots `preset` as a script's `boot(preset)` would, with `opts.boot_set` over it
/// and `opts.noise_off`, and hands the machine to Rust code (`dmasim replay`): one
/// place decides what `--set` means.
///
/// # Errors
/// An unknown preset, a bad `--set` value, or a platform that cannot boot.
pub fn boot_system(preset: &str, opts: &ScriptOptions) -> Result<System, String> {
    let name = crate::config::PRESET_NAMES
        .iter()
        .find(|p| **p == preset)
        .ok_or_else(|| {
            format!(
                "unknown preset {preset:?}; known: {}",
                crate::config::PRESET_NAMES.join(", ")
            )
        })?;
    let session = new_session(opts);
    let engine = build_engine(&session, opts, false);
    engine
        .run(&format!("boot({name:?});"))
        .map_err(|e| describe_error("boot", &e, 0, None))?;
    let sys = session.borrow_mut().sys.take();
    sys.ok_or_else(|| "boot: the platform did not boot".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_engine() -> bool {
        ENGINE.with(|c| c.borrow().is_some())
    }

    /// `forget_thread_engine` (what `dmasim` calls before it exits) empties the
    /// thread's engine slot, and the next run builds a new engine and gives the
    /// same report as a run on the kept one.
    #[test]
    fn a_forgotten_engine_is_rebuilt_and_the_report_is_the_same() {
        let src = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scenarios/rx-sync.rhai"
        ))
        .expect("scenario");
        let opts = ScriptOptions {
            seed: 3,
            ..ScriptOptions::default()
        };
        let first = run_source("rx-sync.rhai", &src, &opts).to_json();
        assert!(has_engine(), "a run keeps its engine for the next one");
        let kept = run_source("rx-sync.rhai", &src, &opts).to_json();
        forget_thread_engine();
        assert!(
            !has_engine(),
            "the slot is empty after forget_thread_engine"
        );
        let rebuilt = run_source("rx-sync.rhai", &src, &opts).to_json();
        assert!(has_engine());
        assert_eq!(first, kept);
        assert_eq!(first, rebuilt);
    }
}
