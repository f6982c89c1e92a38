//! Sequential readahead: which reads are sequential, which aligned pieces
//! are fetched ahead by spawned tasks, and how a read is served from them
//! (see [`HttpBlobOptions::readahead`] and [`HttpBlob`]).

use super::HttpBlob;
use super::HttpBlobOptions;
use super::piece_pool::PieceBuf;
use super::piece_pool::PiecePool;
use crate::BlobError;
use crate::check_blob_range;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::future::Shared;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::collections::btree_map;
use std::sync::Arc;

/// Sequential readahead state (see [`HttpBlobOptions::readahead`]).
pub(super) struct Readahead {
    /// Most bytes fetched ahead of a sequential reader.
    max_window: u64,
    state: Mutex<ReadaheadState>,
    buffers: Arc<PiecePool>,
}

#[derive(Default)]
struct ReadaheadState {
    /// Recent sequential streams, most recently used last (at most
    /// [`MAX_STREAMS`]).
    streams: Vec<Stream>,
    /// Prefetched (or in-flight) aligned pieces, by start offset.
    pieces: BTreeMap<u64, Prefetch>,
    /// Whole pieces a demand read is fetching right now: not fetched
    /// ahead (that would fetch them twice).
    demand: BTreeSet<u64>,
    /// Whole pieces read recently (at most [`MAX_CONSUMED`], oldest
    /// first): not fetched ahead again. Above a read cache, a piece that
    /// was read once is in the cache and will not be read from here again.
    consumed: VecDeque<u64>,
    consumed_set: BTreeSet<u64>,
}

/// One sequential reader: where it reads next and how long it has been
/// sequential.
struct Stream {
    next: u64,
    run: u32,
}

/// Sequential streams tracked at once. Several clients (or several
/// connections of one NBD client) read different regions concurrently;
/// with one stream they would reset each other and look random.
const MAX_STREAMS: usize = 8;
/// Consumed pieces remembered (see [`ReadaheadState::consumed`]).
const MAX_CONSUMED: usize = 1024;

impl ReadaheadState {
    /// Notes a read of `offset..end`: returns how many sequential reads in
    /// a row its stream has seen (0: not sequential).
    fn note_read(&mut self, offset: u64, end: u64) -> u32 {
        match self.streams.iter().position(|s| s.next == offset) {
            Some(i) => {
                let mut s = self.streams.remove(i);
                s.run = s.run.saturating_add(1);
                s.next = end;
                let run = s.run;
                self.streams.push(s);
                run
            }
            None => {
                if self.streams.len() >= MAX_STREAMS {
                    self.streams.remove(0);
                }
                self.streams.push(Stream { next: end, run: 0 });
                0
            }
        }
    }

    fn mark_consumed(&mut self, start: u64) {
        if self.consumed_set.insert(start) {
            self.consumed.push_back(start);
            if self.consumed.len() > MAX_CONSUMED
                && let Some(old) = self.consumed.pop_front()
            {
                self.consumed_set.remove(&old);
            }
        }
    }
}

type PrefetchFuture = Shared<BoxFuture<'static, Option<Arc<PieceBuf>>>>;

/// One aligned piece fetched ahead by a spawned task. The result is `None`
/// if the fetch failed or was aborted; the reader then fetches the piece
/// itself, so errors are always reported by a demand read.
struct Prefetch {
    data: PrefetchFuture,
    abort: tokio::task::AbortHandle,
}

impl Readahead {
    /// Readahead for a blob read in pieces of `piece` bytes, fetching at
    /// most `opts.readahead` bytes ahead; `None` if that is zero.
    pub(super) fn new(opts: &HttpBlobOptions, piece: u64) -> Option<Readahead> {
        (opts.readahead > 0).then(|| Readahead {
            max_window: opts.readahead as u64,
            state: Mutex::new(ReadaheadState::default()),
            buffers: PiecePool::new(
                // One stream's window and what is being read from it.
                (2 * (opts.readahead as u64).div_ceil(piece) + 2) as usize,
            ),
        })
    }

    /// Stops every prefetch in flight (the blob is being dropped).
    pub(super) fn abort_all(&self) {
        for p in self.state.lock().pieces.values() {
            p.abort.abort();
        }
    }
}

