//! The modules of `datamig` form layers, and a module imports only from its own layer and
//! the layers below it: the data types at the bottom, the per-database steps (`backend`)
//! above them, and what is written once over those steps at the top. This test reads
//! `src/**/*.rs` as text, finds every path that starts with `crate::`, `super::` or
//! `self::` (in `use` items and in code; comments and string literals are skipped),
//! resolves it to the file that defines it, and fails on:
//!
//! - a file of a top-level module that is in no layer of [`LAYERS`] (a new module must be
//!   placed), or a module of [`LAYERS`] that has no file;
//! - an import of a module of a higher layer, or of an item of the crate root;
//! - an import loop between top-level modules (even within one layer);
//! - an import loop between the files of one directory (`mod.rs` aside, which declares
//!   them), except the loops listed in [`KNOWN_LOOPS`].
//!
//! Every file is found by walking `src/`, so files added later are covered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One layer: a name for messages, and its top-level modules (a file `x.rs` or a
/// directory `x/`).
struct Layer {
    name: &'static str,
    modules: &'static [&'static str],
}

/// The layers, bottom first. Each module may import from its own layer and the ones before.
const LAYERS: &[Layer] = &[
    Layer {
        name: "data",
        modules: &[
            "error",
            "sql",
            "bulk",
            "copy_text",
            "ctx",
            "key",
            "ledger",
            "merge",
            "migration",
            "session",
            "trace",
            "idempotency_check",
            "table_change",
        ],
    },
    Layer {
        name: "per-database steps",
        modules: &["backend"],
    },
    Layer {
        name: "written once",
        modules: &[
            "admin",
            "copy",
            "fingerprint",
            "fleet",
            "helpers",
            "idempotency",
            "portable",
            "registry",
            "runner",
            "testing",
            "upsert",
        ],
    },
];

/// Import loops between the files of one directory that are known, and being taken apart:
/// each entry is a directory and the files of one loop, exactly. Any other loop fails the
/// check, and so does an entry that no longer matches a loop: delete it then. None today.
const KNOWN_LOOPS: &[(&str, &[&str])] = &[];

#[test]
fn every_module_imports_only_its_layer_and_those_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    read_sources(&src, &src, &mut files);
    assert!(files.contains_key("lib.rs"), "no src/lib.rs under {src:?}");
    let problems = check(&files, LAYERS, KNOWN_LOOPS);
    assert!(
        problems.is_empty(),
        "the modules of framework/src do not keep their layers:\n  - {}",
        problems.join("\n  - ")
    );
}

/// Reads every `.rs` file under `dir`, keyed by its path relative to `root` (`/`-separated).
fn read_sources(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            read_sources(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under the root");
            let key = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            files.insert(key, text);
        }
    }
}

