//! The guest's apt sources: the host's own Debian sources for the guest's
//! suite, so the build fetches from whatever mirror (or proxy) this
//! machine's apt is configured with.
//!
//! Rule: from the host's `/etc/apt/sources.list` and
//! `/etc/apt/sources.list.d/*.list` (one-line format) and `*.sources`
//! (deb822), keep the binary (`deb`) entries that are not disabled, list
//! the component `main` and name one of the guest's suites ([`SUITES`]:
//! bookworm, bookworm-updates, bookworm-security); write them as deb822
//! stanzas with only those suites and `Components: main`, keeping each
//! entry's URIs and `Signed-By`. Other entries (other suites, third-party
//! repositories) are dropped. A host with no such entry (another release)
//! gets mmdebstrap's own default for a stable suite instead: the Debian
//! archive and its security archive on deb.debian.org
//! ([`default_sources`]).
//!
//! The result is hashed into the build's inputs: a host pointed at another
//! mirror builds its own guest.

/// The suite the guest is built from.
pub const SUITE: &str = "bookworm";

/// The suites the guest's apt sources may name.
pub const SUITES: [&str; 3] = ["bookworm", "bookworm-updates", "bookworm-security"];

/// The keyring of the Debian archive (package `debian-archive-keyring`).
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One apt source entry, whatever its file format.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    uris: Vec<String>,
    suites: Vec<String>,
    signed_by: Option<String>,
}

impl Entry {
    /// The deb822 stanza of this entry restricted to the guest's suites
    /// and `main`, if any suite is left.
    fn stanza(&self) -> Option<String> {
        let suites: Vec<&str> = self
            .suites
            .iter()
            .map(String::as_str)
            .filter(|s| SUITES.contains(s))
            .collect();
        if suites.is_empty() || self.uris.is_empty() {
            return None;
        }
        let mut out = format!(
            "Types: deb\nURIs: {}\nSuites: {}\nComponents: main\n",
            self.uris.join(" "),
            suites.join(" ")
        );
        if let Some(key) = &self.signed_by {
            out.push_str(&format!("Signed-By: {key}\n"));
        }
        Some(out)
    }
}

/// The guest's sources from the host's source files (`(file name, text)`,
/// in the order apt reads them); `None` when no host entry serves the
/// guest's suites.
pub fn guest_sources(files: &[(String, String)]) -> Option<String> {
    let mut stanzas: Vec<String> = Vec::new();
    for (name, text) in files {
        let entries = if name.ends_with(".sources") {
            parse_deb822(text)
        } else if name.ends_with(".list") {
            parse_one_line(text)
        } else {
            continue;
        };
        for stanza in entries.iter().filter_map(Entry::stanza) {
            if !stanzas.contains(&stanza) {
                stanzas.push(stanza);
            }
        }
    }
    (!stanzas.is_empty()).then(|| stanzas.join("\n"))
}

/// mmdebstrap's default for a stable suite, used when the host has no
/// entry for the guest's suites.
pub fn default_sources() -> String {
    format!(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
         Components: main\nSigned-By: {DEBIAN_KEYRING}\n\n\
         Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\
         Components: main\nSigned-By: {DEBIAN_KEYRING}\n"
    )
}

/// Reads the host's source files, in the order apt reads them.
pub fn host_source_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        files.push(("sources.list".to_owned(), text));
    }
    let mut parts: Vec<std::path::PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    parts.sort();
    for path in parts {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Ok(text) = std::fs::read_to_string(&path) {
            files.push((name, text));
        }
    }
    files
}

/// deb822 stanzas (`Types: deb`, not `Enabled: no`, with `main`).
fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let flush = |fields: &mut Vec<(String, String)>, out: &mut Vec<Entry>| {
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim().to_owned())
        };
        let words = |key: &str| -> Vec<String> {
            get(key)
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let enabled = get("Enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        if enabled
            && words("Types").iter().any(|t| t == "deb")
            && words("Components").iter().any(|c| c == "main")
        {
            out.push(Entry {
                uris: words("URIs"),
                suites: words("Suites"),
                signed_by: get("Signed-By").filter(|v| !v.is_empty()),
            });
        }
        fields.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut fields, &mut out);
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation line (a multi-line Signed-By key).
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line);
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    flush(&mut fields, &mut out);
    out
}

