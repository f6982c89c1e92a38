//! `petri-tool cache list | prune | verify`: look after the read-cache
//! directory that remote disks share.
//!
//! The directory is `--cache-dir`, else petri's cache directory rule
//! (`PETRI_CACHE_DIR`, else the per-user cache folder). Each entry is one
//! cached image (see `disklayer_sqlite::cache_entries`):
//!
//! - `list` prints one row per entry (or JSON with `--json`): where the
//!   image is (URL without its query), which version (VHD id, VHDX data
//!   write GUID or the server's validator), disk size, bytes cached and
//!   their share of the disk, bytes the entry takes, last use and state
//!   (`ok`, `in use`, `corrupt-aside` when damaged files are kept aside);
//! - `prune` removes damaged files kept aside, then entries by
//!   `--entry`, `--older-than`, `--all` and `--max-size` (default
//!   `PETRI_CACHE_MAX_SIZE`), never one that a process has open, and
//!   prints what it freed; `--all` and `--older-than` also remove the
//!   image metadata (headers, block tables) of image versions not opened
//!   since (`disk_open::image_metadata`), which the next open fetches
//!   again if it needs it;
//! - `verify` checks every entry (SQLite's integrity check and every
//!   chunk's checksums) and fails, saying what to do, if any is damaged.
//!
//! Reading an entry (`list`'s cached bytes, `verify`) holds its shared
//! lock, so no process removes it meanwhile; the cache file is opened
//! read-only.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use disklayer_sqlite::SqliteDiskLayer;
use disklayer_sqlite::SqliteLayerError;
use disklayer_sqlite::cache_entries::CacheEntry;
use disklayer_sqlite::cache_entries::EntryLock;
use disklayer_sqlite::cache_entries::enforce_limit;
use disklayer_sqlite::cache_entries::list_entries;
use disklayer_sqlite::cache_entries::remove_entry;
use disklayer_sqlite::cache_entries::remove_set_aside_files;
use disklayer_sqlite::cache_entries::tree_size;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::SystemTime;

/// `petri-tool cache ...`.
#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// List the cached images: one row per entry.
    List {
        #[command(flatten)]
        dir: CacheDirArg,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove damaged files kept aside, and entries (never one in use);
    /// print what was freed.
    Prune(PruneArgs),
    /// Check every entry (SQLite's integrity and every chunk's checksums);
    /// exit non-zero if any is damaged.
    Verify {
        #[command(flatten)]
        dir: CacheDirArg,
    },
}

/// `--cache-dir`.
#[derive(clap::Args, Debug)]
pub struct CacheDirArg {
    /// The cache directory [default: $PETRI_CACHE_DIR, else
    /// $XDG_CACHE_HOME/petri or ~/.cache/petri].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

impl CacheDirArg {
    fn resolve(&self) -> Result<PathBuf> {
        match &self.cache_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(petri::cache_dir::cache_dir()?),
        }
    }
}

/// Options of `petri-tool cache prune`.
#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    dir: CacheDirArg,
    /// Remove entries, least recently used first, until the directory
    /// holds at most SIZE (bytes, or K, M, G, T: powers of 1024)
    /// [default: $PETRI_CACHE_MAX_SIZE, if set].
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    max_size: Option<u64>,
    /// Remove entries last used longer ago than DURATION (a whole number
    /// with s, m, h, d or w: `12h`, `7d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// Remove every entry (except those in use).
    #[arg(long)]
    all: bool,
    /// Remove this entry (its directory name, as `list` shows it); may be
    /// given more than once.
    #[arg(long, value_name = "NAME")]
    entry: Vec<String>,
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    petri::cache_dir::parse_size(text)
}

/// A whole number of seconds, minutes, hours, days or weeks.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let unit_secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => 0,
    };
    let n: u64 = number.parse().unwrap_or(u64::MAX);
    if unit_secs == 0 || n == u64::MAX {
        return Err(format!(
            "`{text}` is not a duration: use a whole number with s, m, h, d or w, e.g. 12h or 7d"
        ));
    }
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Runs a `cache` command.
pub fn run(command: CacheCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match command {
        CacheCommand::List { dir, json } => runtime.block_on(list(&dir.resolve()?, json)),
        CacheCommand::Prune(args) => prune(&args),
        CacheCommand::Verify { dir } => runtime.block_on(verify(&dir.resolve()?)),
    }
}

