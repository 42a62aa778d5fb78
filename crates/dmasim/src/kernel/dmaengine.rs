//! The dmaengine slave API (`include/linux/dmaengine.h`, `drivers/dma/dmaengine.c`,
//! Linux 6.12) over a generic DMA controller driven like the `virt-dma.c` drivers
//! (i.MX SDMA, BCM2835, PL330, DW AXI).
//!
//! A controller is a device of the model: its port, its bus addresses (the buffers a
//! client maps with the controller's `struct device`, `dmaengine_get_dma_device`) and
//! its bandwidth. A channel moves the bytes of one descriptor at a time, segment by
//! segment (cyclic: period by period, forever), as device transfers on the simulated
//! clock; a peripheral FIFO at the other end is a byte queue the script feeds
//! (`DMA_DEV_TO_MEM`) or drains (`DMA_MEM_TO_DEV`). Completions are recorded at the
//! time the hardware finishes; their callbacks run when the script lets time pass
//! (`run_for`, `wait`, `dmaengine_synchronize`), as a controller's tasklet would.
//!
//! Simplifications: one descriptor runs at a time per channel (no hardware
//! descriptor chaining), no `DMA_MEM_TO_MEM` (memcpy) or interleaved templates; an
//! empty FIFO gives zeros instead of stalling the channel; the slave configuration's
//! bus widths and bursts are kept for the messages only.

use std::collections::{BTreeMap, VecDeque};

use crate::system::{Result, SimError, System};

/// `enum dma_transfer_direction`: `DMA_MEM_TO_DEV`.
pub const DMA_MEM_TO_DEV: u64 = 1;
/// `DMA_DEV_TO_MEM`.
pub const DMA_DEV_TO_MEM: u64 = 2;
/// `enum dma_status`: `DMA_COMPLETE`.
pub const DMA_COMPLETE: u64 = 0;
/// `DMA_IN_PROGRESS`.
pub const DMA_IN_PROGRESS: u64 = 1;
/// `DMA_ERROR`.
pub const DMA_ERROR: u64 = 3;
/// `DMA_PREP_INTERRUPT`: run the callback at completion.
pub const DMA_PREP_INTERRUPT: u64 = 1 << 0;
/// `DMA_CTRL_ACK`.
pub const DMA_CTRL_ACK: u64 = 1 << 1;

/// Most channels and live descriptors a run may have (host memory bound).
const MAX_CHANNELS: usize = 256;
const MAX_DESCS: usize = 65_536;

/// `struct dma_chan` with its virt-dma lists.
#[derive(Debug)]
pub struct Chan {
    /// The controller (device index) whose port moves the bytes.
    pub dmac: usize,
    /// `dma_request_chan(dev, name)`'s name ("rx", "tx").
    pub name: String,
    /// `dmaengine_slave_config`: the peripheral address per direction.
    pub dev_addr: [Option<u64>; 2],
    /// Submitted, not yet issued (`vc->desc_submitted`).
    submitted: VecDeque<u64>,
    /// Issued, waiting for the hardware (`vc->desc_issued`).
    issued: VecDeque<u64>,
    /// The descriptor the hardware runs, with its current transfer (job id).
    active: Option<(u64, u64)>,
    /// Bytes the peripheral will deliver (`DMA_DEV_TO_MEM`).
    pub fifo_in: VecDeque<u8>,
    /// Bytes the peripheral received (`DMA_MEM_TO_DEV`).
    pub fifo_out: Vec<u8>,
    /// `dmaengine_terminate_async` happened and `dmaengine_synchronize` has not:
    /// (time, script line) of the terminate.
    pub unsynchronized: Option<(u64, u32)>,
    /// Released with `dma_release_channel`.
    pub released: bool,
    /// The last cookie handed out.
    last_cookie: i64,
}

/// A prepared descriptor (`struct dma_async_tx_descriptor` of a virt-dma driver).
#[derive(Debug, Clone)]
pub struct Desc {
    /// Channel id.
    pub chan: u64,
    /// `DMA_MEM_TO_DEV` or `DMA_DEV_TO_MEM`.
    pub dir: u64,
    /// Bus-address segments of memory, in order (cyclic: one per period).
    pub segs: Vec<(u64, u64)>,
    /// A cyclic transfer (`dmaengine_prep_dma_cyclic`).
    pub cyclic: bool,
    /// The prep call's flags.
    pub flags: u64,
    /// Cookie once submitted (> 0).
    pub cookie: i64,
    /// Index of the segment the hardware is on, and bytes done in it.
    pub pos: (usize, u64),
    /// Finished (non-cyclic) or terminated.
    pub done: bool,
    /// Periods (cyclic) or descriptors completed so far.
    pub completions: u64,
    /// Script line of the prep call.
    pub line: u32,
}

