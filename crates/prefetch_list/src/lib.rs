//! The prefetch list: which parts of a disk image a boot reads, in the
//! order it first reads them, as a small text file.
//!
//! Position in the data flow: an open remote disk records the chunks its
//! guest touches (`disk_layered`) and, when it closes, writes them as a
//! list beside its cache entry (`disk_open`), merged with earlier runs.
//! Copied next to the image in the store as `<image file name>.prefetch`,
//! the same file is what a cold open on another machine fetches and
//! replays: a background task fetches the listed chunks the cache lacks,
//! ahead of the guest. This crate only parses, writes and merges lists: no
//! I/O.
//!
//! # Format (version 1)
//!
//! UTF-8 text, one item per line, `#` starts a comment line:
//!
//! ```text
//! petri-prefetch 1
//! image vhd1-id:6f1e0c2b9a8d4e7f8a9b0c1d2e3f4a5b
//! size 3758211584
//! chunk 1048576
//! 0 1048576 0
//! 8388608 3145728 12
//! ...
//! ```
//!
//! - `image`: the identity of the image the list was recorded on (the rest
//!   of the line). A list is used only for an image with the same identity:
//!   a fixed VHD1's unique id (`vhd1-id:<hex>`), else the URL's path (never
//!   its query, which may hold a SAS token) and the server's validator.
//! - `size`: the disk's size in bytes; `chunk`: the recording granularity.
//! - Then one range per line, `<offset> <length> <ms>`: byte offset and
//!   length within the disk, and when it was first read, in milliseconds
//!   after the disk was opened. Ranges are in first-read order and do not
//!   overlap.
//!
//! # Invariants
//!
//! - Parsing never trusts the file: sizes are bounded ([`MAX_LIST_BYTES`],
//!   [`MAX_RANGES`]), every range lies inside `size` and is not empty, and
//!   a damaged list is an error ([`ParseError`]), never a panic.
//! - [`PrefetchList::to_text`] output parses back to the same list.
//!
//! The [`trace`] module holds the related, finer record: every read of a
//! session with its start and end times, for replaying a boot offline.

#![forbid(unsafe_code)]

pub mod trace;

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The first line of every list.
pub const HEADER: &str = "petri-prefetch 1";

/// Largest list file that is parsed.
pub const MAX_LIST_BYTES: usize = 16 << 20;

/// Most ranges a list may hold.
pub const MAX_RANGES: usize = 1 << 20;

/// One range of a list: bytes `offset..offset + len`, first read `at_ms`
/// milliseconds after the disk was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchRange {
    /// Byte offset in the disk.
    pub offset: u64,
    /// Length in bytes (not zero).
    pub len: u64,
    /// When it was first read, in milliseconds after open.
    pub at_ms: u64,
}

/// A prefetch list (see the [crate docs](crate) for the format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchList {
    /// The identity of the image the list was recorded on.
    pub identity: String,
    /// The disk's size in bytes.
    pub disk_size: u64,
    /// The recording granularity in bytes (a power of two).
    pub chunk_size: u64,
    /// The ranges, in first-read order.
    pub ranges: Vec<PrefetchRange>,
}

/// Why a list could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The file is larger than [`MAX_LIST_BYTES`].
    #[error("the list is {0} bytes, more than the {MAX_LIST_BYTES} a list may have")]
    TooLarge(usize),
    /// The file is not UTF-8 text.
    #[error("the list is not UTF-8 text")]
    NotText,
    /// The first line is not [`HEADER`].
    #[error("the first line is not `{HEADER}`")]
    BadHeader,
    /// A required line is missing.
    #[error("the `{0}` line is missing")]
    Missing(&'static str),
    /// A line could not be understood.
    #[error("line {line}: {what}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        what: String,
    },
    /// More than [`MAX_RANGES`] ranges.
    #[error("the list has more than {MAX_RANGES} ranges")]
    TooManyRanges,
}

/// Each chunk's first touch: `(ms after open, sequence)`, earliest kept.
struct FirstTouches(BTreeMap<u64, (u64, u64)>);

impl FirstTouches {
    fn new() -> Self {
        FirstTouches(BTreeMap::new())
    }

    fn note(&mut self, chunk: u64, ms: u64, seq: u64) {
        self.0
            .entry(chunk)
            .and_modify(|t| *t = (*t).min((ms, seq)))
            .or_insert((ms, seq));
    }
}

