//! DRAM: sparse 4 KiB frames holding real bytes.
//!
//! Frames live in a two-level table (chunks of 512 frames = 2 MiB) and are allocated
//! on first write; a frame never written reads as zeros. A cap on the frames a run may
//! touch bounds host memory: past it, writes are dropped and [`Dram::cap_exceeded`]
//! turns true, which the run turns into a clear error (exit 2).
//!
//! Each chunk also holds one "watched" bit per frame: the sanitizer sets it on frames
//! that hold live DMA buffers, so the hot paths learn with one bit test whether an
//! access needs the oracle.
//!
//! A whole page written to a watched frame (a device filling a DMA buffer) is kept
//! in a reference-counted frame, so that the sanitizer's oracle can hold the same
//! bytes instead of a copy (the truth and DRAM are then equal): the first later write
//! to either side copies the frame first (copy on write), and the next whole-page
//! write over a shared frame takes a fresh one. Every other frame is owned outright,
//! so the CPU's hot paths pay no reference count. This is host bookkeeping only; what
//! any address reads is unchanged.

use std::rc::Rc;

use crate::config::{PAGE_SHIFT, PAGE_SIZE};

/// Frames per chunk (2 MiB of address space).
const CHUNK_FRAMES: usize = 512;
const CHUNK_SHIFT: u32 = 9;

/// One 4 KiB frame of RAM.
pub type Frame = [u8; PAGE_SIZE as usize];

/// A frame's bytes as DRAM holds them, which the oracle may share (copy on write).
pub type SharedFrame = Rc<Frame>;

/// A new frame holding a copy of `data` (one page), copied once into its allocation.
fn frame_from(data: &[u8]) -> Option<SharedFrame> {
    Rc::<[u8]>::from(data).try_into().ok()
}

/// Where a frame's bytes live.
enum Slot {
    /// Owned outright (every frame but those below).
    Owned(Box<Frame>),
    /// Written as a whole page while watched: the oracle may hold it too.
    Shared(SharedFrame),
}

impl Slot {
    #[inline]
    fn bytes(&self) -> &Frame {
        match self {
            Slot::Owned(b) => b,
            Slot::Shared(r) => r,
        }
    }

    /// The bytes to change, copied first if the oracle holds them too.
    #[inline]
    fn bytes_mut(&mut self) -> &mut Frame {
        match self {
            Slot::Owned(b) => b,
            Slot::Shared(r) => Rc::make_mut(r),
        }
    }
}

/// 512 frame pointers and their watched bits, inline (one pointer hop per lookup).
struct Chunk {
    frames: [Option<Slot>; CHUNK_FRAMES],
    watched: [u64; CHUNK_FRAMES / 64],
}

impl Chunk {
    fn new() -> Box<Chunk> {
        Box::new(Chunk {
            frames: std::array::from_fn(|_| None),
            watched: [0; CHUNK_FRAMES / 64],
        })
    }
}

/// The RAM of the machine.
pub struct Dram {
    base: u64,
    size: u64,
    base_pfn: u64,
    chunks: Vec<Option<Box<Chunk>>>,
    touched: u64,
    cap: u64,
    cap_exceeded: bool,
    /// Frames nothing else holds any more, for the next whole-page write over a
    /// shared frame (a device streaming into a watched buffer would otherwise
    /// allocate and free a frame per page).
    spares: Vec<SharedFrame>,
}

/// Spare frames kept at most (256 KiB).
const MAX_SPARES: usize = 64;

impl Dram {
    /// RAM of `size` bytes starting at physical `base`; at most `cap_frames` frames
    /// may hold data.
    pub fn new(base: u64, size: u64, cap_frames: u64) -> Dram {
        let frames = size >> PAGE_SHIFT;
        let nchunks = frames.div_ceil(CHUNK_FRAMES as u64) as usize;
        Dram {
            base,
            size,
            base_pfn: base >> PAGE_SHIFT,
            chunks: (0..nchunks).map(|_| None).collect(),
            touched: 0,
            cap: cap_frames,
            cap_exceeded: false,
            spares: Vec::new(),
        }
    }

