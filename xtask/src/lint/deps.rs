//! The dependency rules: ARCHITECTURE.md's "Dependency rules" tables,
//! checked against `cargo metadata`.
//!
//! The rules are written once, as two markdown tables in ARCHITECTURE.md
//! that people read and this module parses:
//! - `| Group | Crates |`: every workspace crate in exactly one group;
//! - `| Crates | Kinds | Depends | Why |`: one rule per row. `Crates` and
//!   the names after `only on` / `never on` are crates (in backticks) or
//!   groups; `Kinds` is `normal`, `dev`, `build` or `any`; `Depends` is
//!   `only on A, B`, `never on A, B` or `on nothing`; `Why` must say why.
//!
//! A row that does not parse, a name that is neither a group nor a
//! workspace crate, a workspace crate in no group (or in two), and a
//! dependency edge a rule forbids are all reported, each naming the file
//! and line of the rule.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::process::Command;

/// The heading of the section holding the tables.
pub const SECTION: &str = "## Dependency rules";

/// How one crate depends on another (cargo's dependency kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `[dependencies]`.
    Normal,
    /// `[dev-dependencies]`.
    Dev,
    /// `[build-dependencies]`.
    Build,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Normal, Kind::Dev, Kind::Build];

    fn parse(word: &str) -> Option<Vec<Kind>> {
        match word {
            "normal" => Some(vec![Kind::Normal]),
            "dev" => Some(vec![Kind::Dev]),
            "build" => Some(vec![Kind::Build]),
            "any" => Some(Kind::ALL.to_vec()),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Normal => "normal",
            Kind::Dev => "dev",
            Kind::Build => "build",
        })
    }
}

/// One dependency edge between workspace crates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// The crate that depends.
    pub from: String,
    /// The crate depended on.
    pub to: String,
    /// The kind of dependency.
    pub kind: Kind,
}

/// The workspace as the rules see it: its crates and the edges between
/// them (dependencies outside the workspace are not the rules' business).
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    /// Package names of the workspace members.
    pub members: BTreeSet<String>,
    /// Edges between members.
    pub edges: Vec<Edge>,
}

/// What a rule allows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Constraint {
    /// Only these names (empty: nothing).
    Only(Vec<String>),
    /// Anything but these names.
    Never(Vec<String>),
}

/// One row of the rules table, as written.
#[derive(Debug, Clone)]
struct Rule {
    line: usize,
    crates: Vec<String>,
    kinds: Vec<Kind>,
    constraint: Constraint,
    text: String,
}

/// The parsed tables.
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    /// Group name -> (line, crate names).
    groups: BTreeMap<String, (usize, Vec<String>)>,
    rules: Vec<Rule>,
}

