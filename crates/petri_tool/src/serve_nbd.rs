//! `petri-tool disk serve-nbd`: export an image's disk stack over NBD.
//!
//! The stack is the one petri's backends give a test's boot disk, described
//! by `petri::disk_stack::disk_description` (one rule for layers and for the
//! format by extension) and opened by `disk_open::open`:
//! - a URL: `[RAM diff, SQLite auto-cache (read cache), HTTP blob]`; the
//!   cache lives under `--cache-dir`, else petri's cache directory rule
//!   (`PETRI_CACHE_DIR`, else the per-user cache folder), so it is shared
//!   with test runs; `PETRI_CACHE` and `PETRI_CACHE_MAX_SIZE` apply as in
//!   tests (`off` leaves the cache out);
//! - a path: `[RAM diff, file]`.
//!
//! Lifecycle: open the stack, listen on the socket, print one line
//! `petri-tool: serving <what> (<n> bytes) at <nbd uri>` (scripts and tests
//! wait for it), serve until SIGINT or SIGTERM, finish the requests in
//! flight, print the counters (and write them as JSON with
//! `--counters-json`), remove the socket and exit 0. The counters include
//! the client's reads as the export saw them: read requests, bytes read and
//! the disk-wait time (wall time with at least one read outstanding).
//!
//! Formats: `--format auto` (the default) detects the image's format from
//! its content (magic at offset 0, a VHD footer at the end) with the
//! extension as a hint, and reads flat, fixed VHD1, dynamic VHD1, VHDX and
//! qcow2 images; another `--format` forces one.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use disk_backend::DiskCounters;
use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayerKind;
use disk_backend_resources::LayeredDiskHandle;
use disk_nbd::NbdServerOptions;
use disk_nbd::NbdStats;
use petri::DiskPath;
use std::path::Path;
use std::path::PathBuf;
use url_redact::redact_url;

/// Options of `petri-tool disk serve-nbd`.
#[derive(clap::Args, Debug)]
pub struct ServeNbdArgs {
    /// The image: an http:// or https:// URL (opened lazily with range
    /// requests) or a local file.
    #[arg(value_name = "URL_OR_PATH")]
    source: String,
    /// The Unix socket to listen on (a stale socket file is replaced).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The read-cache directory for a URL [default: $PETRI_CACHE_DIR, else
    /// $XDG_CACHE_HOME/petri or ~/.cache/petri].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The image's format. `auto` detects it from the content (magic at
    /// offset 0, a VHD footer at the end), with the extension as a hint; a
    /// name that contradicts the content is an error.
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "auto")]
    format: FormatArg,
    /// Export the disk read-only (clients' writes are refused instead of
    /// being kept in RAM).
    #[arg(long)]
    read_only: bool,
    /// Also write the final counters as JSON to this file.
    #[arg(long, value_name = "PATH")]
    counters_json: Option<PathBuf>,
    /// At exit, write the image's prefetch list (the first reads of this
    /// session merged with earlier runs on this cache) to this file:
    /// publish it next to the image in the store as
    /// `<image file name>.prefetch`. For a URL only.
    #[arg(long, value_name = "PATH")]
    record_prefetch: Option<PathBuf>,
    /// At exit, write every read the clients made (start and end time,
    /// offset, length) to this file, for `disk-bench replay`.
    #[arg(long, value_name = "PATH")]
    trace_reads: Option<PathBuf>,
}

/// `--format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FormatArg {
    /// Detected from the content, the extension as a hint.
    Auto,
    /// The image is the disk, byte for byte.
    Flat,
    /// A fixed VHD1: the disk followed by a 512-byte footer.
    Vhd1,
    /// A dynamic VHD1 (differencing VHDs are refused).
    #[value(name = "vhd1-dynamic")]
    Vhd1Dynamic,
    /// A VHDX (differencing VHDX and a log to replay are refused).
    Vhdx,
    /// A qcow2 image, version 2 or 3 (backing files, encryption and
    /// external data files are refused).
    Qcow2,
}

impl From<FormatArg> for BlobFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Auto => BlobFormat::Auto,
            FormatArg::Flat => BlobFormat::Flat,
            FormatArg::Vhd1 => BlobFormat::FixedVhd1,
            FormatArg::Vhd1Dynamic => BlobFormat::DynamicVhd1,
            FormatArg::Vhdx => BlobFormat::Vhdx,
            FormatArg::Qcow2 => BlobFormat::Qcow2,
        }
    }
}

