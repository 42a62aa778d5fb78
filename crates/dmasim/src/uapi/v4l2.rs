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
//! `V4L2_MEMORY_USERPTR` queues take the process's own memory at QBUF
//! (`__prepare_userptr`): the pages are pinned long-term (`vb2_create_framevec`,
//! FOLL_LONGTERM moves them out of CMA), put in a scatterlist and mapped with
//! `DMA_ATTR_SKIP_CPU_SYNC`; dma-contig then demands one contiguous DMA range
//! (`vb2_dc_get_contiguous_size`), which scattered `malloc` pages give only through
//! an IOMMU — without one QBUF fails with −EFAULT. The buffers are synced for the
//! device at QBUF and for the CPU when done; a new pointer for an index releases
//! the old pages (unmap with SKIP_CPU_SYNC, unpin).
//!
//! `V4L2_MEMORY_DMABUF` queues import dma-bufs (`uapi::dmabuf`) at QBUF
//! (`__prepare_dmabuf`): attach and map for `DMA_FROM_DEVICE` when the fd at an
//! index changes, keep the mapping while the same fd comes back, and leave every
//! cache sync to the exporter (`init_buffer_cache_hints` skips `prepare` and
//! `finish`): user space must bracket its reads with `DMA_BUF_IOCTL_SYNC`.
//!
//! Simplifications: single-planar capture queues only; `min_queued_buffers` = 2
//! (a typical CSI receiver), so REQBUFS needs at least 3 (`VIDIOC_EXPBUF` is
//! `uapi::v4l2_expbuf`); no
//! O_NONBLOCK distinction (DQBUF with nothing done returns −EAGAIN); the device
//! fills the oldest active buffer when the script calls `v4l2_capture`.

use std::collections::VecDeque;

use crate::config::PAGE_SIZE;
use crate::kernel::dma::DmaDirection;
use crate::kernel::errno::{EBUSY, EFAULT, EINVAL, EIO, ENOMEM};
use crate::system::{Result, SimError, System};

/// `VB2_MAX_FRAME`.
pub const VB2_MAX_FRAME: u64 = 32;
/// `EAGAIN`.
pub const EAGAIN: i64 = 11;
/// What vb2's `prepare` (at QBUF) and `finish` (when the buffer is done) call on a
/// scatter-gather buffer (`vb2_dma_sg_prepare`, `vb2_dma_sg_finish`).
const VB2_PREPARE: &str = "vb2 prepare: dma_sync_sgtable_for_device";
const VB2_FINISH: &str = "vb2 finish: dma_sync_sgtable_for_cpu";
/// Buffers the driver needs queued before streaming starts.
const MIN_QUEUED: usize = 2;

/// Where a queue's buffer memory comes from (`enum v4l2_memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vb2Memory {
    /// `V4L2_MEMORY_MMAP`: allocated by the kernel at REQBUFS.
    Mmap,
    /// `V4L2_MEMORY_USERPTR`: the process's memory, given at each QBUF.
    UserPtr,
    /// `V4L2_MEMORY_DMABUF`: a dma-buf fd given at each QBUF, imported by vb2.
    DmaBuf,
}

/// A dma-buf vb2 imported for a buffer (`attach_dmabuf` + `map_dmabuf`).
#[derive(Debug, Clone, Copy)]
pub struct Imported {
    /// The dma-buf.
    pub dmabuf: u64,
    /// vb2's attachment of the queue's device.
    pub att: u64,
}

/// The user memory behind a USERPTR buffer (`struct frame_vector` and its mapping).
#[derive(Debug, Clone)]
pub struct UserPtr {
    /// The process.
    pub pid: u32,
    /// `m.userptr`.
    pub va: u64,
    /// `length`.
    pub len: u64,
    /// The pinned-pages set.
    pub pins: u64,
    /// The mapped scatterlist.
    pub sgt: u64,
}

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
    /// USERPTR: the user memory acquired at the last QBUF.
    pub user: Option<UserPtr>,
    /// DMABUF: the dma-buf imported at the last QBUF, attached and mapped.
    pub imported: Option<Imported>,
}

