//! The `Range` request header (RFC 9110 section 14.1.1, 14.2): parsing a
//! `bytes=` range set and choosing what a server that sends one part per
//! response answers.

/// Most range specs in one header that are looked at. A longer list is
/// ignored as a whole (RFC 9110 section 14.2 lets a server ignore "a set
/// of many small ranges"); no disk client sends more than one.
pub const MAX_RANGE_SPECS: usize = 64;

/// One element of a `bytes=` range set, as written (not yet resolved
/// against a length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `first-last` or `first-` (`last` is `None`). Numbers too large for
    /// `u64` saturate to `u64::MAX`: larger than any representation, which
    /// is what they mean.
    Int {
        /// The first byte position.
        first: u64,
        /// The last byte position (inclusive), if given.
        last: Option<u64>,
    },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// The bytes `(start, end)` (inclusive) this spec selects from a
    /// representation of `len` bytes, or `None` if it is unsatisfiable
    /// there (an int range starting at or past the end, a suffix of zero
    /// bytes, anything of an empty representation).
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            RangeSpec::Int { first, last } => {
                if first >= len {
                    return None;
                }
                let end = last.map_or(len - 1, |l| l.min(len - 1));
                Some((first, end))
            }
            RangeSpec::Suffix(n) => {
                if n == 0 || len == 0 {
                    return None;
                }
                Some((len - n.min(len), len - 1))
            }
        }
    }
}

/// Parses a `Range` header value of the `bytes` unit (the unit name is
/// case-insensitive) into its range specs, in order. `None` if the value is
/// not a valid `bytes` ranges-specifier (another unit, no `=`, a spec that
/// is not `digits-[digits]` or `-digits`, a last position before the
/// first, no spec at all, more than [`MAX_RANGE_SPECS`]). Optional
/// whitespace is allowed around each list element and empty elements are
/// skipped (RFC 9110 section 5.6.1); nowhere else.
pub fn parse_range_header(value: &str) -> Option<Vec<RangeSpec>> {
    let (unit, set) = value.trim_matches(is_ows).split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for element in set.split(',') {
        let element = element.trim_matches(is_ows);
        if element.is_empty() {
            continue;
        }
        if specs.len() == MAX_RANGE_SPECS {
            return None;
        }
        let (first, last) = element.split_once('-')?;
        let spec = if first.is_empty() {
            RangeSpec::Suffix(digits(last)?)
        } else {
            let first = digits(first)?;
            let last = if last.is_empty() {
                None
            } else {
                Some(digits(last)?)
            };
            if last.is_some_and(|l| l < first) {
                return None;
            }
            RangeSpec::Int { first, last }
        };
        specs.push(spec);
    }
    if specs.is_empty() {
        return None;
    }
    Some(specs)
}

/// What a server that sends at most one part per response answers to a
/// `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSelection {
    /// Serve the whole representation (`200`): the header is malformed,
    /// of another unit, or asks for several separate parts (which would
    /// need `multipart/byteranges`). RFC 9110 section 14.2 lets a server
    /// ignore `Range` in all these cases.
    Ignore,
    /// No spec is satisfiable: `416` with `Content-Range: bytes */len`.
    Unsatisfiable,
    /// Serve bytes `start..=end` (`206`); always inside the representation.
    Bytes {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
}

/// Resolves a `Range` header value against a representation of `len`
/// bytes. Unsatisfiable specs are dropped; the satisfiable ones are
/// coalesced where they overlap or touch (RFC 9110 section 14.2 allows
/// both). One range left: [`RangeSelection::Bytes`]; none:
/// [`RangeSelection::Unsatisfiable`]; several separate ones, or a
/// malformed header: [`RangeSelection::Ignore`].
pub fn select_range(value: &str, len: u64) -> RangeSelection {
    let Some(specs) = parse_range_header(value) else {
        return RangeSelection::Ignore;
    };
    let mut ranges: Vec<(u64, u64)> = specs.iter().filter_map(|s| s.resolve(len)).collect();
    ranges.sort_unstable();
    let mut iter = ranges.into_iter();
    let Some((start, mut end)) = iter.next() else {
        return RangeSelection::Unsatisfiable;
    };
    for (s, e) in iter {
        // `end < len <= u64::MAX`, so `end + 1` does not overflow.
        if s > end + 1 {
            return RangeSelection::Ignore;
        }
        end = end.max(e);
    }
    RangeSelection::Bytes { start, end }
}

/// Whether an `Accept-Ranges` value (a list of range units, or `none`)
/// includes `bytes` (case-insensitive, RFC 9110 section 14.3).
pub fn accepts_byte_ranges(value: &str) -> bool {
    value
        .split(',')
        .any(|unit| unit.trim_matches(is_ows).eq_ignore_ascii_case("bytes"))
}

