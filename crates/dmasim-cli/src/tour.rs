//! `dmasim tour`: built-in scenarios, one per DMA hazard, each run broken and fixed,
//! with what broke, how often over seeds, and what the fix costs.

use dmasim::report::Report;
use dmasim::script::{run_source, ScriptOptions};

/// One stop of the tour.
struct Stop {
    name: &'static str,
    title: &'static str,
    explain: &'static str,
    broken: (&'static str, &'static str),
    fixed: (&'static str, &'static str),
}

macro_rules! scenario {
    ($f:literal) => {
        ($f, include_str!(concat!("../../../scenarios/", $f)))
    };
}

const STOPS: &[Stop] = &[
    Stop {
        name: "virtual-address",
        title: "A CPU virtual address handed to a device",
        explain: "On an MCU a pointer is a bus address. Under Linux the CPU uses virtual addresses; a device sees bus addresses. dma_map_single returns the address the device must use.",
        broken: scenario!("va-as-dma.rhai"),
        fixed: scenario!("tx-before-map.rhai"),
    },
    Stop {
        name: "tx-stale",
        title: "TX: data written after the map stays in the CPU cache",
        explain: "dma_map_single cleans the buffer's lines (DC CVAC) at map time. Stores after it are dirty lines the non-coherent device never sees: it sends old DRAM bytes.",
        broken: scenario!("tx-after-map.rhai"),
        fixed: scenario!("tx-before-map.rhai"),
    },
    Stop {
        name: "rx-stale",
        title: "RX: reading without dma_sync_single_for_cpu",
        explain: "The device writes DRAM; the CPU cache still holds the old lines (kept from before, or refilled by speculative prefetch). dma_sync_single_for_cpu invalidates them.",
        broken: scenario!("rx-no-sync.rhai"),
        fixed: scenario!("rx-sync.rhai"),
    },
    Stop {
        name: "page-pool",
        title: "page_pool: pages mapped once with DMA_ATTR_SKIP_CPU_SYNC owe the device a sync at every reuse",
        explain: "Network drivers map each receive page once and recycle it, with DMA_ATTR_SKIP_CPU_SYNC so that no map does cache work. The syncs are then the driver's: only the received bytes for the CPU, and the page for the device before the NIC gets it again (PP_FLAG_DMA_SYNC_DEV). Without that, lines the CPU wrote (an XDP program rewriting headers) are still dirty when the NIC writes the next packet, and an eviction puts them back over it.",
        broken: scenario!("page-pool-no-sync-dev.rhai"),
        fixed: scenario!("page-pool-no-sync-dev-fixed.rhai"),
    },
    Stop {
        name: "coherent-memory",
        title: "Coherent memory used as CPU working memory",
        explain: "dma_alloc_coherent on a non-coherent SoC maps the buffer non-cacheable: no syncs needed, but every CPU load goes to DRAM. Bulk data the CPU processes belongs in a streaming mapping.",
        broken: scenario!("coherent-vs-streaming.rhai"),
        fixed: scenario!("rx-sync.rhai"),
    },
    Stop {
        name: "noncoherent-memory",
        title: "dma_alloc_noncoherent: cacheable DMA memory, syncs included",
        explain: "dma_alloc_noncoherent gives memory the CPU reads through its caches, at full speed, and leaves the syncs to the driver as for a reused streaming mapping. The allocation zeroes it with ordinary stores: until the first dma_sync_single_for_device those zeros are dirty lines that an eviction can write over what the device wrote.",
        broken: scenario!("noncoherent-rx.rhai"),
        fixed: scenario!("noncoherent-rx-fixed.rhai"),
    },
    Stop {
        name: "user-mmap",
        title: "A driver's mmap of coherent memory must keep its attributes",
        explain: "dma_alloc_coherent memory of a device that does not snoop is uncached in the kernel. A hand-written mmap that calls remap_pfn_range with the default, cacheable vm_page_prot gives the application a cached alias: it keeps reading stale lines and its stores stay in the cache. dma_mmap_coherent maps with the kernel's own attributes. The same cacheable mapping is right on a coherent platform, which is why such drivers pass their tests on one.",
        broken: scenario!("mmap-cacheable-alias.rhai"),
        fixed: scenario!("mmap-cacheable-alias-fixed.rhai"),
    },
    Stop {
        name: "dma-buf",
        title: "dma-buf: one buffer for the CPU, a display and a camera, synced with DMA_BUF_IOCTL_SYNC",
        explain: "A buffer from a dma-buf heap is shared with no copy: each importing driver maps it for its own device, and the process maps it cacheable. The CPU side must bracket every access with DMA_BUF_IOCTL_SYNC (START before, END after), which makes the heap sync each mapped attachment. A compositor that draws without it leaves pixels in its cache, and a non-coherent display controller scans out old ones.",
        broken: scenario!("dmabuf-no-sync.rhai"),
        fixed: scenario!("dmabuf-no-sync-fixed.rhai"),
    },
    Stop {
        name: "dma-pool",
        title: "dma_pool: small coherent blocks whose free list lives in the blocks",
        explain: "Descriptors come from a dma_pool: blocks carved out of dma_alloc_coherent pages. A freed block goes back to the pool, not to the page allocator, so its page stays mapped and the device can still write it; and the pool keeps its free list inside the free blocks. A controller that writes back a descriptor after the driver freed it overwrites that list, and the next dma_pool_alloc returns a block with a bogus DMA handle.",
        broken: scenario!("dma-pool-late-writeback.rhai"),
        fixed: scenario!("dma-pool-late-writeback-fixed.rhai"),
    },
    Stop {
        name: "scatter-gather",
        title: "Scatter-gather: a buffer contiguous in virtual memory is scattered in physical memory",
        explain: "vmalloc and user buffers are built from single pages found anywhere. Without an IOMMU, dma_map_sg returns one DMA segment per physically contiguous run; a device must walk them all.",
        broken: scenario!("sg-no-sg-device.rhai"),
        fixed: scenario!("sg-vmalloc.rhai"),
    },
    Stop {
        name: "unpinned-pages",
        title: "Pages move unless pinned",
        explain: "A user page's physical address is only a snapshot: compaction, migration and swap move the page and hand the frame to someone else. pin_user_pages keeps it in place for as long as a device uses it.",
        broken: scenario!("unpinned-dma.rhai"),
        fixed: scenario!("unpinned-dma-fixed.rhai"),
    },
    Stop {
        name: "cma-pool",
        title: "CMA is a fixed pool reserved at boot",
        explain: "Large physically contiguous buffers come from CMA. Its size is set at boot; movable pages borrow it and are migrated out when a driver needs it, but what is allocated is gone.",
        broken: scenario!("cma-camera.rhai"),
        fixed: scenario!("cma-borrowed.rhai"),
    },
    Stop {
        name: "arm32-zones",
        title: "32-bit ARM: ZONE_DMA runs out while memory is free",
        explain: "GFP_DMA allocations must come from the machine's small ZONE_DMA. Drivers whose devices can address more should set their DMA mask and allocate normally.",
        broken: scenario!("arm32-zone-dma.rhai"),
        fixed: scenario!("arm32-zone-dma-fixed.rhai"),
    },
    Stop {
        name: "iommu-protection",
        title: "Without an IOMMU a device can write anywhere in RAM",
        explain: "A DMA master given a wrong address (a bug, or an attacker's descriptor) writes physical memory directly. Behind an IOMMU it sees only the IOVAs of its own mappings: the SMMU faults the stray access and nothing reaches memory.",
        broken: scenario!("rogue-device.rhai"),
        fixed: scenario!("rogue-device-iommu.rhai"),
    },
    Stop {
        name: "iommu-granularity",
        title: "An IOMMU protects pages, not bytes",
        explain: "The SMMU maps whole 4 KiB pages. A device given a 64-byte kmalloc buffer reaches every other object in that page, a key included, and the IOMMU cannot tell. Give such a device buffers of whole pages; Linux marks external devices untrusted and bounces their sub-page mappings through zero-padded swiotlb slots.",
        broken: scenario!("iommu-subpage-exposure.rhai"),
        fixed: scenario!("iommu-whole-page.rhai"),
    },
    Stop {
        name: "user-dma-no-iommu",
        title: "User-space DMA without an IOMMU is a hole",
        explain: "VFIO's no-IOMMU mode gives a device to a process that programs it with physical addresses from pagemap; nothing stops it from naming kernel memory. With VFIO and an IOMMU the process maps only its own pinned pages at IOVAs, and the same attempt faults.",
        broken: scenario!("vfio-noiommu-exfiltrate.rhai"),
        fixed: scenario!("vfio-iommu-exfiltrate.rhai"),
    },
    Stop {
        name: "v4l2-mmap",
        title: "V4L2 mmap: zero-copy capture buffers, and what their memory type costs",
        explain: "videobuf2 allocates capture buffers in the kernel and the application mmaps the same frames. dma-contig buffers are coherent memory, uncached on a non-coherent SoC: reading frames costs 4x; dma-sg buffers are cached and videobuf2 syncs them at QBUF and when a frame is done.",
        broken: scenario!("v4l2-capture-uncached.rhai"),
        fixed: scenario!("v4l2-capture.rhai"),
    },
    Stop {
        name: "bounce-buffers",
        title: "Bounce buffers: a device that cannot reach the buffer gets a copy",
        explain: "A 32-bit DMA mask with RAM above 4 GiB, or a bus that sees only part of RAM: dma-direct copies the data through the swiotlb pool. Until the sync for the CPU copies it back, the buffer holds old bytes on every platform, coherent or not; and the copies cost throughput until the driver sets the mask the hardware really has.",
        broken: scenario!("bounce-rx-no-sync.rhai"),
        fixed: scenario!("bounce-nic.rhai"),
    },
    Stop {
        name: "coherent-ports",
        title: "Hardware-coherent ports: coherency belongs to each device's port",
        explain: "An IO-coherent port (ACE-Lite, dma-coherent in the device tree) snoops the CPU caches, so a driver without syncs seems to work; a device on a plain port of the same SoC reads and leaves stale lines. Call the syncs everywhere: dma-direct makes them free where the port is coherent.",
        broken: scenario!("coherent-port-mixed.rhai"),
        fixed: scenario!("coherent-port-synced.rhai"),
    },
    Stop {
        name: "vfio",
        title: "VFIO: a device in user space, inside the IOMMU",
        explain: "VFIO_IOMMU_MAP_DMA pins the process's pages and charges them to RLIMIT_MEMLOCK (8 MiB by default); beyond it the map fails with -ENOMEM. A device programmed with an IOVA nobody mapped faults in the SMMU: the IOMMU keeps a user-space driver's mistakes inside its own memory.",
        broken: scenario!("vfio-memlock.rhai"),
        fixed: scenario!("vfio-dma.rhai"),
    },
    Stop {
        name: "poll-mode-driver",
        title: "Poll-mode drivers: user space polls the NIC's ring in hugepages",
        explain: "A DPDK-style driver reads descriptors and frames in place and takes no interrupts: far less CPU per packet than the kernel path. But user space does no cache maintenance: on a non-coherent port the CPU polls stale copies of the ring. Poll-mode drivers need a coherent port.",
        broken: scenario!("pmd-rx-noncoherent.rhai"),
        fixed: scenario!("pmd-rx.rhai"),
    },
];

