//! A DPDK-style poll-mode driver: the NIC's RX descriptor ring and packet buffers in
//! the process's 2 MiB hugepages, the device programmed with their addresses, and a
//! CPU that polls the ring instead of taking interrupts. Two ways to get addresses
//! the device can use, as DPDK's `--iova-mode`:
//! - `pa`: physical addresses from `/proc/self/pagemap`, which only stay valid
//!   because the pages are pinned (`pin_user_pages`, FOLL_LONGTERM) — without an
//!   IOMMU, or with a passthrough one;
//! - `va`: the process's virtual addresses as IOVAs, mapped through VFIO and the
//!   IOMMU.
//!
//! Descriptor format (16 bytes, in the spirit of an ixgbe/e1000 legacy RX
//! descriptor): buffer address (u64), length (u16), status (u16, bit 0 = DD,
//! "descriptor done"), 4 bytes reserved. The wire (`pmd_inject`) makes the NIC
//! write the frame into the next descriptor's buffer and then the descriptor;
//! `pmd_rx_burst` polls from the head, copies nothing (the frame is read in place)
//! and hands the descriptor back.
//!
//! With `tx`, a transmit ring follows in the same hugepages (descriptor: buffer
//! address, length, command EOP|RS, status DD): `pmd_tx_burst` first reclaims the
//! descriptors the NIC marked done, then writes each frame into its buffer and its
//! descriptor with plain CPU stores and rings the doorbell (an uncached MMIO write,
//! after a write barrier); `pmd_tx_wire` makes the NIC fetch the descriptors, read
//! the frames from DRAM, put them on the wire and write DD back. On a non-coherent
//! port the frames and descriptors sit in the CPU's cache and the NIC sends what
//! DRAM held before — `stale-device-read`, which user space cannot fix.
//!
//! The kernel path for comparison (`netdev_rx`): per frame an interrupt and NAPI
//! poll, a kmalloc'd receive buffer mapped and unmapped, and a copy to the
//! process. Simplifications: one RX and one TX queue; no descriptor write-back
//! batching (DD on every TX descriptor, as with RS set on each); an interrupt costs
//! a fixed 2 µs (entry, NAPI, softirq and socket wake-up; an order of magnitude, not
//! a measurement); the doorbell costs one uncached write beat.

use serde::Serialize;

use crate::check::MapKind;
use crate::config::PAGE_SIZE;
use crate::kernel::dma::DmaDirection;
use crate::kernel::mm::gfp::GFP_KERNEL;
use crate::kernel::BufKind;
use crate::system::{Result, SimError, System};

/// Bytes per RX descriptor.
pub const DESC_SIZE: u64 = 16;
/// "Descriptor done".
pub const DD: u16 = 1;
/// Interrupt + NAPI + wake-up cost of the kernel path, ps (order of magnitude).
pub const IRQ_PS: u64 = 2_000_000;
/// TX descriptor command: end of packet, report status (ixgbe `EOP | RS`).
pub const TX_CMD_EOP_RS: u16 = 0x0009;

/// DPDK's `--iova-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IovaMode {
    /// Physical addresses (pagemap).
    Pa,
    /// Virtual addresses as IOVAs (VFIO).
    Va,
}

/// Counters of a poll-mode driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PmdStats {
    /// Frames the wire delivered.
    pub injected: u64,
    /// Frames dropped: no free descriptor.
    pub dropped: u64,
    /// Frames `rx_burst` returned.
    pub received: u64,
    /// Polls that found nothing.
    pub empty_polls: u64,
    /// CPU time spent polling, ns.
    pub cpu_ns: u64,
    /// Frames the CPU read with other bytes than the NIC wrote (stale cache lines
    /// on a non-coherent port).
    pub stale_frames: u64,
    /// Polls that saw a descriptor as not done although the NIC had written it.
    pub stale_descriptors: u64,
    /// TX: frames `tx_burst` queued.
    pub tx_queued: u64,
    /// TX: frames the NIC put on the wire.
    pub tx_sent: u64,
    /// TX: frames `tx_burst` refused because no descriptor was free (or none
    /// could be seen as done).
    pub tx_full: u64,
    /// TX: frames the NIC sent with other bytes than the CPU wrote (its descriptor
    /// or buffer was still only in the CPU's cache).
    pub tx_stale: u64,
}

