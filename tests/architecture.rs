//! The dependency rule, enforced: every top-level module of `src/` has a layer, and a module may
//! use only modules of lower layers (ARCHITECTURE.md draws them), so there are no import cycles.
//! An exception would be listed in `KNOWN` (empty now); the test fails on any new upward edge,
//! and also when a listed edge is gone, so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, lowest first. A module may import modules of strictly lower layers.
const LAYERS: &[(&str, u8)] = &[
    // L0: data and pure logic.
    ("net", 0),
    ("secret", 1),
    ("config", 1),
    ("metrics", 1),
    // L1: the engine over storage, every outbound connection, client authentication.
    ("cache", 2),
    ("access", 2),
    ("error", 2),
    ("upstream", 3),
    // L2: protocol front ends.
    ("registry", 4),
    ("goproxy", 4),
    // L2: other replicas (the shared tier and peers), a source like a protocol's.
    ("shared", 4),
    // L3-L4: bundle's server side; the state everything is built into.
    ("bundle", 5),
    ("app", 6),
    ("state", 6),
    // L5: router, admin API, listeners.
    ("admin", 7),
    ("ops", 7),
    ("web", 8),
    ("server", 9),
    ("gateway", 9),
    ("traces", 9),
    // L6: commands and client-side tools.
    ("tools", 10),
    ("gc", 11),
    ("cli", 11),
    ("lib", 12),
    ("main", 13),
];

/// Upward edges that exist today and are scheduled to go. Empty: keep it so.
const KNOWN: &[(&str, &str)] = &[];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level module a file under `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Modules named after `prefix` (`crate::` in the library, `wharf::` in the binary).
fn referenced(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let after = &rest[i + prefix.len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

fn edges() -> BTreeMap<(String, String), PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let from = module_of(&src, &f);
        let text = std::fs::read_to_string(&f).unwrap();
        let prefix = if from == "main" { "wharf::" } else { "crate::" };
        for to in referenced(&text, prefix) {
            // Items defined in lib.rs itself (`crate::serve`, `crate::trace_layer`).
            if layer(&to).is_none() || to == from {
                continue;
            }
            out.entry((from.clone(), to)).or_insert(f.clone());
        }
    }
    out
}

#[test]
fn every_module_of_src_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let missing: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| layer(m).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in tests/architecture.rs: {missing:?}"
    );
}

#[test]
fn modules_import_only_lower_layers() {
    let edges = edges();
    let mut violations = Vec::new();
    for ((from, to), file) in &edges {
        let (Some(lf), Some(lt)) = (layer(from), layer(to)) else {
            continue;
        };
        if lt >= lf && !KNOWN.contains(&(from.as_str(), to.as_str())) {
            violations.push(format!("{from} -> {to} ({})", file.display()));
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layer rule (a module may use only lower layers):\n{}",
        violations.join("\n")
    );
}

#[test]
fn known_exceptions_still_exist() {
    let edges = edges();
    let gone: Vec<_> = KNOWN
        .iter()
        .filter(|(f, t)| {
            !edges.contains_key(&(f.to_string(), t.to_string())) || layer(t) < layer(f)
        })
        .collect();
    assert!(
        gone.is_empty(),
        "these upward edges are gone: remove them from KNOWN: {gone:?}"
    );
}
