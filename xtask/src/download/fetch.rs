//! One file's resumable, parallel ranged download.
//!
//! Model: the file is fetched into `<file>.part` through
//! `disk_blob::HttpBlob` (the same client as the lazy disk stack: HEAD for
//! the length and validators, then Range GETs pinned to them with
//! `If-Match`/`If-Range`, retries with backoff, redirects, TLS, redacted
//! errors). The missing byte ranges are cut into pieces aligned to the
//! piece size and fetched `jobs` at a time; each piece is written at its
//! offset. A small sidecar `<file>.part.json` ([`PartState`]) records the
//! URL without its query, the validators and length seen at open, and the
//! byte ranges that are on disk.
//!
//! Invariants:
//! - A range is recorded in the sidecar only after its bytes were written
//!   and the `.part` was `fdatasync`ed, so a recorded range is on disk even
//!   after a crash. The sidecar is replaced atomically (write, fsync,
//!   rename).
//! - A `.part` is resumed only if the sidecar matches the server's current
//!   URL path, length and validators, and the server has at least one
//!   validator (without one, a changed image cannot be detected, so the
//!   download starts from zero). Otherwise, and when a read reports that
//!   the image changed during this run, the download restarts from zero:
//!   bytes of two versions are never mixed.
//! - The final file appears only complete: its length is checked against
//!   the server's `Content-Length` (and, by default, the catalog size
//!   before anything is fetched), it is `fsync`ed, then renamed into place
//!   atomically and the directory is synced.
//! - No URL query (SAS token) is printed or stored: messages use redacted
//!   URLs, the sidecar stores the URL without its query.
//!
//! DEVNOTE: this stays in xtask rather than becoming a crate. Its HTTP
//! client is already a crate (`disk_blob::HttpBlob`), and what is left is
//! tied to `download-image`: errors name catalog artifacts and advise its
//! options (`--base-url`, `--output-folder`), progress goes to its bars.
//! It is tested alone already: the range, resume, validator and full-disk
//! rules by the unit tests below, and whole downloads (interruption and
//! Ctrl-C, resume, an image that changes, TLS, parallel ranges) by
//! `xtask/tests/download_image.rs` against nginx and the fault server. A
//! crate would add an interface, not a test.

use super::progress::FileProgress;
use super::progress::Progress;
use anyhow::Context as _;
use anyhow::Result;
use disk_blob::Blob as _;
use disk_blob::BlobError;
use disk_blob::HttpBlob;
use disk_blob::HttpBlobOptions;
use futures::StreamExt as _;
use indicatif::HumanBytes;
use serde::Deserialize;
use serde::Serialize;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vmm_test_images::KnownTestArtifacts;

/// How often completed ranges are checkpointed into the sidecar while a
/// download runs (also done on every exit path).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// How many times a download restarts from zero because the image changed
/// on the server while it ran.
const MAX_RESTARTS: u32 = 2;

/// The sidecar format version.
const STATE_VERSION: u32 = 1;

/// What is recorded beside a `.part` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// The URL without its query and fragment.
    pub url: String,
    /// The `ETag` seen at open.
    pub etag: Option<String>,
    /// The `Last-Modified` seen at open.
    pub last_modified: Option<String>,
    /// The blob length seen at open.
    pub length: u64,
    /// Byte ranges `[start, end)` on disk, sorted and merged.
    pub completed: Vec<(u64, u64)>,
}

impl PartState {
    /// Bytes recorded as on disk.
    pub(crate) fn completed_bytes(&self) -> u64 {
        self.completed.iter().map(|(s, e)| e - s).sum()
    }

    /// Records `[start, end)` as on disk, keeping the list merged.
    fn add(&mut self, start: u64, end: u64) {
        self.completed.push((start, end));
        self.completed.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.completed.len());
        for &(s, e) in &self.completed {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.completed = merged;
    }

