//! Descriptor rings as bus-master hardware runs them, and the store ordering a driver
//! needs to hand descriptors over: `dma_wmb`, `wmb`, `writel` vs `writel_relaxed`.
//!
//! A ring is declared by the script (`dma_ring_create`): where its descriptors sit
//! in coherent memory (bus address, count, stride) and where the device finds each
//! field (buffer address, length, flags with an OWN bit, and where it writes back the
//! received length). The device then behaves as NIC and MAC DMA engines do (macb,
//! stmmac, fec): on a received frame (`dma_ring_rx`) or a doorbell (`writel`,
//! `dma_ring_kick`) it fetches the descriptor at its head, proceeds only if OWN is
//! set, moves the data, writes status back (data first, then the descriptor, with OWN
//! cleared) and advances.
//!
//! **Store ordering.** On arm64 and ARMv7, stores to Normal memory — the cacheable
//! descriptors of a coherent device as much as the Normal-NC ones of a non-coherent
//! device — may become visible to another observer in any order (Arm ARM B2.3; the
//! write buffer merges and drains Normal-NC stores out of order). Linux drivers
//! therefore put `dma_wmb()` between the descriptor's fields and its OWN bit, and
//! ring a doorbell with `writel()`, whose `__iowmb()` orders earlier stores before
//! the MMIO write (arch/arm64/include/asm/io.h); `writel_relaxed()` does not. On x86
//! stores are seen in program order (TSO) and these barriers only stop the compiler.
//! The model logs the CPU's stores into a ring's descriptors since the device last
//! looked, each with the bytes it replaced and the moment it becomes visible to the
//! device: its store time plus a seeded delay of up to [`WB_DRAIN_MAX_PS`], never
//! before a store that precedes a barrier it follows (x86: never before an earlier
//! store). A device fetch sees only the stores visible at that moment, so a missing
//! barrier really lets the device read a half-written descriptor on some seeds.
//! The sanitizer judges the protocol independently (`descriptor-order`): OWN set in
//! the same barrier epoch as another field of that descriptor, or a relaxed doorbell
//! after descriptor stores no barrier ordered; `manifested` when the device saw
//! stale bytes.
//!
//! Simplifications: loads are not reordered (`dma_rmb`/`rmb` cost time and order
//! nothing in the model: the device writes data before status, and a CPU load sees
//! every store already visible); one ring per direction of a device queue; a frame
//! goes into one descriptor.

use crate::system::{Result, SimError, System};

/// The longest a store to Normal memory may stay invisible to a device: the order
/// of one interconnect write transaction through the write buffer (tens of ns on
/// Cortex-A53/A72 class cores), in ps.
pub const WB_DRAIN_MAX_PS: u64 = 120_000;
/// Most rings per run, and descriptors per ring.
const MAX_RINGS: usize = 64;
const MAX_DESCS: u64 = 65_536;

/// A field of a descriptor: byte offset and size (1, 2, 4 or 8), little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Offset in the descriptor.
    pub off: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Field {
    fn get(self, d: &[u8]) -> u64 {
        let mut v = [0u8; 8];
        v[..self.size as usize]
            .copy_from_slice(&d[self.off as usize..(self.off + self.size) as usize]);
        u64::from_le_bytes(v)
    }

    fn put(self, d: &mut [u8], v: u64) {
        d[self.off as usize..(self.off + self.size) as usize]
            .copy_from_slice(&v.to_le_bytes()[..self.size as usize]);
    }
}

/// A ring's layout, as the script declares it.
#[derive(Debug, Clone)]
pub struct RingLayout {
    /// Bus address of descriptor 0 (in the device's address space).
    pub base: u64,
    /// Number of descriptors.
    pub count: u64,
    /// Bytes from one descriptor to the next.
    pub stride: u64,
    /// The buffer's bus address.
    pub addr: Field,
    /// The buffer's length (RX: room; TX: bytes to send).
    pub len: Field,
    /// The flags word holding the OWN bit.
    pub flags: Field,
    /// The OWN bit(s) in `flags`: set by the CPU to hand over, cleared by the device.
    pub own: u64,
    /// Where the device writes the received length back (RX), if anywhere else
    /// than `len`.
    pub status_len: Option<Field>,
    /// The device receives (`true`) or transmits.
    pub rx: bool,
}

