//! The one boundary between async callers and SQLite.
//!
//! ```text
//! async callers (LayeredDisk, NBD tasks)           engine threads (own every connection)
//!   read(sector, buf)   -- ReadJob -->   reader pool: 1..=MAX_READERS threads, each with a
//!                                        mapped and an unmapped connection
//!   fill(sector, data)  -- Fill ----->   owner thread: the writer connection; commits fills
//!   write/unmap/sync/stats/flush  ---->    in batches, runs every other operation in order
//!                                        checkpoint thread: WAL -> file (see checkpoint.rs)
//!        <-- tokio oneshot: the result (and the job's buffer) ---
//! ```
//!
//! Why: SQLite calls block. Before this module they ran on whichever
//! thread called (through `block_in_place` on a multi-thread runtime,
//! through the blocking pool elsewhere), so a test on a current-thread
//! runtime took a different path from production, and a full fill queue
//! blocked a runtime worker. Now every SQLite call runs on a thread this
//! module owns, and callers only send messages and await replies: one code
//! path whatever runtime (or executor) the caller uses.
//!
//! Invariants:
//! - No SQLite call runs outside the engine's threads (the checkpoint
//!   thread included); callers never block, they await.
//! - The owner thread handles its messages strictly in the order they were
//!   sent: a write, unmap, sync, stats or flush sees every fill queued
//!   before it committed.
//! - A fill is in the overlay from the moment it is queued until its
//!   transaction has committed, so a read of this layer (in this process)
//!   always sees it: reads snapshot the overlay *before* their job reaches
//!   a reader thread (a fill that leaves the overlay in between is in the
//!   file by then).
//! - Backpressure is one number, [`MAX_QUEUED_FILL_BYTES`]: fills take
//!   permits of a byte semaphore and give them back when committed, so a
//!   caller waits for the cache's disk writes only when that many bytes of
//!   fills are queued. Nothing else in the engine waits for the queue.
//! - Fills are best effort: a batch that fails to commit is logged (once
//!   at warn level) and dropped, never half-applied.
//! - Dropping the engine commits every queued fill before it returns: a
//!   process that closes its disk leaves every fill in the file.
//! - Reads land in a buffer owned by the job (recycled through a pool)
//!   and are copied into the caller's buffer once: safe code cannot lend
//!   a borrowed buffer to another thread.
//!
//! DEVNOTE: over 1000 lines, kept whole: the invariants above span the
//! caller API, the reader pool and the owner thread, and are reviewed
//! together. If it grows, the seams are the reader pool (`Reader`,
//! `ReaderPool`) and the owner thread (`run_owner`, `commit_fills`).
//!
//! The hand-off to a reader thread would cost a caller that reads one
//! block at a time two thread wake-ups per read; one reader and such a
//! caller spin briefly instead (see [`READER_SPIN`]). What is left is a
//! few microseconds per read, and for reads into a borrowed buffer one
//! copy (the Guide's performance page has the figures).

use crate::SqliteLayerError;
use crate::VerifyReport;
use crate::store::ConnKind;
use crate::store::MAPPED_READ_LIMIT;
use crate::store::Store;
use crate::store::open_conn;
use crate::store::set_bits;
use disk_backend::DiskError;
use parking_lot::Condvar;
use parking_lot::Mutex;
use rusqlite::Connection;
use std::collections::VecDeque;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio::sync::oneshot;

/// Most bytes of fills queued (accepted, not yet committed) at once. A
/// fill that does not fit waits until enough queued fills are committed;
/// this is the only point where a guest read can wait for the cache's
/// disk writes.
pub const MAX_QUEUED_FILL_BYTES: usize = 64 << 20;

/// Most bytes of fills the owner thread commits in one transaction.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// Most reader threads. A reader thread is started when a read is queued
/// and every existing reader is busy.
const MAX_READERS: usize = 4;

/// How long a reader that finished a job spins (one reader at a time)
/// before it sleeps, and how long a caller whose small read went to that
/// spinning reader spins for the reply before it yields to its executor.
///
/// Why: a caller that issues one read at a time (an in-process consumer
/// at queue depth 1) otherwise pays two thread wake-ups per read (the
/// reader's, then its own): ~27 us for a warm 4 KiB read whose SQLite
/// work takes ~4 us. With both spins a run of such reads is handed over
/// and answered without a sleep (warm random 4 KiB: ~4x the reads per
/// second, measured side by side; the Guide's performance page has the
/// figures). Either spin alone gains little: each removes one of the two
/// wake-ups. The spins are bounded and adaptive: only one reader spins,
/// only after a job (an idle engine sleeps), and a caller spins only when
/// its read went to the spinning reader and is small (a large read takes
/// longer than the spin), so under load, where readers are busy, nobody
/// spins. Nor does anybody on a single CPU (see `ReaderPool::spin`).
const READER_SPIN: Duration = Duration::from_micros(50);
const CALLER_SPIN: Duration = Duration::from_micros(30);

/// Fill buffers kept for reuse (half the queue's bound in 1 MiB fills): a
/// fresh 1 MiB allocation per fill cost page faults, and the memory is
/// reused at once anyway, the queue being bounded.
const KEEP_SPARE_FILLS: usize = 32;