    /// The missing ranges, cut into pieces aligned to `piece`.
    fn missing_pieces(&self, piece: u64) -> Vec<(u64, u64)> {
        let piece = piece.max(1);
        let mut out = Vec::new();
        let mut cursor = 0;
        let mut gaps = Vec::new();
        for &(s, e) in &self.completed {
            if s > cursor {
                gaps.push((cursor, s.min(self.length)));
            }
            cursor = cursor.max(e);
        }
        if cursor < self.length {
            gaps.push((cursor, self.length));
        }
        for (mut s, e) in gaps {
            while s < e {
                let next = ((s / piece) + 1).saturating_mul(piece).min(e);
                out.push((s, next));
                s = next;
            }
        }
        out
    }

    /// Why this state cannot be resumed against `other` (fresh from the
    /// server), or `None` if it can.
    fn mismatch(&self, other: &PartState) -> Option<&'static str> {
        if self.version != STATE_VERSION {
            Some("the progress file has another format version")
        } else if self.url != other.url {
            Some("it was started from another URL")
        } else if other.etag.is_none() && other.last_modified.is_none() {
            Some("the server sends no ETag or Last-Modified, so a resume could mix two versions")
        } else if self.etag != other.etag || self.last_modified != other.last_modified {
            Some("the image on the server changed (ETag/Last-Modified differ)")
        } else if self.length != other.length {
            Some("the image on the server has another length")
        } else if self
            .completed
            .iter()
            .any(|&(s, e)| s >= e || e > self.length)
        {
            Some("the progress file is inconsistent")
        } else {
            None
        }
    }
}

/// The paths of one download.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The final file.
    pub dest: PathBuf,
}

impl Target {
    /// `<file>.part`.
    pub(crate) fn part(&self) -> PathBuf {
        with_suffix(&self.dest, ".part")
    }