/// One logged CPU store into a ring's descriptors.
#[derive(Debug, Clone)]
struct Store {
    /// Offset in the ring.
    off: u64,
    /// The bytes it replaced.
    old: Vec<u8>,
    /// When it becomes visible to the device, ps.
    visible_ps: u64,
    /// Barrier epoch it was made in.
    epoch: u64,
    /// Script line.
    line: u32,
}

impl Store {
    /// Whether the store touches ring bytes `[off, off + len)`.
    fn touches(&self, off: u64, len: u64) -> bool {
        self.off < off + len && off < self.off + self.old.len() as u64
    }
}

/// A descriptor ring and the device's position in it.
#[derive(Debug, Clone)]
pub struct Ring {
    /// The device.
    pub dev: usize,
    /// Layout.
    pub layout: RingLayout,
    /// Physical address of descriptor 0 (the ring is one contiguous allocation).
    pub phys: u64,
    /// The descriptor the device looks at next.
    pub head: u64,
    /// Frames the device dropped (no descriptor it owned).
    pub dropped: u64,
    /// Frames moved.
    pub frames: u64,
    /// TX: the frames the device sent, oldest first.
    pub sent: Vec<Vec<u8>>,
    stores: Vec<Store>,
}

/// The rings of a run and the CPU's barrier epoch.
#[derive(Debug, Default)]
pub struct Rings {
    /// Rings by id (index + 1).
    pub rings: Vec<Ring>,
    /// Bumped by every write barrier.
    epoch: u64,
    /// The latest visibility time of any store before the current epoch.
    floor_ps: u64,
}

impl System {
    /// `dma_ring_create`: a ring over `layout.count` descriptors at bus address
    /// `layout.base` of device `dev`; returns its id.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a layout whose fields do not fit the stride, a ring
    /// the device cannot reach, or too many rings.
    pub fn dma_ring_create(&mut self, dev: usize, layout: RingLayout) -> Result<u64> {
        let bad = |m: String| Err(SimError::Invalid(format!("dma_ring_create: {m}")));
        if self.rings.rings.len() >= MAX_RINGS {
            return bad(format!("more than {MAX_RINGS} rings"));
        }
        if layout.count == 0
            || layout.count > MAX_DESCS
            || layout.stride == 0
            || layout.stride > 256
        {
            return bad(format!(
                "count {} and stride {} (1..={MAX_DESCS} descriptors of 1..=256 bytes)",
                layout.count, layout.stride
            ));
        }
        for (name, f) in [
            ("addr", Some(layout.addr)),
            ("len", Some(layout.len)),
            ("flags", Some(layout.flags)),
            ("status_len", layout.status_len),
        ] {
            if let Some(f) = f {
                if !matches!(f.size, 1 | 2 | 4 | 8) || f.off + f.size > layout.stride {
                    return bad(format!(
                        "field {name} [{}, {}] must be 1, 2, 4 or 8 bytes inside the {}-byte descriptor",
                        f.off, f.size, layout.stride
                    ));
                }
            }
        }
        if layout.own == 0 || (layout.flags.size < 8 && layout.own >> (8 * layout.flags.size) != 0)
        {
            return bad(format!(
                "own mask {:#x} must be bits of the flags field",
                layout.own
            ));
        }
        let bytes = layout.count * layout.stride;
        let phys = self.bus_to_phys_contiguous(dev, layout.base, bytes).ok_or_else(|| {
            SimError::Invalid(format!(
                "dma_ring_create: {:#x}+{bytes} is not one mapped, contiguous range of this device (use dma_alloc_coherent for the ring)",
                layout.base
            ))
        })?;
        self.rings.rings.push(Ring {
            dev,
            layout,
            phys,
            head: 0,
            dropped: 0,
            frames: 0,
            sent: Vec::new(),
            stores: Vec::new(),
        });
        Ok(self.rings.rings.len() as u64)
    }

