//! The HTTP rules that ranged reads of an immutable image depend on, as
//! pure functions over header values (RFC 9110 sections 8.8, 13 and 14):
//! `Range` and `Content-Range`, entity tags and their lists, HTTP dates,
//! and the evaluation order of conditional requests.
//!
//! Position in the data flow: both ends of a remote disk's wire use it.
//! `disk_blob` (the client) parses `Content-Range` and compares the
//! validators of each response with those seen at open; `blob_server` (the
//! store for the main job) and the test servers of `blob_test_servers`
//! decide with it what to answer. Keeping one implementation means the
//! client and the servers it is tested against cannot disagree on the
//! edge cases (numbers too large for `u64`, suffix ranges, several ranges,
//! weak tags, `*`).
//!
//! Model: every function takes header values as `&str` (what
//! `HeaderValue::to_str` gives) and returns plain data; nothing here does
//! I/O or knows about a particular HTTP library. Malformed input is never
//! an error to propagate: each function documents what a malformed value
//! means (a `Range` that is ignored, an `If-Match` that matches nothing, a
//! date that is treated as absent), as the RFC prescribes or allows.
//!
//! Invariants: no function panics on any input; every byte range returned
//! lies inside the representation it was resolved against.

#![forbid(unsafe_code)]

pub mod conditional;
pub mod content_range;
pub mod date;
pub mod etag;
pub mod range;

pub use conditional::Conditions;
pub use conditional::Decision;
pub use conditional::Version;
pub use conditional::decide;
pub use content_range::ContentRange;
pub use etag::EntityTag;
pub use range::RangeSelection;
pub use range::select_range;