    /// `<file>.part.json`.
    pub(crate) fn state(&self) -> PathBuf {
        with_suffix(&self.dest, ".part.json")
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Settings of a download run.
#[derive(Debug, Clone)]
pub(crate) struct FetchOptions {
    /// Range requests in flight at once.
    pub jobs: usize,
    /// Bytes per range request.
    pub piece_size: u64,
    /// Test hook: stop (as if interrupted) once this many bytes were
    /// fetched in this run.
    pub stop_after_bytes: Option<u64>,
    /// Extra trusted root certificates (PEM), for test servers.
    pub extra_roots: Vec<Vec<u8>>,
    /// Becomes `true` when the user interrupts (Ctrl-C): the download
    /// checkpoints its progress and stops.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

/// The user interrupted the download; progress was kept.
#[derive(Debug)]
pub(crate) struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Resolves once `cancel` is `true`; never if its sender is gone.
async fn cancelled(cancel: &mut tokio::sync::watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One image to fetch.
pub(crate) struct Job<'a> {
    /// The catalog entry.
    pub artifact: KnownTestArtifacts,
    /// The URL (may hold a secret query; never print it).
    pub url: &'a str,
    /// Where it goes.
    pub target: Target,
    /// The size the catalog promises, unless the check is disabled.
    pub expected_size: Option<u64>,
}

/// What a successful download did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fetched {
    /// The file's length.
    pub len: u64,
    /// Bytes fetched from the server in this run.
    pub fetched: u64,
    /// Bytes that a resumed `.part` already held.
    pub resumed: u64,
}

/// Why a piece failed.
enum PieceError {
    Blob(BlobError),
    Io(io::Error),
    Stopped(u64),
    Interrupted,
}

/// Downloads `job` to its target, resuming a matching `.part`.
pub(crate) async fn fetch(
    job: &Job<'_>,
    opts: &FetchOptions,
    progress: &Progress,
) -> Result<Fetched> {
    let a = job.artifact;
    let redacted = url_redact::redact_url(job.url);
    let mut restarts = 0;
    let mut fetched_total = 0;
    let mut cancel = opts.cancel.clone();
    loop {
        let blob = tokio::select! {
            blob = open(job, opts) => blob?,
            _ = cancelled(&mut cancel) => return Err(explain(job, &redacted, PieceError::Interrupted)),
        };
        let len = blob.len();
        if let Some(expected) = job.expected_size
            && expected != len
        {
            anyhow::bail!(
                "{a} ({}): the server has {len} bytes at {redacted} but the catalog says {expected}; \
                 the store holds another version of this image than the catalog describes: \
                 check the base URL (--base-url / PETRI_ARTIFACT_BASE_URL) or update the catalog",
                a.file_name()
            );
        }
        if job.expected_size.is_none() {
            progress.adjust_total(a.size(), len);
        }
        let validators = blob.validators();
        let fresh = PartState {
            version: STATE_VERSION,
            url: url_redact::strip_query(job.url).to_string(),
            etag: validators.etag.clone(),
            last_modified: validators.last_modified.clone(),
            length: len,
            completed: Vec::new(),
        };
        let (state, file) = prepare_part(job, fresh, progress)?;
        let resumed = state.completed_bytes();
        let fp = progress.start_file(a.cli_name(), len, resumed);
        let result = run_pieces(blob, file, state, job, opts, &fp).await;
        match result {
            Ok(fetched) => {
                fp.finish();
                fetched_total += fetched;
                finalize(&job.target, len)
                    .with_context(|| format!("{a}: finishing {}", job.target.dest.display()))?;
                return Ok(Fetched {
                    len,
                    fetched: fetched_total,
                    resumed: if restarts == 0 { resumed } else { 0 },
                });
            }
            Err((PieceError::Blob(e), done, fetched))
                if e.is_image_changed() && restarts < MAX_RESTARTS =>
            {
                fp.restart(done);
                fp.finish();
                fetched_total += fetched;
                restarts += 1;
                progress.println(&format!(
                    "download-image: {a}: the image changed on the server during the download ({e}); restarting from zero"
                ));
                discard(&job.target)?;
            }
            Err((e, _, _)) => {
                fp.finish();
                return Err(explain(job, &redacted, e));
            }
        }
    }
}

async fn open(job: &Job<'_>, opts: &FetchOptions) -> Result<HttpBlob> {
    let http = HttpBlobOptions {
        max_connections: opts.jobs.max(1),
        max_request_size: usize::try_from(opts.piece_size).unwrap_or(usize::MAX),
        // Every byte is asked for explicitly, `jobs` pieces at a time; a
        // readahead would fetch pieces twice or past an interruption.
        readahead: 0,
        extra_root_certificates: opts.extra_roots.clone(),
        user_agent: concat!("xtask-download-image/", env!("CARGO_PKG_VERSION")).to_string(),
        ..HttpBlobOptions::default()
    };
    let redacted = url_redact::redact_url(job.url);
    HttpBlob::open(job.url, http)
        .await
        .map_err(|e| explain(job, &redacted, PieceError::Blob(e)))
}

/// Opens (or creates) the `.part` and decides between resuming and
/// starting from zero. Returns the state to continue from.
fn prepare_part(job: &Job<'_>, fresh: PartState, progress: &Progress) -> Result<(PartState, File)> {
    let a = job.artifact;
    let part = job.target.part();
    let state_path = job.target.state();
    if let Some(dir) = job.target.dest.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_explain(a, &format!("creating {}", dir.display()), e))?;
    }
    let old = read_state(&state_path);
    let part_len = std::fs::metadata(&part).ok().map(|m| m.len());
    let resume = match (&old, part_len) {
        (Some(old), Some(plen)) => match old.mismatch(&fresh) {
            None if plen == fresh.length => Ok(old.clone()),
            None => Err("the .part file has the wrong length"),
            Some(why) => Err(why),
        },
        (Some(_), None) => Err("the .part file is missing"),
        (None, Some(_)) => Err("there is no progress file beside it"),
        (None, None) => Err(""),
    };
    let state = match resume {
        Ok(state) => state,
        Err(why) => {
            if !why.is_empty() {
                progress.println(&format!(
                    "download-image: {a}: not resuming {}: {why}; starting from zero",
                    part.display()
                ));
            }
            discard(&job.target)?;
            fresh
        }
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&part)
        .map_err(|e| io_explain(a, &format!("opening {}", part.display()), e))?;
    file.set_len(state.length)
        .map_err(|e| io_explain(a, &format!("sizing {}", part.display()), e))?;
    write_state(&state_path, &state)
        .map_err(|e| io_explain(a, &format!("writing {}", state_path.display()), e))?;
    Ok((state, file))
}