impl Desc {
    fn total(&self) -> u64 {
        self.segs.iter().map(|s| s.1).sum()
    }
}

/// A completion the hardware signalled whose callback has not run yet.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// When the hardware finished, ps.
    pub time_ps: u64,
    /// The descriptor.
    pub desc: u64,
    /// Period index (cyclic) or 0.
    pub period: u64,
}

/// Every channel and descriptor of a run.
#[derive(Debug, Default)]
pub struct DmaEngine {
    /// Channels by id (1-based).
    pub chans: BTreeMap<u64, Chan>,
    /// Descriptors by id (1-based).
    pub descs: BTreeMap<u64, Desc>,
    /// Completions waiting for their callback, oldest first.
    pub pending: VecDeque<Completion>,
    next_chan: u64,
    next_desc: u64,
}

impl DmaEngine {
    /// Whether any channel exists (runs without dmaengine keep their old paths).
    pub fn in_use(&self) -> bool {
        !self.chans.is_empty()
    }
}

impl System {
    fn chan(&self, id: u64) -> Result<&Chan> {
        match self.dmaengine.chans.get(&id) {
            Some(c) if !c.released => Ok(c),
            Some(_) => Err(SimError::Invalid(format!(
                "DMA channel #{id} was released (dma_release_channel)"
            ))),
            None => Err(SimError::Invalid(format!("no DMA channel #{id}"))),
        }
    }

    /// A live channel, for changes (released channels are refused).
    pub(crate) fn chan_mut(&mut self, id: u64) -> Result<&mut Chan> {
        self.chan(id)?;
        Ok(self.dmaengine.chans.get_mut(&id).expect("checked"))
    }

    /// `dma_request_chan(dev, name)`: a channel of controller `dmac`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a removed controller or too many channels.
    pub fn dma_request_chan(&mut self, dmac: usize, name: &str) -> Result<u64> {
        if self.kernel.devices.get(dmac).is_none_or(|d| !d.bound) {
            return Err(SimError::Invalid(
                "dma_request_chan: no such DMA controller, or it was removed".into(),
            ));
        }
        if self.dmaengine.chans.len() >= MAX_CHANNELS {
            return Err(SimError::Invalid(format!(
                "dma_request_chan: more than {MAX_CHANNELS} channels"
            )));
        }
        self.dmaengine.next_chan += 1;
        let id = self.dmaengine.next_chan;
        self.dmaengine.chans.insert(
            id,
            Chan {
                dmac,
                name: name.to_string(),
                dev_addr: [None, None],
                submitted: VecDeque::new(),
                issued: VecDeque::new(),
                active: None,
                fifo_in: VecDeque::new(),
                fifo_out: Vec::new(),
                unsynchronized: None,
                released: false,
                last_cookie: 0,
            },
        );
        let dev = self.kernel.devices[dmac].name.clone();
        self.printk(&dev, format!("dma_request_chan: channel {name} (#{id})"));
        Ok(id)
    }

    /// `dmaengine_slave_config`: the peripheral's FIFO address for a direction.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a bad direction or channel.
    pub fn dmaengine_slave_config(&mut self, chan: u64, dir: u64, addr: u64) -> Result<()> {
        let c = self.chan_mut(chan)?;
        match dir {
            DMA_MEM_TO_DEV => c.dev_addr[0] = Some(addr),
            DMA_DEV_TO_MEM => c.dev_addr[1] = Some(addr),
            _ => {
                return Err(SimError::Invalid(format!(
                    "dmaengine_slave_config: direction {dir} is not DMA_MEM_TO_DEV (1) or DMA_DEV_TO_MEM (2)"
                )))
            }
        }
        Ok(())
    }

