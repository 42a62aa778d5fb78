//! One script on several configurations, side by side (`dmasim compare`): the
//! question an architect asks before choosing a platform — coherent port or not,
//! IOMMU or not, how much swiotlb or CMA — answered with the same driver code.
//!
//! A configuration is a preset, boot options, or both (`arm64-noncoherent,iommu=smmu`);
//! each replaces what the script's `boot()` says, as `--preset` and `--set` do. Every
//! configuration runs the script on the same seed for its statistics and
//! throughput, and on `seeds` seeds for how often each finding was reported and
//! manifested (schema `dmasim.compare/v1`). Runs are independent and spread over
//! worker threads; the result does not depend on their number.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::PRESET_NAMES;
use crate::explore::{FindingSummary, RunRecord};
use crate::report::Stats;
use crate::script::{run_source, ScriptOptions};
use crate::throughput::StreamResult;
use crate::units::human_size;

/// Most configurations one comparison takes (each is a column).
pub const MAX_CONFIGS: usize = 16;

/// One configuration to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// As the user wrote it (the column's title).
    pub label: String,
    /// The preset that replaces the script's, if any.
    pub preset: Option<&'static str>,
    /// Boot options applied after the script's own.
    pub set: Vec<(String, String)>,
}

impl Config {
    /// Parses `PRESET`, `KEY=VALUE`, or both, separated by commas:
    /// `arm64-noncoherent,iommu=smmu,swiotlb=off`.
    ///
    /// # Errors
    /// An unknown preset, two presets, or an empty part.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut c = Config {
            label: text.trim().to_string(),
            preset: None,
            set: Vec::new(),
        };
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("{text:?}: an empty part between commas"));
            }
            if let Some((k, v)) = part.split_once('=') {
                if k.trim().is_empty() {
                    return Err(format!("{text:?}: {part:?} has no option name"));
                }
                c.set.push((k.trim().to_string(), v.trim().to_string()));
                continue;
            }
            let p = PRESET_NAMES
                .iter()
                .copied()
                .find(|n| *n == part)
                .ok_or_else(|| {
                    format!(
                        "{text:?}: {part:?} is neither a preset ({}) nor KEY=VALUE",
                        PRESET_NAMES.join(", ")
                    )
                })?;
            if c.preset.replace(p).is_some() {
                return Err(format!("{text:?}: two presets in one configuration"));
            }
        }
        Ok(c)
    }

    /// Every preset, one configuration each: the default comparison.
    pub fn every_preset() -> Vec<Config> {
        PRESET_NAMES
            .iter()
            .map(|p| Config {
                label: (*p).to_string(),
                preset: Some(p),
                set: Vec::new(),
            })
            .collect()
    }

    /// The options of a run of this configuration on `seed`.
    fn options(&self, base: &ScriptOptions, seed: u64) -> ScriptOptions {
        let mut o = base.clone();
        o.seed = seed;
        if self.preset.is_some() {
            o.preset = self.preset;
        }
        o.boot_set.extend(self.set.iter().cloned());
        o
    }
}

/// One configuration's results: a column of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    /// The configuration as given.
    pub config: String,
    /// The preset that booted (`None` when the run stopped before `boot`).
    pub preset: Option<String>,
    /// Exit status of the run on the first seed (0, 1 or 2).
    pub exit: i32,
    /// The error that stopped that run.
    pub error: Option<String>,
    /// Expectations of that run that failed.
    pub expectations_failed: u64,
    /// Counters of that run.
    pub stats: Option<Stats>,
    /// Its streaming throughput runs.
    pub streams: Vec<StreamResult>,
    /// Runs over all seeds that would exit 1.
    pub failed_runs: u64,
    /// Runs over all seeds that stopped with an error.
    pub errors: u64,
    /// Per finding id over all seeds, in id order.
    pub findings: BTreeMap<String, FindingSummary>,
}

/// The whole comparison (schema `dmasim.compare/v1`).
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// Always `dmasim.compare/v1`.
    pub schema: &'static str,
    /// Script name.
    pub script: String,
    /// The seed of the runs whose statistics are shown (and the first seed counted).
    pub seed: u64,
    /// Seeds each configuration ran on.
    pub seeds: u64,
    /// One column per configuration, in the order given.
    pub columns: Vec<Column>,
}

