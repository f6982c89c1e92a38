//! HTTP dates (RFC 9110 section 5.6.7) as whole seconds since the Unix
//! epoch, by the `httpdate` crate: formatting as IMF-fixdate
//! (`Sun, 06 Nov 1994 08:49:37 GMT`), and parsing of that form and of the
//! two obsolete ones (RFC 850, asctime) that a recipient must accept.

use std::time::Duration;
use std::time::SystemTime;

/// The latest second an HTTP date can name here: `httpdate` handles
/// years 1970 to 9999 (Fri, 31 Dec 9999 23:59:59 GMT).
pub const MAX_SECS: u64 = 253_402_300_799;

/// Formats seconds since the Unix epoch as an IMF-fixdate. Later than
/// [`MAX_SECS`] (a file's modification time can be anything) is formatted
/// as [`MAX_SECS`].
pub fn format(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.min(MAX_SECS)))
}

/// Parses an HTTP date (any of the three forms, surrounding whitespace
/// allowed) into seconds since the Unix epoch. `None` for anything else,
/// including dates before 1970, impossible dates (31 Feb, a weekday that
/// does not match) and leap seconds: a recipient treats a date it cannot
/// parse as absent.
pub fn parse(text: &str) -> Option<u64> {
    let at = httpdate::parse_http_date(text).ok()?;
    at.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_round_trip() {
        for (secs, text) in [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_798_761_599, "Thu, 31 Dec 2026 23:59:59 GMT"),
            (4_102_444_799, "Thu, 31 Dec 2099 23:59:59 GMT"),
            (MAX_SECS, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ] {
            assert_eq!(format(secs), text);
            assert_eq!(parse(text), Some(secs), "{text}");
        }
    }

    #[test]
    fn far_future_is_clamped_not_a_panic() {
        assert_eq!(format(u64::MAX), format(MAX_SECS));
        assert_eq!(format(MAX_SECS + 1), format(MAX_SECS));
    }

    #[test]
    fn obsolete_forms_are_accepted() {
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
        assert_eq!(parse(" Sun, 06 Nov 1994 08:49:37 GMT "), Some(784_111_777));
    }

    #[test]
    fn malformed_dates_are_rejected() {
        for text in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Wed, 31 Dec 1969 23:59:59 GMT",
            "Wed, 29 Feb 2001 12:00:00 GMT",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