/// Read buffers kept for reuse, and the largest one kept.
const KEEP_READ_BUFFERS: usize = 8;
const MAX_KEPT_READ_BUFFER: usize = 16 << 20;

// DEVNOTE: the fill and read buffer lists are not `disk_nbd`'s size-class
// pool or `disk_blob`'s piece pool, nor one shared pool type: a fill copies
// into any spare buffer (extending it) and comes back only if no reader's
// overlay snapshot still holds it; a read resizes any spare buffer to its
// length. A few buffers of the sizes last used, bounded by count, is all
// either needs; size classes, byte caps or drop guards are rules neither
// has.

thread_local! {
    /// Set on the threads the engine owns (see [`enter_engine_thread`]).
    static ENGINE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one of the engine's own threads: the only
/// threads allowed to call SQLite.
pub(crate) fn enter_engine_thread() {
    ENGINE_THREAD.with(|t| t.set(true));
}

/// Debug builds check, at every entry into the store, that SQLite is only
/// ever called from an engine thread (never from an async caller's
/// thread, a tokio worker in particular). The tests run debug builds, so
/// a path that breaks the rule fails them.
pub(crate) fn debug_assert_engine_thread() {
    debug_assert!(
        ENGINE_THREAD.with(|t| t.get()),
        "SQLite called outside the engine's threads (thread {:?})",
        std::thread::current().name()
    );
}

/// Runs `f` on a new thread of its own and awaits its result: for the rare
/// blocking work that happens before an engine exists (formatting a file,
/// finding or creating an auto-cache file).
pub(crate) async fn off_runtime<R: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<R, SqliteLayerError> + Send + 'static,
) -> Result<R, SqliteLayerError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("sqlite-open".into())
        .spawn(move || {
            enter_engine_thread();
            let _ = tx.send(catch(f));
        })
        .map_err(|e| thread_error(what, e))?;
    rx.await
        .map_err(|_| thread_error(what, "the thread exited"))?
}

fn thread_error(
    what: &str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> SqliteLayerError {
    SqliteLayerError::Disk(DiskError::io(format!("sqlite engine thread ({what})"), e))
}

/// Runs `f`, turning a panic into an error, so a bug in one operation
/// fails that operation instead of killing an engine thread (and leaving
/// every later caller waiting for a reply that never comes).
fn catch<R>(f: impl FnOnce() -> Result<R, SqliteLayerError>) -> Result<R, SqliteLayerError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(thread_error("operation", "it panicked")))
}

/// One queued fill: `data` for the sectors starting at `sector`.
pub(crate) struct Fill {
    pub(crate) sector: u64,
    pub(crate) data: Vec<u8>,
}

/// What the owner thread is asked to do, in order.
enum Op {
    /// A write-no-overwrite fill; its permit goes back when it commits.
    Fill(Arc<Fill>, OwnedSemaphorePermit),
    Write {
        sector: u64,
        data: Vec<u8>,
        overwrite: bool,
        fua: bool,
        reply: oneshot::Sender<Result<u64, SqliteLayerError>>,
    },
    Unmap {
        sector: u64,
        count: u64,
        reply: oneshot::Sender<Result<(), SqliteLayerError>>,
    },
    Sync {
        reply: oneshot::Sender<Result<(), SqliteLayerError>>,
    },
    Stats {
        reply: oneshot::Sender<Result<(u64, u64), SqliteLayerError>>,
    },
    Verify {
        reply: oneshot::Sender<Result<VerifyReport, SqliteLayerError>>,
    },
    Presence {
        sector: u64,
        count: u64,
        reply: oneshot::Sender<Result<Vec<u64>, SqliteLayerError>>,
    },
    /// Answered once everything queued before it is committed.
    Flush { reply: oneshot::Sender<()> },
    /// A reader found this chunk's bytes not matching their checksums:
    /// drop the row if it still does not match (a fill then rewrites it).
    /// Sent before the read's reply, so it is handled before the fill that
    /// the read's caller queues next.
    DropDamaged { chunk: u64 },
}

/// What a read job answers: its buffer, and the presence bits or an error.
type ReadReply = (Vec<u8>, Result<Vec<u64>, SqliteLayerError>);

/// A read for a reader thread: `buf` is the job's own buffer.
struct ReadJob {
    sector: u64,
    buf: Vec<u8>,
    reply: oneshot::Sender<ReadReply>,
}

