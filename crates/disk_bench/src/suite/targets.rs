//! The targets the report checks, evaluated on its rows.

use super::MIB;
use super::report::Cmp;
use super::report::Field;
use super::report::Report;

/// The targets, evaluated on the flat image's rows.
pub(super) fn targets(r: &mut Report) {
    let t = r.ratio("flat-cold-seq-64k", "curl");
    r.target("cold sequential 64 KiB / curl", t, Cmp::AtLeast, 0.6, "x");
    let t = r.ratio("flat-cold-seq-1m", "curl");
    r.target("cold sequential 1 MiB / curl", t, Cmp::AtLeast, 0.7, "x");
    // Context for the two above (not the targets): against a
    // download that is saved to a file, and timed to the close of the
    // disk, when the cache file holds every byte.
    for (ours, what, bar) in [
        ("flat-cold-seq-64k", "64 KiB", 0.6),
        ("flat-cold-seq-1m", "1 MiB", 0.7),
        ("flat-cold-seq-1m-closed", "1 MiB timed to close", 0.7),
    ] {
        let t = r.ratio(ours, "curl-file");
        let label = format!("(context) cold sequential {what} / curl saving to a file");
        r.target(&label, t, Cmp::AtLeast, bar, "x");
    }
    let t = r.ratio("flat-uncached-seq-1m", "curl");
    r.target(
        "(context) sequential 1 MiB without the read cache / curl",
        t,
        Cmp::AtLeast,
        0.7,
        "x",
    );
    let t = r.ratio("flat-warm-seq-1m", "cat");
    r.target("warm sequential 1 MiB / cat", t, Cmp::AtLeast, 0.5, "x");
    let t = r.ratio("flat-warm-random", "per-sector-random");
    r.target(
        "warm random 4 KiB / one-row-per-sector layout",
        t,
        Cmp::AtLeast,
        2.0,
        "x",
    );
    let t = r.get("flat-cold-random", Field::FetchedPerRead);
    r.target(
        "cold random 4 KiB: fetched / read",
        t,
        Cmp::AtMost,
        16.0,
        "x",
    );
    for key in ["flat-cold-seq-1m", "flat-cold-random"] {
        let t = r.get(key, Field::CachePerData);
        let label = format!("cache file / cached data ({key})");
        r.target(&label, t, Cmp::AtMost, 1.05, "x");
    }
    let t = r.ratio("nbd-ours-cold", "nbd-nbdkit-cold");
    r.target("NBD cold: ours / nbdkit", t, Cmp::AtLeast, 1.0, "x");
    let t = r.ratio("nbd-ours-warm", "nbd-nbdkit-warm");
    r.target("NBD warm: ours / nbdkit", t, Cmp::AtLeast, 1.0, "x");
    let t = r.ratio("nbd-file-ours", "nbd-file-nbdkit");
    r.target(
        "NBD local file: ours / nbdkit file",
        t,
        Cmp::AtLeast,
        1.0,
        "x",
    );
    let t = r.ratio("boot-cold", "boot-local");
    r.target("guest boot cold remote / local", t, Cmp::AtMost, 1.3, "x");
    let t = r.ratio("boot-warm", "boot-local");
    r.target("guest boot warm remote / local", t, Cmp::AtMost, 1.05, "x");
    let t = r.ratio("boot-cold-20ms", "boot-local");
    r.target(
        "guest boot cold remote, 20 ms latency / local",
        t,
        Cmp::AtMost,
        2.0,
        "x",
    );
    // With --baseline-bin: ours against the baseline build, side by side.
    for key in [
        "flat-warm-seq-1m",
        "flat-warm-random",
        "flat-cold-seq-1m",
        "vhd1-warm-seq-1m",
        "nbd-ours-warm",
        "nbd-ours-cold",
    ] {
        let base = match key.strip_prefix("nbd-ours-") {
            Some(rest) => format!("nbd-base-{rest}"),
            None => format!("base-{key}"),
        };
        if r.row(&base).is_some() {
            let t = r.ratio(key, &base);
            let label = format!("(context) {key}: ours / baseline build");
            r.target(&label, t, Cmp::AtLeast, 1.0, "x");
        }
    }
    for (key, what) in [("rss-1g", "cold"), ("rss-1g-warm", "warm")] {
        let t = r.get(key, Field::PeakRss).map(|v| v / MIB as f64);
        let label = format!("peak RSS reading 1 GiB sequentially, {what} (VmHWM)");
        r.target(&label, t, Cmp::AtMost, 256.0, " MiB");
    }
}
