//! V4L2 streaming capture on videobuf2 with `V4L2_MEMORY_MMAP`
//! (`drivers/media/common/videobuf2/videobuf2-core.c`, `-v4l2.c`, `-dma-contig.c`,
//! `-dma-sg.c`, Linux v6.12): REQBUFS allocates the buffers in the kernel, the
//! process maps them (zero copy), QBUF hands a buffer to the driver, the device
//! fills it, DQBUF gives it back — with the buffer states and the errno values vb2
//! uses for calls out of order, and the cache maintenance vb2 does for the driver.
//!
//! `dma-contig` buffers are `dma_alloc_coherent` memory: one contiguous DMA range,
//! from CMA without an IOMMU (so CMA's size bounds REQBUFS) or IOVA-contiguous
//! through one. `dma-sg` buffers are scattered pages mapped with `dma_map_sg`
//! (`DMA_ATTR_SKIP_CPU_SYNC`), synced for the device at QBUF (`prepare`) and for the
//! CPU when the buffer is done (`finish`).
//!
//! Simplifications: single-planar capture queues only; `min_queued_buffers` = 2
//! (a typical CSI receiver), so REQBUFS needs at least 3; no USERPTR or DMABUF; no
//! O_NONBLOCK distinction (DQBUF with nothing done returns −EAGAIN); the device
//! fills the oldest active buffer when the script calls `v4l2_capture`.

use std::collections::VecDeque;

use crate::config::PAGE_SIZE;
use crate::kernel::dma::DmaDirection;
use crate::kernel::errno::{EBUSY, EINVAL, EIO, ENOMEM};
use crate::system::{Result, SimError, System};

/// `VB2_MAX_FRAME`.
pub const VB2_MAX_FRAME: u64 = 32;
/// `EAGAIN`.
pub const EAGAIN: i64 = 11;
/// Buffers the driver needs queued before streaming starts.
const MIN_QUEUED: usize = 2;

/// How the queue allocates its buffers (`vb2_mem_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vb2Alloc {
    /// `vb2_dma_contig_memops`.
    Contig,
    /// `vb2_dma_sg_memops`.
    Sg,
}

/// `enum vb2_buffer_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vb2State {
    /// Owned by user space.
    Dequeued,
    /// In vb2, not yet given to the driver.
    Queued,
    /// With the driver; DMA may run.
    Active,
    /// Filled, waiting for DQBUF.
    Done,
}

/// One buffer.
#[derive(Debug, Clone)]
pub struct Vb2Buffer {
    /// The kernel buffer (coherent or vmalloc'd pages).
    pub buf: u64,
    /// dma-sg: the scatterlist.
    pub sgt: Option<u64>,
    /// The device's address of the first byte.
    pub dma: u64,
    /// State.
    pub state: Vb2State,
    /// Bytes the device wrote into it last.
    pub bytesused: u64,
}

/// A capture queue.
#[derive(Debug, Clone)]
pub struct Vb2Queue {
    /// The device.
    pub dev: usize,
    /// Allocator.
    pub alloc: Vb2Alloc,
    /// Buffer size.
    pub size: u64,
    /// Buffers by index.
    pub bufs: Vec<Vb2Buffer>,
    /// STREAMON called.
    pub streaming: bool,
    /// `start_streaming` ran.
    pub started: bool,
    /// Active buffers in the order the driver got them.
    active: VecDeque<usize>,
    /// Done buffers in completion order.
    done: VecDeque<usize>,
}

impl System {
    fn queue_mut(&mut self, q: u64) -> Result<&mut Vb2Queue> {
        self.kernel
            .v4l2
            .get_mut(&q)
            .ok_or_else(|| SimError::Invalid(format!("no V4L2 queue #{q}")))
    }

    /// Opens the video device: a capture queue using `alloc`. Returns the queue id.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown device.
    pub fn v4l2_open(&mut self, dev: usize, alloc: Vb2Alloc) -> Result<u64> {
        if self.kernel.devices.get(dev).is_none() {
            return Err(SimError::Invalid(format!("v4l2_open: no device #{dev}")));
        }
        let id = self.kernel.next_v4l2;
        self.kernel.next_v4l2 += 1;
        self.kernel.v4l2.insert(
            id,
            Vb2Queue {
                dev,
                alloc,
                size: 0,
                bufs: Vec::new(),
                streaming: false,
                started: false,
                active: VecDeque::new(),
                done: VecDeque::new(),
            },
        );
        Ok(id)
    }