/// Fetches the missing pieces. On failure, returns the error with the
/// bytes on disk for this file and the bytes fetched in this attempt; the
/// sidecar is checkpointed on every exit path.
async fn run_pieces(
    blob: HttpBlob,
    file: File,
    mut state: PartState,
    job: &Job<'_>,
    opts: &FetchOptions,
    fp: &FileProgress<'_>,
) -> Result<u64, (PieceError, u64, u64)> {
    let blob = Arc::new(blob);
    let file = Arc::new(file);
    let state_path = job.target.state();
    let pieces = state.missing_pieces(opts.piece_size);
    let mut stream = futures::stream::iter(pieces)
        .map(|(start, end)| {
            let blob = blob.clone();
            let file = file.clone();
            async move {
                let len = usize::try_from(end - start).map_err(|_| {
                    PieceError::Io(io::Error::other("piece does not fit in memory"))
                })?;
                let mut buf = vec![0u8; len];
                blob.read(&mut buf, start).await.map_err(PieceError::Blob)?;
                tokio::task::spawn_blocking(move || write_all_at(&file, &buf, start))
                    .await
                    .map_err(|e| PieceError::Io(io::Error::other(e)))?
                    .map_err(PieceError::Io)?;
                Ok::<_, PieceError>((start, end))
            }
        })
        .buffer_unordered(opts.jobs.max(1));
    let mut ticker = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Ranges written but not yet synced and recorded.
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut fetched = 0u64;
    let mut cancel = opts.cancel.clone();
    let outcome = loop {
        tokio::select! {
            _ = cancelled(&mut cancel) => break Err(PieceError::Interrupted),
            next = stream.next() => match next {
                None => break Ok(()),
                Some(Ok((start, end))) => {
                    pending.push((start, end));
                    fetched += end - start;
                    fp.inc(end - start);
                    if let Some(limit) = opts.stop_after_bytes
                        && fetched >= limit
                    {
                        break Err(PieceError::Stopped(fetched));
                    }
                }
                Some(Err(e)) => break Err(e),
            },
            _ = ticker.tick() => {
                if !pending.is_empty()
                    && let Err(e) = checkpoint(&file, &state_path, &mut state, &mut pending).await
                {
                    break Err(PieceError::Io(e));
                }
            }
        }
    };
    // Stop the pieces still in flight before the last checkpoint.
    drop(stream);
    let saved = checkpoint(&file, &state_path, &mut state, &mut pending).await;
    let done = state.completed_bytes();
    match (outcome, saved) {
        (Ok(()), Ok(())) => Ok(fetched),
        (Err(e), _) => Err((e, done, fetched)),
        (Ok(()), Err(e)) => Err((PieceError::Io(e), done, fetched)),
    }
}

/// Syncs the `.part`, then records `pending` ranges in the sidecar.
async fn checkpoint(
    file: &Arc<File>,
    state_path: &Path,
    state: &mut PartState,
    pending: &mut Vec<(u64, u64)>,
) -> io::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.sync_data())
        .await
        .map_err(io::Error::other)??;
    for (s, e) in pending.drain(..) {
        state.add(s, e);
    }
    let path = state_path.to_owned();
    let snapshot = state.clone();
    tokio::task::spawn_blocking(move || write_state(&path, &snapshot))
        .await
        .map_err(io::Error::other)?
}

