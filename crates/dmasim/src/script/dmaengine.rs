//! Script functions of the dmaengine slave API (`kernel::dmaengine`): channels,
//! slave configuration, single/sg/cyclic descriptors, submit and issue, completion
//! callbacks (script functions or closures), terminate and synchronize, residue.
//!
//! Callbacks run when the script lets time pass (`run_for`, `wait`,
//! `dmaengine_synchronize`, `dmaengine_terminate_sync`): time advances to each
//! completion in order and its callback runs at that moment, as a controller's
//! tasklet would shortly after the interrupt.

use rhai::{Blob, Dynamic, Engine, FnPtr, Map, NativeCallContext, INT};

use super::api::{err, size_of, with_sys, RResult};
use super::values::{DeviceObj, SgObj};
use super::Shared;
use crate::kernel::dmaengine::DMA_DEV_TO_MEM;

/// A DMA channel (`struct dma_chan *`).
#[derive(Debug, Clone)]
pub struct ChanObj {
    /// Channel id.
    pub id: u64,
    /// The controller device.
    pub dmac: DeviceObj,
}

/// A prepared descriptor (`struct dma_async_tx_descriptor *`).
#[derive(Debug, Clone)]
pub struct DescObj {
    /// Descriptor id.
    pub id: u64,
}

/// Lets time pass until `end_ps`, running each completion's callback at its time.
pub(super) fn advance_with_callbacks(
    s: &Shared,
    ctx: &NativeCallContext,
    end_ps: u64,
) -> RResult<()> {
    with_sys(s, ctx, |sys| sys.refuse_past_limit(end_ps))?;
    loop {
        let reached = with_sys(s, ctx, |sys| {
            let next = sys.dmaengine_next_end().filter(|&t| t <= end_ps);
            let t = next.unwrap_or(end_ps).max(sys.hw.now_ps());
            sys.idle_until(t);
            sys.dmaengine_complete_until(t)?;
            Ok(next.is_none())
        })?;
        run_callbacks(s, ctx, None)?;
        if reached {
            return Ok(());
        }
    }
}

