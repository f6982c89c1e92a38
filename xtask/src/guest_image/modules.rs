//! Kernel module dependency resolution from a kernel's `modules.dep`,
//! `modules.softdep` and `modules.alias`, so the initramfs loads exactly the
//! modules the root disk needs, in an order the kernel accepts.
//!
//! Model (the subset of `modprobe` semantics the initramfs needs):
//! - A module is named by its file stem with `-` read as `_`
//!   (`crc32c-intel.ko` is the module `crc32c_intel`), as `modprobe` does.
//! - Hard dependencies come from `modules.dep`; each line lists a module's
//!   path and the paths of the modules it needs. Dependencies are loaded
//!   before their users (a depth-first post-order), each module once.
//! - `softdep <m> pre: <names>` lines in `modules.softdep` name modules that
//!   should be loaded before `<m>`. A name that is not a module is looked up
//!   as an exact alias in `modules.alias` (for example `crypto-crc32c`,
//!   which names `crc32c_generic` and `crc32c_intel`). Soft dependencies are
//!   *optional*: the initramfs tries them and carries on if one refuses to
//!   load (e.g. `crc32c_intel` on a CPU without SSE4.2).
//!
//! Invariants: the plan is deterministic for given input files (aliases are
//! visited in sorted order), lists every module at most once, and a module
//! never comes before one of its hard dependencies. A hard module that is
//! missing from `modules.dep` is an error naming the module and the file.
//!
//! DEVNOTE: `post:` soft dependencies, `install`/`options` lines and alias
//! wildcards are ignored; the handful of modules we load do not use them.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;

/// Normalises a module name or file name to the kernel's module name.
pub fn module_name(path_or_name: &str) -> String {
    let file = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The parsed module metadata of one kernel version.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Module name -> (relative path, hard dependency names in file order).
    deps: BTreeMap<String, (String, Vec<String>)>,
    /// Module name -> names from `softdep <m> pre: ...`.
    softdeps: BTreeMap<String, Vec<String>>,
    /// Alias -> module names (sorted, deduplicated).
    aliases: BTreeMap<String, BTreeSet<String>>,
}

/// One module to load, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedModule {
    /// Module name (`virtio_blk`).
    pub name: String,
    /// Path relative to `/lib/modules/<version>/` (`kernel/.../virtio_blk.ko`).
    pub rel_path: String,
    /// Whether a failure to load it may be ignored (a soft dependency).
    pub optional: bool,
}