/// One receive path's figures (`stats.rx.pmd`, `stats.rx.kernel` in the report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RxPathStats {
    /// Frames delivered to the process.
    pub frames: u64,
    /// Frames dropped (PMD: ring full).
    pub dropped: u64,
    /// Polls that found nothing (PMD only).
    pub empty_polls: u64,
    /// CPU time spent, ns (PMD: polling and reading frames in place; kernel:
    /// interrupt, map/unmap, copy to the process).
    pub cpu_ns: u64,
    /// CPU ns per frame, rounded.
    pub ns_per_packet: u64,
    /// Frames per second one core sustains at that cost.
    pub packets_per_s: u64,
}

impl RxPathStats {
    fn derive(mut self) -> Self {
        if self.frames > 0 && self.cpu_ns > 0 {
            self.ns_per_packet = (self.cpu_ns + self.frames / 2) / self.frames;
            self.packets_per_s =
                (u128::from(self.frames) * 1_000_000_000 / u128::from(self.cpu_ns)) as u64;
        }
        self
    }
}

/// The receive paths side by side: every PMD summed, and `netdev_rx`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RxStats {
    /// Poll-mode drivers.
    pub pmd: RxPathStats,
    /// The kernel's interrupt-driven path.
    pub kernel: RxPathStats,
}

impl RxStats {
    /// The figures of a system so far.
    pub fn of(sys: &System) -> RxStats {
        let mut pmd = RxPathStats::default();
        for q in sys.kernel.pmds.values() {
            pmd.frames += q.stats.received;
            pmd.dropped += q.stats.dropped;
            pmd.empty_polls += q.stats.empty_polls;
            pmd.cpu_ns += q.stats.cpu_ns;
        }
        RxStats {
            pmd: pmd.derive(),
            kernel: sys.kernel.netdev_rx.derive(),
        }
    }
}

/// One poll-mode driver instance.
#[derive(Debug, Clone)]
pub struct Pmd {
    /// The NIC.
    pub dev: usize,
    /// The process.
    pub pid: u32,
    /// Address mode.
    pub mode: IovaMode,
    /// Descriptors.
    pub ring: u64,
    /// Bytes per packet buffer.
    pub buf_size: u64,
    /// Process virtual address of the ring (buffers follow it).
    pub va: u64,
    /// The device's address of each 4 KiB page of the region, by page index.
    bus: Vec<u64>,
    /// Next descriptor the NIC fills.
    tail: u64,
    /// Next descriptor the CPU polls.
    head: u64,
    /// Counters.
    pub stats: PmdStats,
    /// What the NIC wrote into each descriptor's buffer: (length, hash), so a frame
    /// the CPU reads from a stale cache line shows.
    sent: Vec<(u64, u64)>,
    /// A stale read was reported already (once per PMD).
    reported: bool,
    /// The transmit ring, when opened with `tx`.
    tx: Option<TxRing>,
}

/// A transmit ring's positions and what the CPU queued.
#[derive(Debug, Clone)]
struct TxRing {
    /// Next descriptor the CPU fills.
    tail: u64,
    /// Next descriptor the NIC fetches.
    nic: u64,
    /// Next descriptor the CPU reclaims.
    clean: u64,
    /// What the CPU queued in each descriptor: (length, hash).
    queued: Vec<(u64, u64)>,
    /// A stale transmit was reported already.
    reported: bool,
}