impl CompareReport {
    /// 2 if any run stopped with an error, 1 if any would exit 1, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.columns.iter().any(|c| c.errors > 0) {
            2
        } else if self.columns.iter().any(|c| c.failed_runs > 0) {
            1
        } else {
            0
        }
    }
}

/// Runs `src` on every configuration over seeds `base.seed..base.seed+seeds` with
/// `jobs` threads, calling `progress` after each run.
pub fn compare(
    name: &str,
    src: &str,
    configs: &[Config],
    base: &ScriptOptions,
    seeds: u64,
    jobs: usize,
    progress: &(dyn Fn() + Sync),
) -> CompareReport {
    let (seed, seeds) = (base.seed, seeds.max(1));
    let work: Vec<(usize, u64)> = (0..configs.len())
        .flat_map(|c| crate::explore::seed_range(seed, seeds).map(move |s| (c, s)))
        .collect();
    // Only the first seed keeps its whole report.
    let done = crate::explore::par_map(&work, jobs, |&(c, s)| {
        let r = run_source(name, src, &configs[c].options(base, s));
        progress();
        (c, s, RunRecord::of(name, s, &r), (s == seed).then_some(r))
    });
    let mut columns: Vec<Column> = configs
        .iter()
        .map(|c| Column {
            config: c.label.clone(),
            preset: None,
            exit: 2,
            error: Some("the run did not finish".into()),
            expectations_failed: 0,
            stats: None,
            streams: Vec::new(),
            failed_runs: 0,
            errors: 0,
            findings: BTreeMap::new(),
        })
        .collect();
    for (c, s, rec, report) in done {
        let col = &mut columns[c];
        match rec.exit {
            2 => col.errors += 1,
            1 => col.failed_runs += 1,
            _ => {}
        }
        for (id, manifested) in rec.findings {
            let f = col.findings.entry(id).or_default();
            f.reported += 1;
            f.first_seed.get_or_insert(s);
            if manifested {
                f.manifested += 1;
                f.first_manifested_seed.get_or_insert(s);
            }
        }
        if let Some(r) = report {
            col.preset = r.platform.as_ref().map(|p| p.preset.clone());
            col.exit = r.exit_code();
            col.error = r.error.clone();
            col.expectations_failed = r.expectations.failed;
            col.stats = r.error.is_none().then_some(r.stats);
            col.streams = r.streams;
        }
    }
    for (col, cfg) in columns.iter_mut().zip(configs) {
        let mut flags = flags_of(cfg);
        if base.noise_off {
            flags.push_str(" --noise off");
        }
        for f in col.findings.values_mut() {
            let s = f.first_manifested_seed.or(f.first_seed).unwrap_or(seed);
            f.reproduce = format!("dmasim run {name}{flags} --seed {s}");
        }
    }
    CompareReport {
        schema: "dmasim.compare/v1",
        script: name.to_string(),
        seed,
        seeds,
        columns,
    }
}

/// The `dmasim run` flags that replay a configuration.
fn flags_of(c: &Config) -> String {
    let mut s = String::new();
    if let Some(p) = c.preset {
        s.push_str(&format!(" --preset {p}"));
    }
    for (k, v) in &c.set {
        if v.contains(' ') {
            s.push_str(&format!(" --set '{k}={v}'"));
        } else {
            s.push_str(&format!(" --set {k}={v}"));
        }
    }
    s
}

/// One row of the text table: a label and a cell per column.
type Row = (String, Vec<String>);

/// Reads one counter of a run.
type Counter = fn(&Stats) -> u64;

/// How a figure reads.
#[derive(Clone, Copy)]
enum Unit {
    Count,
    Bytes,
    Time,
}