    /// `dmaengine_prep_slave_sg` / `_single` / `dmaengine_prep_dma_cyclic`: a new
    /// descriptor over `segs` (bus addresses of the controller), or `None` where a
    /// driver's prep returns NULL (no slave address configured for `dir`, an empty
    /// list, a cyclic buffer that is not a whole number of periods).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a bad channel or too many descriptors.
    pub fn dmaengine_prep(
        &mut self,
        chan: u64,
        segs: Vec<(u64, u64)>,
        dir: u64,
        cyclic: bool,
        flags: u64,
    ) -> Result<Option<u64>> {
        let c = self.chan(chan)?;
        let configured = match dir {
            DMA_MEM_TO_DEV => c.dev_addr[0].is_some(),
            DMA_DEV_TO_MEM => c.dev_addr[1].is_some(),
            _ => false,
        };
        if !configured || segs.is_empty() || segs.iter().any(|s| s.1 == 0) {
            return Ok(None);
        }
        if let Some(&(_, n)) = segs.iter().find(|s| s.1 > crate::system::MAX_ACCESS) {
            return Err(SimError::Invalid(format!(
                "a DMA segment of {n} bytes is more than a single transfer may move ({} MiB)",
                crate::system::MAX_ACCESS >> 20
            )));
        }
        if self.dmaengine.descs.len() >= MAX_DESCS {
            return Err(SimError::Invalid(format!(
                "more than {MAX_DESCS} DMA descriptors alive"
            )));
        }
        self.dmaengine.next_desc += 1;
        let id = self.dmaengine.next_desc;
        let line = self.line;
        self.dmaengine.descs.insert(
            id,
            Desc {
                chan,
                dir,
                segs,
                cyclic,
                flags,
                cookie: 0,
                pos: (0, 0),
                done: false,
                completions: 0,
                line,
            },
        );
        Ok(Some(id))
    }

    /// `dmaengine_submit`: queue the descriptor; its cookie.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or already submitted descriptor.
    pub fn dmaengine_submit(&mut self, desc: u64) -> Result<i64> {
        let d = self
            .dmaengine
            .descs
            .get(&desc)
            .ok_or_else(|| SimError::Invalid(format!("no DMA descriptor #{desc}")))?;
        if d.cookie != 0 {
            return Err(SimError::Invalid(format!(
                "dmaengine_submit: descriptor #{desc} was submitted already (cookie {})",
                d.cookie
            )));
        }
        let chan = d.chan;
        let c = self.chan_mut(chan)?;
        c.last_cookie += 1;
        let cookie = c.last_cookie;
        c.submitted.push_back(desc);
        self.dmaengine.descs.get_mut(&desc).expect("checked").cookie = cookie;
        Ok(cookie)
    }

    /// `dma_async_issue_pending`: submitted descriptors go to the hardware; an idle
    /// channel starts the first.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a bad channel.
    pub fn dma_async_issue_pending(&mut self, chan: u64) -> Result<()> {
        self.step();
        let c = self.chan_mut(chan)?;
        let moved: Vec<u64> = c.submitted.drain(..).collect();
        c.issued.extend(moved);
        if c.active.is_none() {
            let now = self.hw.now_ps();
            self.chan_start_next(chan, now)?;
        }
        Ok(())
    }

    /// Starts the next issued descriptor of an idle channel at `t_ps`.
    fn chan_start_next(&mut self, chan: u64, t_ps: u64) -> Result<()> {
        let c = self.dmaengine.chans.get_mut(&chan).expect("live channel");
        let Some(desc) = c.issued.pop_front() else {
            return Ok(());
        };
        self.chan_start_segment(chan, desc, t_ps)
    }

    /// Starts the transfer of the descriptor's current segment at `t_ps`.
    fn chan_start_segment(&mut self, chan: u64, desc: u64, t_ps: u64) -> Result<()> {
        let (dmac, dir) = {
            let c = &self.dmaengine.chans[&chan];
            (c.dmac, self.dmaengine.descs[&desc].dir)
        };
        let (bus, len) = {
            let d = &self.dmaengine.descs[&desc];
            d.segs[d.pos.0]
        };
        let data = if dir == DMA_DEV_TO_MEM {
            let c = self.dmaengine.chans.get_mut(&chan).expect("live channel");
            let n = (len as usize).min(c.fifo_in.len());
            let mut v: Vec<u8> = c.fifo_in.drain(..n).collect();
            v.resize(len as usize, 0);
            Some(v)
        } else {
            None
        };
        let job = self.dev_start_at(dmac, bus, len, data, t_ps)?;
        self.dmaengine.chans.get_mut(&chan).expect("live").active = Some((desc, job));
        Ok(())
    }

    /// When the next transfer of any channel ends (ps), if any runs.
    pub fn dmaengine_next_end(&self) -> Option<u64> {
        self.dmaengine
            .chans
            .values()
            .filter_map(|c| c.active.and_then(|(_, job)| self.job_end_ps(job)))
            .min()
    }