    /// `VIDIOC_REQBUFS`: frees the old buffers; with `count` > 0 allocates up to
    /// `count` (clamped to 3..=32) buffers of `size` bytes, stopping at the first
    /// allocation that fails. Returns the count allocated, −EBUSY while streaming,
    /// −ENOMEM when fewer than the 3 the driver needs could be allocated.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue or a hostile size; the memory cap.
    pub fn v4l2_reqbufs(&mut self, q: u64, count: u64, size: u64) -> Result<i64> {
        let queue = self.queue_mut(q)?.clone();
        if queue.streaming {
            return Ok(-EBUSY);
        }
        self.v4l2_free_buffers(q)?;
        if count == 0 {
            return Ok(0);
        }
        if size == 0 || size > 256 << 20 {
            return Ok(-EINVAL);
        }
        let want = count.clamp(MIN_QUEUED as u64 + 1, VB2_MAX_FRAME);
        let size = size.next_multiple_of(PAGE_SIZE);
        let mut bufs = Vec::new();
        for _ in 0..want {
            let b = match queue.alloc {
                Vb2Alloc::Contig => match self.dma_alloc_coherent(queue.dev, size)? {
                    Some(id) => Vb2Buffer {
                        buf: id,
                        sgt: None,
                        dma: self.kernel.buffers[&id].dma.unwrap_or(0),
                        state: Vb2State::Dequeued,
                        bytesused: 0,
                    },
                    None => break,
                },
                Vb2Alloc::Sg => {
                    let Some(id) = self.vmalloc(size)? else { break };
                    let va = self.kernel.buffers[&id].va;
                    let t =
                        self.sg_from_range(va, size, self.kernel.devices[queue.dev].max_segment)?;
                    if self.dma_map_sg(queue.dev, t, DmaDirection::FromDevice)? == 0 {
                        self.kfree(id, "vfree", crate::kernel::BufKind::Vmalloc);
                        break;
                    }
                    let dma = self.sg(t)?.entries[0].dma_address;
                    Vb2Buffer {
                        buf: id,
                        sgt: Some(t),
                        dma,
                        state: Vb2State::Dequeued,
                        bytesused: 0,
                    }
                }
            };
            bufs.push(b);
        }
        let got = bufs.len() as u64;
        let name = self.kernel.devices[queue.dev].name.clone();
        let qm = self.queue_mut(q)?;
        qm.bufs = bufs;
        qm.size = size;
        if got < want {
            self.printk(
                &name,
                format!(
                    "vb2: REQBUFS: asked for {count} buffers of {size} bytes, could allocate {got}"
                ),
            );
        }
        if got < MIN_QUEUED as u64 + 1 {
            self.v4l2_free_buffers(q)?;
            return Ok(-ENOMEM);
        }
        Ok(got as i64)
    }

    fn v4l2_free_buffers(&mut self, q: u64) -> Result<()> {
        let queue = self.queue_mut(q)?.clone();
        for b in &queue.bufs {
            match b.sgt {
                Some(t) => {
                    self.dma_unmap_sg(queue.dev, t, DmaDirection::FromDevice)?;
                    self.kfree(b.buf, "vfree", crate::kernel::BufKind::Vmalloc);
                }
                None => {
                    self.dma_free_coherent(queue.dev, queue.size, b.buf)?;
                }
            }
        }
        let qm = self.queue_mut(q)?;
        qm.bufs.clear();
        qm.active.clear();
        qm.done.clear();
        qm.started = false;
        Ok(())
    }

    /// `VIDIOC_QUERYBUF`: the `m.offset` cookie of buffer `index` for mmap, or
    /// −EINVAL for an index not allocated.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue.
    pub fn v4l2_querybuf(&mut self, q: u64, index: u64) -> Result<i64> {
        let queue = self.queue_mut(q)?;
        if index as usize >= queue.bufs.len() {
            return Ok(-EINVAL);
        }
        Ok((index << (crate::config::PAGE_SHIFT + 3)) as i64)
    }

    /// `mmap()` of buffer `index` into process `pid`: the same frames, mapped shared
    /// (zero copy). Returns the user address, or −EINVAL.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue or process.
    pub fn v4l2_mmap(&mut self, q: u64, pid: u32, index: u64) -> Result<i64> {
        let queue = self.queue_mut(q)?.clone();
        let Some(b) = queue.bufs.get(index as usize) else {
            return Ok(-EINVAL);
        };
        let kb = self.kernel.buffers[&b.buf].clone();
        let mut pfns = Vec::new();
        let mut off = 0;
        while off < queue.size {
            let pa = self
                .hw
                .mmu
                .segments(0, kb.va + off, 1)
                .map_err(SimError::PagingRequest)?[0]
                .pa;
            pfns.push(pa >> crate::config::PAGE_SHIFT);
            off += PAGE_SIZE;
        }
        let memtype =
            if matches!(queue.alloc, Vb2Alloc::Contig) && !self.dev_is_dma_coherent(queue.dev) {
                crate::hw::mmu::MemType::NormalNc
            } else {
                crate::hw::mmu::MemType::Normal
            };
        let va = self.map_frames(pid, &pfns, memtype)?;
        Ok(va as i64)
    }