impl PrefetchList {
    /// Parses a list.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        if bytes.len() > MAX_LIST_BYTES {
            return Err(ParseError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotText)?;
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        if lines.next().map(|(_, l)| l) != Some(HEADER) {
            return Err(ParseError::BadHeader);
        }
        let mut identity = None;
        let mut disk_size = None;
        let mut chunk_size = None;
        let mut ranges = Vec::new();
        for (line, l) in lines {
            let bad = |what: &str| ParseError::BadLine {
                line,
                what: what.to_owned(),
            };
            let number = |s: &str, what: &str| s.parse::<u64>().map_err(|_| bad(what));
            if let Some(rest) = l.strip_prefix("image ") {
                identity = Some(rest.trim().to_owned());
            } else if let Some(rest) = l.strip_prefix("size ") {
                disk_size = Some(number(rest.trim(), "the size is not a number")?);
            } else if let Some(rest) = l.strip_prefix("chunk ") {
                let c = number(rest.trim(), "the chunk size is not a number")?;
                if !c.is_power_of_two() {
                    return Err(bad("the chunk size is not a power of two"));
                }
                chunk_size = Some(c);
            } else {
                let size = disk_size.ok_or(ParseError::Missing("size"))?;
                let mut f = l.split_ascii_whitespace();
                let (Some(o), Some(n), Some(t), None) = (f.next(), f.next(), f.next(), f.next())
                else {
                    return Err(bad("a range is `<offset> <length> <ms>`"));
                };
                let offset = number(o, "the offset is not a number")?;
                let len = number(n, "the length is not a number")?;
                let at_ms = number(t, "the time is not a number")?;
                if len == 0 || offset.checked_add(len).is_none_or(|end| end > size) {
                    return Err(bad("the range is empty or past the end of the disk"));
                }
                if ranges.len() == MAX_RANGES {
                    return Err(ParseError::TooManyRanges);
                }
                ranges.push(PrefetchRange { offset, len, at_ms });
            }
        }
        Ok(PrefetchList {
            identity: identity
                .filter(|i| !i.is_empty())
                .ok_or(ParseError::Missing("image"))?,
            disk_size: disk_size.ok_or(ParseError::Missing("size"))?,
            chunk_size: chunk_size.ok_or(ParseError::Missing("chunk"))?,
            ranges,
        })
    }

    /// The list as text (see the [crate docs](crate)).
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(64 + self.ranges.len() * 24);
        let _ = writeln!(s, "{HEADER}");
        let _ = writeln!(s, "image {}", self.identity);
        let _ = writeln!(s, "size {}", self.disk_size);
        let _ = writeln!(s, "chunk {}", self.chunk_size);
        for r in &self.ranges {
            let _ = writeln!(s, "{} {} {}", r.offset, r.len, r.at_ms);
        }
        s
    }

    /// A list from touches `(chunk index, ms after open)` in the order
    /// they happened (times may tie: the order breaks ties); chunks are
    /// `chunk_size` bytes (the last one clipped to `disk_size`).
    pub fn from_touches(
        identity: &str,
        disk_size: u64,
        chunk_size: u64,
        touches: impl IntoIterator<Item = (u64, u64)>,
    ) -> Self {
        let mut first = FirstTouches::new();
        for (seq, (chunk, ms)) in touches.into_iter().enumerate() {
            if chunk.saturating_mul(chunk_size) < disk_size {
                first.note(chunk, ms, seq as u64);
            }
        }
        Self::from_first(identity, disk_size, chunk_size, first)
    }

    fn from_first(identity: &str, disk_size: u64, chunk_size: u64, first: FirstTouches) -> Self {
        let mut order: Vec<(u64, u64, u64)> = first
            .0
            .into_iter()
            .map(|(c, (t, seq))| (t, seq, c))
            .collect();
        order.sort_unstable();
        let mut ranges: Vec<PrefetchRange> = Vec::new();
        for (at_ms, _, chunk) in order {
            let offset = chunk * chunk_size;
            let len = chunk_size.min(disk_size - offset);
            match ranges.last_mut() {
                // The next chunk in order is also the next on disk: one
                // range (fetched as one request).
                Some(last) if last.offset + last.len == offset => last.len += len,
                _ => ranges.push(PrefetchRange { offset, len, at_ms }),
            }
        }
        PrefetchList {
            identity: identity.to_owned(),
            disk_size,
            chunk_size,
            ranges,
        }
    }

    /// The chunks (of this list's chunk size) each range touches, with
    /// when they were first read; `seq_base` orders ties after another
    /// list's.
    fn first_touches(&self, into: &mut FirstTouches, seq_base: u64) {
        let mut seq = seq_base;
        for r in &self.ranges {
            let from = r.offset / self.chunk_size;
            let to = (r.offset + r.len).div_ceil(self.chunk_size);
            for c in from..to {
                into.note(c, r.at_ms, seq);
                seq += 1;
            }
        }
    }

    /// This list merged with `other`, a list of the same image: every chunk
    /// either read, at the earlier of its two first-read times. `None` if
    /// `other` is of another image (identity or size).
    pub fn merge(&self, other: &PrefetchList) -> Option<PrefetchList> {
        if other.identity != self.identity || other.disk_size != self.disk_size {
            return None;
        }
        let mut first = FirstTouches::new();
        self.first_touches(&mut first, 0);
        // Re-cut the other list at this list's chunk size; on equal times
        // this list's chunks come first.
        let other = PrefetchList {
            chunk_size: self.chunk_size,
            ..other.clone()
        };
        other.first_touches(&mut first, u64::MAX / 2);
        Some(Self::from_first(
            &self.identity,
            self.disk_size,
            self.chunk_size,
            first,
        ))
    }

    /// Total bytes the list names.
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand::SeedableRng;

    const MIB: u64 = 1 << 20;

    #[test]
    fn touches_become_ordered_merged_ranges_and_round_trip() {
        // Chunks 8, 9, 10 read in a row, then 0, then 3.
        let l = PrefetchList::from_touches(
            "vhd1-id:00",
            16 * MIB + 100,
            MIB,
            [(8, 5), (9, 6), (0, 20), (10, 7), (3, 40), (9, 90), (16, 50)],
        );
        assert_eq!(
            l.ranges,
            vec![
                PrefetchRange {
                    offset: 8 * MIB,
                    len: 3 * MIB,
                    at_ms: 5
                },
                PrefetchRange {
                    offset: 0,
                    len: MIB,
                    at_ms: 20
                },
                PrefetchRange {
                    offset: 3 * MIB,
                    len: MIB,
                    at_ms: 40
                },
                // The last chunk is clipped to the disk.
                PrefetchRange {
                    offset: 16 * MIB,
                    len: 100,
                    at_ms: 50
                },
            ]
        );
        let text = l.to_text();
        assert_eq!(PrefetchList::parse(text.as_bytes()).unwrap(), l);
        assert_eq!(l.total_bytes(), 5 * MIB + 100);
    }

    #[test]
    fn merging_keeps_the_earliest_time_of_every_chunk() {
        let a = PrefetchList::from_touches("flat:/a;etag:\"1\"", 8 * MIB, MIB, [(0, 10), (1, 20)]);
        let b = PrefetchList::from_touches("flat:/a;etag:\"1\"", 8 * MIB, MIB, [(5, 0), (1, 15)]);
        let m = a.merge(&b).unwrap();
        // Chunk 1 is now first read at 15 ms, still right after chunk 0
        // (10 ms), so the two stay one range (which carries its first
        // chunk's time).
        assert_eq!(
            m.ranges,
            vec![
                PrefetchRange {
                    offset: 5 * MIB,
                    len: MIB,
                    at_ms: 0
                },
                PrefetchRange {
                    offset: 0,
                    len: 2 * MIB,
                    at_ms: 10
                },
            ]
        );
        let other = PrefetchList::from_touches("flat:/a;etag:\"2\"", 8 * MIB, MIB, [(5, 0)]);
        assert!(a.merge(&other).is_none(), "another version of the image");
    }

    #[test]
    fn equal_times_keep_the_order_of_the_touches() {
        let l = PrefetchList::from_touches("x", 64 * MIB, MIB, [(9, 0), (2, 0), (3, 0), (1, 0)]);
        let starts: Vec<u64> = l.ranges.iter().map(|r| r.offset / MIB).collect();
        assert_eq!(starts, vec![9, 2, 1]);
        assert_eq!(l.ranges[1].len, 2 * MIB, "2 and 3 follow each other");
    }

    #[test]
    fn damaged_lists_are_errors() {
        let good = "petri-prefetch 1\nimage x\nsize 100\nchunk 64\n0 50 1\n";
        assert!(PrefetchList::parse(good.as_bytes()).is_ok());
        for (bad, want) in [
            ("", ParseError::BadHeader),
            ("petri-prefetch 2\n", ParseError::BadHeader),
            (
                "petri-prefetch 1\nsize 100\nchunk 64\n",
                ParseError::Missing("image"),
            ),
            (
                "petri-prefetch 1\nimage x\nchunk 64\n0 1 1\n",
                ParseError::Missing("size"),
            ),
        ] {
            assert_eq!(
                PrefetchList::parse(bad.as_bytes()).unwrap_err(),
                want,
                "{bad:?}"
            );
        }
        for bad in [
            "petri-prefetch 1\nimage x\nsize 100\nchunk 64\n90 20 1\n",
            "petri-prefetch 1\nimage x\nsize 100\nchunk 64\n0 0 1\n",
            "petri-prefetch 1\nimage x\nsize 100\nchunk 64\n18446744073709551615 2 1\n",
            "petri-prefetch 1\nimage x\nsize 100\nchunk 63\n",
            "petri-prefetch 1\nimage x\nsize 100\nchunk 64\n1 2\n",
            "petri-prefetch 1\nimage x\nsize 100\nchunk 64\n1 2 3 4\n",
            "petri-prefetch 1\nimage x\nsize -1\n",
        ] {
            assert!(
                matches!(
                    PrefetchList::parse(bad.as_bytes()),
                    Err(ParseError::BadLine { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            PrefetchList::parse(&[0xff, 0xfe]).unwrap_err(),
            ParseError::NotText
        );
        let huge = vec![b'#'; MAX_LIST_BYTES + 1];
        assert!(matches!(
            PrefetchList::parse(&huge),
            Err(ParseError::TooLarge(_))
        ));
    }

    /// Arbitrary bytes (and mutations of a good list) never panic.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let good = PrefetchList::from_touches(
            "vhd1-id:ab",
            64 * MIB,
            MIB,
            (0..64).map(|c| (c * 7 % 64, c)),
        )
        .to_text()
        .into_bytes();
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            let _ = PrefetchList::parse(&b);
            let n = rng.random_range(0..200);
            let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            let _ = PrefetchList::parse(&junk);
        }
    }
}
