//! Script bindings of a driver's `mmap` over DMA memory: `dma_mmap_coherent` and
//! `remap_pfn_range` (see `uapi::mmap`). Both return the user mapping as a Buffer of
//! kind `"user"` that `p.read` / `p.write` use.

use rhai::{Dynamic, Engine, NativeCallContext};

use super::api::{err, with_sys, RResult};
use super::values::{BufferObj, DeviceObj, ProcessObj};
use super::Shared;
use crate::config::PAGE_SIZE;
use crate::uapi::mmap::PgProt;

fn user_buffer(va: u64, len: u64) -> Dynamic {
    Dynamic::from(BufferObj::user(va, len))
}

fn remap(
    s: &Shared,
    ctx: &NativeCallContext,
    p: &ProcessObj,
    b: &BufferObj,
    prot: &str,
) -> RResult<Dynamic> {
    let prot = PgProt::parse(prot).ok_or_else(|| {
        err(
            ctx,
            format!("remap_pfn_range: unknown protection {prot:?} (default, writecombine, dmacoherent, noncached)"),
        )
    })?;
    // The mapping covers every page the buffer touches, from the first one's start.
    let len = (b.va % PAGE_SIZE + b.len).next_multiple_of(PAGE_SIZE);
    let va = with_sys(s, ctx, |sys| sys.remap_pfn_range(p.pid, b.id, prot))?;
    Ok(user_buffer(va, len))
}

/// Registers `dma_mmap_coherent` and `remap_pfn_range`.
pub(super) fn register(engine: &mut Engine, s: &Shared) {
    // dma_mmap_wc is dma_mmap_attrs with DMA_ATTR_WRITE_COMBINE: dma_pgprot gives
    // pgprot_writecombine, Normal-NC on arm64 like pgprot_dmacoherent (and the
    // unchanged cacheable protection for a coherent device), so it maps as
    // dma_mmap_coherent does; a dma_alloc_wc buffer is a coherent buffer here.
    let s1 = s.clone();
    engine.register_fn(
        "dma_mmap_wc",
        move |ctx: NativeCallContext,
              d: DeviceObj,
              p: ProcessObj,
              b: BufferObj|
              -> RResult<Dynamic> {
            let va = with_sys(&s1, &ctx, |sys| sys.dma_mmap_coherent(d.idx, p.pid, b.id))?;
            Ok(user_buffer(va, b.len))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_mmap_coherent",
        move |ctx: NativeCallContext,
              d: DeviceObj,
              p: ProcessObj,
              b: BufferObj|
              -> RResult<Dynamic> {
            let va = with_sys(&s1, &ctx, |sys| sys.dma_mmap_coherent(d.idx, p.pid, b.id))?;
            Ok(user_buffer(va, b.len))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "remap_pfn_range",
        move |ctx: NativeCallContext, p: ProcessObj, b: BufferObj| {
            remap(&s1, &ctx, &p, &b, "default")
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "remap_pfn_range",
        move |ctx: NativeCallContext, p: ProcessObj, b: BufferObj, prot: &str| {
            remap(&s1, &ctx, &p, &b, prot)
        },
    );
}