    /// The physical address behind `[bus, bus+len)` of `dev` when it is one
    /// contiguous run, through the IOMMU if the device sits behind one.
    fn bus_to_phys_contiguous(&mut self, dev: usize, bus: u64, len: u64) -> Option<u64> {
        let d = self.kernel.devices.get(dev)?;
        if let Some(domain) = self.dev_domain(dev) {
            let pa = self.iommu_iova_to_phys(domain, bus);
            let end = self.iommu_iova_to_phys(domain, bus + len - 1);
            (pa != 0 && end == pa + len - 1).then_some(pa)
        } else {
            let pa = d.dma_to_phys(bus);
            self.hw.dram.contains(pa, len).then_some(pa)
        }
    }

    /// Logs a CPU store of `len` bytes at `pa` into any ring's descriptors, before
    /// the store happens (its old bytes are still in memory).
    pub(crate) fn ring_note_store(&mut self, pa: u64, len: u64) {
        if self.rings.rings.is_empty() {
            return;
        }
        let now = self.hw.now_ps();
        let line = self.line;
        let weak = self.cfg.arch != crate::config::Arch::X86_64;
        for i in 0..self.rings.rings.len() {
            let r = &self.rings.rings[i];
            let (start, end) = (r.phys, r.phys + r.layout.count * r.layout.stride);
            let (a, b) = (pa.max(start), (pa + len).min(end));
            if a >= b {
                continue;
            }
            let mut old = vec![0u8; (b - a) as usize];
            self.hw.cpu_view(a, &mut old);
            // A seeded delay; never before a store the last barrier ordered first,
            // and (TSO) never before any earlier store on x86.
            let delay = self.hw.rng.below(WB_DRAIN_MAX_PS as usize) as u64;
            let floor = if weak {
                self.rings.floor_ps
            } else {
                self.rings.rings[i]
                    .stores
                    .iter()
                    .map(|s| s.visible_ps)
                    .max()
                    .unwrap_or(0)
                    .max(self.rings.floor_ps)
            };
            let epoch = self.rings.epoch;
            let r = &mut self.rings.rings[i];
            r.stores.push(Store {
                off: a - start,
                old,
                visible_ps: (now + delay).max(floor),
                epoch,
                line,
            });
            if r.stores.len() > 4 * r.layout.count as usize + 64 {
                // Keep the log bounded: stores long visible can go.
                r.stores.retain(|s| s.visible_ps > now);
            }
        }
    }

    /// `dma_wmb()` / `wmb()` / `mb()`: earlier stores become visible before later
    /// ones (`DMB OSHST` / `DSB ST` on arm64; a compiler barrier on x86).
    pub fn dma_wmb(&mut self) {
        self.step();
        let latest = self
            .rings
            .rings
            .iter()
            .flat_map(|r| r.stores.iter().map(|s| s.visible_ps))
            .max()
            .unwrap_or(0);
        self.rings.floor_ps = self.rings.floor_ps.max(latest);
        self.rings.epoch += 1;
        self.hw.advance(self.cfg.cost.l1_hit_ps);
    }

    /// `dma_rmb()` / `rmb()`: costs a barrier; orders nothing in this model (loads
    /// are not reordered, see the module header).
    pub fn dma_rmb(&mut self) {
        self.step();
        self.hw.advance(self.cfg.cost.l1_hit_ps);
    }

    /// Ring `id` for changes; callers looked it up with [`System::ring`] first.
    fn ring_mut(&mut self, id: u64) -> &mut Ring {
        &mut self.rings.rings[(id - 1) as usize]
    }