/// A capture queue.
#[derive(Debug, Clone)]
pub struct Vb2Queue {
    /// The device.
    pub dev: usize,
    /// Allocator.
    pub alloc: Vb2Alloc,
    /// Memory type of the last REQBUFS.
    pub memory: Vb2Memory,
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
                memory: Vb2Memory::Mmap,
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
                        user: None,
                        imported: None,
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
                        user: None,
                        imported: None,
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
        qm.memory = Vb2Memory::Mmap;
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
            if queue.memory == Vb2Memory::UserPtr {
                if let Some(u) = &b.user {
                    self.vb2_put_userptr(queue.dev, u)?;
                }
                continue;
            }
            if queue.memory == Vb2Memory::DmaBuf {
                if let (Some(im), Some(t)) = (b.imported, b.sgt) {
                    self.vb2_put_dmabuf(im, t)?;
                }
                continue;
            }
            if self.vb2_buffer_exported(b.buf) {
                // A dma-buf holds a reference: the memory goes at its release
                // (`vb2_dc_put`), not here.
                continue;
            }
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

    /// `VIDIOC_QUERYBUF`'s `length`: `vb->planes[0].length`
    /// (videobuf2-v4l2.c: __fill_v4l2_buffer), the format's size from REQBUFS, or
    /// for USERPTR and DMABUF the length of the memory acquired at the last QBUF
    /// (videobuf2-core.c: __prepare_userptr, __prepare_dmabuf); −EINVAL for an index
    /// not allocated.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue.
    pub fn v4l2_querybuf(&mut self, q: u64, index: u64) -> Result<i64> {
        let queue = self.queue_mut(q)?;
        let Some(b) = queue.bufs.get(index as usize) else {
            return Ok(-EINVAL);
        };
        let size = queue.size;
        let len = match (&b.user, &b.imported) {
            (Some(u), _) => u.len,
            (None, Some(i)) => {
                let dbuf = i.dmabuf;
                self.kernel.dmabufs.get(&dbuf).map_or(size, |d| d.size)
            }
            (None, None) => size,
        };
        Ok(len as i64)
    }

    /// `VIDIOC_QUERYBUF`'s `m.offset` for an MMAP buffer: the cookie `mmap()` takes,
    /// `index << (PAGE_SHIFT + 3)` for plane 0 (videobuf2-core.c: __setup_offsets);
    /// −EINVAL for an index not allocated or a queue not of MMAP buffers (which
    /// have no offset).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue.
    pub fn v4l2_querybuf_offset(&mut self, q: u64, index: u64) -> Result<i64> {
        let queue = self.queue_mut(q)?;
        if index as usize >= queue.bufs.len() || queue.memory != Vb2Memory::Mmap {
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
        if queue.memory != Vb2Memory::Mmap {
            return Ok(-EINVAL);
        }
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
        // vb2_dma_sg_mmap inserts pages (vm_map_pages); vb2_dc_mmap remaps pfns
        // (dma_mmap_attrs → remap_pfn_range, VM_PFNMAP).
        let va = if matches!(queue.alloc, Vb2Alloc::Contig) {
            self.map_frames(pid, &pfns, memtype)?
        } else {
            self.map_inserted_pages(pid, &pfns, memtype)?
        };
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
            Some(b) if b.state == Vb2State::Dequeued && queue.memory == Vb2Memory::Mmap => {}
            _ => return Ok(-EINVAL),
        }
        if let Some(t) = queue.bufs[i].sgt {
            self.dma_sync_sg(queue.dev, t, DmaDirection::FromDevice, false, VB2_PREPARE)?;
        }
        self.vb2_enqueue(q, i)?;
        Ok(0)
    }

    /// Hands prepared buffer `i` to vb2, and to the driver once streaming started.
    fn vb2_enqueue(&mut self, q: u64, i: usize) -> Result<()> {
        let qm = self.queue_mut(q)?;
        qm.bufs[i].state = Vb2State::Queued;
        if qm.started {
            qm.bufs[i].state = Vb2State::Active;
            qm.active.push_back(i);
        } else if qm.streaming {
            self.v4l2_try_start(q)?;
        }
        Ok(())
    }

    /// `VIDIOC_REQBUFS` with `V4L2_MEMORY_USERPTR`: frees the old buffers and makes
    /// `count` (clamped to 3..=32) empty buffers whose memory the process gives at
    /// QBUF, each at least `size` bytes. Returns the count, −EBUSY while
    /// streaming, −EINVAL for a zero or hostile size.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue.
    pub fn v4l2_reqbufs_userptr(&mut self, q: u64, count: u64, size: u64) -> Result<i64> {
        self.v4l2_reqbufs_empty(q, count, size, Vb2Memory::UserPtr)
    }

