//! User space: processes, their address spaces and what user space can ask of the
//! kernel (mmap, mlock, pagemap, pinning, dma-buf heaps).

pub mod chardev;
pub mod dmabuf;
pub mod mmap;
pub mod pmd;
pub mod process;
pub mod v4l2;
pub mod v4l2_expbuf;
pub mod vfio;
