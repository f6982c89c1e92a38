//! Checks of the Guide (mdbook in `Guide/`) that `mdbook build` does not
//! make: every page listed in `SUMMARY.md` exists, every page exists in
//! `SUMMARY.md` (no orphans), every relative link between pages points at
//! an existing file, and every `{{#include ...}}` names an existing file.
//!
//! Used by `cargo xtask lint` (which the test command runs) and by the
//! integration test `xtask/tests/guide.rs`; the lint's doc link check
//! shares the link parsing here.

use anyhow::Context as _;
use anyhow::Result;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;

/// Checks the book whose `book.toml` is in `guide` (sources in `src/`).
/// Returns every problem found in one error.
pub fn check_guide(guide: &Path) -> Result<()> {
    let src = guide.join("src");
    let summary_path = src.join("SUMMARY.md");
    let summary = std::fs::read_to_string(&summary_path)
        .with_context(|| format!("reading {}", summary_path.display()))?;
    let mut problems = Vec::new();

    let listed: BTreeSet<PathBuf> = markdown_links(&summary)
        .into_iter()
        .filter(|l| is_local(&l.target))
        .map(|l| PathBuf::from(strip_anchor(&l.target)))
        .collect();
    if listed.is_empty() {
        problems.push("SUMMARY.md lists no pages".to_string());
    }
    for page in &listed {
        if !src.join(page).is_file() {
            problems.push(format!(
                "SUMMARY.md lists {}, which does not exist",
                page.display()
            ));
        }
    }

    let mut pages = Vec::new();
    collect_markdown(&src, &src, &mut pages)?;
    for page in &pages {
        if page != Path::new("SUMMARY.md") && !listed.contains(page) {
            problems.push(format!(
                "{} is not listed in SUMMARY.md (an orphan page)",
                page.display()
            ));
        }
        let text = std::fs::read_to_string(src.join(page))
            .with_context(|| format!("reading {}", page.display()))?;
        let dir = page.parent().unwrap_or(Path::new(""));
        for link in markdown_links(&text)
            .into_iter()
            .filter(|l| is_local(&l.target))
        {
            let target = strip_anchor(&link.target);
            if target.is_empty() {
                continue;
            }
            if !src.join(dir).join(target).exists() {
                problems.push(format!(
                    "{}:{} links to {}, which does not exist",
                    page.display(),
                    link.line,
                    link.target
                ));
            }
        }
        for include in includes(&text) {
            if !src.join(dir).join(&include).is_file() {
                problems.push(format!(
                    "{} includes {include}, which does not exist",
                    page.display()
                ));
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("the Guide has problems:\n- {}", problems.join("\n- "))
    }
}

fn collect_markdown(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_markdown(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "md")
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.to_owned());
        }
    }
    out.sort();
    Ok(())
}

/// The target of a `[text](target)` link and the line (from 1) it is on.
pub(crate) struct Link {
    pub(crate) line: usize,
    pub(crate) target: String,
}

/// Targets of `[text](target)` links, outside code blocks and code spans.
/// Shared with the doc link check of `cargo xtask lint`.
pub(crate) fn markdown_links(text: &str) -> Vec<Link> {
    let mut links = Vec::new();
    let mut in_fence = false;
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Drop code spans.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            match after.find(')') {
                Some(end) => {
                    let target = after[..end].split_whitespace().next().unwrap_or("");
                    links.push(Link {
                        line: index + 1,
                        target: target.to_string(),
                    });
                    rest = &after[end..];
                }
                None => break,
            }
        }
    }
    links
}

/// Paths named by `{{#include path}}` (an optional `:anchor` suffix is
/// dropped).
fn includes(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{#include ") {
        let after = &rest[i + "{{#include ".len()..];
        match after.find("}}") {
            Some(end) => {
                let arg = after[..end].trim();
                let path = arg.split(':').next().unwrap_or(arg);
                out.push(path.to_string());
                rest = &after[end..];
            }
            None => break,
        }
    }
    out
}

/// Whether a link target is a path in this repository (not a URL, a mail
/// address or an anchor on the same page).
pub(crate) fn is_local(link: &str) -> bool {
    !(link.is_empty()
        || link.starts_with('#')
        || link.contains("://")
        || link.starts_with("mailto:"))
}

/// The path part of a link target, without its `#anchor`.
pub(crate) fn strip_anchor(link: &str) -> &str {
    link.split('#').next().unwrap_or(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join("src").join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn a_consistent_book_passes() {
        let b = book(&[
            (
                "SUMMARY.md",
                "# Summary\n\n- [Intro](intro.md)\n- [More](sub/more.md)\n",
            ),
            (
                "intro.md",
                "See [more](sub/more.md#x) and [web](https://x.y/z).\n",
            ),
            (
                "sub/more.md",
                "Back to [intro](../intro.md). `[not](a-link.md)`\n```\n[no](nope.md)\n```\n{{#include inc.conf}}\n",
            ),
            ("sub/inc.conf", "x"),
        ]);
        check_guide(b.path()).unwrap();
    }

    #[test]
    fn missing_pages_orphans_dead_links_and_includes_are_reported() {
        let b = book(&[
            ("SUMMARY.md", "- [Intro](intro.md)\n- [Gone](gone.md)\n"),
            (
                "intro.md",
                "[dead](dead.md) {{#include missing.conf:anchor}}\n",
            ),
            ("orphan.md", "x"),
        ]);
        let err = check_guide(b.path()).unwrap_err().to_string();
        assert!(err.contains("gone.md, which does not exist"), "{err}");
        assert!(err.contains("orphan.md is not listed"), "{err}");
        assert!(err.contains("links to dead.md"), "{err}");
        assert!(err.contains("includes missing.conf"), "{err}");
    }

    #[test]
    fn a_book_without_summary_is_an_error() {
        let b = book(&[("intro.md", "x")]);
        assert!(check_guide(b.path()).is_err());
    }
}