/// Names in a table cell: comma-separated, backticks dropped.
fn names(cell: &str) -> Vec<String> {
    cell.split(',')
        .map(|n| n.trim().trim_matches('`').trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The cells of a table row, or `None` for a line that is not one.
fn cells(line: &str) -> Option<Vec<&str>> {
    let line = line.trim();
    let inner = line.strip_prefix('|')?;
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    Some(inner.split('|').map(str::trim).collect())
}

fn is_separator(cells: &[&str]) -> bool {
    cells
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
}

/// Parses the tables of the [`SECTION`] in `text` (ARCHITECTURE.md).
/// `file` names the document in errors.
pub fn parse(text: &str, file: &str) -> Result<RuleBook> {
    let mut book = RuleBook::default();
    let mut problems = Vec::new();
    let mut in_section = false;
    let mut found_section = false;
    // Which table the current run of `|` lines belongs to.
    #[derive(PartialEq)]
    enum Table {
        None,
        Groups,
        Rules,
        Other,
    }
    let mut table = Table::None;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.starts_with("## ") {
            in_section = line.trim_end() == SECTION;
            found_section |= in_section;
            table = Table::None;
            continue;
        }
        if !in_section {
            continue;
        }
        let Some(row) = cells(line) else {
            table = Table::None;
            continue;
        };
        if is_separator(&row) {
            continue;
        }
        if table == Table::None {
            // A header row.
            table = match row.as_slice() {
                ["Group", "Crates"] => Table::Groups,
                ["Crates", "Kinds", "Depends", "Why"] => Table::Rules,
                _ => Table::Other,
            };
            continue;
        }
        let at = format!("{file}:{line_no}");
        match table {
            Table::Groups => match row.as_slice() {
                [group, crates] if !group.is_empty() => {
                    let group = group.trim_matches('`').to_owned();
                    if book
                        .groups
                        .insert(group.clone(), (line_no, names(crates)))
                        .is_some()
                    {
                        problems.push(format!("{at}: group {group} is defined twice"));
                    }
                }
                _ => problems.push(format!(
                    "{at}: a group row must be `| group | crate, crate |`: {}",
                    line.trim()
                )),
            },
            Table::Rules => match parse_rule(&row, line_no, line.trim()) {
                Ok(rule) => book.rules.push(rule),
                Err(e) => problems.push(format!("{at}: {e}: {}", line.trim())),
            },
            Table::None | Table::Other => {}
        }
    }
    if !found_section {
        bail!("{file} has no `{SECTION}` section");
    }
    if book.groups.is_empty() {
        problems.push(format!(
            "{file}: `{SECTION}` has no `| Group | Crates |` table"
        ));
    }
    if book.rules.is_empty() {
        problems.push(format!(
            "{file}: `{SECTION}` has no `| Crates | Kinds | Depends | Why |` table"
        ));
    }
    if problems.is_empty() {
        Ok(book)
    } else {
        bail!("{}", problems.join("\n"))
    }
}

fn parse_rule(row: &[&str], line: usize, text: &str) -> Result<Rule> {
    let [crates, kinds, depends, why] = row else {
        bail!("a rule row has four cells (crates, kinds, depends, why)");
    };
    let crates = names(crates);
    if crates.is_empty() {
        bail!("a rule names no crates");
    }
    let mut kind_list = Vec::new();
    for word in names(kinds) {
        match Kind::parse(&word) {
            Some(k) => kind_list.extend(k),
            None => bail!("unknown dependency kind `{word}` (normal, dev, build or any)"),
        }
    }
    if kind_list.is_empty() {
        bail!("a rule names no dependency kinds");
    }
    let depends = depends.trim();
    let constraint = if depends == "on nothing" {
        Constraint::Only(Vec::new())
    } else if let Some(list) = depends.strip_prefix("only on ") {
        Constraint::Only(names(list))
    } else if let Some(list) = depends.strip_prefix("never on ") {
        Constraint::Never(names(list))
    } else {
        bail!("`Depends` must be `only on ...`, `never on ...` or `on nothing`");
    };
    if why.trim().is_empty() {
        bail!("a rule must say why");
    }
    Ok(Rule {
        line,
        crates,
        kinds: kind_list,
        constraint,
        text: text.to_owned(),
    })
}

impl RuleBook {
    /// Expands a list of crate and group names into crate names, noting
    /// names that are neither.
    fn expand(
        &self,
        names: &[String],
        members: &BTreeSet<String>,
        unknown: &mut Vec<String>,
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for name in names {
            if let Some((_, crates)) = self.groups.get(name) {
                out.extend(crates.iter().cloned());
            } else if members.contains(name) {
                out.insert(name.clone());
            } else {
                unknown.push(name.clone());
            }
        }
        out
    }

    /// Every problem of `workspace` against these rules: crates missing
    /// from the groups, names that do not exist, and forbidden edges.
    pub fn check(&self, workspace: &Workspace, file: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut group_of: BTreeMap<&str, &str> = BTreeMap::new();
        for (group, (line, crates)) in &self.groups {
            for krate in crates {
                if !workspace.members.contains(krate) {
                    problems.push(format!(
                        "{file}:{line}: group {group} lists `{krate}`, which is not a workspace crate"
                    ));
                } else if let Some(other) = group_of.insert(krate, group) {
                    problems.push(format!(
                        "{file}:{line}: `{krate}` is in two groups ({other} and {group})"
                    ));
                }
            }
        }
        for member in &workspace.members {
            if !group_of.contains_key(member.as_str()) {
                problems.push(format!(
                    "{file}: workspace crate `{member}` is in no group of `{SECTION}`; \
                     add it to the codemap and to a group"
                ));
            }
        }
        for rule in &self.rules {
            let mut unknown = Vec::new();
            let subjects = self.expand(&rule.crates, &workspace.members, &mut unknown);
            let (allowed, denied) = match &rule.constraint {
                Constraint::Only(n) => {
                    (Some(self.expand(n, &workspace.members, &mut unknown)), None)
                }
                Constraint::Never(n) => {
                    (None, Some(self.expand(n, &workspace.members, &mut unknown)))
                }
            };
            for name in unknown {
                problems.push(format!(
                    "{file}:{}: `{name}` is neither a group nor a workspace crate: {}",
                    rule.line, rule.text
                ));
            }
            for edge in &workspace.edges {
                if !subjects.contains(&edge.from) || !rule.kinds.contains(&edge.kind) {
                    continue;
                }
                let forbidden = allowed.as_ref().is_some_and(|a| !a.contains(&edge.to))
                    || denied.as_ref().is_some_and(|d| d.contains(&edge.to));
                if forbidden {
                    problems.push(format!(
                        "`{}` has a {} dependency on `{}`, which the rule at {file}:{} forbids: {}",
                        edge.from, edge.kind, edge.to, rule.line, rule.text
                    ));
                }
            }
        }
        problems
    }
}

/// The workspace's crates and the edges between them, from
/// `cargo metadata --no-deps` (offline: only the manifests are read).
pub fn workspace(root: &Path) -> Result<Workspace> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    workspace_from_metadata(&out.stdout)
}