/// The counters the table shows, in order (a row only when one column is nonzero).
const FIGURES: &[(&str, Counter, Unit)] = &[
    ("simulated time", |s| s.sim_time_ns, Unit::Time),
    ("DMA bytes", |s| s.dma_bytes, Unit::Bytes),
    ("bounced maps", |s| s.bounced_maps, Unit::Count),
    ("bounce bytes", |s| s.bounce_bytes, Unit::Bytes),
    ("swiotlb copy time", |s| s.swiotlb.copy_ns, Unit::Time),
    (
        "swiotlb slots used (max)",
        |s| s.swiotlb.slots_used_max,
        Unit::Count,
    ),
    (
        "swiotlb full errors",
        |s| s.swiotlb.full_errors,
        Unit::Count,
    ),
    ("cache hits", |s| s.cache.hits, Unit::Count),
    ("cache misses", |s| s.cache.misses, Unit::Count),
    ("lines cleaned", |s| s.cache.clean_lines, Unit::Count),
    (
        "lines invalidated",
        |s| s.cache.invalidate_lines,
        Unit::Count,
    ),
    (
        "uncached accesses",
        |s| s.cache.uncached_accesses,
        Unit::Count,
    ),
    ("IOTLB misses", |s| s.iommu.iotlb_misses, Unit::Count),
    ("IOMMU faults", |s| s.iommu.faults, Unit::Count),
    ("CMA pages used", |s| s.cma.used_pages, Unit::Count),
    ("pages migrated", |s| s.mm.migrated_pages, Unit::Count),
    ("pages pinned", |s| s.mm.pinned_pages, Unit::Count),
];