/// Every problem found in `files` (paths relative to `src/`, `lib.rs` the crate root).
fn check(
    files: &BTreeMap<String, String>,
    layers: &[Layer],
    known_loops: &[(&str, &[&str])],
) -> Vec<String> {
    let mut problems = Vec::new();
    let layer_of = |module: &str| layers.iter().position(|l| l.modules.contains(&module));

    let modules: BTreeSet<String> = files.keys().filter_map(|f| top_module(f)).collect();
    for file in files.keys() {
        if let Some(module) = top_module(file)
            && layer_of(&module).is_none()
        {
            problems.push(format!(
                "src/{file}: the module `{module}` is in no layer: add it to LAYERS in \
                 framework/tests/layers.rs, in the layer of what it holds"
            ));
        }
    }
    for layer in layers {
        for module in layer.modules {
            if !modules.contains(*module) {
                problems.push(format!(
                    "LAYERS names `{module}` ({}), which has no file in src/: remove it",
                    layer.name
                ));
            }
        }
    }

    let edges = imports(files);

    // Upward imports.
    for edge in &edges {
        let (Some(from), Some(to)) = (top_module(&edge.from), top_module(&edge.to)) else {
            if edge.to == "lib.rs" && edge.from != "lib.rs" {
                problems.push(format!(
                    "src/{}:{}: `{}` names an item of the crate root, which only declares \
                     and re-exports: define it in a module of a layer",
                    edge.from, edge.line, edge.path
                ));
            }
            continue;
        };
        if let (Some(a), Some(b)) = (layer_of(&from), layer_of(&to))
            && a < b
        {
            problems.push(format!(
                "src/{}:{}: `{from}` ({}) imports `{to}` ({}), a layer above it: `{}`",
                edge.from, edge.line, layers[a].name, layers[b].name, edge.path
            ));
        }
    }

    // Loops between top-level modules.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for edge in &edges {
        if let (Some(from), Some(to)) = (top_module(&edge.from), top_module(&edge.to))
            && from != to
        {
            graph.entry(from).or_default().insert(to);
        }
    }
    for component in loops(&graph) {
        problems.push(format!(
            "the modules {} import each other: {}",
            component.iter().cloned().collect::<Vec<_>>().join(", "),
            describe_loop(&edges, &component, top_module)
        ));
    }

    // Loops between the files of one directory.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for edge in &edges {
        if edge.from != edge.to
            && !is_mod_file(&edge.from)
            && !is_mod_file(&edge.to)
            && parent(&edge.from).is_some()
            && parent(&edge.from) == parent(&edge.to)
        {
            graph
                .entry(edge.from.clone())
                .or_default()
                .insert(edge.to.clone());
        }
    }
    let found = loops(&graph);
    for component in &found {
        let dir = parent(component.iter().next().expect("a file")).unwrap_or_default();
        let names: BTreeSet<&str> = component.iter().map(|f| file_name(f)).collect();
        let known = known_loops.iter().any(|(d, loop_files)| {
            *d == dir && loop_files.iter().copied().collect::<BTreeSet<_>>() == names
        });
        if !known {
            problems.push(format!(
                "the files {} of src/{dir}/ import each other: {}",
                names.iter().copied().collect::<Vec<_>>().join(", "),
                describe_loop(&edges, component, |f| Some(f.to_string()))
            ));
        }
    }
    for (dir, loop_files) in known_loops {
        let expected: BTreeSet<String> = loop_files.iter().map(|f| format!("{dir}/{f}")).collect();
        if !found.contains(&expected) {
            problems.push(format!(
                "KNOWN_LOOPS lists src/{dir}/ {}, which no longer import each other in one \
                 loop: remove the entry",
                loop_files.join(", ")
            ));
        }
    }
    problems
}

/// One path that names something of another file.
#[derive(Debug)]
struct Import {
    /// The file the path is in.
    from: String,
    line: usize,
    /// The path as resolved from the crate root, `crate::a::b`.
    path: String,
    /// The file that defines what it names.
    to: String,
}

/// The top-level module of a file: `runner` for `runner/batch.rs`; `None` for `lib.rs`.
fn top_module(file: &str) -> Option<String> {
    if file == "lib.rs" {
        return None;
    }
    let first = file.split('/').next().unwrap_or(file);
    Some(first.strip_suffix(".rs").unwrap_or(first).to_string())
}

fn is_mod_file(file: &str) -> bool {
    file == "mod.rs" || file.ends_with("/mod.rs")
}

fn parent(file: &str) -> Option<&str> {
    file.rsplit_once('/').map(|(dir, _)| dir)
}

fn file_name(file: &str) -> &str {
    file.rsplit_once('/').map_or(file, |(_, name)| name)
}

/// The module path of a file: `[]` for `lib.rs`, `[runner, batch]` for `runner/batch.rs`.
fn module_path(file: &str) -> Vec<String> {
    if file == "lib.rs" {
        return Vec::new();
    }
    let mut parts: Vec<String> = file.split('/').map(str::to_string).collect();
    let last = parts.pop().unwrap_or_default();
    if last != "mod.rs" {
        parts.push(last.strip_suffix(".rs").unwrap_or(&last).to_string());
    }
    parts
}

