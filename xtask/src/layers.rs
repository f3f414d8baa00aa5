//! The architecture check `cargo xtask test` runs first: podnet's imports point one way, and
//! its modules form no import cycle.
//!
//! Every file of `podnet/src` is a module (`ops/pod.rs` is `ops::pod`, `ops/mod.rs` is `ops`).
//! Its edges are the `crate::`, `super::` and (in the binary) `podnet::` paths it names, in
//! `use` declarations and in code, each resolved to the longest module path that exists. Two
//! rules:
//! - a module of one layer may only name modules of its own top-level module or of a lower
//!   layer ([`LAYERS`]); two different top-level modules of the same layer may not name each
//!   other;
//! - the module graph has no cycle (within a top-level module too).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// podnet's layers, lowest first: a top-level module may name only its own and lower rows.
pub const LAYERS: &[&[&str]] = &[
    &["model"],
    &["config"],
    &["sys"],
    &["store", "datapath"],
    &["ops"],
    &["cni", "agent"],
    &["demo"],
    &["cli"],
    &["main"],
];

/// A module path such as `ops::pod` (empty: the crate root).
type Module = Vec<String>;

fn rank(top: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&top))
}

/// The module a file defines, relative to `src`.
fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// Every path starting with `crate::`, `super::` or `podnet::` in `text`, as segments with the
/// prefix kept first. `use` groups (`crate::{a, b::{c}}`) are expanded.
fn paths(text: &str) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    for prefix in ["crate::", "super::", "podnet::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(prefix) {
            let start = from + at;
            from = start + prefix.len();
            let boundary = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric()
                    || bytes[start - 1] == b'_'
                    || bytes[start - 1] == b':');
            if boundary {
                expand(&code[start..], &[], &mut out);
            }
        }
    }
    out
}

/// Expands the path at the start of `rest` (after `base`) into `out`.
fn expand(rest: &str, base: &[String], out: &mut Vec<Vec<String>>) {
    let mut segs = base.to_vec();
    let mut rest = rest;
    loop {
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        segs.push(ident.clone());
        rest = &rest[ident.len()..];
        if let Some(next) = rest.strip_prefix("::") {
            rest = next;
            if let Some(group) = rest.strip_prefix('{') {
                for item in split_group(group) {
                    expand(item.trim(), &segs, out);
                }
                return;
            }
        } else {
            break;
        }
    }
    if !segs.is_empty() {
        out.push(segs);
    }
}

/// The comma-separated items of a `{...}` group whose opening brace was just consumed.
fn split_group(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// Resolves a path named in module `from` to the longest known module it starts with.
fn resolve(
    from: &Module,
    path: &[String],
    known: &BTreeSet<Module>,
    in_bin: bool,
) -> Option<Module> {
    let (mut base, rest): (Module, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("podnet") if in_bin => (vec!["podnet".to_owned()], &path[1..]),
        Some("super") => {
            let mut base = from.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            (base, rest)
        }
        _ => return None,
    };
    let mut best = (!base.is_empty() && known.contains(&base)).then(|| base.clone());
    for seg in rest {
        base.push(seg.clone());
        if known.contains(&base) {
            best = Some(base.clone());
        }
    }
    best
}

/// The import graph of a crate rooted at `src`: module -> modules it names.
fn graph(src: &Path, bin_files: &[&str]) -> Result<BTreeMap<Module, BTreeSet<Module>>> {
    let mut files = Vec::new();
    collect(src, src, &mut files)?;
    let mut known: BTreeSet<Module> = files.iter().map(|(m, _, _)| m.clone()).collect();
    // The library's modules as the binary names them.
    for (m, _, bin) in &files {
        if !bin {
            let mut lib = vec!["podnet".to_owned()];
            lib.extend(m.iter().cloned());
            known.insert(lib);
        }
    }
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, text, in_bin) in &files {
        let entry = edges.entry(module.clone()).or_default();
        for path in paths(text) {
            let in_bin = *in_bin || bin_files.contains(&module.first().map_or("", String::as_str));
            if let Some(to) = resolve(module, &path, &known, in_bin)
                && &to != module
                && !top(&to).is_empty()
            {
                entry.insert(to);
            }
        }
    }
    Ok(edges)
}