/// State shared by the async side and the engine threads.
struct Shared {
    /// Every fill not yet committed, in the order it was queued.
    overlay: Mutex<Vec<Arc<Fill>>>,
    /// Buffers of committed fills, kept for the next fills.
    spare_fills: Mutex<Vec<Vec<u8>>>,
    /// Recycled read buffers.
    read_buffers: Mutex<Vec<Vec<u8>>>,
    /// Sector bytes of fills committed.
    committed_fill_bytes: AtomicU64,
    /// A fill batch has failed (logged once at warn level).
    fill_failed: AtomicBool,
    /// After a failed fill batch (a full file system, a read-only or
    /// failing disk), fills pause until this time, and the pause doubles
    /// with each failure (see [`FILL_PAUSE`]): a cache that cannot keep
    /// data must not make every later miss fetch again in vain.
    fill_pause: Mutex<FillPause>,
    /// Chunks reads found not matching their checksums (each counted,
    /// logged and dropped once: a read and the fill's re-read of the same
    /// chunk both see the damage before the owner thread drops the row).
    damaged_chunks: AtomicU64,
    damaged_seen: Mutex<std::collections::HashSet<u64>>,
    /// A damaged chunk has been logged at warn level.
    damage_logged: AtomicBool,
    /// SQLite found the read cache's file damaged: reads report every
    /// sector absent (the layer below serves them) and fills are dropped,
    /// for as long as this engine lives.
    broken: AtomicBool,
    /// Called once when the file is found damaged (the auto-cache moves
    /// it aside so that the next open creates a fresh one).
    on_damaged_file: Option<DamagedFileHook>,
}

/// The first and the longest pause of fills after a failed fill batch.
const FILL_PAUSE: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(600));

#[derive(Default)]
struct FillPause {
    until: Option<Instant>,
    last: Option<Duration>,
}

impl Shared {
    /// Whether fills are paused now.
    fn fills_paused(&self) -> bool {
        self.fill_pause
            .lock()
            .until
            .is_some_and(|t| Instant::now() < t)
    }

    /// A fill batch failed: pause fills (doubling the last pause); returns
    /// the pause.
    fn pause_fills(&self) -> Duration {
        let mut p = self.fill_pause.lock();
        let next = p.last.map_or(FILL_PAUSE.0, |d| (d * 2).min(FILL_PAUSE.1));
        p.last = Some(next);
        p.until = Some(Instant::now() + next);
        next
    }

    /// A fill batch committed: the next failure starts with the shortest
    /// pause again.
    fn fills_work(&self) {
        let mut p = self.fill_pause.lock();
        if p.last.is_some() && p.until.is_none_or(|t| Instant::now() >= t) {
            *p = FillPause::default();
        }
    }
}

/// What the engine calls, once, when SQLite reports a read cache's file as
/// damaged: the path and what was found.
pub(crate) type DamagedFileHook = Box<dyn Fn(&Path, &SqliteLayerError) + Send + Sync>;

impl Shared {
    fn fill_buffer(&self, data: &[u8]) -> Vec<u8> {
        let mut v = self.spare_fills.lock().pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(data);
        v
    }

    fn read_buffer(&self, len: usize) -> Vec<u8> {
        let mut v = self.read_buffers.lock().pop().unwrap_or_default();
        // Stale contents are fine: a read writes every byte.
        v.resize(len, 0);
        v
    }

    fn give_read_buffer(&self, v: Vec<u8>) {
        if v.capacity() <= MAX_KEPT_READ_BUFFER {
            let mut pool = self.read_buffers.lock();
            if pool.len() < KEEP_READ_BUFFERS {
                pool.push(v);
            }
        }
    }
}

/// Spins until `done` or `limit` has passed; returns whether `done`.
fn spin_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// The reply of a read handed to the spinning reader, if it comes within
/// [`CALLER_SPIN`] (`Err` if the reader dropped it); `None` to await it.
fn spin_for_reply(rx: &mut oneshot::Receiver<ReadReply>) -> Option<Result<ReadReply, ()>> {
    let mut reply = None;
    spin_until(CALLER_SPIN, || match rx.try_recv() {
        Ok(r) => {
            reply = Some(Ok(r));
            true
        }
        Err(oneshot::error::TryRecvError::Closed) => {
            reply = Some(Err(()));
            true
        }
        Err(oneshot::error::TryRecvError::Empty) => false,
    });
    reply
}

/// The reader threads' queue.
#[derive(Default)]
struct ReaderPool {
    state: Mutex<ReaderState>,
    work: Condvar,
    /// `state.jobs.len()`, for the spinning reader to watch without the
    /// lock (written under it).
    queued: AtomicUsize,
    /// Whether readers spin at all: only when this process may run on two
    /// CPUs or more. On one, a spinner only delays the thread it waits
    /// for (warm random 4 KiB under `taskset -c 0`: 0.32 s with the spins
    /// against 0.20 s without, for 20,000 reads), and a wake-up on the
    /// same CPU is cheap anyway.
    spin: bool,
}