    /// `VIDIOC_REQBUFS` with `V4L2_MEMORY_DMABUF`: as
    /// [`System::v4l2_reqbufs_userptr`], for buffers whose memory is a dma-buf given
    /// at QBUF.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue.
    pub fn v4l2_reqbufs_dmabuf(&mut self, q: u64, count: u64, size: u64) -> Result<i64> {
        self.v4l2_reqbufs_empty(q, count, size, Vb2Memory::DmaBuf)
    }

    /// REQBUFS for memory the process brings at QBUF: empty buffers.
    fn v4l2_reqbufs_empty(
        &mut self,
        q: u64,
        count: u64,
        size: u64,
        memory: Vb2Memory,
    ) -> Result<i64> {
        let queue = self.queue_mut(q)?.clone();
        if queue.streaming {
            return Ok(-EBUSY);
        }
        self.v4l2_free_buffers(q)?;
        let qm = self.queue_mut(q)?;
        qm.memory = memory;
        if count == 0 {
            return Ok(0);
        }
        if size == 0 || size > 256 << 20 {
            return Ok(-EINVAL);
        }
        let want = count.clamp(MIN_QUEUED as u64 + 1, VB2_MAX_FRAME);
        qm.size = size;
        qm.bufs = (0..want)
            .map(|_| Vb2Buffer {
                buf: 0,
                sgt: None,
                dma: 0,
                state: Vb2State::Dequeued,
                bytesused: 0,
                user: None,
                imported: None,
            })
            .collect();
        Ok(want as i64)
    }

    /// `VIDIOC_QBUF` with `V4L2_MEMORY_USERPTR`: buffer `index` is the process's
    /// `[va, va+len)`. The same pointer and length as last time reuse the pinned,
    /// mapped pages; another releases them and acquires the new ones
    /// (`vb2_dc_get_userptr` / `vb2_dma_sg_get_userptr`). Then the buffer is synced
    /// for the device (`prepare`) and queued. Returns 0; −EINVAL for a bad index, a
    /// buffer not dequeued, a length below the format's size or (dma-contig only)
    /// an address or length not aligned to `dma_get_cache_alignment()`; −EFAULT
    /// for memory the process has not mapped, or when dma-contig gets no single
    /// contiguous DMA range; −ENOMEM when a page cannot leave CMA; −EIO when the
    /// scatterlist cannot be mapped.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue or process.
    pub fn v4l2_qbuf_userptr(
        &mut self,
        q: u64,
        index: u64,
        pid: u32,
        va: u64,
        len: u64,
    ) -> Result<i64> {
        let queue = self.queue_mut(q)?.clone();
        let i = index as usize;
        if queue.memory != Vb2Memory::UserPtr {
            return Ok(-EINVAL);
        }
        match queue.bufs.get(i) {
            Some(b) if b.state == Vb2State::Dequeued => {}
            _ => return Ok(-EINVAL),
        }
        let name = self.kernel.devices[queue.dev].name.clone();
        if len < queue.size {
            self.printk(
                &name,
                format!(
                    "vb2: provided buffer size {len} is less than setup size {} for plane 0",
                    queue.size
                ),
            );
            return Ok(-EINVAL);
        }
        let same = queue.bufs[i]
            .user
            .as_ref()
            .is_some_and(|u| u.pid == pid && u.va == va && u.len == len);
        if !same {
            let b = &mut self.queue_mut(q)?.bufs[i];
            b.sgt = None;
            if let Some(u) = b.user.take() {
                self.vb2_put_userptr(queue.dev, &u)?;
            }
            match self.vb2_get_userptr(&queue, pid, va, len)? {
                Ok((u, dma)) => {
                    let b = &mut self.queue_mut(q)?.bufs[i];
                    b.dma = dma;
                    b.sgt = Some(u.sgt);
                    b.user = Some(u);
                }
                Err(e) => {
                    self.printk(
                        &name,
                        "vb2: failed acquiring userspace memory for plane 0".into(),
                    );
                    return Ok(e);
                }
            }
        }
        if let Some(t) = self.queue_mut(q)?.bufs[i].sgt {
            // vb2_dc_prepare / vb2_dma_sg_prepare: user memory is cached.
            self.dma_sync_sg(queue.dev, t, DmaDirection::FromDevice, false, VB2_PREPARE)?;
        }
        self.vb2_enqueue(q, i)?;
        Ok(0)
    }

