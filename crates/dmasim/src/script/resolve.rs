//! Resolving a script's calls against the registered API.
//!
//! Rhai binds function calls only when they run, so a misspelt kernel name in a
//! branch that a run never takes goes unnoticed, and a call that does run fails with
//! Rhai's bare "Function not found: name (types)". `dmasim check` walks the compiled
//! script and reports every call whose name (with that number of arguments) is not a
//! registered function, a Rhai built-in or a function the script defines; both paths
//! name the closest existing functions.

use std::collections::{BTreeMap, BTreeSet};

use rhai::{ASTNode, Engine, Expr, Position, AST};

/// Rhai's keyword-like functions, which the engine handles itself and never lists.
const KEYWORD_FNS: &[&str] = &[
    "print",
    "debug",
    "type_of",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_var",
    "is_def_fn",
    "eval",
    "this",
];

/// Every callable name with the argument counts it accepts.
pub(super) struct Api {
    arities: BTreeMap<String, BTreeSet<usize>>,
}

impl Api {
    /// The functions `engine` has (its own and the packages'), plus `script`'s.
    pub(super) fn of(engine: &Engine, script: Option<&AST>) -> Api {
        let mut arities: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (name, n) in engine_functions(engine, true) {
            arities.entry(name).or_default().insert(n);
        }
        if let Some(ast) = script {
            for f in ast.iter_functions() {
                arities
                    .entry(f.name.to_string())
                    .or_default()
                    .insert(f.params.len());
            }
        }
        Api { arities }
    }

    fn known(&self, name: &str, nargs: usize) -> bool {
        KEYWORD_FNS.contains(&name)
            || name.starts_with("get$")
            || name.starts_with("set$")
            || !is_identifier(name)
            || self.arities.get(name).is_some_and(|a| a.contains(&nargs))
    }

    /// Why `name` with `nargs` arguments (of `types`, when Rhai said which) cannot be
    /// called, with the closest names.
    pub(super) fn explain(&self, name: &str, nargs: usize, types: Option<&str>) -> String {
        if let (Some(a), Some(t)) = (self.arities.get(name), types) {
            if a.contains(&nargs) {
                return format!(
                    "no `{name}` takes arguments of these types ({t}): check each argument (a `()` is what a failed call or a missing value gives)"
                );
            }
        }
        if let Some(a) = self.arities.get(name) {
            let takes: Vec<String> = a.iter().map(ToString::to_string).collect();
            return format!(
                "`{name}` takes {} argument(s), not {nargs} (see docs/script-api.md)",
                takes.join(" or ")
            );
        }
        let close = self.closest(name);
        if close.is_empty() {
            format!("unknown function `{name}` (see docs/script-api.md for the functions scripts can call)")
        } else {
            format!(
                "unknown function `{name}`; did you mean {}?",
                close
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        }
    }

    /// Up to three existing names nearest to `name` (edit distance, then a shared
    /// prefix or suffix of the kernel-style words).
    fn closest(&self, name: &str) -> Vec<&str> {
        let limit = (name.len() / 3).clamp(2, 5);
        let mut scored: Vec<(usize, &str)> = self
            .arities
            .keys()
            .filter(|k| is_identifier(k))
            .filter_map(|k| {
                let d = levenshtein(name, k);
                let related = k.len() > 4 && (name.contains(k.as_str()) || k.contains(name));
                (d <= limit || related)
                    .then_some((if related { d.min(limit) } else { d }, k.as_str()))
            })
            .collect();
        scored.sort();
        scored.into_iter().take(3).map(|(_, k)| k).collect()
    }

    /// Every call in `ast` that resolves to nothing: (position, explanation).
    pub(super) fn unresolved(&self, ast: &AST) -> Vec<(Position, String)> {
        let mut out = Vec::new();
        ast.walk(&mut |path: &[ASTNode]| {
            if let Some(ASTNode::Expr(e)) = path.last() {
                let (call, pos, nargs) = match e {
                    Expr::FnCall(x, pos) => (x, *pos, x.args.len()),
                    // A method call passes its object as the first argument.
                    Expr::MethodCall(x, pos) => (x, *pos, x.args.len() + 1),
                    _ => return true,
                };
                if call.is_operator_call() || !call.namespace.is_empty() {
                    return true;
                }
                if !self.known(&call.name, nargs) {
                    out.push((pos, self.explain(&call.name, nargs, None)));
                }
            }
            true
        });
        out
    }
}

/// `name(a: T, b: U) -> R` → (name, 2); `Type.name(...)`-style and operator
/// signatures are kept by name as Rhai prints them.
/// Every public function `engine` has, as (name, number of parameters): its own
/// and its packages', and Rhai's standard packages when `include_standard`.
///
/// Read from the function metadata Rhai keeps without its `metadata` feature, so
/// the engine does not format every parameter's type name when it is built.
pub(super) fn engine_functions(engine: &Engine, include_standard: bool) -> Vec<(String, usize)> {
    engine.collect_fn_metadata(
        None,
        |info| {
            (info.metadata.access == rhai::FnAccess::Public).then(|| {
                let name = info.metadata.name.as_str();
                let name = if info.namespace.is_empty() {
                    name.to_string()
                } else {
                    format!("{}::{name}", info.namespace)
                };
                (name, info.metadata.num_params)
            })
        },
        include_standard,
    )
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The edit distance between two short names (insertions, deletions, substitutions).
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// "name (i64, bool)" from Rhai's `ErrorFunctionNotFound` → (name, 2, "i64, bool").
pub(super) fn parse_not_found(sig: &str) -> (String, usize, String) {
    match sig.find(" (") {
        Some(i) => {
            let args = sig[i + 2..].trim_end_matches(')');
            let n = if args.trim().is_empty() {
                0
            } else {
                args.split(',').count()
            };
            (sig[..i].trim().to_string(), n, args.trim().to_string())
        }
        None => (sig.trim().to_string(), 0, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("dma_map_singel", "dma_map_single"), 2);
        assert_eq!(levenshtein("kmalloc", "kmalloc"), 0);
        assert_eq!(levenshtein("", "abc"), 3);
    }

    #[test]
    fn engine_functions_have_name_and_arity() {
        let engine = crate::script::engine_for_check();
        let fns = engine_functions(&engine, false);
        assert!(fns.contains(&("dma_map_single".into(), 3)), "{fns:?}");
        assert!(fns.contains(&("now".into(), 0)));
        // Rhai's standard packages only when asked for.
        assert!(!fns.iter().any(|(n, _)| n == "sqrt"));
        assert!(engine_functions(&engine, true).contains(&("sqrt".into(), 1)));
    }

    #[test]
    fn not_found_messages_parse_to_name_and_arity() {
        assert_eq!(
            parse_not_found("foo (i64, bool)"),
            ("foo".into(), 2, "i64, bool".into())
        );
        assert_eq!(parse_not_found("bar ()"), ("bar".into(), 0, String::new()));
    }
}