#[derive(Default)]
struct ReaderState {
    jobs: VecDeque<ReadJob>,
    /// Reader threads started and not exited.
    threads: usize,
    /// Reader threads waiting for a job.
    idle: usize,
    /// One reader is spinning for the next job (see [`READER_SPIN`]): a job
    /// queued now needs no wake-up.
    spinning: bool,
    closed: bool,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// The engine of one open layer file. Dropping it commits queued fills
/// and stops its threads.
pub(crate) struct Engine {
    store: Arc<Store>,
    shared: Arc<Shared>,
    ops: Mutex<Option<std::sync::mpsc::Sender<Op>>>,
    owner: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Arc<ReaderPool>,
    fill_permits: Arc<Semaphore>,
}

impl Engine {
    /// Opens the layer file at `path` on a new owner thread (which keeps
    /// the first connection as its writer) and returns once the file's
    /// metadata is validated.
    pub(crate) async fn open(
        path: PathBuf,
        read_only: bool,
        on_damaged_file: Option<DamagedFileHook>,
    ) -> Result<Engine, SqliteLayerError> {
        let shared = Arc::new(Shared {
            overlay: Mutex::default(),
            spare_fills: Mutex::default(),
            read_buffers: Mutex::default(),
            committed_fill_bytes: AtomicU64::new(0),
            fill_failed: AtomicBool::new(false),
            fill_pause: Mutex::default(),
            damaged_chunks: AtomicU64::new(0),
            damaged_seen: Mutex::default(),
            damage_logged: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            on_damaged_file,
        });
        let (ops_tx, ops_rx) = std::sync::mpsc::channel::<Op>();
        let (opened_tx, opened_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let owner = std::thread::Builder::new()
            .name("sqlite-owner".into())
            .spawn(move || {
                enter_engine_thread();
                let (store, conn) = match catch(|| Store::open(&path, read_only)) {
                    Ok((store, conn)) => (Arc::new(store), conn),
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                if opened_tx.send(Ok(store.clone())).is_err() {
                    return;
                }
                run_owner(&store, conn, &thread_shared, &ops_rx);
            })
            .map_err(|e| thread_error("starting the owner thread", e))?;
        let store = match opened_rx.await {
            Ok(Ok(store)) => store,
            Ok(Err(e)) => {
                let _ = owner.join();
                return Err(e);
            }
            Err(_) => {
                let _ = owner.join();
                return Err(thread_error("opening", "the owner thread exited"));
            }
        };
        Ok(Engine {
            store,
            shared,
            ops: Mutex::new(Some(ops_tx)),
            owner: Mutex::new(Some(owner)),
            readers: Arc::new(ReaderPool {
                spin: std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
                ..ReaderPool::default()
            }),
            fill_permits: Arc::new(Semaphore::new(MAX_QUEUED_FILL_BYTES)),
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    fn send(&self, op: Op) -> Result<(), SqliteLayerError> {
        match &*self.ops.lock() {
            Some(tx) => tx
                .send(op)
                .map_err(|_| thread_error("sending", "the owner thread exited")),
            None => Err(thread_error("sending", "the engine is closed")),
        }
    }

    async fn ask<R>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<R, SqliteLayerError>>) -> Op,
    ) -> Result<R, SqliteLayerError> {
        let (tx, rx) = oneshot::channel();
        self.send(op(tx))?;
        rx.await
            .map_err(|_| thread_error("waiting for a reply", "the owner thread exited"))?
    }

    /// Reads the present sectors at `sector` into `buf` (queued fills
    /// applied); returns the presence bits of the request. The bytes of
    /// absent sectors are left as they were. The reader thread reads into
    /// a pooled buffer of its own; only the present runs are copied over.
    pub(crate) async fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
    ) -> Result<Vec<u64>, SqliteLayerError> {
        let ss = self.store.meta().geometry.sector_size as usize;
        let (data, result) = self
            .read_owned(sector, self.shared.read_buffer(buf.len()))
            .await;
        let bits = match result {
            Ok(bits) => {
                for (from, to) in present_runs(&bits, (buf.len() / ss) as u64) {
                    let span = from as usize * ss..to as usize * ss;
                    buf[span.clone()].copy_from_slice(&data[span]);
                }
                Ok(bits)
            }
            Err(e) => Err(e),
        };
        self.shared.give_read_buffer(data);
        bits
    }

    /// [`read`](Self::read) straight into a buffer handed over and back:
    /// the reader thread fills it, no copy.
    pub(crate) async fn read_owned(
        &self,
        sector: u64,
        buf: Vec<u8>,
    ) -> (Vec<u8>, Result<Vec<u64>, SqliteLayerError>) {
        let ss = self.store.meta().geometry.sector_size as usize;
        let count = (buf.len() / ss) as u64;
        if self.shared.broken.load(Ordering::Relaxed) {
            return (buf, Ok(vec![0; count.div_ceil(64) as usize]));
        }
        // Before the file is read: a fill that leaves the overlay after
        // this is committed by the time the reader thread reads.
        let queued = self.overlapping_fills(sector, count, ss);
        let (tx, mut rx) = oneshot::channel();
        let len = buf.len();
        let to_spinner = match self.submit_read(ReadJob {
            sector,
            buf,
            reply: tx,
        }) {
            Ok(to_spinner) => to_spinner,
            Err(failed) => {
                let (buf, e) = *failed;
                return (buf, Err(e));
            }
        };
        let early = if to_spinner && len < MAPPED_READ_LIMIT {
            spin_for_reply(&mut rx)
        } else {
            None
        };
        let reply = match early {
            Some(reply) => reply,
            None => rx.await.map_err(|_| ()),
        };
        let Ok((mut buf, result)) = reply else {
            // A reader thread always replies (panics are caught), so this
            // is a thread killed from outside; the buffer went with it.
            let e = thread_error("reading", "the reader thread exited");
            return (vec![0; len], Err(e));
        };
        let result = result.map(|mut bits| {
            if !queued.is_empty() {
                apply_overlay(&queued, sector, &mut buf, &mut bits, ss);
            }
            bits
        });
        (buf, result)
    }

    /// Queues `job` for a reader thread, starting one if every reader is
    /// busy (up to [`MAX_READERS`]); returns whether the spinning reader
    /// takes it (see [`READER_SPIN`]). On failure the job's buffer comes
    /// back with the error (rare, so boxed).
    fn submit_read(&self, job: ReadJob) -> Result<bool, Box<(Vec<u8>, SqliteLayerError)>> {
        let mut st = self.readers.state.lock();
        if st.closed {
            return Err(Box::new((
                job.buf,
                thread_error("reading", "the engine is closed"),
            )));
        }
        // The spinning reader takes the first job queued while it spins.
        let spinner_takes_it = st.spinning && st.jobs.is_empty();
        if !spinner_takes_it && st.idle == 0 && st.threads < MAX_READERS {
            let reader = Reader {
                store: self.store.clone(),
                pool: self.readers.clone(),
                shared: self.shared.clone(),
                ops: self.ops.lock().clone(),
            };
            let spawned = std::thread::Builder::new()
                .name("sqlite-reader".into())
                .spawn(move || reader.run());
            match spawned {
                Ok(h) => {
                    st.threads += 1;
                    st.handles.push(h);
                }
                // With at least one reader the job is served later; with
                // none it would never be.
                Err(e) if st.threads == 0 => {
                    return Err(Box::new((
                        job.buf,
                        thread_error("starting a reader thread", e),
                    )));
                }
                Err(e) => tracing::debug!(error = %e, "no extra sqlite reader thread"),
            }
        }
        st.jobs.push_back(job);
        self.readers.queued.store(st.jobs.len(), Ordering::Release);
        drop(st);
        if !spinner_takes_it {
            self.readers.work.notify_one();
        }
        Ok(spinner_takes_it)
    }

    /// The queued fills that overlap sectors `sector..sector + count`.
    fn overlapping_fills(&self, sector: u64, count: u64, ss: usize) -> Vec<Arc<Fill>> {
        let overlay = self.shared.overlay.lock();
        if overlay.is_empty() {
            return Vec::new();
        }
        let end = sector + count;
        overlay
            .iter()
            .filter(|f| {
                let f_end = f.sector + (f.data.len() / ss) as u64;
                f.sector < end && sector < f_end
            })
            .cloned()
            .collect()
    }

    /// Queues a write-no-overwrite fill; waits only while
    /// [`MAX_QUEUED_FILL_BYTES`] are already queued. A fill larger than
    /// the whole bound waits until the queue is empty.
    pub(crate) async fn queue_fill(
        &self,
        sector: u64,
        data: &[u8],
    ) -> Result<(), SqliteLayerError> {
        if self.shared.broken.load(Ordering::Relaxed) {
            return Err(SqliteLayerError::Disk(DiskError::io(
                "the read-cache file is damaged; fills are off for this process",
                std::io::Error::other("damaged cache file"),
            )));
        }
        if self.shared.fills_paused() {
            // Best effort, and the pause was logged when it began.
            return Ok(());
        }
        let want = data.len().min(MAX_QUEUED_FILL_BYTES) as u32;
        let permit = self
            .fill_permits
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| thread_error("queueing a fill", "the engine is closed"))?;
        let fill = Arc::new(Fill {
            sector,
            data: self.shared.fill_buffer(data),
        });
        // Overlay and queue in one order, under one lock.
        let mut overlay = self.shared.overlay.lock();
        overlay.push(fill.clone());
        if let Err(e) = self.send(Op::Fill(fill.clone(), permit)) {
            overlay.retain(|f| !Arc::ptr_eq(f, &fill));
            return Err(e);
        }
        Ok(())
    }

    /// Writes (with `overwrite`, every sector; without, only absent ones)
    /// after everything queued before it; returns the sectors written.
    pub(crate) async fn write(
        &self,
        sector: u64,
        data: Vec<u8>,
        overwrite: bool,
        fua: bool,
    ) -> Result<u64, SqliteLayerError> {
        self.ask(|reply| Op::Write {
            sector,
            data,
            overwrite,
            fua,
            reply,
        })
        .await
    }

    pub(crate) async fn unmap(&self, sector: u64, count: u64) -> Result<(), SqliteLayerError> {
        self.ask(|reply| Op::Unmap {
            sector,
            count,
            reply,
        })
        .await
    }

    pub(crate) async fn sync(&self) -> Result<(), SqliteLayerError> {
        self.ask(|reply| Op::Sync { reply }).await
    }

    pub(crate) async fn stats(&self) -> Result<(u64, u64), SqliteLayerError> {
        self.ask(|reply| Op::Stats { reply }).await
    }

    /// Which sectors of `sector..sector + count` are present (queued fills
    /// included), without reading data: bit `i` is sector `sector + i`.
    pub(crate) async fn presence(
        &self,
        sector: u64,
        count: u64,
    ) -> Result<Vec<u64>, SqliteLayerError> {
        if self.shared.broken.load(Ordering::Relaxed) {
            return Ok(vec![0; count.div_ceil(64) as usize]);
        }
        let ss = self.store.meta().geometry.sector_size as usize;
        // Before the query: a fill that leaves the overlay after this is
        // committed by the time the owner thread runs the query.
        let queued = self.overlapping_fills(sector, count, ss);
        let mut bits = self
            .ask(|reply| Op::Presence {
                sector,
                count,
                reply,
            })
            .await?;
        for f in &queued {
            let f_count = (f.data.len() / ss) as u64;
            let lo = f.sector.max(sector) - sector;
            let hi = (f.sector + f_count)
                .min(sector + count)
                .saturating_sub(sector);
            if lo < hi {
                set_bits(&mut bits, lo, hi);
            }
        }
        Ok(bits)
    }

    pub(crate) async fn verify(&self) -> Result<VerifyReport, SqliteLayerError> {
        self.ask(|reply| Op::Verify { reply }).await
    }

    /// Returns once every fill queued before the call is committed (or
    /// dropped after an error).
    pub(crate) async fn flush(&self) -> Result<(), SqliteLayerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Flush { reply: tx })?;
        rx.await
            .map_err(|_| thread_error("flushing", "the owner thread exited"))
    }