    /// `get_userptr`: pin, build the table, map it; dma-contig checks that the
    /// mapping is one contiguous DMA range. Returns the acquired memory and its
    /// first DMA address, or the errno (nothing stays pinned or mapped).
    fn vb2_get_userptr(
        &mut self,
        queue: &Vb2Queue,
        pid: u32,
        va: u64,
        len: u64,
    ) -> Result<std::result::Result<(UserPtr, u64), i64>> {
        let dev = queue.dev;
        let name = self.kernel.devices[dev].name.clone();
        // videobuf2-dma-contig.c: vb2_dc_get_userptr, "Only cache aligned DMA
        // transfers are reliable": IS_ALIGNED(vaddr | size, dma_get_cache_alignment()),
        // 64 on arm64 Cortex-A53/A72 and 1 (no check) on x86. videobuf2-dma-sg.c:
        // vb2_dma_sg_get_userptr has no such check.
        let align = self.cfg.dma_get_cache_alignment().max(1);
        if queue.alloc == Vb2Alloc::Contig && (va | len) % align != 0 {
            self.printk(
                &name,
                format!("vb2-dc: user data must be aligned to {align} bytes"),
            );
            return Ok(Err(-EINVAL));
        }
        if !self.user_range_mapped(pid, va, len)? {
            return Ok(Err(-EFAULT));
        }
        // get_vaddr_frames: pin_user_pages_fast(FOLL_LONGTERM | FOLL_WRITE).
        let pins = self.gup(pid, va, len, true, true)?;
        if pins == crate::uapi::process::GUP_ENOMEM {
            return Ok(Err(-ENOMEM));
        }
        if pins == crate::uapi::process::GUP_EFAULT {
            return Ok(Err(-EFAULT));
        }
        let pfns = self.kernel.pins[&pins].pfns.clone();
        let sgt = self.sg_from_pfns_range(&pfns, va % PAGE_SIZE, len, u64::from(u32::MAX))?;
        let u = UserPtr {
            pid,
            va,
            len,
            pins,
            sgt,
        };
        // DMA_ATTR_SKIP_CPU_SYNC: prepare() syncs.
        if self.dma_map_sg(dev, sgt, DmaDirection::FromDevice)? == 0 {
            self.printk(&name, "vb2-dc: failed to map scatterlist".into());
            self.kernel.sg_tables.remove(&sgt);
            self.gup_release(pins, true)?;
            return Ok(Err(-EIO));
        }
        let t = self.sg(sgt)?;
        let dma = t.entries[0].dma_address;
        if queue.alloc == Vb2Alloc::Contig {
            let contig = self.dma_contiguous_size(sgt)?;
            if contig < len {
                self.printk(
                    &name,
                    format!("vb2-dc: contiguous mapping is too small {contig}/{len}"),
                );
                self.vb2_put_userptr(dev, &u)?;
                return Ok(Err(-EFAULT));
            }
        }
        Ok(Ok((u, dma)))
    }

    /// `put_userptr`: unmap with `DMA_ATTR_SKIP_CPU_SYNC`, drop the table, unpin.
    fn vb2_put_userptr(&mut self, dev: usize, u: &UserPtr) -> Result<()> {
        self.dma_unmap_sg_attrs(dev, u.sgt, DmaDirection::FromDevice, true)?;
        self.kernel.sg_tables.remove(&u.sgt);
        self.gup_release(u.pins, true)
    }

