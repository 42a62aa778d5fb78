//! `dmasim replay TRACE`: an ftrace capture of the `dma:` events replayed through
//! the model (`docs/replay.md`), as text or `dmasim.replay/v1` JSON, on one
//! configuration or several side by side (`--compare`).

use std::path::{Path, PathBuf};

use dmasim::replay::{self, Placement, ReplayOptions, ReplayReport};
use dmasim::units::human_size;

use crate::{emit, outln};

/// The arguments of `dmasim replay`.
pub(crate) struct Args {
    pub trace: PathBuf,
    pub preset: Option<String>,
    pub set: Vec<(String, String)>,
    pub device_map: Vec<String>,
    pub placement: String,
    pub compare: Vec<String>,
    pub json: bool,
    pub no_pci_txt: bool,
    pub no_pool_txt: bool,
    pub html: Option<PathBuf>,
}

/// `NAME=k=v,...` → (NAME, "k=v,...").
fn parse_device_map(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, o)) if !n.trim().is_empty() => Ok((n.trim().to_string(), o.to_string())),
        _ => Err(format!(
            "--device-map {s:?}: expected NAME=OPTIONS, e.g. 0000:00:06.0=mask=32 or '*=coherent=false'"
        )),
    }
}

/// The kit's `pci.txt` beside the trace (`0000:00:06.0 ... driver=e1000 ...
/// dma_mask_bits=32 ...`): each device's mask as the guest had it, and NVMe's
/// `min_align_mask` (drivers/nvme/host/pci.c `nvme_pci_alloc_dev`:
/// `dma_set_min_align_mask(NVME_CTRL_PAGE_SIZE - 1)`).
pub(crate) fn pci_txt_options(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next().filter(|n| replay::is_pci_name(n)) else {
            continue;
        };
        let mut opts = Vec::new();
        for w in words {
            match w.split_once('=') {
                Some(("dma_mask_bits", b))
                    if b.parse::<u32>().is_ok_and(|b| (8..=64).contains(&b)) =>
                {
                    opts.push(format!("mask={b}"));
                }
                Some(("driver", "nvme")) => opts.push("min_align_mask=0xfff".into()),
                _ => {}
            }
        }
        if !opts.is_empty() {
            out.push((name.to_string(), opts.join(",")));
        }
    }
    out
}

/// The kit's `iommu_groups.txt` (`group 6 type=DMA devices: 0000:00:01.0`): when
/// it lists any group, the devices in a translating group (`DMA`, `DMA-FQ`) sit
/// behind the IOMMU and every other device (the SMMU itself, a device in an
/// `identity` group, one with no group) does not.
pub(crate) fn iommu_groups_options(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((head, devs)) = line.split_once("devices:") else {
            continue;
        };
        let translating = head
            .split_whitespace()
            .any(|w| w == "type=DMA" || w == "type=DMA-FQ");
        for d in devs.split_whitespace() {
            out.push((d.to_string(), format!("iommu={translating}")));
        }
    }
    if !out.is_empty() {
        out.insert(0, ("*".to_string(), "iommu=false".to_string()));
    }
    out
}

/// What the capture kit's files beside the trace say, read once for every
/// configuration of a `--compare`: device options from `pci.txt`,
/// `iommu_groups.txt` and `iomem.txt` + the trace's `iommu:map` events (the MSI
/// doorbell), then the user's `--device-map`; the captured kernel's swiotlb pool.
struct Capture {
    device_map: Vec<(String, String)>,
    pool: Option<replay::CapturePool>,
}

fn capture_files(a: &Args, trace_bytes: &[u8]) -> Result<Capture, String> {
    let dir = a.trace.parent().unwrap_or(Path::new("."));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let mut device_map = Vec::new();
    if !a.no_pci_txt {
        if let Some(text) = read("pci.txt") {
            device_map.extend(pci_txt_options(&text));
        }
        if let Some(text) = read("iommu_groups.txt") {
            device_map.extend(iommu_groups_options(&text));
        }
        // arm64's MSI doorbell page, mapped into each device's domain at probe.
        if let Some(iomem) = read("iomem.txt") {
            let ram = replay::capture::system_ram(&iomem);
            let text = String::from_utf8_lossy(trace_bytes);
            if let Some(pa) = replay::capture::msi_doorbell(&text, &ram) {
                device_map.push(("*".into(), format!("msi_doorbell={pa:#x}")));
            }
        }
    }
    for d in &a.device_map {
        device_map.push(parse_device_map(d)?);
    }
    // The captured kernel's swiotlb pool: the kit's swiotlb_pool.txt, else dmesg.
    let pool = if a.no_pool_txt {
        None
    } else {
        ["swiotlb_pool.txt", "dmesg.txt"]
            .iter()
            .filter_map(|f| read(f))
            .find_map(|t| replay::capture_pool(&t))
    };
    Ok(Capture { device_map, pool })
}

