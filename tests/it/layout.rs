//! The shape of src/ that CONTRIBUTING.md promises: no import cycle among its files, no file
//! over 800 lines outside its tests, no function over 80 lines. Read from the source text
//! (`use`/path references to `crate::`, `super::` and `self::`), so a change that breaks one
//! of them fails here with the files and functions it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 80;

/// Every .rs file under src/ with its module path, cut before its test module.
fn sources() -> Vec<(String, Vec<String>, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let test_only = test_only_modules(&root, &files);
    files
        .into_iter()
        .filter(|p| !p.starts_with(root.join("bin")))
        .map(|p| {
            let rel = p.strip_prefix(&root).expect("under src/");
            let module = module_path(rel);
            let text = std::fs::read_to_string(&p).expect("read a source file");
            let code = match text.find("#[cfg(test)]\nmod ") {
                Some(at) => &text[..at],
                None => &text[..],
            };
            // Comments name paths without depending on them.
            let code: String = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            (rel.display().to_string(), module, code)
        })
        .filter(|(_, module, _)| !test_only.contains(module))
        .collect()
}

/// The module a file under src/ holds: `a/b.rs` is `a::b`, `a/mod.rs` is `a`, lib.rs the root.
fn module_path(rel: &Path) -> Vec<String> {
    let mut module: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if matches!(
        module.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        module.pop();
    }
    module
}

/// Modules compiled for tests only (`#[cfg(test)] mod name;`), by module path.
fn test_only_modules(root: &Path, files: &[PathBuf]) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for p in files {
        let text = std::fs::read_to_string(p).expect("read a source file");
        let module = module_path(p.strip_prefix(root).expect("under src/"));
        let mut rest = text.as_str();
        while let Some(at) = rest.find("#[cfg(test)]\n") {
            rest = &rest[at + "#[cfg(test)]\n".len()..];
            let line = rest.lines().next().unwrap_or("");
            let decl = line
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            if let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) {
                let mut m = module.clone();
                m.push(name.to_string());
                out.insert(m);
            }
        }
    }
    out
}

/// The module paths `code` names through `crate::`, `super::` and `self::` (a `{...}` group
/// names each of its items), resolved against `module`.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
        ("self::", module.to_vec()),
    ] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut path = base.clone();
            let mut s = rest;
            loop {
                let n = ident(s);
                if n == 0 {
                    break;
                }
                path.push(s[..n].to_string());
                s = &s[n..];
                match s.strip_prefix("::") {
                    Some(next) => s = next,
                    None => break,
                }
            }
            if let Some(group) = s.strip_prefix('{') {
                // Each item of the group, at the first level.
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            let name = item.trim().split("::").next().unwrap_or("").to_string();
                            let mut p = path.clone();
                            p.push(name);
                            out.push(p);
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                let name = item.trim().split("::").next().unwrap_or("").to_string();
                let mut p = path.clone();
                p.push(name);
                out.push(p);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn src_has_no_import_cycle() {
    let files = sources();
    let by_module: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|(name, module, _)| (module.clone(), name.clone()))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, module, code) in &files {
        for mut path in references(module, code) {
            // The longest prefix that is a file of its own.
            while !path.is_empty() {
                if let Some(target) = by_module.get(&path) {
                    if target != name && !path.is_empty() {
                        edges
                            .entry(name.clone())
                            .or_default()
                            .insert(target.clone());
                    }
                    break;
                }
                path.pop();
            }
        }
    }
    // Depth-first search for a path back to where it started.
    fn visit(
        at: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(at.to_string(), 1);
        stack.push(at.to_string());
        for next in edges.get(at).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(at.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for (name, _, _) in &files {
        if !state.contains_key(name)
            && let Some(cycle) = visit(name, &edges, &mut state, &mut Vec::new())
        {
            panic!("an import cycle in src/: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn src_files_and_functions_stay_short() {
    let mut long = Vec::new();
    for (name, _, code) in sources() {
        let lines: Vec<&str> = code.lines().collect();
        if lines.len() > MAX_FILE_LINES {
            long.push(format!("{name}: {} lines", lines.len()));
        }
        for (i, line) in lines.iter().enumerate() {
            let body = line.trim_start();
            let indent = &line[..line.len() - body.len()];
            let is_fn = ["fn ", "pub fn ", "async fn ", "pub async fn ", "const fn "]
                .iter()
                .any(|p| body.starts_with(p))
                || (body.starts_with("pub(") && body.contains(") fn ")
                    || body.contains(") async fn "));
            if !is_fn || body.ends_with(';') {
                continue;
            }
            let close = format!("{indent}}}");
            if let Some(end) = lines[i + 1..].iter().position(|l| *l == close) {
                let n = end + 2;
                if n > MAX_FN_LINES {
                    long.push(format!("{name}:{}: a function of {n} lines", i + 1));
                }
            }
        }
    }
    assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
}