    fn ring(&self, id: u64) -> Result<&Ring> {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.rings.rings.get(i))
            .ok_or_else(|| SimError::Invalid(format!("no descriptor ring #{id}")))
    }

    /// The device fetches descriptor `idx` now: its bytes as the device sees them
    /// (stores not yet visible undone), and the finding if it saw a descriptor the
    /// CPU had not finished.
    fn ring_fetch(&mut self, id: u64, idx: u64, doorbell: Option<u32>) -> Result<Vec<u8>> {
        let r = self.ring(id)?.clone();
        let off = idx * r.layout.stride;
        // The device reads the descriptor now: an idle DMA engine polling the
        // descriptor at its head sees it the moment the frame (or doorbell) comes.
        let now = self.hw.now_ps();
        let job = self.dev_start(r.dev, r.layout.base + off, r.layout.stride, None)?;
        let mut seen = self
            .wait(job)?
            .unwrap_or_else(|| vec![0; r.layout.stride as usize]);
        let truth = seen.clone();
        // Undo, newest first, the stores into this descriptor the device cannot see.
        let mine = |s: &Store| s.touches(off, r.layout.stride);
        for s in r
            .stores
            .iter()
            .rev()
            .filter(|s| mine(s) && s.visible_ps > now)
        {
            for (k, &b) in s.old.iter().enumerate() {
                let o = s.off + k as u64;
                if o >= off && o < off + r.layout.stride {
                    seen[(o - off) as usize] = b;
                }
            }
        }
        let l = &r.layout;
        let owned = l.flags.get(&seen) & l.own != 0;
        if owned {
            // The protocol: the store that set OWN and a store to another field of
            // this descriptor in one barrier epoch (unordered), or a relaxed
            // doorbell with descriptor stores no barrier ordered before it.
            let in_desc: Vec<&Store> = r.stores.iter().filter(|s| mine(s)).collect();
            let own_store = in_desc.iter().rev().find(|s| covers_at(l.flags, off, s));
            let unordered = own_store.and_then(|o| {
                in_desc
                    .iter()
                    .find(|s| s.epoch == o.epoch && !covers_at(l.flags, off, s))
                    .map(|s| (o.line, s.line))
            });
            let relaxed = doorbell.filter(|_| in_desc.iter().any(|s| s.epoch == self.rings.epoch));
            let stale = seen != truth;
            if unordered.is_some() || relaxed.is_some() || stale {
                let dev_name = self.kernel.devices[r.dev].name.clone();
                let fields: Vec<&str> = [("address", l.addr), ("length", l.len)]
                    .iter()
                    .filter(|(_, f)| f.get(&seen) != f.get(&truth))
                    .map(|(n, _)| *n)
                    .collect();
                let seen_what = if stale {
                    format!(
                        "and saw OWN set with a stale {} (the CPU's store was not yet visible)",
                        if fields.is_empty() {
                            "field".to_string()
                        } else {
                            fields.join(" and ")
                        }
                    )
                } else {
                    "and saw it whole this time".to_string()
                };
                let (why, help) = match (unordered, relaxed) {
                    (Some((own_line, other)), _) => (
                        format!("the CPU set OWN (line {own_line}) with no dma_wmb() after writing the descriptor's other fields (line {other})"),
                        "write the buffer address and length, then dma_wmb(), then set the OWN bit (as macb, stmmac and fec do)".to_string(),
                    ),
                    (None, Some(bell)) => (
                        format!("the doorbell at line {bell} was writel_relaxed(), which does not order the descriptor stores before it"),
                        "ring the doorbell with writel() (its __iowmb() orders the descriptor stores first), or put wmb() before writel_relaxed()".to_string(),
                    ),
                    (None, None) => (
                        "the descriptor's stores were not ordered before the device looked".to_string(),
                        "order the descriptor stores with dma_wmb() before handing it over".to_string(),
                    ),
                };
                let ctx = self.ctx();
                self.check.report_plain(
                    "descriptor-order",
                    Some(stale),
                    Some(&dev_name),
                    Some(l.base + off),
                    Some(l.stride),
                    ctx,
                    format!("{dev_name} fetched descriptor {idx} of its ring {seen_what}: {why} [descriptor address={:#x}]", l.base + off),
                    help,
                    vec![],
                );
            }
        }
        // The device has looked: stores it could see are settled.
        let ring = self.ring_mut(id);
        ring.stores.retain(|s| s.visible_ps > now);
        Ok(seen)
    }

    /// `dma_ring_rx`: a frame arrives; the device puts it into the descriptor at its
    /// head if it owns it. Returns whether the frame was taken (else dropped).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown or TX ring, or a device error.
    pub fn dma_ring_rx(&mut self, id: u64, frame: &[u8]) -> Result<bool> {
        self.step();
        let r = self.ring(id)?.clone();
        if !r.layout.rx {
            return Err(SimError::Invalid(format!(
                "dma_ring_rx: ring #{id} transmits"
            )));
        }
        let idx = r.head;
        let mut desc = self.ring_fetch(id, idx, None)?;
        let l = &r.layout;
        if l.flags.get(&desc) & l.own == 0 {
            // Not available yet: the MAC holds the frame in its FIFO and polls the
            // descriptor again once the CPU's pending stores to it have landed.
            let (off, stride) = (idx * l.stride, l.stride);
            let settle = self
                .ring(id)?
                .stores
                .iter()
                .filter(|s| s.touches(off, stride))
                .map(|s| s.visible_ps)
                .max();
            if let Some(t) = settle {
                if t > self.hw.now_ps() {
                    self.idle_until(t);
                }
                desc = self.ring_fetch(id, idx, None)?;
            }
        }
        if l.flags.get(&desc) & l.own == 0 {
            self.ring_mut(id).dropped += 1;
            return Ok(false);
        }
        let room = l.len.get(&desc).min(frame.len() as u64) as usize;
        let addr = l.addr.get(&desc);
        let job = self.dev_start(r.dev, addr, room as u64, Some(frame[..room].to_vec()))?;
        self.wait(job)?;
        // Write back status: the length, then flags with OWN cleared (one write of
        // the whole descriptor, after the data, as a DMA engine does).
        let mut wb = desc.clone();
        l.status_len.unwrap_or(l.len).put(&mut wb, room as u64);
        l.flags.put(&mut wb, l.flags.get(&desc) & !l.own);
        let job = self.dev_start(r.dev, l.base + idx * l.stride, l.stride, Some(wb))?;
        self.wait(job)?;
        let ring = self.ring_mut(id);
        ring.head = (idx + 1) % l.count;
        ring.frames += 1;
        Ok(true)
    }

    /// A TX doorbell (`writel`/`writel_relaxed` of the ring's tail register, or
    /// `dma_ring_kick`): the device sends every descriptor it owns from its head.
    /// `relaxed` gives the doorbell's line when no barrier ordered the stores.
    /// Returns the frames sent.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown ring, or a device error.
    pub fn dma_ring_kick(&mut self, id: u64, relaxed: Option<u32>) -> Result<u64> {
        self.step();
        let r = self.ring(id)?.clone();
        let l = r.layout.clone();
        let mut sent = 0;
        for _ in 0..l.count {
            let idx = self.ring(id)?.head;
            let desc = self.ring_fetch(id, idx, relaxed)?;
            if l.flags.get(&desc) & l.own == 0 {
                break;
            }
            if r.layout.rx {
                // An RX ring's doorbell only says descriptors were refilled.
                break;
            }
            let len = l.len.get(&desc);
            let job = self.dev_start(r.dev, l.addr.get(&desc), len, None)?;
            let data = self.wait(job)?.unwrap_or_default();
            let mut wb = desc.clone();
            l.flags.put(&mut wb, l.flags.get(&desc) & !l.own);
            let job = self.dev_start(r.dev, l.base + idx * l.stride, l.stride, Some(wb))?;
            self.wait(job)?;
            let ring = self.ring_mut(id);
            if ring.sent.len() < 4096 {
                ring.sent.push(data);
            }
            ring.head = (idx + 1) % l.count;
            ring.frames += 1;
            sent += 1;
        }
        Ok(sent)
    }

    /// `writel(val, doorbell)` / `writel_relaxed(val, doorbell)` to ring `id`'s
    /// doorbell register: `writel` is `__iowmb()` + the MMIO store.
    ///
    /// # Errors
    /// As [`System::dma_ring_kick`].
    pub fn ring_doorbell(&mut self, id: u64, relaxed: bool) -> Result<u64> {
        if relaxed {
            let line = self.line;
            self.dma_ring_kick(id, Some(line))
        } else {
            self.dma_wmb();
            self.dma_ring_kick(id, None)
        }
    }

    /// The ring's counters: (head, frames, dropped).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown ring.
    pub fn ring_state(&self, id: u64) -> Result<(u64, u64, u64)> {
        let r = self.ring(id)?;
        Ok((r.head, r.frames, r.dropped))
    }

    /// TX: takes the frames the device sent so far.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown ring.
    pub fn ring_take_sent(&mut self, id: u64) -> Result<Vec<Vec<u8>>> {
        self.ring(id)?;
        Ok(std::mem::take(&mut self.ring_mut(id).sent))
    }
}

/// Whether store `s` (ring offset) touches field `f` of the descriptor at `off`.
fn covers_at(f: Field, off: u64, s: &Store) -> bool {
    s.touches(off + f.off, f.size)
}
