//! The text report: the dmesg-style log, then each finding as rustc prints an error
//! (id and message, the script line, the buffer's history, a `help:` line), then a
//! short stats block. Colour only when asked (the CLI asks on a terminal).

use std::fmt::Write;

use super::{Outcome, Report};
use crate::check::Severity;

struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// Simulated nanoseconds in the unit a reader wants (ns, µs, ms).
pub(crate) fn time(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.3} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.3} µs", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// Renders a report as text.
pub fn render(r: &Report, color: bool) -> String {
    let st = Style { on: color };
    let mut o = String::new();
    for l in &r.log {
        let _ = writeln!(o, "{l}");
    }
    if !r.log.is_empty() {
        o.push('\n');
    }
    if let Some(e) = &r.error {
        let _ = writeln!(o, "{}: {e}\n", st.paint("1;31", "error"));
    }
    for f in &r.findings {
        let (word, code) = match f.severity {
            Severity::Error => ("error", "1;31"),
            Severity::Warning => ("warning", "1;33"),
            Severity::Info => ("info", "1;36"),
        };
        let _ = writeln!(
            o,
            "{}: {}",
            st.paint(code, &format!("{word}[{}]", f.id)),
            st.paint("1", &f.message)
        );
        // Inside script functions: the call chain, innermost first (82 ← 140 ← 171).
        let chain: String = f.called_from.iter().map(|l| format!(" ← {l}")).collect();
        let times = if f.count > 1 {
            format!(
                " (seen {} times at this line: the same mistake on each chunk, packet or buffer)",
                f.count
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  {} {}:{}{chain} at {}{times}",
            st.paint("34", "-->"),
            r.script,
            f.line,
            time(f.time_ns)
        );
        match f.manifested {
            Some(true) => {
                let what = match f.id {
                    "user-dma-without-iommu" | "dma-outside-mapping" | "dma-after-unmap" => {
                        "the access really reached that memory on this run"
                    }
                    "mmap-beyond-buffer" => "other live allocations share the exposed pages",
                    _ => "the reader got corrupted bytes on this run",
                };
                let _ = writeln!(o, "   = manifested: {what}");
            }
            Some(false) => {
                let why = match f.id {
                    "dma-after-unmap" => "the IOMMU blocked the access on this run; with lazy invalidation, or without an IOMMU, it gets through",
                    "unpinned-user-dma" => "the page had not moved yet on this run",
                    "mmap-beyond-buffer" => "no other allocation shares the exposed pages yet; the next kmalloc may land there",
                    "dma-outside-mapping" => "nothing outside the buffer was exposed or overwritten on this run (it met only zeros, its own bounce buffer's padding, or a bus error)",
                    _ => "the bytes happened to be right on this run (cache state hid it)",
                };
                let _ = writeln!(o, "   = latent: {why}; the bug is real");
            }
            None => {}
        }
        if !f.history.is_empty() {
            let _ = writeln!(o, "   = history:");
            for h in &f.history {
                let line = if h.line > 0 {
                    format!("line {:>3}", h.line)
                } else {
                    "        ".into()
                };
                let _ = writeln!(o, "       {:>12}  {line}  {}", time(h.time_ns), h.event);
            }
        }
        let _ = writeln!(o, "   = {}: {}\n", st.paint("1;32", "help"), f.help);
    }
    for x in &r.expectations.failures {
        let _ = writeln!(
            o,
            "{}: {}\n  {} {}:{}\n",
            st.paint("1;31", "expectation failed"),
            x.msg,
            st.paint("34", "-->"),
            r.script,
            x.line
        );
    }
    let errors = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    let s = &r.stats;
    let verdict = match (r.outcome, r.exit_code()) {
        (Outcome::Error, _) => st.paint("1;31", "stopped by an error"),
        (_, 0) => st.paint("1;32", "ok"),
        _ => st.paint("1;31", "FAILED"),
    };
    let _ = writeln!(
        o,
        "{verdict}: {errors} error(s), {warnings} warning(s); expectations {} passed, {} failed (seed {})",
        r.expectations.passed, r.expectations.failed, r.seed
    );
    let _ = writeln!(
        o,
        "stats: sim time {}, DMA {} bytes, cache {} hits / {} misses, {} lines cleaned, {} invalidated, {} uncached accesses",
        time(s.sim_time_ns),
        s.dma_bytes,
        s.cache.hits,
        s.cache.misses,
        s.cache.clean_lines,
        s.cache.invalidate_lines,
        s.cache.uncached_accesses
    );
    if let (Some(n), Some(d)) = (s.cache.streamed_lines, s.cache.streamed_to_dram) {
        let _ = writeln!(
            o,
            "write streaming: {n} whole-line stores kept out of L1, {d} of them straight to DRAM"
        );
    }
    if s.swiotlb.slots_total > 0 {
        let _ = writeln!(
            o,
            "swiotlb: {} slots, at most {} in use, {} full error(s); {} mappings bounced, {} bytes copied in {}",
            s.swiotlb.slots_total,
            s.swiotlb.slots_used_max,
            s.swiotlb.full_errors,
            s.bounced_maps,
            s.bounce_bytes,
            time(s.swiotlb.copy_ns)
        );
    }
    for (name, p) in [
        ("poll-mode driver", s.rx.pmd),
        ("kernel rx path", s.rx.kernel),
    ] {
        if p.frames > 0 {
            let _ = writeln!(
                o,
                "{name}: {} frames, {} ns of CPU per frame = {} frames/s per core ({} dropped, {} empty polls)",
                p.frames, p.ns_per_packet, p.packets_per_s, p.dropped, p.empty_polls
            );
        }
    }
    for t in &r.streams {
        let _ = writeln!(
            o,
            "stream {} {} {} bytes x {}: {:.1} MB/s in simulated time. {}",
            t.device, t.dir, t.size, t.done, t.mb_s, t.explain
        );
    }
    if let Some(f) = r.findings.first() {
        // As rustc points at `--explain`: each id has a page (docs/findings/).
        let _ = writeln!(
            o,
            "For more about a finding, try `dmasim explain {}`.",
            f.id
        );
    }
    o
}
