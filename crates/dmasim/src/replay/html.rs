//! `dmasim replay --html FILE`: one self-contained page (no network, no external
//! files) with the replay's summary, a timeline of every mapping's life per device
//! on the trace's clock (map to unmap, allocation to free; bounced ones marked),
//! and the occupancy of the swiotlb pool and of the IOVA spaces over time. The
//! page carries the same render check as the run reports' (`data-render` on
//! `<body>`), which the headless-browser tests read.

use std::fmt::Write as _;

use super::timeline::{SpanKind, Timeline};
use super::ReplayReport;
use crate::report::html::{esc, CHECK_SCRIPT, STYLE};
use crate::units::human_size;

const WIDTH: f64 = 990.0;
const LABEL: f64 = 150.0;
const LANE: f64 = 22.0;

fn x_of(t: &Timeline, ts: u64) -> f64 {
    let span = (t.t1_ns - t.t0_ns) as f64;
    LABEL + (ts.saturating_sub(t.t0_ns) as f64 / span).min(1.0) * (WIDTH - LABEL - 10.0)
}

fn color(kind: SpanKind, bounced: bool) -> &'static str {
    match (kind, bounced) {
        (_, true) => "#8e5cc7",
        (SpanKind::Map, false) => "#3b82c4",
        (SpanKind::Sg, false) => "#2f9e8f",
        (SpanKind::Alloc, false) => "#d9534f",
    }
}

/// The time axis under a chart at `y`.
fn axis(h: &mut String, t: &Timeline, y: f64) {
    let _ = write!(
        h,
        r##"<line x1="{LABEL}" y1="{y}" x2="{}" y2="{y}" stroke="#8a96a3"/>"##,
        WIDTH - 10.0
    );
    for i in 0..=5 {
        let ts = t.t0_ns + (t.t1_ns - t.t0_ns) * i / 5;
        let x = x_of(t, ts);
        let anchor = if i == 5 { "end" } else { "middle" };
        let _ = write!(
            h,
            r##"<line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{}" stroke="#8a96a3"/><text x="{x:.1}" y="{}" text-anchor="{anchor}">{:.3} s</text>"##,
            y + 4.0,
            y + 16.0,
            ts as f64 / 1e9
        );
    }
}

fn lanes(h: &mut String, r: &ReplayReport, t: &Timeline) {
    let n = r.devices.len().max(1);
    let height = n as f64 * LANE + 30.0;
    let _ = write!(
        h,
        r#"<svg class="chk" id="mappings" width="990" height="{height}" viewBox="0 0 990 {height}" role="img" aria-label="mappings per device">"#
    );
    for (i, d) in r.devices.iter().enumerate() {
        let y = i as f64 * LANE;
        let _ = write!(
            h,
            r##"<rect x="{LABEL}" y="{y}" width="{}" height="{}" fill="{}"/><text x="4" y="{}">{}</text>"##,
            WIDTH - LABEL - 10.0,
            LANE - 2.0,
            if i % 2 == 0 { "#f1f4f7" } else { "#fafbfc" },
            y + 14.0,
            esc(&d.name)
        );
    }
    for s in &t.spans {
        let y = s.dev as f64 * LANE
            + match s.kind {
                SpanKind::Alloc => 2.0,
                SpanKind::Map => 8.0,
                SpanKind::Sg => 14.0,
            };
        let x0 = x_of(t, s.start_ns);
        let x1 = x_of(t, s.end_ns.unwrap_or(t.t1_ns)).max(x0 + 1.0);
        let _ = write!(
            h,
            r#"<rect x="{x0:.1}" y="{y}" width="{:.1}" height="5" fill="{}" fill-opacity="0.55"><title>line {}: {} bytes{}{}</title></rect>"#,
            x1 - x0,
            color(s.kind, s.bounced),
            s.line,
            s.bytes,
            if s.bounced { ", bounced" } else { "" },
            if s.end_ns.is_none() {
                ", live at the end"
            } else {
                ""
            }
        );
    }
    axis(h, t, n as f64 * LANE + 2.0);
    h.push_str("</svg>");
}

