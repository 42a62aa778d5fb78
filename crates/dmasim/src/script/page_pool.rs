//! Script bindings of the network page recycler (`kernel::page_pool`,
//! `net/core/page_pool.c`): `page_pool_create`, `page_pool_dev_alloc_pages`,
//! `page_pool_put_page`, `page_pool_put_full_page`, `page_pool_get_dma_addr`,
//! `page_pool_destroy`.

use rhai::{Dynamic, Engine, Map, NativeCallContext, INT};

use super::api::{dir_of, err, size_of, with_sys, RResult};
use super::values::{BufferObj, DeviceObj};
use super::Shared;
use crate::kernel::page_pool::PagePoolParams;

/// A `struct page_pool *` handle.
#[derive(Debug, Clone)]
pub struct PagePoolObj {
    /// Pool id in the kernel model.
    pub id: usize,
}

fn params(ctx: &NativeCallContext, m: &Map) -> RResult<PagePoolParams> {
    let mut p = PagePoolParams {
        flags: 0,
        order: 0,
        pool_size: 0,
        dir: crate::kernel::dma::DmaDirection::FromDevice,
        max_len: 0,
        offset: 0,
    };
    for (k, v) in m {
        let int = |what: &str| -> RResult<u64> { size_of(ctx, v, what) };
        match k.as_str() {
            "flags" => p.flags = int("flags")?,
            "order" => {
                p.order = u32::try_from(int("order")?)
                    .map_err(|_| err(ctx, "page_pool_create: order too large"))?
            }
            "pool_size" => p.pool_size = int("pool_size")?,
            "dma_dir" => {
                let d = v
                    .as_int()
                    .map_err(|_| err(ctx, "page_pool_create: dma_dir: expected a DMA direction"))?;
                p.dir = dir_of(ctx, d)?;
            }
            "max_len" => p.max_len = int("max_len")?,
            "offset" => p.offset = int("offset")?,
            other => {
                return Err(err(
                    ctx,
                    format!("page_pool_create: unknown parameter {other:?} (flags, order, pool_size, dma_dir, max_len, offset)"),
                ))
            }
        }
    }
    Ok(p)
}

/// Registers the page_pool functions and the `PagePool` type.
pub(super) fn register(engine: &mut Engine, s: &Shared) {
    engine.register_type_with_name::<PagePoolObj>("PagePool");
    let s1 = s.clone();
    engine.register_fn(
        "page_pool_create",
        move |ctx: NativeCallContext, d: DeviceObj, m: Map| -> RResult<Dynamic> {
            let p = params(&ctx, &m)?;
            let r = with_sys(&s1, &ctx, |sys| sys.page_pool_create(d.idx, p))?;
            Ok(match r {
                Ok(id) => Dynamic::from(PagePoolObj { id }),
                // ERR_PTR(-EINVAL): the script sees the negative errno.
                Err(e) => Dynamic::from(e),
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "page_pool_dev_alloc_pages",
        move |ctx: NativeCallContext, p: PagePoolObj| -> RResult<Dynamic> {
            with_sys(&s1, &ctx, |sys| {
                Ok(match sys.page_pool_alloc_pages(p.id)? {
                    Some((id, dma)) => {
                        let mut b = BufferObj::of(&sys.kernel.buffers[&id]);
                        b.dma = Some(dma);
                        Dynamic::from(b)
                    }
                    None => Dynamic::UNIT,
                })
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "page_pool_put_page",
        move |ctx: NativeCallContext, p: PagePoolObj, b: BufferObj, size: INT, direct: bool| {
            with_sys(&s1, &ctx, |sys| {
                sys.page_pool_put_page(p.id, b.id, size, direct)
            })
        },
    );
    // page_pool_put_full_page: dma_sync_size -1, the whole max_len.
    let s1 = s.clone();
    engine.register_fn(
        "page_pool_put_full_page",
        move |ctx: NativeCallContext, p: PagePoolObj, b: BufferObj, direct: bool| {
            with_sys(&s1, &ctx, |sys| {
                sys.page_pool_put_page(p.id, b.id, -1, direct)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "page_pool_get_dma_addr",
        move |ctx: NativeCallContext, b: BufferObj| {
            with_sys(&s1, &ctx, |sys| {
                sys.page_pool_get_dma_addr(b.id)
                    .map(|a| a as INT)
                    .ok_or_else(|| {
                        crate::system::SimError::Invalid(format!(
                        "page_pool_get_dma_addr: buffer #{} is not a page a page_pool handed out",
                        b.id
                    ))
                    })
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "page_pool_destroy",
        move |ctx: NativeCallContext, p: PagePoolObj| {
            with_sys(&s1, &ctx, |sys| sys.page_pool_destroy(p.id))
        },
    );
}