/// Parses `cargo metadata --no-deps` output.
pub fn workspace_from_metadata(json: &[u8]) -> Result<Workspace> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        packages: Vec<Package>,
    }
    #[derive(serde::Deserialize)]
    struct Package {
        name: String,
        dependencies: Vec<Dependency>,
    }
    #[derive(serde::Deserialize)]
    struct Dependency {
        name: String,
        kind: Option<String>,
    }
    let metadata: Metadata =
        serde_json::from_slice(json).context("parsing cargo metadata's output")?;
    let members: BTreeSet<String> = metadata.packages.iter().map(|p| p.name.clone()).collect();
    let mut edges = BTreeSet::new();
    for package in &metadata.packages {
        for dep in &package.dependencies {
            if !members.contains(&dep.name) {
                continue;
            }
            let kind = match dep.kind.as_deref() {
                None | Some("normal") => Kind::Normal,
                Some("dev") => Kind::Dev,
                Some("build") => Kind::Build,
                Some(other) => bail!(
                    "cargo metadata: {} has a dependency of unknown kind {other}",
                    package.name
                ),
            };
            edges.insert(Edge {
                from: package.name.clone(),
                to: dep.name.clone(),
                kind,
            });
        }
    }
    Ok(Workspace {
        members,
        edges: edges.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# Architecture

## Dependency rules

| Group | Crates |
|---|---|
| leaf | `url_redact` |
| storage | `disk_backend`, `disk_layered`, `disklayer_ram`, `disklayer_sqlite` |
| tools | `xtask` |

| Crates | Kinds | Depends | Why |
|---|---|---|---|
| leaf | any | on nothing | leaves are used everywhere |
| `disk_layered` | normal, build | only on `disk_backend` | layering knows no layer |
| `disklayer_ram`, `disklayer_sqlite` | normal | only on `disk_backend`, `disk_layered` | layers never depend on each other in product code |
| storage | any | never on tools | tools are not libraries |

## Other
| Crates | Kinds | Depends | Why |
|---|---|---|---|
| ignored | because | it is | in another section |
";

    fn edge(from: &str, to: &str, kind: Kind) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            kind,
        }
    }

    /// The tree the table describes, with `extra` edges added.
    fn tree(extra: &[Edge]) -> Workspace {
        let mut edges = vec![
            edge("disk_layered", "disk_backend", Kind::Normal),
            edge("disk_layered", "disklayer_ram", Kind::Dev),
            edge("disklayer_ram", "disk_layered", Kind::Normal),
            edge("disklayer_sqlite", "disk_layered", Kind::Normal),
            // A dev edge between layers is allowed: the rule is normal-only.
            edge("disklayer_sqlite", "disklayer_ram", Kind::Dev),
            edge("xtask", "disk_layered", Kind::Normal),
        ];
        edges.extend(extra.iter().cloned());
        Workspace {
            members: [
                "url_redact",
                "disk_backend",
                "disk_layered",
                "disklayer_ram",
                "disklayer_sqlite",
                "xtask",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            edges,
        }
    }

    #[test]
    fn a_tree_that_keeps_the_rules_passes() {
        let book = parse(DOC, "ARCH.md").unwrap();
        assert_eq!(book.rules.len(), 4, "the other section is not read");
        assert_eq!(book.check(&tree(&[]), "ARCH.md"), Vec::<String>::new());
    }

    #[test]
    fn a_forbidden_edge_names_the_crate_the_edge_and_the_rule() {
        let book = parse(DOC, "ARCH.md").unwrap();
        let problems = book.check(
            &tree(&[edge("disklayer_sqlite", "disklayer_ram", Kind::Normal)]),
            "ARCH.md",
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert!(
            p.starts_with("`disklayer_sqlite` has a normal dependency on `disklayer_ram`"),
            "{p}"
        );
        assert!(p.contains("ARCH.md:15"), "{p}");
        assert!(
            p.contains("only on `disk_backend`, `disk_layered` | layers never depend"),
            "{p}"
        );
    }

    #[test]
    fn a_forbidden_edge_in_cargo_metadata_fails() {
        let json = br#"{"packages": [
            {"name": "url_redact", "dependencies": []},
            {"name": "disk_backend", "dependencies": []},
            {"name": "disk_layered", "dependencies": [
                {"name": "disk_backend", "kind": null},
                {"name": "disklayer_sqlite", "kind": null}
            ]},
            {"name": "disklayer_ram", "dependencies": []},
            {"name": "disklayer_sqlite", "dependencies": []},
            {"name": "xtask", "dependencies": [{"name": "disk_layered", "kind": null}]}
        ]}"#;
        let workspace = workspace_from_metadata(json).unwrap();
        let problems = parse(DOC, "ARCH.md").unwrap().check(&workspace, "ARCH.md");
        assert_eq!(
            problems,
            [
                "`disk_layered` has a normal dependency on `disklayer_sqlite`, which the rule at \
              ARCH.md:14 forbids: | `disk_layered` | normal, build | only on `disk_backend` | \
              layering knows no layer |"
            ]
        );
    }

    #[test]
    fn kinds_groups_and_never_rules_apply() {
        let book = parse(DOC, "ARCH.md").unwrap();
        let problems = book.check(
            &tree(&[
                // Build kind is covered by `normal, build`.
                edge("disk_layered", "url_redact", Kind::Build),
                // A leaf depends on nothing, whatever the kind.
                edge("url_redact", "disk_backend", Kind::Dev),
                // A never-rule through a group.
                edge("disk_backend", "xtask", Kind::Dev),
            ]),
            "ARCH.md",
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("`url_redact` has a dev dependency on `disk_backend`"));
        assert!(problems[1].contains("`disk_layered` has a build dependency on `url_redact`"));
        assert!(problems[2].contains("`disk_backend` has a dev dependency on `xtask`"));
        assert!(problems[2].contains("never on tools"));
    }

    #[test]
    fn ungrouped_crates_and_unknown_names_are_reported() {
        let doc = DOC.replace("| tools | `xtask` |\n", "| tools | `xtask`, `gone` |\n");
        let doc = doc.replace(
            "| storage | any | never on tools |",
            "| storage | any | never on tools, `petri` |",
        );
        let book = parse(&doc, "ARCH.md").unwrap();
        let mut ws = tree(&[]);
        ws.members.insert("new_crate".into());
        let problems = book.check(&ws, "ARCH.md").join("\n");
        assert!(
            problems.contains("group tools lists `gone`, which is not a workspace crate"),
            "{problems}"
        );
        assert!(
            problems.contains("`new_crate` is in no group"),
            "{problems}"
        );
        assert!(
            problems.contains("`petri` is neither a group nor a workspace crate"),
            "{problems}"
        );
    }

    #[test]
    fn malformed_rows_are_errors() {
        for (bad, expect) in [
            (
                "| leaf | sometimes | on nothing | x |",
                "unknown dependency kind `sometimes`",
            ),
            ("| leaf | any | maybe on x | x |", "`Depends` must be"),
            ("| leaf | any | on nothing |  |", "must say why"),
            ("| leaf | any | on nothing |", "four cells"),
        ] {
            let doc = DOC.replace(
                "| leaf | any | on nothing | leaves are used everywhere |",
                bad,
            );
            let err = parse(&doc, "ARCH.md").unwrap_err().to_string();
            assert!(err.contains(expect), "{bad}: {err}");
            assert!(err.contains("ARCH.md:13"), "{bad}: {err}");
        }
        assert!(parse("# No rules here\n", "ARCH.md").is_err());
    }

    #[test]
    fn metadata_edges_between_members_only() {
        let json = br#"{"packages": [
            {"name": "a", "dependencies": [
                {"name": "b", "kind": null},
                {"name": "b", "kind": "dev"},
                {"name": "serde", "kind": null},
                {"name": "c", "kind": "build"}
            ]},
            {"name": "b", "dependencies": []},
            {"name": "c", "dependencies": []}
        ]}"#;
        let ws = workspace_from_metadata(json).unwrap();
        assert_eq!(ws.members.len(), 3);
        assert_eq!(
            ws.edges,
            vec![
                edge("a", "b", Kind::Normal),
                edge("a", "b", Kind::Dev),
                edge("a", "c", Kind::Build),
            ]
        );
    }
}