fn collect(src: &Path, dir: &Path, out: &mut Vec<(Module, String, bool)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(src, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src).expect("below src");
            let text = std::fs::read_to_string(&path)?;
            let module = module_of(rel);
            let top = module.first().map_or("", String::as_str);
            let in_bin = matches!(top, "cli" | "demo" | "main");
            out.push((module, text, in_bin));
        }
    }
    Ok(())
}

/// The top-level layer module of `m` as the rules see it (`podnet::ops::x` is `ops`).
fn top(m: &Module) -> &str {
    match m.first().map(String::as_str) {
        Some("podnet") => m.get(1).map_or("", String::as_str),
        Some(top) => top,
        None => "",
    }
}

/// Every violation of the two rules in `edges`.
fn violations(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    let mut found = Vec::new();
    let name = |m: &Module| m.join("::");
    for (from, tos) in edges {
        for to in tos {
            let (a, b) = (top(from), top(to));
            if a == b {
                continue;
            }
            match (rank(a), rank(b)) {
                (Some(ra), Some(rb)) if rb < ra => {}
                (Some(_), Some(_)) => found.push(format!(
                    "{} imports {} against the layers (`{a}` may not name `{b}`)",
                    name(from),
                    name(to)
                )),
                _ => found.push(format!(
                    "{} imports {}: `{a}` or `{b}` is in no layer of xtask/src/layers.rs",
                    name(from),
                    name(to)
                )),
            }
        }
    }
    if let Some(cycle) = find_cycle(edges) {
        found.push(format!(
            "import cycle: {}",
            cycle.iter().map(name).collect::<Vec<_>>().join(" -> ")
        ));
    }
    found
}

/// A cycle in the graph, if there is one (depth-first search with colours).
fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        state.insert(m.clone(), 1);
        stack.push(m.clone());
        for to in edges.get(m).into_iter().flatten() {
            match state.get(to).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == to).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(to.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(to, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if state.get(m).copied().unwrap_or(0) == 0
            && let Some(c) = visit(m, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// Checks `podnet/src`; fails naming every violation.
pub fn check(root: &Path) -> Result<()> {
    let edges = graph(&root.join("podnet/src"), &["cli", "demo", "main"])?;
    let found = violations(&edges);
    if !found.is_empty() {
        bail!("podnet's layering is broken:\n  {}", found.join("\n  "));
    }
    let count: usize = edges.values().map(BTreeSet::len).sum();
    println!(
        "layers: {} modules, {count} imports, all pointing one way, no cycle",
        edges.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Module {
        s.split("::").map(str::to_owned).collect()
    }

    #[test]
    fn groups_expand() {
        let p = paths("use crate::{a::{b, c::D}, e};\nlet x = super::f::g();");
        assert!(p.contains(&m("crate::a::b")));
        assert!(p.contains(&m("crate::a::c::D")));
        assert!(p.contains(&m("crate::e")));
        assert!(p.contains(&m("super::f::g")));
    }

    #[test]
    fn the_rules_catch_upward_imports_and_cycles() {
        let mut edges = BTreeMap::new();
        edges.insert(m("store::pods"), BTreeSet::from([m("ops::pod")]));
        edges.insert(m("ops::pod"), BTreeSet::from([m("store::pods")]));
        let found = violations(&edges);
        assert!(
            found.iter().any(|f| f.contains("against the layers")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.contains("import cycle")),
            "{found:?}"
        );
        let mut clean = BTreeMap::new();
        clean.insert(
            m("ops::pod"),
            BTreeSet::from([m("store::pods"), m("ops::endpoint")]),
        );
        clean.insert(m("ops::endpoint"), BTreeSet::from([m("datapath::attach")]));
        assert!(violations(&clean).is_empty());
        let mut sideways = BTreeMap::new();
        sideways.insert(m("store::pods"), BTreeSet::from([m("datapath::maps")]));
        assert_eq!(violations(&sideways).len(), 1);
    }

    #[test]
    fn super_resolves_against_the_module() {
        let known = BTreeSet::from([m("ops"), m("ops::pod"), m("ops::ctx")]);
        assert_eq!(
            resolve(&m("ops::pod"), &m("super::ctx::Ctx"), &known, false),
            Some(m("ops::ctx"))
        );
        assert_eq!(
            resolve(&m("ops::pod"), &m("super::Ctx"), &known, false),
            Some(m("ops"))
        );
    }
}