    /// `VIDIOC_QBUF` with `V4L2_MEMORY_DMABUF` (`__prepare_dmabuf`): buffer `index`
    /// is dma-buf `dbuf`. The same dma-buf as last time stays attached and mapped;
    /// another one replaces it: vb2 attaches the queue's device and maps the
    /// attachment for `DMA_FROM_DEVICE` now, so a bad buffer fails at QBUF, and
    /// dma-contig demands one contiguous DMA range (`vb2_dc_map_dmabuf`). No cache
    /// maintenance: that is the exporter's, at `DMA_BUF_IOCTL_SYNC`. Returns 0;
    /// −EINVAL for a bad index, a buffer not dequeued, a closed fd, a dma-buf
    /// smaller than the format or one the exporter cannot map; −EFAULT when
    /// dma-contig gets more than one DMA segment.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown queue or a released dma-buf.
    pub fn v4l2_qbuf_dmabuf(&mut self, q: u64, index: u64, dbuf: u64) -> Result<i64> {
        let queue = self.queue_mut(q)?.clone();
        let i = index as usize;
        if queue.memory != Vb2Memory::DmaBuf {
            return Ok(-EINVAL);
        }
        match queue.bufs.get(i) {
            Some(b) if b.state == Vb2State::Dequeued => {}
            _ => return Ok(-EINVAL),
        }
        let name = self.kernel.devices[queue.dev].name.clone();
        let Some(d) = self.kernel.dmabufs.get(&dbuf).filter(|d| d.fd_open) else {
            self.printk(&name, "vb2: invalid dmabuf fd for plane 0".into());
            return Ok(-EINVAL);
        };
        if d.size < queue.size {
            let msg = format!(
                "vb2: invalid dmabuf length {} for plane 0, minimum length {}",
                d.size, queue.size
            );
            self.printk(&name, msg);
            return Ok(-EINVAL);
        }
        let same = queue.bufs[i].imported.is_some_and(|im| im.dmabuf == dbuf);
        if !same {
            let b = &mut self.queue_mut(q)?.bufs[i];
            let (old, t) = (b.imported.take(), b.sgt.take());
            if let (Some(im), Some(t)) = (old, t) {
                self.vb2_put_dmabuf(im, t)?;
            }
            let att = self.dma_buf_attach(dbuf, queue.dev)?;
            let im = Imported { dmabuf: dbuf, att };
            let t = match self.dma_buf_map_attachment(att, DmaDirection::FromDevice)? {
                Ok(t) => t,
                Err(_) => {
                    self.printk(&name, "vb2: Error getting dmabuf scatterlist".into());
                    self.dma_buf_detach(dbuf, att)?;
                    return Ok(-EINVAL);
                }
            };
            let dma = self.sg(t)?.entries[0].dma_address;
            if queue.alloc == Vb2Alloc::Contig {
                let contig = self.dma_contiguous_size(t)?;
                if contig < queue.size {
                    self.printk(
                        &name,
                        format!(
                            "vb2-dc: contiguous chunk is too small {contig}/{}",
                            queue.size
                        ),
                    );
                    self.vb2_put_dmabuf(im, t)?;
                    return Ok(-EFAULT);
                }
            }
            let b = &mut self.queue_mut(q)?.bufs[i];
            b.imported = Some(im);
            b.sgt = Some(t);
            b.dma = dma;
        }
        self.vb2_enqueue(q, i)?;
        Ok(0)
    }

    /// `vb2_dc_get_contiguous_size`: the bytes of the DMA segments that follow
    /// each other from the first.
    fn dma_contiguous_size(&self, t: u64) -> Result<u64> {
        let t = self.sg(t)?;
        let mut expected = t.entries.first().map_or(0, |e| e.dma_address);
        let mut contig = 0;
        for e in t.entries.iter().take(t.mapped) {
            if e.dma_address != expected {
                break;
            }
            expected += e.dma_len;
            contig += e.dma_len;
        }
        Ok(contig)
    }

    /// `__vb2_plane_dmabuf_put`: unmap the attachment and detach.
    fn vb2_put_dmabuf(&mut self, im: Imported, t: u64) -> Result<()> {
        self.dma_buf_unmap_attachment(im.att, t, DmaDirection::FromDevice)?;
        self.dma_buf_detach(im.dmabuf, im.att)
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
        match (b.sgt, queue.alloc) {
            // DMABUF: the exporter syncs when user space asks (DMA_BUF_IOCTL_SYNC);
            // vb2 skips `finish` (init_buffer_cache_hints).
            (Some(t), Vb2Alloc::Sg) if queue.memory == Vb2Memory::DmaBuf => {
                self.dev_sg(queue.dev, t, len, Some(data))?;
            }
            (Some(_), Vb2Alloc::Contig) if queue.memory == Vb2Memory::DmaBuf => {
                let j = self.dev_start(queue.dev, b.dma, len, Some(data))?;
                self.wait(j)?;
            }
            (Some(t), Vb2Alloc::Sg) => {
                self.dev_sg(queue.dev, t, len, Some(data))?;
                self.dma_sync_sg(queue.dev, t, DmaDirection::FromDevice, true, VB2_FINISH)?;
            }
            (Some(t), Vb2Alloc::Contig) => {
                // A USERPTR buffer on dma-contig: one contiguous DMA range, cached
                // user memory synced for the CPU at `finish`.
                let j = self.dev_start(queue.dev, b.dma, len, Some(data))?;
                self.wait(j)?;
                self.dma_sync_sg(queue.dev, t, DmaDirection::FromDevice, true, VB2_FINISH)?;
            }
            (None, _) => {
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
