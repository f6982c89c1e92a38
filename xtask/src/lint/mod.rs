//! `cargo xtask lint`: checks that keep the docs true, run by
//! `cargo xtask test` before the long steps.
//!
//! - Dependency rules ([`deps`]): every dependency edge between workspace
//!   crates, as `cargo metadata` reports it, is allowed by the rules table
//!   in ARCHITECTURE.md, and every crate is placed in the codemap's groups.
//! - Doc links ([`links`]): no relative link, and no named project
//!   document, points at a file that does not exist.
//! - The Guide ([`crate::guide_check`]): pages, orphans, links, includes.
//!
//! Every problem is reported, not just the first.

pub mod deps;
pub mod links;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::path::Path;

/// The document holding the dependency rules, relative to the root.
pub const ARCHITECTURE: &str = "ARCHITECTURE.md";

/// Runs every check on the workspace at `root`.
pub fn run(root: &Path) -> Result<()> {
    let mut problems = dependency_problems(root)?;
    problems.extend(links::check(root).context("checking doc links")?);
    if let Err(e) = crate::guide_check::check_guide(&root.join("Guide")) {
        problems.push(format!("{e:#}"));
    }
    if !problems.is_empty() {
        bail!(
            "xtask lint found {} problem(s):\n- {}",
            problems.len(),
            problems.join("\n- ")
        );
    }
    println!("==> xtask lint: dependency rules, doc links and the Guide check passed");
    Ok(())
}

/// The workspace's edges against ARCHITECTURE.md's rules.
pub fn dependency_problems(root: &Path) -> Result<Vec<String>> {
    let path = root.join(ARCHITECTURE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let book = deps::parse(&text, ARCHITECTURE)?;
    let workspace = deps::workspace(root)?;
    Ok(book.check(&workspace, ARCHITECTURE))
}

#[cfg(test)]
mod tests {
    /// The real tree keeps its own rules (the test command also runs the
    /// lint; this makes `cargo nextest run -p xtask` catch a new edge).
    #[test]
    fn the_workspace_keeps_its_rules_and_links() {
        let root = crate::workspace_root().unwrap();
        let deps = super::dependency_problems(&root).unwrap();
        assert!(deps.is_empty(), "{}", deps.join("\n"));
        let links = super::links::check(&root).unwrap();
        assert!(links.is_empty(), "{}", links.join("\n"));
    }
}