const TOUR_SEEDS: u64 = 20;

/// The `tour --html` index: a row per stop with its finding ids, how often they
/// were reported and corrupted or exposed data, and links to both reports.
fn index_page(rows: &[(&Stop, String, u64, u64)]) -> String {
    use dmasim::report::html::esc;
    let mut h = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>dmasim tour</title><style>body{font:14px/1.5 system-ui,sans-serif;margin:24px;color:#1d232b}table{border-collapse:collapse}td,th{border-bottom:1px solid #e3e7ec;padding:4px 10px;text-align:left;vertical-align:top}code{font-size:12.5px}</style></head><body><h1>dmasim tour</h1><p>Each stop runs a broken driver over 20 seeds and the fixed one.</p><table><tr><th>stop</th><th>broken variant reports</th><th>reported</th><th>data corrupted or exposed</th><th>reports</th></tr>",
    );
    for (s, ids, reported, manifested) in rows {
        h.push_str(&format!(
            "<tr><td><b>{}</b><br>{}</td><td><code>{}</code></td><td>{reported}/{TOUR_SEEDS}</td><td>{manifested}/{TOUR_SEEDS}</td><td><a href=\"{}-broken.html\">broken</a> · <a href=\"{}-fixed.html\">fixed</a></td></tr>",
            esc(s.name),
            esc(s.title),
            esc(ids),
            s.name,
            s.name
        ));
    }
    h.push_str("</table></body></html>\n");
    h
}

