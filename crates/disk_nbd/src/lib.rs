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
//! Measured on the 2-core bench machine (2026-11-27) with a 512 MiB random
//! image served by nginx on loopback, the full stack (RAM over SQLite
//! auto-cache over HTTP blob) exported by `disk-bench serve-nbd`, and
//! `nbdcopy URI null:` as the client (multi-conn: 2 connections, 64
//! requests of 256 KiB in flight on each). The peer is `nbdkit -r curl
//! --filter=readahead --filter=cache cache-on-read=true`; its warm figure
//! is a second pass in the same process, ours a new server process on the
//! same cache. Medians of 5 interleaved rounds; "before" and "after" are
//! this crate before and after the read fast path, built on the same tree.
//! The machine is shared, so single runs vary by ±30%.
//!
//! | run | before | after | nbdkit | before / nbdkit | after / nbdkit |
//! |---|---|---|---|---|---|
//! | 1, warm | 1065 MB/s | 1838 MB/s | 1922 MB/s | 0.55x | 0.96x |
//! | 1, cold | 192 MB/s | 322 MB/s | 484 MB/s | 0.40x | 0.67x |
//! | 2, warm | 1402 MB/s | 2312 MB/s | 3578 MB/s | 0.39x | 0.65x |
//! | 2, cold | 401 MB/s | 491 MB/s | 518 MB/s | 0.77x | 0.95x |
//!
//! (The disk stack below changed between the two runs; in run 1 the old
//! server's 128 concurrent 256 KiB reads made the blob fetch 1070 MiB for
//! the 512 MiB image, the new one fetched 512 MiB.) Server CPU for a warm
//! pass went from 0.37-0.47 s to 0.28 s (0.20-0.23 s on a second pass in
//! the same process); nbdkit needs 0.12 s.
//!
//! With the stack taken out (`cargo bench -p disk_nbd`: an in-memory disk,
//! 256 MiB, `nbdcopy` to `null:`), the export itself now beats `nbdkit
//! file` serving a page-cached file: 2641-2912 MiB/s against 1961-2467
//! MiB/s in the same runs (before: 2274 against 2403).
//!
//! What the profile of the old design showed, and what changed:
//! - Reply header and payload went out as separate system calls through a
//!   `BufWriter` (a 16-byte write, then the payload; with the default
//!   ~200 KiB socket buffer ~2.8 `writev`s per 256 KiB reply and 11k
//!   context switches per pass). Now one vectored write per reply (or per
//!   merged group of replies) and a 4 MiB send buffer: 2050 `writev`s for
//!   2048 replies, measured before merging was added.
//! - Every request ran at once (up to 128 per pass), each read doing a
//!   `block_in_place` hand-off in the SQLite layer and taking its own
//!   SQLite connection (futexes, schema parsing, page-cache fills, ~100 MiB
//!   of page faults). Now at most `max_parallel_reads` (4) per connection,
//!   back-to-back requests merged into 1 MiB reads.
//! - Replies were written by a writer task long after the read filled the
//!   buffer, so the copy into the socket ran about three times slower per
//!   byte than nbdkit's; now the reading task writes its own reply at once.
//!
//! DEVNOTE: what remains of the warm gap is below this crate. It is not
//! the fresh process: a second pass in the same server process is only
//! 4-8% faster than a new one (eight interleaved rounds: 2374 vs 2291
//! MB/s, nbdkit's second pass 3115). Per pass the server uses 252 ms of
//! CPU against nbdkit's 210 ms (`perf record -F 10000 -p` on each
//! server's second pass); both pay the same two copies (file into buffer,
//! buffer into socket: 83 + 60 ms here, 88 + 51 ms there), and the extra
//! ~40 ms is SQLite's B-tree and pager work, the `block_in_place`
//! hand-off of each read and tokio. On two cores shared with the client
//! the pass is CPU-bound, so that shows as ~25% less throughput. Merged
//! reads of 256 KiB instead of 1 MiB, or 1-2 parallel reads per
//! connection instead of 4, made no measurable difference; without the
//! 4 MiB send buffer it was ~20% slower. Cold, the server is CPU-bound
//! on the cache fill (SQLite WAL writes and checkpoints were ~45% of its
//! CPU), which nbdkit's plain cache file does not pay.
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
//! FUTURE: running each read on a blocking-pool thread (`spawn_blocking`
//! plus `Handle::block_on`, slot taken by the reader) instead of a task
//! avoids the SQLite layer's `block_in_place` core hand-off; a prototype
//! cut warm server CPU from 0.23-0.28 s to 0.21-0.26 s per pass (2-7%
//! faster). It needs a way to cancel a reply write stuck on a client that
//! stopped reading (a blocking thread cannot be aborted), so it is not in.
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
