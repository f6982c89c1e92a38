//! The HTTP rules of one GET or HEAD, as pure functions over header values
//! and the file's version: request path to file path, conditional
//! requests (RFC 9110 section 13) and byte ranges (section 14).

use crate::http_date;

/// The version of a file a response describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Length in bytes.
    pub len: u64,
    /// The strong entity tag, quotes included.
    pub etag: String,
    /// Modification time, whole seconds since the epoch.
    pub modified: u64,
}

/// The conditional headers of a request (raw values).
#[derive(Debug, Default, Clone)]
pub struct Conditions<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_unmodified_since: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub range: Option<&'a str>,
}

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 200 with the whole file.
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
    /// 416 Range Not Satisfiable.
    RangeNotSatisfiable,
}

/// Splits an entity-tag list (`"a", W/"b"`) into its tags; `None` if it is
/// malformed.
fn etag_list(value: &str) -> Option<Vec<(bool, &str)>> {
    let mut tags = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        let (weak, after) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let after = after.strip_prefix('"')?;
        let close = after.find('"')?;
        tags.push((weak, &after[..close]));
        rest = after[close + 1..].trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(tags)
}

/// Strong comparison: both tags strong and equal.
fn strong_match(header: &str, etag: &str) -> bool {
    let ours = etag.trim_matches('"');
    if header.trim() == "*" {
        return true;
    }
    etag_list(header).is_some_and(|tags| tags.iter().any(|&(weak, tag)| !weak && tag == ours))
}

/// Weak comparison: equal opaque tags, weakness ignored.
fn weak_match(header: &str, etag: &str) -> bool {
    let ours = etag.trim_matches('"');
    if header.trim() == "*" {
        return true;
    }
    etag_list(header).is_some_and(|tags| tags.iter().any(|&(_, tag)| tag == ours))
}

/// Evaluates the conditions and the range of a GET or HEAD, in the order of
/// RFC 9110 section 13.2.2.
pub fn decide(c: &Conditions<'_>, v: &Version) -> Decision {
    // 1. If-Match, else 2. If-Unmodified-Since.
    if let Some(im) = c.if_match {
        if !strong_match(im, &v.etag) {
            return Decision::PreconditionFailed;
        }
    } else if let Some(ius) = c.if_unmodified_since {
        // An unparsable date is ignored.
        if let Some(date) = http_date::parse(ius)
            && v.modified > date
        {
            return Decision::PreconditionFailed;
        }
    }
    // 3. If-None-Match, else 4. If-Modified-Since (GET and HEAD only,
    // which are the only methods served).
    if let Some(inm) = c.if_none_match {
        if weak_match(inm, &v.etag) {
            return Decision::NotModified;
        }
    } else if let Some(ims) = c.if_modified_since
        && let Some(date) = http_date::parse(ims)
        && v.modified <= date
    {
        return Decision::NotModified;
    }
    // 5. If-Range: the range applies only to the version the client names.
    let Some(range) = c.range else {
        return Decision::Full;
    };
    if let Some(ir) = c.if_range {
        let ir = ir.trim();
        let current = if ir.starts_with('"') || ir.starts_with("W/") {
            // Weak tags never match here (strong comparison).
            !ir.starts_with("W/") && ir == v.etag
        } else {
            http_date::parse(ir) == Some(v.modified)
        };
        if !current {
            return Decision::Full;
        }
    }
    match parse_range(range, v.len) {
        RangeSpec::Ignore => Decision::Full,
        RangeSpec::Unsatisfiable => Decision::RangeNotSatisfiable,
        RangeSpec::Bytes { start, end } => Decision::Partial { start, end },
    }
}

/// A parsed `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    /// Malformed, another unit, or several ranges: serve the whole file.
    Ignore,
    /// A syntactically valid range that lies outside the file.
    Unsatisfiable,
    /// Bytes `start..=end`, inside the file.
    Bytes { start: u64, end: u64 },
}

fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // A number too large for u64 is larger than any file: saturate.
    Some(text.parse().unwrap_or(u64::MAX))
}

fn parse_range(value: &str, len: u64) -> RangeSpec {
    let value = value.trim();
    let Some((unit, set)) = value.split_once('=') else {
        return RangeSpec::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let Some(n) = digits(last) else {
            return RangeSpec::Ignore;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Bytes {
            start: len - n.min(len),
            end: len - 1,
        };
    }
    let Some(start) = digits(first) else {
        return RangeSpec::Ignore;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match digits(last) {
            Some(end) if end >= start => end,
            _ => return RangeSpec::Ignore,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Bytes {
        start,
        end: end.min(len - 1),
    }
}

/// Why a request path does not name a file under the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// A `%` escape is malformed or the decoded bytes are not UTF-8.
    Encoding,
    /// Empty, `.` or `..` segments, or a decoded `/`, `\` or NUL.
    Segment,
}

/// The relative file path of a request path (`/a/b%20c.vhd` -> `a/b c.vhd`),
/// one decoded segment per component. The root itself (`/`) is not a file.
pub fn request_segments(path: &str) -> Result<Vec<String>, BadPath> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let mut out = Vec::new();
    for raw in trimmed.split('/') {
        let segment = percent_decode(raw)?;
        if segment.is_empty()
            || segment == "."
            || segment == ".."
            || segment.contains(['/', '\\', '\0'])
        {
            return Err(BadPath::Segment);
        }
        out.push(segment);
    }
    Ok(out)
}

fn percent_decode(text: &str) -> Result<String, BadPath> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(BadPath::Encoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| BadPath::Encoding)?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| BadPath::Encoding)?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BadPath::Encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> Version {
        Version {
            len: 1000,
            etag: "\"3e8-abc\"".into(),
            modified: 784_111_777,
        }
    }

    fn range(r: &str) -> Decision {
        decide(
            &Conditions {
                range: Some(r),
                ..Default::default()
            },
            &version(),
        )
    }

    #[test]
    fn ranges() {
        use Decision::*;
        assert_eq!(range("bytes=0-99"), Partial { start: 0, end: 99 });
        assert_eq!(
            range("bytes=990-"),
            Partial {
                start: 990,
                end: 999
            }
        );
        assert_eq!(
            range("bytes=990-5000"),
            Partial {
                start: 990,
                end: 999
            }
        );
        assert_eq!(
            range("bytes=-10"),
            Partial {
                start: 990,
                end: 999
            }
        );
        assert_eq!(range("bytes=-5000"), Partial { start: 0, end: 999 });
        assert_eq!(range("BYTES = 5 - 5"), Partial { start: 5, end: 5 });
        assert_eq!(
            range("bytes=999-99999999999999999999999"),
            Partial {
                start: 999,
                end: 999
            }
        );
        assert_eq!(range("bytes=1000-"), RangeNotSatisfiable);
        assert_eq!(range("bytes=1000-2000"), RangeNotSatisfiable);
        assert_eq!(range("bytes=-0"), RangeNotSatisfiable);
        for ignored in [
            "bytes=5-4",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=",
            "bytes=-",
            "bytes 0-1",
            "bytes=+1-2",
        ] {
            assert_eq!(range(ignored), Full, "{ignored}");
        }
    }

    #[test]
    fn empty_file_has_no_satisfiable_range() {
        let v = Version {
            len: 0,
            ..version()
        };
        for r in ["bytes=0-", "bytes=-1", "bytes=0-0"] {
            let c = Conditions {
                range: Some(r),
                ..Default::default()
            };
            assert_eq!(decide(&c, &v), Decision::RangeNotSatisfiable, "{r}");
        }
    }

    #[test]
    fn if_match_is_strong() {
        let v = version();
        let with = |im| Conditions {
            if_match: Some(im),
            range: Some("bytes=0-9"),
            ..Default::default()
        };
        let partial = Decision::Partial { start: 0, end: 9 };
        assert_eq!(decide(&with("\"3e8-abc\""), &v), partial);
        assert_eq!(decide(&with("*"), &v), partial);
        assert_eq!(decide(&with("\"x\", \"3e8-abc\""), &v), partial);
        assert_eq!(
            decide(&with("W/\"3e8-abc\""), &v),
            Decision::PreconditionFailed
        );
        assert_eq!(decide(&with("\"other\""), &v), Decision::PreconditionFailed);
        assert_eq!(decide(&with("garbage"), &v), Decision::PreconditionFailed);
    }

    #[test]
    fn unmodified_since() {
        let v = version();
        let with = |d| Conditions {
            if_unmodified_since: Some(d),
            ..Default::default()
        };
        assert_eq!(
            decide(&with("Sun, 06 Nov 1994 08:49:37 GMT"), &v),
            Decision::Full
        );
        assert_eq!(
            decide(&with("Sun, 06 Nov 1994 08:49:36 GMT"), &v),
            Decision::PreconditionFailed
        );
        // Unparsable: ignored.
        assert_eq!(decide(&with("yesterday"), &v), Decision::Full);
        // If-Match wins over If-Unmodified-Since.
        let c = Conditions {
            if_match: Some("*"),
            if_unmodified_since: Some("Thu, 01 Jan 1970 00:00:00 GMT"),
            ..Default::default()
        };
        assert_eq!(decide(&c, &v), Decision::Full);
    }

    #[test]
    fn not_modified() {
        let v = version();
        let inm = |t| Conditions {
            if_none_match: Some(t),
            ..Default::default()
        };
        assert_eq!(decide(&inm("W/\"3e8-abc\""), &v), Decision::NotModified);
        assert_eq!(decide(&inm("*"), &v), Decision::NotModified);
        assert_eq!(decide(&inm("\"old\""), &v), Decision::Full);
        let ims = |d| Conditions {
            if_modified_since: Some(d),
            ..Default::default()
        };
        assert_eq!(
            decide(&ims("Sun, 06 Nov 1994 08:49:37 GMT"), &v),
            Decision::NotModified
        );
        assert_eq!(
            decide(&ims("Sun, 06 Nov 1994 08:49:36 GMT"), &v),
            Decision::Full
        );
    }

    #[test]
    fn if_range_serves_the_whole_file_for_another_version() {
        let v = version();
        let ir = |t| Conditions {
            if_range: Some(t),
            range: Some("bytes=10-19"),
            ..Default::default()
        };
        let partial = Decision::Partial { start: 10, end: 19 };
        assert_eq!(decide(&ir("\"3e8-abc\""), &v), partial);
        assert_eq!(decide(&ir("Sun, 06 Nov 1994 08:49:37 GMT"), &v), partial);
        assert_eq!(decide(&ir("\"old\""), &v), Decision::Full);
        assert_eq!(decide(&ir("W/\"3e8-abc\""), &v), Decision::Full);
        assert_eq!(
            decide(&ir("Sun, 06 Nov 1994 08:49:38 GMT"), &v),
            Decision::Full
        );
        assert_eq!(decide(&ir("nonsense"), &v), Decision::Full);
    }

    #[test]
    fn request_paths() {
        assert_eq!(
            request_segments("/a/b%20c.vhd").unwrap(),
            vec!["a".to_string(), "b c.vhd".to_string()]
        );
        assert_eq!(request_segments("/x.raw").unwrap(), vec!["x.raw"]);
        for bad in [
            "/",
            "/a//b",
            "/../etc/passwd",
            "/a/./b",
            "/%2e%2e/x",
            "/a%2fb",
        ] {
            assert_eq!(request_segments(bad), Err(BadPath::Segment), "{bad}");
        }
        for bad in ["/%zz", "/%4", "/%ff%fe"] {
            assert_eq!(request_segments(bad), Err(BadPath::Encoding), "{bad}");
        }
        assert_eq!(request_segments("/a%00b"), Err(BadPath::Segment));
    }
}
