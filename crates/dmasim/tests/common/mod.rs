//! Helpers the integration tests share: run a script or a scenario and look at
//! its JSON report.
#![allow(dead_code)]

use dmasim::report::Report;
use dmasim::script::{run_source, ScriptOptions};
use serde_json::Value;

/// The text of `scenarios/<name>`.
pub fn scenario_text(name: &str) -> String {
    let path = format!("{}/../../scenarios/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `src` and returns the report with its JSON.
pub fn run_json(name: &str, src: &str, opts: &ScriptOptions) -> (Report, Value) {
    let r = run_source(name, src, opts);
    let j: Value = serde_json::from_str(&r.to_json()).expect("the report is JSON");
    (r, j)
}

/// Runs a script with background noise off.
pub fn script(src: &str) -> (Report, Value) {
    run_json(
        "t.rhai",
        src,
        &ScriptOptions {
            noise_off: true,
            ..ScriptOptions::default()
        },
    )
}

/// Runs a scenario on `seed`, optionally on another preset.
pub fn scenario(name: &str, seed: u64, preset: Option<&'static str>) -> (Report, Value) {
    run_json(
        name,
        &scenario_text(name),
        &ScriptOptions {
            seed,
            preset,
            ..ScriptOptions::default()
        },
    )
}

/// The finding ids of a JSON report, in order.
pub fn ids(j: &Value) -> Vec<String> {
    j["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["id"].as_str().expect("id").to_string())
        .collect()
}

/// The run ended without an error and every expectation held.
pub fn ok(r: &Report) {
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 0, "{:?}", r.expectations.failures);
}

/// Whether a line of the report's log contains `needle`.
pub fn log_has(j: &Value, needle: &str) -> bool {
    j["log"]
        .as_array()
        .expect("log")
        .iter()
        .any(|l| l.as_str().is_some_and(|l| l.contains(needle)))
}

/// The first finding of a JSON report with id `id`.
pub fn finding<'a>(j: &'a Value, id: &str) -> &'a Value {
    j["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {:?}", ids(j)))
}
