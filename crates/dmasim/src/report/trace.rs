//! `--trace`: the run's timeline as Chrome trace-event JSON (opens in Perfetto and
//! `chrome://tracing`): one process, a thread per track (each CPU, each device,
//! background cache events, findings), complete events (`ph: "X"`) for calls,
//! transfers and copies, instant events (`ph: "i"`) for maps, unmaps, syncs, faults
//! and findings. Timestamps are simulated microseconds.

use serde_json::{json, Value};

use super::Report;

/// The trace JSON of a report recorded with `visual` (an empty trace otherwise).
pub fn chrome_trace(r: &Report) -> String {
    let mut tracks: Vec<&str> = Vec::new();
    let mut events: Vec<Value> = vec![json!({
        "name": "process_name", "ph": "M", "pid": 1, "tid": 0,
        "args": { "name": format!("dmasim {} (seed {})", r.script, r.seed) }
    })];
    if let Some(v) = &r.visual {
        for e in &v.events {
            let tid = match tracks.iter().position(|t| *t == e.track) {
                Some(i) => i + 1,
                None => {
                    tracks.push(&e.track);
                    events.push(json!({
                        "name": "thread_name", "ph": "M", "pid": 1, "tid": tracks.len(),
                        "args": { "name": e.track }
                    }));
                    tracks.len()
                }
            };
            let ts = e.t_ns as f64 / 1000.0;
            let mut ev = json!({
                "name": e.name, "cat": e.cat, "pid": 1, "tid": tid, "ts": ts,
                "args": { "line": e.line }
            });
            if e.dur_ns > 0 {
                ev["ph"] = json!("X");
                ev["dur"] = json!(e.dur_ns as f64 / 1000.0);
            } else {
                ev["ph"] = json!("i");
                ev["s"] = json!("t");
            }
            events.push(ev);
        }
    }
    let doc = json!({
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": { "schema": "dmasim.trace/v1", "script": r.script, "seed": r.seed },
    });
    serde_json::to_string(&doc).unwrap_or_else(|_| "{\"traceEvents\":[]}".into())
}
