//! The transmission phase of one connection: reading requests, running
//! them as tasks within the connection's budget and read slots, and
//! writing their replies.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use disk_backend::DiskError;
use tokio::io::AsyncBufRead;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::io::BufWriter;
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::memory::Charge;
use crate::memory::MAX_MERGED_PARTS;
use crate::memory::TASK_FUTURE_BYTES;
use crate::memory::bufferless_cost;
use crate::memory::charge;
use crate::memory::connection_budget;
use crate::memory::partial_sector_bytes;
use crate::memory::read_cost;
use crate::memory::write_cost;
use crate::pool::PooledBuf;
use crate::protocol::*;
use crate::server::Export;
use crate::server::NbdError;
use crate::server::drain;
use crate::server::shutdown_signalled;
use crate::stats::ReadWait;

/// State of one connection in transmission, shared by its request tasks.
struct Conn {
    export: Arc<Export>,
    /// The connection's sending half. Each request task writes its own
    /// reply (header and payload in one vectored write) as soon as it has
    /// it, under this lock, so a reply is never interleaved with another
    /// and the data goes out from the thread that just read it, while it
    /// is still in the CPU cache.
    writer: tokio::sync::Mutex<ReplyStream>,
    /// Set once writing a reply failed (the client is gone): later replies
    /// are dropped and the reader stops.
    write_failed: std::sync::atomic::AtomicBool,
    /// The first write error, for the connection's result.
    write_error: parking_lot::Mutex<Option<io::Error>>,
    /// Wakes the reader when a write failed.
    write_failed_notify: tokio::sync::Notify,
    /// What this connection's requests in flight may hold
    /// ([`NbdServerOptions::max_in_flight_bytes`]).
    budget: Arc<Semaphore>,
    /// [`NbdServerOptions::max_parallel_reads`] slots.
    read_slots: Semaphore,
    /// This connection's share of the read counters, logged when it ends.
    read_requests: AtomicU64,
    bytes_read: AtomicU64,
    read_wait: ReadWait,
}

/// The sending half of a connection, type-erased so that [`Conn`] is not
/// generic.
type ReplyStream = Box<dyn AsyncWrite + Unpin + Send>;

enum Flow {
    Continue,
    Disconnect,
}

pub(crate) async fn transmission<R, W>(
    export: Arc<Export>,
    mut reader: BufReader<R>,
    writer: BufWriter<W>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // The handshake flushed everything it wrote; replies bypass the
    // buffer and go out with vectored writes.
    let writer: ReplyStream = Box::new(writer.into_inner());
    let conn = Arc::new(Conn {
        budget: connection_budget(export.connection_budget),
        read_slots: Semaphore::new(export.max_parallel_reads),
        export,
        writer: tokio::sync::Mutex::new(writer),
        write_failed: Default::default(),
        write_error: Default::default(),
        write_failed_notify: Default::default(),
        read_requests: Default::default(),
        bytes_read: Default::default(),
        read_wait: Default::default(),
    });
    let mut tasks = JoinSet::new();
    let mut header = [0u8; REQUEST_HEADER_LEN];
    let mut result = 'conn: loop {
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                break 'conn Err(NbdError::TaskFailed(e.to_string()));
            }
        }
        // The whole step (header, budget, payload) gives way to shutdown,
        // so a client that stalls mid-request cannot hold the server up.
        // A reply that could not be written (the client is gone) ends the
        // reading too.
        let step = tokio::select! {
            biased;
            _ = shutdown_signalled(&mut shutdown) => break Ok(()),
            _ = conn.write_failed_notify.notified() => break Ok(()),
            r = conn.next_request(&mut reader, &mut header, &mut tasks) => r,
        };
        match step {
            Ok(Flow::Continue) => {}
            Ok(Flow::Disconnect) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(reader);

    // Finish what is in flight, so every request read gets its reply. A
    // client that stops reading replies can block that forever; once the
    // server shuts down it gets `shutdown_grace`, then the work is dropped.
    let grace = conn.export.shutdown_grace;
    let finish = async {
        let mut r = Ok(());
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done
                && r.is_ok()
            {
                r = Err(NbdError::TaskFailed(e.to_string()));
            }
        }
        if !conn.write_failed.load(Ordering::Acquire) {
            // The client may already be gone; the connection ends anyway.
            let _ = conn.writer.lock().await.shutdown().await;
        }
        r
    };
    let finished = tokio::select! {
        r = finish => {
            if result.is_ok() {
                result = r;
            }
            true
        }
        _ = async {
            shutdown_signalled(&mut shutdown).await;
            tokio::time::sleep(grace).await;
        } => false,
    };
    if !finished {
        tracing::info!("NBD client did not take its replies within the shutdown grace period");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    if result.is_ok()
        && let Some(e) = conn.write_error.lock().take()
    {
        result = Err(e.into());
    }
    tracing::debug!(
        read_requests = conn.read_requests.load(Ordering::Relaxed),
        bytes_read = conn.bytes_read.load(Ordering::Relaxed),
        read_wait = ?conn.read_wait.total(),
        "NBD connection's reads"
    );
    match result {
        Err(NbdError::Io(e)) if is_disconnect(&e) => Ok(()),
        r => r,
    }
}

