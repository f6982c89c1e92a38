//! Real servers and fixtures for the tests of the blob and disk crates.
//!
//! This is test support: crates' tests list it under `[dev-dependencies]`
//! to talk to real HTTP(S) servers on 127.0.0.1 instead of mocks; the only
//! normal dependent is xtask, whose `bench` serves its images through
//! nginx and the latency server (product crates never depend on it:
//! ARCHITECTURE.md's dependency rules, checked by `cargo xtask lint`).
//! Position in the data flow: it
//! stands where the blob store (Azure blob container, any HTTP server)
//! stands in production, underneath `disk_blob::HttpBlob`.
//!
//! What it provides:
//! - [`FaultServer`]: an in-process hyper 1 server (HTTP/1.1 and HTTP/2,
//!   optionally TLS with a runtime-made CA, see [`TestCa`]) serving
//!   in-memory or file-backed blobs with Range, HEAD, ETag, Last-Modified,
//!   If-Match, If-Range and keep-alive; counters and a request log;
//!   injectable [`Fault`]s settable at runtime; and a simulated latency per
//!   request and per new connection.
//! - [`NginxServer`]: a real nginx child process with its own config, as a
//!   static file server or a caching reverse proxy (slice module).
//! - [`require_tool`]: the workspace rule for tests that need an external
//!   program (fail under `CI=true`, skip with a message otherwise).
//! - [`images`]: deterministic random images (flat and fixed VHD1) and
//!   SHA-256 helpers.
//! - [`Tmpfs`] and [`ReadOnlyFile`]: small real file systems that fill up
//!   or are read-only, for the caches' tests (root only; same skip/fail
//!   rule as tools).
//! - [`captured_logs`]: every log line of the test process, to count
//!   warnings; [`error_chain`]: an error and its sources on one line.
//! - [`remote_stack`]: the disk stack description of a remote image.
//! - [`sparse_images`]: a raw image with data, holes and zero regions,
//!   and the `qemu-img` conversions of it (VHDX, dynamic VHD, qcow2) that
//!   the sparse-format tests and benchmarks read.
//!
//! Invariants: servers listen on 127.0.0.1 only, on a free port chosen at
//! start; every server stops when dropped. No function here synchronises
//! with sleeps: readiness is a bounded poll-connect loop, and sleeps only
//! *inject* latency or slowness.
//!
//! Known limits:
//! - FUTURE: requests for several separate ranges (`bytes=0-1,5-6`) are
//!   answered with the whole blob (allowed by RFC 9110) rather than
//!   `multipart/byteranges`.
//! - DEVNOTE: the request log keeps the full query string (tests assert on
//!   SAS-like tokens); it is test data and is never printed by this crate.
//! - DEVNOTE: [`NginxServer`] access log lines are written by nginx just
//!   after a response; use [`NginxServer::request_count`] (stub_status,
//!   counted on arrival) or [`NginxServer::wait_for_log`] instead of reading
//!   the log immediately after a response.

#![forbid(unsafe_code)]

mod errors;
mod fault_server;
pub mod images;
mod logs;
mod mounts;
mod nginx;
pub mod sparse_images;
mod stacks;
mod tls;
mod tools;

pub use errors::error_chain;
pub use errors::error_renderings;
pub use fault_server::Fault;
pub use fault_server::FaultRule;
pub use fault_server::FaultServer;
pub use fault_server::FaultServerBuilder;
pub use fault_server::RequestRecord;
pub use fault_server::Times;
pub use logs::CapturedLogs;
pub use logs::captured_logs;
pub use mounts::ReadOnlyFile;
pub use mounts::Tmpfs;
pub use nginx::NginxConfig;
pub use nginx::NginxLogEntry;
pub use nginx::NginxServer;
pub use stacks::remote_stack;
pub use tls::TestCa;
pub use tools::find_tool;
pub use tools::in_ci;
pub use tools::install_hint;
pub use tools::require_tool;
