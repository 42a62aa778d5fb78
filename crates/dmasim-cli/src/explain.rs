//! `dmasim explain [ID]`: the page of a finding id (what, why on real hardware, the
//! fix, a script that shows it), as `rustc --explain` prints an error code's page.
//! The pages are `docs/findings/*.md`, embedded at build time.

use dmasim::check::finding::FINDING_IDS;
use dmasim::check::Severity;

use crate::outln;

include!(concat!(env!("OUT_DIR"), "/finding_pages.rs"));

/// The page of `id`, if there is one.
pub(crate) fn page(id: &str) -> Option<&'static str> {
    PAGES.iter().find(|(i, _)| *i == id).map(|(_, p)| *p)
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// Prints the list of ids, or one id's page. An unknown id is an argument error
/// (exit 2) that names the closest id.
pub(crate) fn run(id: Option<&str>) -> Result<u8, String> {
    let Some(id) = id else {
        outln!("Finding ids (dmasim explain ID for the page of one):\n");
        for (id, sev, what) in FINDING_IDS {
            let sev = match sev {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Info => "info",
            };
            outln!("  {id:<26} {sev:<8} {what}");
        }
        return Ok(0);
    };
    let id = id.trim().trim_start_matches("error[").trim_end_matches(']');
    if let Some(p) = page(id) {
        crate::emit(p);
        return Ok(0);
    }
    let near = FINDING_IDS
        .iter()
        .map(|(i, _, _)| *i)
        .min_by_key(|i| distance(id, i))
        .unwrap_or("stale-cpu-read");
    Err(format!(
        "no finding id {id:?}; did you mean {near:?}? (`dmasim explain` lists them all)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finding_id_has_an_embedded_page_and_no_page_is_orphaned() {
        for (id, _, _) in FINDING_IDS {
            let p = page(id).unwrap_or_else(|| panic!("{id}: no page"));
            assert!(p.starts_with(&format!("# `{id}`")), "{id}: title");
        }
        for (id, _) in PAGES {
            assert!(
                FINDING_IDS.iter().any(|(i, _, _)| i == id),
                "{id}.md names no finding id"
            );
        }
    }

    #[test]
    fn a_typo_is_answered_with_the_closest_id() {
        let e = run(Some("stale-cpu-reed")).unwrap_err();
        assert!(e.contains("did you mean \"stale-cpu-read\""), "{e}");
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
    }
}