    /// Physical address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when `[pa, pa+len)` lies inside RAM.
    #[inline]
    pub fn contains(&self, pa: u64, len: u64) -> bool {
        pa >= self.base && len <= self.size && pa - self.base <= self.size - len
    }

    /// Frames that hold data so far.
    pub fn frames_touched(&self) -> u64 {
        self.touched
    }

    /// True once a write needed a frame beyond the cap (the write was dropped).
    pub fn cap_exceeded(&self) -> bool {
        self.cap_exceeded
    }

    /// The frame cap.
    pub fn cap_frames(&self) -> u64 {
        self.cap
    }

    #[inline]
    fn index(&self, pa: u64) -> (usize, usize) {
        let rel = (pa >> PAGE_SHIFT) - self.base_pfn;
        (
            (rel >> CHUNK_SHIFT) as usize,
            (rel as usize) & (CHUNK_FRAMES - 1),
        )
    }

    /// The frame holding `pa`, if it was ever written. `pa` must be in RAM.
    #[inline]
    pub fn frame(&self, pa: u64) -> Option<&Frame> {
        let (c, f) = self.index(pa);
        self.chunks[c].as_ref()?.frames[f].as_ref().map(Slot::bytes)
    }

    /// The frame holding `pa`, allocated (zeroed) if needed; `None` past the cap.
    #[inline]
    pub fn frame_mut(&mut self, pa: u64) -> Option<&mut Frame> {
        let (c, f) = self.index(pa);
        let chunk = self.chunks[c].get_or_insert_with(Chunk::new);
        if chunk.frames[f].is_none() {
            if self.touched >= self.cap {
                self.cap_exceeded = true;
                return None;
            }
            self.touched += 1;
            chunk.frames[f] = Some(Slot::Owned(Box::new([0u8; PAGE_SIZE as usize])));
        }
        chunk.frames[f].as_mut().map(Slot::bytes_mut)
    }

    /// Takes back a frame that was shared and that nothing else holds now, to hold
    /// the next whole page written over a shared frame.
    pub fn recycle(&mut self, frame: SharedFrame) {
        if Rc::strong_count(&frame) == 1 && self.spares.len() < MAX_SPARES {
            self.spares.push(frame);
        }
    }

    /// Another reference to the bytes of the frame holding `pa`, when it holds a
    /// whole page written while it was watched, for the oracle to share while
    /// neither side changes them.
    pub fn shared_frame(&self, pa: u64) -> Option<SharedFrame> {
        let (c, f) = self.index(pa);
        match self.chunks[c].as_ref()?.frames[f].as_ref()? {
            Slot::Shared(r) => Some(Rc::clone(r)),
            Slot::Owned(_) => None,
        }
    }

    /// Copies bytes at `pa` (inside one frame) into `out`.
    #[inline]
    pub fn read_in_frame(&self, pa: u64, out: &mut [u8]) {
        let off = (pa & (PAGE_SIZE - 1)) as usize;
        match self.frame(pa) {
            Some(f) => super::copy_bytes(out, &f[off..off + out.len()]),
            None => out.fill(0),
        }
    }

    /// Copies `data` to `pa` (inside one frame).
    #[inline]
    pub fn write_in_frame(&mut self, pa: u64, data: &[u8]) {
        let off = (pa & (PAGE_SIZE - 1)) as usize;
        if data.len() == PAGE_SIZE as usize && self.write_shareable_page(pa, data) {
            return;
        }
        if let Some(f) = self.frame_mut(pa) {
            f[off..off + data.len()].copy_from_slice(data);
        }
    }