    /// Finishes every channel transfer that ended by `t_ps`: the peripheral gets
    /// its bytes, completions are recorded (their callbacks then run at the
    /// script's next time-passing call), and the channel goes on with the next
    /// segment, period or descriptor at the time the last one ended.
    ///
    /// # Errors
    /// As [`System::dev_start`] (a removed controller).
    pub fn dmaengine_complete_until(&mut self, t_ps: u64) -> Result<()> {
        loop {
            let due = self
                .dmaengine
                .chans
                .iter()
                .filter_map(|(&id, c)| {
                    let (desc, job) = c.active?;
                    let end = self.job_end_ps(job)?;
                    (end <= t_ps).then_some((end, id, desc, job))
                })
                .min();
            let Some((end, chan, desc, job)) = due else {
                return Ok(());
            };
            self.run_devices(end);
            if self.job_end_ps(job).is_some_and(|e| e > end) {
                // An IOMMU walk pushed the transfer's end back: not done yet.
                continue;
            }
            let got = self.job_finish(job);
            let c = self.dmaengine.chans.get_mut(&chan).expect("live");
            c.active = None;
            let d = self.dmaengine.descs.get_mut(&desc).expect("live");
            if d.dir == DMA_MEM_TO_DEV {
                if let Some(bytes) = got {
                    c.fifo_out.extend_from_slice(&bytes);
                }
            }
            let seg = d.pos.0;
            let last = seg + 1 == d.segs.len();
            if d.cyclic {
                // Every period ends with an interrupt; the ring wraps forever.
                d.completions += 1;
                self.dmaengine.pending.push_back(Completion {
                    time_ps: end,
                    desc,
                    period: seg as u64,
                });
                let d = self.dmaengine.descs.get_mut(&desc).expect("live");
                d.pos = (if last { 0 } else { seg + 1 }, 0);
                self.chan_start_segment(chan, desc, end)?;
            } else if last {
                d.done = true;
                d.pos = (seg, d.segs[seg].1);
                d.completions += 1;
                if d.flags & DMA_PREP_INTERRUPT != 0 {
                    self.dmaengine.pending.push_back(Completion {
                        time_ps: end,
                        desc,
                        period: 0,
                    });
                }
                self.chan_start_next(chan, end)?;
            } else {
                d.pos = (seg + 1, 0);
                self.chan_start_segment(chan, desc, end)?;
            }
        }
    }

    /// `dmaengine_terminate_async`: the hardware stops now, queued descriptors are
    /// dropped; completions already signalled still have their callbacks coming.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a bad channel.
    pub fn dmaengine_terminate_async(&mut self, chan: u64) -> Result<()> {
        self.step();
        let now = self.hw.now_ps();
        self.dmaengine_complete_until(now)?;
        let line = self.line;
        let c = self.chan_mut(chan)?;
        let mut dropped: Vec<u64> = c.submitted.drain(..).chain(c.issued.drain(..)).collect();
        if let Some((desc, job)) = c.active.take() {
            dropped.push(desc);
            self.job_abort(job);
        }
        let c = self.dmaengine.chans.get_mut(&chan).expect("live");
        c.unsynchronized = Some((now / 1000, line));
        for d in dropped {
            if let Some(d) = self.dmaengine.descs.get_mut(&d) {
                d.done = true;
            }
        }
        Ok(())
    }

    /// Stops every channel's hardware (its controller went away under it).
    pub(crate) fn dmaengine_stop_all(&mut self) {
        let jobs: Vec<u64> = self
            .dmaengine
            .chans
            .values_mut()
            .filter_map(|c| c.active.take().map(|(_, job)| job))
            .collect();
        for job in jobs {
            self.job_abort(job);
        }
    }

    /// `dmaengine_synchronize`: waits until no callback of the channel can run any
    /// more (the script runs the pending ones first).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a bad channel.
    pub fn dmaengine_synchronized(&mut self, chan: u64) -> Result<()> {
        self.chan_mut(chan)?.unsynchronized = None;
        Ok(())
    }