/// A cheap content hash (FNV-1a) of a frame.
fn frame_hash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Pmd {
    /// Bytes of one ring: descriptors (page-aligned) then buffers.
    fn ring_bytes(&self) -> u64 {
        (self.ring * DESC_SIZE).next_multiple_of(PAGE_SIZE) + self.ring * self.buf_size
    }

    fn region(&self) -> u64 {
        let rx = self.ring_bytes();
        if self.tx.is_some() {
            rx.next_multiple_of(PAGE_SIZE) + self.ring_bytes()
        } else {
            rx
        }
    }

    /// Process address of TX descriptor `i`.
    fn tx_desc_va(&self, i: u64) -> u64 {
        self.va + self.ring_bytes().next_multiple_of(PAGE_SIZE) + i * DESC_SIZE
    }

    /// Process address of TX buffer `i`.
    fn tx_buf_va(&self, i: u64) -> u64 {
        self.va
            + self.ring_bytes().next_multiple_of(PAGE_SIZE)
            + (self.ring * DESC_SIZE).next_multiple_of(PAGE_SIZE)
            + i * self.buf_size
    }

    fn buf_va(&self, i: u64) -> u64 {
        self.va + (self.ring * DESC_SIZE).next_multiple_of(PAGE_SIZE) + i * self.buf_size
    }

    /// The device's address for process address `va` inside the region.
    fn bus_of(&self, va: u64) -> u64 {
        let off = va - self.va;
        self.bus[(off / PAGE_SIZE) as usize] + off % PAGE_SIZE
    }
}

impl System {
    /// `pmd_open`: hugepages for the ring and `ring` buffers of `buf_size` bytes,
    /// their device addresses by `mode` (pinned + pagemap, or VFIO-mapped at their
    /// virtual addresses), descriptors initialised. Returns the PMD id, or −errno
    /// (−ENOMEM without enough hugepages; in VA mode −EINVAL when the device cannot
    /// drive the addresses, and VFIO's errors).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for bad sizes, an unknown device or process.
    pub fn pmd_open(
        &mut self,
        dev: usize,
        pid: u32,
        mode: IovaMode,
        ring: u64,
        buf_size: u64,
    ) -> Result<i64> {
        self.pmd_open_with(dev, pid, mode, ring, buf_size, false)
    }

    /// [`System::pmd_open`], with a transmit ring as well when `tx`.
    ///
    /// # Errors
    /// As [`System::pmd_open`].
    pub fn pmd_open_with(
        &mut self,
        dev: usize,
        pid: u32,
        mode: IovaMode,
        ring: u64,
        buf_size: u64,
        tx: bool,
    ) -> Result<i64> {
        if !(8..=4096).contains(&ring) || !(64..=16384).contains(&buf_size) || buf_size % 64 != 0 {
            return Err(SimError::Invalid(
                "pmd_open: ring 8..=4096 descriptors, buf_size 64..=16384 bytes in multiples of 64"
                    .into(),
            ));
        }
        if self.kernel.devices.get(dev).is_none() {
            return Err(SimError::Invalid(format!("pmd_open: no device #{dev}")));
        }
        let mut pmd = Pmd {
            dev,
            pid,
            mode,
            ring,
            buf_size,
            va: 0,
            bus: Vec::new(),
            tail: 0,
            head: 0,
            stats: PmdStats::default(),
            sent: vec![(0, 0); ring as usize],
            reported: false,
            tx: tx.then(|| TxRing {
                tail: 0,
                nic: 0,
                clean: 0,
                queued: vec![(0, 0); ring as usize],
                reported: false,
            }),
        };
        let size = pmd.region();
        let va = match self.mmap_huge(pid, size)? {
            Ok(va) => va,
            Err(e) => return Ok(e),
        };
        pmd.va = va;
        let pages = size.div_ceil(PAGE_SIZE);
        match mode {
            IovaMode::Pa => {
                // rte_mem_virt2phy: pin (the device keeps using them), then pagemap.
                self.gup(pid, va, pages * PAGE_SIZE, true, true)?;
                for k in 0..pages {
                    let pfn = self.pagemap(pid, va + k * PAGE_SIZE)?;
                    pmd.bus
                        .push(self.kernel.devices[dev].phys_to_dma(pfn * PAGE_SIZE));
                }
            }
            IovaMode::Va => {
                // rte_mem_check_dma_mask: the device must drive every bit of the
                // virtual addresses it is given as IOVAs; a 32-bit NIC cannot use
                // 48-bit user addresses (DPDK falls back to PA or needs
                // --base-virtaddr below the limit).
                let bits = self.kernel.devices[dev].dma_bits;
                if bits < 64 && (va + size) >> bits != 0 {
                    let name = self.kernel.devices[dev].name.clone();
                    self.printk(
                        "EAL",
                        format!(
                            "{name}: memseg iova {va:#x}, len {size:#x}, out of range: the device drives {bits} address bits; use --iova-mode=pa or a --base-virtaddr below the limit"
                        ),
                    );
                    return Ok(-crate::kernel::errno::EINVAL);
                }
                let c = self.vfio_open(dev, pid)?;
                if c < 0 {
                    return Ok(c);
                }
                let r = self.vfio_map_dma(
                    c as u64,
                    va,
                    va,
                    (pages * PAGE_SIZE).next_multiple_of(2 << 20),
                    true,
                    true,
                )?;
                if r < 0 {
                    return Ok(r);
                }
                pmd.bus = (0..pages).map(|k| va + k * PAGE_SIZE).collect();
            }
        }
        // rx_queue_setup: every descriptor points at its buffer, status clear.
        for i in 0..ring {
            let mut d = [0u8; DESC_SIZE as usize];
            d[..8].copy_from_slice(&pmd.bus_of(pmd.buf_va(i)).to_le_bytes());
            self.user_write(pid, va + i * DESC_SIZE, &d)?;
        }
        let id = self.kernel.next_pmd;
        self.kernel.next_pmd += 1;
        self.kernel.pmds.insert(id, pmd);
        Ok(id as i64)
    }

