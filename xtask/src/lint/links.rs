//! Doc links that point at files which do not exist.
//!
//! Checked outside the Guide (whose pages `guide_check` checks):
//! - markdown files (README.md, ARCHITECTURE.md, any other `.md`): every
//!   relative `[text](path)` link resolves from the file's directory;
//! - Rust comments (crate and item docs included): every `[text](path)`
//!   link whose target is a file path (it has a `/` or a `.` and no `::`,
//!   so intra-doc links are left to rustdoc) resolves from the source
//!   file's directory;
//! - everywhere (markdown, Rust comments, `Cargo.toml`): an all-caps
//!   markdown file name such as `ARCHITECTURE.md` names a file somewhere
//!   in the repository. Such names are how comments point readers at
//!   project documents, and a pointer to a document that is not in the
//!   repository sends them nowhere.
//!
//! Skipped: hidden directories, `target`, `node_modules` and the built
//! book (`Guide/book`).

use crate::guide_check::is_local;
use crate::guide_check::markdown_links;
use crate::guide_check::strip_anchor;
use anyhow::Context;
use anyhow::Result;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;

/// Directory names never searched.
const SKIP_DIRS: &[&str] = &["target", "node_modules"];

/// Every problem found under `root`, one line each.
pub fn check(root: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    let doc_names: BTreeSet<String> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let guide_src = Path::new("Guide").join("src");
    let mut problems = Vec::new();
    for rel in &files {
        let path = root.join(rel);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let dir = path.parent().unwrap_or(root);
        let shown = rel.display();
        let (links_text, mention_text) = match rel.extension().and_then(|e| e.to_str()) {
            // The Guide's own check covers its links.
            Some("md") if rel.starts_with(&guide_src) => (None, text.clone()),
            Some("md") => (Some(text.clone()), text.clone()),
            Some("rs") => {
                let comments = rust_comments(&text);
                (Some(comments.clone()), comments)
            }
            _ => (None, text.clone()),
        };
        if let Some(links_text) = links_text {
            let is_rust = rel.extension().is_some_and(|e| e == "rs");
            for link in markdown_links(&links_text) {
                if !is_local(&link.target) || (is_rust && !is_file_path(&link.target)) {
                    continue;
                }
                let target = strip_anchor(&link.target);
                if !target.is_empty() && !dir.join(target).exists() {
                    problems.push(format!(
                        "{shown}:{} links to {}, which does not exist",
                        link.line, link.target
                    ));
                }
            }
        }
        for (line, name) in doc_mentions(&mention_text) {
            if !doc_names.contains(&name) {
                problems.push(format!(
                    "{shown}:{line} names {name}, which is not in the repository"
                ));
            }
        }
    }
    Ok(problems)
}

/// Markdown, Rust and `Cargo.toml` files under `dir`, relative to `root`,
/// sorted.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    paths.sort();
    for path in paths {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if meta.is_dir() {
            if name.starts_with('.')
                || SKIP_DIRS.contains(&name)
                || rel == Path::new("Guide").join("book")
            {
                continue;
            }
            walk(root, &path, out)?;
        } else if meta.is_file()
            && (name.ends_with(".md") || name.ends_with(".rs") || name == "Cargo.toml")
        {
            out.push(rel.to_owned());
        }
    }
    Ok(())
}

/// The comment text of Rust source, line for line (code lines become
/// empty lines, so line numbers still match).
fn rust_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len() / 2);
    for line in source.lines() {
        let trimmed = line.trim_start();
        if let Some(comment) = trimmed.strip_prefix("//") {
            let comment = comment
                .strip_prefix('!')
                .or_else(|| comment.strip_prefix('/'))
                .unwrap_or(comment);
            out.push_str(comment);
        }
        out.push('\n');
    }
    out
}

/// Whether a link target in a Rust comment is a file path rather than an
/// intra-doc link (`crate::Foo`, `Self::bar`, `Vec`).
fn is_file_path(target: &str) -> bool {
    !target.contains("::") && (target.contains('/') || target.contains('.'))
}

/// All-caps markdown file names (`README.md`, not `intro.md` and not a
/// path such as `doc/PROTO.md`) and the line each is on.
fn doc_mentions(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let mut from = 0;
        while let Some(pos) = line[from..].find(".md") {
            let end = from + pos + 3;
            from = end;
            if bytes.get(end).is_some_and(|b| b.is_ascii_alphanumeric()) {
                continue;
            }
            let stem_start = line[..end - 3]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .map_or(0, |i| i + 1);
            let stem = &line[stem_start..end - 3];
            let is_path = stem_start > 0 && matches!(bytes[stem_start - 1], b'/' | b'\\' | b'.');
            let all_caps = stem.chars().any(|c| c.is_ascii_uppercase())
                && !stem.chars().any(|c| c.is_ascii_lowercase());
            if all_caps && !is_path {
                out.push((index + 1, format!("{stem}.md")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn good_links_and_mentions_pass() {
        let t = tree(&[
            (
                "README.md",
                "See [the map](ARCHITECTURE.md#codemap), [a crate](crates/a/src/lib.rs), \
                 [web](https://example.com/X.md) and ARCHITECTURE.md.\n",
            ),
            ("ARCHITECTURE.md", "Back to [README](README.md).\n"),
            (
                "crates/a/src/lib.rs",
                "//! The [map](../../../ARCHITECTURE.md); see [`Foo`](crate::Foo) and\n\
                 //! [`Vec`](Vec). Upstream documents `doc/PROTO.md`.\n\
                 /// README.md says how.\n\
                 fn f() { let _ = \"[x](gone.md) NOTES.md\"; }\n",
            ),
            ("crates/a/Cargo.toml", "# The layout is in README.md.\n"),
            ("Guide/src/page.md", "See ARCHITECTURE.md.\n"),
            ("target/x.md", "[dead](dead.md) DEAD.md\n"),
            ("Guide/book/x.md", "[dead](dead.md) DEAD.md\n"),
        ]);
        assert_eq!(check(t.path()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn dead_links_and_missing_documents_are_reported() {
        let t = tree(&[
            ("README.md", "Read [the design](docs/design.md).\n"),
            (
                "crates/a/src/lib.rs",
                "//! Facts:\n//! - see PLAN.md;\n/// [spec](../spec/x.md)\nfn f() {}\n",
            ),
            ("Cargo.toml", "[workspace]\n# crates named in NOTES.md\n"),
            ("Guide/src/p.md", "The CONTRIBUTING.md page.\n"),
        ]);
        let problems = check(t.path()).unwrap();
        assert_eq!(
            problems,
            [
                "Cargo.toml:2 names NOTES.md, which is not in the repository",
                "Guide/src/p.md:1 names CONTRIBUTING.md, which is not in the repository",
                "README.md:1 links to docs/design.md, which does not exist",
                "crates/a/src/lib.rs:3 links to ../spec/x.md, which does not exist",
                "crates/a/src/lib.rs:2 names PLAN.md, which is not in the repository",
            ]
        );
    }

    #[test]
    fn mentions_are_all_caps_names_not_paths() {
        let found: Vec<String> = doc_mentions(
            "README.md, (ARCHITECTURE.md) x/PATH.md intro.md Mixed.md A_B-2.md X.mdx\nSUMMARY.md",
        )
        .into_iter()
        .map(|(line, name)| format!("{line}:{name}"))
        .collect();
        assert_eq!(
            found,
            [
                "1:README.md",
                "1:ARCHITECTURE.md",
                "1:A_B-2.md",
                "2:SUMMARY.md"
            ]
        );
    }
}
