//! Errors as a test sees them.

/// An error and its whole source chain on one line, `: `-separated, as a
/// user would read it.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

/// Every rendering of an error and of each of its sources (`Display` and
/// `Debug`), `|`-separated: what a "no secret in any error" check searches,
/// since a secret could hide in a field only `Debug` shows.
pub fn error_renderings(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = format!("{err} | {err:?}");
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(&format!(" | {e} | {e:?}"));
        cur = e.source();
    }
    s
}
