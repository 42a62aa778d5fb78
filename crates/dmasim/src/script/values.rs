//! The script-visible object types: Buffer, Device, Job.

use crate::kernel::Buffer;

/// A buffer as scripts see it (`buf.va`, `buf.len`, `buf.kind`, `buf.phys`, `buf.dma`).
#[derive(Debug, Clone)]
pub struct BufferObj {
    /// Kernel buffer id.
    pub id: u64,
    /// CPU virtual address.
    pub va: u64,
    /// Length.
    pub len: u64,
    /// "kmalloc", "pages", "coherent".
    pub kind: &'static str,
    /// Physical address of the first byte.
    pub phys: u64,
    /// Bus address (coherent buffers).
    pub dma: Option<u64>,
}

impl BufferObj {
    /// A process's view: `len` bytes at user address `va`.
    pub fn user(va: u64, len: u64) -> BufferObj {
        BufferObj {
            id: 0,
            va,
            len,
            kind: "user",
            phys: 0,
            dma: None,
        }
    }

    /// The script view of a kernel buffer.
    pub fn of(b: &Buffer) -> BufferObj {
        BufferObj {
            id: b.id,
            va: b.va,
            len: b.len,
            kind: b.kind.name(),
            phys: b.phys,
            dma: b.dma,
        }
    }
}

/// A device handle.
#[derive(Debug, Clone)]
pub struct DeviceObj {
    /// Index in the kernel's device list.
    pub idx: usize,
    /// Name.
    pub name: String,
}

/// A DMA transfer in flight.
#[derive(Debug, Clone)]
pub struct JobObj {
    /// Job id.
    pub id: u64,
}

/// A scatterlist (`struct sg_table`) handle.
#[derive(Debug, Clone)]
pub struct SgObj {
    /// Table id in the kernel model.
    pub id: u64,
}

/// A process handle.
#[derive(Debug, Clone)]
pub struct ProcessObj {
    /// Process id.
    pub pid: u32,
    /// Name.
    pub name: String,
}

/// Pages taken with `get_user_pages` / `pin_user_pages`.
#[derive(Debug, Clone)]
pub struct PagesObj {
    /// Set id in the kernel model.
    pub id: u64,
    /// Number of pages.
    pub count: u64,
}