/// Optional whitespace (RFC 9110 section 5.6.3).
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `1*DIGIT` as a number; too large for `u64` saturates.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(value: &str) -> RangeSelection {
        select_range(value, 1000)
    }

    fn bytes(start: u64, end: u64) -> RangeSelection {
        RangeSelection::Bytes { start, end }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(sel("bytes=0-99"), bytes(0, 99));
        assert_eq!(sel("bytes=990-"), bytes(990, 999));
        assert_eq!(sel("bytes=990-5000"), bytes(990, 999));
        assert_eq!(sel("bytes=5-5"), bytes(5, 5));
        assert_eq!(sel("bytes=999-999"), bytes(999, 999));
        assert_eq!(sel("BYTES=5-5"), bytes(5, 5));
        assert_eq!(sel("bytes=1000-"), RangeSelection::Unsatisfiable);
        assert_eq!(sel("bytes=1000-2000"), RangeSelection::Unsatisfiable);
    }

    #[test]
    fn suffix_ranges() {
        assert_eq!(sel("bytes=-10"), bytes(990, 999));
        assert_eq!(sel("bytes=-1"), bytes(999, 999));
        assert_eq!(sel("bytes=-1000"), bytes(0, 999));
        assert_eq!(sel("bytes=-5000"), bytes(0, 999));
        assert_eq!(sel("bytes=-0"), RangeSelection::Unsatisfiable);
    }

    #[test]
    fn numbers_too_large_for_u64_mean_larger_than_any_file() {
        let huge = "99999999999999999999999";
        // A last position past the end means "to the end".
        assert_eq!(sel(&format!("bytes=999-{huge}")), bytes(999, 999));
        assert_eq!(sel(&format!("bytes=0-{huge}")), bytes(0, 999));
        // A first position past the end is unsatisfiable, not malformed.
        assert_eq!(
            sel(&format!("bytes={huge}-")),
            RangeSelection::Unsatisfiable
        );
        assert_eq!(
            sel(&format!("bytes={huge}-{huge}")),
            RangeSelection::Unsatisfiable
        );
        // A suffix longer than the file is the whole file.
        assert_eq!(sel(&format!("bytes=-{huge}")), bytes(0, 999));
        // The largest file there can be.
        assert_eq!(
            select_range(&format!("bytes={}-", u64::MAX - 1), u64::MAX),
            bytes(u64::MAX - 1, u64::MAX - 1)
        );
        assert_eq!(
            select_range("bytes=-1", u64::MAX),
            bytes(u64::MAX - 1, u64::MAX - 1)
        );
    }

    #[test]
    fn multiple_ranges() {
        // Overlapping or touching ranges coalesce into one part, in any
        // order.
        assert_eq!(sel("bytes=0-9,10-19"), bytes(0, 19));
        assert_eq!(sel("bytes=10-19, 0-14"), bytes(0, 19));
        assert_eq!(sel("bytes=-10,990-"), bytes(990, 999));
        assert_eq!(sel("bytes=0-0,0-0"), bytes(0, 0));
        // Unsatisfiable specs are dropped.
        assert_eq!(sel("bytes=0-9, 5000-6000"), bytes(0, 9));
        assert_eq!(sel("bytes=5000-, -0"), RangeSelection::Unsatisfiable);
        // Separate parts would need multipart/byteranges: whole file.
        assert_eq!(sel("bytes=0-1,5-6"), RangeSelection::Ignore);
        assert_eq!(sel("bytes=0-9,11-19"), RangeSelection::Ignore);
        // Empty list elements are skipped; OWS around elements is fine.
        assert_eq!(sel("bytes=,0-9,\t,"), bytes(0, 9));
        // One malformed spec spoils the header.
        assert_eq!(sel("bytes=0-9,x-1"), RangeSelection::Ignore);
        // Too many specs: ignored.
        let many = vec!["0-0"; MAX_RANGE_SPECS + 1].join(",");
        assert_eq!(sel(&format!("bytes={many}")), RangeSelection::Ignore);
        let enough = vec!["0-0"; MAX_RANGE_SPECS].join(",");
        assert_eq!(sel(&format!("bytes={enough}")), bytes(0, 0));
    }

    #[test]
    fn empty_representation_has_no_satisfiable_range() {
        for r in ["bytes=0-", "bytes=-1", "bytes=0-0", "bytes=0-0,-5"] {
            assert_eq!(select_range(r, 0), RangeSelection::Unsatisfiable, "{r}");
        }
        assert_eq!(select_range("bytes=x", 0), RangeSelection::Ignore);
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for ignored in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=5-4",
            "bytes=a-b",
            "bytes=0-x",
            "bytes=+1-2",
            "bytes=1--2",
            "bytes=1-2-3",
            "bytes=0x10-20",
            "bytes 0-1",
            "bytes = 5-5",
            "bytes=5 - 5",
            "items=0-1",
            "garbage",
        ] {
            assert_eq!(sel(ignored), RangeSelection::Ignore, "{ignored:?}");
        }
    }

    #[test]
    fn accept_ranges() {
        assert!(accepts_byte_ranges("bytes"));
        assert!(accepts_byte_ranges(" Bytes "));
        assert!(accepts_byte_ranges("items, bytes"));
        assert!(!accepts_byte_ranges("none"));
        assert!(!accepts_byte_ranges(""));
        assert!(!accepts_byte_ranges("bytesx"));
    }

    #[test]
    fn parsed_specs_keep_their_order() {
        assert_eq!(
            parse_range_header("bytes=10-,-5,0-0"),
            Some(vec![
                RangeSpec::Int {
                    first: 10,
                    last: None
                },
                RangeSpec::Suffix(5),
                RangeSpec::Int {
                    first: 0,
                    last: Some(0)
                },
            ])
        );
    }
}
