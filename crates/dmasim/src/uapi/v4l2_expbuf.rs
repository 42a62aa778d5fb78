//! `VIDIOC_EXPBUF`: a videobuf2 MMAP buffer exported as a dma-buf
//! (`vb2_core_expbuf`, `vb2_dc_get_dmabuf` in `videobuf2-dma-contig.c`,
//! `vb2_dma_sg_get_dmabuf` in `videobuf2-dma-sg.c`, Linux v6.12), the way a camera
//! hands its frames to a display or an encoder with no copy.
//!
//! The two exporters differ from the heaps (`uapi::dmabuf`) in ways that matter:
//! - each attachment gets a copy of the buffer's table (`dma_get_sgtable` of the
//!   coherent memory: one entry without an IOMMU, the scattered pages behind one),
//!   mapped with `DMA_ATTR_SKIP_CPU_SYNC`, kept per direction, and unmapped only
//!   at detach (`unmap_dma_buf` does nothing);
//! - `begin_cpu_access` / `end_cpu_access` do **nothing** for dma-contig (its memory
//!   is coherent — for the exporting device) and sync only the exporter's own
//!   mapping for dma-sg. So a buffer a coherent camera exports is cacheable, and a
//!   non-coherent importer reads stale lines the CPU wrote through its mmap:
//!   `DMA_BUF_IOCTL_SYNC` cannot help, and the sanitizer says so;
//! - `mmap` keeps the buffer's attributes (`dma_mmap_attrs`: uncached for a
//!   non-coherent camera), the vmap is the buffer's own kernel mapping;
//! - the dma-buf holds a reference on the vb2 buffer: `REQBUFS(0)` while a dma-buf
//!   is alive leaves the memory to the dma-buf, freed at its release.
//!
//! Simplified: one `DmaBuf` per `VIDIOC_EXPBUF` call, as Linux; no `O_CLOEXEC` or
//! plane index (single-planar queues only).

use crate::kernel::dma::DmaDirection;
use crate::kernel::errno::EINVAL;
use crate::system::{Result, System};
use crate::uapi::dmabuf::{DmaBuf, Heap, Vb2Export};
use crate::uapi::v4l2::{Vb2Alloc, Vb2Memory};

impl System {
    /// `VIDIOC_EXPBUF` of buffer `index` of MMAP queue `q`: the new dma-buf's id,
    /// or -EINVAL (no such buffer, not an MMAP queue).
    ///
    /// # Errors
    /// [`crate::system::SimError::Invalid`] for an unknown queue.
    pub fn v4l2_expbuf(&mut self, q: u64, index: u64) -> Result<std::result::Result<u64, i64>> {
        self.step();
        let queue = self
            .kernel
            .v4l2
            .get(&q)
            .ok_or_else(|| crate::system::SimError::Invalid(format!("no V4L2 queue #{q}")))?;
        let Some(b) = queue.bufs.get(index as usize) else {
            return Ok(Err(-EINVAL));
        };
        if queue.memory != Vb2Memory::Mmap {
            return Ok(Err(-EINVAL));
        }
        let (dev, size, alloc, kbuf, sgt) = (queue.dev, queue.size, queue.alloc, b.buf, b.sgt);
        let pfns = self.buffer_frames(kbuf)?;
        let mut chunks: Vec<(u64, u64)> = Vec::new();
        for p in pfns
            .into_iter()
            .take((size / crate::config::PAGE_SIZE) as usize)
        {
            match chunks.last_mut() {
                Some((first, n)) if *first + *n == p => *n += 1,
                _ => chunks.push((p, 1)),
            }
        }
        let heap = match alloc {
            Vb2Alloc::Contig => Heap::Vb2Contig,
            Vb2Alloc::Sg => Heap::Vb2Sg,
        };
        let id = self.kernel.new_dmabuf_id();
        let name = self.kernel.devices[dev].name.clone();
        self.printk(
            &name,
            format!(
                "vb2: buffer {index} exported as dma-buf #{id} ({})",
                heap.name()
            ),
        );
        let vb2 = Vb2Export {
            dev,
            kbuf,
            sgt,
            size,
        };
        self.kernel
            .dmabufs
            .insert(id, DmaBuf::new(id, heap, size, chunks, Some(vb2)));
        Ok(Ok(id))
    }

    /// Whether a live dma-buf holds vb2 buffer `kbuf` (its memory outlives the queue).
    pub(crate) fn vb2_buffer_exported(&self, kbuf: u64) -> bool {
        self.kernel
            .dmabufs
            .values()
            .any(|d| d.vb2.is_some_and(|v| v.kbuf == kbuf))
    }

    /// An exported dma-buf was released (`vb2_dc_put` / `vb2_dma_sg_put` of its
    /// reference): the vb2 buffer's memory goes once neither a queue nor another
    /// dma-buf holds it.
    pub(crate) fn vb2_export_put(&mut self, b: &DmaBuf) {
        let Some(v) = b.vb2 else { return };
        let queued = self
            .kernel
            .v4l2
            .values()
            .any(|q| q.memory == Vb2Memory::Mmap && q.bufs.iter().any(|x| x.buf == v.kbuf));
        if queued || self.vb2_buffer_exported(v.kbuf) || !self.kernel.buffers.contains_key(&v.kbuf)
        {
            return;
        }
        // The queue freed its buffers while this dma-buf held one: it goes now.
        let r = match v.sgt {
            Some(t) => self
                .dma_unmap_sg(v.dev, t, DmaDirection::FromDevice)
                .map(|()| {
                    self.kfree(v.kbuf, "vfree", crate::kernel::BufKind::Vmalloc);
                }),
            None => self.dma_free_coherent(v.dev, v.size, v.kbuf),
        };
        let name = self.kernel.devices[v.dev].name.clone();
        match r {
            Ok(()) => self.printk(
                &name,
                format!("vb2: buffer freed with its last dma-buf #{}", b.id),
            ),
            Err(e) => self.printk(
                &name,
                format!("vb2: buffer of dma-buf #{} not freed: {e}", b.id),
            ),
        }
    }
}
