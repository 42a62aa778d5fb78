//! Script bindings of dma-buf and the dma-buf heaps (see `uapi::dmabuf`): user
//! space's `dma_heap_alloc`, `p.mmap(dbuf)`, `dma_buf_ioctl_sync` and `close`; an
//! importer's `dma_buf_attach`, `dma_buf_vmap`, `dma_buf_vunmap`, `dma_buf_map_attachment`,
//! `dma_buf_unmap_attachment`, `dma_buf_detach`, `dma_buf_begin_cpu_access` and
//! `dma_buf_end_cpu_access`; V4L2's DMABUF import (`v4l2_reqbufs_dmabuf`,
//! `v4l2_qbuf_dmabuf`) and export (`v4l2_expbuf`). Calls that fail as Linux's do return the negative errno.

use rhai::{Dynamic, Engine, NativeCallContext, INT};

use super::api::{dir_of, size_of, with_sys, RResult};
use super::values::{BufferObj, DeviceObj, ProcessObj, SgObj};
use super::Shared;

/// A dma-buf (the fd user space holds, the `struct dma_buf *` an importer gets).
#[derive(Debug, Clone)]
pub struct DmaBufObj {
    /// Id in the kernel model.
    pub id: u64,
}

/// A `struct dma_buf_attachment *`.
#[derive(Debug, Clone)]
pub struct AttachmentObj {
    /// Id in the kernel model.
    pub id: u64,
}

/// `Ok(v)` as the script value `wrap(v)`, `Err(errno)` as the integer.
fn or_errno<T>(r: std::result::Result<T, i64>, wrap: impl FnOnce(T) -> Dynamic) -> Dynamic {
    match r {
        Ok(v) => wrap(v),
        Err(e) => Dynamic::from(e as INT),
    }
}