    /// Whether fills are taken now: not when the file is damaged or fills
    /// are paused after a failure.
    pub(crate) fn accepts_fills(&self) -> bool {
        !self.store.is_read_only()
            && !self.shared.broken.load(Ordering::Relaxed)
            && !self.shared.fills_paused()
    }

    /// Sector bytes of fills committed so far.
    pub(crate) fn committed_fill_bytes(&self) -> u64 {
        self.shared.committed_fill_bytes.load(Ordering::Relaxed)
    }

    /// Chunks that reads found not matching their checksums so far.
    pub(crate) fn damaged_chunks(&self) -> u64 {
        self.shared.damaged_chunks.load(Ordering::Relaxed)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Readers first: they are idle (no caller is left to wait on them).
        let handles = {
            let mut st = self.readers.state.lock();
            st.closed = true;
            std::mem::take(&mut st.handles)
        };
        self.readers.work.notify_all();
        for h in handles {
            let _ = h.join();
        }
        // Closing the channel lets the owner commit what is queued and exit.
        drop(self.ops.lock().take());
        if let Some(h) = self.owner.lock().take() {
            let _ = h.join();
        }
    }
}

/// What a reader thread works with.
struct Reader {
    store: Arc<Store>,
    pool: Arc<ReaderPool>,
    shared: Arc<Shared>,
    /// Where damaged chunks are reported (`None` once the engine closes).
    ops: Option<std::sync::mpsc::Sender<Op>>,
}

