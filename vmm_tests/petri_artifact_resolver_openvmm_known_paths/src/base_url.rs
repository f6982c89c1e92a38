//! The one base-URL rule and artifact URL construction, shared by the
//! resolver and `cargo xtask guest-test download-image`.

use petri_artifacts_core::RedactedUrl;
use std::fmt;

/// The environment variable that points the resolver at an image store.
pub const BASE_URL_ENV: &str = "PETRI_ARTIFACT_BASE_URL";

/// What is wrong with a base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseUrlProblem {
    /// The scheme is not `http` or `https`.
    Scheme,
    /// The URL has no host.
    EmptyHost,
    /// The port is not a number in 1..=65535.
    InvalidPort,
    /// The URL has a fragment (`#...`), which a base cannot carry.
    Fragment,
    /// The URL holds whitespace, a control character, a non-ASCII
    /// character or another character a URL may not contain unescaped.
    InvalidCharacter,
}

impl fmt::Display for BaseUrlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BaseUrlProblem::Scheme => "the scheme must be http or https",
            BaseUrlProblem::EmptyHost => "the host is empty",
            BaseUrlProblem::InvalidPort => "the port is not a number between 1 and 65535",
            BaseUrlProblem::Fragment => "a base URL cannot have a fragment (#...)",
            BaseUrlProblem::InvalidCharacter => {
                "it contains whitespace, control, non-ASCII or other characters that must be percent-encoded"
            }
        })
    }
}

/// A malformed base URL. Names the variable and shows the value with its
/// query (and userinfo) redacted; the raw value is not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var} is not a valid http(s) base URL ({problem}): {value}")]
pub struct BaseUrlError {
    /// The variable the value came from.
    pub var: &'static str,
    /// The value, redacted.
    pub value: String,
    /// What is wrong.
    pub problem: BaseUrlProblem,
}

/// The default store's base URL (see `vmm_test_images::default_base_url`).
pub fn default_base_url() -> String {
    vmm_test_images::default_base_url()
}

