//! Parsing of the response headers reads depend on: validators (`ETag`,
//! `Last-Modified`), `Content-Range` and HTTP dates.

use crate::BlobValidators;
use http::HeaderMap;
use http::header;

pub(super) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn validators_of(headers: &HeaderMap) -> BlobValidators {
    BlobValidators {
        etag: header_str(headers, header::ETAG).map(str::to_owned),
        last_modified: header_str(headers, header::LAST_MODIFIED).map(str::to_owned),
    }
}

/// Weak comparison of two entity tags (RFC 9110 8.8.3.2): equal opaque
/// tags, whatever their weakness.
pub(super) fn etag_weak_eq(a: &str, b: &str) -> bool {
    a.trim().trim_start_matches("W/") == b.trim().trim_start_matches("W/")
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into seconds
/// since the Unix epoch. The obsolete date forms are not accepted.
pub(super) fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let (_weekday, rest) = s.split_once(", ")?;
    let mut it = rest.split(' ');
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let sec: u64 = hms.next()?.parse().ok()?;
    if it.next()? != "GMT" || it.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 to the date (proleptic Gregorian calendar).
    let is_leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let month_days = [
        31,
        if is_leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day > month_days[month - 1] {
        return None;
    }
    let mut days: u64 = (1970..year)
        .map(|y| if is_leap(y) { 366 } else { 365 })
        .sum();
    days += month_days[..month - 1].iter().sum::<u64>();
    days += day - 1;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// A parsed `Content-Range: bytes a-b/total` (total `None` for `*`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ContentRange {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) total: Option<u64>,
}

pub(super) fn parse_content_range(s: &str) -> Option<ContentRange> {
    let rest = s.trim().strip_prefix("bytes ")?.trim();
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

/// The total of `bytes a-b/total` or `bytes */total`.
pub(super) fn parse_content_range_total(s: &str) -> Option<u64> {
    let rest = s.trim().strip_prefix("bytes ")?;
    let (_, total) = rest.split_once('/')?;
    total.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some(ContentRange {
                start: 0,
                end: 99,
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-5/*"),
            Some(ContentRange {
                start: 5,
                end: 5,
                total: None
            })
        );
        assert_eq!(parse_content_range("bytes 10-5/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes 0-x/2"), None);
        assert_eq!(parse_content_range_total("bytes */0"), Some(0));
        assert_eq!(parse_content_range_total("bytes 0-0/77"), Some(77));
        assert_eq!(parse_content_range_total("bytes 0-0/*"), None);
    }

    #[test]
    fn etag_comparison() {
        assert!(etag_weak_eq("\"a\"", "\"a\""));
        assert!(etag_weak_eq("W/\"a\"", "\"a\""));
        assert!(!etag_weak_eq("\"a\"", "\"b\""));
    }
}
