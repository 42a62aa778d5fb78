//! Streaming throughput in simulated time: what a driver that maps, transfers and
//! unmaps one buffer after another really gets, so configurations can be compared
//! (bounce buffers or not, coherent port or not, one mask or another).
//!
//! Each transfer is the streaming-DMA loop of a network or storage driver: map with
//! `dma_map_single`, let the device move `size` bytes at its bandwidth, wait, unmap.
//! The CPU does nothing else meanwhile, so the figure is the serial model of the
//! reference (`perf-anchors.md` §2): with a bounce copy at rate B_cpu and a device
//! at rate B_dev that are not overlapped, throughput is 1 / (1/B_dev + 1/B_cpu),
//! half of direct DMA when the two rates are equal. The result splits the time into
//! copy, transfer and the rest (calls, cache maintenance) and states the model's
//! prediction beside the measurement.
//!
//! Simplifications: one transfer in flight at a time (no descriptor ring, no
//! overlap of copy and DMA); the device writes a fixed pattern on receive.

use serde::Serialize;

use crate::check::MapKind;
use crate::kernel::dma::DmaDirection;
use crate::kernel::mm::page_alloc::get_order;
use crate::kernel::mm::slab::KMALLOC_MAX_CACHE_SIZE;
use crate::kernel::BufKind;
use crate::system::{Result, SimError, System};

/// Most bytes one stream may move (host time stays in seconds).
pub const MAX_STREAM_BYTES: u64 = 4 << 30;
/// Most transfers in one stream.
pub const MAX_STREAM_COUNT: u64 = 1_000_000;

/// What one streaming run measured (`streams` in the JSON report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamResult {
    /// Device name.
    pub device: String,
    /// `DMA_TO_DEVICE` (transmit) or `DMA_FROM_DEVICE` (receive).
    pub dir: &'static str,
    /// Bytes per transfer.
    pub size: u64,
    /// Transfers asked for.
    pub count: u64,
    /// Transfers done (fewer when a map failed).
    pub done: u64,
    /// Maps that failed (`DMA_MAPPING_ERROR`).
    pub failed_maps: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Simulated time of the whole stream, ns.
    pub ns: u64,
    /// Throughput in MB/s (10^6 bytes per simulated second).
    pub mb_s: f64,
    /// Transfers that went through swiotlb.
    pub bounced: u64,
    /// Time the CPU spent on bounce copies, ns.
    pub copy_ns: u64,
    /// Time the device spent transferring (the CPU waited), ns.
    pub transfer_ns: u64,
    /// Everything else: map/unmap calls and cache maintenance, ns.
    pub other_ns: u64,
    /// The device's rate: bytes moved / transfer time, MB/s.
    pub device_mb_s: f64,
    /// The bounce copy's rate: bytes copied / copy time, MB/s (0 without copies).
    pub copy_mb_s: f64,
    /// The serial model's prediction from the two rates, MB/s.
    pub model_mb_s: f64,
    /// One sentence on where the time went.
    pub explain: String,
    /// A window stream's window: bytes of DMA segments the requests fall in
    /// (absent for the map-transfer-unmap loop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// A window stream's requests in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outstanding: Option<u64>,
    /// A window stream's IOTLB misses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iotlb_misses: Option<u64>,
}

/// A buffer to stream through: one the script owns, or a fresh one of `size`.
#[derive(Debug, Clone, Copy)]
pub enum StreamBuffer {
    /// An existing buffer id (its whole length is each transfer).
    Existing(u64),
    /// Allocate `size` bytes with `GFP_KERNEL` (kmalloc, or whole pages above the
    /// kmalloc caches) for the stream and free it afterwards.
    Fresh(u64),
}

fn mb_s(bytes: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        bytes as f64 * 1000.0 / ns as f64
    }
}

impl System {
    /// The checks every stream starts with: a streaming direction and a device;
    /// the device's name.
    pub(crate) fn stream_device(
        &self,
        dev: usize,
        dir: DmaDirection,
    ) -> Result<std::sync::Arc<str>> {
        if dir != DmaDirection::ToDevice && dir != DmaDirection::FromDevice {
            return Err(SimError::Invalid(
                "stream: the direction is DMA_TO_DEVICE or DMA_FROM_DEVICE".into(),
            ));
        }
        self.kernel
            .devices
            .get(dev)
            .map(|d| d.name.clone())
            .ok_or_else(|| SimError::Invalid(format!("stream: no device #{dev}")))
    }