    fn pmd(&self, id: u64) -> Result<Pmd> {
        self.kernel
            .pmds
            .get(&id)
            .cloned()
            .ok_or_else(|| SimError::Invalid(format!("no PMD #{id}")))
    }

    /// The wire delivers `frame`: the NIC DMAs it into the tail descriptor's buffer
    /// and writes the descriptor back (length, DD). Returns false when the ring is
    /// full (the frame is dropped, counted).
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown PMD or a frame larger than a buffer.
    pub fn pmd_inject(&mut self, id: u64, frame: Vec<u8>) -> Result<bool> {
        let mut pmd = self.pmd(id)?;
        if frame.is_empty() || frame.len() as u64 > pmd.buf_size {
            return Err(SimError::Invalid(
                "pmd_inject: a frame is 1 byte to buf_size".into(),
            ));
        }
        pmd.stats.injected += 1;
        if pmd.tail - pmd.head >= pmd.ring {
            pmd.stats.dropped += 1;
            self.kernel.pmds.insert(id, pmd);
            return Ok(false);
        }
        let i = pmd.tail % pmd.ring;
        let len = frame.len() as u64;
        pmd.sent[i as usize] = (len, frame_hash(&frame));
        let j = self.dev_start(pmd.dev, pmd.bus_of(pmd.buf_va(i)), len, Some(frame))?;
        self.wait(j)?;
        let mut d = [0u8; DESC_SIZE as usize];
        d[..8].copy_from_slice(&pmd.bus_of(pmd.buf_va(i)).to_le_bytes());
        d[8..10].copy_from_slice(&(len as u16).to_le_bytes());
        d[10..12].copy_from_slice(&DD.to_le_bytes());
        let j = self.dev_start(
            pmd.dev,
            pmd.bus_of(pmd.va + i * DESC_SIZE),
            DESC_SIZE,
            Some(d.to_vec()),
        )?;
        self.wait(j)?;
        pmd.tail += 1;
        self.kernel.pmds.insert(id, pmd);
        Ok(true)
    }

