//! A read trace: every read a client made of a disk, with when it started
//! and ended, as text. `petri-tool disk serve-nbd --trace-reads FILE`
//! writes one; `disk-bench replay` replays it against a stack, so a real
//! boot's disk behaviour (requests, bytes fetched, time spent waiting on
//! the disk) can be measured again without booting, for example under
//! injected latency.
//!
//! Format: a first line `petri-read-trace 1`, then one read per line:
//! `<start µs> <end µs> <offset> <length>`, times in microseconds after the
//! disk was opened, offsets and lengths in bytes, in order of start.

/// The first line of every trace.
pub const TRACE_HEADER: &str = "petri-read-trace 1";

/// One read of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracedRead {
    /// When it started, in microseconds after open.
    pub start_us: u64,
    /// When it ended.
    pub end_us: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Why a trace could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    /// The first line is not [`TRACE_HEADER`].
    #[error("the first line is not `{TRACE_HEADER}`")]
    BadHeader,
    /// A line could not be understood.
    #[error("line {line}: a read is `<start µs> <end µs> <offset> <length>` with end >= start")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
}

/// Writes `reads` (sorted by start here) as a trace.
pub fn write_trace(reads: &[TracedRead]) -> String {
    let mut sorted = reads.to_vec();
    sorted.sort_by_key(|r| (r.start_us, r.end_us));
    let mut s = String::with_capacity(32 + 40 * sorted.len());
    s.push_str(TRACE_HEADER);
    s.push('\n');
    for r in &sorted {
        s.push_str(&format!(
            "{} {} {} {}\n",
            r.start_us, r.end_us, r.offset, r.len
        ));
    }
    s
}

/// Parses a trace; reads come back in order of start.
pub fn parse_trace(text: &str) -> Result<Vec<TracedRead>, TraceError> {
    let mut lines = text.lines().enumerate();
    if lines.next().map(|(_, l)| l.trim()) != Some(TRACE_HEADER) {
        return Err(TraceError::BadHeader);
    }
    let mut reads = Vec::new();
    for (i, l) in lines {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = || TraceError::BadLine { line: i + 1 };
        let n: Vec<u64> = l
            .split_ascii_whitespace()
            .map(|f| f.parse::<u64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let [start_us, end_us, offset, len] = n[..] else {
            return Err(bad());
        };
        if end_us < start_us || len == 0 {
            return Err(bad());
        }
        reads.push(TracedRead {
            start_us,
            end_us,
            offset,
            len,
        });
    }
    reads.sort_by_key(|r| (r.start_us, r.end_us));
    Ok(reads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_sorted() {
        let reads = vec![
            TracedRead {
                start_us: 50,
                end_us: 70,
                offset: 4096,
                len: 512,
            },
            TracedRead {
                start_us: 10,
                end_us: 90,
                offset: 0,
                len: 4096,
            },
        ];
        let text = write_trace(&reads);
        assert!(text.starts_with("petri-read-trace 1\n10 90 0 4096\n"));
        let back = parse_trace(&text).unwrap();
        assert_eq!(back[0], reads[1]);
        assert_eq!(back[1], reads[0]);
        assert_eq!(parse_trace("x\n").unwrap_err(), TraceError::BadHeader);
        assert!(parse_trace("petri-read-trace 1\n5 4 0 1\n").is_err());
        assert!(parse_trace("petri-read-trace 1\n1 2 3\n").is_err());
        assert!(parse_trace("petri-read-trace 1\n1 2 3 0\n").is_err());
    }
}
