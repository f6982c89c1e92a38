//! Entity tags (RFC 9110 section 8.8.3) and the lists `If-Match` and
//! `If-None-Match` carry (section 13.1.1, 13.1.2).

/// One entity tag: `"opaque"` (strong) or `W/"opaque"` (weak).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityTag<'a> {
    /// Whether the tag carries the `W/` prefix.
    pub weak: bool,
    /// The characters between the quotes.
    pub opaque: &'a str,
}

impl<'a> EntityTag<'a> {
    /// Parses exactly one entity tag (surrounding whitespace allowed).
    /// `None` unless it is `"..."` or `W/"..."` with only `etagc`
    /// characters (visible ASCII but `"`, or non-ASCII) inside; the `W/` is
    /// case-sensitive.
    pub fn parse(value: &'a str) -> Option<EntityTag<'a>> {
        let (tag, rest) = Self::parse_prefix(value.trim_matches(is_ows))?;
        rest.is_empty().then_some(tag)
    }

    /// Parses an entity tag at the start of `value`; returns it and what
    /// follows it.
    fn parse_prefix(value: &'a str) -> Option<(EntityTag<'a>, &'a str)> {
        let (weak, quoted) = match value.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let inner = quoted.strip_prefix('"')?;
        let close = inner.find('"')?;
        let opaque = &inner[..close];
        if !opaque.chars().all(is_etagc) {
            return None;
        }
        Some((EntityTag { weak, opaque }, &inner[close + 1..]))
    }

    /// Strong comparison: both tags strong and their opaque parts equal.
    pub fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison: opaque parts equal, whatever the weakness.
    pub fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// Whether two `ETag` header values name the same version under the weak
/// comparison. A value that is not a well-formed entity tag (some servers
/// send them unquoted) is compared as an opaque string, so an unchanged
/// value is always the same version.
pub fn same_version(a: &str, b: &str) -> bool {
    match (EntityTag::parse(a), EntityTag::parse(b)) {
        (Some(a), Some(b)) => a.weak_eq(&b),
        _ => a.trim() == b.trim(),
    }
}

/// The tags of an `If-Match`/`If-None-Match` value: `*` or a
/// comma-separated list of entity tags (commas inside quotes belong to the
/// tag; empty list elements are skipped). `None` if it is malformed.
fn tag_list(value: &str) -> Option<TagList<'_>> {
    let value = value.trim_matches(is_ows);
    if value == "*" {
        return Some(TagList::Any);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c| is_ows(c) || c == ',');
        if rest.is_empty() {
            break;
        }
        let (tag, after) = EntityTag::parse_prefix(rest)?;
        tags.push(tag);
        let after = after.trim_start_matches(is_ows);
        if !after.is_empty() && !after.starts_with(',') {
            return None;
        }
        rest = after;
    }
    if tags.is_empty() {
        return None;
    }
    Some(TagList::Tags(tags))
}

enum TagList<'a> {
    Any,
    Tags(Vec<EntityTag<'a>>),
}

/// Whether an `If-Match` value lets a request on a representation whose
/// `ETag` is `current` proceed: `*`, or a tag in the list equal to
/// `current` under the strong comparison (a weak tag never matches). A
/// malformed value, or a `current` that is not an entity tag, matches
/// nothing.
pub fn if_match(value: &str, current: &str) -> bool {
    list_names(value, current, |a, b| a.strong_eq(b))
}

/// Whether an `If-None-Match` value names the representation whose `ETag`
/// is `current` (then a GET gets `304`): `*`, or a tag in the list equal
/// to `current` under the weak comparison. A malformed value names
/// nothing.
pub fn if_none_match(value: &str, current: &str) -> bool {
    list_names(value, current, |a, b| a.weak_eq(b))
}

/// Whether a tag list names `current` under the comparison `eq`.
fn list_names(value: &str, current: &str, eq: fn(&EntityTag<'_>, &EntityTag<'_>) -> bool) -> bool {
    let Some(current) = EntityTag::parse(current) else {
        return false;
    };
    match tag_list(value) {
        Some(TagList::Any) => true,
        Some(TagList::Tags(tags)) => tags.iter().any(|t| eq(t, &current)),
        None => false,
    }
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `etagc = %x21 / %x23-7E / obs-text`.
fn is_etagc(c: char) -> bool {
    c == '\x21' || ('\x23'..='\x7e').contains(&c) || !c.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(
            EntityTag::parse("\"abc\""),
            Some(EntityTag {
                weak: false,
                opaque: "abc"
            })
        );
        assert_eq!(
            EntityTag::parse(" W/\"a,b\" "),
            Some(EntityTag {
                weak: true,
                opaque: "a,b"
            })
        );
        assert_eq!(
            EntityTag::parse("\"\""),
            Some(EntityTag {
                weak: false,
                opaque: ""
            })
        );
        for bad in [
            "abc",
            "\"abc",
            "w/\"abc\"",
            "W/abc",
            "\"a\"b",
            "\"a b\"",
            "\"a\" \"b\"",
            "*",
            "",
        ] {
            assert_eq!(EntityTag::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn strong_and_weak_comparison() {
        // The table of RFC 9110 section 8.8.3.2.
        let t = |s| EntityTag::parse(s).unwrap();
        let rows = [
            ("W/\"1\"", "W/\"1\"", false, true),
            ("W/\"1\"", "W/\"2\"", false, false),
            ("W/\"1\"", "\"1\"", false, true),
            ("\"1\"", "\"1\"", true, true),
        ];
        for (a, b, strong, weak) in rows {
            assert_eq!(t(a).strong_eq(&t(b)), strong, "{a} {b}");
            assert_eq!(t(a).weak_eq(&t(b)), weak, "{a} {b}");
            assert_eq!(same_version(a, b), weak, "{a} {b}");
        }
    }

    #[test]
    fn same_version_tolerates_unquoted_tags() {
        assert!(same_version("abc", " abc"));
        assert!(!same_version("abc", "abd"));
        assert!(!same_version("abc", "\"abc\""));
    }

    #[test]
    fn if_match_lists() {
        let current = "\"b\"";
        assert!(if_match("\"b\"", current));
        assert!(if_match("\"a\", \"b\"", current));
        assert!(if_match("\"a\",\t\"b\"", current));
        assert!(if_match(", \"a\",, \"b\" ,", current));
        assert!(if_match("*", current));
        assert!(if_match(" * ", current));
        // Strong comparison: a weak tag never matches.
        assert!(!if_match("W/\"b\"", current));
        assert!(!if_match("\"b\"", "W/\"b\""));
        assert!(!if_match("*", "not a tag"));
        assert!(!if_match("\"c\"", current));
        // Malformed lists match nothing.
        for bad in ["", "garbage", "\"b", "\"a\" \"b\"", "\"a\", *", "b"] {
            assert!(!if_match(bad, current), "{bad:?}");
        }
        // A comma inside a tag belongs to the tag.
        assert!(if_match("\"x\", \"a,b\"", "\"a,b\""));
        assert!(!if_match("\"a\", \"b\"", "\"a,b\""));
    }

    #[test]
    fn if_none_match_lists() {
        let current = "\"b\"";
        assert!(if_none_match("W/\"b\"", current));
        assert!(if_none_match("\"a\", W/\"b\"", current));
        assert!(if_none_match("\"b\"", "W/\"b\""));
        assert!(if_none_match("*", current));
        assert!(!if_none_match("\"c\"", current));
        assert!(!if_none_match("garbage", current));
        assert!(!if_none_match("\"a\", *", current));
    }
}