impl ModuleIndex {
    /// Reads the index files of `/lib/modules/<version>` (`modules.softdep`
    /// and `modules.alias` may be absent).
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str, required: bool| -> Result<String> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(String::new())
                }
                Err(e) => Err(e).with_context(|| {
                    format!(
                        "reading {} (is the kernel's package installed? run depmod if the file is missing)",
                        path.display()
                    )
                }),
            }
        };
        Self::parse(
            &read("modules.dep", true)?,
            &read("modules.softdep", false)?,
            &read("modules.alias", false)?,
        )
    }

    /// Parses the contents of `modules.dep`, `modules.softdep` and
    /// `modules.alias`.
    pub fn parse(dep: &str, softdep: &str, alias: &str) -> Result<Self> {
        let mut index = Self::default();
        for (n, line) in dep.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, rest)) = line.split_once(':') else {
                bail!("modules.dep line {}: no ':' in {line:?}", n + 1);
            };
            let deps = rest.split_whitespace().map(module_name).collect();
            index
                .deps
                .insert(module_name(path), (path.trim().to_string(), deps));
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let mut in_pre = false;
            for w in words {
                match w {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    name if in_pre => index
                        .softdeps
                        .entry(module_name(module))
                        .or_default()
                        .push(name.to_string()),
                    _ => {}
                }
            }
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (words.next(), words.next(), words.next()) {
                index
                    .aliases
                    .entry(a.to_string())
                    .or_default()
                    .insert(module_name(m));
            }
        }
        Ok(index)
    }

    /// Plans the load order for `wanted` (hard requirements) and their hard
    /// and soft dependencies.
    pub fn plan(&self, wanted: &[&str]) -> Result<Vec<PlannedModule>> {
        let mut plan = Vec::new();
        let mut done = BTreeSet::new();
        for name in wanted {
            self.visit(
                &module_name(name),
                false,
                &mut Vec::new(),
                &mut done,
                &mut plan,
            )?;
        }
        Ok(plan)
    }

    fn visit(
        &self,
        name: &str,
        optional: bool,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        plan: &mut Vec<PlannedModule>,
    ) -> Result<()> {
        if done.contains(name) {
            // A module first planned as optional and later needed hard stays
            // where it is but becomes mandatory.
            if !optional && let Some(p) = plan.iter_mut().find(|p| p.name == name) {
                p.optional = false;
            }
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            bail!("module dependency cycle: {} -> {name}", stack.join(" -> "));
        }
        let Some((rel_path, deps)) = self.deps.get(name) else {
            if optional {
                return Ok(());
            }
            bail!(
                "kernel module {name} is not in modules.dep (the kernel may have it built in or \
                 not at all; check the kernel config)"
            );
        };
        stack.push(name.to_string());
        for soft in self.softdeps.get(name).into_iter().flatten() {
            for target in self.resolve_soft(soft) {
                self.visit(&target, true, stack, done, plan)?;
            }
        }
        for dep in deps {
            self.visit(dep, optional, stack, done, plan)?;
        }
        stack.pop();
        done.insert(name.to_string());
        plan.push(PlannedModule {
            name: name.to_string(),
            rel_path: rel_path.clone(),
            optional,
        });
        Ok(())
    }

    /// A soft dependency names a module, or an alias of one or more modules.
    fn resolve_soft(&self, soft: &str) -> Vec<String> {
        let as_module = module_name(soft);
        if self.deps.contains_key(&as_module) {
            return vec![as_module];
        }
        self.aliases
            .get(soft)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A trimmed copy of the Debian 6.1 kernel's files for the modules the
    // test guest needs, plus a distractor.
    const DEP: &str = "\
kernel/fs/mbcache.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/lib/crc16.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko
";
    const SOFTDEP: &str = "\
# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep libcrc32c pre: crc32c
";
    const ALIAS: &str = "\
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
";

    fn names(plan: &[PlannedModule]) -> Vec<&str> {
        plan.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn module_names_are_normalised() {
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(module_name("virtio-blk"), "virtio_blk");
    }

    #[test]
    fn plan_loads_dependencies_first_once_each() {
        let index = ModuleIndex::parse(DEP, SOFTDEP, ALIAS).unwrap();
        let plan = index.plan(&["virtio_pci", "virtio_blk", "ext4"]).unwrap();
        assert_eq!(
            names(&plan),
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "crc32c_generic",
                "crc32c_intel",
                "crc16",
                "mbcache",
                "jbd2",
                "ext4",
            ]
        );
        // Every hard dependency comes before its user.
        for (i, p) in plan.iter().enumerate() {
            for dep in &index.deps[&p.name].1 {
                let j = plan.iter().position(|q| &q.name == dep).unwrap();
                assert!(j < i, "{dep} must load before {}", p.name);
            }
        }
        let optional: Vec<&str> = plan
            .iter()
            .filter(|p| p.optional)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(optional, ["crc32c_generic", "crc32c_intel"]);
        assert_eq!(plan[4].rel_path, "kernel/drivers/virtio/virtio_pci.ko");
    }

    #[test]
    fn missing_hard_module_is_an_error_naming_it() {
        let index = ModuleIndex::parse(DEP, "", "").unwrap();
        let err = index.plan(&["virtio_scsi"]).unwrap_err().to_string();
        assert!(err.contains("virtio_scsi"), "{err}");
        // A missing soft dependency is not an error.
        let index = ModuleIndex::parse(DEP, "softdep ext4 pre: nosuchmod\n", "").unwrap();
        assert!(index.plan(&["ext4"]).is_ok());
    }

    #[test]
    fn cycles_are_reported() {
        let index = ModuleIndex::parse("a.ko: b.ko\nb.ko: a.ko\n", "", "").unwrap();
        let err = index.plan(&["a"]).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
    }

    #[test]
    fn malformed_dep_line_is_an_error() {
        let err = ModuleIndex::parse("kernel/x.ko kernel/y.ko\n", "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
