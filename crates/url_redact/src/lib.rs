//! Redaction of secrets in URLs before they reach logs, errors, cache paths
//! or test output.
//!
//! Position in the data flow: a leaf crate with no dependencies, used by
//! every crate that prints a URL (the artifacts core, the resolver, the blob
//! layer, xtask). Image URLs may carry a SAS token or a presigned-URL
//! signature in their query string, and userinfo (`user:password@`) in
//! their authority; both are secrets.
//!
//! Rule: the query is replaced by `?<redacted>`, userinfo by `<redacted>@`,
//! and the fragment is dropped. Scheme, host, port and path stay, so an
//! error still says which image on which server failed.

#![forbid(unsafe_code)]

use std::fmt;

/// Displays a URL with its secrets redacted. Cheap: borrows the URL.
///
/// ```
/// use url_redact::RedactedUrl;
/// let url = "https://acct.blob.core.windows.net/vhds/a.vhd?sv=2024&sig=SECRET";
/// assert_eq!(
///     RedactedUrl(url).to_string(),
///     "https://acct.blob.core.windows.net/vhds/a.vhd?<redacted>"
/// );
/// ```
#[derive(Clone, Copy)]
pub struct RedactedUrl<'a>(pub &'a str);

impl fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        // Split off the fragment first: a '?' inside a fragment is not a query.
        let (before_fragment, _fragment) = match url.find('#') {
            Some(i) => (&url[..i], Some(&url[i..])),
            None => (url, None),
        };
        let (base, query) = match before_fragment.find('?') {
            Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
            None => (before_fragment, None),
        };
        // Redact userinfo in the authority, if the URL has one.
        match base.find("://") {
            Some(scheme_end) => {
                let authority_start = scheme_end + 3;
                let rest = &base[authority_start..];
                let authority_end = rest.find('/').unwrap_or(rest.len());
                let authority = &rest[..authority_end];
                f.write_str(&base[..authority_start])?;
                match authority.rfind('@') {
                    Some(at) => {
                        f.write_str("<redacted>@")?;
                        f.write_str(&authority[at + 1..])?;
                    }
                    None => f.write_str(authority)?,
                }
                f.write_str(&rest[authority_end..])?;
            }
            None => f.write_str(base)?,
        }
        if query.is_some() {
            f.write_str("?<redacted>")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Returns `url` with its secrets redacted (see [`RedactedUrl`]).
pub fn redact_url(url: &str) -> String {
    RedactedUrl(url).to_string()
}

/// Returns `url` without its query string and fragment: the part that is
/// safe to use as (part of) a cache key or a file name.
pub fn strip_query(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_redacted() {
        assert_eq!(
            redact_url("http://127.0.0.1:10000/devstoreaccount1/vhds/x.vhd?sv=1&sig=abc%2F"),
            "http://127.0.0.1:10000/devstoreaccount1/vhds/x.vhd?<redacted>"
        );
    }

    #[test]
    fn no_query_is_unchanged() {
        let u = "https://hvlitetestvhds.blob.core.windows.net/vhds/a.vhd";
        assert_eq!(redact_url(u), u);
    }

    #[test]
    fn empty_query_is_still_marked() {
        assert_eq!(redact_url("http://h/a?"), "http://h/a?<redacted>");
    }

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            redact_url("https://user:pa55@example.test:8443/a/b.vhd?sig=1"),
            "https://<redacted>@example.test:8443/a/b.vhd?<redacted>"
        );
    }

    #[test]
    fn at_sign_in_path_is_not_userinfo() {
        assert_eq!(redact_url("http://h/a@b/c"), "http://h/a@b/c");
    }

    #[test]
    fn fragment_is_dropped_and_query_in_fragment_ignored() {
        assert_eq!(redact_url("http://h/a#frag?x=1"), "http://h/a");
        assert_eq!(redact_url("http://h/a?s=1#f"), "http://h/a?<redacted>");
    }

    #[test]
    fn strip_query_keeps_path() {
        assert_eq!(strip_query("http://h/a.vhd?sig=1#f"), "http://h/a.vhd");
        assert_eq!(strip_query("http://h/a.vhd"), "http://h/a.vhd");
    }

    #[test]
    fn not_a_url_still_redacts_query() {
        assert_eq!(redact_url("a.vhd?token"), "a.vhd?<redacted>");
    }
}