    /// A whole page written to a watched frame: held in a shareable frame (a spare
    /// or a new one) unless it is one already that nothing else holds, which is
    /// written in place by the caller. True when written here.
    fn write_shareable_page(&mut self, pa: u64, data: &[u8]) -> bool {
        let (c, f) = self.index(pa);
        let Some(chunk) = self.chunks[c].as_mut() else {
            return false;
        };
        if chunk.watched[f / 64] & (1 << (f % 64)) == 0 {
            return false;
        }
        let new = match &chunk.frames[f] {
            Some(Slot::Shared(r)) if Rc::strong_count(r) == 1 => return false,
            Some(_) => false,
            None if self.touched >= self.cap => return false,
            None => true,
        };
        let fresh = match self.spares.pop() {
            Some(mut spare) => match Rc::get_mut(&mut spare) {
                Some(m) => {
                    m.copy_from_slice(data);
                    Some(spare)
                }
                None => frame_from(data),
            },
            None => frame_from(data),
        };
        let Some(fresh) = fresh else {
            return false;
        };
        chunk.frames[f] = Some(Slot::Shared(fresh));
        self.touched += u64::from(new);
        true
    }

    /// Copies `data` to `pa` (inside one frame) and tells whether the frame is watched,
    /// with one table lookup (the write-back path).
    #[inline]
    pub fn write_in_frame_watched(&mut self, pa: u64, data: &[u8]) -> bool {
        let (c, f) = self.index(pa);
        let off = (pa & (PAGE_SIZE - 1)) as usize;
        let chunk = self.chunks[c].get_or_insert_with(Chunk::new);
        if chunk.frames[f].is_none() {
            if self.touched >= self.cap {
                self.cap_exceeded = true;
                return chunk.watched[f / 64] & (1 << (f % 64)) != 0;
            }
            self.touched += 1;
            chunk.frames[f] = Some(Slot::Owned(Box::new([0u8; PAGE_SIZE as usize])));
        }
        if let Some(fr) = chunk.frames[f].as_mut().map(Slot::bytes_mut) {
            super::copy_bytes(&mut fr[off..off + data.len()], data);
        }
        chunk.watched[f / 64] & (1 << (f % 64)) != 0
    }

    /// Appends `len` bytes at `pa` (inside one frame) to `out`, without zeroing first.
    #[inline]
    pub fn read_append(&self, pa: u64, len: usize, out: &mut Vec<u8>) {
        let off = (pa & (PAGE_SIZE - 1)) as usize;
        match self.frame(pa) {
            Some(f) => out.extend_from_slice(&f[off..off + len]),
            None => out.resize(out.len() + len, 0),
        }
    }

