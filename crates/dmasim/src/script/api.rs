//! The functions scripts call (`SCRIPT_API.md`), registered on the Rhai engine.
//!
//! Every function takes the call's position, so the system knows the script line of
//! each event; simulator failures become Rhai runtime errors at that position.

#![allow(clippy::needless_pass_by_value)]

use rhai::{Blob, Dynamic, Engine, EvalAltResult, ImmutableString, Map, NativeCallContext, INT};

use super::values::{BufferObj, DeviceObj, JobObj, PagesObj, ProcessObj, SgObj};
use super::Shared;
use crate::check::MapKind;
use crate::config::{PlatformConfig, PAGE_SIZE};
use crate::kernel::device::Device;
use crate::kernel::dma::{DmaDirection, DMA_MAPPING_ERROR};
use crate::kernel::mm::gfp::GFP_KERNEL;
use crate::kernel::{errno, BufKind};
use crate::report::{ExpectationFailure, Stats};
use crate::system::{RunOptions, SimError, System, MAX_ACCESS};
use crate::units::{parse_duration_ns, parse_size};

pub(super) type RResult<T> = Result<T, Box<EvalAltResult>>;

pub(super) fn err(ctx: &NativeCallContext, msg: impl Into<String>) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(msg.into().into(), ctx.call_position()).into()
}

/// A simulator failure as a Rhai error: a limit (host memory, simulated time) ends
/// the run whatever the script does (`ErrorTerminated` cannot be caught by
/// `try`/`catch`); anything else is an ordinary runtime error at the call.
pub(super) fn sim_err(ctx: &NativeCallContext, e: SimError) -> Box<EvalAltResult> {
    if e.is_limit() {
        EvalAltResult::ErrorTerminated(e.to_string().into(), ctx.call_position()).into()
    } else {
        err(ctx, e.to_string())
    }
}

fn line(ctx: &NativeCallContext) -> u32 {
    ctx.call_position().line().unwrap_or(0) as u32
}

/// Tells the sanitizer the lines of the script-function calls that led to this
/// call (Rhai's call stack, kept when `build_engine` registers a debugger),
/// innermost first, so that a finding inside a function shows `82 ← 140 ← 171`.
/// Without the debugger (a run's first try, see `run_source_inner`) it only notes
/// whether the call is nested (in a function, a callback or an import), which is
/// when a finding would need the chain.
fn note_callers(sys: &mut System, ctx: &NativeCallContext, importing: bool) {
    let here = ctx.call_position();
    let callers = &mut sys.check.callers;
    callers.0 = line(ctx);
    callers.1.clear();
    let Some(dbg) = ctx.debugger() else {
        // A native call at the script's top level runs at level 1; each script
        // function (or callback, or `call`) it is inside adds one.
        sys.check.callers_untracked = importing || ctx.call_level() > 1;
        return;
    };
    let mut frames = dbg.call_stack().iter().rev().peekable();
    // The top frame is this native call itself.
    if frames.peek().is_some_and(|f| f.pos == here) {
        frames.next();
    }
    callers.1.extend(
        frames
            .filter_map(|f| f.pos.line())
            .map(|l| l as u32)
            .take(16),
    );
}

/// Runs `f` on the booted system with the call's line set.
pub(super) fn with_sys<T>(
    s: &Shared,
    ctx: &NativeCallContext,
    f: impl FnOnce(&mut System) -> Result<T, SimError>,
) -> RResult<T> {
    let mut g = s.borrow_mut();
    let invariants = g.opts.check_invariants;
    let importing = g.import_depth > 0;
    let sys = g
        .sys
        .as_mut()
        .ok_or_else(|| err(ctx, "call boot(preset) before anything else"))?;
    sys.line = line(ctx);
    note_callers(sys, ctx, importing);
    let t0 = sys.hw.now_ps();
    let r = f(sys);
    if sys.recorder.is_some() {
        sys.record_after_call(ctx.fn_name(), t0);
    }
    let r = r.map_err(|e| sim_err(ctx, e))?;
    sys.check_limits().map_err(|e| sim_err(ctx, e))?;
    if invariants {
        sys.check_invariants()
            .map_err(|e| err(ctx, format!("internal error (a dmasim bug): {e}")))?;
    }
    Ok(r)
}

pub(super) fn size_of(ctx: &NativeCallContext, v: &Dynamic, what: &str) -> RResult<u64> {
    if let Ok(i) = v.as_int() {
        return u64::try_from(i)
            .map_err(|_| err(ctx, format!("{what}: a size cannot be negative ({i})")));
    }
    if let Some(s) = v.read_lock::<ImmutableString>() {
        return parse_size(&s).map_err(|e| err(ctx, format!("{what}: {e}")));
    }
    Err(err(
        ctx,
        format!(
            "{what}: expected a size (an integer or a string like \"4 KiB\"), got {}",
            v.type_name()
        ),
    ))
}

/// `m[key]` as a non-negative integer (`None` when absent): option maps of calls
/// such as `dmaengine_slave_config` and `dma_ring_create`; `call` names the call in
/// the error.
pub(super) fn map_uint(
    ctx: &NativeCallContext,
    m: &Map,
    key: &str,
    call: &str,
) -> RResult<Option<u64>> {
    match m.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_int()
            .ok()
            .and_then(|i| u64::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| err(ctx, format!("{call}: {key} must be a non-negative integer"))),
    }
}

pub(super) fn dir_of(ctx: &NativeCallContext, d: INT) -> RResult<DmaDirection> {
    DmaDirection::from_int(d).ok_or_else(|| err(ctx, format!("{d} is not a DMA direction (DMA_BIDIRECTIONAL=0, DMA_TO_DEVICE=1, DMA_FROM_DEVICE=2)")))
}

pub(super) fn buffer_obj(s: &Shared, id: u64) -> Dynamic {
    let g = s.borrow();
    let b = &g.sys.as_ref().expect("booted").kernel.buffers[&id];
    Dynamic::from(BufferObj::of(b))
}

fn opt_buffer(s: &Shared, id: Option<u64>) -> Dynamic {
    id.map_or(Dynamic::UNIT, |id| buffer_obj(s, id))
}

fn check_range(
    ctx: &NativeCallContext,
    b: &BufferObj,
    off: u64,
    len: u64,
    call: &str,
) -> RResult<()> {
    if off.checked_add(len).is_none_or(|e| e > b.len) {
        return Err(err(ctx, format!("{call}: bytes {off}..{} are outside buffer #{} ({} bytes); use cpu_write_va/cpu_read_va for raw addresses", off.saturating_add(len), b.id, b.len)));
    }
    Ok(())
}

fn blob_len(ctx: &NativeCallContext, len: u64) -> RResult<usize> {
    if len > MAX_ACCESS {
        return Err(err(
            ctx,
            format!(
                "{len} bytes is more than the {} MiB a single access may move",
                MAX_ACCESS >> 20
            ),
        ));
    }
    Ok(len as usize)
}

fn json_to_dynamic(v: serde_json::Value) -> Dynamic {
    match v {
        serde_json::Value::Null => Dynamic::UNIT,
        serde_json::Value::Bool(b) => b.into(),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map_or_else(|| n.as_f64().unwrap_or(0.0).into(), Dynamic::from),
        serde_json::Value::String(s) => s.into(),
        serde_json::Value::Array(a) => {
            Dynamic::from_array(a.into_iter().map(json_to_dynamic).collect())
        }
        serde_json::Value::Object(o) => {
            let m: Map = o
                .into_iter()
                .map(|(k, v)| (k.into(), json_to_dynamic(v)))
                .collect();
            Dynamic::from_map(m)
        }
    }
}

/// Applies `boot` overrides.
/// The `--set key=value` pairs as the map a script would pass to `boot`: `true` and
/// `false` are booleans, decimal and `0x` integers are integers, other numbers
/// floats, anything else a
/// string (sizes such as `64 MiB`, names such as `smmu`); `outer.inner` keys fill
/// the nested maps (`l2.size`, `iotlb.entries`, `noise.evict`).
fn set_map(pairs: &[(String, String)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| {
            let t = v.trim();
            let val = match t {
                "true" => Dynamic::from_bool(true),
                "false" => Dynamic::from_bool(false),
                _ => {
                    let int = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                        Some(h) => i64::from_str_radix(&h.replace('_', ""), 16).ok(),
                        None => t.replace('_', "").parse::<i64>().ok(),
                    };
                    match (int, t.parse::<f64>()) {
                        (Some(i), _) => Dynamic::from_int(i),
                        // A rate (`noise.evict=0.2`).
                        (None, Ok(f)) => Dynamic::from_float(f),
                        _ => Dynamic::from(t.to_string()),
                    }
                }
            };
            (k.trim(), val)
        })
        .fold(Map::new(), |mut m, (k, val)| {
            // `l2.size=1MiB` fills the map `l2` of the script syntax `#{ l2: #{ size } }`.
            match k.split_once('.') {
                Some((outer, inner)) => {
                    let entry = m
                        .entry(outer.into())
                        .or_insert_with(|| Dynamic::from_map(Map::new()));
                    if let Some(mut nested) = entry.write_lock::<Map>() {
                        nested.insert(inner.into(), val);
                    }
                }
                None => {
                    m.insert(k.into(), val);
                }
            }
            m
        })
}

/// A transfer latency: nanoseconds or a duration string ("600 ns"), at most 1 s
/// (so that picoseconds never overflow).
fn latency_of(ctx: &NativeCallContext, v: &Dynamic, key: &str) -> RResult<u64> {
    let ns = if let Ok(i) = v.as_int() {
        u64::try_from(i).map_err(|_| err(ctx, format!("{key}: negative latency")))?
    } else if let Some(t) = v.read_lock::<ImmutableString>() {
        parse_duration_ns(&t).map_err(|e| err(ctx, format!("{key}: {e}")))?
    } else {
        return Err(err(
            ctx,
            format!("{key}: expected nanoseconds or a duration like \"600 ns\""),
        ));
    };
    if ns > 1_000_000_000 {
        return Err(err(ctx, format!("{key}: at most 1 s")));
    }
    Ok(ns)
}

