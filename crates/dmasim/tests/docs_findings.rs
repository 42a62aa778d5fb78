//! Every finding id has a page in `docs/findings/` whose severity matches the
//! sanitizer's table and whose minimal script, run, reports that id.

use dmasim::check::finding::FINDING_IDS;
use dmasim::check::Severity;
use dmasim::script::{run_source, ScriptOptions};

fn page(id: &str) -> String {
    let path = format!("{}/../../docs/findings/{id}.md", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{id} has no page: {path}: {e}"))
}

fn script_of(page: &str) -> &str {
    let start = page.find("```rhai\n").expect("a rhai block") + "```rhai\n".len();
    let end = start + page[start..].find("```").expect("closed block");
    &page[start..end]
}

/// The ids whose `manifested` says whether data was really corrupted.
const MEMORY: &[&str] = &[
    "stale-device-read",
    "stale-cpu-read",
    "cpu-access-device-owned",
    "dirty-writeback-clobber",
    "cpu-write-discarded",
    "use-after-free-dma",
    "virtual-address-as-dma",
    "dma-outside-mapping",
    "unpinned-user-dma",
    "dma-after-unmap",
    "user-dma-without-iommu",
    "mmap-beyond-buffer",
    "descriptor-order",
];

#[test]
fn every_finding_id_has_a_page_whose_script_triggers_it() {
    let index = page("README");
    for &(id, sev, _) in FINDING_IDS {
        let p = page(id);
        let sev_name = match sev {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        assert!(
            p.contains(&format!("Severity: **{sev_name}**")),
            "{id}: severity on the page"
        );
        for section in ["## What", "## Why it matters on real hardware", "## Fix"] {
            assert!(p.contains(section), "{id}: {section}");
        }
        assert!(
            index.contains(&format!("[`{id}`]({id}.md)")),
            "{id} in the index"
        );
        let r = run_source(
            &format!("{id}.rhai"),
            script_of(&p),
            &ScriptOptions::default(),
        );
        assert!(r.error.is_none(), "{id}: {:?}", r.error);
        let f = r.findings.iter().find(|f| f.id == id).unwrap_or_else(|| {
            panic!(
                "{id}: the page's script reports {:?}",
                r.findings.iter().map(|f| f.id).collect::<Vec<_>>()
            )
        });
        assert_eq!(f.severity, sev, "{id}");
        // `manifested` is true/false for memory findings (did the reader get bad
        // bytes?) and null for API misuse, resources and performance.
        assert_eq!(
            f.manifested.is_some(),
            MEMORY.contains(&id),
            "{id}: manifested = {:?}",
            f.manifested
        );
        assert!(!f.help.is_empty(), "{id}: help");
    }
}