    /// Streams `count` transfers through one buffer in direction `dir`
    /// (`stream_to_device` / `stream_from_device` in scripts) and records the
    /// result for the report.
    ///
    /// # Errors
    /// [`SimError::Invalid`] for a bad device, direction, buffer or size; the memory cap.
    pub fn stream(
        &mut self,
        dev: usize,
        buf: StreamBuffer,
        count: u64,
        dir: DmaDirection,
    ) -> Result<StreamResult> {
        let name = self.stream_device(dev, dir)?;
        let (id, fresh) = match buf {
            StreamBuffer::Existing(id) => (id, false),
            StreamBuffer::Fresh(size) => {
                if size == 0 || size > crate::system::MAX_ACCESS {
                    return Err(SimError::Invalid(format!(
                        "stream: a transfer is 1 byte to {}",
                        crate::units::human_size(crate::system::MAX_ACCESS)
                    )));
                }
                let id = if size <= KMALLOC_MAX_CACHE_SIZE {
                    self.kmalloc(size, crate::kernel::mm::gfp::GFP_KERNEL)?
                } else {
                    self.alloc_pages(get_order(size), crate::kernel::mm::gfp::GFP_KERNEL)?
                };
                let id = id.ok_or_else(|| {
                    SimError::Invalid(format!("stream: no memory for a {size}-byte buffer"))
                })?;
                (id, true)
            }
        };
        let b = self
            .kernel
            .buffers
            .get(&id)
            .cloned()
            .ok_or_else(|| SimError::Invalid(format!("stream: no buffer #{id}")))?;
        let size = match buf {
            StreamBuffer::Fresh(s) => s,
            StreamBuffer::Existing(_) => b.len,
        };
        if size == 0
            || count == 0
            || count > MAX_STREAM_COUNT
            || size.saturating_mul(count) > MAX_STREAM_BYTES
        {
            return Err(SimError::Invalid(format!(
                "stream: count must be 1..={MAX_STREAM_COUNT} and size × count at most {}",
                crate::units::human_size(MAX_STREAM_BYTES)
            )));
        }
        let pattern: Vec<u8> = (0..size).map(|i| (i as u8) ^ 0x5a).collect();
        let copy0 = self.kernel.devices[dev].bounce.copy_ps;
        let maps0 = self.kernel.devices[dev].bounce.maps;
        let t0 = self.hw.now_ps();
        let (mut transfer_ps, mut done, mut failed) = (0u64, 0u64, 0u64);
        for _ in 0..count {
            let addr = self.dma_map_single(dev, b.va, size, dir)?;
            if self.dma_mapping_error(dev, addr) {
                failed += 1;
                continue;
            }
            let data = (dir == DmaDirection::FromDevice).then(|| pattern.clone());
            let tw = self.hw.now_ps();
            let job = self.dev_start(dev, addr, size, data)?;
            self.wait(job)?;
            transfer_ps += self.hw.now_ps() - tw;
            self.dma_unmap(dev, addr, size, dir, MapKind::Single)?;
            done += 1;
        }
        let total_ps = self.hw.now_ps() - t0;
        if fresh {
            let kind = if size <= KMALLOC_MAX_CACHE_SIZE {
                BufKind::Kmalloc
            } else {
                BufKind::Pages
            };
            self.kfree(id, "stream", kind);
        }
        let t = &self.kernel.devices[dev].bounce;
        let copy_ps = t.copy_ps - copy0;
        let bounced = t.maps - maps0;
        let bytes = done * size;
        let (ns, copy_ns, transfer_ns) = (total_ps / 1000, copy_ps / 1000, transfer_ps / 1000);
        let other_ns = ns.saturating_sub(copy_ns + transfer_ns);
        let device_mb_s = mb_s(bytes, transfer_ns);
        // Bytes the copies moved: one pass per bounced map for transmit, two
        // (in at map, out at unmap) for receive.
        let passes = if dir == DmaDirection::FromDevice {
            2
        } else {
            1
        };
        let copied = bounced * size * passes;
        let copy_mb_s = mb_s(copied, copy_ns);
        let model_mb_s = if bytes == 0 || device_mb_s == 0.0 {
            0.0
        } else if copy_ns == 0 {
            device_mb_s
        } else {
            1.0 / (1.0 / device_mb_s + 1.0 / mb_s(bytes, copy_ns))
        };
        let pct = |x: u64| (x * 100).checked_div(ns).unwrap_or(0);
        let explain = if bounced > 0 {
            format!(
                "{bounced} of {done} transfers bounced: copies took {}% of the time at {copy_mb_s:.0} MB/s, the device {}% at {device_mb_s:.0} MB/s, calls and cache maintenance {}%; not overlapped, so 1/(1/B_dev + 1/B_copy) predicts {model_mb_s:.0} MB/s{}",
                pct(copy_ns),
                pct(transfer_ns),
                pct(other_ns),
                if passes == 2 { " (a receive copies twice: swiotlb_map always copies in, the unmap copies out)" } else { "" }
            )
        } else {
            format!(
                "no bounce: the device {}% of the time at {device_mb_s:.0} MB/s, calls and cache maintenance {}%",
                pct(transfer_ns),
                pct(other_ns)
            )
        };
        let r = StreamResult {
            device: name.to_string(),
            dir: dir.const_name(),
            size,
            count,
            done,
            failed_maps: failed,
            bytes,
            ns,
            mb_s: mb_s(bytes, ns),
            bounced,
            copy_ns,
            transfer_ns,
            other_ns,
            device_mb_s,
            copy_mb_s,
            model_mb_s,
            explain,
            window: None,
            outstanding: None,
            iotlb_misses: None,
        };
        self.streams.push(r.clone());
        self.check_limits()?;
        Ok(r)
    }
}