/// Reads a sidecar; `None` if it is missing or unreadable (then the
/// download starts from zero).
pub(crate) fn read_state(path: &Path) -> Option<PartState> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Replaces the sidecar atomically (temp file, fsync, rename).
fn write_state(path: &Path, state: &PartState) -> io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    {
        let mut f = File::create(&tmp)?;
        io::Write::write_all(&mut f, &json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Removes a `.part` and its sidecar (missing files are fine).
fn discard(target: &Target) -> Result<()> {
    for p in [target.part(), target.state()] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(())
}

/// Checks the `.part`'s length, syncs it, renames it into place, removes
/// the sidecar and syncs the directory.
fn finalize(target: &Target, len: u64) -> Result<()> {
    let part = target.part();
    let f = OpenOptions::new()
        .write(true)
        .open(&part)
        .with_context(|| format!("opening {}", part.display()))?;
    let actual = f.metadata()?.len();
    if actual != len {
        anyhow::bail!(
            "{} has {actual} bytes, the server's Content-Length is {len}",
            part.display()
        );
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", part.display()))?;
    drop(f);
    std::fs::rename(&part, &target.dest)
        .with_context(|| format!("renaming {} to {}", part.display(), target.dest.display()))?;
    match std::fs::remove_file(target.state()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing {}", target.state().display()));
        }
    }
    sync_dir(target.dest.parent())
}

#[cfg(unix)]
fn sync_dir(dir: Option<&Path>) -> Result<()> {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(not(unix))]
fn sync_dir(_dir: Option<&Path>) -> Result<()> {
    // DEVNOTE: directories cannot be opened for syncing on Windows; the
    // rename is durable once the file system flushes its metadata.
    Ok(())
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Whether `e` says the disk is full.
fn is_no_space(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded
}

/// A local I/O failure, with advice for a full disk.
fn io_explain(a: KnownTestArtifacts, what: &str, e: io::Error) -> anyhow::Error {
    let advice = if is_no_space(&e) {
        format!(
            "\n  what to do: no space left for {} ({}): free space, or pass --output-folder (or set VMM_TEST_IMAGES) to a folder on a larger disk",
            a.file_name(),
            HumanBytes(a.size())
        )
    } else {
        String::new()
    };
    anyhow::anyhow!("{a}: {what}: {e}{advice}")
}

/// Turns a failure into the user-facing error: the artifact, the redacted
/// URL, the HTTP status or I/O cause, and what to do.
fn explain(job: &Job<'_>, redacted: &str, e: PieceError) -> anyhow::Error {
    let a = job.artifact;
    let part = job.target.part();
    let resume = if job.target.state().exists() {
        format!(
            "\n  progress so far is kept in {}; running the same command again resumes it",
            part.display()
        )
    } else {
        String::new()
    };
    match e {
        PieceError::Interrupted => anyhow::Error::new(Interrupted(format!(
            "{a}: interrupted{}",
            if resume.is_empty() {
                "; nothing was kept"
            } else {
                &resume
            }
        ))),
        PieceError::Stopped(n) => {
            anyhow::anyhow!("{a}: stopped after fetching {n} bytes (--stop-after-bytes){resume}")
        }
        PieceError::Io(e) => {
            let err = io_explain(a, &format!("writing {}", part.display()), e);
            anyhow::anyhow!("{err:#}{resume}")
        }
        PieceError::Blob(e) => {
            let advice = match blob_advice(a, &e) {
                Some(advice) => format!("\n  what to do: {advice}"),
                None => String::new(),
            };
            anyhow::anyhow!(
                "{a} ({}): download from {redacted} failed: {}{advice}{resume}",
                a.file_name(),
                error_chain(&e)
            )
        }
    }
}

/// An error and its sources on one line (`a: b: c`), without repeats.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// What the user can do about a blob error.
fn blob_advice(a: KnownTestArtifacts, e: &BlobError) -> Option<String> {
    const BASE: &str = "--base-url / PETRI_ARTIFACT_BASE_URL";
    Some(match e {
        // The error itself says what a refused SAS means (the wording is
        // disk_blob's, shared with serve-nbd); this adds where it comes from.
        BlobError::AccessRefused { .. } => format!(
            "put the fresh SAS token or signature in the query of {BASE}, the whole base URL in single quotes"
        ),
        BlobError::HttpStatus { status: 404, .. } => format!(
            "{} is not at that URL (HTTP 404): check the base URL ({BASE}; default {}) and that the store holds this file",
            a.file_name(),
            vmm_test_images::default_base_url()
        ),
        BlobError::HttpStatus { status, .. } if *status >= 500 || *status == 429 => format!(
            "the store failed (HTTP {status}) after retries: try again later"
        ),
        BlobError::HttpStatus { status, .. } => format!(
            "the store answered HTTP {status}: check {BASE}"
        ),
        BlobError::Connect { .. } | BlobError::Timeout { .. } => format!(
            "cannot reach the store: check the network and the host in {BASE} \
             (HTTP_PROXY and friends are not used; a caching proxy can be set as the base URL)"
        ),
        BlobError::Tls { .. } => format!(
            "the TLS handshake failed: check that the store's certificate is valid for its host ({BASE})"
        ),
        BlobError::Unexpected200 { .. } => {
            "the server ignores Range requests; serve the images from one that supports them (nginx, Azure blob storage)".to_string()
        }
        BlobError::ImageChanged { .. } => {
            "the image kept changing on the server while it was downloaded; try again once the store is stable".to_string()
        }
        BlobError::InvalidUrl { .. } => format!("fix the base URL ({BASE})"),
        BlobError::Io { source, .. } if is_no_space(source) => {
            "no space left on the disk: free space or choose another --output-folder".to_string()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(len: u64, completed: &[(u64, u64)]) -> PartState {
        PartState {
            version: STATE_VERSION,
            url: "http://h/a.vhd".into(),
            etag: Some("\"e\"".into()),
            last_modified: None,
            length: len,
            completed: completed.to_vec(),
        }
    }

    #[test]
    fn ranges_merge() {
        let mut s = state(100, &[]);
        s.add(10, 20);
        s.add(30, 40);
        s.add(20, 30);
        s.add(0, 5);
        assert_eq!(s.completed, [(0, 5), (10, 40)]);
        assert_eq!(s.completed_bytes(), 35);
    }

    #[test]
    fn missing_pieces_are_aligned_and_cover_the_gaps() {
        let s = state(100, &[(10, 40), (64, 70)]);
        assert_eq!(
            s.missing_pieces(32),
            [(0, 10), (40, 64), (70, 96), (96, 100)]
        );
        assert_eq!(state(0, &[]).missing_pieces(8), []);
        assert_eq!(state(8, &[(0, 8)]).missing_pieces(8), []);
        assert_eq!(state(9, &[]).missing_pieces(0).len(), 9);
    }

    #[test]
    fn resume_requires_matching_validators() {
        let fresh = state(100, &[]);
        assert_eq!(state(100, &[(0, 50)]).mismatch(&fresh), None);
        let mut other = fresh.clone();
        other.etag = Some("\"f\"".into());
        assert!(state(100, &[]).mismatch(&other).is_some());
        let mut none = fresh.clone();
        none.etag = None;
        let mut old = state(100, &[]);
        old.etag = None;
        assert!(old.mismatch(&none).unwrap().contains("no ETag"));
        assert!(state(99, &[]).mismatch(&fresh).is_some());
        let mut moved = fresh.clone();
        moved.url = "http://other/a.vhd".into();
        assert!(state(100, &[]).mismatch(&moved).is_some());
        assert!(state(100, &[(0, 101)]).mismatch(&fresh).is_some());
    }

    #[test]
    fn a_full_disk_names_the_way_out() {
        let a = KnownTestArtifacts::Alpine323X64Vhd;
        let e = io_explain(a, "writing x.part", io::ErrorKind::StorageFull.into()).to_string();
        assert!(e.contains("Alpine323X64Vhd"), "{e}");
        assert!(e.contains("no space left"), "{e}");
        assert!(e.contains("--output-folder"), "{e}");
        let e = io_explain(a, "writing x.part", io::ErrorKind::PermissionDenied.into()).to_string();
        assert!(!e.contains("no space left"), "{e}");
    }

    #[test]
    fn error_chains_are_flattened_without_repeats() {
        let inner = io::Error::other("connection reset");
        let outer = BlobError::Io {
            context: "GET http://h/a.vhd?<redacted>".into(),
            source: inner,
        };
        assert_eq!(
            error_chain(&outer),
            "GET http://h/a.vhd?<redacted>: connection reset"
        );
    }

    #[test]
    fn state_round_trips_through_the_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.part.json");
        let s = state(100, &[(0, 8)]);
        write_state(&p, &s).unwrap();
        assert_eq!(read_state(&p), Some(s));
        std::fs::write(&p, b"{ not json").unwrap();
        assert_eq!(read_state(&p), None);
    }
}