fn apply_overrides(ctx: &NativeCallContext, p: &mut PlatformConfig, m: &Map) -> RResult<()> {
    for (k, v) in m {
        let key = k.as_str();
        let num = |v: &Dynamic| -> RResult<u64> { size_of(ctx, v, key) };
        match key {
            "ram" => p.ram = num(v)?,
            "ram_base" => p.ram_base = num(v)?,
            "cpus" => p.cpus = u32::try_from(num(v)?).map_err(|_| err(ctx, "cpus: too many"))?,
            "iommu" => {
                let s = v.clone().into_string().map_err(|_| err(ctx, "iommu: expected \"none\", \"smmu\" or \"passthrough\""))?;
                if !["none", "smmu", "passthrough"].contains(&s.as_str()) {
                    return Err(err(ctx, format!("iommu: {s:?} is not \"none\", \"smmu\" or \"passthrough\"")));
                }
                p.iommu = s;
            }
            "swiotlb" => {
                p.swiotlb = match v.read_lock::<ImmutableString>() {
                    Some(s) if s.as_str() == "off" || s.as_str() == "noforce" => Some(0),
                    Some(s) if s.as_str() == "force" => {
                        p.swiotlb_force = true;
                        None
                    }
                    // A size; 0 is the same as "off".
                    _ => Some(num(v)?),
                }
            }
            "swiotlb_force" => p.swiotlb_force = v.as_bool().map_err(|_| err(ctx, "swiotlb_force: expected true or false"))?,
            "swiotlb_areas" => {
                let n = num(v)?;
                if !(1..=1024).contains(&n) {
                    return Err(err(ctx, "swiotlb_areas: expected 1..=1024"));
                }
                p.swiotlb_areas = n as u32;
            }
            // Not a Linux option: pins the pool where a captured kernel had it.
            "swiotlb_base" => p.swiotlb_base = num(v)?,
            "bus_dma_limit" => p.bus_dma_limit = num(v)?,
            "cma" => p.cma = num(v)?,
            "hugepages" => p.hugepages = num(v)?.min(1 << 16),
            "coherent" => p.coherent_default = v.as_bool().map_err(|_| err(ctx, "coherent: expected true or false"))?,
            "zone_dma_bits" => {
                let bits = num(v)?;
                if !(1..=64).contains(&bits) {
                    return Err(err(ctx, "zone_dma_bits: expected 1..=64"));
                }
                p.zone_dma_limit = crate::kernel::dma::dma_bit_mask(bits as u32);
            }
            "cache" | "l1" | "l2" => {
                let cm = v.read_lock::<Map>().ok_or_else(|| err(ctx, format!("{key}: expected a map #{{ size, ways, line }}")))?.clone();
                for (ck, cv) in &cm {
                    let n = size_of(ctx, cv, ck)?;
                    let target = if key == "l2" { &mut p.l2 } else { &mut p.l1 };
                    match ck.as_str() {
                        "size" => target.size = n,
                        "ways" => target.ways = u32::try_from(n).map_err(|_| err(ctx, "ways: too many"))?,
                        "line" => {
                            let l = u32::try_from(n).map_err(|_| err(ctx, "line: too large"))?;
                            p.l1.line = l;
                            p.l2.line = l;
                        }
                        other => return Err(err(ctx, format!("{key}.{other}: unknown cache field (size, ways, line)"))),
                    }
                }
            }
            "noise" => {
                if v.read_lock::<ImmutableString>().is_some_and(|s| s.as_str() == "off") {
                    p.noise = crate::config::NoiseConfig::OFF;
                } else {
                    let nm = v.read_lock::<Map>().ok_or_else(|| err(ctx, "noise: expected \"off\" or #{ evict, prefetch, migrate }"))?.clone();
                    for (nk, nv) in &nm {
                        let r = nv.as_float().or_else(|_| nv.as_int().map(|i| i as f64)).map_err(|_| err(ctx, format!("noise.{nk}: expected a rate 0.0-1.0")))?;
                        match nk.as_str() {
                            "evict" => p.noise.evict = r,
                            "prefetch" => p.noise.prefetch = r,
                            "migrate" => p.noise.migrate = r,
                            other => return Err(err(ctx, format!("noise.{other}: unknown (evict, prefetch, migrate)"))),
                        }
                    }
                }
            }
            "zone_dma32" => p.zone_dma32 = v.as_bool().map_err(|_| err(ctx, "zone_dma32: expected true or false"))?,
            "iommu_strict" => p.iommu_strict = Some(v.as_bool().map_err(|_| err(ctx, "iommu_strict: expected true or false"))?),
            "iommu_coherent_walk" => p.iommu_coherent_walk = Some(v.as_bool().map_err(|_| err(ctx, "iommu_coherent_walk: expected true or false"))?),
            "iommu_skip_pte_sync" => p.iommu_skip_pte_sync = v.as_bool().map_err(|_| err(ctx, "iommu_skip_pte_sync: expected true or false"))?,
            "iotlb" => {
                let m = v.read_lock::<Map>().ok_or_else(|| err(ctx, "iotlb: expected #{ entries, ways }"))?.clone();
                for (ik, iv) in &m {
                    let n = size_of(ctx, iv, ik)?;
                    if !(1..=65536).contains(&n) {
                        return Err(err(ctx, format!("iotlb.{ik}: expected 1..=65536")));
                    }
                    match ik.as_str() {
                        "entries" => {
                            p.iotlb_entries = n as u32;
                            p.iotlb_ways = p.iotlb_ways.min(n as u32);
                        }
                        "ways" => p.iotlb_ways = n as u32,
                        other => return Err(err(ctx, format!("iotlb.{other}: unknown (entries, ways)"))),
                    }
                }
                if p.iotlb_ways > p.iotlb_entries || p.iotlb_entries % p.iotlb_ways != 0 {
                    return Err(err(ctx, "iotlb: ways must divide entries"));
                }
            }
            "write_streaming" => {
                use crate::hw::cache::StreamThresholds;
                // Arm FAQ ka16133 (Cortex-A7) and the Cortex-A35 TRM: L1 after 3
                // whole-line store misses in a row, L2 after 127.
                p.write_streaming = if let Ok(on) = v.as_bool() {
                    if on { StreamThresholds { l1: 3, l2: 127 } } else { StreamThresholds::default() }
                } else {
                    let m = v.read_lock::<Map>().ok_or_else(|| err(ctx, "write_streaming: expected true, false or #{ l1, l2 }"))?.clone();
                    let mut t = StreamThresholds::default();
                    for (wk, wv) in &m {
                        let n = size_of(ctx, wv, wk)?;
                        let n = u32::try_from(n).ok().filter(|&n| n <= 1 << 20).ok_or_else(|| err(ctx, format!("write_streaming.{wk}: expected 0..=1048576 lines")))?;
                        match wk.as_str() {
                            "l1" => t.l1 = n,
                            "l2" => t.l2 = n,
                            other => return Err(err(ctx, format!("write_streaming.{other}: unknown (l1, l2)"))),
                        }
                    }
                    if t.l1 == 0 && t.l2 > 0 {
                        return Err(err(ctx, "write_streaming: l2 needs l1 (a store streams past L2 only once it streams past L1)"));
                    }
                    t
                };
            }
            // arch/arm64/include/asm/cache.h: cache_line_size_of_cpu, 4 << CTR_EL0.CWG.
            "cache_writeback_granule" => p.cache_writeback_granule = num(v)?,
            "dev_latency" => p.dev_latency_ns = latency_of(ctx, v, key)?,
            "iommu_forcedac" => p.iommu_forcedac = v.as_bool().map_err(|_| err(ctx, "iommu_forcedac: expected true or false"))?,
            "vfio_noiommu" => p.vfio_noiommu = v.as_bool().map_err(|_| err(ctx, "vfio_noiommu: expected true or false"))?,
            other => return Err(err(ctx, format!("boot: unknown override {other:?} (ram, ram_base, cpus, iommu, iommu_strict, iotlb, iommu_coherent_walk, iommu_skip_pte_sync, iommu_forcedac, vfio_noiommu, write_streaming, swiotlb, swiotlb_force, swiotlb_areas, swiotlb_base, bus_dma_limit, cma, hugepages, zone_dma_bits, zone_dma32, cache, l2, cache_writeback_granule, dev_latency, noise, coherent)"))),
        }
    }
    Ok(())
}

fn pattern(ctx: &NativeCallContext, kind: &str, len: u64, seed: u64) -> RResult<Blob> {
    let n = blob_len(ctx, len)?;
    Ok(match kind {
        "zero" => vec![0; n],
        "ones" => vec![0xff; n],
        "inc" => (0..n).map(|i| i as u8).collect(),
        "random" => {
            let mut r = crate::hw::rng::SimRng::new(seed ^ 0x5eed_da7a);
            let mut v = Vec::with_capacity(n + 8);
            while v.len() < n {
                v.extend_from_slice(&r.next_u64().to_le_bytes());
            }
            v.truncate(n);
            v
        }
        other => {
            return Err(err(
                ctx,
                format!("pattern: unknown kind {other:?} (zero, ones, inc, random)"),
            ))
        }
    })
}

#[allow(deprecated)]
fn register_constants(engine: &mut Engine) {
    use crate::kernel::dmaengine;
    use crate::uapi::dmabuf::{
        DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ, DMA_BUF_SYNC_RW, DMA_BUF_SYNC_START,
        DMA_BUF_SYNC_WRITE,
    };
    engine.on_var(|name, _, _| {
        let v: INT = match name {
            "DMA_BIDIRECTIONAL" => 0,
            "DMA_TO_DEVICE" => 1,
            "DMA_FROM_DEVICE" => 2,
            "DMA_NONE" => 3,
            // include/linux/gfp_types.h (v6.12 bit layout).
            "GFP_KERNEL" => 0xcc0,
            "GFP_ATOMIC" => 0x820,
            "GFP_DMA" => 0x01,
            "GFP_DMA32" => 0x04,
            "DMA_MAPPING_ERROR" => DMA_MAPPING_ERROR as INT,
            "DMA_ATTR_WEAK_ORDERING" => crate::kernel::dma::DMA_ATTR_WEAK_ORDERING as INT,
            "DMA_ATTR_SKIP_CPU_SYNC" => crate::kernel::dma::DMA_ATTR_SKIP_CPU_SYNC as INT,
            "PAGE_SIZE" => PAGE_SIZE as INT,
            // include/net/page_pool/types.h.
            "PP_FLAG_DMA_MAP" => crate::kernel::page_pool::PP_FLAG_DMA_MAP as INT,
            "PP_FLAG_DMA_SYNC_DEV" => crate::kernel::page_pool::PP_FLAG_DMA_SYNC_DEV as INT,
            "EPERM" => errno::EPERM,
            "ENOENT" => errno::ENOENT,
            "EIO" => errno::EIO,
            "ENXIO" => errno::ENXIO,
            "ENOMEM" => errno::ENOMEM,
            "EFAULT" => errno::EFAULT,
            "EBUSY" => errno::EBUSY,
            "EEXIST" => errno::EEXIST,
            "EINVAL" => errno::EINVAL,
            "ENOSPC" => errno::ENOSPC,
            "EBADF" => errno::EBADF,
            // include/uapi/linux/dma-buf.h.
            "DMA_BUF_SYNC_READ" => DMA_BUF_SYNC_READ as INT,
            "DMA_BUF_SYNC_WRITE" => DMA_BUF_SYNC_WRITE as INT,
            "DMA_BUF_SYNC_RW" => DMA_BUF_SYNC_RW as INT,
            "DMA_BUF_SYNC_START" => DMA_BUF_SYNC_START as INT,
            "DMA_BUF_SYNC_END" => DMA_BUF_SYNC_END as INT,
            // include/linux/dmaengine.h: enum dma_transfer_direction, dma_ctrl_flags,
            // enum dma_status.
            "DMA_MEM_TO_DEV" => dmaengine::DMA_MEM_TO_DEV as INT,
            "DMA_DEV_TO_MEM" => dmaengine::DMA_DEV_TO_MEM as INT,
            "DMA_PREP_INTERRUPT" => dmaengine::DMA_PREP_INTERRUPT as INT,
            "DMA_CTRL_ACK" => dmaengine::DMA_CTRL_ACK as INT,
            "DMA_COMPLETE" => dmaengine::DMA_COMPLETE as INT,
            "DMA_IN_PROGRESS" => dmaengine::DMA_IN_PROGRESS as INT,
            "DMA_ERROR" => dmaengine::DMA_ERROR as INT,
            _ => return Ok(None),
        };
        Ok(Some(Dynamic::from(v)))
    });
}

