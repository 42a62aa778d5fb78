//! Script bindings of the DMA pool allocator (`mm/dmapool.c`): `dma_pool_create`,
//! `dmam_pool_create`, `dma_pool_alloc`, `dma_pool_zalloc`, `dma_pool_free`,
//! `dma_pool_destroy`, `dmam_pool_destroy`, and the
//! pool's figures as getters (the columns of the sysfs `pools` file).

use rhai::{Dynamic, Engine, NativeCallContext, INT};

use super::api::{err, size_of, with_sys, RResult};
use super::values::{BufferObj, DeviceObj};
use super::Shared;
use crate::kernel::mm::dmapool::{DmaPool, PoolBlock};
use crate::kernel::mm::gfp::GFP_ZERO;

/// A `struct dma_pool *` handle.
#[derive(Debug, Clone)]
pub struct DmaPoolObj {
    /// Pool id in the kernel model.
    pub id: usize,
}

fn block_obj(b: PoolBlock, size: u64) -> Dynamic {
    Dynamic::from(BufferObj {
        id: b.buffer,
        va: b.va,
        len: size,
        kind: "dma_pool",
        phys: b.phys,
        dma: Some(b.dma),
    })
}

fn alloc(s: &Shared, ctx: &NativeCallContext, p: &DmaPoolObj, zero: bool) -> RResult<Dynamic> {
    with_sys(s, ctx, |sys| {
        let b = sys.dma_pool_alloc(p.id, zero)?;
        let size = sys.dma_pool(p.id)?.size;
        Ok(b.map_or(Dynamic::UNIT, |b| block_obj(b, size)))
    })
}

/// One of the pool's figures.
type Figure = fn(&DmaPool) -> u64;

fn figure(s: &Shared, ctx: &NativeCallContext, p: &DmaPoolObj, f: Figure) -> RResult<INT> {
    with_sys(s, ctx, |sys| sys.dma_pool(p.id).map(|p| f(p) as INT))
}

/// Registers the pool functions and the `DmaPool` type.
pub(super) fn register(engine: &mut Engine, s: &Shared) {
    engine.register_type_with_name::<DmaPoolObj>("DmaPool");
    for (call, managed) in [("dma_pool_create", false), ("dmam_pool_create", true)] {
        let s1 = s.clone();
        engine.register_fn(
            call,
            move |ctx: NativeCallContext,
                  name: &str,
                  d: DeviceObj,
                  size: Dynamic,
                  align: Dynamic,
                  boundary: Dynamic|
                  -> RResult<Dynamic> {
                let size = size_of(&ctx, &size, call)?;
                let align = size_of(&ctx, &align, call)?;
                let boundary = size_of(&ctx, &boundary, call)?;
                let id = with_sys(&s1, &ctx, |sys| {
                    if managed {
                        sys.dmam_pool_create(name, d.idx, size, align, boundary)
                    } else {
                        sys.dma_pool_create(name, d.idx, size, align, boundary)
                    }
                })?;
                Ok(id.map_or(Dynamic::UNIT, |id| Dynamic::from(DmaPoolObj { id })))
            },
        );
    }
    let s1 = s.clone();
    engine.register_fn(
        "dma_pool_alloc",
        move |ctx: NativeCallContext, p: DmaPoolObj, gfp: INT| {
            alloc(&s1, &ctx, &p, gfp as u64 & GFP_ZERO != 0)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_pool_zalloc",
        move |ctx: NativeCallContext, p: DmaPoolObj, _gfp: INT| alloc(&s1, &ctx, &p, true),
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_pool_free",
        move |ctx: NativeCallContext, p: DmaPoolObj, b: BufferObj| {
            let Some(dma) = b.dma else {
                return Err(err(
                    &ctx,
                    "dma_pool_free: the buffer has no DMA handle; pass (pool, va, dma)",
                ));
            };
            with_sys(&s1, &ctx, |sys| sys.dma_pool_free(p.id, b.va, dma))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_pool_free",
        move |ctx: NativeCallContext, p: DmaPoolObj, va: INT, dma: INT| {
            with_sys(&s1, &ctx, |sys| {
                sys.dma_pool_free(p.id, va as u64, dma as u64)
            })
        },
    );
    for call in ["dma_pool_destroy", "dmam_pool_destroy"] {
        let s1 = s.clone();
        engine.register_fn(call, move |ctx: NativeCallContext, p: DmaPoolObj| {
            with_sys(&s1, &ctx, |sys| sys.dma_pool_destroy(p.id))
        });
    }
    let s1 = s.clone();
    engine.register_get("name", move |ctx: NativeCallContext, p: &mut DmaPoolObj| {
        with_sys(&s1, &ctx, |sys| sys.dma_pool(p.id).map(|p| p.name.clone()))
    });
    let getters: [(&str, Figure); 6] = [
        ("size", |p| p.size),
        ("allocation", |p| p.allocation),
        ("boundary", |p| p.boundary),
        ("nr_active", |p| p.nr_active),
        ("nr_blocks", |p| p.nr_blocks),
        ("nr_pages", |p| p.pages.len() as u64),
    ];
    for (name, f) in getters {
        let s1 = s.clone();
        engine.register_get(name, move |ctx: NativeCallContext, p: &mut DmaPoolObj| {
            figure(&s1, &ctx, p, f)
        });
    }
}
