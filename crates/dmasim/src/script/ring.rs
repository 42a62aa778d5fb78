//! Script functions for descriptor rings (`crate::ring`) and the barriers that order
//! a driver's descriptor stores: `dma_ring_create`, `dma_ring_rx`, `dma_ring_kick`,
//! `dma_ring_sent`, `writel`, `writel_relaxed`, `dma_wmb`, `wmb`, `mb`, `dma_rmb`,
//! `rmb`.

use rhai::{Array, Blob, Dynamic, Engine, Map, NativeCallContext, INT};

use super::api::{err, with_sys, RResult};
use super::values::DeviceObj;
use super::Shared;
use crate::ring::{Field, RingLayout};

/// A descriptor ring handle.
#[derive(Debug, Clone)]
pub struct RingObj {
    /// Ring id.
    pub id: u64,
}

fn int(ctx: &NativeCallContext, m: &Map, key: &str) -> RResult<Option<u64>> {
    super::api::map_uint(ctx, m, key, "dma_ring_create")
}

fn field(ctx: &NativeCallContext, m: &Map, key: &str) -> RResult<Option<Field>> {
    let Some(v) = m.get(key) else {
        return Ok(None);
    };
    let pair = v
        .clone()
        .into_array()
        .ok()
        .filter(|a| a.len() == 2)
        .and_then(|a| {
            let off = u64::try_from(a[0].as_int().ok()?).ok()?;
            let size = u64::try_from(a[1].as_int().ok()?).ok()?;
            Some(Field { off, size })
        });
    pair.map(Some).ok_or_else(|| {
        err(
            ctx,
            format!("dma_ring_create: {key} must be [offset, size] in bytes, e.g. [0, 4]"),
        )
    })
}

pub(super) fn register(engine: &mut Engine, s: &Shared) {
    engine.register_type_with_name::<RingObj>("DmaRing");
    let s1 = s.clone();
    engine.register_fn(
        "dma_ring_create",
        move |ctx: NativeCallContext, d: DeviceObj, m: Map| -> RResult<RingObj> {
            let need = |k: &str, v: Option<u64>| {
                v.ok_or_else(|| err(&ctx, format!("dma_ring_create: `{k}` is required")))
            };
            let needf = |k: &str, v: Option<Field>| {
                v.ok_or_else(|| err(&ctx, format!("dma_ring_create: `{k}` is required")))
            };
            let layout = RingLayout {
                base: need("base", int(&ctx, &m, "base")?)?,
                count: need("count", int(&ctx, &m, "count")?)?,
                stride: need("stride", int(&ctx, &m, "stride")?)?,
                addr: needf("addr", field(&ctx, &m, "addr")?)?,
                len: needf("len", field(&ctx, &m, "len")?)?,
                flags: needf("flags", field(&ctx, &m, "flags")?)?,
                own: need("own", int(&ctx, &m, "own")?)?,
                status_len: field(&ctx, &m, "status_len")?,
                rx: match m.get("dir").map(|v| v.as_int()) {
                    Some(Ok(2)) => true,
                    Some(Ok(1)) => false,
                    _ => {
                        return Err(err(
                            &ctx,
                            "dma_ring_create: `dir` is DMA_FROM_DEVICE (an RX ring) or DMA_TO_DEVICE (TX)",
                        ))
                    }
                },
            };
            with_sys(&s1, &ctx, |sys| sys.dma_ring_create(d.idx, layout)).map(|id| RingObj { id })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_ring_rx",
        move |ctx: NativeCallContext, r: RingObj, frame: Blob| {
            with_sys(&s1, &ctx, |sys| sys.dma_ring_rx(r.id, &frame))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_ring_kick",
        move |ctx: NativeCallContext, r: RingObj| {
            with_sys(&s1, &ctx, |sys| sys.dma_ring_kick(r.id, None)).map(|n| n as INT)
        },
    );
    for (name, relaxed) in [("writel", false), ("writel_relaxed", true)] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, _val: INT, r: RingObj| {
                with_sys(&s1, &ctx, |sys| sys.ring_doorbell(r.id, relaxed)).map(|_| ())
            },
        );
    }
    let s1 = s.clone();
    engine.register_fn(
        "dma_ring_sent",
        move |ctx: NativeCallContext, r: RingObj| -> RResult<Array> {
            with_sys(&s1, &ctx, |sys| sys.ring_take_sent(r.id))
                .map(|v| v.into_iter().map(Dynamic::from_blob).collect())
        },
    );
    for (name, prop) in [("head", 0usize), ("frames", 1), ("dropped", 2)] {
        let s1 = s.clone();
        engine.register_get(name, move |ctx: NativeCallContext, r: &mut RingObj| {
            with_sys(&s1, &ctx, |sys| sys.ring_state(r.id)).map(|(h, f, d)| [h, f, d][prop] as INT)
        });
    }
    for name in ["dma_wmb", "wmb", "mb"] {
        let s1 = s.clone();
        engine.register_fn(name, move |ctx: NativeCallContext| {
            with_sys(&s1, &ctx, |sys| {
                sys.dma_wmb();
                Ok(())
            })
        });
    }
    for name in ["dma_rmb", "rmb"] {
        let s1 = s.clone();
        engine.register_fn(name, move |ctx: NativeCallContext| {
            with_sys(&s1, &ctx, |sys| {
                sys.dma_rmb();
                Ok(())
            })
        });
    }
}