/// Writes every byte of `slices`, as few system calls as the stream
/// allows. Fails with `TimedOut` if the stream takes nothing for `stall`.
async fn write_all_vectored<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    mut slices: &mut [io::IoSlice<'_>],
    stall: Duration,
) -> io::Result<()> {
    while !slices.is_empty() {
        let n = tokio::time::timeout(stall, w.write_vectored(slices))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Maps a disk error to an NBD error value.
fn errno(e: &DiskError, writing: bool) -> u32 {
    match e {
        DiskError::OutOfRange { .. } if writing => ENOSPC,
        DiskError::OutOfRange { .. } => EINVAL,
        DiskError::ReadOnly => EPERM,
        DiskError::InvalidArgument(_) => EINVAL,
        DiskError::Io { .. } => EIO,
    }
}

impl Conn {
    /// Writes one simple reply (header, then `data` for a successful read)
    /// with one vectored write under the writer lock. If the client is
    /// gone the reply is dropped and the reader is told to stop.
    async fn reply(&self, cookie: u64, error: u32, data: &[u8]) {
        if error != 0 {
            self.export
                .stats
                .error_replies
                .fetch_add(1, Ordering::Relaxed);
        }
        let header = encode_simple_reply(error, cookie);
        let mut slices = [io::IoSlice::new(&header), io::IoSlice::new(data)];
        self.write_reply_slices(&mut slices).await;
    }

    /// Writes whole replies under the writer lock, with as few system
    /// calls as the socket allows. If the client is gone the replies are
    /// dropped and the reader is told to stop.
    async fn write_reply_slices(&self, slices: &mut [io::IoSlice<'_>]) {
        let mut w = self.writer.lock().await;
        if self.write_failed.load(Ordering::Acquire) {
            return;
        }
        let stall = self.export.stalled_reply_timeout;
        let mut res = write_all_vectored(&mut *w, slices, stall).await;
        if res.is_ok() {
            // A no-op on sockets; other streams may buffer.
            res = w.flush().await;
        }
        if let Err(e) = res {
            if e.kind() == io::ErrorKind::TimedOut {
                // The client stopped taking replies: close the connection
                // so what its requests hold goes back to the server.
                self.export
                    .stats
                    .timed_out_connections
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "NBD client took none of its replies for {stall:?}; closing the connection"
                );
            }
            self.write_failed.store(true, Ordering::Release);
            self.write_error.lock().get_or_insert(e);
            self.write_failed_notify.notify_one();
        }
    }

    /// Answers an error from the reader without waiting for the writer:
    /// the reply is written by a task of its own. It takes a unit of the
    /// in-flight budget like any request, so a client that sends bad
    /// requests without reading the replies cannot queue them without
    /// bound.
    async fn reply_now(
        self: &Arc<Self>,
        cookie: u64,
        error: u32,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), NbdError> {
        let permit = self.acquire(bufferless_cost(0)).await?;
        let conn = self.clone();
        spawn_request(tasks, async move {
            conn.reply(cookie, error, &[]).await;
            drop(permit);
        });
        Ok(())
    }

    /// Charges a request `bytes` (see [`crate::memory`]), waiting until
    /// the connection's budget and the server-wide cap have room.
    async fn acquire(&self, bytes: u64) -> Result<Charge, NbdError> {
        charge(&self.budget, &self.export.memory, bytes)
            .await
            .map_err(|_| NbdError::TaskFailed("request budget closed".into()))
    }

    /// Reads the next request header and dispatches it.
    async fn next_request<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        reader: &mut BufReader<R>,
        header: &mut [u8; REQUEST_HEADER_LEN],
        tasks: &mut JoinSet<()>,
    ) -> Result<Flow, NbdError> {
        match reader.read_exact(header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Flow::Disconnect),
            Err(e) => return Err(e.into()),
        }
        let Some(req) = RequestHeader::decode(header) else {
            return Err(NbdError::Protocol("bad request magic".into()));
        };
        self.dispatch(req, reader, tasks).await
    }

    /// Handles one request header: validates it, consumes its payload and
    /// either answers an error at once or spawns the work.
    async fn dispatch<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        req: RequestHeader,
        reader: &mut BufReader<R>,
        tasks: &mut JoinSet<()>,
    ) -> Result<Flow, NbdError> {
        let export = &self.export;
        export.stats.requests.fetch_add(1, Ordering::Relaxed);
        let len = u64::from(req.length);
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let allowed_flags = match req.command {
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            _ => CMD_FLAG_FUA,
        };
        let bad_flags = req.flags & !allowed_flags != 0;
        let max = u64::from(export.block_sizes.maximum);

        match req.command {
            CMD_DISC => Ok(Flow::Disconnect),
            CMD_READ => {
                let error = if bad_flags || len > max || !export.in_range(req.offset, len) {
                    EINVAL
                } else {
                    0
                };
                if error != 0 {
                    self.reply_now(req.cookie, error, tasks).await?;
                    return Ok(Flow::Continue);
                }
                // The client waits for this read from now on.
                let mut outstanding = ReadsOutstanding::begin(self, 1);
                let mut parts = vec![ReadPart {
                    cookie: req.cookie,
                    len: req.length,
                }];
                let total = self.merge_reads(req.offset + len, &mut parts, reader);
                outstanding.add(parts.len() as u64 - 1);
                let (start, end) = export.widen_to_sectors(req.offset, total);
                let permit = self.acquire(read_cost(end - start, parts.len())).await?;
                let conn = self.clone();
                spawn_request(tasks, async move {
                    conn.do_read(req.offset, total, parts, permit, outstanding)
                        .await;
                });
                Ok(Flow::Continue)
            }
            CMD_WRITE => {
                let error = if bad_flags || len > max {
                    EINVAL
                } else if export.read_only {
                    EPERM
                } else if !export.in_range(req.offset, len) {
                    ENOSPC
                } else {
                    0
                };
                if error != 0 {
                    // The payload follows the header whatever we think of
                    // the request; skip it to stay in step.
                    drain(reader, len).await?;
                    self.reply_now(req.cookie, error, tasks).await?;
                    return Ok(Flow::Continue);
                }
                let cost = write_cost(req.offset, len, export.sector_size);
                let permit = self.acquire(cost).await?;
                let mut buf = self.export.pool.get(req.length as usize);
                reader.read_exact(&mut buf).await?;
                let conn = self.clone();
                spawn_request(tasks, async move {
                    let res = conn.export.write_bytes(req.offset, &buf, fua).await;
                    conn.export.pool.put(buf);
                    let error = match res {
                        Ok(()) => {
                            conn.export
                                .stats
                                .bytes_written
                                .fetch_add(len, Ordering::Relaxed);
                            0
                        }
                        Err(e) => log_disk_error(&e, "write", true),
                    };
                    conn.reply(req.cookie, error, &[]).await;
                    drop(permit);
                });
                Ok(Flow::Continue)
            }
            CMD_FLUSH => {
                if bad_flags {
                    self.reply_now(req.cookie, EINVAL, tasks).await?;
                    return Ok(Flow::Continue);
                }
                let permit = self.acquire(bufferless_cost(0)).await?;
                let conn = self.clone();
                spawn_request(tasks, async move {
                    let error = match conn.export.disk.sync_cache().await {
                        Ok(()) => 0,
                        Err(e) => log_disk_error(&e, "flush", true),
                    };
                    conn.reply(req.cookie, error, &[]).await;
                    drop(permit);
                });
                Ok(Flow::Continue)
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                let zero = req.command == CMD_WRITE_ZEROES;
                let error = if bad_flags {
                    EINVAL
                } else if export.read_only {
                    EPERM
                } else if !export.in_range(req.offset, len) {
                    if zero { ENOSPC } else { EINVAL }
                } else {
                    0
                };
                if error != 0 {
                    self.reply_now(req.cookie, error, tasks).await?;
                    return Ok(Flow::Continue);
                }
                let rmw = if zero {
                    partial_sector_bytes(req.offset, len, export.sector_size)
                } else {
                    0
                };
                let permit = self.acquire(bufferless_cost(rmw)).await?;
                let conn = self.clone();
                spawn_request(tasks, async move {
                    let res = if zero {
                        conn.export.write_zeroes(req.offset, len, fua).await
                    } else {
                        conn.export.trim(req.offset, len, fua).await
                    };
                    let error = match res {
                        Ok(()) => 0,
                        Err(e) => {
                            log_disk_error(&e, if zero { "write zeroes" } else { "trim" }, true)
                        }
                    };
                    conn.reply(req.cookie, error, &[]).await;
                    drop(permit);
                });
                Ok(Flow::Continue)
            }
            _ => {
                // Unknown commands (and NBD_CMD_CACHE/BLOCK_STATUS, which
                // are not negotiated) carry no payload without extended
                // headers, so the stream stays in step.
                self.reply_now(req.cookie, EINVAL, tasks).await?;
                Ok(Flow::Continue)
            }
        }
    }

    /// Takes the read requests that follow at once in the reader's buffer
    /// and continue the one just read (same command, no flags, starting
    /// where the previous one ends, valid on their own), up to
    /// [`NbdServerOptions::max_merged_read_bytes`] bytes in all and not past
    /// a multiple of it, and at most [`MAX_MERGED_PARTS`] requests, and
    /// adds them to `parts`. Never waits for more input. Returns the merged
    /// length in bytes.
    fn merge_reads<R: AsyncRead + Unpin>(
        &self,
        mut end: u64,
        parts: &mut Vec<ReadPart>,
        reader: &mut BufReader<R>,
    ) -> u64 {
        let export = &self.export;
        let max = u64::from(export.block_sizes.maximum);
        let mut total: u64 = parts.iter().map(|p| u64::from(p.len)).sum();
        let limit = export.max_merged_read;
        while let Some(head) = reader.buffer().first_chunk::<REQUEST_HEADER_LEN>() {
            let Some(next) = RequestHeader::decode(head) else {
                break;
            };
            let len = u64::from(next.length);
            if next.command != CMD_READ
                || parts.len() >= MAX_MERGED_PARTS
                || next.flags != 0
                || next.offset != end
                || len == 0
                || len > max
                || total + len > limit
                // Merged reads stop at multiples of the limit: below a
                // chunked cache (1 MiB rows, the default limit), a read of
                // whole rows is copied straight into the buffer, while a
                // read that straddles two rows reads their partial pages
                // through SQLite's page cache (for nbdcopy's 256 KiB reads
                // of a warm cache: 1.48x the bytes served copied out of the
                // kernel's page cache before, 1.29x after).
                || end.is_multiple_of(limit)
                || !export.in_range(next.offset, len)
            {
                break;
            }
            std::pin::Pin::new(&mut *reader).consume(REQUEST_HEADER_LEN);
            export.stats.requests.fetch_add(1, Ordering::Relaxed);
            parts.push(ReadPart {
                cookie: next.cookie,
                len: next.length,
            });
            end += len;
            total += len;
        }
        total
    }

    /// Serves `parts`, read requests that cover `total` bytes from
    /// `offset` back to back, with one disk read and one vectored write of
    /// all their replies.
    async fn do_read(
        &self,
        offset: u64,
        total: u64,
        parts: Vec<ReadPart>,
        permit: Charge,
        outstanding: ReadsOutstanding,
    ) {
        let export = &self.export;
        if total == 0 {
            self.reply_parts(&parts, 0, None).await;
            drop(outstanding);
            drop(permit);
            return;
        }
        let ss = export.sector_size;
        let (start, aligned_end) = export.widen_to_sectors(offset, total);
        let head = offset - start;
        // Never closed, so this always gets a slot.
        let slot = self.read_slots.acquire().await.ok();
        let buf = export.pool.get((aligned_end - start) as usize);
        export.stats.disk_reads.fetch_add(1, Ordering::Relaxed);
        // Lent by value: a disk whose data comes from another thread fills
        // it there instead of copying.
        let (buf, res) = export.disk.read_owned(start / ss, buf.buf).await;
        let buf = PooledBuf { buf };
        match res {
            Ok(()) => {
                export.stats.bytes_read.fetch_add(total, Ordering::Relaxed);
                self.bytes_read.fetch_add(total, Ordering::Relaxed);
                let head = head as usize;
                self.reply_parts(&parts, 0, Some(&buf[head..head + total as usize]))
                    .await;
            }
            Err(e) => {
                let error = log_disk_error(&e, "read", false);
                self.reply_parts(&parts, error, None).await;
            }
        }
        // Replies written: the client no longer waits for these reads.
        drop(outstanding);
        drop(slot);
        export.pool.put(buf);
        drop(permit);
    }

    /// Replies to every part of a (merged) read with one vectored write:
    /// on success each header is followed by its slice of `data`.
    async fn reply_parts(&self, parts: &[ReadPart], error: u32, data: Option<&[u8]>) {
        if error != 0 {
            self.export
                .stats
                .error_replies
                .fetch_add(parts.len() as u64, Ordering::Relaxed);
        }
        let headers: Vec<[u8; SIMPLE_REPLY_LEN]> = parts
            .iter()
            .map(|p| encode_simple_reply(error, p.cookie))
            .collect();
        let mut slices = Vec::with_capacity(2 * parts.len());
        let mut at = 0;
        for (h, p) in headers.iter().zip(parts) {
            slices.push(io::IoSlice::new(h));
            if let Some(data) = data {
                let n = p.len as usize;
                slices.push(io::IoSlice::new(&data[at..at + n]));
                at += n;
            }
        }
        self.write_reply_slices(&mut slices).await;
    }
}