fn options(
    a: &Args,
    label_preset: Option<&str>,
    set: &[(String, String)],
    capture: &Capture,
) -> Result<ReplayOptions, String> {
    Ok(ReplayOptions {
        preset: label_preset
            .map(str::to_string)
            .or_else(|| a.preset.clone())
            .unwrap_or_else(|| "x86-64".into()),
        set: set.to_vec(),
        device_map: capture.device_map.clone(),
        placement: Placement::parse(&a.placement).map_err(|e| format!("--placement: {e}"))?,
        seed: 0,
        capture_pool: capture.pool,
        timeline: a.html.is_some(),
    })
}

/// Runs the subcommand; the exit code.
pub(crate) fn run(a: &Args) -> Result<u8, String> {
    let bytes = std::fs::read(&a.trace).map_err(|e| format!("{}: {e}", a.trace.display()))?;
    let name = a.trace.display().to_string();
    let bytes = replay::parse::decompress(bytes).map_err(|e| format!("{name}: {e}"))?;
    let capture = capture_files(a, &bytes)?;
    if a.compare.is_empty() {
        let r = replay::replay_bytes(&bytes, &name, &options(a, None, &a.set, &capture)?)
            .map_err(|e| format!("{name}: {e}"))?;
        if let Some(path) = &a.html {
            std::fs::write(path, replay::html::render(&r))
                .map_err(|e| format!("--html {}: {e}", path.display()))?;
        }
        if a.json {
            outln!(
                "{}",
                serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
            );
        } else {
            emit(&render(&r));
        }
        return Ok(r.exit_code() as u8);
    }
    if a.html.is_some() {
        return Err("--html draws one replay: leave out --compare".into());
    }
    if a.compare.len() > dmasim::compare::MAX_CONFIGS {
        return Err(format!(
            "--compare: at most {} configurations",
            dmasim::compare::MAX_CONFIGS
        ));
    }
    let mut reports = Vec::new();
    for c in &a.compare {
        let cfg = dmasim::compare::Config::parse(c).map_err(|e| format!("--compare {e}"))?;
        let mut set = a.set.clone();
        set.extend(cfg.set.iter().cloned());
        let r = replay::replay_bytes(&bytes, &name, &options(a, cfg.preset, &set, &capture)?)
            .map_err(|e| format!("--compare {c}: {e}"))?;
        reports.push((cfg.label, r));
    }
    if a.json {
        let v: Vec<serde_json::Value> = reports
            .iter()
            .map(|(l, r)| serde_json::json!({ "label": l, "report": r }))
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "schema": "dmasim.replay-compare/v1",
                "trace": name,
                "columns": v,
            }))
            .map_err(|e| e.to_string())?
        );
    } else {
        emit(&render_compare(&reports));
    }
    Ok(reports
        .iter()
        .map(|(_, r)| r.exit_code())
        .max()
        .unwrap_or(0) as u8)
}

fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

