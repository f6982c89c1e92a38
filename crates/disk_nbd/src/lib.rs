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
//! order. Each task writes its own reply as soon as it has it, header and
//! payload in one vectored write under the connection's writer lock, so a
//! reply is one system call and its data leaves from the thread (and CPU
//! cache) that just read it. Request buffers of 64 KiB or more come from a
//! bounded pool shared by all connections, so steady-state requests do not
//! allocate; it is emptied when the last client leaves.
//!
//! Memory: before the reader takes a request's payload or starts its work,
//! the request is charged what it will hold until its reply is written (its
//! buffer's capacity as allocated, read-modify-write sectors, its task),
//! against its connection's budget
//! ([`NbdServerOptions::max_in_flight_bytes`], 96 MiB) and then a
//! server-wide cap ([`NbdServerOptions::max_total_in_flight_bytes`],
//! 128 MiB); a reader that cannot get its charge stops reading until
//! replies are written. [`NbdStats`] shows the charge and its peak. A client
//! has [`NbdServerOptions::handshake_timeout`] (30 s) to enter
//! transmission, a connection whose client takes none of its replies for
//! [`NbdServerOptions::stalled_reply_timeout`] (2 min) is closed, and at
//! most [`NbdServerOptions::max_connections`] (64) are served at once.
//! `cargo bench -p petri_tool --bench nbd_memory` measures the peak memory
//! of `petri-tool disk serve-nbd` under such clients (figures in the
//! Guide's performance page).
//!
//! Counters ([`NbdServer::stats`]): connections, requests, errors, the
//! memory charged, and the client's reads as the export saw them: read
//! requests, bytes read and the disk-wait time, the wall time during which
//! at least one read request was outstanding (header received, reply not
//! yet written), whatever the disk below was doing. Each connection logs
//! its own share at debug level when it ends.
//!
//! Reads: read requests that arrive back to back and continue each other
//! (each starts where the previous one ends, no flags) are merged into one
//! disk read of up to [`NbdServerOptions::max_merged_read_bytes`] (1 MiB);
//! only requests already in the reader's buffer are merged, so merging
//! never waits. Every request still gets its own reply (all of them in one
//! vectored write), with exactly its bytes, or an error if the merged read
//! failed. At most [`NbdServerOptions::max_parallel_reads`] disk reads per
//! connection run at once (4), and a read keeps its slot until its reply
//! is written: reads cannot run far ahead of a socket that is slower than
//! the disk, and few buffers are filled but unsent.
//!
//! Sockets: accepted Unix and TCP sockets ask for a 4 MiB send buffer (the
//! kernel caps it at `net.core.wmem_max`), so a 256 KiB or 1 MiB read
//! reply goes out in one system call instead of stalling until the client
//! drains the default ~200 KiB.
//!
//! # Performance
//!
//! What keeps the export cheap per byte: each read request's reply (header
//! and payload) leaves in one vectored write from the task that read it;
//! back-to-back reads are merged into disk reads of up to 1 MiB; at most
//! [`NbdServerOptions::max_parallel_reads`] disk reads per connection run
//! at once; sockets ask for a 4 MiB send buffer; and read buffers come from
//! a pool and are lent to the disk by value (`Disk::read_owned`), so a disk
//! that fills buffers on another thread (the SQLite cache engine, a local
//! file) fills the reply's buffer directly. `cargo bench -p disk_nbd`
//! measures the export alone, `cargo xtask bench` the whole stack against
//! nbdkit; the Guide's performance page has the figures and their history.
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
//!   the requested bytes (never stale buffer contents). A merged read
//!   that fails answers every request in it with the error.
//! - Replies never interleave: each (or each merged group) is written
//!   whole under the connection's writer lock. Once a write fails the
//!   client is gone: later replies are dropped and the reader stops.
//! - A client that stops reading its replies stalls its own connection
//!   (read slots, its budget and the writer lock are per connection) and
//!   holds at most its budget of the server-wide cap, until
//!   [`NbdServerOptions::stalled_reply_timeout`] closes it.
//! - Bytes charged to requests in flight never exceed
//!   [`NbdServerOptions::max_total_in_flight_bytes`], and every request is
//!   charged at least the capacity of the buffer it holds.
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

mod handshake;
mod listener;
mod memory;
mod options;
mod pool;
pub mod protocol;
mod server;
mod stats;
mod transmission;
mod writes;

pub use listener::NbdListener;
pub use listener::serve_unix;
pub use options::BlockSizes;
pub use options::DEFAULT_HANDSHAKE_TIMEOUT;
pub use options::DEFAULT_MAX_CONNECTIONS;
pub use options::DEFAULT_MAX_IN_FLIGHT_BYTES;
pub use options::DEFAULT_MAX_MERGED_READ_BYTES;
pub use options::DEFAULT_MAX_PARALLEL_READS;
pub use options::DEFAULT_MAX_REQUEST_BYTES;
pub use options::DEFAULT_MAX_TOTAL_IN_FLIGHT_BYTES;
pub use options::DEFAULT_SHUTDOWN_GRACE;
pub use options::DEFAULT_STALLED_REPLY_TIMEOUT;
pub use options::NbdServerOptions;
pub use server::NbdError;
pub use server::NbdServer;
pub use stats::NbdStats;
