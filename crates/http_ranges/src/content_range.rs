//! The `Content-Range` response header (RFC 9110 section 14.4): what a
//! `206` carries (`bytes a-b/len`) and what a `416` carries
//! (`bytes */len`).

/// A parsed `Content-Range: bytes a-b/total` of a `206`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// The complete length, `None` for `*` (unknown).
    pub total: Option<u64>,
}

impl ContentRange {
    /// Parses `bytes a-b/total` or `bytes a-b/*`. `None` for anything else,
    /// including `a > b`, `b >= total` and the unsatisfied form
    /// `bytes */total` (see [`unsatisfied_total`]).
    pub fn parse(value: &str) -> Option<ContentRange> {
        let rest = value.trim().strip_prefix("bytes ")?.trim();
        let (range, total) = rest.split_once('/')?;
        let (a, b) = range.split_once('-')?;
        let start = a.trim().parse().ok()?;
        let end = b.trim().parse().ok()?;
        if end < start {
            return None;
        }
        let total = match total.trim() {
            "*" => None,
            t => {
                let t: u64 = t.parse().ok()?;
                if end >= t {
                    return None;
                }
                Some(t)
            }
        };
        Some(ContentRange { start, end, total })
    }
}

impl std::fmt::Display for ContentRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bytes {}-{}/", self.start, self.end)?;
        match self.total {
            Some(total) => write!(f, "{total}"),
            None => f.write_str("*"),
        }
    }
}

/// The complete length named by a `Content-Range` of either form
/// (`bytes a-b/total` or `bytes */total`); `None` if it is unknown (`*`)
/// or the value is malformed. A `416` carries the unsatisfied form, whose
/// total tells a client the length now.
pub fn unsatisfied_total(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (_, total) = rest.split_once('/')?;
    total.trim().parse().ok()
}

/// The `Content-Range` value of a `416` for a representation of `len`
/// bytes: `bytes */len`.
pub fn unsatisfied(len: u64) -> String {
    format!("bytes */{len}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(
            ContentRange::parse("bytes 0-99/1000"),
            Some(ContentRange {
                start: 0,
                end: 99,
                total: Some(1000)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes 5-5/*"),
            Some(ContentRange {
                start: 5,
                end: 5,
                total: None
            })
        );
        assert_eq!(ContentRange::parse("bytes 10-5/100"), None);
        assert_eq!(ContentRange::parse("bytes 0-100/100"), None);
        assert_eq!(ContentRange::parse("bytes */100"), None);
        assert_eq!(ContentRange::parse("items 0-1/2"), None);
        assert_eq!(ContentRange::parse("bytes 0-x/2"), None);
        assert_eq!(
            ContentRange::parse("bytes 0-99999999999999999999999/100"),
            None
        );
        assert_eq!(unsatisfied_total("bytes */0"), Some(0));
        assert_eq!(unsatisfied_total("bytes 0-0/77"), Some(77));
        assert_eq!(unsatisfied_total("bytes 0-0/*"), None);
        assert_eq!(unsatisfied_total("bytes */99999999999999999999999"), None);
    }

    #[test]
    fn formatting_round_trips() {
        for cr in [
            ContentRange {
                start: 0,
                end: 0,
                total: Some(1),
            },
            ContentRange {
                start: 10,
                end: u64::MAX - 1,
                total: Some(u64::MAX),
            },
            ContentRange {
                start: 3,
                end: 4,
                total: None,
            },
        ] {
            assert_eq!(ContentRange::parse(&cr.to_string()), Some(cr));
        }
        assert_eq!(unsatisfied(42), "bytes */42");
        assert_eq!(unsatisfied_total(&unsatisfied(42)), Some(42));
    }
}