impl Reader {
    /// Serves jobs with the thread's own connections until the pool
    /// closes.
    fn run(self) {
        enter_engine_thread();
        let mut mapped: Option<Connection> = None;
        let mut plain: Option<Connection> = None;
        // Whole checksum pieces of reads that are not aligned to them.
        let mut scratch = Vec::new();
        while let Some(ReadJob {
            sector,
            mut buf,
            reply,
        }) = self.next_job()
        {
            let (slot, kind) = if buf.len() < MAPPED_READ_LIMIT {
                (&mut mapped, ConnKind::Mapped)
            } else {
                (&mut plain, ConnKind::Plain)
            };
            let store = &self.store;
            let result = catch(|| {
                if slot.is_none() {
                    *slot = Some(open_conn(store.path(), store.is_read_only(), kind)?);
                }
                let conn = slot
                    .as_ref()
                    .ok_or_else(|| thread_error("reading", "no connection"))?;
                store.read(conn, sector, &mut buf, &mut scratch)
            });
            // A connection left inside a transaction by an error is dropped
            // rather than reused.
            if slot.as_ref().is_some_and(|c| !c.is_autocommit()) {
                *slot = None;
            }
            let result = match result {
                Ok(outcome) => {
                    for &chunk in &outcome.damaged {
                        self.report_damage(chunk);
                    }
                    Ok(outcome.presence)
                }
                // A read cache whose file SQLite (or a row check) finds
                // damaged is abandoned for the rest of this engine's life:
                // this read and every later one come from the layer below.
                Err(err @ SqliteLayerError::Corrupt { .. }) if store.meta().logically_read_only => {
                    self.abandon_file(&err);
                    let count = (buf.len() / store.meta().geometry.sector_size as usize) as u64;
                    Ok(vec![0; count.div_ceil(64) as usize])
                }
                Err(err) => Err(err),
            };
            let _ = reply.send((buf, result));
        }
    }