/// Every path of every file that names something of another file.
fn imports(files: &BTreeMap<String, String>) -> Vec<Import> {
    let modules: BTreeSet<String> = files.keys().filter_map(|f| top_module(f)).collect();
    let reexports = root_reexports(files.get("lib.rs").map_or("", String::as_str), &modules);
    let mut imports = Vec::new();
    for (file, text) in files {
        if file == "lib.rs" {
            continue;
        }
        for (line, path) in paths(&tokens(text), &module_path(file)) {
            if let Some(to) = resolve(files, &reexports, &path, 0)
                && to != *file
            {
                imports.push(Import {
                    from: file.clone(),
                    line,
                    path: format!("crate::{}", path.join("::")),
                    to,
                });
            }
        }
    }
    imports
}

/// The names the crate root imports or re-exports from its modules (`Key` -> `[key, Key]`),
/// and `None` for those it takes from other crates (`Postgres`, `sqlx`).
fn root_reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, Option<Vec<String>>> {
    let tokens = tokens(lib);
    let mut names = BTreeMap::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].kind {
            Kind::Punct('{') => depth += 1,
            Kind::Punct('}') => depth -= 1,
            Kind::Ident(word) if word == "use" && depth == 0 => {
                let (trees, end) = use_tree(&tokens, i + 1);
                for (path, alias) in trees {
                    let name = alias.or_else(|| path.last().cloned()).unwrap_or_default();
                    let path: Vec<String> = path
                        .into_iter()
                        .skip_while(|s| s == "crate" || s == "self")
                        .collect();
                    let internal = path.first().is_some_and(|first| modules.contains(first));
                    names.insert(name, internal.then_some(path));
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// The file that defines what `path` (from the crate root) names; `None` for another
/// crate's item.
fn resolve(
    files: &BTreeMap<String, String>,
    reexports: &BTreeMap<String, Option<Vec<String>>>,
    path: &[String],
    depth: usize,
) -> Option<String> {
    let file_of = |prefix: &[String]| {
        let joined = prefix.join("/");
        [format!("{joined}.rs"), format!("{joined}/mod.rs")]
            .into_iter()
            .find(|f| files.contains_key(f))
    };
    if path.is_empty() {
        return Some("lib.rs".to_string());
    }
    if file_of(&path[..1]).is_none() {
        // An item of the root, or one it re-exports.
        return match reexports.get(&path[0]) {
            Some(None) => None,
            Some(Some(source)) if depth < 4 => {
                let mut full = source.clone();
                full.extend(path[1..].iter().cloned());
                resolve(files, reexports, &full, depth + 1)
            }
            _ => Some("lib.rs".to_string()),
        };
    }
    (1..=path.len()).rev().find_map(|n| file_of(&path[..n]))
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    line: usize,
}

/// The identifiers and punctuation of Rust source, without comments, string and character
/// literals, lifetimes and numbers.
fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut nesting = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    nesting += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    nesting -= 1;
                    i += 2;
                    if nesting == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_string(&chars, i + 1, &mut line);
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                // An escaped character: up to the closing quote.
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime or a label.
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let raw = matches!(word.as_str(), "r" | "br" | "cr");
            if raw && (at(i) == '"' || (at(i) == '#' && (at(i + 1) == '"' || at(i + 1) == '#'))) {
                let mut hashes = 0;
                while at(i) == '#' {
                    hashes += 1;
                    i += 1;
                }
                i += 1;
                loop {
                    if i >= chars.len() {
                        break;
                    }
                    if chars[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#') {
                        i += 1 + hashes;
                        break;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                i = skip_string(&chars, i + 1, &mut line);
            } else if word == "b" && at(i) == '\'' {
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            } else if word == "r" && at(i) == '#' {
                // A raw identifier: `r#type`.
                i += 1;
                let start = i;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
                tokens.push(Token {
                    kind: Kind::Ident(chars[start..i].iter().collect()),
                    line,
                });
            } else {
                tokens.push(Token {
                    kind: Kind::Ident(word),
                    line,
                });
            }
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(Token {
                kind: Kind::PathSep,
                line,
            });
            i += 2;
        } else {
            tokens.push(Token {
                kind: Kind::Punct(c),
                line,
            });
            i += 1;
        }
    }
    tokens
}

/// Skips a string literal's body from `i` (after its opening quote); returns the index
/// after its closing quote.
fn skip_string(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                // A line continuation skips its newline.
                if chars.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
            }
            '"' => return i + 1,
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// Every path that starts with `crate`, `super` or `self` in a file whose module path is
/// `module`, resolved to a path from the crate root, with its line.
fn paths(tokens: &[Token], module: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    // Inline modules (`mod tests { .. }`) around the current token: name and brace depth.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        match &token.kind {
            Kind::Punct('{') => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    inline.push((name, depth));
                }
            }
            Kind::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Kind::Punct(';') => pending_mod = None,
            Kind::Ident(word) if word == "mod" => {
                if let Some(Kind::Ident(name)) = tokens.get(i + 1).map(|t| &t.kind) {
                    pending_mod = Some(name.clone());
                }
            }
            Kind::Ident(word)
                if matches!(word.as_str(), "crate" | "super" | "self")
                    && tokens.get(i + 1).map(|t| &t.kind) == Some(&Kind::PathSep)
                    && (i == 0 || tokens[i - 1].kind != Kind::PathSep) =>
            {
                let mut base: Vec<String> = module.to_vec();
                base.extend(inline.iter().map(|(name, _)| name.clone()));
                let mut j = i;
                match word.as_str() {
                    "crate" => base.clear(),
                    "super" => {
                        base.pop();
                        // `super::super::..`
                        while tokens.get(j + 2).map(|t| &t.kind)
                            == Some(&Kind::Ident("super".into()))
                            && tokens.get(j + 3).map(|t| &t.kind) == Some(&Kind::PathSep)
                        {
                            base.pop();
                            j += 2;
                        }
                    }
                    _ => {}
                }
                let (trees, end) = use_tree(tokens, j + 2);
                for (path, _) in trees {
                    let mut full = base.clone();
                    full.extend(path);
                    found.push((token.line, full));
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The paths of a `use` tree (or of a plain path) starting at token `i`, each with its
/// alias (`as name`); and the index of the token after it. A path ends at anything but an
/// identifier or `::` (`::<` of generic arguments, `(`, `;`, `!`).
#[allow(clippy::type_complexity)]
fn use_tree(tokens: &[Token], mut i: usize) -> (Vec<(Vec<String>, Option<String>)>, usize) {
    let kind = |i: usize| tokens.get(i).map(|t| &t.kind);
    let mut prefix: Vec<String> = Vec::new();
    loop {
        match kind(i) {
            Some(Kind::Ident(word)) if word == "self" && !prefix.is_empty() => {
                // `a::{self}` names `a`.
                i += 1;
                break;
            }
            Some(Kind::Ident(word)) => {
                prefix.push(word.clone());
                i += 1;
                if kind(i) == Some(&Kind::PathSep) {
                    i += 1;
                    continue;
                }
                break;
            }
            Some(Kind::Punct('{')) => {
                let mut paths = Vec::new();
                i += 1;
                loop {
                    match kind(i) {
                        Some(Kind::Punct('}')) => {
                            i += 1;
                            break;
                        }
                        Some(Kind::Punct(',')) => i += 1,
                        None => break,
                        _ => {
                            let (inner, end) = use_tree(tokens, i);
                            for (path, alias) in inner {
                                let mut full = prefix.clone();
                                full.extend(path);
                                paths.push((full, alias));
                            }
                            // Skip anything the tree did not take (never loop in place).
                            i = end.max(i + 1);
                        }
                    }
                }
                return (paths, i);
            }
            // `*`, `<`, or the end: the path so far.
            _ => break,
        }
    }
    let mut alias = None;
    if kind(i) == Some(&Kind::Ident("as".into()))
        && let Some(Kind::Ident(name)) = kind(i + 1)
    {
        alias = Some(name.clone());
        i += 2;
    }
    (vec![(prefix, alias)], i)
}

/// The loops of a graph: its strongly connected components of more than one node
/// (Tarjan's algorithm).
fn loops(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, node: &'g str) {
        let n = s.index.len();
        s.index.insert(node, n);
        s.low.insert(node, n);
        s.stack.push(node);
        s.on_stack.insert(node);
        if let Some(next) = s.graph.get(node) {
            for to in next {
                let to = to.as_str();
                if !s.index.contains_key(to) {
                    visit(s, to);
                    let low = s.low[node].min(s.low[to]);
                    s.low.insert(node, low);
                } else if s.on_stack.contains(to) {
                    let low = s.low[node].min(s.index[to]);
                    s.low.insert(node, low);
                }
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = BTreeSet::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.insert(top.to_string());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.found
}

/// The first import of each pair of members of a loop, as `src/file:line path`.
fn describe_loop(
    edges: &[Import],
    component: &BTreeSet<String>,
    node: impl Fn(&str) -> Option<String>,
) -> String {
    let mut seen = BTreeSet::new();
    let mut parts = Vec::new();
    for edge in edges {
        let (Some(from), Some(to)) = (node(&edge.from), node(&edge.to)) else {
            continue;
        };
        if from != to
            && component.contains(&from)
            && component.contains(&to)
            && seen.insert((from.clone(), to.clone()))
        {
            parts.push(format!("src/{}:{} {}", edge.from, edge.line, edge.path));
        }
    }
    parts.join("; ")
}

/// The check on a small crate of its own, to prove it fails when it should.
mod checker {
    use super::*;

    const TOY_LAYERS: &[Layer] = &[
        Layer {
            name: "data",
            modules: &["error", "key"],
        },
        Layer {
            name: "per-database steps",
            modules: &["backend"],
        },
        Layer {
            name: "written once",
            modules: &["runner"],
        },
    ];

    fn crate_of(files: &[(&str, &str)]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(path, text)| (path.to_string(), text.to_string()))
            .collect()
    }

    const LIB: &str = "mod error;\nmod key;\nmod backend;\nmod runner;\n\
                       pub use key::Key;\npub use runner::{Migrator as Runner};\n\
                       pub use sqlx::Postgres;\npub fn pooler_safe() {}\n";

    #[test]
    fn a_crate_that_keeps_its_layers_passes() {
        let files = crate_of(&[
            ("lib.rs", LIB),
            ("error.rs", "pub enum Error {}\n"),
            ("key.rs", "use crate::error::Error;\npub struct Key;\n"),
            (
                "backend/mod.rs",
                "mod postgres;\nuse crate::{error::Error, Key, Postgres};\n",
            ),
            (
                "backend/postgres.rs",
                "use super::super::key::Key;\nfn f() -> crate::Key { todo!() }\n",
            ),
            (
                "runner/mod.rs",
                "mod batch;\nuse crate::backend;\n// crate::runner in a comment\n",
            ),
            (
                "runner/batch.rs",
                "use super::Migrator;\nconst S: &str = \"crate::nothing::here\";\n",
            ),
        ]);
        assert_eq!(check(&files, TOY_LAYERS, &[]), Vec::<String>::new());
    }

    #[test]
    fn an_upward_import_fails_naming_the_file_the_line_and_both_layers() {
        let files = crate_of(&[
            ("lib.rs", LIB),
            ("error.rs", "pub enum Error {}\n"),
            (
                "key.rs",
                "use crate::error::Error;\n\nfn walk() {\n    crate::runner::batch::walk();\n}\n",
            ),
            ("backend/mod.rs", "use crate::{Runner, error};\n"),
            ("runner/mod.rs", "mod batch;\n"),
            ("runner/batch.rs", "pub fn walk() {}\n"),
        ]);
        let problems = check(&files, TOY_LAYERS, &[]);
        assert!(
            problems.iter().any(
                |p| p.starts_with("src/key.rs:4: `key` (data) imports `runner` (written once)")
            ),
            "{problems:#?}"
        );
        // Through a re-export of the root, in a group.
        assert!(
            problems.iter().any(|p| p.starts_with(
                "src/backend/mod.rs:1: `backend` (per-database steps) imports `runner` (written once)"
            )),
            "{problems:#?}"
        );
    }

    #[test]
    fn an_item_of_the_root_and_super_out_of_an_inline_module_are_followed() {
        let files = crate_of(&[
            ("lib.rs", LIB),
            (
                "error.rs",
                "fn f() { crate::pooler_safe() }\n#[cfg(test)]\nmod tests {\n    use super::*;\n    \
                 use super::super::runner::Migrator;\n}\n",
            ),
            ("key.rs", ""),
            ("backend/mod.rs", ""),
            ("runner/mod.rs", ""),
        ]);
        let problems = check(&files, TOY_LAYERS, &[]);
        assert!(
            problems.iter().any(|p| p.starts_with(
                "src/error.rs:1: `crate::pooler_safe` names an item of the crate root"
            )),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("src/error.rs:5: `error` (data) imports `runner`")),
            "{problems:#?}"
        );
        assert_eq!(problems.len(), 2, "{problems:#?}");
    }

    #[test]
    fn a_module_in_no_layer_fails() {
        let files = crate_of(&[
            (
                "lib.rs",
                "mod error;\nmod key;\nmod backend;\nmod runner;\nmod extra;\n",
            ),
            ("error.rs", ""),
            ("key.rs", ""),
            ("backend/mod.rs", ""),
            ("runner/mod.rs", ""),
            ("extra/mod.rs", ""),
            ("extra/more.rs", ""),
        ]);
        let problems = check(&files, TOY_LAYERS, &[]);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("src/extra/more.rs: the module `extra` is in no layer")),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_loop_within_one_layer_fails() {
        let files = crate_of(&[
            ("lib.rs", LIB),
            ("error.rs", "use crate::key::Key;\n"),
            ("key.rs", "use crate::error::Error;\n"),
            ("backend/mod.rs", ""),
            ("runner/mod.rs", ""),
        ]);
        let problems = check(&files, TOY_LAYERS, &[]);
        assert_eq!(
            problems,
            vec![
                "the modules error, key import each other: src/error.rs:1 crate::key::Key; \
                 src/key.rs:1 crate::error::Error"
                    .to_string()
            ]
        );
    }

    #[test]
    fn a_loop_between_files_of_a_directory_fails_unless_known() {
        let files = crate_of(&[
            ("lib.rs", LIB),
            ("error.rs", ""),
            ("key.rs", ""),
            ("backend/mod.rs", "mod a;\nmod b;\n"),
            ("backend/a.rs", "use super::b::B;\npub struct A;\n"),
            ("backend/b.rs", "pub struct B(crate::backend::a::A);\n"),
            ("runner/mod.rs", ""),
        ]);
        let problems = check(&files, TOY_LAYERS, &[]);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].starts_with("the files a.rs, b.rs of src/backend/ import each other"),
            "{problems:#?}"
        );
        assert_eq!(
            check(&files, TOY_LAYERS, &[("backend", &["a.rs", "b.rs"])]),
            Vec::<String>::new()
        );
        let stale = check(&files, TOY_LAYERS, &[("runner", &["x.rs", "y.rs"])]);
        assert!(
            stale
                .iter()
                .any(|p| p.starts_with("KNOWN_LOOPS lists src/runner/ x.rs, y.rs")),
            "{stale:#?}"
        );
    }
}