    /// `rte_eth_rx_burst`: polls up to `max` descriptors from the head; returns the
    /// frames found (read in place from the hugepages) and gives their descriptors
    /// back. An empty poll still costs the descriptor read.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown PMD.
    pub fn pmd_rx_burst(&mut self, id: u64, max: u64) -> Result<Vec<Vec<u8>>> {
        let mut pmd = self.pmd(id)?;
        let t0 = self.hw.now_ps();
        let mut out = Vec::new();
        while (out.len() as u64) < max.min(pmd.ring) {
            let i = pmd.head % pmd.ring;
            let d = self.user_read(pmd.pid, pmd.va + i * DESC_SIZE, DESC_SIZE)?;
            let status = u16::from_le_bytes([d[10], d[11]]);
            if status & DD == 0 {
                if pmd.tail > pmd.head {
                    // The NIC wrote this descriptor; the CPU sees its cached copy.
                    pmd.stats.stale_descriptors += 1;
                    self.pmd_stale(&mut pmd, i, "its descriptor still reads as not done");
                }
                if out.is_empty() {
                    pmd.stats.empty_polls += 1;
                }
                break;
            }
            let len = u64::from(u16::from_le_bytes([d[8], d[9]]));
            let frame = self.user_read(pmd.pid, pmd.buf_va(i), len.min(pmd.buf_size))?;
            if (len, frame_hash(&frame)) != pmd.sent[i as usize] {
                pmd.stats.stale_frames += 1;
                self.pmd_stale(&mut pmd, i, "its bytes are not those the NIC wrote");
            }
            out.push(frame);
            // Hand the descriptor back: status cleared, same buffer.
            self.user_write(pmd.pid, pmd.va + i * DESC_SIZE + 8, &[0u8; 8])?;
            pmd.head += 1;
        }
        pmd.stats.received += out.len() as u64;
        pmd.stats.cpu_ns += (self.hw.now_ps() - t0) / 1000;
        self.kernel.pmds.insert(id, pmd);
        Ok(out)
    }

    /// Reports, once per PMD, that the CPU read a descriptor or frame the NIC had
    /// rewritten in DRAM from a stale cache line: user space does no cache
    /// maintenance, so a poll-mode driver needs a cache-coherent port.
    fn pmd_stale(&mut self, pmd: &mut Pmd, i: u64, what: &str) {
        if pmd.reported {
            return;
        }
        pmd.reported = true;
        self.pmd_report(
            pmd,
            "stale-cpu-read",
            pmd.bus_of(pmd.buf_va(i)),
            &format!("descriptor {i} was filled by the NIC, but {what} to the CPU"),
            "a non-coherent port: the CPU's cached copies of the ring and buffers are never invalidated",
            "user space cannot clean or invalidate cache lines for DMA: run a poll-mode driver only on a cache-coherent DMA port (DPDK supports no other), or use the kernel driver, whose DMA API syncs",
        );
    }

    /// A manifested finding about a PMD's ring: `what` happened, on a port that is
    /// coherent or (`non_coherent`) not.
    fn pmd_report(
        &mut self,
        pmd: &Pmd,
        finding: &'static str,
        bus: u64,
        what: &str,
        non_coherent: &str,
        help: &str,
    ) {
        let dev = self.kernel.devices[pmd.dev].name.clone();
        let ctx = self.ctx();
        let port = if self.kernel.devices[pmd.dev].coherent {
            "a coherent port"
        } else {
            non_coherent
        };
        self.check.report_plain(
            finding,
            Some(true),
            Some(&dev),
            Some(bus),
            Some(pmd.buf_size),
            ctx,
            format!("poll-mode driver on {dev}: {what}; {dev} sits on {port}"),
            help.into(),
            vec![],
        );
    }

    /// The counters of a PMD.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown PMD.
    pub fn pmd_stats(&self, id: u64) -> Result<PmdStats> {
        Ok(self.pmd(id)?.stats)
    }