fn occupancy(h: &mut String, t: &Timeline, id: &str, what: &str, values: &[u64], total: u64) {
    // Scaled to the peak, not the pool: a 32768-slot pool used to 4000 would be a
    // flat line (the label says the total).
    let top = values.iter().copied().max().unwrap_or(0).max(1);
    let label = if total > 0 {
        format!("{top} of {total} {what}")
    } else {
        format!("{top} {what}")
    };
    let (chart, height) = (120.0, 150.0);
    let _ = write!(
        h,
        r##"<svg class="chk" id="{id}" width="990" height="{height}" viewBox="0 0 990 {height}" role="img" aria-label="{what}"><rect x="{LABEL}" y="0" width="{}" height="{chart}" fill="#f6f7f9"/><text x="4" y="14">{}</text><text x="4" y="{chart}">0</text>"##,
        WIDTH - LABEL - 10.0,
        esc(&label)
    );
    let n = values.len().max(2);
    let mut path = format!("M{LABEL},{chart}");
    for (i, &v) in values.iter().enumerate() {
        let x = LABEL + i as f64 / (n - 1) as f64 * (WIDTH - LABEL - 10.0);
        let y = chart - v as f64 / top as f64 * chart;
        let _ = write!(path, " L{x:.1},{y:.1}");
    }
    let _ = write!(path, " L{},{chart} Z", WIDTH - 10.0);
    let _ = write!(h, r##"<path d="{path}" fill="#c7a4e8" stroke="#8e5cc7"/>"##);
    axis(h, t, chart + 2.0);
    h.push_str("</svg>");
}

/// The page.
pub fn render(r: &ReplayReport) -> String {
    let mut h = String::with_capacity(256 << 10);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>dmasim replay: {}</title><style>{STYLE}</style></head><body>",
        esc(&r.trace)
    );
    let (verdict, class) = if r.errors > 0 {
        ("FAILED", "bad")
    } else {
        ("ok", "ok")
    };
    let f = &r.fidelity;
    let _ = write!(
        h,
        "<header><h1>dmasim replay: {}</h1><p>{} · {} RAM · <span class=\"{class}\">{verdict}</span>: {} error(s), {} warning(s) · {} events, {} replayed · addresses {} of {} equal to the trace's</p></header><main>",
        esc(&r.trace),
        esc(&r.config),
        human_size(r.platform.ram),
        r.errors,
        r.warnings,
        r.counts.events,
        r.counts.replayed,
        f.equal,
        f.compared
    );
    match &r.timeline {
        None => h.push_str("<section><p>No timeline was collected.</p></section>"),
        Some(t) => {
            let _ = write!(
                h,
                "<section id=\"timeline\"><h2>Mappings per device</h2><p class=\"legend\"><span><i class=\"sw\" style=\"background:#d9534f\"></i>coherent / noncoherent allocation</span><span><i class=\"sw\" style=\"background:#3b82c4\"></i>dma_map_page</span><span><i class=\"sw\" style=\"background:#2f9e8f\"></i>dma_map_sg</span><span><i class=\"sw\" style=\"background:#8e5cc7\"></i>bounced through swiotlb</span></p><p>Each bar is one mapping's life on the trace's clock, from its map (or allocation) to its unmap (or free); a bar reaching the right edge was still live when tracing stopped. {} lives drawn{}.</p>",
                t.spans.len(),
                if t.dropped > 0 {
                    format!(", {} more not drawn", t.dropped)
                } else {
                    String::new()
                }
            );
            lanes(&mut h, r, t);
            h.push_str("</section>");
            if t.swiotlb_total > 0 {
                h.push_str("<section id=\"swiotlb\"><h2>swiotlb slots in use</h2>");
                let _ = write!(
                    h,
                    "<p>The most slots (2 KiB each) in use at once in each slice of time; the pool has {} slots, {} at most were in use.</p>",
                    t.swiotlb_total, r.swiotlb_slots_hiwater
                );
                occupancy(
                    &mut h,
                    t,
                    "swiotlb-slots",
                    "slots",
                    &t.swiotlb_slots,
                    t.swiotlb_total,
                );
                h.push_str("</section>");
            }
            if t.iova_pages.iter().any(|&v| v > 0) {
                h.push_str("<section id=\"iova\"><h2>IOVA space allocated</h2><p>4 KiB IOVA pages allocated in all domains (ranges held by the per-CPU caches included), the most in each slice of time.</p>");
                occupancy(&mut h, t, "iova-pages", "IOVA pages", &t.iova_pages, 0);
                h.push_str("</section>");
            }
        }
    }
    h.push_str("<section><h2>Devices</h2><table><tr><th>device</th><th>mask</th><th>IOMMU</th><th>maps</th><th>bounced</th><th>bytes moved</th><th>live at end</th></tr>");
    for d in &r.devices {
        let _ = write!(
            h,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.name),
            d.mask_bits,
            if d.iommu { "yes" } else { "no" },
            d.maps,
            d.bounced_maps,
            human_size(d.dma_bytes),
            d.live_at_end
        );
    }
    h.push_str("</table></section>");
    if !r.findings.is_empty() {
        h.push_str("<section><h2>Findings</h2>");
        for fi in r.findings.iter().take(100) {
            let _ = write!(
                h,
                "<div class=\"finding\"><span class=\"id\">{}</span> (line {}): {}</div>",
                esc(fi.id),
                fi.line,
                esc(&fi.message)
            );
        }
        h.push_str("</section>");
    }
    h.push_str("</main><script>");
    h.push_str(CHECK_SCRIPT);
    h.push_str("</script></body></html>");
    h
}
