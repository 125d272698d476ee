//! `cargo xtask layers`: draws which top-level modules of redirector-user's
//! library use which, and fails if one uses a module of a higher layer.
//! The layers are the ones `redirector-user/src/lib.rs` documents.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// Lowest first; a module may use its own layer and the ones below.
const LAYERS: &[&[&str]] = &[
    &["counters", "model", "sip"],
    &["config"],
    &["kernel", "probe", "store"],
    &["edge", "home"],
    &["ops"],
    &["daemon"],
];

const SOURCE: &str = "redirector-user/src";

pub fn check() -> Result<()> {
    let graph = graph(Path::new(SOURCE))?;
    let mut upward = Vec::new();
    for (module, uses) in &graph {
        let from = layer(module).with_context(|| format!("module `{module}` is in no layer of xtask/src/layers.rs"))?;
        let shown: Vec<String> = uses
            .iter()
            .map(|used| {
                let to = layer(used).unwrap_or(usize::MAX);
                if to > from {
                    upward.push(format!("{module} (layer {from}) uses {used} (layer {to})"));
                }
                format!("{used}:{to}")
            })
            .collect();
        println!("{module:<9} layer {from} -> {}", if shown.is_empty() { "-".to_owned() } else { shown.join(", ") });
    }
    if !upward.is_empty() {
        bail!("modules use higher layers:\n  {}", upward.join("\n  "));
    }
    println!("layers: every dependency points down or sideways");
    Ok(())
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Top-level module → the other top-level modules its files name as `crate::…`.
fn graph(source: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(source)? {
        let relative = file.strip_prefix(source).expect("walked from source");
        let Some(module) = top_module(relative) else { continue };
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let uses = graph.entry(module.clone()).or_default();
        uses.extend(crate_paths(&text).into_iter().filter(|used| *used != module));
    }
    Ok(graph)
}

/// `lib.rs` and `main.rs` are the crate's roots, not a layer.
fn top_module(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(files)
}

/// The first segment of every `crate::` path, including each item of a
/// `crate::{a::…, b}` group.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => found.extend(group_heads(group)),
            None => found.extend(identifier(rest)),
        }
    }
    found
}

/// The first identifier of each comma-separated item at the group's own depth.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && depth == 0 && !c.is_whitespace() => {
                heads.extend(identifier(&group[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn identifier(text: &str) -> Option<String> {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
    (end > 0).then(|| text[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_groups_name_their_first_segment() {
        let text = "use crate::{\n    edge::{a, b},\n    model::X,\n};\nlet x = crate::sip::Aor::new();";
        let found: Vec<String> = crate_paths(text).into_iter().collect();
        assert_eq!(found, ["edge", "model", "sip"]);
    }

    #[test]
    fn every_layer_is_known_and_unique() {
        let all: Vec<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
        let unique: BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(all.len(), unique.len());
        assert_eq!(layer("daemon"), Some(5));
        assert_eq!(layer("nowhere"), None);
    }
}
