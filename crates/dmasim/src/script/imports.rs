//! `import "name" as m;`: modules of a script, read only from the script's own folder
//! (or the folder given with `--lib`), never cached between runs.
//!
//! Rhai's default resolver reads any path on the host, caches a module for the
//! life of the engine (each worker thread keeps its engine, so a later seed saw the
//! objects of an earlier run) and recurses without bound on a script that imports
//! itself. This resolver refuses paths outside the folder, evaluates every import
//! afresh, and bounds both the nesting depth and the number of imports of a run.

use std::path::{Component, Path, PathBuf};

use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared as RcShared};

use super::Shared;

/// Imports nested inside imports, at most.
pub const MAX_IMPORT_DEPTH: usize = 8;
/// Imports a run may evaluate in all (each module runs under `--max-ops` on its own).
pub const MAX_IMPORTS_PER_RUN: usize = 32;

/// Resolves `import` paths inside the session's library folder.
pub(super) struct FolderResolver {
    pub(super) session: Shared,
}

fn refuse(path: &str, pos: Position, why: impl Into<String>) -> Box<EvalAltResult> {
    EvalAltResult::ErrorInModule(
        path.to_string(),
        EvalAltResult::ErrorRuntime(why.into().into(), pos).into(),
        pos,
    )
    .into()
}

/// The file of `import "path"` under `root`: a relative path of plain components
/// (no `..`, no root, no drive), with the `.rhai` extension added.
fn file_under(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path);
    if path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let mut file = root.join(rel);
    file.set_extension("rhai");
    Some(file)
}

impl ModuleResolver for FolderResolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<RcShared<Module>, Box<EvalAltResult>> {
        let root = {
            let mut g = self.session.borrow_mut();
            let Some(root) = g.opts.lib_dir.clone() else {
                return Err(refuse(
                    path,
                    pos,
                    "import: this run has no script folder to import from (run a script file, or pass --lib DIR)",
                ));
            };
            if g.import_depth >= MAX_IMPORT_DEPTH {
                return Err(refuse(
                    path,
                    pos,
                    format!("import: more than {MAX_IMPORT_DEPTH} nested imports (does a module import itself?)"),
                ));
            }
            if g.imports >= MAX_IMPORTS_PER_RUN {
                return Err(refuse(
                    path,
                    pos,
                    format!("import: more than {MAX_IMPORTS_PER_RUN} imports in one run"),
                ));
            }
            g.imports += 1;
            root
        };
        let Some(file) = file_under(&root, path) else {
            return Err(refuse(
                path,
                pos,
                format!("import {path:?}: a module is named by a relative path inside the script's folder (no \"..\", no absolute path)"),
            ));
        };
        // A link inside the folder may still point out of it: compare real paths.
        let inside = match (root.canonicalize(), file.canonicalize()) {
            (Ok(r), Ok(f)) => f.starts_with(r),
            _ => return Err(EvalAltResult::ErrorModuleNotFound(path.to_string(), pos).into()),
        };
        if !inside {
            return Err(refuse(
                path,
                pos,
                format!("import {path:?}: the file is outside the script's folder"),
            ));
        }
        let src = std::fs::read_to_string(&file).map_err(|e| {
            refuse(
                path,
                pos,
                format!("import {path:?}: {}: {e}", file.display()),
            )
        })?;
        let mut ast = engine
            .compile(&src)
            .map_err(|e| EvalAltResult::ErrorInModule(path.to_string(), e.into(), pos))?;
        ast.set_source(path);
        self.session.borrow_mut().import_depth += 1;
        let m = Module::eval_ast_as_new(Scope::new(), &ast, engine);
        self.session.borrow_mut().import_depth -= 1;
        let mut m = m.map_err(|e| EvalAltResult::ErrorInModule(path.to_string(), e, pos))?;
        m.build_index();
        Ok(m.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_resolve_under_the_folder() {
        let root = Path::new("lib");
        assert_eq!(
            file_under(root, "util"),
            Some(PathBuf::from("lib/util.rhai"))
        );
        assert_eq!(file_under(root, "a/b"), Some(PathBuf::from("lib/a/b.rhai")));
        assert_eq!(file_under(root, "../x"), None);
        assert_eq!(file_under(root, "/etc/x"), None);
        assert_eq!(file_under(root, "./x"), None);
        assert_eq!(file_under(root, ""), None);
    }
}