    /// `VIDIOC_QBUF`: a dequeued buffer goes to vb2 (and to the driver once
    /// streaming started); dma-sg buffers are synced for the device (`prepare`).
    /// 0, −EINVAL (bad index or a buffer not dequeued), −EIO never here.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue.
    pub fn v4l2_qbuf(&mut self, q: u64, index: u64) -> Result<i64> {
        let queue = self.queue_mut(q)?.clone();
        let i = index as usize;
        match queue.bufs.get(i) {
            Some(b) if b.state == Vb2State::Dequeued => {}
            _ => return Ok(-EINVAL),
        }
        if let Some(t) = queue.bufs[i].sgt {
            self.dma_sync_sg(queue.dev, t, DmaDirection::FromDevice, false)?;
        }
        let qm = self.queue_mut(q)?;
        qm.bufs[i].state = Vb2State::Queued;
        if qm.started {
            qm.bufs[i].state = Vb2State::Active;
            qm.active.push_back(i);
        } else if qm.streaming {
            self.v4l2_try_start(q)?;
        }
        Ok(0)
    }

    fn v4l2_try_start(&mut self, q: u64) -> Result<()> {
        let qm = self.queue_mut(q)?;
        let queued: Vec<usize> = (0..qm.bufs.len())
            .filter(|&i| qm.bufs[i].state == Vb2State::Queued)
            .collect();
        if qm.streaming && !qm.started && queued.len() >= MIN_QUEUED {
            qm.started = true;
            for i in queued {
                qm.bufs[i].state = Vb2State::Active;
                qm.active.push_back(i);
            }
        }
        Ok(())
    }

    /// `VIDIOC_STREAMON`: 0 (also when already streaming), −EINVAL without buffers.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue.
    pub fn v4l2_streamon(&mut self, q: u64) -> Result<i64> {
        let qm = self.queue_mut(q)?;
        if qm.streaming {
            return Ok(0);
        }
        if qm.bufs.len() < MIN_QUEUED {
            return Ok(-EINVAL);
        }
        qm.streaming = true;
        self.v4l2_try_start(q)?;
        Ok(0)
    }

    /// The device fills the oldest active buffer with `data` and the driver calls
    /// `vb2_buffer_done(DONE)` (dma-sg buffers are synced for the CPU: `finish`).
    /// Returns the buffer index, or −EIO when no buffer is active (the frame is
    /// dropped, as a real receiver would).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue or oversized data.
    pub fn v4l2_capture(&mut self, q: u64, data: Vec<u8>) -> Result<i64> {
        let queue = self.queue_mut(q)?.clone();
        if data.len() as u64 > queue.size {
            return Err(SimError::Invalid(
                "v4l2_capture: the frame is larger than the buffers".into(),
            ));
        }
        let Some(&i) = queue.active.front() else {
            return Ok(-EIO);
        };
        let b = queue.bufs[i].clone();
        let len = data.len() as u64;
        match b.sgt {
            Some(t) => {
                self.dev_sg(queue.dev, t, len, Some(data))?;
                self.dma_sync_sg(queue.dev, t, DmaDirection::FromDevice, true)?;
            }
            None => {
                let j = self.dev_start(queue.dev, b.dma, len, Some(data))?;
                self.wait(j)?;
            }
        }
        let qm = self.queue_mut(q)?;
        qm.active.pop_front();
        qm.bufs[i].state = Vb2State::Done;
        qm.bufs[i].bytesused = len;
        qm.done.push_back(i);
        Ok(i as i64)
    }

    /// `VIDIOC_DQBUF`: the oldest done buffer's index, −EINVAL when not streaming,
    /// −EAGAIN when none is done.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue.
    pub fn v4l2_dqbuf(&mut self, q: u64) -> Result<i64> {
        let qm = self.queue_mut(q)?;
        if !qm.streaming {
            return Ok(-EINVAL);
        }
        let Some(i) = qm.done.pop_front() else {
            return Ok(-EAGAIN);
        };
        qm.bufs[i].state = Vb2State::Dequeued;
        Ok(i as i64)
    }

    /// `VIDIOC_STREAMOFF`: stops streaming; every buffer returns to user space
    /// (done but not dequeued frames are lost).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue.
    pub fn v4l2_streamoff(&mut self, q: u64) -> Result<i64> {
        let qm = self.queue_mut(q)?;
        qm.streaming = false;
        qm.started = false;
        qm.active.clear();
        qm.done.clear();
        for b in &mut qm.bufs {
            b.state = Vb2State::Dequeued;
        }
        Ok(0)
    }
}