/// Runs the callbacks of the completions signalled so far (of one channel, or of
/// all), oldest first, with no borrow of the session held.
fn run_callbacks(s: &Shared, ctx: &NativeCallContext, chan: Option<u64>) -> RResult<()> {
    loop {
        let next = {
            let mut g = s.borrow_mut();
            let Some(sys) = g.sys.as_mut() else {
                return Ok(());
            };
            let eng = &mut sys.dmaengine;
            let pos = eng.pending.iter().position(|c| {
                chan.is_none_or(|ch| eng.descs.get(&c.desc).is_some_and(|d| d.chan == ch))
            });
            let Some(c) = pos.and_then(|i| eng.pending.remove(i)) else {
                return Ok(());
            };
            g.callbacks.get(&c.desc).cloned().map(|cb| (cb, c.period))
        };
        if let Some(((f, param), period)) = next {
            // The callback takes its param (or the period index); one written
            // without a parameter is called with none.
            let arg = param.unwrap_or_else(|| Dynamic::from(period as INT));
            match f.call_within_context::<Dynamic>(ctx, (arg,)) {
                Ok(_) => {}
                Err(e) if matches!(*e, rhai::EvalAltResult::ErrorFunctionNotFound(..)) => {
                    let _ = f.call_within_context::<Dynamic>(ctx, ())?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn cfg_int(ctx: &NativeCallContext, m: &Map, key: &str) -> RResult<Option<u64>> {
    super::api::map_uint(ctx, m, key, "dmaengine_slave_config")
}

pub(super) fn register(engine: &mut Engine, s: &Shared) {
    engine.register_type_with_name::<ChanObj>("DmaChan");
    engine.register_type_with_name::<DescObj>("DmaDesc");
    let s1 = s.clone();
    engine.register_fn(
        "dma_request_chan",
        move |ctx: NativeCallContext, d: DeviceObj, name: &str| {
            with_sys(&s1, &ctx, |sys| sys.dma_request_chan(d.idx, name)).map(|id| ChanObj {
                id,
                dmac: d.clone(),
            })
        },
    );
    engine.register_fn("dmaengine_get_dma_device", |c: ChanObj| c.dmac);
    let s1 = s.clone();
    engine.register_fn(
        "dmaengine_slave_config",
        move |ctx: NativeCallContext, c: ChanObj, cfg: Map| -> RResult<INT> {
            let dir = cfg_int(&ctx, &cfg, "direction")?
                .ok_or_else(|| err(&ctx, "dmaengine_slave_config: direction (DMA_MEM_TO_DEV or DMA_DEV_TO_MEM) is required"))?;
            // The peripheral end: the source for DEV_TO_MEM, the destination else.
            let key = if dir == DMA_DEV_TO_MEM { "src_addr" } else { "dst_addr" };
            let Some(addr) = cfg_int(&ctx, &cfg, key)? else {
                return Ok(-(crate::kernel::errno::EINVAL as INT));
            };
            with_sys(&s1, &ctx, |sys| sys.dmaengine_slave_config(c.id, dir, addr))?;
            Ok(0)
        },
    );

    // Descriptors: NULL (unit) where a driver's prep refuses.
    let prep = |s: &Shared,
                ctx: &NativeCallContext,
                c: &ChanObj,
                segs: Vec<(u64, u64)>,
                dir: INT,
                cyclic: bool,
                flags: INT|
     -> RResult<Dynamic> {
        with_sys(s, ctx, |sys| {
            sys.dmaengine_prep(c.id, segs, dir as u64, cyclic, flags as u64)
        })
        .map(|d| d.map_or(Dynamic::UNIT, |id| Dynamic::from(DescObj { id })))
    };
    let s1 = s.clone();
    engine.register_fn(
        "dmaengine_prep_slave_single",
        move |ctx: NativeCallContext, c: ChanObj, addr: INT, len: Dynamic, dir: INT, flags: INT| {
            let n = size_of(&ctx, &len, "dmaengine_prep_slave_single")?;
            prep(&s1, &ctx, &c, vec![(addr as u64, n)], dir, false, flags)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dmaengine_prep_slave_sg",
        move |ctx: NativeCallContext, c: ChanObj, t: SgObj, dir: INT, flags: INT| {
            let segs = with_sys(&s1, &ctx, |sys| {
                let tbl = sys.sg(t.id)?;
                if tbl.mapped == 0 {
                    return Err(crate::system::SimError::Invalid(
                        "dmaengine_prep_slave_sg: map the table first (dma_map_sgtable with the channel's device)".into(),
                    ));
                }
                Ok(tbl
                    .entries
                    .iter()
                    .take(tbl.mapped)
                    .map(|e| (e.dma_address, e.dma_len))
                    .collect::<Vec<_>>())
            })?;
            prep(&s1, &ctx, &c, segs, dir, false, flags)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dmaengine_prep_dma_cyclic",
        move |ctx: NativeCallContext,
              c: ChanObj,
              addr: INT,
              buf_len: Dynamic,
              period_len: Dynamic,
              dir: INT,
              flags: INT| {
            let len = size_of(&ctx, &buf_len, "dmaengine_prep_dma_cyclic")?;
            let period = size_of(&ctx, &period_len, "dmaengine_prep_dma_cyclic")?;
            // Drivers refuse a buffer that is not a whole number of periods.
            if period == 0 || len % period != 0 || len / period > 65_536 {
                return Ok(Dynamic::UNIT);
            }
            let segs = (0..len / period)
                .map(|i| ((addr as u64).wrapping_add(i * period), period))
                .collect();
            prep(&s1, &ctx, &c, segs, dir, true, flags)
        },
    );
    for arity in [2, 3] {
        let s1 = s.clone();
        let set = move |ctx: &NativeCallContext, d: &DescObj, f: FnPtr, p: Option<Dynamic>| {
            let mut g = s1.borrow_mut();
            if g.sys
                .as_ref()
                .is_none_or(|sys| !sys.dmaengine.descs.contains_key(&d.id))
            {
                return Err(err(ctx, format!("no DMA descriptor #{}", d.id)));
            }
            g.callbacks.insert(d.id, (f, p));
            Ok(())
        };
        if arity == 2 {
            engine.register_fn(
                "dmaengine_set_callback",
                move |ctx: NativeCallContext, d: DescObj, f: FnPtr| set(&ctx, &d, f, None),
            );
        } else {
            engine.register_fn(
                "dmaengine_set_callback",
                move |ctx: NativeCallContext, d: DescObj, f: FnPtr, p: Dynamic| {
                    set(&ctx, &d, f, Some(p))
                },
            );
        }
    }
    let s1 = s.clone();
    engine.register_fn(
        "dmaengine_submit",
        move |ctx: NativeCallContext, d: DescObj| {
            with_sys(&s1, &ctx, |sys| sys.dmaengine_submit(d.id)).map(|c| c as INT)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_async_issue_pending",
        move |ctx: NativeCallContext, c: ChanObj| {
            with_sys(&s1, &ctx, |sys| sys.dma_async_issue_pending(c.id))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dmaengine_terminate_async",
        move |ctx: NativeCallContext, c: ChanObj| {
            with_sys(&s1, &ctx, |sys| sys.dmaengine_terminate_async(c.id)).map(|()| 0 as INT)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dmaengine_synchronize",
        move |ctx: NativeCallContext, c: ChanObj| {
            run_callbacks(&s1, &ctx, Some(c.id))?;
            with_sys(&s1, &ctx, |sys| sys.dmaengine_synchronized(c.id))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dmaengine_terminate_sync",
        move |ctx: NativeCallContext, c: ChanObj| {
            with_sys(&s1, &ctx, |sys| sys.dmaengine_terminate_async(c.id))?;
            run_callbacks(&s1, &ctx, Some(c.id))?;
            with_sys(&s1, &ctx, |sys| sys.dmaengine_synchronized(c.id)).map(|()| 0 as INT)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dmaengine_tx_status",
        move |ctx: NativeCallContext, c: ChanObj, cookie: INT| -> RResult<Map> {
            let (status, residue) =
                with_sys(&s1, &ctx, |sys| sys.dmaengine_tx_status(c.id, cookie))?;
            let mut m = Map::new();
            m.insert("status".into(), (status as INT).into());
            m.insert("residue".into(), (residue as INT).into());
            Ok(m)
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_release_channel",
        move |ctx: NativeCallContext, c: ChanObj| {
            with_sys(&s1, &ctx, |sys| sys.dma_release_channel(c.id))
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_fifo_push",
        move |ctx: NativeCallContext, c: ChanObj, data: Blob| -> RResult<()> {
            with_sys(&s1, &ctx, |sys| {
                let ch = sys.chan_mut(c.id)?;
                if ch.fifo_in.len() + data.len() > crate::system::MAX_ACCESS as usize {
                    return Err(crate::system::SimError::Invalid(
                        "dma_fifo_push: the peripheral FIFO queue is limited to 256 MiB".into(),
                    ));
                }
                ch.fifo_in.extend(data.iter().copied());
                Ok(())
            })
        },
    );
    let s1 = s.clone();
    engine.register_fn(
        "dma_fifo_pop",
        move |ctx: NativeCallContext, c: ChanObj| -> RResult<Blob> {
            with_sys(&s1, &ctx, |sys| {
                let ch = sys.chan_mut(c.id)?;
                Ok(std::mem::take(&mut ch.fifo_out))
            })
        },
    );
}
