//! Request path to file path: percent-decoding and the segment rules
//! that keep every request inside the root. (The conditional-request and
//! range rules are `http_ranges::decide`.)

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
