//! Script bindings of a driver's `mmap` over DMA memory: `dma_mmap_coherent`,
//! `dma_mmap_wc`, `dma_mmap_pages` and `remap_pfn_range` (see `uapi::mmap`). Both return the user mapping as a Buffer of
//! kind `"user"` that `p.read` / `p.write` use.

use rhai::{Dynamic, Engine, NativeCallContext};

use super::api::{err, size_of, with_sys, RResult};
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
    // dma_mmap_pages(dev, vma, size, page): the vma covers the whole buffer, or
    // `vma_len` bytes (more than PAGE_ALIGN(size) is -ENXIO).
    let mmap_pages = |s: &Shared,
                      ctx: &NativeCallContext,
                      d: &DeviceObj,
                      p: &ProcessObj,
                      size: &Dynamic,
                      b: &BufferObj,
                      vma: Option<&Dynamic>|
     -> RResult<Dynamic> {
        let size = size_of(ctx, size, "dma_mmap_pages")?;
        let vma_len = match vma {
            Some(v) => size_of(ctx, v, "dma_mmap_pages")?,
            None => size.next_multiple_of(PAGE_SIZE),
        };
        let r = with_sys(s, ctx, |sys| {
            sys.dma_mmap_pages(d.idx, p.pid, size, b.id, vma_len)
        })?;
        Ok(match r {
            Ok(va) => user_buffer(va, vma_len.min(b.len)),
            Err(e) => Dynamic::from(e),
        })
    };
    let s1 = s.clone();
    engine.register_fn(
        "dma_mmap_pages",
        move |ctx: NativeCallContext, d: DeviceObj, p: ProcessObj, size: Dynamic, b: BufferObj| {
            mmap_pages(&s1, &ctx, &d, &p, &size, &b, None)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_mmap_pages",
        move |ctx: NativeCallContext,
              d: DeviceObj,
              p: ProcessObj,
              size: Dynamic,
              b: BufferObj,
              vma_len: Dynamic| {
            mmap_pages(&s1, &ctx, &d, &p, &size, &b, Some(&vma_len))
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
