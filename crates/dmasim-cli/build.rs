//! Embeds the finding pages of `docs/findings/` for `dmasim explain`: one
//! `(id, page)` entry per Markdown file, generated so that a new page needs no code.
//! And links the `dmasim` executable position-dependent on Linux with the GNU
//! toolchain (`link_position_dependent`).

use std::fmt::Write;
use std::path::Path;

/// `-no-pie` for the binaries on Linux with the GNU toolchain. A
/// position-independent executable is relocated by the dynamic loader at every
/// start: some 18 000 pointers in its read-only data rewritten, each page touched
/// copied (a page fault), about a tenth of a short `dmasim run`. Linked at a fixed
/// address those pointers are final in the file. Only the link step changes (the
/// code is compiled as before), and only for the binaries, not the tests.
fn link_position_dependent() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && matches!(var("CARGO_CFG_TARGET_ARCH").as_str(), "x86_64" | "aarch64")
    {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}

fn main() {
    link_position_dependent();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/findings");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut ids: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let id = name.strip_suffix(".md")?.to_string();
                    (id != "README").then_some(id)
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    let mut out = String::from("/// Every finding page, by id, in id order.\npub(crate) const PAGES: &[(&str, &str)] = &[\n");
    for id in &ids {
        let path = dir.join(format!("{id}.md"));
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(
            out,
            "    ({id:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("finding_pages.rs");
    std::fs::write(dest, out).expect("write finding_pages.rs");
}