/// What the user named.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Url(String),
    Path(PathBuf),
}

impl Source {
    /// A URL if it has an http or https scheme; another scheme is an error;
    /// anything else is a path.
    fn parse(text: &str) -> Result<Source> {
        if let Some((scheme, _)) = text.split_once("://") {
            let plausible_scheme = !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if plausible_scheme {
                return match scheme.to_ascii_lowercase().as_str() {
                    "http" | "https" => Ok(Source::Url(text.to_owned())),
                    _ => bail!(
                        "unsupported URL scheme `{scheme}` in {}: use http(s) or a local path",
                        redact_url(text)
                    ),
                };
            }
        }
        Ok(Source::Path(PathBuf::from(text)))
    }

    /// Printable form (URL redacted).
    fn describe(&self) -> String {
        match self {
            Source::Url(url) => redact_url(url),
            Source::Path(p) => p.display().to_string(),
        }
    }
}

/// The stack description for `source` (see the module docs).
fn describe_stack(
    source: &Source,
    cache_dir: Option<&Path>,
    format: FormatArg,
    read_only: bool,
) -> Result<LayeredDiskHandle> {
    let disk = petri::Disk::Differencing(match source {
        Source::Url(url) => DiskPath::Remote { url: url.clone() },
        Source::Path(p) => DiskPath::Local(p.clone()),
    });
    let cache = || petri::cache_dir::cache_settings(cache_dir);
    let mut handle = petri::disk_stack::disk_description(&disk, cache)
        .with_context(|| format!("describing the disk stack of {}", source.describe()))?;
    for layer in &mut handle.layers {
        if let LayerKind::File { format: f, .. } | LayerKind::Blob { format: f, .. } =
            &mut layer.layer
        {
            *f = format.into();
        }
    }
    handle.read_only = read_only;
    Ok(handle)
}

/// Runs the command.
pub fn run(args: ServeNbdArgs) -> Result<()> {
    let source = Source::parse(&args.source)?;
    if let Source::Path(p) = &source {
        let meta = std::fs::metadata(p).with_context(|| format!("opening {}", p.display()))?;
        if !meta.is_file() {
            bail!("{} is not a file", p.display());
        }
    }
    let handle = describe_stack(
        &source,
        args.cache_dir.as_deref(),
        args.format,
        args.read_only,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(&source, &handle, &args))
}

async fn serve(source: &Source, handle: &LayeredDiskHandle, args: &ServeNbdArgs) -> Result<()> {
    // Install the handlers before the ready line, so a signal sent as soon
    // as it appears is not lost.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;

    if args.record_prefetch.is_some() && matches!(source, Source::Path(_)) {
        bail!("--record-prefetch needs a URL: a local file is not prefetched");
    }
    let opened = disk_open::open_with_details(handle, &disk_open::OpenOptions::default())
        .await
        .with_context(|| format!("opening {}", source.describe()))?;
    let (disk, traced) = match &args.trace_reads {
        Some(_) => {
            let (disk, reads) = crate::read_trace::tracing_disk(opened.disk)
                .context("wrapping the disk to trace its reads")?;
            (disk, Some(reads))
        }
        None => (opened.disk, None),
    };
    let size = disk.size_bytes();
    let options = NbdServerOptions {
        read_only: args.read_only,
        description: Some(source.describe()),
        ..Default::default()
    };
    let listener = disk_nbd::serve_unix(&args.socket, disk, options)
        .await
        .with_context(|| format!("serving NBD on {}", args.socket.display()))?;
    println!(
        "petri-tool: serving {} ({size} bytes{}) at {}",
        source.describe(),
        if args.read_only { ", read-only" } else { "" },
        listener.nbd_uri()
    );
    let described_cache = handle.layers.iter().find_map(|l| match &l.layer {
        LayerKind::AutoCacheSqlite { cache_dir, .. } => Some(cache_dir),
        _ => None,
    });
    match (&opened.cache_file, described_cache) {
        (Some(file), _) => println!("petri-tool: read cache {}", file.display()),
        (None, Some(dir)) => println!(
            "petri-tool: no read cache (none usable in {}, see the warning above)",
            dir.display()
        ),
        (None, None) => {}
    }
    println!("petri-tool: stop with SIGINT (Ctrl-C) or SIGTERM");

    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        // Stopped another way (never today, but do not hang if it happens).
        _ = listener.closed() => "shutdown",
    };
    println!("petri-tool: {signal}: finishing requests in flight");
    let server = listener.server().clone();
    let stopped = listener.shutdown().await.context("stopping the NBD server");
    // Read after every connection finished, so the counters are complete.
    let counters = server.disk().counters();
    let nbd = server.stats();
    print!("{}", format_counters(&source.describe(), &counters, &nbd));
    if let Some(path) = &args.counters_json {
        let json = counters_json(&counters, &nbd);
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing the counters to {}", path.display()))?;
    }
    if let (Some(path), Some(reads)) = (&args.trace_reads, &traced) {
        let text = prefetch_list::trace::write_trace(&reads.lock());
        std::fs::write(path, text)
            .with_context(|| format!("writing the read trace to {}", path.display()))?;
        println!("petri-tool: read trace written to {}", path.display());
    }
    // The last handle of the disk: closing it records the prefetch list.
    drop(server);
    if let Some(out) = &args.record_prefetch {
        let Some(record) = &opened.prefetch_record else {
            bail!(
                "no prefetch list for {}: it has no read cache",
                source.describe()
            );
        };
        std::fs::copy(record, out).with_context(|| {
            format!(
                "copying the prefetch list {} to {} (did the client read anything?)",
                record.display(),
                out.display()
            )
        })?;
        println!("petri-tool: prefetch list written to {}", out.display());
    }
    stopped
}