    fn next_job(&self) -> Option<ReadJob> {
        let mut st = self.pool.state.lock();
        loop {
            if let Some(job) = st.jobs.pop_front() {
                self.pool.queued.store(st.jobs.len(), Ordering::Release);
                return Some(job);
            }
            if st.closed {
                st.threads -= 1;
                return None;
            }
            if self.pool.spin && !st.spinning {
                // A caller at queue depth 1 sends its next read within
                // microseconds: catch it without sleeping (READER_SPIN).
                // A job queued meanwhile is seen through `queued`, or
                // under the lock once the spin ends; either way it is
                // taken before this reader sleeps.
                st.spinning = true;
                let queued = &self.pool.queued;
                parking_lot::MutexGuard::unlocked(&mut st, || {
                    spin_until(READER_SPIN, || queued.load(Ordering::Acquire) > 0);
                });
                st.spinning = false;
                if !st.jobs.is_empty() || st.closed {
                    continue;
                }
            }
            st.idle += 1;
            self.pool.work.wait(&mut st);
            st.idle -= 1;
        }
    }

    /// Stops using a damaged read-cache file (once): warns, and calls the
    /// owner's hook (the auto-cache moves the file aside).
    fn abandon_file(&self, err: &SqliteLayerError) {
        if self.shared.broken.swap(true, Ordering::Relaxed) {
            return;
        }
        let path = self.store.path();
        tracing::warn!(
            path = %path.display(),
            error = err as &dyn std::error::Error,
            "the read-cache file is damaged; this process reads from the layer below from now on"
        );
        if let Some(hook) = &self.shared.on_damaged_file {
            hook(path, err);
        }
    }

    /// Counts and logs a chunk whose bytes did not match their checksums,
    /// and asks the owner thread to drop it.
    fn report_damage(&self, chunk: u64) {
        if !self.shared.damaged_seen.lock().insert(chunk) {
            return;
        }
        self.shared.damaged_chunks.fetch_add(1, Ordering::Relaxed);
        let path = self.store.path();
        if !self.shared.damage_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %path.display(),
                chunk,
                "read-cache chunk does not match its checksums (damaged on disk); \
                 it is read from the layer below and cached again \
                 (further damaged chunks are logged at debug level)"
            );
        } else {
            tracing::debug!(path = %path.display(), chunk, "damaged read-cache chunk");
        }
        if let Some(ops) = &self.ops {
            let _ = ops.send(Op::DropDamaged { chunk });
        }
    }
}

