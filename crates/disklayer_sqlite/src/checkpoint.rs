//! WAL checkpoints on a thread of their own (see [`Checkpointer`]).
//!
//! Position: used by the store's writer after each commit; the thread and
//! its connection live as long as the store.

use parking_lot::Condvar;
use parking_lot::Mutex;

/// Runs WAL checkpoints on a thread of its own, so a writer never waits
/// for one.
///
/// Why: with `synchronous=NORMAL` a checkpoint syncs the WAL, copies its
/// frames into the database file and syncs that: for a cache that is
/// being filled, most of the time of a write was this disk wait. The
/// writer connection turns SQLite's automatic checkpoint off and asks
/// this thread instead once [`Checkpointer::EVERY_BYTES`] have been
/// committed; a `PASSIVE` checkpoint runs alongside later writes. If the
/// WAL still grows past [`Checkpointer::MAX_BEHIND_BYTES`] (the disk is
/// slower than the writes), the writer checkpoints inline, which bounds
/// the WAL. The last connection to close checkpoints what is left and
/// removes the WAL, as before.
pub(crate) struct Checkpointer {
    state: Mutex<CheckpointState>,
    changed: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct CheckpointState {
    /// Bytes committed since the last checkpoint was started.
    since_last: u64,
    /// Bytes committed since the last checkpoint completed.
    behind: u64,
    requested: bool,
    closed: bool,
}

impl Default for Checkpointer {
    fn default() -> Self {
        Checkpointer {
            state: Mutex::default(),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        }
    }
}

/// What the writer should do after a commit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterCommit {
    Nothing,
    /// Start the checkpoint thread (it is not running yet) and ask it.
    StartThread,
    /// The WAL is too far behind: checkpoint inline.
    CheckpointInline,
}

impl Checkpointer {
    /// Committed bytes between checkpoint requests.
    pub(crate) const EVERY_BYTES: u64 = 64 << 20;
    /// Uncheckpointed bytes at which the writer checkpoints itself.
    pub(crate) const MAX_BEHIND_BYTES: u64 = 512 << 20;

    /// Records `bytes` committed; says what the writer should do.
    pub(crate) fn committed(&self, bytes: u64) -> AfterCommit {
        let mut st = self.state.lock();
        st.since_last += bytes;
        st.behind += bytes;
        if st.behind >= Self::MAX_BEHIND_BYTES {
            return AfterCommit::CheckpointInline;
        }
        if st.since_last >= Self::EVERY_BYTES && !st.closed {
            st.since_last = 0;
            st.requested = true;
            self.changed.notify_all();
            if self.thread.lock().is_none() {
                return AfterCommit::StartThread;
            }
        }
        AfterCommit::Nothing
    }

    /// Records a completed checkpoint that covered everything committed
    /// before it started (`behind_at_start` bytes).
    pub(crate) fn completed(&self, behind_at_start: u64) {
        let mut st = self.state.lock();
        st.behind = st.behind.saturating_sub(behind_at_start);
    }

    /// Bytes not yet checkpointed (taken when a checkpoint starts).
    pub(crate) fn behind(&self) -> u64 {
        self.state.lock().behind
    }

    /// Starts the thread with `run` (which calls [`Self::next`] in a loop).
    pub(crate) fn start(&self, run: impl FnOnce() + Send + 'static) {
        let mut t = self.thread.lock();
        if t.is_some() {
            return;
        }
        match std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(run)
        {
            Ok(h) => *t = Some(h),
            // Without the thread the WAL is bounded by the writer's inline
            // checkpoints.
            Err(err) => tracing::debug!(error = %err, "no checkpoint thread"),
        }
    }

    /// Waits for a request; `false` once closed.
    pub(crate) fn next(&self) -> bool {
        let mut st = self.state.lock();
        while !st.requested && !st.closed {
            self.changed.wait(&mut st);
        }
        if st.closed {
            return false;
        }
        st.requested = false;
        true
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&self) {
        self.state.lock().closed = true;
        self.changed.notify_all();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}
