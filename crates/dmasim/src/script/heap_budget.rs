//! The host memory a script run may hold, checked in constant time.
//!
//! A run's simulated memory is bounded by its `--max-memory` (the DRAM frames it may
//! touch, `hw::dram`); everything else it keeps on the host — the model's tables, the
//! log and the script's own values — by [`HOST_HEAP_SLACK`]. The heap bytes the run's
//! thread holds ([`dmasim_hostmem::thread_live_bytes`]) less its DRAM frames are
//! compared with the slack between script operations (Rhai's progress callback), and
//! the few built-in functions that can allocate a large value in one call from a small
//! argument (`blob(n)`, `pad`) check their request first.
//!
//! This replaces Rhai's `max_array_size`/`max_string_size`/`max_map_size`, which
//! bounded each value rather than the run (a thousand arrays at the cap were allowed)
//! and enforced it by re-measuring the whole value after every call that may change it:
//! an array grown with `push` cost O(n) per push (issue 19, item 12).
//!
//! Simplification: a value may overshoot the budget by what one operation allocates
//! (`s += s` doubles a string) before the next check stops the run.

use std::cell::Cell;

use rhai::{Array, Blob, Dynamic, Engine, EvalAltResult, ImmutableString, NativeCallContext, INT};

use super::Shared;
use crate::config::PAGE_SIZE;
use crate::units::human_size;

/// Host bytes a run may hold beside its simulated memory (which `--max-memory`
/// bounds): the model's tables, the log and the script's own values. A 64 MiB
/// payload written by `dev_write` is held twice while the call runs.
pub const HOST_HEAP_SLACK: u64 = 512 << 20;

/// Rhai's built-ins re-registered here with a size check (documented by Rhai, not
/// part of dmasim's API reference).
pub(crate) const RHAI_BUILTINS: [&str; 2] = ["blob", "pad"];

thread_local! {
    /// The thread's heap bytes when the running script began, and the bytes it may
    /// hold beside its simulated memory; `None` between runs.
    static BUDGET: Cell<Option<(i64, u64)>> = const { Cell::new(None) };
}

/// Starts the budget of a run on this thread: `slack` bytes beside its simulated
/// memory (`ScriptOptions::heap_slack`).
pub(crate) fn start(slack: u64) {
    BUDGET.with(|b| b.set(Some((dmasim_hostmem::thread_live_bytes(), slack))));
}

/// Ends the run's budget on this thread.
pub(crate) fn stop() {
    BUDGET.with(|b| b.set(None));
}

/// Host bytes the running script holds beside its simulated memory, counted from
/// when it began; `None` outside a run, or while a call holds the session (inside a
/// callback: the next operation at the top checks again).
fn held(session: &Shared) -> Option<(i64, u64)> {
    let (base, slack) = BUDGET.with(Cell::get)?;
    let s = session.try_borrow().ok()?;
    let dram = s.sys.as_ref().map_or(0, |sys| {
        sys.hw.dram.frames_touched().saturating_mul(PAGE_SIZE)
    });
    let held = dmasim_hostmem::thread_live_bytes()
        .saturating_sub(base)
        .saturating_sub(i64::try_from(dram).unwrap_or(i64::MAX));
    Some((held, slack))
}

fn message(what: &str, slack: u64) -> String {
    format!(
        "{what} more than {} of host memory beside the simulated memory (the script's \
         values and the model's tables; --max-memory bounds the simulated memory); is a \
         value growing without end?",
        human_size(slack)
    )
}

/// The message that ends the run when it holds more than its budget.
fn over_budget(session: &Shared) -> Option<String> {
    let (held, slack) = held(session)?;
    (i128::from(held) > i128::from(slack)).then(|| message("the run holds", slack))
}

/// Refuses a single allocation of `bytes` that would take the run past its budget.
fn request(
    session: &Shared,
    ctx: &NativeCallContext,
    bytes: u64,
) -> Result<(), Box<EvalAltResult>> {
    let Some((held, slack)) = held(session) else {
        return Ok(());
    };
    if i128::from(held) + i128::from(bytes) <= i128::from(slack) {
        return Ok(());
    }
    // Like the other limits, not catchable by `try`/`catch`: the run ends, exit 2.
    Err(EvalAltResult::ErrorTerminated(
        message(&format!("{}: this would hold", ctx.fn_name()), slack).into(),
        ctx.call_position(),
    )
    .into())
}