/// The owner thread: runs operations in order with the writer connection,
/// committing consecutive fills in batches, until the engine closes; then
/// commits what is left.
fn run_owner(
    store: &Arc<Store>,
    mut conn: Connection,
    shared: &Shared,
    ops: &std::sync::mpsc::Receiver<Op>,
) {
    let mut next: Option<Op> = None;
    loop {
        let op = match next.take() {
            Some(op) => op,
            None => match ops.recv() {
                Ok(op) => op,
                // Closed and empty: every queued fill is committed.
                Err(_) => return,
            },
        };
        match op {
            Op::Fill(fill, permit) => {
                let mut batch = vec![(fill, permit)];
                let mut bytes = batch[0].0.data.len();
                while bytes < MAX_BATCH_BYTES {
                    match ops.try_recv() {
                        Ok(Op::Fill(f, p)) => {
                            bytes += f.data.len();
                            batch.push((f, p));
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_fills(store, &mut conn, shared, batch);
            }
            Op::Write {
                sector,
                data,
                overwrite,
                fua,
                reply,
            } => {
                let r = catch(|| {
                    let n = store.write(&mut conn, sector, &data, overwrite)?;
                    if fua {
                        store.sync()?;
                    }
                    Ok(n)
                });
                let _ = reply.send(r);
            }
            Op::Unmap {
                sector,
                count,
                reply,
            } => {
                let _ = reply.send(catch(|| store.unmap(&mut conn, sector, count)));
            }
            Op::Sync { reply } => {
                let _ = reply.send(catch(|| store.sync()));
            }
            Op::Stats { reply } => {
                let _ = reply.send(catch(|| store.stats(&conn)));
            }
            Op::Verify { reply } => {
                let _ = reply.send(catch(|| store.verify(&conn)));
            }
            Op::Presence {
                sector,
                count,
                reply,
            } => {
                let _ = reply.send(catch(|| store.presence(&conn, sector, count)));
            }
            Op::Flush { reply } => {
                let _ = reply.send(());
            }
            Op::DropDamaged { chunk } => match catch(|| store.drop_if_damaged(&mut conn, chunk)) {
                Ok(dropped) => tracing::debug!(chunk, dropped, "damaged chunk checked"),
                Err(err) => tracing::debug!(
                    chunk,
                    error = &err as &dyn std::error::Error,
                    "could not drop a damaged chunk"
                ),
            },
        }
    }
}

/// Commits one batch of fills in one transaction, then takes them out of
/// the overlay and gives their permits back.
fn commit_fills(
    store: &Arc<Store>,
    conn: &mut Connection,
    shared: &Shared,
    batch: Vec<(Arc<Fill>, OwnedSemaphorePermit)>,
) {
    let pieces: Vec<(u64, &[u8])> = batch
        .iter()
        .map(|(f, _)| (f.sector, f.data.as_slice()))
        .collect();
    let result = if shared.broken.load(Ordering::Relaxed) {
        // The file is abandoned: queued fills are dropped.
        Ok(0)
    } else {
        catch(|| store.write_batch(conn, &pieces, false))
    };
    match result {
        Ok(sectors) => {
            shared.fills_work();
            let ss = u64::from(store.meta().geometry.sector_size);
            shared
                .committed_fill_bytes
                .fetch_add(sectors * ss, Ordering::Relaxed);
        }
        Err(err) => {
            let busy = matches!(
                &err,
                SqliteLayerError::Sqlite { source, .. }
                    if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
            );
            // Another process holding the lock for two minutes is
            // contention, not a cache that cannot keep data.
            let pause = (!busy).then(|| shared.pause_fills());
            log_fill_failure(store.path(), shared, &err, pause);
        }
    }
    drop(pieces);
    shared
        .overlay
        .lock()
        .retain(|f| !batch.iter().any(|(b, _)| Arc::ptr_eq(b, f)));
    let mut spare = shared.spare_fills.lock();
    for (fill, permit) in batch {
        drop(permit);
        // A fill still held by a reader's overlay snapshot is simply freed
        // later instead of recycled.
        if let Ok(f) = Arc::try_unwrap(fill)
            && spare.len() < KEEP_SPARE_FILLS
        {
            spare.push(f.data);
        }
    }
}

fn log_fill_failure(path: &Path, shared: &Shared, err: &SqliteLayerError, pause: Option<Duration>) {
    if !shared.fill_failed.swap(true, Ordering::Relaxed) {
        match pause {
            Some(pause) => tracing::warn!(
                path = %path.display(),
                error = err as &dyn std::error::Error,
                pause_secs = pause.as_secs(),
                "read-cache fills failed (is its file system full or read-only?); \
                 filling is paused and misses are read from below as asked, \
                 nothing more (further failures are logged at debug level)"
            ),
            None => tracing::warn!(
                path = %path.display(),
                error = err as &dyn std::error::Error,
                "read-cache fill failed; those sectors will be fetched again \
                 (further failures are logged at debug level)"
            ),
        }
    } else {
        tracing::debug!(
            path = %path.display(),
            error = err as &dyn std::error::Error,
            "read-cache fill failed"
        );
    }
}

/// Maximal runs `from..to` of set bits among the first `count`.
pub(crate) fn present_runs(bits: &[u64], count: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let is_set = move |i: u64| bits[(i / 64) as usize] & (1 << (i % 64)) != 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < count && !is_set(i) {
            // Whole clear words at once: most reads are all-present or
            // all-absent.
            if i % 64 == 0 && bits[(i / 64) as usize] == 0 {
                i += 64;
            } else {
                i += 1;
            }
        }
        if i >= count {
            return None;
        }
        let from = i;
        while i < count && is_set(i) {
            if i % 64 == 0 && bits[(i / 64) as usize] == u64::MAX {
                i += 64;
            } else {
                i += 1;
            }
        }
        Some((from, i.min(count)))
    })
}

/// Copies the sectors of `fills` that `bits` marks absent into `buf`
/// (which holds sectors from `sector`) and marks them present.
fn apply_overlay(fills: &[Arc<Fill>], sector: u64, buf: &mut [u8], bits: &mut [u64], ss: usize) {
    let count = (buf.len() / ss) as u64;
    let is_set = |bits: &[u64], i: u64| bits[(i / 64) as usize] & (1 << (i % 64)) != 0;
    for f in fills {
        let f_count = (f.data.len() / ss) as u64;
        // The part of the request the fill covers, relative to `sector`.
        let lo = f.sector.max(sector) - sector;
        let hi = (f.sector + f_count)
            .min(sector + count)
            .saturating_sub(sector);
        let mut i = lo;
        while i < hi {
            if is_set(bits, i) {
                i += 1;
                continue;
            }
            // A run of absent sectors: one copy for all of it.
            let mut end = i + 1;
            while end < hi && !is_set(bits, end) {
                end += 1;
            }
            let from = (sector + i - f.sector) as usize * ss;
            let len = (end - i) as usize * ss;
            buf[i as usize * ss..][..len].copy_from_slice(&f.data[from..from + len]);
            set_bits(bits, i, end);
            i = end;
        }
    }
}

#[cfg(test)]
mod tests {
    /// The check that guards the boundary fires off the engine's threads.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "SQLite called outside the engine's threads")]
    fn the_engine_thread_check_fires_elsewhere() {
        super::debug_assert_engine_thread();
    }

    #[test]
    fn present_runs_walk_words() {
        let bits = [u64::MAX, 0b1011, 0, 1 << 63];
        let runs: Vec<_> = super::present_runs(&bits, 256).collect();
        assert_eq!(runs, vec![(0, 66), (67, 68), (255, 256)]);
        // Clipped to the count.
        let runs: Vec<_> = super::present_runs(&bits, 66).collect();
        assert_eq!(runs, vec![(0, 66)]);
        assert_eq!(super::present_runs(&[0, 0], 100).count(), 0);
    }
}