/// Registers the dma-buf types and functions.
#[allow(clippy::too_many_lines)]
pub(super) fn register(engine: &mut Engine, s: &Shared) {
    engine.register_type_with_name::<DmaBufObj>("DmaBuf");
    engine.register_type_with_name::<AttachmentObj>("DmaBufAttachment");
    type Field = fn(&crate::uapi::dmabuf::DmaBuf) -> Dynamic;
    let fields: [(&str, Field); 4] = [
        ("size", |b| Dynamic::from(b.size as INT)),
        ("heap", |b| Dynamic::from(b.heap.name().to_string())),
        ("chunks", |b| Dynamic::from(b.chunks.len() as INT)),
        ("attachments", |b| Dynamic::from(b.attachments.len() as INT)),
    ];
    for (name, f) in fields {
        let s1 = s.clone();
        engine.register_get(
            name,
            move |ctx: NativeCallContext, b: &mut DmaBufObj| -> RResult<Dynamic> {
                with_sys(&s1, &ctx, |sys| sys.dmabuf(b.id).map(f))
            },
        );
    }
    let s1 = s.clone();
    engine.register_fn(
        "dma_heap_alloc",
        move |ctx: NativeCallContext, p: ProcessObj, heap: &str, len: Dynamic| {
            let n = size_of(&ctx, &len, "dma_heap_alloc")?;
            with_sys(&s1, &ctx, |sys| {
                let r = sys.dma_heap_alloc(p.pid, heap, n)?;
                Ok(or_errno(r, |id| Dynamic::from(DmaBufObj { id })))
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "mmap",
        move |ctx: NativeCallContext, p: &mut ProcessObj, b: DmaBufObj| {
            with_sys(&s1, &ctx, |sys| {
                let len = sys.dmabuf(b.id)?.size;
                let r = sys.dma_buf_mmap(p.pid, b.id)?;
                Ok(or_errno(r, |va| Dynamic::from(BufferObj::user(va, len))))
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn("close", move |ctx: NativeCallContext, b: DmaBufObj| {
        with_sys(&s1, &ctx, |sys| sys.dma_buf_close(b.id))
    });
    let s1 = s.clone();
    engine.register_fn(
        "dma_buf_ioctl_sync",
        move |ctx: NativeCallContext, b: DmaBufObj, flags: INT| {
            // Bits beyond the valid ones are -EINVAL; a negative value has them all.
            let flags = u64::try_from(flags).unwrap_or(u64::MAX);
            with_sys(&s1, &ctx, |sys| sys.dma_buf_ioctl_sync(b.id, flags))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_buf_attach",
        move |ctx: NativeCallContext, b: DmaBufObj, d: DeviceObj| {
            with_sys(&s1, &ctx, |sys| sys.dma_buf_attach(b.id, d.idx))
                .map(|id| AttachmentObj { id })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_buf_detach",
        move |ctx: NativeCallContext, b: DmaBufObj, a: AttachmentObj| {
            with_sys(&s1, &ctx, |sys| sys.dma_buf_detach(b.id, a.id))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_buf_map_attachment",
        move |ctx: NativeCallContext, a: AttachmentObj, dir: INT| {
            let dir = dir_of(&ctx, dir)?;
            with_sys(&s1, &ctx, |sys| {
                let r = sys.dma_buf_map_attachment(a.id, dir)?;
                Ok(or_errno(r, |id| Dynamic::from(SgObj { id })))
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_buf_unmap_attachment",
        move |ctx: NativeCallContext, a: AttachmentObj, t: SgObj, dir: INT| {
            let dir = dir_of(&ctx, dir)?;
            with_sys(&s1, &ctx, |sys| {
                sys.dma_buf_unmap_attachment(a.id, t.id, dir)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_expbuf",
        move |ctx: NativeCallContext, q: INT, i: INT| {
            with_sys(&s1, &ctx, |sys| {
                let r = sys.v4l2_expbuf(q as u64, i as u64)?;
                Ok(or_errno(r, |id| Dynamic::from(DmaBufObj { id })))
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_reqbufs_dmabuf",
        move |ctx: NativeCallContext, q: INT, count: INT, size: Dynamic| {
            let n = size_of(&ctx, &size, "v4l2_reqbufs_dmabuf")?;
            let count = u64::try_from(count)
                .map_err(|_| super::api::err(&ctx, "v4l2_reqbufs_dmabuf: negative count"))?;
            with_sys(&s1, &ctx, |sys| sys.v4l2_reqbufs_dmabuf(q as u64, count, n))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "v4l2_qbuf_dmabuf",
        move |ctx: NativeCallContext, q: INT, i: INT, b: DmaBufObj| {
            with_sys(&s1, &ctx, |sys| {
                sys.v4l2_qbuf_dmabuf(q as u64, i as u64, b.id)
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_buf_vmap",
        move |ctx: NativeCallContext, b: DmaBufObj| -> RResult<BufferObj> {
            with_sys(&s1, &ctx, |sys| {
                let va = sys.dma_buf_vmap(b.id)?;
                let d = sys.dmabuf(b.id)?;
                Ok(BufferObj {
                    id: 0,
                    va,
                    len: d.size,
                    kind: "dmabuf",
                    phys: d.chunks[0].0 << crate::config::PAGE_SHIFT,
                    dma: None,
                })
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_buf_vunmap",
        move |ctx: NativeCallContext, b: DmaBufObj, m: BufferObj| {
            with_sys(&s1, &ctx, |sys| sys.dma_buf_vunmap(b.id, m.va))
        },
    );
    for (name, begin) in [
        ("dma_buf_begin_cpu_access", true),
        ("dma_buf_end_cpu_access", false),
    ] {
        let s1 = s.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, b: DmaBufObj, dir: INT| {
                let dir = dir_of(&ctx, dir)?;
                with_sys(&s1, &ctx, |sys| {
                    if begin {
                        sys.dma_buf_begin_cpu_access(b.id, dir)
                    } else {
                        sys.dma_buf_end_cpu_access(b.id, dir)
                    }
                })
            },
        );
    }
}