/// The comparison as a table: a column per configuration, a row per figure; rows
/// where every configuration reads zero are left out.
pub fn render(r: &CompareReport) -> String {
    let mut rows: Vec<Row> = Vec::new();
    let cols = &r.columns;
    let cell = |f: &dyn Fn(&Column) -> String| -> Vec<String> { cols.iter().map(f).collect() };
    if cols
        .iter()
        .any(|c| c.preset.as_deref() != Some(c.config.as_str()))
    {
        rows.push((
            "preset".into(),
            cell(&|c| c.preset.clone().unwrap_or_else(|| "-".into())),
        ));
    }
    rows.push((
        "exit".into(),
        cell(&|c| {
            match c.exit {
                0 => "0 ok",
                1 => "1 failed",
                _ => "2 error",
            }
            .to_string()
        }),
    ));
    if cols.iter().any(|c| c.expectations_failed > 0) {
        rows.push((
            "expectations failed".into(),
            cell(&|c| c.expectations_failed.to_string()),
        ));
    }
    for &(label, get, unit) in FIGURES {
        let v: Vec<Option<u64>> = cols.iter().map(|c| c.stats.as_ref().map(get)).collect();
        if v.iter().any(|x| x.is_some_and(|x| x > 0)) {
            let show = |x: u64| match unit {
                Unit::Count => x.to_string(),
                Unit::Bytes => human_size(x),
                Unit::Time => crate::report::text::time(x),
            };
            rows.push((
                label.to_string(),
                v.iter().map(|x| x.map_or("-".into(), show)).collect(),
            ));
        }
    }
    let streams = cols.iter().map(|c| c.streams.len()).max().unwrap_or(0);
    for i in 0..streams {
        let title = cols
            .iter()
            .find_map(|c| c.streams.get(i))
            .map(|s| {
                format!(
                    "stream {} {} {} {}x{}",
                    i + 1,
                    s.device,
                    if s.dir.contains("TO") { "TX" } else { "RX" },
                    s.count,
                    human_size(s.size)
                )
            })
            .unwrap_or_default();
        rows.push((
            format!("{title} MB/s"),
            cell(&|c| {
                c.streams.get(i).map_or("-".into(), |s| {
                    if s.bounced > 0 {
                        format!("{:.0} ({} bounced)", s.mb_s, s.bounced)
                    } else {
                        format!("{:.0}", s.mb_s)
                    }
                })
            }),
        ));
    }
    let ids: std::collections::BTreeSet<&String> =
        cols.iter().flat_map(|c| c.findings.keys()).collect();
    for id in ids {
        rows.push((
            id.clone(),
            cell(&|c| match c.findings.get(id) {
                None => "-".into(),
                Some(f) if r.seeds == 1 => {
                    if f.manifested > 0 {
                        "manifested".into()
                    } else {
                        "reported".into()
                    }
                }
                Some(f) => format!("{}/{}, {} manifested", f.reported, r.seeds, f.manifested),
            }),
        ));
    }
    let label_w = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| {
            rows.iter()
                .map(|(_, c)| c[i].chars().count())
                .chain(std::iter::once(cols[i].config.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!(
        "{}: {} configurations, seed {}{}\n\n",
        r.script,
        cols.len(),
        r.seed,
        if r.seeds > 1 {
            format!(
                " (findings over seeds {}..{})",
                r.seed,
                r.seed + r.seeds - 1
            )
        } else {
            String::new()
        }
    );
    let line = |label: &str, cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = format!("{label:<label_w$}");
        for (c, w) in cells.zip(&widths) {
            s.push_str(&format!("  {c:>w$}"));
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&line("", &mut cols.iter().map(|c| c.config.as_str())));
    for (label, cells) in &rows {
        out.push_str(&line(label, &mut cells.iter().map(String::as_str)));
    }
    for c in cols {
        if let Some(e) = &c.error {
            out.push_str(&format!("\n{}: {e}", c.config));
        }
    }
    if cols.iter().any(|c| c.error.is_some()) {
        out.push('\n');
    }
    let replays: Vec<String> = cols
        .iter()
        .flat_map(|c| {
            c.findings
                .iter()
                .filter(|(_, f)| f.manifested > 0)
                .map(move |(id, f)| format!("  {id} on {}: {}", c.config, f.reproduce))
        })
        .collect();
    if !replays.is_empty() {
        out.push_str("\nreplay a manifested finding:\n");
        for l in replays {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_parse_presets_and_options() {
        let c = Config::parse("arm64-noncoherent, iommu=smmu,ram=8 GiB").unwrap();
        assert_eq!(c.preset, Some("arm64-noncoherent"));
        assert_eq!(
            c.set,
            vec![
                ("iommu".to_string(), "smmu".to_string()),
                ("ram".to_string(), "8 GiB".to_string())
            ]
        );
        assert_eq!(Config::parse("swiotlb=off").unwrap().preset, None);
        for bad in ["arm65", "rpi4,x86-64", "rpi4,,iommu=smmu", "=3"] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Config::every_preset().len(), PRESET_NAMES.len());
        assert_eq!(
            flags_of(&Config::parse("rpi4,ram=1 GiB").unwrap()),
            " --preset rpi4 --set 'ram=1 GiB'"
        );
    }

    const TX: &str = r#"
        boot("arm64-noncoherent");
        let d = device("d");
        let b = kmalloc(4096);
        let a = dma_map_single(d, b, DMA_TO_DEVICE);
        if dma_mapping_error(d, a) { throw "map"; }
        cpu_fill(b, 0x5a);
        dev_read(d, a, 4096);
        dma_unmap_single(d, a, 4096, DMA_TO_DEVICE);
        kfree(b);
    "#;

    #[test]
    fn the_result_does_not_depend_on_the_number_of_threads() {
        let configs = vec![
            Config::parse("arm64-noncoherent").unwrap(),
            Config::parse("arm64-coherent").unwrap(),
        ];
        let base = ScriptOptions::default();
        let one = compare("tx.rhai", TX, &configs, &base, 6, 1, &|| {});
        let three = compare("tx.rhai", TX, &configs, &base, 6, 3, &|| {});
        let j = |r: &CompareReport| serde_json::to_string(r).unwrap();
        assert_eq!(j(&one), j(&three));
        let f = &one.columns[0].findings["stale-device-read"];
        assert_eq!(f.reported, 6);
        assert!(f.manifested > 0);
        assert_eq!(one.columns[1].findings["stale-device-read"].manifested, 0);
        assert_eq!(one.exit_code(), 1);
        let text = render(&one);
        assert!(text.contains("6/6, 0 manifested"), "{text}");
        assert!(!text.contains("\npreset"), "titles are the presets: {text}");
    }

    #[test]
    fn a_bad_option_is_an_error_in_its_column_only() {
        let configs = vec![
            Config::parse("iommu=maybe").unwrap(),
            Config::parse("iommu=smmu").unwrap(),
        ];
        let r = compare(
            "tx.rhai",
            TX,
            &configs,
            &ScriptOptions::default(),
            1,
            2,
            &|| {},
        );
        assert_eq!(r.columns[0].exit, 2);
        assert!(r.columns[0]
            .error
            .as_deref()
            .unwrap()
            .contains("--set: iommu"));
        assert_eq!(r.columns[1].error, None);
        assert_eq!(r.exit_code(), 2);
        assert!(render(&r).contains("iommu=maybe: "));
    }
}