/// What an entry's cache file says about itself, read under the entry's
/// lock.
struct FileFacts {
    disk_size: u64,
    cached_bytes: u64,
}

/// Opens the entry's cache file read-only (holding the entry's lock) and
/// runs `f` on it.
async fn with_cache_file<R>(
    entry: &CacheEntry,
    f: impl AsyncFnOnce(&SqliteDiskLayer) -> Result<R, SqliteLayerError>,
) -> Result<R, SqliteLayerError> {
    let _lock = EntryLock::shared(&entry.dir)?;
    let layer = SqliteDiskLayer::open(&entry.cache_file(), true).await?;
    f(&layer).await
}

async fn file_facts(entry: &CacheEntry) -> Result<FileFacts, SqliteLayerError> {
    with_cache_file(entry, async |layer: &SqliteDiskLayer| {
        let g = layer.geometry();
        let (_, sectors) = layer.stats().await?;
        Ok(FileFacts {
            disk_size: g.sector_count * u64::from(g.sector_size),
            cached_bytes: sectors * u64::from(g.sector_size),
        })
    })
    .await
}

/// An entry's state for `list`.
fn state(entry: &CacheEntry, facts: &Result<FileFacts, SqliteLayerError>) -> String {
    let mut parts = Vec::new();
    if entry.in_use {
        parts.push("in use".to_owned());
    }
    if !entry.set_aside.is_empty() {
        parts.push("corrupt-aside".to_owned());
    }
    match (entry.cache_file_bytes, facts) {
        (None, _) => parts.push("no cache file".to_owned()),
        (Some(_), Err(SqliteLayerError::OutdatedFormat { .. })) => {
            parts.push("old format (recreated when next used)".to_owned())
        }
        (Some(_), Err(SqliteLayerError::Corrupt { .. })) => parts.push("damaged".to_owned()),
        (Some(_), Err(_)) => parts.push("unreadable".to_owned()),
        (Some(_), Ok(_)) => {}
    }
    if parts.is_empty() {
        "ok".to_owned()
    } else {
        parts.join(", ")
    }
}

fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// How long ago `t` was, roughly (`45s`, `3m`, `5h`, `2d`).
fn ago(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return "never".to_owned();
    };
    let s = SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs());
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Bytes for people: `512 B`, `3.0 MiB`, `1.2 GiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn list(cache_dir: &Path, json: bool) -> Result<()> {
    let entries = list_entries(cache_dir)
        .with_context(|| format!("listing the cache directory {}", cache_dir.display()))?;
    let mut rows = Vec::new();
    for e in &entries {
        let facts = if e.cache_file_bytes.is_some() {
            file_facts(e).await
        } else {
            Err(SqliteLayerError::NotFound {
                path: e.cache_file(),
            })
        };
        rows.push((e, state(e, &facts), facts.ok()));
    }
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|(e, state, facts)| {
                let info = e.info.clone().unwrap_or_default();
                let disk_size = facts.as_ref().map(|f| f.disk_size).or(info.disk_size);
                let cached = facts.as_ref().map(|f| f.cached_bytes);
                serde_json::json!({
                    "entry": e.name,
                    "dir": e.dir,
                    "location": info.location,
                    "identity": info.identity,
                    "disk_size": disk_size,
                    "cached_bytes": cached,
                    "cached_percent": percent(cached, disk_size),
                    "file_bytes": e.bytes,
                    "cache_file_bytes": e.cache_file_bytes,
                    "set_aside": e.set_aside.iter().map(|(p, b)| serde_json::json!({"path": p, "bytes": b})).collect::<Vec<_>>(),
                    "last_used": e.last_used.and_then(unix_secs),
                    "in_use": e.in_use,
                    "state": state,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("cache directory {}", cache_dir.display());
    if rows.is_empty() {
        println!("(no entries)");
        return Ok(());
    }
    let table: Vec<[String; 8]> = rows
        .iter()
        .map(|(e, state, facts)| {
            let info = e.info.clone().unwrap_or_default();
            let disk_size = facts.as_ref().map(|f| f.disk_size).or(info.disk_size);
            let cached = facts.as_ref().map(|f| f.cached_bytes);
            [
                e.name.clone(),
                info.location.unwrap_or_else(|| "?".into()),
                info.identity.unwrap_or_else(|| "?".into()),
                disk_size.map_or("?".into(), human),
                match (cached, percent(cached, disk_size)) {
                    (Some(c), Some(p)) => format!("{} ({p:.0}%)", human(c)),
                    (Some(c), None) => human(c),
                    _ => "?".into(),
                },
                human(e.bytes),
                ago(e.last_used),
                state.clone(),
            ]
        })
        .collect();
    let header = [
        "ENTRY",
        "LOCATION",
        "IDENTITY",
        "DISK",
        "CACHED",
        "FILE SIZE",
        "LAST USED",
        "STATE",
    ];
    let mut widths = header.map(str::len);
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let print = |cells: &[&str]| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    };
    print(&header);
    for row in &table {
        print(&row.each_ref().map(String::as_str));
    }
    let total = tree_size(cache_dir);
    println!(
        "{} in {} ({} in the directory)",
        human(rows.iter().map(|(e, ..)| e.bytes).sum()),
        count(rows.len(), "entry", "entries"),
        human(total)
    );
    Ok(())
}

/// `1 entry`, `3 entries`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn percent(cached: Option<u64>, disk: Option<u64>) -> Option<f64> {
    match (cached, disk) {
        (Some(c), Some(d)) if d > 0 => Some(c as f64 * 100.0 / d as f64),
        _ => None,
    }
}

fn prune(args: &PruneArgs) -> Result<()> {
    let cache_dir = args.dir.resolve()?;
    let max_size = match args.max_size {
        Some(m) => Some(m),
        None => petri::cache_dir::cache_max_size()?,
    };
    let before = tree_size(&cache_dir);
    let mut freed_entries = 0usize;
    let mut kept_in_use = Vec::new();
    for (path, bytes) in remove_set_aside_files(&cache_dir) {
        println!("removed {} ({})", path.display(), human(bytes));
    }
    let entries = list_entries(&cache_dir)
        .with_context(|| format!("listing the cache directory {}", cache_dir.display()))?;
    for name in &args.entry {
        if !entries.iter().any(|e| &e.name == name) {
            bail!("no entry {name} in {}", cache_dir.display());
        }
    }
    let cutoff = args.older_than.map(|d| SystemTime::now() - d);
    for e in &entries {
        let chosen = args.all
            || args.entry.contains(&e.name)
            || cutoff.is_some_and(|c| e.last_used.is_none_or(|t| t < c));
        if !chosen {
            continue;
        }
        let what = e
            .info
            .as_ref()
            .and_then(|i| i.location.clone())
            .unwrap_or_else(|| "?".into());
        match remove_entry(&cache_dir, &e.name)
            .with_context(|| format!("removing {}", e.dir.display()))?
        {
            Some(bytes) => {
                freed_entries += 1;
                println!("removed entry {} ({what}): {}", e.name, human(bytes));
            }
            None => kept_in_use.push(e.name.clone()),
        }
    }
    if args.all || cutoff.is_some() {
        let cutoff = if args.all { None } else { cutoff };
        let removed = disk_open::image_metadata::prune(&cache_dir, cutoff)
            .with_context(|| format!("removing image metadata in {}", cache_dir.display()))?;
        for (path, bytes) in removed {
            println!(
                "removed image metadata {} ({})",
                path.display(),
                human(bytes)
            );
        }
    }
    if let Some(max) = max_size {
        let done = enforce_limit(&cache_dir, max, None)
            .with_context(|| format!("keeping {} under {}", cache_dir.display(), human(max)))?;
        for (name, bytes) in &done.removed_entries {
            freed_entries += 1;
            println!(
                "removed entry {name} (least recently used): {}",
                human(*bytes)
            );
        }
        kept_in_use.extend(done.in_use);
        if done.total_after > max {
            println!(
                "the directory stays over {} ({}): the rest is entries in use and files that \
                 are not entries",
                human(max),
                human(done.total_after)
            );
        }
    }
    kept_in_use.sort();
    kept_in_use.dedup();
    for name in &kept_in_use {
        println!("kept entry {name}: in use by a running process");
    }
    let after = tree_size(&cache_dir);
    println!(
        "freed {} ({}); {} left in {}",
        human(before.saturating_sub(after)),
        count(freed_entries, "entry", "entries"),
        human(after),
        cache_dir.display()
    );
    if !args.all && args.entry.is_empty() && args.older_than.is_none() && max_size.is_none() {
        println!(
            "(only damaged files kept aside are removed without --all, --entry, --older-than or --max-size)"
        );
    }
    Ok(())
}

async fn verify(cache_dir: &Path) -> Result<()> {
    let entries = list_entries(cache_dir)
        .with_context(|| format!("listing the cache directory {}", cache_dir.display()))?;
    let mut damaged = Vec::new();
    let mut unchecked = Vec::new();
    println!(
        "checking {} in {}",
        count(entries.len(), "entry", "entries"),
        cache_dir.display()
    );
    for e in &entries {
        if e.cache_file_bytes.is_none() {
            println!("{}: no cache file", e.name);
            continue;
        }
        let report = with_cache_file(e, async |layer: &SqliteDiskLayer| layer.verify().await).await;
        match report {
            Ok(r) if r.is_ok() => println!("{}: ok ({} chunks)", e.name, r.chunks),
            Ok(r) => {
                let mut what = Vec::new();
                if !r.sqlite_problems.is_empty() {
                    what.push(format!("SQLite: {}", r.sqlite_problems.join("; ")));
                }
                if !r.damaged_chunks.is_empty() {
                    what.push(format!(
                        "{} of {} chunks do not match their checksums (chunks {:?})",
                        r.damaged_chunks.len(),
                        r.chunks,
                        r.damaged_chunks
                    ));
                }
                println!("{}: DAMAGED: {}", e.name, what.join("; "));
                damaged.push(e.name.clone());
            }
            Err(SqliteLayerError::OutdatedFormat { .. }) => {
                println!(
                    "{}: old format without checksums (recreated when next used)",
                    e.name
                )
            }
            Err(err @ SqliteLayerError::Corrupt { .. }) => {
                println!("{}: DAMAGED: {err}", e.name);
                damaged.push(e.name.clone());
            }
            Err(err) => {
                println!("{}: cannot check: {err}", e.name);
                unchecked.push(e.name.clone());
            }
        }
        if !e.set_aside.is_empty() {
            println!(
                "{}: {} damaged file(s) kept aside from earlier runs (`petri-tool cache prune` removes them)",
                e.name,
                e.set_aside.len()
            );
        }
    }
    if !damaged.is_empty() {
        let entries_args: Vec<String> = damaged.iter().map(|n| format!("--entry {n}")).collect();
        bail!(
            "{} of {} entries are damaged: {}. They repair themselves when next used (damaged \
             chunks are dropped and fetched again, a damaged file is moved aside and recreated); \
             to drop them now: petri-tool cache prune {}{}",
            damaged.len(),
            entries.len(),
            damaged.join(", "),
            entries_args.join(" "),
            dir_arg(cache_dir)
        );
    }
    if !unchecked.is_empty() {
        bail!(
            "{} entries could not be checked: {} (see above)",
            unchecked.len(),
            unchecked.join(", ")
        );
    }
    Ok(())
}

/// ` --cache-dir <dir>` unless `dir` is the default directory.
fn dir_arg(dir: &Path) -> String {
    match petri::cache_dir::cache_dir() {
        Ok(d) if d == dir => String::new(),
        _ => format!(" --cache-dir {}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "7", "d", "1.5h", "7 days", "-1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(1288490189), "1.2 GiB");
    }
}
