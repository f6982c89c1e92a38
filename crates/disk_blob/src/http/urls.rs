//! Blob URLs: which are accepted, and how a redirect's `Location` resolves
//! against the URL that sent it.

use crate::BlobError;
use http::Uri;
use url_redact::redact_url;

/// Parses and checks a blob URL: http or https, a host, no userinfo. The
/// fragment is dropped (it is never sent).
pub(super) fn parse_url(url: &str) -> Result<Uri, BlobError> {
    let invalid = |reason: String| BlobError::InvalidUrl {
        url: redact_url(url),
        reason,
    };
    let without_fragment = url.split('#').next().unwrap_or(url);
    let uri = Uri::try_from(without_fragment).map_err(|e| invalid(e.to_string()))?;
    check_uri(&uri).map_err(invalid)?;
    Ok(uri)
}

fn check_uri(uri: &Uri) -> Result<(), String> {
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(s) => return Err(format!("unsupported scheme {s:?}, expected http or https")),
        None => return Err("not an absolute URL".into()),
    }
    let auth = uri.authority().ok_or("no host")?;
    if auth.as_str().contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    if auth.host().is_empty() {
        return Err("no host".into());
    }
    Ok(())
}

/// Resolves a `Location` header against the URI that sent it (RFC 3986
/// reference resolution, without `..` beyond the root).
pub(super) fn resolve_location(base: &Uri, loc: &str) -> Result<Uri, String> {
    let loc = loc.trim();
    let loc = loc.split('#').next().unwrap_or(loc);
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    let has_scheme = loc.split_once(':').is_some_and(|(s, _)| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !s.contains('/')
    });
    let abs = if has_scheme {
        loc.to_string()
    } else if let Some(rest) = loc.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if loc.starts_with('/') {
        let (path, query) = split_query(loc);
        format!("{scheme}://{authority}{}{query}", remove_dot_segments(path))
    } else if loc.starts_with('?') {
        format!("{scheme}://{authority}{}{loc}", base.path())
    } else if loc.is_empty() {
        base.to_string()
    } else {
        let base_path = base.path();
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        let (path, query) = split_query(loc);
        let joined = format!("{}{path}", if dir.is_empty() { "/" } else { dir });
        format!(
            "{scheme}://{authority}{}{query}",
            remove_dot_segments(&joined)
        )
    };
    let uri = Uri::try_from(abs.as_str()).map_err(|e| format!("unparsable Location: {e}"))?;
    check_uri(&uri).map_err(|e| format!("Location: {e}"))?;
    Ok(uri)
}

fn split_query(s: &str) -> (&str, &str) {
    match s.find('?') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_resolution() {
        let base: Uri = "https://h.example:8443/a/b/c.vhd?sig=1".parse().unwrap();
        let r = |l: &str| resolve_location(&base, l).map(|u| u.to_string());
        assert_eq!(r("https://x/y").unwrap(), "https://x/y");
        assert_eq!(r("//other/z.vhd").unwrap(), "https://other/z.vhd");
        assert_eq!(r("/z.vhd?t=2").unwrap(), "https://h.example:8443/z.vhd?t=2");
        assert_eq!(r("d.vhd").unwrap(), "https://h.example:8443/a/b/d.vhd");
        assert_eq!(r("../d.vhd").unwrap(), "https://h.example:8443/a/d.vhd");
        assert_eq!(
            r("./x/../d.vhd").unwrap(),
            "https://h.example:8443/a/b/d.vhd"
        );
        assert_eq!(r("/../../d").unwrap(), "https://h.example:8443/d");
        assert_eq!(r("?s=3").unwrap(), "https://h.example:8443/a/b/c.vhd?s=3");
        assert_eq!(r("http://plain/x").unwrap(), "http://plain/x");
        assert!(r("ftp://x/y").is_err());
        assert!(r("https://user:pw@x/y").is_err());
    }

    #[test]
    fn url_checks() {
        assert!(parse_url("http://127.0.0.1:8080/a.vhd?sig=SECRET#frag").is_ok());
        for bad in [
            "ftp://h/a?sig=SECRET",
            "/relative?sig=SECRET",
            "https://u:SECRET@h/a",
            "http:// bad host/a?sig=SECRET",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(matches!(e, BlobError::InvalidUrl { .. }), "{bad}");
            assert!(!e.to_string().contains("SECRET"), "{e}");
        }
    }
}