/// One-line entries: `deb [options] URI SUITE COMPONENT...`.
fn parse_one_line(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let (options, rest) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((opts, rest)) => (opts, rest),
                None => continue,
            },
            None => ("", rest),
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let [uri, suite, components @ ..] = words.as_slice() else {
            continue;
        };
        if !components.contains(&"main") {
            continue;
        }
        let signed_by = options
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by="))
            .map(str::to_owned);
        out.push(Entry {
            uris: vec![(*uri).to_owned()],
            suites: vec![(*suite).to_owned()],
            signed_by,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> (String, String) {
        (name.to_owned(), text.to_owned())
    }

    /// This machine's kind of configuration: a deb822 Debian file, and a
    /// third-party repository that must not leak into the guest.
    #[test]
    fn deb822_debian_entries_are_kept_and_others_dropped() {
        let files = [
            file(
                "debian.sources",
                "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                 URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                 Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                 Types: deb\nURIs: http://deb.debian.org/debian-security\n\
                 Suites: bookworm-security\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            ),
            file(
                "nodesource.sources",
                "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n\
                 Components: main\n",
            ),
            file(
                "cloud.list.disabled",
                "deb http://mirror.example/debian bookworm main\n",
            ),
        ];
        assert_eq!(
            guest_sources(&files).unwrap(),
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
    }

    #[test]
    fn one_line_entries_keep_the_mirror_and_drop_other_suites() {
        let files = [file(
            "sources.list",
            "# a comment\n\
             deb [arch=amd64 signed-by=/k.gpg] http://mirror.local/debian bookworm main contrib\n\
             deb-src http://mirror.local/debian bookworm main\n\
             deb http://mirror.local/debian bookworm-backports main\n\
             deb http://mirror.local/debian bookworm-updates contrib\n\
             deb http://security.local/ bookworm-security main # trailing comment\n\
             deb http://mirror.local/debian trixie main\n",
        )];
        assert_eq!(
            guest_sources(&files).unwrap(),
            "Types: deb\nURIs: http://mirror.local/debian\nSuites: bookworm\nComponents: main\n\
             Signed-By: /k.gpg\n\n\
             Types: deb\nURIs: http://security.local/\nSuites: bookworm-security\n\
             Components: main\n"
        );
    }

    #[test]
    fn disabled_source_only_and_foreign_entries_give_none() {
        let files = [
            file(
                "a.sources",
                "Enabled: no\nTypes: deb\nURIs: http://x/debian\nSuites: bookworm\nComponents: main\n",
            ),
            file(
                "b.sources",
                "Types: deb-src\nURIs: http://x/debian\nSuites: bookworm\nComponents: main\n",
            ),
            file(
                "c.sources",
                "Types: deb\nURIs: http://x/debian\nSuites: bookworm\nComponents: contrib\n",
            ),
            file("d.list", "deb http://x/debian trixie main\n"),
        ];
        assert_eq!(guest_sources(&files), None);
        assert!(default_sources().contains("URIs: http://deb.debian.org/debian-security"));
        assert!(default_sources().contains(DEBIAN_KEYRING));
    }

    #[test]
    fn duplicate_entries_appear_once_and_multiline_keys_survive() {
        let stanza = "Types: deb\nURIs: http://x/debian\nSuites: bookworm\nComponents: main\n\
                      Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n";
        let files = [file("a.sources", stanza), file("b.sources", stanza)];
        let out = guest_sources(&files).unwrap();
        assert_eq!(out.matches("Types: deb").count(), 1, "{out}");
        assert!(
            out.ends_with("Signed-By: -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n"),
            "{out}"
        );
    }
}