/// The text report of one replay.
pub(crate) fn render(r: &ReplayReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let c = &r.counts;
    let _ = writeln!(
        o,
        "{}: replayed on {} ({} RAM at {:#x}, iommu {}, placement {:?})",
        r.trace,
        r.config,
        human_size(r.platform.ram),
        r.platform.ram_base,
        r.platform.iommu,
        r.placement
    );
    let _ = writeln!(
        o,
        "  events {}: replayed {} (maps {}, sg maps {}, allocations {}, syncs {}); unmatched {}, failed in the trace {}, not modelled {}, unplaced {}, after a model failure {}, truncated sg {}; other lines {}, unreadable {}",
        c.events, c.replayed, c.maps, c.sg_maps, c.allocs, c.syncs, c.unmatched, c.failed_in_trace, c.not_modelled, c.unplaced, c.after_failure, c.truncated_sg, c.skipped_lines, c.bad_lines
    );
    if let Some((no, why)) = &r.first_bad_line {
        let _ = writeln!(o, "  first unreadable line {no}: {why}");
    }
    let f = &r.fidelity;
    let _ = writeln!(
        o,
        "  addresses: {} of {} equal to the trace's ({:.2} %); sg segments {} of {} equal",
        f.equal,
        f.compared,
        r.agreement_percent(),
        f.sg_segments_equal,
        f.sg_segments
    );
    if let Some(p) = &r.swiotlb_pool {
        let _ = writeln!(
            o,
            "  swiotlb pool [{:#x}-{:#x}) placed by the {}{}{}",
            p.start,
            p.end,
            if p.from == "capture" {
                "capture's kernel"
            } else {
                "model"
            },
            if p.note.is_some() { ": " } else { "" },
            p.note.as_deref().unwrap_or("")
        );
    }
    if f.slots_compared > 0 {
        let _ = writeln!(
            o,
            "  swiotlb slot addresses: {} of {} equal ({:.2} %)",
            f.slots_equal,
            f.slots_compared,
            f.slots_equal as f64 * 100.0 / f.slots_compared as f64
        );
    }
    for d in &f.first_differences {
        let _ = writeln!(
            o,
            "    line {} {} {} {} bytes: trace {:#x}, model {:#x}",
            d.line, d.device, d.call, d.size, d.trace, d.model
        );
    }
    let s = &r.stats;
    let _ = writeln!(
        o,
        "  swiotlb: {} maps bounced, {} copied, slots used at most {} of {}, full {} times",
        s.bounced_maps,
        human_size(s.bounce_bytes),
        r.swiotlb_slots_hiwater,
        s.swiotlb.slots_total,
        s.swiotlb.full_errors
    );
    if let Some(ff) = &r.first_failure {
        let _ = writeln!(
            o,
            "  first failing call: line {} {} {} ({} bytes): {}",
            ff.line, ff.device, ff.call, ff.size, ff.why
        );
    }
    let _ = writeln!(
        o,
        "  iommu: {} maps, {} unmaps, IOTLB {} hits / {} misses, {} walks, {} faults; IOVA pages allocated at most {}",
        s.iommu.maps,
        s.iommu.unmaps,
        s.iommu.iotlb_hits,
        s.iommu.iotlb_misses,
        s.iommu.walks,
        s.iommu.faults,
        r.iova_pages_hiwater
    );
    let zones: Vec<String> = r
        .zones
        .iter()
        .map(|z| {
            format!(
                "{} {} of {} (min watermark {})",
                z.zone, z.free_min_pages, z.managed_pages, z.watermark_min_pages
            )
        })
        .collect();
    let _ = writeln!(
        o,
        "  memory: CMA {} of {} pages at most, {} failures; fewest free pages after an allocation: {}",
        s.cma.used_pages,
        s.cma.total_pages,
        s.cma.failures,
        zones.join(", ")
    );
    let t = &r.time;
    let _ = writeln!(
        o,
        "  time: DMA API {}, bounce copies {}, transfers {}; {} moved, {:.1} MB/s",
        ms(t.dma_api_ns),
        ms(t.bounce_copy_ns),
        ms(t.transfer_ns),
        human_size(s.dma_bytes),
        t.throughput_mb_s
    );
    let _ = writeln!(
        o,
        "  {:<18} {:>4} {:>5} {:>6} {:>7} {:>8} {:>14} {:>14} {:>6}",
        "device", "mask", "iommu", "maps", "bounced", "trace-b", "bounced bytes", "moved", "live"
    );
    for d in &r.devices {
        let _ = writeln!(
            o,
            "  {:<18} {:>4} {:>5} {:>6} {:>7} {:>8} {:>14} {:>14} {:>6}",
            d.name,
            d.mask_bits,
            if d.iommu { "yes" } else { "no" },
            d.maps,
            d.bounced_maps,
            d.trace_bounced,
            human_size(d.bounced_bytes),
            human_size(d.dma_bytes),
            d.live_at_end
        );
    }
    let _ = writeln!(
        o,
        "  findings: {} errors, {} warnings, {} in all",
        r.errors,
        r.warnings,
        r.findings.len()
    );
    for f in r.findings.iter().take(20) {
        let _ = writeln!(
            o,
            "    {:?} {} (line {}): {}",
            f.severity, f.id, f.line, f.message
        );
    }
    o
}