fn ids(r: &Report) -> String {
    let mut v: Vec<&str> = r.findings.iter().map(|f| f.id).collect();
    v.dedup();
    if v.is_empty() {
        "no findings".into()
    } else {
        v.join(", ")
    }
}

/// Runs the tour (all stops, or one) or lists it. Returns the exit code.
pub fn run(name: Option<&str>, list: bool, html: Option<&std::path::Path>) -> Result<u8, String> {
    if list {
        for s in STOPS {
            crate::outln!("{:<18} {}", s.name, s.title);
        }
        return Ok(0);
    }
    let stops: Vec<&Stop> = match name {
        None => STOPS.iter().collect(),
        Some(n) => vec![STOPS
            .iter()
            .find(|s| s.name == n)
            .ok_or_else(|| format!("no tour stop {n:?}; `dmasim tour --list` names them"))?],
    };
    let mut ok = true;
    // Rows of the HTML index: (stop, title, broken ids, reported, manifested).
    let mut index: Vec<(&Stop, String, u64, u64)> = Vec::new();
    for s in stops {
        crate::outln!("== {} — {}\n{}\n", s.name, s.title, s.explain);
        let mut reported = 0;
        let mut manifested = 0;
        let mut first: Option<Report> = None;
        for seed in 0..TOUR_SEEDS {
            let r = run_source(
                s.broken.0,
                s.broken.1,
                &ScriptOptions {
                    seed,
                    ..ScriptOptions::default()
                },
            );
            if r.outcome == dmasim::report::Outcome::Error {
                return Err(format!(
                    "tour stop {}: {}",
                    s.name,
                    r.error.unwrap_or_default()
                ));
            }
            reported += u64::from(!r.findings.is_empty());
            manifested += u64::from(r.findings.iter().any(|f| f.manifested == Some(true)));
            first.get_or_insert(r);
        }
        let first = first.expect("at least one seed");
        crate::outln!("  broken ({}): {}", s.broken.0, ids(&first));
        crate::outln!("    reported on {reported}/{TOUR_SEEDS} seeds; data actually corrupted or exposed on {manifested}/{TOUR_SEEDS}");
        let worst = first
            .findings
            .iter()
            .find(|f| f.severity == dmasim::check::Severity::Error)
            .or(first.findings.first());
        if let Some(f) = worst {
            crate::outln!("    {}\n    help: {}", f.message, f.help);
        }
        for l in first.log.iter().filter(|l| l.contains("script: ")) {
            crate::outln!("    {l}");
        }
        let fixed = run_source(
            s.fixed.0,
            s.fixed.1,
            &ScriptOptions {
                record: html.is_some(),
                ..ScriptOptions::default()
            },
        );
        if let Some(dir) = html {
            let broken = run_source(
                s.broken.0,
                s.broken.1,
                &ScriptOptions {
                    record: true,
                    ..ScriptOptions::default()
                },
            );
            let intro = |variant: &str| {
                format!(
                    "<section><h2>Tour stop {}: {} ({variant})</h2><p>{}</p></section>",
                    dmasim::report::html::esc(s.name),
                    dmasim::report::html::esc(s.title),
                    dmasim::report::html::esc(s.explain)
                )
            };
            for (variant, r) in [("broken", &broken), ("fixed", &fixed)] {
                let path = dir.join(format!("{}-{variant}.html", s.name));
                crate::write_file(
                    &path,
                    &dmasim::report::html::render(r, Some(&intro(variant))),
                )?;
            }
            crate::outln!(
                "  reports: {}/{}-{{broken,fixed}}.html",
                dir.display(),
                s.name
            );
        }
        crate::outln!(
            "  fixed ({}): {}; {} expectation(s) held, simulated time {:.1} µs",
            s.fixed.0,
            ids(&fixed),
            fixed.expectations.passed,
            fixed.stats.sim_time_ns as f64 / 1e3
        );
        for l in fixed.log.iter().filter(|l| l.contains("script: ")) {
            crate::outln!("    {l}");
        }
        crate::outln!("");
        // The fix works when its expectations hold and none of the broken variant's
        // findings is left. (A fixed run may still report something else: behind an
        // IOMMU the attack of the broken variant becomes an iommu-fault.)
        let broken_ids: Vec<&str> = first.findings.iter().map(|f| f.id).collect();
        let fixed_clean = fixed.error.is_none()
            && fixed.expectations.failed == 0
            && !fixed.findings.iter().any(|f| {
                broken_ids.contains(&f.id) && f.severity == dmasim::check::Severity::Error
            });
        ok &= fixed_clean && reported == TOUR_SEEDS;
        index.push((s, ids(&first), reported, manifested));
    }
    if let Some(dir) = html {
        crate::write_file(&dir.join("index.html"), &index_page(&index))?;
        crate::outln!("Tour reports: {}/index.html", dir.display());
    }
    // One stop: its own scenario; the whole tour: the classic first one.
    let example = match index.as_slice() {
        [(s, ..)] => s.broken.0,
        _ => "rx-no-sync.rhai",
    };
    crate::outln!("Run one yourself: cargo run --release -- run scenarios/{example}");
    Ok(if ok { 0 } else { 1 })
}