    /// `dmaengine_tx_status(chan, cookie, &state)`: (status, residue in bytes).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a bad channel.
    pub fn dmaengine_tx_status(&mut self, chan: u64, cookie: i64) -> Result<(u64, u64)> {
        self.step();
        let now = self.hw.now_ps();
        self.dmaengine_complete_until(now)?;
        let c = self.chan(chan)?;
        let active = c.active;
        let Some((&id, d)) = self
            .dmaengine
            .descs
            .iter()
            .find(|(_, d)| d.chan == chan && d.cookie == cookie && cookie > 0)
        else {
            // A cookie older than every live descriptor completed long ago.
            return Ok(if cookie > 0 && cookie <= c.last_cookie {
                (DMA_COMPLETE, 0)
            } else {
                (DMA_ERROR, 0)
            });
        };
        if d.done && !d.cyclic {
            return Ok((DMA_COMPLETE, 0));
        }
        // Residue: what is left of the descriptor (cyclic: of the buffer, from the
        // current position), counting the running transfer's progress.
        let seg = d.pos.0;
        let in_seg = match active {
            Some((a, job)) if a == id => self.job_done_bytes(job),
            _ => 0,
        };
        let left: u64 = d.segs[seg..].iter().map(|s| s.1).sum::<u64>() - in_seg;
        let status = if d.done {
            DMA_COMPLETE
        } else {
            DMA_IN_PROGRESS
        };
        Ok((status, left.min(d.total())))
    }

    /// `dma_release_channel`.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a bad channel.
    pub fn dma_release_channel(&mut self, chan: u64) -> Result<()> {
        let c = self.chan(chan)?;
        if c.active.is_some() || !c.issued.is_empty() {
            let dev = self.kernel.devices[c.dmac].name.clone();
            self.printk(
                &dev,
                format!("dma_release_channel: channel #{chan} still running; terminated"),
            );
            self.dmaengine_terminate_async(chan)?;
        }
        let c = &self.dmaengine.chans[&chan];
        if let Some((_, line)) = c.unsynchronized {
            let (dmac, name) = (c.dmac, c.name.clone());
            let dev = self.kernel.devices[dmac].name.clone();
            let ctx = self.ctx();
            self.check.report_plain(
                "dmaengine-unsynchronized",
                None,
                Some(&dev),
                None,
                None,
                ctx,
                format!("dma_release_channel of channel {name}, stopped with dmaengine_terminate_async at line {line} and never synchronized: its completion callback may still run after the channel is gone"),
                "call dmaengine_synchronize(chan) (or stop it with dmaengine_terminate_sync) before dma_release_channel".into(),
                vec![],
            );
        }
        let c = self.dmaengine.chans.get_mut(&chan).expect("live");
        c.released = true;
        self.dmaengine.descs.retain(|_, d| d.chan != chan);
        Ok(())
    }

    /// `dmaengine-unsynchronized`: `call` releases `[bus, bus+size)` of controller
    /// `dmac`, which a channel terminated with `dmaengine_terminate_async` and not
    /// yet synchronized still describes: its completion callback may run after the
    /// memory is gone (Documentation/driver-api/dmaengine/client.rst: "dmaengine_
    /// synchronize ... must be called ... before freeing resources accessed from
    /// within the completion callback").
    pub(crate) fn dmaengine_release_check(&mut self, dmac: usize, bus: u64, size: u64, call: &str) {
        if !self.dmaengine.in_use() {
            return;
        }
        let Some((chan, line)) = self.dmaengine_unsynchronized_user(dmac, bus, size) else {
            return;
        };
        let name = self.kernel.devices[dmac].name.clone();
        let ctx = self.ctx();
        self.check.report_plain(
            "dmaengine-unsynchronized",
            None,
            Some(&name),
            Some(bus),
            Some(size),
            ctx,
            format!(
                "{call} releases memory that DMA channel {chan} still describes; the channel was stopped with dmaengine_terminate_async at line {line} and never synchronized, so its completion callback may still run and use it [device address={bus:#x}] [size={size} bytes]"
            ),
            "call dmaengine_synchronize(chan) after dmaengine_terminate_async and before freeing anything the callback uses, or stop the channel with dmaengine_terminate_sync where the caller may sleep".into(),
            vec![],
        );
    }

    /// The channel whose descriptors use `[bus, bus+size)` of controller `dmac` and
    /// that was terminated without `dmaengine_synchronize`: (channel name, terminate
    /// line). The memory is being released while a callback may still run.
    pub fn dmaengine_unsynchronized_user(
        &self,
        dmac: usize,
        bus: u64,
        size: u64,
    ) -> Option<(String, u32)> {
        self.dmaengine.chans.iter().find_map(|(&id, c)| {
            let (_, line) = c.unsynchronized?;
            if c.dmac != dmac {
                return None;
            }
            let uses = self.dmaengine.descs.values().any(|d| {
                d.chan == id
                    && d.segs
                        .iter()
                        .any(|&(a, n)| a < bus.saturating_add(size) && bus < a.saturating_add(n))
            });
            uses.then(|| (c.name.clone(), line))
        })
    }
}
