//! `--html`: one self-contained HTML page per run — no network, no external files.
//! Summary and findings with their history; an SVG map of physical memory (zones,
//! CMA, swiotlb, hugepages, every buffer's frames, scattered buffers visibly
//! scattered); for each memory finding the buffer's cache lines at that moment
//! beside DRAM and the truth; a timeline of CPU calls, device transfers, maps,
//! syncs, faults and background events; charts of the stats.
//!
//! A few lines of script check on load that every picture rendered with a size and
//! record it (and any script error) on `<body>` as `data-render` / `data-errors`,
//! which the headless-browser test reads.

use std::fmt::Write as _;

use super::text::time;
use super::visual::{LineSnapshot, Visual};
use super::Report;
use crate::units::human_size;

/// Events drawn on the timeline at most (the trace file has them all).
const MAX_DRAWN_EVENTS: usize = 6000;
/// Buffer rows drawn on the memory map at most.
const MAX_BUFFER_ROWS: usize = 48;

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

pub(crate) const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px} header p{margin:4px 0 0;color:#c9d4df}
main{padding:8px 24px 40px;max-width:1180px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;margin:16px 0;padding:12px 16px}
h2{font-size:16px;margin:4px 0 10px}
.ok{color:#17803d}.bad{color:#b42318}.warn{color:#b54708}
.finding{border-left:4px solid #b42318;padding:6px 12px;margin:12px 0;background:#fffafa}
.finding.warning{border-color:#b54708;background:#fffcf5}.finding.info{border-color:#2e6fb7;background:#f7fbff}
.finding .id{font-weight:600;font-family:ui-monospace,monospace}
table{border-collapse:collapse;font-size:12.5px}td,th{border-bottom:1px solid #eceff3;padding:2px 8px;text-align:left;vertical-align:top}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:4px;vertical-align:-1px}
pre.log{max-height:280px;overflow:auto;background:#0f1720;color:#d7e0ea;padding:10px;border-radius:4px;font-size:12px}
svg text{font:11px system-ui,sans-serif;fill:#2b3440}
"#;

pub(crate) const CHECK_SCRIPT: &str = r#"
(function(){
  var errs=[];window.addEventListener('error',function(e){errs.push(String(e.message));document.body.setAttribute('data-errors',errs.join(' | '));});
  function check(){
    var bad=[],svgs=document.querySelectorAll('svg.chk');
    svgs.forEach(function(s){var b=s.getBBox();if(!(b.width>0&&b.height>0)||s.querySelectorAll('rect,path,line,circle').length===0)bad.push(s.id);});
    document.body.setAttribute('data-svgs',String(svgs.length));
    document.body.setAttribute('data-render',bad.length?('empty:'+bad.join(',')):'ok');
    if(!document.body.hasAttribute('data-errors'))document.body.setAttribute('data-errors','');
  }
  if(document.readyState==='loading')document.addEventListener('DOMContentLoaded',check);else check();
})();
"#;

fn color_of_kind(kind: &str) -> &'static str {
    match kind {
        "zone" => "#dbe4ee",
        "cma" => "#f5c26b",
        "swiotlb" => "#c7a4e8",
        "hugepages" => "#9fd3c7",
        "kmalloc" => "#3b82c4",
        "pages" => "#2f9e8f",
        "coherent" => "#d9534f",
        "noncoherent" => "#b5527a",
        "noncontiguous" => "#8c6d3f",
        "dma-buf" => "#c2417a",
        "vmalloc" => "#e07b22",
        "user" => "#7a5cc2",
        "kernel" => "#56606b",
        _ => "#8895a3",
    }
}

fn color_of_cat(cat: &str) -> &'static str {
    match cat {
        "call" => "#5b7db1",
        "dma" => "#2f9e8f",
        "copy" => "#e07b22",
        "map" => "#3b82c4",
        "unmap" => "#6c757d",
        "sync" => "#8e44ad",
        "fault" => "#b42318",
        "background" => "#b0b8c2",
        "finding" => "#b42318",
        _ => "#8895a3",
    }
}

/// The memory map over `[base, base+size)`: RAM, regions, and one row per buffer
/// with its physical runs.
fn memory_map(v: &Visual, id: &str, base: u64, size: u64) -> String {
    let size = size.max(1);
    let (x0, w) = (210.0, 760.0);
    let x = |pa: u64| x0 + (pa.saturating_sub(base)) as f64 / size as f64 * w;
    let wid = |len: u64| (len as f64 / size as f64 * w).max(1.5);
    let rows = v.buffers.len().min(MAX_BUFFER_ROWS);
    let height = 80 + rows * 16 + 20;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chk" id="{id}" width="990" height="{height}" viewBox="0 0 990 {height}" role="img" aria-label="physical memory map">"#
    );
    let _ = write!(
        s,
        r##"<text x="4" y="16">{} {}</text><rect x="{x0}" y="6" width="{w}" height="14" fill="#eef1f4" stroke="#b7c0ca"><title>{:#x}–{:#x} ({})</title></rect>"##,
        if (base, size) == v.ram { "RAM" } else { "zoom" },
        human_size(size),
        base,
        base + size,
        human_size(size)
    );
    let _ = write!(
        s,
        r#"<text x="{x0}" y="34">{:#x}</text><text x="{}" y="34" text-anchor="end">{:#x}</text>"#,
        base,
        x0 + w,
        base + size
    );
    // Regions: zones on one row, the pools on the next.
    for r in v
        .regions
        .iter()
        .filter(|r| r.start < base + size && r.start + r.len > base)
    {
        let (start, end) = (r.start.max(base), (r.start + r.len).min(base + size));
        let r = &super::visual::Region {
            start,
            len: end - start,
            ..r.clone()
        };
        let y = if r.kind == "zone" { 40 } else { 56 };
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{y}" width="{:.1}" height="13" fill="{}" stroke="#7c8a99" stroke-width="0.5"><title>{} {:#x}–{:#x} ({})</title></rect>"##,
            x(r.start),
            wid(r.len),
            color_of_kind(r.kind),
            esc(&r.label),
            r.start,
            r.start + r.len,
            human_size(r.len)
        );
        if wid(r.len) > 40.0 {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{}">{}</text>"#,
                x(r.start) + 3.0,
                y + 10,
                esc(&r.label)
            );
        }
    }
    let _ = write!(
        s,
        r#"<text x="4" y="50">zones</text><text x="4" y="66">CMA, swiotlb, hugepages</text>"#
    );
    for (i, b) in v.buffers.iter().take(rows).enumerate() {
        let y = 80 + i * 16;
        let label = format!(
            "{}{} ({}, {} run{})",
            b.label,
            if b.freed { " (freed)" } else { "" },
            human_size(b.len),
            b.runs.len(),
            if b.runs.len() == 1 { "" } else { "s" }
        );
        let _ = write!(s, r#"<text x="4" y="{}">{}</text>"#, y + 10, esc(&label));
        let _ = write!(
            s,
            r##"<line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="#eef1f4"/>"##,
            y + 6,
            x0 + w,
            y + 6
        );
        for &(pa, len) in b
            .runs
            .iter()
            .filter(|(pa, len)| *pa < base + size && pa + len > base)
            .take(4096)
        {
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{y}" width="{:.1}" height="12" fill="{}" opacity="{}"><title>{} {:#x}–{:#x}</title></rect>"#,
                x(pa),
                wid(len),
                color_of_kind(b.kind),
                if b.freed { "0.35" } else { "0.95" },
                esc(&b.label),
                pa,
                pa + len
            );
        }
    }
    if v.buffers.len() > rows {
        let _ = write!(
            s,
            r#"<text x="4" y="{}">… and {} more buffers</text>"#,
            80 + rows * 16 + 12,
            v.buffers.len() - rows
        );
    }
    s.push_str("</svg>");
    s
}

/// The timeline: a track per CPU, device, background and findings.
fn timeline(v: &Visual, end_ns: u64) -> String {
    let mut tracks: Vec<&str> = Vec::new();
    for e in &v.events {
        if !tracks.contains(&e.track.as_str()) {
            tracks.push(&e.track);
        }
    }
    // CPUs first, findings last.
    tracks.sort_by_key(|t| {
        (
            if t.starts_with("CPU") {
                0
            } else if *t == "background" {
                2
            } else if *t == "findings" {
                3
            } else {
                1
            },
            t.to_string(),
        )
    });
    let end = end_ns
        .max(
            v.events
                .iter()
                .map(|e| e.t_ns + e.dur_ns)
                .max()
                .unwrap_or(1),
        )
        .max(1);
    let (x0, w) = (110.0, 860.0);
    let x = |t: u64| x0 + t as f64 / end as f64 * w;
    let height = 30 + tracks.len() * 26 + 20;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chk" id="timeline" width="990" height="{height}" viewBox="0 0 990 {height}" role="img" aria-label="timeline">"#
    );
    for k in 0..=4u64 {
        let t = end * k / 4;
        let _ = write!(
            s,
            r##"<line x1="{:.1}" y1="18" x2="{:.1}" y2="{}" stroke="#eceff3"/><text x="{:.1}" y="13" text-anchor="{}">{}</text>"##,
            x(t),
            x(t),
            height - 10,
            x(t),
            match k {
                0 => "start",
                4 => "end",
                _ => "middle",
            },
            time(t)
        );
    }
    for (i, t) in tracks.iter().enumerate() {
        let y = 26 + i * 26;
        let _ = write!(
            s,
            r##"<text x="4" y="{}">{}</text><rect x="{x0}" y="{}" width="{w}" height="20" fill="#f8f9fb"/>"##,
            y + 14,
            esc(t),
            y
        );
    }
    let step = v.events.len().div_ceil(MAX_DRAWN_EVENTS).max(1);
    for e in v.events.iter().step_by(step) {
        let Some(i) = tracks.iter().position(|t| *t == e.track) else {
            continue;
        };
        let y = 26 + i * 26;
        let title = format!(
            "{} at {}{} (line {})",
            e.name,
            time(e.t_ns),
            if e.dur_ns > 0 {
                format!(", {}", time(e.dur_ns))
            } else {
                String::new()
            },
            e.line
        );
        if e.dur_ns > 0 {
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{}" width="{:.1}" height="16" fill="{}" opacity="0.85"><title>{}</title></rect>"#,
                x(e.t_ns),
                y + 2,
                (e.dur_ns as f64 / end as f64 * w).max(1.0),
                color_of_cat(e.cat),
                esc(&title)
            );
        } else {
            let cx = x(e.t_ns);
            let _ = write!(
                s,
                r#"<path d="M{cx:.1} {} l4 8 l-4 8 l-4 -8 z" fill="{}"><title>{}</title></path>"#,
                y + 2,
                color_of_cat(e.cat),
                esc(&title)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// A horizontal bar chart of (label, value, unit) rows.
fn bar_chart(id: &str, rows: &[(String, f64, String)]) -> String {
    let max = rows.iter().map(|r| r.1).fold(0.0f64, f64::max).max(1e-12);
    let height = 10 + rows.len() * 22;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chk" id="{id}" width="990" height="{height}" viewBox="0 0 990 {height}" role="img">"#
    );
    for (i, (label, v, unit)) in rows.iter().enumerate() {
        let y = 6 + i * 22;
        let bw = (v / max * 560.0).max(1.0);
        let _ = write!(
            s,
            r##"<text x="4" y="{}">{}</text><rect x="300" y="{y}" width="{bw:.1}" height="16" fill="#3b82c4"><title>{}: {} {}</title></rect><text x="{:.1}" y="{}">{} {}</text>"##,
            y + 12,
            esc(label),
            esc(label),
            fmt_num(*v),
            esc(unit),
            306.0 + bw,
            y + 12,
            fmt_num(*v),
            esc(unit)
        );
    }
    s.push_str("</svg>");
    s
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

/// One finding's cache lines: a grid coloured by state, stale lines outlined.
fn snapshot(i: usize, snap: &LineSnapshot) -> String {
    let per_row = 16;
    let rows = snap.lines.len().div_ceil(per_row);
    let height = 10 + rows * 26;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chk" id="lines-{i}" width="990" height="{height}" viewBox="0 0 990 {height}" role="img" aria-label="cache lines">"#
    );
    for (k, l) in snap.lines.iter().enumerate() {
        let (cx, cy) = (4 + (k % per_row) * 60, 4 + (k / per_row) * 26);
        let fill = match l.state {
            "dirty" => "#f0a04b",
            "clean" => "#7fb3e6",
            _ => "#e3e7ec",
        };
        let stroke = if l.cpu_stale {
            r##"stroke="#b42318" stroke-width="3""##
        } else {
            r##"stroke="#9aa5b1" stroke-width="1""##
        };
        let _ = write!(
            s,
            r#"<rect x="{cx}" y="{cy}" width="56" height="22" rx="3" fill="{fill}" {stroke}><title>{:#x}: {}{}{}; CPU {} DRAM {} truth {}</title></rect><text x="{}" y="{}">{}</text>"#,
            l.pa,
            l.state,
            if l.cpu_stale {
                ", CPU sees stale bytes"
            } else {
                ""
            },
            if l.dram_stale { ", DRAM stale" } else { "" },
            l.cpu,
            l.dram,
            l.truth,
            cx + 4,
            cy + 15,
            format_args!("+{:#x}", l.pa - snap.phys)
        );
    }
    s.push_str("</svg>");
    s
}

/// Renders a run report (recorded with `visual`) as one HTML page. `extra` is
/// HTML placed after the summary (the exploration summary of `explore --html`).
pub fn render(r: &Report, extra: Option<&str>) -> String {
    let mut h = String::with_capacity(64 << 10);
    let title = format!("dmasim: {}", r.script);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(&title)
    );
    let (verdict, class) = match r.exit_code() {
        0 => ("ok", "ok"),
        1 => ("FAILED", "bad"),
        _ => ("ERROR", "bad"),
    };
    let platform = r.platform.as_ref().map_or_else(
        || "no platform booted".to_string(),
        |p| format!("{} ({:?}), {} RAM", p.preset, p.arch, human_size(p.ram)),
    );
    let errors = r
        .findings
        .iter()
        .filter(|f| f.severity == crate::check::Severity::Error)
        .count();
    let _ = write!(
        h,
        "<header><h1>{}</h1><p>seed {} · {} · <span class=\"{class}\">{verdict}</span>: {} finding(s), {} error(s); expectations {} passed, {} failed · simulated time {}</p></header><main>",
        esc(&r.script),
        r.seed,
        esc(&platform),
        r.findings.len(),
        errors,
        r.expectations.passed,
        r.expectations.failed,
        time(r.stats.sim_time_ns)
    );
    if let Some(e) = &r.error {
        let _ = write!(
            h,
            "<section><h2 class=\"bad\">Error</h2><pre class=\"mono\">{}</pre></section>",
            esc(e)
        );
    }
    if let Some(x) = extra {
        h.push_str(x);
    }
    // Findings.
    let _ = write!(h, "<section id=\"findings\"><h2>Findings</h2>");
    if r.findings.is_empty() {
        h.push_str("<p class=\"ok\">No findings.</p>");
    }
    for (i, f) in r.findings.iter().enumerate() {
        let sev = format!("{:?}", f.severity).to_lowercase();
        let manifested = match f.manifested {
            Some(true) => "<b class=\"bad\">manifested</b>: the reader got corrupted bytes on this run",
            Some(false) => "<span class=\"warn\">not manifested</span> on this run: the bug is real, the cache hid it",
            None => "",
        };
        let _ = write!(
            h,
            "<div class=\"finding {sev}\" id=\"f{i}\"><div><span class=\"id\">{sev}[{}]</span> line {} at {}{}</div><div>{}</div><div>{manifested}</div><div><b>help:</b> {}</div>",
            f.id,
            f.line,
            time(f.time_ns),
            f.device.as_deref().map(|d| format!(" · {}", esc(d))).unwrap_or_default(),
            esc(&f.message),
            esc(&f.help)
        );
        if !f.history.is_empty() {
            h.push_str("<details open><summary>history</summary><table><tr><th>time</th><th>line</th><th>event</th></tr>");
            for e in &f.history {
                let _ = write!(
                    h,
                    "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
                    time(e.time_ns),
                    e.line,
                    esc(&e.event)
                );
            }
            h.push_str("</table></details>");
        }
        if let Some(snap) = r
            .visual
            .as_ref()
            .and_then(|v| v.snapshots.iter().find(|s| s.finding == i))
        {
            let stale = snap.lines.iter().filter(|l| l.cpu_stale).count();
            let _ = write!(
                h,
                "<p>The buffer's cache lines when this was found ({} lines from {:#x}; {stale} would give the CPU stale bytes):</p><div class=\"legend\"><span><i class=\"sw\" style=\"background:#f0a04b\"></i>dirty</span><span><i class=\"sw\" style=\"background:#7fb3e6\"></i>clean</span><span><i class=\"sw\" style=\"background:#e3e7ec\"></i>absent</span><span><i class=\"sw\" style=\"border:3px solid #b42318\"></i>CPU would read stale bytes</span></div>{}",
                snap.lines.len(),
                snap.phys,
                snapshot(i, snap)
            );
            h.push_str("<details><summary>bytes per line (first 8)</summary><table><tr><th>line</th><th>cache</th><th>CPU load</th><th>DRAM</th><th>truth (last writer)</th></tr>");
            for l in &snap.lines {
                let _ = write!(
                    h,
                    "<tr><td class=\"mono\">{:#x}</td><td>{}</td><td class=\"mono{}\">{}</td><td class=\"mono{}\">{}</td><td class=\"mono\">{}</td></tr>",
                    l.pa,
                    l.state,
                    if l.cpu_stale { " bad" } else { "" },
                    l.cpu,
                    if l.dram_stale { " bad" } else { "" },
                    l.dram,
                    l.truth
                );
            }
            h.push_str("</table></details>");
        }
        h.push_str("</div>");
    }
    h.push_str("</section>");
    if let Some(v) = &r.visual {
        let _ = write!(
            h,
            "<section id=\"memory\"><h2>Physical memory</h2><div class=\"legend\">{}</div>{}</section>",
            [
                ("zone", "zone"),
                ("kernel", "kernel data"),
                ("cma", "CMA"),
                ("swiotlb", "swiotlb"),
                ("hugepages", "hugepages"),
                ("kmalloc", "kmalloc"),
                ("pages", "pages"),
                ("coherent", "coherent"),
                ("noncoherent", "noncoherent"),
                ("noncontiguous", "noncontiguous"),
                ("dma-buf", "dma-buf"),
                ("vmalloc", "vmalloc"),
                ("user", "user pages")
            ]
            .iter()
            .map(|(k, n)| format!("<span><i class=\"sw\" style=\"background:{}\"></i>{n}</span>", color_of_kind(k)))
            .collect::<String>(),
            {
                let mut maps = memory_map(v, "memory-map", v.ram.0, v.ram.1);
                // A second map around the buffers, where a scattered buffer's pages show.
                let mine = || v.buffers.iter().filter(|b| b.kind != "kernel");
                let lo = mine().flat_map(|b| b.runs.iter().map(|r| r.0)).min();
                let hi = mine().flat_map(|b| b.runs.iter().map(|r| r.0 + r.1)).max();
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    let pad = ((hi - lo) / 20).max(64 << 10);
                    let (lo, hi) = (lo.saturating_sub(pad).max(v.ram.0), (hi + pad).min(v.ram.0 + v.ram.1));
                    if hi - lo < v.ram.1 / 2 {
                        maps.push_str("<p>Zoomed on the buffers:</p>");
                        maps.push_str(&memory_map(v, "memory-zoom", lo, hi - lo));
                    }
                }
                maps
            }
        );
        let _ = write!(
            h,
            "<section id=\"timeline-section\"><h2>Timeline</h2><div class=\"legend\">{}</div>{}{}</section>",
            ["call", "dma", "copy", "map", "unmap", "sync", "fault", "background", "finding"]
                .iter()
                .map(|c| format!("<span><i class=\"sw\" style=\"background:{}\"></i>{c}</span>", color_of_cat(c)))
                .collect::<String>(),
            timeline(v, r.stats.sim_time_ns),
            if v.events_dropped > 0 || v.events.len() > MAX_DRAWN_EVENTS {
                format!(
                    "<p>{} events recorded, {} more not kept; one in {} drawn. <code>--trace</code> writes them for Perfetto.</p>",
                    v.events.len(),
                    v.events_dropped,
                    v.events.len().div_ceil(MAX_DRAWN_EVENTS).max(1)
                )
            } else {
                String::new()
            }
        );
    }
    // Stats charts.
    let st = &r.stats;
    h.push_str("<section id=\"stats\"><h2>Stats</h2>");
    let mut rows = vec![
        (
            "cache hits".to_string(),
            st.cache.hits as f64,
            String::new(),
        ),
        (
            "cache misses".to_string(),
            st.cache.misses as f64,
            String::new(),
        ),
        (
            "lines cleaned".to_string(),
            st.cache.clean_lines as f64,
            String::new(),
        ),
        (
            "lines invalidated".to_string(),
            st.cache.invalidate_lines as f64,
            String::new(),
        ),
        (
            "bytes moved by devices".to_string(),
            st.dma_bytes as f64,
            "B".into(),
        ),
        (
            "bytes bounced".to_string(),
            st.bounce_bytes as f64,
            "B".into(),
        ),
    ];
    let tr = st.iommu.iotlb_hits + st.iommu.iotlb_misses;
    if tr > 0 {
        rows.push((
            "IOTLB hit rate".into(),
            (st.iommu.iotlb_hits as f64 / tr as f64 * 1000.0).round() / 10.0,
            "%".into(),
        ));
    }
    h.push_str(&bar_chart("stats-chart", &rows));
    let mut thr: Vec<(String, f64, String)> = r
        .streams
        .iter()
        .map(|t| {
            (
                format!("{} {} {} B", t.device, t.dir, t.size),
                t.mb_s,
                "MB/s".into(),
            )
        })
        .collect();
    for (name, p) in [
        ("poll-mode driver", st.rx.pmd),
        ("kernel rx path", st.rx.kernel),
    ] {
        if p.frames > 0 {
            thr.push((
                name.into(),
                p.packets_per_s as f64,
                "packets/s per core".into(),
            ));
        }
    }
    if !thr.is_empty() {
        h.push_str("<h2>Throughput</h2>");
        h.push_str(&bar_chart("throughput-chart", &thr));
    }
    h.push_str("</section>");
    let _ = write!(h, "<section id=\"log\"><h2>Log</h2><pre class=\"log\">");
    for l in &r.log {
        h.push_str(&esc(l));
        h.push('\n');
    }
    h.push_str("</pre></section></main><script>");
    h.push_str(CHECK_SCRIPT);
    h.push_str("</script></body></html>\n");
    h
}

/// The exploration summary of `explore --html`: per finding id, seeds reported and
/// manifested, as a chart and a table; `seed` names the run the page shows.
pub fn explore_section(e: &crate::explore::ExploreReport, seed: u64) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<section id=\"explore\"><h2>Exploration: {} runs from seed {}</h2><p>{} run(s) failed, {} error(s). The rest of this page is the run of seed {seed}.</p>",
        e.runs, e.from, e.failed_runs, e.errors
    );
    let mut rows = Vec::new();
    for (id, f) in &e.findings {
        rows.push((
            format!("{id}: reported"),
            f.reported as f64,
            format!("of {} seeds", e.runs),
        ));
        rows.push((
            format!("{id}: manifested"),
            f.manifested as f64,
            format!("of {} seeds", e.runs),
        ));
    }
    if !rows.is_empty() {
        h.push_str(&bar_chart("explore-chart", &rows));
    }
    h.push_str("<table><tr><th>finding</th><th>reported</th><th>manifested</th><th>first seed</th><th>replay</th></tr>");
    for (id, f) in &e.findings {
        let _ = write!(
            h,
            "<tr><td class=\"mono\">{}</td><td>{}/{}</td><td>{}/{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            esc(id),
            f.reported,
            e.runs,
            f.manifested,
            e.runs,
            f.first_seed.map_or_else(String::new, |s| s.to_string()),
            esc(&f.reproduce)
        );
    }
    h.push_str("</table></section>");
    h
}