/// Spawns a request's task. Its future is part of what the request was
/// charged (see [`crate::memory::TASK_OVERHEAD`]).
fn spawn_request<F>(tasks: &mut JoinSet<()>, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    debug_assert!(
        size_of_val(&task) <= TASK_FUTURE_BYTES,
        "a request task's future is {} bytes, more than the {TASK_FUTURE_BYTES} it is charged",
        size_of_val(&task)
    );
    tasks.spawn(task);
}

/// Read requests whose replies are not written yet, on the server's and
/// the connection's disk-wait clocks; dropping it (the replies written, or
/// the task ended without them) stops their share of the clocks.
struct ReadsOutstanding {
    conn: Arc<Conn>,
    n: u64,
}

impl ReadsOutstanding {
    fn begin(conn: &Arc<Conn>, n: u64) -> Self {
        let mut r = ReadsOutstanding {
            conn: conn.clone(),
            n: 0,
        };
        r.add(n);
        r
    }

    fn add(&mut self, n: u64) {
        let stats = &self.conn.export.stats;
        stats.read_wait.begin(n);
        stats.read_requests.fetch_add(n, Ordering::Relaxed);
        self.conn.read_wait.begin(n);
        self.conn.read_requests.fetch_add(n, Ordering::Relaxed);
        self.n += n;
    }
}

impl Drop for ReadsOutstanding {
    fn drop(&mut self) {
        self.conn.export.stats.read_wait.end(self.n);
        self.conn.read_wait.end(self.n);
    }
}

/// One request of a merged read.
struct ReadPart {
    cookie: u64,
    len: u32,
}

fn log_disk_error(e: &DiskError, what: &str, writing: bool) -> u32 {
    let error = errno(e, writing);
    tracing::warn!(
        error = e as &dyn std::error::Error,
        errno = error,
        "NBD {what} failed"
    );
    error
}