    /// Reads any range of RAM (page by page). The caller checked [`Dram::contains`].
    pub fn read(&self, mut pa: u64, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let n = ((PAGE_SIZE - (pa & (PAGE_SIZE - 1))) as usize).min(out.len() - done);
            self.read_in_frame(pa, &mut out[done..done + n]);
            done += n;
            pa += n as u64;
        }
    }

    /// Writes any range of RAM (page by page). The caller checked [`Dram::contains`].
    pub fn write(&mut self, mut pa: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let n = ((PAGE_SIZE - (pa & (PAGE_SIZE - 1))) as usize).min(data.len() - done);
            self.write_in_frame(pa, &data[done..done + n]);
            done += n;
            pa += n as u64;
        }
    }

    /// Whether the sanitizer watches the frame holding `pa`.
    #[inline]
    pub fn is_watched(&self, pa: u64) -> bool {
        let (c, f) = self.index(pa);
        match &self.chunks[c] {
            Some(ch) => ch.watched[f / 64] & (1 << (f % 64)) != 0,
            None => false,
        }
    }

    /// Sets or clears the watched bit of the frame holding `pa`.
    pub fn set_watched(&mut self, pa: u64, on: bool) {
        let (c, f) = self.index(pa);
        let ch = self.chunks[c].get_or_insert_with(Chunk::new);
        if on {
            ch.watched[f / 64] |= 1 << (f % 64);
        } else {
            ch.watched[f / 64] &= !(1 << (f % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_frames_read_zero_and_cost_nothing() {
        let d = Dram::new(0x4000_0000, 1 << 30, 16);
        let mut b = [0xAAu8; 64];
        d.read(0x4000_1000, &mut b);
        assert_eq!(b, [0u8; 64]);
        assert_eq!(d.frames_touched(), 0);
    }

    #[test]
    fn writes_across_frames_round_trip() {
        let mut d = Dram::new(0, 1 << 24, 16);
        let data: Vec<u8> = (0..6000).map(|i| i as u8).collect();
        d.write(4000, &data);
        let mut back = vec![0; 6000];
        d.read(4000, &mut back);
        assert_eq!(back, data);
        assert_eq!(d.frames_touched(), 3);
    }

    #[test]
    fn the_cap_drops_writes_and_says_so() {
        let mut d = Dram::new(0, 1 << 24, 2);
        d.write(0, &[1; 8192]);
        assert!(!d.cap_exceeded());
        d.write(8192, &[1; 1]);
        assert!(d.cap_exceeded());
        assert_eq!(d.frames_touched(), 2);
    }

    #[test]
    fn containment_does_not_overflow() {
        let d = Dram::new(0x4000_0000, 1 << 30, 16);
        assert!(d.contains(0x4000_0000, 1 << 30));
        assert!(!d.contains(0x3fff_ffff, 2));
        assert!(!d.contains(u64::MAX, 2));
        assert!(!d.contains(0x4000_0000, u64::MAX));
    }

    /// A frame shared with the oracle keeps its bytes whatever DRAM does next:
    /// a partial write copies it first, a whole-page write takes a fresh frame; and
    /// neither counts as another touched frame.
    #[test]
    fn a_shared_frame_is_copied_on_write() {
        let mut d = Dram::new(0x4000_0000, 1 << 30, 16);
        let page = vec![0x11u8; PAGE_SIZE as usize];
        // Unwatched frames are owned outright: nothing to share.
        d.write(0x4000_3000, &page);
        assert!(d.shared_frame(0x4000_3000).is_none());
        d.set_watched(0x4000_1000, true);
        d.write(0x4000_1000, &page);
        let held = d.shared_frame(0x4000_1000).expect("written frame");
        d.write(0x4000_1010, &[0x22; 8]);
        assert!(held.iter().all(|&b| b == 0x11), "the shared copy changed");
        let mut b = [0u8; 8];
        d.read(0x4000_1010, &mut b);
        assert_eq!(b, [0x22; 8]);
        let held = d.shared_frame(0x4000_1000).expect("written frame");
        d.write(0x4000_1000, &vec![0x33u8; PAGE_SIZE as usize]);
        assert_eq!(held[0x10], 0x22, "the shared copy changed");
        d.read(0x4000_1010, &mut b);
        assert_eq!(b, [0x33; 8]);
        assert_eq!(d.frames_touched(), 2);
        // The old frame, once nothing else holds it, holds the next whole page
        // written over a shared frame.
        d.recycle(held);
        assert_eq!(d.spares.len(), 1);
        let held = d.shared_frame(0x4000_1000).expect("written frame");
        d.write(0x4000_1000, &vec![0x44u8; PAGE_SIZE as usize]);
        assert!(d.spares.is_empty(), "the spare was not used");
        assert!(held.iter().all(|&b| b == 0x33), "the shared copy changed");
        d.read(0x4000_1ff8, &mut b);
        assert_eq!(b, [0x44; 8]);
        // A frame something still holds is not taken.
        let again = d.shared_frame(0x4000_1000).expect("written frame");
        d.recycle(again);
        assert!(d.spares.is_empty());
        // The frame cap holds for shareable pages too.
        let mut d = Dram::new(0x4000_0000, 1 << 30, 1);
        d.write(0x4000_0000, &[1]);
        d.set_watched(0x4000_5000, true);
        d.write(0x4000_5000, &page);
        assert_eq!(d.frames_touched(), 1);
        assert!(d.cap_exceeded());
        assert!(d.shared_frame(0x4000_5000).is_none());
    }

    #[test]
    fn watched_bits() {
        let mut d = Dram::new(0, 1 << 24, 16);
        assert!(!d.is_watched(0x3000));
        d.set_watched(0x3000, true);
        assert!(d.is_watched(0x3fff));
        assert!(!d.is_watched(0x4000));
        d.set_watched(0x3000, false);
        assert!(!d.is_watched(0x3000));
    }
}
