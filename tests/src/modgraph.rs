//! The module graph of a crate read from its source files: which file imports which (`use` and
//! paths through `crate::`, `super::`, `self::`), resolved to the file that defines the module
//! named. `tests/tests/architecture.rs` checks the layout rules against it (no import circles
//! between files, which folder may import which, no oversized files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file of a crate and the module path it defines (`["decide", "job"]`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModuleFile {
    /// Path relative to the crate's `src`.
    pub file: PathBuf,
    /// The module path it defines (empty for the crate root).
    pub module: Vec<String>,
}

/// A crate's files and the imports between them.
#[derive(Debug, Default)]
pub struct ModuleGraph {
    /// Every file under `src`, by its path relative to `src`.
    pub files: BTreeMap<PathBuf, ModuleFile>,
    /// file → the files it imports from.
    pub imports: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

/// The module path a file under `src` defines by Rust's file layout rules (`lib.rs`, `main.rs`
/// and `bin/*.rs` are roots of their own).
fn module_of(relative: &Path) -> Vec<String> {
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Vec::new();
    };
    if dirs.is_empty() && (last == "lib.rs" || last == "main.rs") {
        return Vec::new();
    }
    let mut module: Vec<String> = dirs.to_vec();
    if last != "mod.rs" {
        module.push(last.trim_end_matches(".rs").to_string());
    }
    module
}