/// A row of the side-by-side table: its label and how a report shows it.
type Row = (&'static str, Box<dyn Fn(&ReplayReport) -> String>);

/// Several replays side by side.
fn render_compare(rs: &[(String, ReplayReport)]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let widths: Vec<usize> = rs.iter().map(|(l, _)| l.len().max(12)).collect();
    let _ = write!(o, "{:<24}", "");
    for ((l, _), w) in rs.iter().zip(&widths) {
        let _ = write!(o, " {l:>w$}");
    }
    o.push('\n');
    let rows: Vec<Row> = vec![
        ("error findings", Box::new(|r| r.errors.to_string())),
        ("warnings", Box::new(|r| r.warnings.to_string())),
        (
            "maps replayed",
            Box::new(|r| (r.counts.maps + r.counts.sg_maps).to_string()),
        ),
        (
            "model failures",
            Box::new(|r| r.counts.model_failures.to_string()),
        ),
        (
            "bounced maps",
            Box::new(|r| r.stats.bounced_maps.to_string()),
        ),
        (
            "bounced bytes",
            Box::new(|r| human_size(r.stats.bounce_bytes)),
        ),
        (
            "swiotlb slots max/all",
            Box::new(|r| {
                format!(
                    "{}/{}",
                    r.swiotlb_slots_hiwater, r.stats.swiotlb.slots_total
                )
            }),
        ),
        (
            "swiotlb full",
            Box::new(|r| r.stats.swiotlb.full_errors.to_string()),
        ),
        (
            "first failure (line)",
            Box::new(|r| {
                r.first_failure
                    .as_ref()
                    .map_or("-".into(), |f| f.line.to_string())
            }),
        ),
        (
            "IOTLB misses",
            Box::new(|r| r.stats.iommu.iotlb_misses.to_string()),
        ),
        (
            "IOVA pages max",
            Box::new(|r| r.iova_pages_hiwater.to_string()),
        ),
        (
            "CMA pages max/all",
            Box::new(|r| format!("{}/{}", r.stats.cma.used_pages, r.stats.cma.total_pages)),
        ),
        (
            "DMA zones free min",
            Box::new(|r| {
                let z: Vec<String> = r
                    .zones
                    .iter()
                    .filter(|z| z.zone.starts_with("DMA"))
                    .map(|z| format!("{} {}", z.zone, z.free_min_pages))
                    .collect();
                if z.is_empty() {
                    "-".into()
                } else {
                    z.join(", ")
                }
            }),
        ),
        (
            "addresses equal",
            Box::new(|r| format!("{:.1} %", r.agreement_percent())),
        ),
        ("DMA API time", Box::new(|r| ms(r.time.dma_api_ns))),
        ("bounce copy time", Box::new(|r| ms(r.time.bounce_copy_ns))),
        ("transfer time", Box::new(|r| ms(r.time.transfer_ns))),
        (
            "throughput MB/s",
            Box::new(|r| format!("{:.1}", r.time.throughput_mb_s)),
        ),
    ];
    for (label, f) in rows {
        let _ = write!(o, "{label:<24}");
        for ((_, r), w) in rs.iter().zip(&widths) {
            let _ = write!(o, " {:>w$}", f(r));
        }
        o.push('\n');
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_txt_gives_masks_and_nvme_min_align_mask() {
        let t = "0000:00:01.0 vendor=0x1b36 device=0x0010 class=0x010802 driver=nvme iommu_group=1 dma_mask_bits=64 consistent_dma_mask_bits=64\n\
                 0000:00:06.0 vendor=0x8086 driver=e1000 dma_mask_bits=32\nnot a device line\n";
        let o = pci_txt_options(t);
        assert_eq!(
            o,
            [
                (
                    "0000:00:01.0".to_string(),
                    "min_align_mask=0xfff,mask=64".to_string()
                ),
                ("0000:00:06.0".to_string(), "mask=32".to_string())
            ]
        );
    }
}
