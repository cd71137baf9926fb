//! The layout's rule, checked: each folder of `src/` is a layer, and a file
//! refers (by `crate::` path, in code or in docs) only to its own layer and
//! the layers below it. The order is the README's: alloc < scope < report <
//! check < serve < integrations. A root path (`crate::snapshot`) counts as a
//! reference to whatever it re-exports, so files in folders name the folder.

use std::path::{Path, PathBuf};

const LAYERS: [&str; 6] = ["alloc", "scope", "report", "check", "serve", "integrations"];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The first segment after each `crate::` in `text`, with `use crate::{a, b}`
/// groups giving each of their names.
fn crate_refs(text: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        // `leakscope::crate::` never occurs; skip `$crate::` and `foo_crate::`.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for name in group[..end].split(',') {
                let name = name.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    refs.push(name.to_owned());
                }
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        refs.push(name);
    }
    refs
}

#[test]
fn layers_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut folders_seen = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let mut parts = rel.components();
        let first = parts
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .to_owned();
        if parts.next().is_none() {
            // `lib.rs`: the front door may name everything.
            assert_eq!(
                first, "lib.rs",
                "a file at the top of src/ besides lib.rs: {rel:?}"
            );
            continue;
        }
        let own = rank(&first).unwrap_or_else(|| panic!("{rel:?} is in no known layer"));
        folders_seen += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for name in crate_refs(&text) {
            match rank(&name) {
                Some(r) if r <= own => {}
                Some(_) => wrong.push(format!("{}: crate::{name} is a layer above", rel.display())),
                None => wrong.push(format!(
                    "{}: crate::{name} names no layer (root paths are re-exports)",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        folders_seen >= 20,
        "only {folders_seen} files found in layer folders"
    );
    assert!(
        wrong.is_empty(),
        "references against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn references_are_found() {
    let refs = crate_refs(
        "use crate::alloc::thread;\nuse crate::{report, scope::names};\n/// [`crate::LeakTracker`]\n$crate::x",
    );
    assert_eq!(refs, ["alloc", "report", "scope", "LeakTracker"]);
}