impl HttpBlob {
    /// Reads `buf` at `offset`: from prefetched pieces where there are
    /// some, else with range requests; starts fetching ahead of a
    /// sequential reader.
    pub(super) async fn read_inner(&self, buf: &mut [u8], offset: u64) -> Result<(), BlobError> {
        let inner = &self.inner;
        check_blob_range(offset, buf.len(), inner.len)?;
        if buf.is_empty() {
            return Ok(());
        }
        if disk_backend::io_hints::current().background {
            // A prefetch: it is not a sequential reader to fetch ahead
            // for, and it already asks for whole runs; one request each.
            return inner.read_background(buf, offset).await;
        }
        let Some(ra) = &self.readahead else {
            return inner.read_pieces(buf, offset).await;
        };
        let end = offset + buf.len() as u64;
        let piece = inner.piece;
        // Under the lock: pick up prefetched pieces this read covers, note
        // whether the reader is sequential and start fetching ahead.
        let mut found: Vec<(u64, PrefetchFuture)> = Vec::new();
        // Whole pieces this read fetches itself (see `demand`).
        let mut whole: Vec<u64> = Vec::new();
        {
            let mut st = ra.state.lock();
            let run = st.note_read(offset, end);
            let sequential = run > 0;
            let first = offset - offset % piece;
            for (&start, p) in st.pieces.range(first..end) {
                found.push((start, p.data.clone()));
            }
            let mut start = offset.div_ceil(piece).saturating_mul(piece);
            while start < end {
                let piece_end = start.saturating_add(piece).min(inner.len);
                if piece_end > end {
                    break;
                }
                if !st.pieces.contains_key(&start) {
                    whole.push(start);
                }
                st.mark_consumed(start);
                start = piece_end;
            }
            st.demand.extend(whole.iter().copied());
            // Pieces this read uses up entirely are no longer needed. (A
            // piece behind a sequential reader may belong to another
            // stream, or to a read of this one that arrives out of order;
            // the cap below bounds what such pieces hold.)
            st.pieces.retain(|&start, _| {
                let piece_end = start.saturating_add(piece).min(inner.len);
                !(start >= offset && piece_end <= end)
            });
            if sequential && let Ok(rt) = tokio::runtime::Handle::try_current() {
                // The window doubles with each sequential read, from two
                // pieces up to the configured maximum.
                let window = piece
                    .saturating_mul(1 << run.min(16))
                    .min(ra.max_window.max(piece));
                let mut start = end.div_ceil(piece).saturating_mul(piece);
                while start < inner.len && start < end.saturating_add(window) {
                    if st.demand.contains(&start) || st.consumed_set.contains(&start) {
                        start = start.saturating_add(piece);
                        continue;
                    }
                    if let btree_map::Entry::Vacant(slot) = st.pieces.entry(start) {
                        let n = (inner.len - start).min(piece) as usize;
                        let task_inner = inner.clone();
                        let buffers = ra.buffers.clone();
                        let task = rt.spawn(async move {
                            let mut v = buffers.take(n);
                            task_inner.read_range(&mut v, start).await.ok()?;
                            Some(Arc::new(v))
                        });
                        let abort = task.abort_handle();
                        let data = async move { task.await.ok().flatten() }.boxed().shared();
                        slot.insert(Prefetch { data, abort });
                    }
                    start = start.saturating_add(piece);
                }
            }
            // Bound the memory held by pieces of abandoned sequential runs:
            // drop (and stop fetching) those farthest from this read.
            // (Per sequential stream: one stream's pieces must not push out
            // another's.)
            let active = st.streams.iter().filter(|s| s.run > 0).count().max(1);
            let cap = (2 * ra.max_window.div_ceil(piece) + 2) as usize * active;
            if st.pieces.len() > cap {
                let mut keys: Vec<u64> = st.pieces.keys().copied().collect();
                keys.sort_by_key(|&k| std::cmp::Reverse(k.abs_diff(offset)));
                for k in keys.into_iter().take(st.pieces.len() - cap) {
                    if let Some(p) = st.pieces.remove(&k) {
                        p.abort.abort();
                    }
                }
            }
        }
        let r = self.read_with(found, buf, offset).await;
        if !whole.is_empty() {
            let mut st = ra.state.lock();
            for start in whole {
                st.demand.remove(&start);
            }
        }
        r
    }

    /// Reads `buf` at `offset`, taking the pieces in `found` from their
    /// prefetches.
    async fn read_with(
        &self,
        found: Vec<(u64, PrefetchFuture)>,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), BlobError> {
        let inner = &self.inner;
        let piece = inner.piece;
        if found.is_empty() {
            return inner.read_pieces(buf, offset).await;
        }
        // Split at piece boundaries; serve each piece from its prefetch if
        // there is one (and it succeeded), else with a range request.
        let mut parts = Vec::new();
        let mut rest = buf;
        let mut off = offset;
        while !rest.is_empty() {
            let start = off - off % piece;
            let n = (rest.len() as u64).min(start.saturating_add(piece) - off) as usize;
            let (head, tail) = rest.split_at_mut(n);
            let pre = found
                .iter()
                .find(|(s, _)| *s == start)
                .map(|(_, f)| f.clone());
            parts.push(async move {
                if let Some(pre) = pre
                    && let Some(data) = pre.await
                {
                    let at = (off - start) as usize;
                    if let Some(src) = data.get(at..at + head.len()) {
                        head.copy_from_slice(src);
                        return Ok(());
                    }
                }
                inner.read_range(head, off).await
            });
            rest = tail;
            off += n as u64;
        }
        futures::future::try_join_all(parts).await?;
        Ok(())
    }
}