/// The base-URL rule: the value of [`BASE_URL_ENV`] if set and not blank,
/// else the default Azure container
/// (`https://hvlitetestvhds.blob.core.windows.net/vhds`).
///
/// A set value must be an `http://` or `https://` URL with a host, an
/// optional port, an optional path and an optional query (kept, e.g. a SAS
/// token or a presigned-URL signature), and no fragment. Surrounding
/// whitespace is ignored. The result has the scheme in lowercase and no
/// trailing `/` on its path.
pub fn artifact_base_url(env_value: Option<&str>) -> Result<String, BaseUrlError> {
    let value = match env_value.map(str::trim) {
        None | Some("") => return Ok(default_base_url()),
        Some(v) => v,
    };
    let fail = |problem| BaseUrlError {
        var: BASE_URL_ENV,
        value: RedactedUrl(value).to_string(),
        problem,
    };
    if value
        .chars()
        .any(|c| !c.is_ascii() || c.is_ascii_control() || c == ' ' || "\"<>\\^`{|}".contains(c))
    {
        return Err(fail(BaseUrlProblem::InvalidCharacter));
    }
    let (scheme, rest) = value
        .split_once("://")
        .ok_or(fail(BaseUrlProblem::Scheme))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(fail(BaseUrlProblem::Scheme));
    }
    if rest.contains('#') {
        return Err(fail(BaseUrlProblem::Fragment));
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(authority_end);
    let host_port = match authority.rfind('@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (inside, after) = v6.split_once(']').ok_or(fail(BaseUrlProblem::EmptyHost))?;
        if inside.is_empty() {
            return Err(fail(BaseUrlProblem::EmptyHost));
        }
        match after {
            "" => (inside, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (inside, Some(port)),
                None => return Err(fail(BaseUrlProblem::InvalidPort)),
            },
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(fail(BaseUrlProblem::EmptyHost));
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !ok {
            return Err(fail(BaseUrlProblem::InvalidPort));
        }
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let mut out = format!("{scheme}://{authority}{}", path.trim_end_matches('/'));
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// The URL of `file_name` under `base` (a value returned by
/// [`artifact_base_url`]): `base path` + `/` + the percent-encoded file
/// name, followed by the base's query, if it has one.
///
/// ```
/// use petri_artifact_resolver_openvmm_known_paths::artifact_url;
/// assert_eq!(
///     artifact_url("http://127.0.0.1:10000/devstoreaccount1/vhds?sv=1&sig=x", "a b.vhd"),
///     "http://127.0.0.1:10000/devstoreaccount1/vhds/a%20b.vhd?sv=1&sig=x"
/// );
/// ```
pub fn artifact_url(base: &str, file_name: &str) -> String {
    let (prefix, query) = match base.split_once('?') {
        Some((prefix, query)) => (prefix, Some(query)),
        None => (base, None),
    };
    let mut url = String::with_capacity(base.len() + file_name.len() + 8);
    url.push_str(prefix.trim_end_matches('/'));
    url.push('/');
    url.push_str(&percent_encode_segment(file_name));
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// Percent-encodes `segment` as one URL path segment: RFC 3986 unreserved
/// characters (ASCII letters, digits, `-`, `.`, `_`, `~`) stay, every other
/// byte of its UTF-8 form (including `/`, `?`, `#`, `%` and space) becomes
/// `%XX`.
pub fn percent_encode_segment(segment: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_when_unset_or_blank() {
        let d = "https://hvlitetestvhds.blob.core.windows.net/vhds";
        assert_eq!(artifact_base_url(None).unwrap(), d);
        assert_eq!(artifact_base_url(Some("")).unwrap(), d);
        assert_eq!(artifact_base_url(Some("  \n")).unwrap(), d);
    }

    #[test]
    fn accepted_bases_are_normalised() {
        for (input, expected) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            (
                "HTTPS://mirror.example/images//",
                "https://mirror.example/images",
            ),
            (
                " http://127.0.0.1:10000/devstoreaccount1/vhds?sv=1&sig=a%2Fb \n",
                "http://127.0.0.1:10000/devstoreaccount1/vhds?sv=1&sig=a%2Fb",
            ),
            ("http://[::1]:8080/x/", "http://[::1]:8080/x"),
            ("http://[::1]/x", "http://[::1]/x"),
            ("https://u:p@h/x", "https://u:p@h/x"),
            ("http://h?q=1", "http://h?q=1"),
        ] {
            assert_eq!(
                artifact_base_url(Some(input)).as_deref(),
                Ok(expected),
                "{input}"
            );
        }
    }

    #[test]
    fn rejected_bases_name_the_problem_and_redact() {
        for (input, problem) in [
            ("ftp://h/x?sig=SECRET", BaseUrlProblem::Scheme),
            ("h/x?sig=SECRET", BaseUrlProblem::Scheme),
            ("file:///x?sig=SECRET", BaseUrlProblem::Scheme),
            ("https://?sig=SECRET", BaseUrlProblem::EmptyHost),
            ("https:///x?sig=SECRET", BaseUrlProblem::EmptyHost),
            ("https://user:SECRET@/x", BaseUrlProblem::EmptyHost),
            ("https://[]/x?sig=SECRET", BaseUrlProblem::EmptyHost),
            ("https://h:99999/x?sig=SECRET", BaseUrlProblem::InvalidPort),
            ("https://h:/x?sig=SECRET", BaseUrlProblem::InvalidPort),
            ("https://h:0/x?sig=SECRET", BaseUrlProblem::InvalidPort),
            ("https://h:8a/x?sig=SECRET", BaseUrlProblem::InvalidPort),
            ("https://[::1]x/?sig=SECRET", BaseUrlProblem::InvalidPort),
            ("https://h/x?sig=SECRET#frag", BaseUrlProblem::Fragment),
            ("https://h/a b?sig=SECRET", BaseUrlProblem::InvalidCharacter),
            (
                "https://h/\u{e9}?sig=SECRET",
                BaseUrlProblem::InvalidCharacter,
            ),
            ("https://h/x?sig=SEC\tRET", BaseUrlProblem::InvalidCharacter),
        ] {
            let err = artifact_base_url(Some(input)).unwrap_err();
            assert_eq!(err.problem, problem, "{input}");
            let shown = format!("{err} {err:?}");
            assert!(shown.contains("PETRI_ARTIFACT_BASE_URL"), "{shown}");
            assert!(!shown.contains("SECRET"), "{input}: {shown}");
            assert!(!shown.contains("SEC\tRET"), "{input}: {shown}");
        }
        let err = artifact_base_url(Some("ftp://h/x?sig=SECRET")).unwrap_err();
        assert_eq!(err.value, "ftp://h/x?<redacted>");
    }

    #[test]
    fn artifact_urls() {
        assert_eq!(
            artifact_url("https://hvlitetestvhds.blob.core.windows.net/vhds", "a.vhd"),
            "https://hvlitetestvhds.blob.core.windows.net/vhds/a.vhd"
        );
        assert_eq!(artifact_url("http://h", "a.vhd"), "http://h/a.vhd");
        assert_eq!(artifact_url("http://h/", "a.vhd"), "http://h/a.vhd");
        assert_eq!(
            artifact_url("http://h/p?sig=1&se=2", "a.vhd"),
            "http://h/p/a.vhd?sig=1&se=2"
        );
        assert_eq!(
            artifact_url("http://h?sig=1", "a.vhd"),
            "http://h/a.vhd?sig=1"
        );
    }

    #[test]
    fn file_names_are_one_encoded_segment() {
        assert_eq!(
            percent_encode_segment("nocloud_alpine-3.23.2-x86_64~r0.vhd"),
            "nocloud_alpine-3.23.2-x86_64~r0.vhd"
        );
        assert_eq!(
            percent_encode_segment("a b/c?d#e%f"),
            "a%20b%2Fc%3Fd%23e%25f"
        );
        assert_eq!(percent_encode_segment("\u{e9}"), "%C3%A9");
        assert_eq!(percent_encode_segment("+&="), "%2B%26%3D");
    }
}