/// The counters as one JSON object (field names of `DiskCounters`, plus
/// `nbd_*` fields).
fn counters_json(c: &DiskCounters, nbd: &NbdStats) -> serde_json::Value {
    serde_json::json!({
        "remote_requests": c.remote_requests,
        "remote_bytes_fetched": c.remote_bytes_fetched,
        "remote_retries": c.remote_retries,
        "remote_errors": c.remote_errors,
        "cache_hit_bytes": c.cache_hit_bytes,
        "cache_miss_bytes": c.cache_miss_bytes,
        "cache_fill_bytes": c.cache_fill_bytes,
        "cache_damaged_chunks": c.cache_damaged_chunks,
        "prefetched_bytes": c.prefetched_bytes,
        "prefetch_used_bytes": c.prefetch_used_bytes,
        "prefetch_hit_reads": c.prefetch_hit_reads,
        "nbd_connections": nbd.connections,
        "nbd_requests": nbd.requests,
        "nbd_bytes_read": nbd.bytes_read,
        "nbd_bytes_written": nbd.bytes_written,
        "nbd_error_replies": nbd.error_replies,
        "nbd_read_requests": nbd.read_requests,
        "nbd_read_wait_seconds": nbd.read_wait.as_secs_f64(),
    })
}

/// The counters block printed at exit.
fn format_counters(what: &str, c: &DiskCounters, nbd: &NbdStats) -> String {
    format!(
        "petri-tool: disk counters for {what}\n\
         \x20 remote: {} bytes fetched in {} requests ({} retries, {} errors)\n\
         \x20 cache:  {} bytes hit, {} bytes missed, {} bytes filled, {} damaged chunks replaced\n\
         \x20 prefetch: {} bytes fetched ahead, {} of them read by the client, {} reads served by them\n\
         \x20 nbd:    {} connections, {} requests, {} bytes read, {} bytes written, {} error replies\n\
         \x20 reads:  {} read requests, {:.3} s with a read waiting (the client's disk-wait)\n",
        c.remote_bytes_fetched,
        c.remote_requests,
        c.remote_retries,
        c.remote_errors,
        c.cache_hit_bytes,
        c.cache_miss_bytes,
        c.cache_fill_bytes,
        c.cache_damaged_chunks,
        c.prefetched_bytes,
        c.prefetch_used_bytes,
        c.prefetch_hit_reads,
        nbd.connections,
        nbd.requests,
        nbd.bytes_read,
        nbd.bytes_written,
        nbd.error_replies,
        nbd.read_requests,
        nbd.read_wait.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_backend_resources::LayerDescription;

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("https://h/x.vhd?sig=S").unwrap(),
            Source::Url("https://h/x.vhd?sig=S".into())
        );
        assert_eq!(
            Source::parse("HTTP://h/x").unwrap(),
            Source::Url("HTTP://h/x".into())
        );
        assert_eq!(
            Source::parse("images/a.vhd").unwrap(),
            Source::Path("images/a.vhd".into())
        );
        // Not a scheme: a path that happens to hold "://".
        assert_eq!(
            Source::parse("./odd dir://x").unwrap(),
            Source::Path("./odd dir://x".into())
        );
        let err = Source::parse("ftp://h/x.vhd?sig=SECRET")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ftp"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
        assert_eq!(
            Source::Url("https://h/x.vhd?sig=SECRET".into()).describe(),
            "https://h/x.vhd?<redacted>"
        );
    }

    #[test]
    fn url_stack_is_ram_over_auto_cache_over_blob() {
        let url = "http://127.0.0.1:1/d/img.vhd?sig=S";
        let handle = describe_stack(
            &Source::Url(url.into()),
            Some(Path::new("/c")),
            FormatArg::Auto,
            false,
        )
        .unwrap();
        // The cache's policy comes from the environment (PETRI_CACHE must
        // not be `off` for this test).
        let settings = petri::cache_dir::cache_settings(Some(Path::new("/c")))
            .unwrap()
            .expect("PETRI_CACHE=off");
        assert_eq!(
            handle.layers,
            vec![
                LayerDescription::plain(LayerKind::Ram { len: None }),
                LayerDescription::read_cache(LayerKind::AutoCacheSqlite {
                    cache_dir: "/c".into(),
                    key: None,
                    required: settings.required,
                    max_size: settings.max_size,
                }),
                LayerDescription::plain(LayerKind::Blob {
                    url: url.into(),
                    format: BlobFormat::Auto
                }),
            ]
        );
        assert!(!handle.read_only);
    }

    #[test]
    fn format_and_read_only_override() {
        let handle = describe_stack(
            &Source::Path("/i/disk.vhd".into()),
            None,
            FormatArg::Flat,
            true,
        )
        .unwrap();
        assert_eq!(
            handle.layers,
            vec![
                LayerDescription::plain(LayerKind::Ram { len: None }),
                LayerDescription::plain(LayerKind::File {
                    path: "/i/disk.vhd".into(),
                    format: BlobFormat::Flat
                }),
            ]
        );
        assert!(handle.read_only);
        let handle = describe_stack(
            &Source::Url("http://h/disk.raw".into()),
            Some(Path::new("/c")),
            FormatArg::Vhd1,
            false,
        )
        .unwrap();
        assert!(matches!(
            handle.layers[2].layer,
            LayerKind::Blob {
                format: BlobFormat::FixedVhd1,
                ..
            }
        ));
    }

    #[test]
    fn every_format_can_be_named() {
        use clap::ValueEnum as _;
        for (name, format) in [
            ("auto", BlobFormat::Auto),
            ("flat", BlobFormat::Flat),
            ("vhd1", BlobFormat::FixedVhd1),
            ("vhd1-dynamic", BlobFormat::DynamicVhd1),
            ("vhdx", BlobFormat::Vhdx),
            ("qcow2", BlobFormat::Qcow2),
        ] {
            let arg = FormatArg::from_str(name, false).unwrap();
            let handle = describe_stack(
                &Source::Url("https://h/w.vhdx?sig=SECRET".into()),
                Some(Path::new("/c")),
                arg,
                false,
            )
            .unwrap();
            assert!(
                matches!(handle.layers[2].layer, LayerKind::Blob { format: f, .. } if f == format),
                "{name}"
            );
        }
        assert_eq!(FormatArg::value_variants().len(), 6);
    }

    #[test]
    fn counters_block_and_json() {
        let c = DiskCounters {
            remote_requests: 7,
            remote_bytes_fetched: 3 << 20,
            cache_hit_bytes: 11,
            cache_miss_bytes: 3 << 20,
            cache_fill_bytes: 3 << 20,
            ..Default::default()
        };
        let nbd = NbdStats {
            connections: 1,
            requests: 40,
            read_requests: 30,
            bytes_read: 5000,
            read_wait: std::time::Duration::from_millis(1250),
            ..Default::default()
        };
        let text = format_counters("http://h/x?<redacted>", &c, &nbd);
        assert!(
            text.contains("3145728 bytes fetched in 7 requests"),
            "{text}"
        );
        assert!(text.contains("11 bytes hit"), "{text}");
        assert!(text.contains("1 connections, 40 requests"), "{text}");
        assert!(
            text.contains("30 read requests, 1.250 s with a read waiting"),
            "{text}"
        );
        let json = counters_json(&c, &nbd);
        assert_eq!(json["remote_bytes_fetched"], 3 << 20);
        assert_eq!(json["nbd_requests"], 40);
        assert_eq!(json["nbd_read_requests"], 30);
        assert_eq!(json["nbd_read_wait_seconds"], 1.25);
    }
}
