//! What a server answers to a `GET` or `HEAD` of one version of a file,
//! given the request's conditional headers and `Range`: the evaluation
//! order of RFC 9110 section 13.2.2.

use crate::date;
use crate::etag;
use crate::etag::EntityTag;
use crate::range::RangeSelection;
use crate::range::select_range;

/// The version of a representation a response describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Length in bytes.
    pub len: u64,
    /// The `ETag` sent for it, quotes included (strong or weak).
    pub etag: String,
    /// Its `Last-Modified`, whole seconds since the Unix epoch.
    pub modified: u64,
}

/// The conditional headers and the `Range` of a request (raw values;
/// `None` when absent).
#[derive(Debug, Default, Clone)]
pub struct Conditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a str>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a str>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a str>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<&'a str>,
    /// `If-Range`.
    pub if_range: Option<&'a str>,
    /// `Range`.
    pub range: Option<&'a str>,
}

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `200` with the whole representation.
    Full,
    /// `206` with bytes `start..=end` (inside the representation).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// `304 Not Modified`.
    NotModified,
    /// `412 Precondition Failed`.
    PreconditionFailed,
    /// `416 Range Not Satisfiable` (with `Content-Range: bytes */len`).
    RangeNotSatisfiable,
}

/// Evaluates the conditions and the range of a `GET` or `HEAD`, in the
/// order of RFC 9110 section 13.2.2:
/// 1. `If-Match` (strong comparison, `*` matches) fails: `412`; else, if
///    absent, `If-Unmodified-Since` earlier than the version: `412`;
/// 2. `If-None-Match` (weak comparison) matches: `304`; else, if absent,
///    `If-Modified-Since` not earlier than the version: `304`;
/// 3. `If-Range` (an entity tag compared strongly, or a date equal to
///    `Last-Modified`) that does not name this version: the whole
///    representation (`200`);
/// 4. the `Range` (see [`select_range`]).
///
/// Unparsable dates are treated as absent (the RFC's rule); an unparsable
/// `If-Range` names no version.
pub fn decide(c: &Conditions<'_>, v: &Version) -> Decision {
    if let Some(im) = c.if_match {
        if !etag::if_match(im, &v.etag) {
            return Decision::PreconditionFailed;
        }
    } else if let Some(ius) = c.if_unmodified_since
        && let Some(date) = date::parse(ius)
        && v.modified > date
    {
        return Decision::PreconditionFailed;
    }
    if let Some(inm) = c.if_none_match {
        if etag::if_none_match(inm, &v.etag) {
            return Decision::NotModified;
        }
    } else if let Some(ims) = c.if_modified_since
        && let Some(date) = date::parse(ims)
        && v.modified <= date
    {
        return Decision::NotModified;
    }
    let Some(range) = c.range else {
        return Decision::Full;
    };
    if let Some(ir) = c.if_range
        && !if_range_is_current(ir, v)
    {
        return Decision::Full;
    }
    match select_range(range, v.len) {
        RangeSelection::Ignore => Decision::Full,
        RangeSelection::Unsatisfiable => Decision::RangeNotSatisfiable,
        RangeSelection::Bytes { start, end } => Decision::Partial { start, end },
    }
}

/// Whether an `If-Range` value names version `v`: an entity tag equal to
/// its ETag under the strong comparison (so a weak tag never does), or an
/// HTTP date equal to its `Last-Modified`.
fn if_range_is_current(value: &str, v: &Version) -> bool {
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        return match (EntityTag::parse(value), EntityTag::parse(&v.etag)) {
            (Some(theirs), Some(ours)) => theirs.strong_eq(&ours),
            _ => false,
        };
    }
    date::parse(value) == Some(v.modified)
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
            range("bytes=-10"),
            Partial {
                start: 990,
                end: 999
            }
        );
        assert_eq!(range("bytes=1000-"), RangeNotSatisfiable);
        assert_eq!(range("bytes=0-1,5-6"), Full);
        assert_eq!(range("bytes=5-4"), Full);
        assert_eq!(decide(&Conditions::default(), &version()), Full);
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
        // A weak current tag fails a strong If-Match; `*` asks only that a
        // current representation exists.
        let weak = Version {
            etag: "W/\"3e8-abc\"".into(),
            ..version()
        };
        assert_eq!(
            decide(&with("\"3e8-abc\""), &weak),
            Decision::PreconditionFailed
        );
        assert_eq!(decide(&with("*"), &weak), partial);
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
        // If-None-Match wins over If-Modified-Since.
        let c = Conditions {
            if_none_match: Some("\"old\""),
            if_modified_since: Some("Sun, 06 Nov 1994 08:49:37 GMT"),
            ..Default::default()
        };
        assert_eq!(decide(&c, &v), Decision::Full);
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
        // If-Range without Range changes nothing.
        let c = Conditions {
            if_range: Some("\"old\""),
            ..Default::default()
        };
        assert_eq!(decide(&c, &v), Decision::Full);
    }
}
