//! An NBD (Network Block Device) server that exports any
//! [`Disk`](disk_backend::Disk).
//!
//! Position in the data flow: this crate sits on top of the disk stack. The
//! QEMU backend of petri and `petri-tool disk serve-nbd` open a stack (RAM
//! diff over auto-cache over blob, or RAM diff over a local file), wrap it in
//! an [`NbdServer`] and hand the socket to QEMU or any other NBD client. The
//! crate knows nothing about layers, caches or HTTP: it only sees a `Disk`.
//!
//! # Model
//!
//! One server exports one disk. Clients connect on a Unix socket
//! ([`serve_unix`], [`NbdServer::listen_unix`]), on loopback TCP
//! ([`NbdServer::listen_tcp`]) or on any stream
//! ([`NbdServer::serve_connection`]); each connection runs on its own task.
//!
//! Handshake: fixed newstyle only. The server sends `NBDMAGIC`, `IHAVEOPT`
//! and the handshake flags `FIXED_NEWSTYLE | NO_ZEROES`, then answers
//! options until the client enters transmission:
//! - `NBD_OPT_EXPORT_NAME`, `NBD_OPT_GO`: enter transmission;
//! - `NBD_OPT_INFO`: describe the export (`NBD_INFO_EXPORT`,
//!   `NBD_INFO_BLOCK_SIZE` always, `NBD_INFO_NAME` and
//!   `NBD_INFO_DESCRIPTION` on request);
//! - `NBD_OPT_LIST`: the one export; `NBD_OPT_ABORT`: acknowledge and close;
//! - everything else, including `NBD_OPT_STRUCTURED_REPLY` and
//!   `NBD_OPT_STARTTLS`: `NBD_REP_ERR_UNSUP`, and haggling goes on.
//!
//! Block sizes (`NBD_INFO_BLOCK_SIZE`): minimum = the disk's sector size
//! (1 with [`NbdServerOptions::byte_granularity`]), preferred = the
//! physical sector size but at least 4096, maximum =
//! [`NbdServerOptions::max_request_bytes`] (32 MiB by default). QEMU honours
//! them and aligns its requests; other clients may still send any
//! alignment and are served correctly.
//!
//! Export names: with [`NbdServerOptions::export_name`] unset, any name
//! reaches the export; with it set, only that name and the empty (default)
//! name do.
//!
//! Transmission: simple replies only. `NBD_CMD_READ`, `WRITE`, `FLUSH`,
//! `TRIM`, `WRITE_ZEROES` and `DISC` are served; the transmission flags are
//! `HAS_FLAGS | SEND_FLUSH | SEND_FUA | CAN_MULTI_CONN`, plus `READ_ONLY`
//! for a read-only export or `SEND_TRIM | SEND_WRITE_ZEROES` for a writable
//! one. `CAN_MULTI_CONN` is safe because every connection goes through the
//! same `Disk` and a flush flushes the whole disk.
//!
//! Concurrency: the connection's reader task reads request headers (and
//! write payloads) in order and spawns one task per request, so many
//! requests are in flight per connection and replies may come back in any
//! order. Replies are serialised through the connection's writer task,
//! which flushes when its queue runs dry, so replies that complete together
//! share a system call. A per-connection byte budget
//! ([`NbdServerOptions::max_in_flight_bytes`]) bounds the memory a client
//! can pin; request buffers come from a bounded pool shared by all
//! connections, so steady-state requests do not allocate.
//!
//! # Example
//!
//! ```no_run
//! # async fn example(disk: disk_backend::Disk) -> Result<(), disk_nbd::NbdError> {
//! let listener = disk_nbd::serve_unix("/tmp/disk.sock", disk, Default::default()).await?;
//! // e.g. `qemu-img info nbd+unix:///?socket=/tmp/disk.sock`
//! println!("serving {}", listener.nbd_uri());
//! // Another task (a signal handler, say) can stop it through a clone of
//! // the server: `server.shutdown()`.
//! let server = listener.server().clone();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     server.shutdown();
//! });
//! // Waits for the shutdown signal, then for the connections to finish.
//! listener.closed().await;
//! println!("counters: {:?}", listener.server().disk().counters());
//! listener.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Invariants
//!
//! - Every request that was read gets exactly one reply (none for
//!   `NBD_CMD_DISC`), also when the connection ends or the server shuts
//!   down: in-flight requests are finished first. The one exception is a
//!   client that stops reading replies during a shutdown: after
//!   [`NbdServerOptions::shutdown_grace`] its connection is dropped.
//! - A read reply carries data only on success, and the data is exactly
//!   the requested bytes (never stale buffer contents).
//! - Errors: an out-of-range or oversized read, an unknown command or an
//!   undocumented flag is `EINVAL`; a write past the end is `ENOSPC`; a
//!   write, trim or write-zeroes on a read-only export is `EPERM`; a disk
//!   I/O failure is `EIO`. A write's payload is always consumed, so the
//!   connection stays usable after an error reply.
//! - Byte-granular requests are correct: reads are widened to whole
//!   sectors, and partial-sector writes are read-modify-write under an
//!   export-wide lock that excludes all other writes for their duration.
//! - Bad magic, unknown client flags or a refused `NBD_OPT_EXPORT_NAME`
//!   close that one connection; the server never panics on client input
//!   and keeps serving the others.
//!
//! FUTURE: structured replies (sparse reads via `NBD_REPLY_TYPE_OFFSET_HOLE`
//! and `base:allocation` block status) would let `qemu-img convert` skip
//! unallocated ranges of a lazily fetched image.
//!
//! FUTURE: TLS (`NBD_OPT_STARTTLS`) and extended headers are refused; the
//! server listens only on Unix sockets and loopback TCP, which is what a
//! local VMM needs.
//!
//! DEVNOTE: a refused option with more than 16 MiB of data, or a request
//! with a bad magic, ends the connection: the stream cannot be resynced.
//!
//! DEVNOTE: `NBD_CMD_WRITE_ZEROES` writes zeroes (from one shared 1 MiB
//! buffer); it never unmaps, because [`disk_backend::DiskIo::unmap`] does
//! not promise that unmapped sectors read as zero. Reads do not take the
//! read-modify-write lock, so a read that overlaps a concurrent unaligned
//! write may see either version of the bytes being written, which the
//! protocol allows for overlapping requests in flight.

#![forbid(unsafe_code)]

pub mod protocol;
mod server;

pub use server::BlockSizes;
pub use server::DEFAULT_MAX_IN_FLIGHT_BYTES;
pub use server::DEFAULT_MAX_MERGED_READ_BYTES;
pub use server::DEFAULT_MAX_PARALLEL_READS;
pub use server::DEFAULT_MAX_REQUEST_BYTES;
pub use server::DEFAULT_SHUTDOWN_GRACE;
pub use server::NbdError;
pub use server::NbdListener;
pub use server::NbdServer;
pub use server::NbdServerOptions;
pub use server::NbdStats;
pub use server::serve_unix;