    /// `rte_eth_tx_burst`: reclaims the descriptors the NIC reports done (their
    /// DD bit, as the CPU sees it), then queues as many `frames` as free
    /// descriptors allow — frame into its buffer, descriptor (address, length,
    /// EOP|RS) — and rings the doorbell once. Returns how many were queued.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown PMD, one without `tx`, or a frame of 0
    /// bytes or over `buf_size`.
    pub fn pmd_tx_burst(&mut self, id: u64, frames: Vec<Vec<u8>>) -> Result<u64> {
        let mut pmd = self.pmd(id)?;
        let Some(mut tx) = pmd.tx.clone() else {
            return Err(SimError::Invalid(
                "pmd_tx_burst: the PMD was opened without tx: true".into(),
            ));
        };
        if frames
            .iter()
            .any(|f| f.is_empty() || f.len() as u64 > pmd.buf_size)
        {
            return Err(SimError::Invalid(
                "pmd_tx_burst: a frame is 1 byte to buf_size".into(),
            ));
        }
        let t0 = self.hw.now_ps();
        // ixgbe_tx_free_bufs: a descriptor is free again once the CPU reads DD.
        while tx.clean < tx.nic {
            let i = tx.clean % pmd.ring;
            let d = self.user_read(pmd.pid, pmd.tx_desc_va(i), DESC_SIZE)?;
            if u16::from_le_bytes([d[12], d[13]]) & DD == 0 {
                break;
            }
            tx.clean += 1;
        }
        let mut queued = 0u64;
        for f in frames {
            if tx.tail - tx.clean >= pmd.ring {
                pmd.stats.tx_full += 1;
                continue;
            }
            let i = tx.tail % pmd.ring;
            let len = f.len() as u64;
            tx.queued[i as usize] = (len, frame_hash(&f));
            self.user_write(pmd.pid, pmd.tx_buf_va(i), &f)?;
            let mut d = [0u8; DESC_SIZE as usize];
            d[..8].copy_from_slice(&pmd.bus_of(pmd.tx_buf_va(i)).to_le_bytes());
            d[8..10].copy_from_slice(&(len as u16).to_le_bytes());
            d[10..12].copy_from_slice(&TX_CMD_EOP_RS.to_le_bytes());
            self.user_write(pmd.pid, pmd.tx_desc_va(i), &d)?;
            tx.tail += 1;
            queued += 1;
        }
        if queued > 0 {
            // rte_io_wmb() then the tail register: one uncached write.
            self.hw.advance(self.cfg.cost.uncached_write_beat_ps);
        }
        pmd.stats.tx_queued += queued;
        pmd.stats.cpu_ns += (self.hw.now_ps() - t0) / 1000;
        pmd.tx = Some(tx);
        self.kernel.pmds.insert(id, pmd);
        Ok(queued)
    }