/// Registers every script function on `engine`.
#[allow(clippy::too_many_lines)]
pub(super) fn register(engine: &mut Engine, s: &Shared) {
    register_constants(engine);
    engine.register_type_with_name::<BufferObj>("Buffer");
    engine.register_get("va", |b: &mut BufferObj| b.va as INT);
    engine.register_get("len", |b: &mut BufferObj| b.len as INT);
    engine.register_get("kind", |b: &mut BufferObj| b.kind.to_string());
    engine.register_get("phys", |b: &mut BufferObj| b.phys as INT);
    engine.register_get("dma", |b: &mut BufferObj| {
        b.dma.map_or(Dynamic::UNIT, |d| Dynamic::from(d as INT))
    });
    engine.register_fn("to_string", |b: &mut BufferObj| {
        format!(
            "{} buffer #{} at {:#x} ({} bytes, phys {:#x})",
            b.kind, b.id, b.va, b.len, b.phys
        )
    });
    engine.register_type_with_name::<DeviceObj>("Device");
    engine.register_get("name", |d: &mut DeviceObj| d.name.clone());
    engine.register_fn("to_string", |d: &mut DeviceObj| {
        format!("device {}", d.name)
    });
    engine.register_type_with_name::<JobObj>("Job");
    engine.register_fn("hex", |x: INT| format!("{:#x}", x as u64));

    // ---- boot and devices ----
    let boot =
        |s: &Shared, ctx: &NativeCallContext, preset: &str, over: Option<Map>| -> RResult<()> {
            let mut g = s.borrow_mut();
            if g.sys.is_some() {
                return Err(err(ctx, "boot() may be called only once"));
            }
            let mut p =
                PlatformConfig::preset(g.opts.preset.unwrap_or(preset)).map_err(|e| err(ctx, e))?;
            if let Some(m) = over {
                apply_overrides(ctx, &mut p, &m)?;
            }
            if !g.opts.boot_set.is_empty() {
                apply_overrides(ctx, &mut p, &set_map(&g.opts.boot_set)).map_err(|e| {
                    let msg = match *e {
                        EvalAltResult::ErrorRuntime(m, _) => m.to_string(),
                        other => other.to_string(),
                    };
                    err(ctx, format!("--set: {msg}"))
                })?;
            }
            if g.opts.noise_off {
                p.noise = crate::config::NoiseConfig::OFF;
            }
            let opts = RunOptions {
                seed: g.opts.seed,
                memory_cap: g.opts.memory_cap,
                record: g.opts.record,
                max_sim_time_ns: g.opts.max_sim_time_ns,
            };
            let mut sys = System::boot(p, opts).map_err(|e| err(ctx, e.to_string()))?;
            sys.line = line(ctx);
            g.sys = Some(sys);
            Ok(())
        };
    let s1 = s.clone();
    engine.register_fn("boot", move |ctx: NativeCallContext, preset: &str| {
        boot(&s1, &ctx, preset, None)
    });
    let s1 = s.clone();
    engine.register_fn(
        "boot",
        move |ctx: NativeCallContext, preset: &str, m: Map| boot(&s1, &ctx, preset, Some(m)),
    );

    let device = |s: &Shared,
                  ctx: &NativeCallContext,
                  name: &str,
                  opts: Option<Map>|
     -> RResult<DeviceObj> {
        let mut d = with_sys(s, ctx, |sys| {
            if name.is_empty() || sys.kernel.devices.iter().any(|d| *d.name == *name) {
                return Err(SimError::Invalid(format!(
                    "device: the name {name:?} is empty or already used"
                )));
            }
            if sys.kernel.devices.len() >= 256 {
                return Err(SimError::Invalid("device: at most 256 devices".into()));
            }
            let mut d = Device::new(
                name,
                sys.cfg.coherent_default,
                sys.cfg.dev_bandwidth,
                sys.cfg.dev_latency_ns,
            );
            d.dma_offset = sys.cfg.dma_offset;
            d.bus_dma_limit = sys.cfg.bus_dma_limit;
            Ok(d)
        })?;
        {
            let mut pci_set = None;
            if let Some(m) = opts {
                for (k, v) in &m {
                    match k.as_str() {
                        "coherent" => d.coherent = v.as_bool().map_err(|_| err(ctx, "coherent: expected true or false"))?,
                        "dma_bits" => {
                            let b = v.as_int().map_err(|_| err(ctx, "dma_bits: expected an integer"))?;
                            if !(8..=64).contains(&b) {
                                return Err(err(ctx, "dma_bits: expected 8..=64"));
                            }
                            d.dma_bits = b as u32;
                        }
                        "iommu" => d.iommu = v.as_bool().map_err(|_| err(ctx, "iommu: expected true or false"))?,
                        "sg" => d.sg = v.as_bool().map_err(|_| err(ctx, "sg: expected true or false"))?,
                        "untrusted" => d.untrusted = v.as_bool().map_err(|_| err(ctx, "untrusted: expected true or false"))?,
                        "bus" => {
                            let b = v.clone().into_string().map_err(|_| err(ctx, "bus: expected \"pci\" or \"platform\""))?;
                            d.pci = match b.as_str() {
                                "pci" => true,
                                "platform" => false,
                                other => return Err(err(ctx, format!("bus: {other:?} is not \"pci\" or \"platform\""))),
                            };
                            pci_set = Some(d.pci);
                        }
                        "dma_offset" => d.dma_offset = size_of(ctx, v, "dma_offset")?,
                        "max_segment" => d.max_segment = size_of(ctx, v, "max_segment")?,
                        "bus_dma_limit" => d.bus_dma_limit = size_of(ctx, v, "bus_dma_limit")?,
                        "min_align_mask" => {
                            d.min_align_mask = size_of(ctx, v, "min_align_mask")?;
                            if d.min_align_mask >= 1 << 20 || !(d.min_align_mask + 1).is_power_of_two() {
                                return Err(err(ctx, "min_align_mask: expected 2^n - 1 below 1 MiB (NVMe uses 0xfff)"));
                            }
                        }
                        "seg_boundary" => {
                            let m = size_of(ctx, v, "seg_boundary")?;
                            if m < 0xfff || m.checked_add(1).is_some_and(|x| !x.is_power_of_two()) {
                                return Err(err(ctx, "seg_boundary: expected a mask 2^n - 1 of at least 0xfff"));
                            }
                            d.seg_boundary_mask = m;
                        }
                        "latency" => d.latency_ns = latency_of(ctx, v, "latency")?,
                        "bandwidth" => {
                            d.bandwidth = size_of(ctx, v, "bandwidth")?;
                            if d.bandwidth == 0 {
                                return Err(err(ctx, "bandwidth: must be at least 1 byte per µs"));
                            }
                        }
                        "iommu_group" => {
                            let g = v.clone().into_string().map_err(|_| err(ctx, "iommu_group: expected a name"))?;
                            if g.is_empty() || g.len() > 64 {
                                return Err(err(ctx, "iommu_group: a name of 1 to 64 characters"));
                            }
                            d.iommu_group = Some(g);
                        }
                        other => return Err(err(ctx, format!("device: unknown option {other:?} (coherent, dma_bits, iommu, iommu_group, sg, untrusted, bus, dma_offset, max_segment, bandwidth, latency, bus_dma_limit, min_align_mask, seg_boundary)"))),
                    }
                }
            }
            // include/linux/pci.h: pci_dev->untrusted exists only on PCI devices
            // (drivers/iommu/dma-iommu.c: dev_is_untrusted checks dev_is_pci first).
            if d.untrusted {
                if pci_set == Some(false) {
                    return Err(err(
                        ctx,
                        "untrusted: only a PCI device (bus: \"pci\") can be untrusted",
                    ));
                }
                d.pci = true;
            }
            let idx = with_sys(s, ctx, |sys| Ok(sys.add_device(d.clone())))?;
            Ok(DeviceObj {
                idx,
                name: d.name.to_string(),
            })
        }
    };
    let s1 = s.clone();
    engine.register_fn("device", move |ctx: NativeCallContext, name: &str| {
        device(&s1, &ctx, name, None)
    });
    let s1 = s.clone();
    engine.register_fn(
        "device",
        move |ctx: NativeCallContext, name: &str, m: Map| device(&s1, &ctx, name, Some(m)),
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_set_mask",
        move |ctx: NativeCallContext, d: DeviceObj, bits: INT| {
            with_sys(&s1, &ctx, |sys| sys.dma_set_mask(d.idx, bits))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_set_coherent_mask",
        move |ctx: NativeCallContext, d: DeviceObj, bits: INT| {
            with_sys(&s1, &ctx, |sys| sys.dma_set_coherent_mask(d.idx, bits))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_set_mask_and_coherent",
        move |ctx: NativeCallContext, d: DeviceObj, bits: INT| {
            with_sys(&s1, &ctx, |sys| sys.dma_set_mask_and_coherent(d.idx, bits))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "iommu_group_set_type",
        move |ctx: NativeCallContext, d: DeviceObj, name: &str| {
            with_sys(&s1, &ctx, |sys| Ok(sys.iommu_group_set_type(d.idx, name)))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_max_mapping_size",
        move |ctx: NativeCallContext, d: DeviceObj| {
            with_sys(&s1, &ctx, |sys| Ok(sys.dma_max_mapping_size(d.idx) as INT))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "is_swiotlb_buffer",
        move |ctx: NativeCallContext, d: DeviceObj, addr: INT| {
            with_sys(&s1, &ctx, |sys| {
                let pa = sys.kernel.devices[d.idx].dma_to_phys(addr as u64);
                Ok(sys.is_swiotlb_buffer(pa))
            })
        },
    );
    for (fname, dir) in [
        ("stream_to_device", DmaDirection::ToDevice),
        ("stream_from_device", DmaDirection::FromDevice),
    ] {
        let s1 = s.clone();
        engine.register_fn(
            fname,
            move |ctx: NativeCallContext,
                  d: DeviceObj,
                  what: Dynamic,
                  count: INT|
                  -> RResult<Dynamic> {
                let buf = match what.clone().try_cast::<BufferObj>() {
                    Some(b) => crate::throughput::StreamBuffer::Existing(b.id),
                    None => crate::throughput::StreamBuffer::Fresh(size_of(&ctx, &what, fname)?),
                };
                let count = u64::try_from(count)
                    .map_err(|_| err(&ctx, format!("{fname}: negative count")))?;
                let r = with_sys(&s1, &ctx, |sys| sys.stream(d.idx, buf, count, dir))?;
                Ok(json_to_dynamic(serde_json::to_value(r).unwrap_or_default()))
            },
        );
        // The window form (outstanding.rs): pcie-bench's random requests over a
        // window mapped once, several in flight.
        let s1 = s.clone();
        engine.register_fn(
            fname,
            move |ctx: NativeCallContext,
                  d: DeviceObj,
                  size: Dynamic,
                  count: INT,
                  opts: Map|
                  -> RResult<Dynamic> {
                let size = size_of(&ctx, &size, fname)?;
                let count = u64::try_from(count)
                    .map_err(|_| err(&ctx, format!("{fname}: negative count")))?;
                if let Some(k) = opts
                    .keys()
                    .find(|k| !matches!(k.as_str(), "window" | "outstanding"))
                {
                    return Err(err(
                        &ctx,
                        format!("{fname}: unknown option {k:?} (window, outstanding)"),
                    ));
                }
                let window = opts
                    .get("window")
                    .and_then(|v| v.clone().try_cast::<SgObj>())
                    .ok_or_else(|| {
                        err(
                            &ctx,
                            format!("{fname}: the options need a window: a scatter-gather table mapped for the device"),
                        )
                    })?;
                let outstanding = map_uint(&ctx, &opts, "outstanding", fname)?.unwrap_or(1);
                let r = with_sys(&s1, &ctx, |sys| {
                    sys.stream_window(d.idx, size, count, dir, window.id, outstanding)
                })?;
                Ok(json_to_dynamic(serde_json::to_value(r).unwrap_or_default()))
            },
        );
    }
    let s1 = s.clone();
    engine.register_fn(
        "remove_device",
        move |ctx: NativeCallContext, d: DeviceObj| {
            with_sys(&s1, &ctx, |sys| sys.remove_device(d.idx))
        },
    );

    // ---- kernel memory ----
    let s1 = s.clone();
    engine.register_fn(
        "kmalloc",
        move |ctx: NativeCallContext, size: Dynamic| -> RResult<Dynamic> {
            let n = size_of(&ctx, &size, "kmalloc")?;
            let id = with_sys(&s1, &ctx, |sys| sys.kmalloc(n, GFP_KERNEL))?;
            Ok(opt_buffer(&s1, id))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "kmalloc",
        move |ctx: NativeCallContext, size: Dynamic, gfp: INT| -> RResult<Dynamic> {
            let n = size_of(&ctx, &size, "kmalloc")?;
            let id = with_sys(&s1, &ctx, |sys| sys.kmalloc(n, gfp as u64))?;
            Ok(opt_buffer(&s1, id))
        },
    );
    let s1 = s.clone();
    engine.register_fn("kfree", move |ctx: NativeCallContext, b: BufferObj| {
        with_sys(&s1, &ctx, |sys| {
            sys.kfree(b.id, "kfree", BufKind::Kmalloc);
            Ok(())
        })
    });
    let s1 = s.clone();
    engine.register_fn(
        "alloc_pages",
        move |ctx: NativeCallContext, order: INT, gfp: INT| -> RResult<Dynamic> {
            let o = u32::try_from(order)
                .map_err(|_| err(&ctx, "alloc_pages: order must be 0 or more"))?;
            let id = with_sys(&s1, &ctx, |sys| sys.alloc_pages(o, gfp as u64))?;
            Ok(opt_buffer(&s1, id))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "vmalloc",
        move |ctx: NativeCallContext, size: Dynamic| -> RResult<Dynamic> {
            let n = size_of(&ctx, &size, "vmalloc")?;
            let id = with_sys(&s1, &ctx, |sys| sys.vmalloc(n))?;
            Ok(opt_buffer(&s1, id))
        },
    );
    let s1 = s.clone();
    engine.register_fn("vfree", move |ctx: NativeCallContext, b: BufferObj| {
        with_sys(&s1, &ctx, |sys| {
            sys.kfree(b.id, "vfree", BufKind::Vmalloc);
            Ok(())
        })
    });
    let s1 = s.clone();
    engine.register_fn("zoneinfo", move |ctx: NativeCallContext| {
        with_sys(&s1, &ctx, |sys| {
            let mut m = Map::new();
            for z in sys.kernel.pages.zones.iter().filter(|z| z.managed > 0) {
                let mut zm = Map::new();
                zm.insert(
                    "free".into(),
                    Dynamic::from((z.free_pages() * PAGE_SIZE) as INT),
                );
                zm.insert(
                    "managed".into(),
                    Dynamic::from((z.managed * PAGE_SIZE) as INT),
                );
                zm.insert(
                    "start".into(),
                    Dynamic::from((z.start_pfn * PAGE_SIZE) as INT),
                );
                zm.insert("end".into(), Dynamic::from((z.end_pfn * PAGE_SIZE) as INT));
                m.insert(z.kind.name().into(), Dynamic::from_map(zm));
            }
            if let Some(c) = &sys.kernel.pages.cma {
                let mut cm = Map::new();
                cm.insert(
                    "start".into(),
                    Dynamic::from((c.base_pfn * PAGE_SIZE) as INT),
                );
                cm.insert(
                    "end".into(),
                    Dynamic::from(((c.base_pfn + c.count) * PAGE_SIZE) as INT),
                );
                cm.insert("used".into(), Dynamic::from((c.used() * PAGE_SIZE) as INT));
                m.insert("CMA".into(), Dynamic::from_map(cm));
            }
            Ok(m)
        })
    });
    let s1 = s.clone();
    engine.register_fn("free_pages", move |ctx: NativeCallContext, b: BufferObj| {
        with_sys(&s1, &ctx, |sys| {
            sys.kfree(b.id, "free_pages", BufKind::Pages);
            Ok(())
        })
    });
    let s1 = s.clone();
    engine.register_fn("virt_to_phys", move |ctx: NativeCallContext, va: INT| {
        with_sys(&s1, &ctx, |sys| {
            Ok(((va as u64)
                .wrapping_sub(sys.kernel.page_offset)
                .wrapping_add(sys.kernel.ram_base)) as INT)
        })
    });

    // ---- CPU accesses ----
    let s1 = s.clone();
    engine.register_fn(
        "cpu_write",
        move |ctx: NativeCallContext, b: BufferObj, off: INT, data: Blob| {
            let off = u64::try_from(off).map_err(|_| err(&ctx, "cpu_write: negative offset"))?;
            check_range(&ctx, &b, off, data.len() as u64, "cpu_write")?;
            with_sys(&s1, &ctx, |sys| sys.cpu_write_va(b.va + off, &data))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "cpu_fill",
        move |ctx: NativeCallContext, b: BufferObj, byte: INT| {
            let n = blob_len(&ctx, b.len)?;
            with_sys(&s1, &ctx, |sys| sys.cpu_fill_va(b.va, n as u64, byte as u8))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "cpu_read",
        move |ctx: NativeCallContext, b: BufferObj, off: INT, len: Dynamic| {
            let off = u64::try_from(off).map_err(|_| err(&ctx, "cpu_read: negative offset"))?;
            let n = size_of(&ctx, &len, "cpu_read")?;
            blob_len(&ctx, n)?;
            check_range(&ctx, &b, off, n, "cpu_read")?;
            with_sys(&s1, &ctx, |sys| sys.cpu_read_va(b.va + off, n))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "cpu_copy",
        move |ctx: NativeCallContext, dst: BufferObj, src: BufferObj| {
            let n = dst.len.min(src.len);
            blob_len(&ctx, n)?;
            with_sys(&s1, &ctx, |sys| {
                let data = sys.cpu_read_va(src.va, n)?;
                sys.cpu_write_va(dst.va, &data)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "cpu_write_va",
        move |ctx: NativeCallContext, va: INT, data: Blob| {
            with_sys(&s1, &ctx, |sys| sys.cpu_write_va(va as u64, &data))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "cpu_read_va",
        move |ctx: NativeCallContext, va: INT, len: Dynamic| {
            let n = size_of(&ctx, &len, "cpu_read_va")?;
            blob_len(&ctx, n)?;
            with_sys(&s1, &ctx, |sys| sys.cpu_read_va(va as u64, n))
        },
    );
    let s1 = s.clone();
    engine.register_fn("cpu", move |ctx: NativeCallContext, n: INT| {
        with_sys(&s1, &ctx, |sys| {
            if n < 0 || n >= INT::from(sys.cfg.cpus) {
                return Err(SimError::Invalid(format!(
                    "cpu({n}): this platform has CPUs 0..{}",
                    sys.cfg.cpus - 1
                )));
            }
            sys.cpu = n as usize;
            Ok(())
        })
    });

    // ---- DMA mapping API ----
    let alloc_coherent = |s: &Shared,
                          ctx: &NativeCallContext,
                          d: &DeviceObj,
                          size: &Dynamic,
                          gfp: u64|
     -> RResult<Dynamic> {
        let n = size_of(ctx, size, "dma_alloc_coherent")?;
        if n > 1 << 40 {
            return Ok(Dynamic::UNIT);
        }
        let id = with_sys(s, ctx, |sys| sys.dma_alloc_coherent_gfp(d.idx, n, gfp))?;
        Ok(opt_buffer(s, id))
    };
    let s1 = s.clone();
    engine.register_fn(
        "dma_alloc_coherent",
        move |ctx: NativeCallContext, d: DeviceObj, size: Dynamic| {
            alloc_coherent(&s1, &ctx, &d, &size, GFP_KERNEL)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_alloc_coherent",
        move |ctx: NativeCallContext, d: DeviceObj, size: Dynamic, gfp: INT| {
            alloc_coherent(&s1, &ctx, &d, &size, gfp as u64)
        },
    );
    // dma_alloc_wc (include/linux/dma-mapping.h): dma_alloc_attrs with
    // DMA_ATTR_WRITE_COMBINE. dma_pgprot (kernel/dma/mapping.c) gives a coherent
    // device the cacheable mapping anyway, and on arm64 and ARMv7
    // pgprot_writecombine is pgprot_dmacoherent (Normal-NC, ARMv7 bufferable):
    // the same memory as dma_alloc_coherent.
    for name in ["dma_alloc_wc", "dmam_alloc_coherent"] {
        let s1 = s.clone();
        let managed = name == "dmam_alloc_coherent";
        engine.register_fn(
            name,
            move |ctx: NativeCallContext,
                  d: DeviceObj,
                  size: Dynamic,
                  _gfp: INT|
                  -> RResult<Dynamic> {
                let n = size_of(&ctx, &size, name)?;
                if n > 1 << 40 {
                    return Ok(Dynamic::UNIT);
                }
                let id = with_sys(&s1, &ctx, |sys| {
                    if managed {
                        sys.dmam_alloc_coherent(d.idx, n)
                    } else {
                        sys.dma_alloc_coherent(d.idx, n)
                    }
                })?;
                Ok(opt_buffer(&s1, id))
            },
        );
    }
    // dma_free_wc is dma_free_attrs with DMA_ATTR_WRITE_COMBINE: dma_free_coherent.
    for name in ["dma_free_coherent", "dma_free_wc"] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, d: DeviceObj, size: Dynamic, b: BufferObj| {
                let n = size_of(&ctx, &size, name)?;
                with_sys(&s1, &ctx, |sys| sys.dma_free_coherent(d.idx, n, b.id))
            },
        );
    }
    let s1 = s.clone();
    engine.register_fn("dma_get_cache_alignment", move |ctx: NativeCallContext| {
        with_sys(&s1, &ctx, |sys| Ok(sys.dma_get_cache_alignment() as INT))
    });
    let s1 = s.clone();
    engine.register_fn(
        "dma_alloc_noncoherent",
        move |ctx: NativeCallContext, d: DeviceObj, size: Dynamic, dir: INT| -> RResult<Dynamic> {
            let n = size_of(&ctx, &size, "dma_alloc_noncoherent")?;
            let dir = dir_of(&ctx, dir)?;
            if n > 1 << 40 {
                return Ok(Dynamic::UNIT);
            }
            let id = with_sys(&s1, &ctx, |sys| sys.dma_alloc_noncoherent(d.idx, n, dir))?;
            Ok(opt_buffer(&s1, id))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_free_noncoherent",
        move |ctx: NativeCallContext, d: DeviceObj, size: Dynamic, b: BufferObj, dir: INT| {
            let n = size_of(&ctx, &size, "dma_free_noncoherent")?;
            let dir = dir_of(&ctx, dir)?;
            with_sys(&s1, &ctx, |sys| {
                sys.dma_free_noncoherent(d.idx, n, b.id, dir)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_map_single",
        move |ctx: NativeCallContext, d: DeviceObj, b: BufferObj, dir: INT| {
            let dir = dir_of(&ctx, dir)?;
            with_sys(&s1, &ctx, |sys| {
                sys.dma_map_single(d.idx, b.va, b.len, dir)
                    .map(|a| a as INT)
            })
        },
    );
    let map5 = |s: &Shared,
                ctx: &NativeCallContext,
                d: &DeviceObj,
                b: &Dynamic,
                off: INT,
                len: &Dynamic,
                dir: INT,
                kind: MapKind,
                attrs: u64|
     -> RResult<INT> {
        let dir = dir_of(ctx, dir)?;
        let n = size_of(ctx, len, "length")?;
        let off = u64::try_from(off).map_err(|_| err(ctx, "negative offset"))?;
        let va = if let Some(bo) = b.read_lock::<BufferObj>() {
            check_range(ctx, &bo, off, n, "dma_map")?;
            bo.va + off
        } else if let Ok(va) = b.as_int() {
            (va as u64).wrapping_add(off)
        } else {
            return Err(err(ctx, "expected a Buffer or a virtual address"));
        };
        with_sys(s, ctx, |sys| {
            sys.dma_map_attrs(d.idx, va, n, dir, kind, attrs)
                .map(|a| a as INT)
        })
    };
    let s1 = s.clone();
    engine.register_fn(
        "dma_map_single",
        move |ctx: NativeCallContext,
              d: DeviceObj,
              b: Dynamic,
              off: INT,
              len: Dynamic,
              dir: INT| { map5(&s1, &ctx, &d, &b, off, &len, dir, MapKind::Single, 0) },
    );
    for (name, kind) in [
        ("dma_map_single_attrs", MapKind::Single),
        ("dma_map_page_attrs", MapKind::Page),
    ] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext,
                  d: DeviceObj,
                  b: Dynamic,
                  off: INT,
                  len: Dynamic,
                  dir: INT,
                  attrs: INT| {
                map5(&s1, &ctx, &d, &b, off, &len, dir, kind, attrs as u64)
            },
        );
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, d: DeviceObj, b: BufferObj, dir: INT, attrs: INT| {
                let len = Dynamic::from(b.len as INT);
                map5(
                    &s1,
                    &ctx,
                    &d,
                    &Dynamic::from(b),
                    0,
                    &len,
                    dir,
                    kind,
                    attrs as u64,
                )
            },
        );
    }
    let s1 = s.clone();
    engine.register_fn(
        "dma_map_page",
        move |ctx: NativeCallContext,
              d: DeviceObj,
              b: Dynamic,
              off: INT,
              len: Dynamic,
              dir: INT| { map5(&s1, &ctx, &d, &b, off, &len, dir, MapKind::Page, 0) },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_mapping_error",
        move |ctx: NativeCallContext, d: DeviceObj, addr: INT| {
            with_sys(&s1, &ctx, |sys| {
                Ok(sys.dma_mapping_error(d.idx, addr as u64))
            })
        },
    );
    for (name, kind) in [
        ("dma_unmap_single", MapKind::Single),
        ("dma_unmap_page", MapKind::Page),
    ] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, d: DeviceObj, addr: INT, len: Dynamic, dir: INT| {
                let dir = dir_of(&ctx, dir)?;
                let n = size_of(&ctx, &len, name)?;
                with_sys(&s1, &ctx, |sys| {
                    sys.dma_unmap(d.idx, addr as u64, n, dir, kind)
                })
            },
        );
    }
    for (name, kind) in [
        ("dma_unmap_single_attrs", MapKind::Single),
        ("dma_unmap_page_attrs", MapKind::Page),
    ] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext,
                  d: DeviceObj,
                  addr: INT,
                  len: Dynamic,
                  dir: INT,
                  attrs: INT| {
                let dir = dir_of(&ctx, dir)?;
                let n = size_of(&ctx, &len, name)?;
                with_sys(&s1, &ctx, |sys| {
                    sys.dma_unmap_attrs(d.idx, addr as u64, n, dir, kind, attrs as u64)
                })
            },
        );
    }
    // dma_map_resource / dma_unmap_resource (kernel/dma/mapping.c): an MMIO range
    // (a peripheral FIFO) for device-to-device DMA; attrs change nothing (no CPU
    // sync is ever done for a resource).
    let s1 = s.clone();
    engine.register_fn(
        "dma_map_resource",
        move |ctx: NativeCallContext,
              d: DeviceObj,
              phys: INT,
              size: Dynamic,
              dir: INT,
              _attrs: INT| {
            let dir = dir_of(&ctx, dir)?;
            let n = size_of(&ctx, &size, "dma_map_resource")?;
            with_sys(&s1, &ctx, |sys| {
                sys.dma_map_resource(d.idx, phys as u64, n, dir)
                    .map(|a| a as INT)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_unmap_resource",
        move |ctx: NativeCallContext,
              d: DeviceObj,
              addr: INT,
              size: Dynamic,
              dir: INT,
              _attrs: INT| {
            let dir = dir_of(&ctx, dir)?;
            let n = size_of(&ctx, &size, "dma_unmap_resource")?;
            with_sys(&s1, &ctx, |sys| {
                sys.dma_unmap_resource(d.idx, addr as u64, n, dir)
            })
        },
    );
    // dma_sync_single_range_*: the sync of `size` bytes at `addr + offset`.
    for (name, for_cpu) in [
        ("dma_sync_single_range_for_cpu", true),
        ("dma_sync_single_range_for_device", false),
    ] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext,
                  d: DeviceObj,
                  addr: INT,
                  off: INT,
                  len: Dynamic,
                  dir: INT| {
                let dir = dir_of(&ctx, dir)?;
                let n = size_of(&ctx, &len, name)?;
                let at = (addr as u64).wrapping_add(off as u64);
                with_sys(&s1, &ctx, |sys| {
                    sys.dma_sync_single_as(d.idx, at, n, dir, for_cpu, name)
                })
            },
        );
    }
    for (name, for_cpu) in [
        ("dma_sync_single_for_cpu", true),
        ("dma_sync_single_for_device", false),
    ] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, d: DeviceObj, addr: INT, len: Dynamic, dir: INT| {
                let dir = dir_of(&ctx, dir)?;
                let n = size_of(&ctx, &len, name)?;
                with_sys(&s1, &ctx, |sys| {
                    sys.dma_sync_single(d.idx, addr as u64, n, dir, for_cpu)
                })
            },
        );
    }

    // ---- scatter-gather ----
    engine.register_type_with_name::<SgObj>("SgTable");
    let sg_build =
        |s: &Shared, ctx: &NativeCallContext, b: &BufferObj, max: u64| -> RResult<SgObj> {
            with_sys(s, ctx, |sys| {
                sys.sg_from_range(b.va, b.len, max).map(|id| SgObj { id })
            })
        };
    let s1 = s.clone();
    engine.register_fn(
        "sg_from_buffer",
        move |ctx: NativeCallContext, b: BufferObj| sg_build(&s1, &ctx, &b, u64::from(u32::MAX)),
    );
    let s1 = s.clone();
    engine.register_fn(
        "sg_from_buffer",
        move |ctx: NativeCallContext, b: BufferObj, max: Dynamic| {
            let m = size_of(&ctx, &max, "sg_from_buffer")?;
            sg_build(&s1, &ctx, &b, m)
        },
    );
    // sg_init_one / sg_alloc_table + sg_set_buf: tables over chosen sub-ranges.
    let s1 = s.clone();
    engine.register_fn(
        "sg_init_one",
        move |ctx: NativeCallContext, b: BufferObj, off: Dynamic, len: Dynamic| {
            let off = size_of(&ctx, &off, "sg_init_one")?;
            let len = size_of(&ctx, &len, "sg_init_one")?;
            check_range(&ctx, &b, off, len, "sg_init_one")?;
            with_sys(&s1, &ctx, |sys| {
                let id = sys.sg_alloc_table(1)?;
                sys.sg_set_buf(id, 0, b.va + off, len)?;
                Ok(SgObj { id })
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn("sg_alloc_table", move |ctx: NativeCallContext, n: INT| {
        let n = u64::try_from(n).map_err(|_| err(&ctx, format!("sg_alloc_table: {n} entries")))?;
        with_sys(&s1, &ctx, |sys| {
            sys.sg_alloc_table(n).map(|id| SgObj { id })
        })
    });
    let s1 = s.clone();
    engine.register_fn(
        "sg_set_buf",
        move |ctx: NativeCallContext,
              t: SgObj,
              i: INT,
              b: BufferObj,
              off: Dynamic,
              len: Dynamic| {
            let off = size_of(&ctx, &off, "sg_set_buf")?;
            let len = size_of(&ctx, &len, "sg_set_buf")?;
            check_range(&ctx, &b, off, len, "sg_set_buf")?;
            let i = u64::try_from(i).map_err(|_| err(&ctx, format!("sg_set_buf: entry {i}")))?;
            with_sys(&s1, &ctx, |sys| sys.sg_set_buf(t.id, i, b.va + off, len))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_map_sg",
        move |ctx: NativeCallContext, d: DeviceObj, t: SgObj, dir: INT| {
            let dir = dir_of(&ctx, dir)?;
            with_sys(&s1, &ctx, |sys| {
                sys.dma_map_sg(d.idx, t.id, dir).map(|n| n as INT)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_map_sgtable",
        move |ctx: NativeCallContext, d: DeviceObj, t: SgObj, dir: INT| {
            let dir = dir_of(&ctx, dir)?;
            with_sys(&s1, &ctx, |sys| sys.dma_map_sgtable(d.idx, t.id, dir))
        },
    );
    // The _attrs forms: DMA_ATTR_SKIP_CPU_SYNC skips the cache work of the map or
    // unmap (dma_map_sgtable(dev, sgt, dir, attrs) is the kernel's own signature).
    for (name, sgtable) in [("dma_map_sgtable", true), ("dma_map_sg_attrs", false)] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, d: DeviceObj, t: SgObj, dir: INT, attrs: INT| {
                let dir = dir_of(&ctx, dir)?;
                let skip = attrs as u64 & crate::kernel::dma::DMA_ATTR_SKIP_CPU_SYNC != 0;
                with_sys(&s1, &ctx, |sys| {
                    sys.skipping_cpu_sync(skip, |sys| {
                        if sgtable {
                            sys.dma_map_sgtable(d.idx, t.id, dir)
                        } else {
                            sys.dma_map_sg(d.idx, t.id, dir).map(|n| n as i64)
                        }
                    })
                })
            },
        );
    }
    for name in ["dma_unmap_sgtable", "dma_unmap_sg_attrs"] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, d: DeviceObj, t: SgObj, dir: INT, attrs: INT| {
                let dir = dir_of(&ctx, dir)?;
                let skip = attrs as u64 & crate::kernel::dma::DMA_ATTR_SKIP_CPU_SYNC != 0;
                with_sys(&s1, &ctx, |sys| {
                    sys.dma_unmap_sg_attrs(d.idx, t.id, dir, skip)
                })
            },
        );
    }
    // dma_unmap_sgtable and the sgtable syncs pass sgt->orig_nents to the sg calls;
    // the model's table always carries its original entries, so they are the same.
    for name in ["dma_unmap_sg", "dma_unmap_sgtable"] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, d: DeviceObj, t: SgObj, dir: INT| {
                let dir = dir_of(&ctx, dir)?;
                with_sys(&s1, &ctx, |sys| sys.dma_unmap_sg(d.idx, t.id, dir))
            },
        );
    }
    for (name, for_cpu) in [
        ("dma_sync_sg_for_cpu", true),
        ("dma_sync_sg_for_device", false),
        ("dma_sync_sgtable_for_cpu", true),
        ("dma_sync_sgtable_for_device", false),
    ] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, d: DeviceObj, t: SgObj, dir: INT| {
                let dir = dir_of(&ctx, dir)?;
                with_sys(&s1, &ctx, |sys| {
                    sys.dma_sync_sg(d.idx, t.id, dir, for_cpu, name)
                })
            },
        );
    }
    let s1 = s.clone();
    engine.register_fn("sg_nents", move |ctx: NativeCallContext, t: SgObj| {
        with_sys(&s1, &ctx, |sys| {
            sys.sg(t.id).map(|t| t.entries.len() as INT)
        })
    });
    // sgt->orig_nents (entries) and sgt->nents (DMA segments once mapped, else 0).
    let s1 = s.clone();
    engine.register_get(
        "orig_nents",
        move |ctx: NativeCallContext, t: &mut SgObj| {
            with_sys(&s1, &ctx, |sys| {
                sys.sg(t.id).map(|t| t.entries.len() as INT)
            })
        },
    );
    let s1 = s.clone();
    engine.register_get("nents", move |ctx: NativeCallContext, t: &mut SgObj| {
        with_sys(&s1, &ctx, |sys| sys.sg(t.id).map(|t| t.mapped as INT))
    });
    let sg_field = |s: &Shared,
                    ctx: &NativeCallContext,
                    t: &SgObj,
                    i: INT,
                    f: fn(&crate::kernel::dma::sg::SgEntry) -> u64|
     -> RResult<INT> {
        with_sys(s, ctx, |sys| {
            let tbl = sys.sg(t.id)?;
            let e = usize::try_from(i)
                .ok()
                .and_then(|i| tbl.entries.get(i))
                .ok_or_else(|| {
                    SimError::Invalid(format!(
                        "scatterlist entry {i} out of 0..{}",
                        tbl.entries.len()
                    ))
                })?;
            Ok(f(e) as INT)
        })
    };
    let s1 = s.clone();
    engine.register_fn(
        "sg_dma_address",
        move |ctx: NativeCallContext, t: SgObj, i: INT| {
            sg_field(&s1, &ctx, &t, i, |e| e.dma_address)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "sg_dma_len",
        move |ctx: NativeCallContext, t: SgObj, i: INT| sg_field(&s1, &ctx, &t, i, |e| e.dma_len),
    );
    let s1 = s.clone();
    engine.register_fn(
        "sg_phys",
        move |ctx: NativeCallContext, t: SgObj, i: INT| sg_field(&s1, &ctx, &t, i, |e| e.phys),
    );
    let s1 = s.clone();
    engine.register_fn("sg_len", move |ctx: NativeCallContext, t: SgObj, i: INT| {
        sg_field(&s1, &ctx, &t, i, |e| e.len)
    });
    let s1 = s.clone();
    engine.register_fn(
        "dev_read_sg",
        move |ctx: NativeCallContext, d: DeviceObj, t: SgObj, len: Dynamic| {
            let n = size_of(&ctx, &len, "dev_read_sg")?;
            blob_len(&ctx, n)?;
            with_sys(&s1, &ctx, |sys| {
                sys.dev_sg(d.idx, t.id, n, None)
                    .map(|r| r.map_or(Dynamic::UNIT, Dynamic::from_blob))
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dev_write_sg",
        move |ctx: NativeCallContext, d: DeviceObj, t: SgObj, data: Blob| {
            with_sys(&s1, &ctx, |sys| {
                sys.dev_sg(d.idx, t.id, data.len() as u64, Some(data))
                    .map(|_| ())
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "iommu_faults",
        move |ctx: NativeCallContext, d: DeviceObj| -> RResult<rhai::Array> {
            // The SMMU's event queue, read back for one stream: the records the IOMMU
            // kept (its ring holds the last `MAX_FAULT_RECORDS` of all streams).
            let faults = with_sys(&s1, &ctx, |sys| Ok(sys.iommu_faults(d.idx)))?;
            Ok(faults
                .into_iter()
                .map(|f| json_to_dynamic(serde_json::to_value(f).unwrap_or_default()))
                .collect())
        },
    );

    // ---- processes and pinning ----
    engine.register_type_with_name::<ProcessObj>("Process");
    engine.register_get("pid", |p: &mut ProcessObj| INT::from(p.pid));
    engine.register_get("name", |p: &mut ProcessObj| p.name.clone());
    engine.register_type_with_name::<PagesObj>("Pages");
    engine.register_get("count", |p: &mut PagesObj| p.count as INT);
    let s1 = s.clone();
    engine.register_fn("process", move |ctx: NativeCallContext, name: &str| {
        with_sys(&s1, &ctx, |sys| {
            Ok(ProcessObj {
                pid: sys.process_new(name),
                name: name.to_string(),
            })
        })
    });
    let s1 = s.clone();
    engine.register_fn(
        "process",
        move |ctx: NativeCallContext, name: &str, opts: Map| {
            let mut cap = false;
            for (k, v) in &opts {
                match k.as_str() {
                    "cap_ipc_lock" => {
                        cap = v
                            .as_bool()
                            .map_err(|_| err(&ctx, "cap_ipc_lock: expected true or false"))?
                    }
                    other => {
                        return Err(err(
                            &ctx,
                            format!("process: unknown option {other:?} (cap_ipc_lock)"),
                        ))
                    }
                }
            }
            with_sys(&s1, &ctx, |sys| {
                let pid = sys.process_new(name);
                if let Some(p) = sys.kernel.procs.iter_mut().find(|p| p.pid == pid) {
                    p.cap_ipc_lock = cap;
                }
                Ok(ProcessObj {
                    pid,
                    name: name.to_string(),
                })
            })
        },
    );
    // ---- poll-mode driver ----
    let s1 = s.clone();
    engine.register_fn(
        "pmd_open",
        move |ctx: NativeCallContext, d: DeviceObj, p: ProcessObj, opts: Map| {
            let mut mode = crate::uapi::pmd::IovaMode::Pa;
            let (mut ring, mut buf) = (512u64, 2048u64);
            let mut tx = false;
            for (k, v) in &opts {
                match k.as_str() {
                    "iova" => {
                        mode = match v.clone().into_string().ok().as_deref() {
                            Some("pa") => crate::uapi::pmd::IovaMode::Pa,
                            Some("va") => crate::uapi::pmd::IovaMode::Va,
                            _ => return Err(err(&ctx, "pmd_open: iova is \"pa\" or \"va\"")),
                        }
                    }
                    "ring" => ring = size_of(&ctx, v, "ring")?,
                    "buf_size" => buf = size_of(&ctx, v, "buf_size")?,
                    "tx" => {
                        tx = v
                            .as_bool()
                            .map_err(|_| err(&ctx, "pmd_open: tx: expected true or false"))?
                    }
                    other => {
                        return Err(err(
                            &ctx,
                            format!(
                                "pmd_open: unknown option {other:?} (iova, ring, buf_size, tx)"
                            ),
                        ))
                    }
                }
            }
            with_sys(&s1, &ctx, |sys| {
                sys.pmd_open_with(d.idx, p.pid, mode, ring, buf, tx)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "pmd_tx_burst",
        move |ctx: NativeCallContext, pmd: INT, frames: rhai::Array| {
            let frames = frames
                .into_iter()
                .map(|f| f.try_cast::<Blob>())
                .collect::<Option<Vec<Blob>>>()
                .ok_or_else(|| err(&ctx, "pmd_tx_burst: expected an array of blobs"))?;
            with_sys(&s1, &ctx, |sys| {
                sys.pmd_tx_burst(pmd as u64, frames).map(|n| n as INT)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn("pmd_tx_wire", move |ctx: NativeCallContext, pmd: INT| {
        with_sys(&s1, &ctx, |sys| {
            sys.pmd_tx_wire(pmd as u64).map(|v| {
                v.into_iter()
                    .map(Dynamic::from_blob)
                    .collect::<rhai::Array>()
            })
        })
    });
    let s1 = s.clone();
    engine.register_fn(
        "pmd_inject",
        move |ctx: NativeCallContext, pmd: INT, frame: Blob| {
            with_sys(&s1, &ctx, |sys| sys.pmd_inject(pmd as u64, frame))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "pmd_rx_burst",
        move |ctx: NativeCallContext, pmd: INT, max: INT| {
            let max = u64::try_from(max).map_err(|_| err(&ctx, "pmd_rx_burst: negative max"))?;
            with_sys(&s1, &ctx, |sys| {
                sys.pmd_rx_burst(pmd as u64, max).map(|v| {
                    v.into_iter()
                        .map(Dynamic::from_blob)
                        .collect::<rhai::Array>()
                })
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "pmd_stats",
        move |ctx: NativeCallContext, pmd: INT| -> RResult<Dynamic> {
            let st = with_sys(&s1, &ctx, |sys| sys.pmd_stats(pmd as u64))?;
            Ok(json_to_dynamic(
                serde_json::to_value(st).unwrap_or_default(),
            ))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "netdev_rx",
        move |ctx: NativeCallContext, d: DeviceObj, p: ProcessObj, b: BufferObj, frame: Blob| {
            if frame.len() as u64 > b.len {
                return Err(err(
                    &ctx,
                    "netdev_rx: the frame is larger than the user buffer",
                ));
            }
            with_sys(&s1, &ctx, |sys| {
                sys.netdev_rx(d.idx, p.pid, b.va, frame).map(|ns| ns as INT)
            })
        },
    );

    // ---- V4L2 / videobuf2 ----
    for with_opts in [false, true] {
        let s1 = s.clone();
        let open = move |ctx: &NativeCallContext,
                         d: &DeviceObj,
                         opts: Option<Map>|
              -> RResult<INT> {
            let mut alloc = crate::uapi::v4l2::Vb2Alloc::Contig;
            for (k, v) in opts.iter().flatten() {
                match (k.as_str(), v.clone().into_string().ok().as_deref()) {
                    ("alloc", Some("dma-contig")) => alloc = crate::uapi::v4l2::Vb2Alloc::Contig,
                    ("alloc", Some("dma-sg")) => alloc = crate::uapi::v4l2::Vb2Alloc::Sg,
                    _ => {
                        return Err(err(
                            ctx,
                            format!(
                            "v4l2_open: unknown option {k:?} (alloc: \"dma-contig\" or \"dma-sg\")"
                        ),
                        ))
                    }
                }
            }
            with_sys(&s1, ctx, |sys| {
                sys.v4l2_open(d.idx, alloc).map(|q| q as INT)
            })
        };
        if with_opts {
            engine.register_fn(
                "v4l2_open",
                move |ctx: NativeCallContext, d: DeviceObj, m: Map| open(&ctx, &d, Some(m)),
            );
        } else {
            engine.register_fn("v4l2_open", move |ctx: NativeCallContext, d: DeviceObj| {
                open(&ctx, &d, None)
            });
        }
    }
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_reqbufs",
        move |ctx: NativeCallContext, q: INT, count: INT, size: Dynamic| {
            let n = size_of(&ctx, &size, "v4l2_reqbufs")?;
            let count =
                u64::try_from(count).map_err(|_| err(&ctx, "v4l2_reqbufs: negative count"))?;
            with_sys(&s1, &ctx, |sys| sys.v4l2_reqbufs(q as u64, count, n))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_querybuf",
        move |ctx: NativeCallContext, q: INT, i: INT| {
            with_sys(&s1, &ctx, |sys| sys.v4l2_querybuf(q as u64, i as u64))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_querybuf_offset",
        move |ctx: NativeCallContext, q: INT, i: INT| {
            with_sys(&s1, &ctx, |sys| {
                sys.v4l2_querybuf_offset(q as u64, i as u64)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_reqbufs_userptr",
        move |ctx: NativeCallContext, q: INT, count: INT, size: Dynamic| {
            let n = size_of(&ctx, &size, "v4l2_reqbufs_userptr")?;
            let count = u64::try_from(count)
                .map_err(|_| err(&ctx, "v4l2_reqbufs_userptr: negative count"))?;
            with_sys(&s1, &ctx, |sys| {
                sys.v4l2_reqbufs_userptr(q as u64, count, n)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_qbuf_userptr",
        move |ctx: NativeCallContext, q: INT, i: INT, p: ProcessObj, b: BufferObj| {
            with_sys(&s1, &ctx, |sys| {
                sys.v4l2_qbuf_userptr(q as u64, i as u64, p.pid, b.va, b.len)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_qbuf_userptr",
        move |ctx: NativeCallContext, q: INT, i: INT, p: ProcessObj, addr: INT, len: Dynamic| {
            let n = size_of(&ctx, &len, "v4l2_qbuf_userptr")?;
            with_sys(&s1, &ctx, |sys| {
                sys.v4l2_qbuf_userptr(q as u64, i as u64, p.pid, addr as u64, n)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_mmap",
        move |ctx: NativeCallContext, q: INT, p: ProcessObj, i: INT| -> RResult<Dynamic> {
            with_sys(&s1, &ctx, |sys| {
                let r = sys.v4l2_mmap(q as u64, p.pid, i as u64)?;
                if r < 0 {
                    return Ok(Dynamic::from(r));
                }
                let len = sys.kernel.v4l2[&(q as u64)].size;
                Ok(Dynamic::from(BufferObj::user(r as u64, len)))
            })
        },
    );
    for (name, which) in [
        ("v4l2_qbuf", 0u8),
        ("v4l2_dqbuf", 1),
        ("v4l2_streamon", 2),
        ("v4l2_streamoff", 3),
    ] {
        let s1 = s.clone();
        if which == 0 {
            engine.register_fn(name, move |ctx: NativeCallContext, q: INT, i: INT| {
                with_sys(&s1, &ctx, |sys| sys.v4l2_qbuf(q as u64, i as u64))
            });
        } else {
            engine.register_fn(name, move |ctx: NativeCallContext, q: INT| {
                with_sys(&s1, &ctx, |sys| match which {
                    1 => sys.v4l2_dqbuf(q as u64),
                    2 => sys.v4l2_streamon(q as u64),
                    _ => sys.v4l2_streamoff(q as u64),
                })
            });
        }
    }
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_buffer_pfn",
        move |ctx: NativeCallContext, q: INT, i: INT| {
            with_sys(&s1, &ctx, |sys| {
                let queue = sys
                    .kernel
                    .v4l2
                    .get(&(q as u64))
                    .ok_or_else(|| SimError::Invalid(format!("no V4L2 queue #{q}")))?;
                let b = queue
                    .bufs
                    .get(i as usize)
                    .ok_or_else(|| SimError::Invalid(format!("no buffer {i}")))?;
                let va = sys.kernel.buffers.get(&b.buf).map(|k| k.va).ok_or_else(|| {
                    SimError::Invalid(format!(
                        "v4l2_buffer_pfn: buffer {i} has no kernel memory of its own (a USERPTR or DMABUF queue)"
                    ))
                })?;
                let pa = sys
                    .hw
                    .mmu
                    .segments(0, va, 1)
                    .map_err(SimError::PagingRequest)?[0]
                    .pa;
                Ok((pa >> crate::config::PAGE_SHIFT) as INT)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_capture",
        move |ctx: NativeCallContext, q: INT, data: Blob| {
            with_sys(&s1, &ctx, |sys| sys.v4l2_capture(q as u64, data))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "chardev_write",
        move |ctx: NativeCallContext,
              d: DeviceObj,
              p: ProcessObj,
              b: BufferObj|
              -> RResult<Dynamic> {
            with_sys(&s1, &ctx, |sys| {
                Ok(match sys.chardev_write(d.idx, p.pid, b.va, b.len)? {
                    Ok(got) => Dynamic::from_blob(got),
                    Err(e) => Dynamic::from(e),
                })
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "chardev_read",
        move |ctx: NativeCallContext, d: DeviceObj, p: ProcessObj, b: BufferObj, data: Blob| {
            if data.len() as u64 > b.len {
                return Err(err(
                    &ctx,
                    "chardev_read: more data than the user buffer holds",
                ));
            }
            with_sys(&s1, &ctx, |sys| sys.chardev_read(d.idx, p.pid, b.va, data))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "setrlimit_memlock",
        move |ctx: NativeCallContext, p: ProcessObj, size: Dynamic| {
            let n = size_of(&ctx, &size, "setrlimit_memlock")?;
            with_sys(&s1, &ctx, |sys| sys.setrlimit_memlock(p.pid, n))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "vfio_open",
        move |ctx: NativeCallContext, d: DeviceObj, p: ProcessObj| {
            with_sys(&s1, &ctx, |sys| sys.vfio_open(d.idx, p.pid))
        },
    );
    let s1 = s.clone();
    engine.register_fn("vfio_bind", move |ctx: NativeCallContext, d: DeviceObj| {
        with_sys(&s1, &ctx, |sys| sys.vfio_bind(d.idx))
    });
    let s1 = s.clone();
    engine.register_fn(
        "vfio_map_dma",
        move |ctx: NativeCallContext,
              c: INT,
              _p: ProcessObj,
              b: BufferObj,
              iova: INT,
              opts: Map| {
            let (mut read, mut write) = (false, false);
            for (k, v) in &opts {
                let f = v
                    .as_bool()
                    .map_err(|_| err(&ctx, format!("{k}: expected true or false")))?;
                match k.as_str() {
                    "read" => read = f,
                    "write" => write = f,
                    other => {
                        return Err(err(
                            &ctx,
                            format!("vfio_map_dma: unknown option {other:?} (read, write)"),
                        ))
                    }
                }
            }
            let c = u64::try_from(c).map_err(|_| err(&ctx, "vfio_map_dma: not a container"))?;
            with_sys(&s1, &ctx, |sys| {
                sys.vfio_map_dma(c, b.va, iova as u64, b.len, read, write)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "vfio_unmap_dma",
        move |ctx: NativeCallContext, c: INT, iova: INT, size: Dynamic| {
            let n = size_of(&ctx, &size, "vfio_unmap_dma")?;
            let c = u64::try_from(c).map_err(|_| err(&ctx, "vfio_unmap_dma: not a container"))?;
            with_sys(&s1, &ctx, |sys| sys.vfio_unmap_dma(c, iova as u64, n))
        },
    );
    let user_buf = BufferObj::user;
    let mmap = move |s: &Shared,
                     ctx: &NativeCallContext,
                     p: &ProcessObj,
                     size: &Dynamic,
                     opts: Option<Map>|
          -> RResult<Dynamic> {
        let n = size_of(ctx, size, "mmap")?;
        let (mut locked, mut huge) = (false, false);
        if let Some(m) = opts {
            for (k, v) in &m {
                let flag = v
                    .as_bool()
                    .map_err(|_| err(ctx, format!("{k}: expected true or false")))?;
                match k.as_str() {
                    "locked" => locked = flag,
                    "hugetlb" => huge = flag,
                    other => {
                        return Err(err(
                            ctx,
                            format!("mmap: unknown option {other:?} (locked, hugetlb)"),
                        ))
                    }
                }
            }
        }
        with_sys(s, ctx, |sys| {
            if huge {
                return sys.mmap_huge(p.pid, n).map(|r| match r {
                    Ok(va) => Dynamic::from(user_buf(va, n.next_multiple_of(2 << 20))),
                    Err(e) => Dynamic::from(e),
                });
            }
            sys.mmap(p.pid, n, locked)
                .map(|va| Dynamic::from(user_buf(va, n)))
        })
    };
    for name in ["malloc", "mmap"] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, p: &mut ProcessObj, size: Dynamic| {
                mmap(&s1, &ctx, p, &size, None)
            },
        );
    }
    let s1 = s.clone();
    engine.register_fn(
        "mmap",
        move |ctx: NativeCallContext, p: &mut ProcessObj, size: Dynamic, opts: Map| {
            mmap(&s1, &ctx, p, &size, Some(opts))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "mlock",
        move |ctx: NativeCallContext, p: &mut ProcessObj, b: BufferObj| {
            with_sys(&s1, &ctx, |sys| sys.mlock(p.pid, b.va, b.len))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "munmap",
        move |ctx: NativeCallContext, p: &mut ProcessObj, b: BufferObj| {
            with_sys(&s1, &ctx, |sys| sys.munmap(p.pid, b.va))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "write",
        move |ctx: NativeCallContext, p: &mut ProcessObj, b: BufferObj, off: INT, data: Blob| {
            let off = u64::try_from(off).map_err(|_| err(&ctx, "write: negative offset"))?;
            check_range(&ctx, &b, off, data.len() as u64, "write")?;
            with_sys(&s1, &ctx, |sys| sys.user_write(p.pid, b.va + off, &data))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "read",
        move |ctx: NativeCallContext, p: &mut ProcessObj, b: BufferObj, off: INT, len: Dynamic| {
            let off = u64::try_from(off).map_err(|_| err(&ctx, "read: negative offset"))?;
            let n = size_of(&ctx, &len, "read")?;
            blob_len(&ctx, n)?;
            check_range(&ctx, &b, off, n, "read")?;
            with_sys(&s1, &ctx, |sys| sys.user_read(p.pid, b.va + off, n))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "pagemap",
        move |ctx: NativeCallContext, p: ProcessObj, va: INT| {
            with_sys(&s1, &ctx, |sys| {
                sys.pagemap(p.pid, va as u64).map(|pfn| pfn as INT)
            })
        },
    );
    for (name, pin) in [("pin_user_pages", true), ("get_user_pages", false)] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, p: ProcessObj, b: BufferObj, opts: Map| {
                let mut longterm = false;
                for (k, v) in &opts {
                    let flag = v
                        .as_bool()
                        .map_err(|_| err(&ctx, format!("{k}: expected true or false")))?;
                    match k.as_str() {
                        "longterm" => longterm = flag,
                        "write" => {}
                        other => {
                            return Err(err(
                                &ctx,
                                format!("{name}: unknown option {other:?} (write, longterm)"),
                            ))
                        }
                    }
                }
                with_sys(&s1, &ctx, |sys| {
                    sys.gup(p.pid, b.va, b.len, pin, longterm)
                        .map(|id| pages_result(id, b.len))
                })
            },
        );
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, p: ProcessObj, b: BufferObj| {
                with_sys(&s1, &ctx, |sys| {
                    sys.gup(p.pid, b.va, b.len, pin, false)
                        .map(|id| pages_result(id, b.len))
                })
            },
        );
    }
    for (name, unpin) in [("unpin_user_pages", true), ("put_page", false)] {
        let s1 = s.clone();
        engine.register_fn(name, move |ctx: NativeCallContext, pg: PagesObj| {
            with_sys(&s1, &ctx, |sys| sys.gup_release(pg.id, unpin))
        });
    }
    let s1 = s.clone();
    engine.register_fn(
        "sg_from_pages",
        move |ctx: NativeCallContext, pg: PagesObj| {
            with_sys(&s1, &ctx, |sys| {
                let pfns = sys
                    .kernel
                    .pins
                    .get(&pg.id)
                    .map(|p| p.pfns.clone())
                    .ok_or_else(|| SimError::Invalid(format!("no pinned-pages set #{}", pg.id)))?;
                sys.sg_from_pfns(&pfns, u64::from(u32::MAX))
                    .map(|id| SgObj { id })
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn("reclaim", move |ctx: NativeCallContext, size: Dynamic| {
        let n = size_of(&ctx, &size, "reclaim")?;
        with_sys(&s1, &ctx, |sys| Ok(sys.reclaim(n) as INT))
    });
    let s1 = s.clone();
    engine.register_fn("compact", move |ctx: NativeCallContext| {
        with_sys(&s1, &ctx, |sys| Ok(sys.compact() as INT))
    });

    // ---- devices doing DMA ----
    let s1 = s.clone();
    engine.register_fn(
        "dev_read",
        move |ctx: NativeCallContext, d: DeviceObj, addr: INT, len: Dynamic| {
            let n = size_of(&ctx, &len, "dev_read")?;
            blob_len(&ctx, n)?;
            with_sys(&s1, &ctx, |sys| {
                let j = sys.dev_start(d.idx, addr as u64, n, None)?;
                sys.wait(j)
                    .map(|r| r.map_or(Dynamic::UNIT, Dynamic::from_blob))
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dev_write",
        move |ctx: NativeCallContext, d: DeviceObj, addr: INT, data: Blob| {
            with_sys(&s1, &ctx, |sys| {
                let j = sys.dev_start(d.idx, addr as u64, data.len() as u64, Some(data))?;
                sys.wait(j).map(|_| ())
            })
        },
    );
    // The same write with the blob first: Rhai passes a method call's object (and a
    // function call's first argument when it is a plain variable) by reference, so
    // `data.dev_write(dev, addr)` lends the bytes to the transfer where the form
    // above gets a copy of them (measurable for payloads of megabytes).
    let s1 = s.clone();
    engine.register_fn(
        "dev_write",
        move |ctx: NativeCallContext, data: &mut Blob, d: DeviceObj, addr: INT| {
            with_sys(&s1, &ctx, |sys| {
                sys.dev_write_lent(d.idx, addr as u64, data)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dev_start_read",
        move |ctx: NativeCallContext, d: DeviceObj, addr: INT, len: Dynamic| {
            let n = size_of(&ctx, &len, "dev_start_read")?;
            blob_len(&ctx, n)?;
            with_sys(&s1, &ctx, |sys| {
                sys.dev_start(d.idx, addr as u64, n, None)
                    .map(|id| JobObj { id })
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dev_start_write",
        move |ctx: NativeCallContext, d: DeviceObj, addr: INT, data: Blob| {
            with_sys(&s1, &ctx, |sys| {
                sys.dev_start(d.idx, addr as u64, data.len() as u64, Some(data))
                    .map(|id| JobObj { id })
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn("wait", move |ctx: NativeCallContext, j: JobObj| {
        // With DMA channels running, their callbacks run while the CPU waits.
        let end = s1.borrow().sys.as_ref().and_then(|sys| {
            sys.dmaengine
                .in_use()
                .then(|| sys.job_end_ps(j.id))
                .flatten()
        });
        if let Some(end) = end {
            super::dmaengine::advance_with_callbacks(&s1, &ctx, end)?;
        }
        with_sys(&s1, &ctx, |sys| {
            sys.wait(j.id)
                .map(|r| r.map_or(Dynamic::UNIT, Dynamic::from_blob))
        })
    });
    let s1 = s.clone();
    engine.register_fn("run_for", move |ctx: NativeCallContext, d: Dynamic| {
        let ns = if let Ok(i) = d.as_int() {
            u64::try_from(i).map_err(|_| err(&ctx, "run_for: negative duration"))?
        } else if let Some(t) = d.read_lock::<ImmutableString>() {
            parse_duration_ns(&t).map_err(|e| err(&ctx, e.to_string()))?
        } else {
            return Err(err(
                &ctx,
                "run_for: expected a duration like \"10 us\" or nanoseconds",
            ));
        };
        let dmaengine = s1
            .borrow()
            .sys
            .as_ref()
            .is_some_and(|sys| sys.dmaengine.in_use());
        if dmaengine {
            // DMA channels run: time passes completion by completion, callbacks
            // included (script::dmaengine).
            let end = with_sys(&s1, &ctx, |sys| {
                Ok(sys.hw.now_ps().saturating_add(ns.saturating_mul(1000)))
            })?;
            super::dmaengine::advance_with_callbacks(&s1, &ctx, end)?;
        }
        with_sys(&s1, &ctx, |sys| sys.run_for(if dmaengine { 0 } else { ns }))
    });

    // ---- machine events ----
    let s1 = s.clone();
    engine.register_fn("evict_all", move |ctx: NativeCallContext| {
        with_sys(&s1, &ctx, |sys| {
            sys.step();
            sys.hw.evict_all();
            // Let the sanitizer see the write-backs now, at this line.
            sys.drain_writebacks_now();
            Ok(())
        })
    });
    let s1 = s.clone();
    engine.register_fn("prefetch", move |ctx: NativeCallContext, b: BufferObj| {
        with_sys(&s1, &ctx, |sys| sys.prefetch_va(b.va, b.len))
    });
    let s1 = s.clone();
    engine.register_fn("now", move |ctx: NativeCallContext| {
        with_sys(&s1, &ctx, |sys| Ok((sys.hw.now_ps() / 1000) as INT))
    });

    // ---- values, expectations, results ----
    engine.register_fn(
        "blob_of",
        |ctx: NativeCallContext, bytes: rhai::Array| -> RResult<Blob> {
            blob_len(&ctx, bytes.len() as u64)?;
            bytes
                .iter()
                .map(|v| {
                    v.as_int()
                        .ok()
                        .and_then(|i| u8::try_from(i).ok())
                        .ok_or_else(|| err(&ctx, "blob_of: expected an array of bytes 0..=255"))
                })
                .collect()
        },
    );
    engine.register_fn(
        "pattern",
        |ctx: NativeCallContext, kind: &str, len: Dynamic| {
            let n = size_of(&ctx, &len, "pattern")?;
            pattern(&ctx, kind, n, 0)
        },
    );
    engine.register_fn(
        "pattern",
        |ctx: NativeCallContext, kind: &str, len: Dynamic, seed: INT| {
            let n = size_of(&ctx, &len, "pattern")?;
            pattern(&ctx, kind, n, seed as u64)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "expect",
        move |ctx: NativeCallContext, cond: bool, msg: &str| {
            record_expectation(&s1, &ctx, cond, msg);
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "expect_eq",
        move |ctx: NativeCallContext, a: Dynamic, b: Dynamic, msg: &str| {
            let same = match (a.read_lock::<Blob>(), b.read_lock::<Blob>()) {
                (Some(x), Some(y)) => *x == *y,
                _ => a.type_name() == b.type_name() && a.to_string() == b.to_string(),
            };
            let msg = if same {
                msg.to_string()
            } else {
                format!("{msg} (left: {}, right: {})", short(&a), short(&b))
            };
            record_expectation(&s1, &ctx, same, &msg);
        },
    );
    let s1 = s.clone();
    engine.register_fn("stats", move |ctx: NativeCallContext| -> RResult<Dynamic> {
        let g = s1.borrow();
        let sys = g
            .sys
            .as_ref()
            .ok_or_else(|| err(&ctx, "call boot(preset) before anything else"))?;
        Ok(json_to_dynamic(
            serde_json::to_value(Stats::of(sys)).unwrap_or_default(),
        ))
    });
    let s1 = s.clone();
    engine.register_fn("allow", move |ctx: NativeCallContext, id: &str| {
        if !crate::check::finding::FINDING_IDS
            .iter()
            .any(|(i, _, _)| *i == id)
        {
            return Err(err(&ctx, format!("allow: unknown finding id {id:?}")));
        }
        with_sys(&s1, &ctx, |sys| {
            sys.check.allow(id);
            Ok(())
        })
    });
    let s1 = s.clone();
    engine.on_print(move |text| {
        if let Ok(mut g) = s1.try_borrow_mut() {
            let g = &mut *g;
            match g.sys.as_mut() {
                Some(sys) => sys.printk("script", text.to_string()),
                None if g.early_log.len() < crate::system::MAX_LOG_LINES => {
                    let line = crate::system::cap_line(format!("[    0.000000] script: {text}"));
                    g.early_log.push(line);
                }
                None => g.early_dropped += 1,
            }
        }
    });
    engine.on_debug(|_, _, _| {});
}

/// A pinned-pages object, `-ENOMEM` when a long-term pin could not move a page
/// out of CMA, or `-EFAULT` for a `VM_IO | VM_PFNMAP` mapping (what
/// `pin_user_pages` returns then).
fn pages_result(id: u64, len: u64) -> Dynamic {
    if id == crate::uapi::process::GUP_ENOMEM {
        Dynamic::from(-errno::ENOMEM)
    } else if id == crate::uapi::process::GUP_EFAULT {
        Dynamic::from(-errno::EFAULT)
    } else {
        Dynamic::from(PagesObj {
            id,
            count: len.div_ceil(PAGE_SIZE),
        })
    }
}

fn short(v: &Dynamic) -> String {
    if let Some(b) = v.read_lock::<Blob>() {
        let head: Vec<String> = b.iter().take(8).map(|x| format!("{x:02x}")).collect();
        return format!(
            "blob[{}] {}{}",
            b.len(),
            head.join(" "),
            if b.len() > 8 { " …" } else { "" }
        );
    }
    // Cut at a character, not a byte: a value is user text (any UTF-8).
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

fn record_expectation(s: &Shared, ctx: &NativeCallContext, ok: bool, msg: &str) {
    let mut g = s.borrow_mut();
    if ok {
        g.expectations.passed += 1;
    } else {
        g.expectations.failed += 1;
        let line = line(ctx);
        // The count goes on; the messages kept are bounded (a failing expect in a
        // loop cannot exhaust host memory).
        if g.expectations.failures.len() < super::MAX_EXPECTATION_FAILURES {
            g.expectations.failures.push(ExpectationFailure {
                msg: crate::system::cap_line(msg.to_string()),
                line,
            });
        }
        if let Some(sys) = g.sys.as_mut() {
            sys.printk(
                "script",
                format!("expectation failed at line {line}: {msg}"),
            );
        }
    }
}
