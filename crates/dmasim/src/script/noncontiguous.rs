//! Script bindings of `dma_alloc_noncontiguous` and its companions (see
//! `kernel::dma::noncontiguous`): the allocation is an SgTable with one DMA segment,
//! its CPU view a Buffer of kind `"noncontiguous"`.

use rhai::{Dynamic, Engine, NativeCallContext, INT};

use super::api::{buffer_obj, dir_of, size_of, with_sys, RResult};
use super::values::{BufferObj, DeviceObj, SgObj};
use super::Shared;
use crate::kernel::mm::gfp::GFP_ZERO;

fn alloc(
    s: &Shared,
    ctx: &NativeCallContext,
    d: &DeviceObj,
    size: &Dynamic,
    dir: INT,
    gfp: u64,
) -> RResult<Dynamic> {
    let n = size_of(ctx, size, "dma_alloc_noncontiguous")?;
    let dir = dir_of(ctx, dir)?;
    if n > 1 << 40 {
        return Ok(Dynamic::UNIT);
    }
    let id = with_sys(s, ctx, |sys| {
        sys.dma_alloc_noncontiguous(d.idx, n, dir, gfp & GFP_ZERO != 0)
    })?;
    Ok(id.map_or(Dynamic::UNIT, |id| Dynamic::from(SgObj { id })))
}

/// Registers the noncontiguous allocation calls.
pub(super) fn register(engine: &mut Engine, s: &Shared) {
    let s1 = s.clone();
    engine.register_fn(
        "dma_alloc_noncontiguous",
        move |ctx: NativeCallContext, d: DeviceObj, size: Dynamic, dir: INT| {
            alloc(&s1, &ctx, &d, &size, dir, 0)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_alloc_noncontiguous",
        move |ctx: NativeCallContext, d: DeviceObj, size: Dynamic, dir: INT, gfp: INT| {
            alloc(&s1, &ctx, &d, &size, dir, gfp as u64)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_vmap_noncontiguous",
        move |ctx: NativeCallContext, d: DeviceObj, _size: Dynamic, t: SgObj| -> RResult<Dynamic> {
            let id = with_sys(&s1, &ctx, |sys| sys.dma_vmap_noncontiguous(d.idx, t.id))?;
            Ok(buffer_obj(&s1, id))
        },
    );
    engine.register_fn(
        "dma_vunmap_noncontiguous",
        // The vmap lives as long as the allocation in this model.
        |_d: DeviceObj, _b: BufferObj| {},
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_free_noncontiguous",
        move |ctx: NativeCallContext, d: DeviceObj, size: Dynamic, t: SgObj, dir: INT| {
            let n = size_of(&ctx, &size, "dma_free_noncontiguous")?;
            let dir = dir_of(&ctx, dir)?;
            with_sys(&s1, &ctx, |sys| {
                sys.dma_free_noncontiguous(d.idx, n, t.id, dir)
            })
        },
    );
}