/// Host bytes a value holds (roughly: what cloning it allocates).
fn value_bytes(v: &Dynamic) -> u64 {
    const SLOT: u64 = std::mem::size_of::<Dynamic>() as u64;
    if let Some(a) = v.read_lock::<Array>() {
        a.iter().map(|e| SLOT + value_bytes(e)).sum()
    } else if let Some(b) = v.read_lock::<Blob>() {
        b.len() as u64
    } else if let Some(m) = v.read_lock::<rhai::Map>() {
        m.iter()
            .map(|(k, e)| SLOT * 2 + k.len() as u64 + value_bytes(e))
            .sum()
    } else if let Some(s) = v.read_lock::<ImmutableString>() {
        s.len() as u64
    } else {
        0
    }
}

fn len_of(len: INT) -> usize {
    usize::try_from(len.max(0)).unwrap_or(usize::MAX)
}

/// Installs the budget on an engine: the check between operations, and the
/// built-ins that allocate in one call (same results as Rhai's own, which the
/// engine's registered functions shadow; they would otherwise allocate whatever
/// size they are given, as Rhai's size limits are off).
pub(crate) fn register(engine: &mut Engine, session: &Shared) {
    let s = session.clone();
    engine.on_progress(move |_| over_budget(&s).map(Dynamic::from));

    fn filled(
        session: &Shared,
        ctx: NativeCallContext,
        len: INT,
        value: INT,
    ) -> Result<Blob, Box<EvalAltResult>> {
        let len = len_of(len);
        request(session, &ctx, len as u64)?;
        Ok(vec![(value & 0xff) as u8; len])
    }
    let s = session.clone();
    engine.register_fn("blob", move |ctx: NativeCallContext, len: INT| {
        filled(&s, ctx, len, 0)
    });
    let s = session.clone();
    engine.register_fn(
        "blob",
        move |ctx: NativeCallContext, len: INT, value: INT| filled(&s, ctx, len, value),
    );
    let s = session.clone();
    engine.register_fn(
        "pad",
        move |ctx: NativeCallContext, blob: &mut Blob, len: INT, value: INT| {
            let len = len_of(len);
            if len > blob.len() {
                request(&s, &ctx, (len - blob.len()) as u64)?;
                blob.resize(len, (value & 0xff) as u8);
            }
            Ok::<_, Box<EvalAltResult>>(())
        },
    );
    let s = session.clone();
    engine.register_fn(
        "pad",
        move |ctx: NativeCallContext, array: &mut Array, len: INT, item: Dynamic| {
            let len = len_of(len);
            if len > array.len() {
                let each = std::mem::size_of::<Dynamic>() as u64 + value_bytes(&item);
                request(&s, &ctx, ((len - array.len()) as u64).saturating_mul(each))?;
                array.resize(len, item);
            }
            Ok::<_, Box<EvalAltResult>>(())
        },
    );
    fn pad_str(
        session: &Shared,
        ctx: &NativeCallContext,
        string: &mut ImmutableString,
        len: INT,
        padding: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        let len = len_of(len);
        let have = string.chars().count();
        let per = padding.chars().count();
        if len <= have || per == 0 {
            return Ok(());
        }
        // Bytes per padding character, rounded up: what the result will hold.
        let bytes = ((len - have) as u64).saturating_mul(padding.len().div_ceil(per) as u64);
        request(session, ctx, bytes)?;
        let p = string.make_mut();
        p.extend(padding.chars().cycle().take(len - have));
        Ok(())
    }
    let s = session.clone();
    engine.register_fn(
        "pad",
        move |ctx: NativeCallContext, string: &mut ImmutableString, len: INT, c: char| {
            pad_str(&s, &ctx, string, len, c.encode_utf8(&mut [0; 4]))
        },
    );
    let s = session.clone();
    engine.register_fn(
        "pad",
        move |ctx: NativeCallContext,
              string: &mut ImmutableString,
              len: INT,
              padding: ImmutableString| { pad_str(&s, &ctx, string, len, &padding) },
    );
}