    /// The NIC works through the TX descriptors up to the doorbell: it fetches
    /// each descriptor and its frame from memory (DRAM, or the CPU's cache through
    /// a coherent port), sends the frame and writes the descriptor back with DD.
    /// Returns the frames as they went on the wire.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for an unknown PMD or one without `tx`.
    pub fn pmd_tx_wire(&mut self, id: u64) -> Result<Vec<Vec<u8>>> {
        let mut pmd = self.pmd(id)?;
        let Some(mut tx) = pmd.tx.clone() else {
            return Err(SimError::Invalid(
                "pmd_tx_wire: the PMD was opened without tx: true".into(),
            ));
        };
        let mut wire = Vec::new();
        while tx.nic < tx.tail {
            let i = tx.nic % pmd.ring;
            let desc_bus = pmd.bus_of(pmd.tx_desc_va(i));
            let j = self.dev_start(pmd.dev, desc_bus, DESC_SIZE, None)?;
            let d = self.wait(j)?.unwrap_or_default();
            let mut d: [u8; DESC_SIZE as usize] = d.try_into().unwrap_or([0; DESC_SIZE as usize]);
            let addr = u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8]));
            let len = u64::from(u16::from_le_bytes([d[8], d[9]]));
            let want_addr = pmd.bus_of(pmd.tx_buf_va(i));
            // The NIC sends what the descriptor says; a stale descriptor (the CPU's
            // store still in its cache) reads as an empty one here.
            let frame = if addr == want_addr && len > 0 && len <= pmd.buf_size {
                let j = self.dev_start(pmd.dev, addr, len, None)?;
                self.wait(j)?.unwrap_or_default()
            } else {
                Vec::new()
            };
            if (frame.len() as u64, frame_hash(&frame)) != tx.queued[i as usize] {
                pmd.stats.tx_stale += 1;
                if !tx.reported {
                    tx.reported = true;
                    let what = if frame.is_empty() {
                        "its descriptor, as the NIC read it, was not the one the CPU wrote"
                    } else {
                        "the NIC read other bytes than the CPU wrote into its buffer"
                    };
                    self.pmd_tx_stale(&pmd, i, what);
                }
            }
            // Write-back: the descriptor with DD set.
            d[12..14].copy_from_slice(&DD.to_le_bytes());
            let j = self.dev_start(pmd.dev, desc_bus, DESC_SIZE, Some(d.to_vec()))?;
            self.wait(j)?;
            wire.push(frame);
            tx.nic += 1;
            pmd.stats.tx_sent += 1;
        }
        pmd.tx = Some(tx);
        self.kernel.pmds.insert(id, pmd);
        Ok(wire)
    }

    /// Reports, once per PMD, a frame the NIC sent from stale memory.
    fn pmd_tx_stale(&mut self, pmd: &Pmd, i: u64, what: &str) {
        self.pmd_report(
            pmd,
            "stale-device-read",
            pmd.bus_of(pmd.tx_buf_va(i)),
            &format!("TX descriptor {i} went on the wire wrong: {what}"),
            "a non-coherent port: the CPU's stores to the ring and buffers sit in its cache, and nothing cleans them",
            "user space cannot clean cache lines for DMA: run a poll-mode driver only on a cache-coherent DMA port (DPDK supports no other), or use the kernel driver, whose DMA API cleans the buffer at dma_map_single",
        );
    }

    /// The kernel's receive path for the same frame: the NIC DMAs into a kmalloc'd
    /// buffer mapped for it, the interrupt and NAPI run, the buffer is unmapped and
    /// copied to the process (`recv`). Returns the CPU time it took, in ns: the
    /// interrupt, the map and unmap (cache maintenance on non-coherent devices) and
    /// the copy — not the wire time, during which the CPU is free.
    ///
    /// # Errors
    /// A fault on the user buffer; an unknown device; the mapping failing.
    pub fn netdev_rx(&mut self, dev: usize, pid: u32, va: u64, frame: Vec<u8>) -> Result<u64> {
        if self.kernel.devices.get(dev).is_none() {
            return Err(SimError::Invalid(format!("netdev_rx: no device #{dev}")));
        }
        self.kernel_driver_bound(dev)?;
        let len = frame.len() as u64;
        let t0 = self.hw.now_ps();
        let Some(id) = self.kmalloc(len, GFP_KERNEL)? else {
            return Err(SimError::Invalid("netdev_rx: kmalloc failed".into()));
        };
        let kva = self.kernel.buffers[&id].va;
        let addr = self.dma_map_single(dev, kva, len, DmaDirection::FromDevice)?;
        if self.dma_mapping_error(dev, addr) {
            self.kfree(id, "kfree", BufKind::Kmalloc);
            return Err(SimError::Invalid("netdev_rx: dma_map_single failed".into()));
        }
        let t_wire = self.hw.now_ps();
        let job = self.dev_start(dev, addr, len, Some(frame))?;
        self.wait(job)?;
        let wire = self.hw.now_ps() - t_wire;
        self.hw.advance(IRQ_PS);
        self.dma_unmap(dev, addr, len, DmaDirection::FromDevice, MapKind::Single)?;
        let t1 = self.hw.now_ps();
        let bytes = self.cpu_read_va(kva, len)?;
        self.user_write(pid, va, &bytes)?;
        self.kernel.copies.copy_to_user_bytes += len;
        self.kernel.copies.copy_ns += (self.hw.now_ps() - t1) / 1000;
        self.kfree(id, "kfree", BufKind::Kmalloc);
        let ns = (self.hw.now_ps() - t0 - wire) / 1000;
        self.kernel.netdev_rx.frames += 1;
        self.kernel.netdev_rx.cpu_ns += ns;
        Ok(ns)
    }
}