/// Text without line comments and without a trailing inline `#[cfg(test)] mod tests { … }`:
/// the paths that remain are the file's own imports.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        // Unit tests sit at the end of a file; their `super::` is the file itself.
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod ") && next.contains('{'))
        {
            break;
        }
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e` (aliases and globs dropped).
fn expand_use(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    expand_into("", &tree, &mut out);
    out
}

fn expand_into(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let Some(open) = tree.find('{') else {
        let path = tree.split("as").next().unwrap_or(tree);
        let path = path.trim_end_matches("::*").trim_end_matches("::self");
        if !path.is_empty() {
            out.push(format!("{prefix}{path}"));
        }
        return;
    };
    let head = &tree[..open];
    let inner = tree[open + 1..]
        .strip_suffix('}')
        .unwrap_or(&tree[open + 1..]);
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    for item in items.into_iter().filter(|i| !i.is_empty()) {
        if item == "self" {
            out.push(format!("{prefix}{}", head.trim_end_matches("::")));
        } else {
            expand_into(&format!("{prefix}{head}"), item, out);
        }
    }
}

/// Every `crate::`/`super::`/`self::` path in the code, and every path that starts at one of
/// `children` (the modules declared inside this one, which Rust resolves relative to it): from
/// `use` trees and inline paths. Child-relative paths come back prefixed with `self::`.
fn paths_in(code: &str, children: &[String]) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    let mut outside_use = String::new();
    while let Some(at) = find_use(rest) {
        outside_use.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        paths.extend(expand_use(&after[..end]));
        rest = &after[(end + 1).min(after.len())..];
    }
    outside_use.push_str(rest);
    let bytes = outside_use.as_bytes();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = outside_use[from..].find(root) {
            let at = from + found;
            from = at + root.len();
            let boundary = at == 0
                || !(bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':');
            if !boundary {
                continue;
            }
            let end = outside_use[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(outside_use.len(), |e| at + e);
            paths.push(outside_use[at..end].trim_end_matches(':').to_string());
        }
    }
    for child in children {
        let token = format!("{child}::");
        let mut from = 0;
        while let Some(found) = outside_use[from..].find(&token) {
            let at = from + found;
            from = at + token.len();
            let boundary = at == 0
                || !(bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':');
            if boundary {
                let end = outside_use[at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .map_or(outside_use.len(), |e| at + e);
                paths.push(format!(
                    "self::{}",
                    outside_use[at..end].trim_end_matches(':')
                ));
            }
        }
    }
    paths
        .into_iter()
        .map(|p| match p.split("::").next() {
            Some(first) if children.iter().any(|c| c == first) => format!("self::{p}"),
            _ => p,
        })
        .filter(|p| p.starts_with("crate") || p.starts_with("super") || p.starts_with("self"))
        .collect()
}

/// The byte offset of the next `use` keyword that starts a statement.
fn find_use(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = text[from..].find("use ") {
        let at = from + found;
        from = at + 4;
        let before = text[..at].trim_end();
        let starts_statement = before.is_empty()
            || before.ends_with(';')
            || before.ends_with('{')
            || before.ends_with('}')
            || before.ends_with(']')
            || before.ends_with("pub")
            || before.ends_with(')');
        let word_start =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts_statement && word_start {
            return Some(at);
        }
    }
    None
}

impl ModuleGraph {
    /// Reads every `.rs` file under `src` (a crate's source folder).
    pub fn read(src: &Path) -> std::io::Result<Self> {
        let mut graph = ModuleGraph::default();
        let mut texts = BTreeMap::new();
        for file in rust_files(src)? {
            let relative = file.strip_prefix(src).unwrap_or(&file).to_path_buf();
            let module = module_of(&relative);
            texts.insert(relative.clone(), std::fs::read_to_string(&file)?);
            graph.files.insert(
                relative.clone(),
                ModuleFile {
                    file: relative,
                    module,
                },
            );
        }
        let by_module: BTreeMap<Vec<String>, PathBuf> = graph
            .files
            .values()
            // Binaries are roots of their own; `crate::` inside them is not the library.
            .filter(|f| !f.file.starts_with("bin") && f.file != Path::new("main.rs"))
            .map(|f| (f.module.clone(), f.file.clone()))
            .collect();
        for (file, text) in &texts {
            let here = graph.files[file].module.clone();
            // Only a module's own file (`x.rs`, `x/mod.rs`, the crate root) declares children.
            let children: Vec<String> = by_module
                .keys()
                .filter(|m| m.len() == here.len() + 1 && m.starts_with(&here))
                .filter_map(|m| m.last().cloned())
                .filter(|_| by_module.get(&here) == Some(file))
                .collect();
            let mut targets = BTreeSet::new();
            for path in paths_in(&code_of(text), &children) {
                let mut segments = path.split("::");
                let mut module = match segments.next() {
                    Some("crate") => Vec::new(),
                    Some("super") => here[..here.len().saturating_sub(1)].to_vec(),
                    _ => here.clone(),
                };
                for segment in segments {
                    if segment == "super" {
                        module.pop();
                        continue;
                    }
                    let mut deeper = module.clone();
                    deeper.push(segment.to_string());
                    if by_module.contains_key(&deeper) {
                        module = deeper;
                    } else {
                        break;
                    }
                }
                if let Some(target) = by_module.get(&module)
                    && target != file
                {
                    targets.insert(target.clone());
                }
            }
            graph.imports.insert(file.clone(), targets);
        }
        Ok(graph)
    }

    /// Groups of files that import each other, directly or through others (strongly connected
    /// components of more than one file).
    pub fn circles(&self) -> Vec<Vec<PathBuf>> {
        let files: Vec<&PathBuf> = self.files.keys().collect();
        let reaches = |from: &PathBuf| -> BTreeSet<PathBuf> {
            let mut seen = BTreeSet::new();
            let mut stack = vec![from.clone()];
            while let Some(next) = stack.pop() {
                for target in self.imports.get(&next).into_iter().flatten() {
                    if seen.insert(target.clone()) {
                        stack.push(target.clone());
                    }
                }
            }
            seen
        };
        let reach: BTreeMap<&PathBuf, BTreeSet<PathBuf>> =
            files.iter().map(|f| (*f, reaches(f))).collect();
        let mut circles: BTreeSet<Vec<PathBuf>> = BTreeSet::new();
        for file in &files {
            let mut circle: Vec<PathBuf> = reach[file]
                .iter()
                .filter(|other| reach.get(other).is_some_and(|r| r.contains(*file)))
                .cloned()
                .collect();
            if !circle.is_empty() {
                if !circle.contains(file) {
                    circle.push((*file).clone());
                }
                circle.sort();
                circles.insert(circle);
            }
        }
        circles.into_iter().collect()
    }
}

/// Every `.rs` file under `dir`, sorted.
pub fn rust_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand_to_paths() {
        assert_eq!(
            expand_use("crate::{a::X, b::{Y, self}, c::*}"),
            ["crate::a::X", "crate::b::Y", "crate::b", "crate::c"]
        );
        assert_eq!(expand_use("super::x as y"), ["super::x"]);
    }

    #[test]
    fn paths_come_from_use_statements_and_inline_code() {
        let code =
            "use crate::a::B;\npub use super::c;\nfn f() { crate::d::e(); let x = my_crate::z; }\n";
        assert_eq!(
            paths_in(code, &[]),
            ["crate::a::B", "super::c", "crate::d::e"]
        );
    }

    #[test]
    fn comments_and_trailing_unit_tests_are_not_imports() {
        let text = "//! see [`crate::x`]\nuse crate::a;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n";
        assert_eq!(paths_in(&code_of(text), &[]), ["crate::a"]);
    }

    #[test]
    fn paths_that_start_at_a_child_module_are_imports_of_it() {
        let code = "mod gang;\npub use gang::{Gang, BACKOFF};\nfn f() { gang::start(); std::gang::x(); }\n";
        let children = ["gang".to_string()];
        assert_eq!(
            paths_in(code, &children),
            [
                "self::gang::Gang",
                "self::gang::BACKOFF",
                "self::gang::start"
            ]
        );
    }

    #[test]
    fn a_parent_that_re_exports_from_a_child_that_imports_it_is_a_circle() {
        let dir = std::env::temp_dir().join(format!("modgraph-reexport-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("job")).expect("dir");
        std::fs::write(dir.join("lib.rs"), "pub mod job;\n").expect("write");
        std::fs::write(
            dir.join("job/mod.rs"),
            "mod gang;\npub use gang::BACKOFF;\npub struct Decider;\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("job/gang.rs"),
            "use super::Decider;\npub const BACKOFF: u32 = 1;\n",
        )
        .expect("write");
        let circles = ModuleGraph::read(&dir).expect("read").circles();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            circles,
            [vec![
                PathBuf::from("job/gang.rs"),
                PathBuf::from("job/mod.rs")
            ]]
        );
    }

    #[test]
    fn files_map_to_modules() {
        assert!(module_of(Path::new("lib.rs")).is_empty());
        assert_eq!(module_of(Path::new("decide/mod.rs")), ["decide"]);
        assert_eq!(module_of(Path::new("decide/job.rs")), ["decide", "job"]);
    }

    #[test]
    fn a_circle_between_two_files_is_found() {
        let dir = std::env::temp_dir().join(format!("modgraph-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).expect("dir");
        std::fs::write(dir.join("lib.rs"), "pub mod a;\npub mod b;\n").expect("write");
        std::fs::write(dir.join("a.rs"), "use crate::b::inner::X;\n").expect("write");
        std::fs::write(dir.join("b/mod.rs"), "pub mod inner;\n").expect("write");
        std::fs::write(
            dir.join("b/inner.rs"),
            "pub struct X;\nfn f() { super::super::a::g(); }\n",
        )
        .expect("write");
        let graph = ModuleGraph::read(&dir).expect("read");
        let circles = graph.circles();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            circles,
            [vec![PathBuf::from("a.rs"), PathBuf::from("b/inner.rs")]]
        );
    }
}
