//! The targets the report checks, evaluated on its rows.

use super::MIB;
use super::report::Cmp;
use super::report::Cmp::AtLeast;
use super::report::Cmp::AtMost;
use super::report::Field;
use super::report::Report;
use Measure::Median;
use Measure::Ratio;

/// What a target compares with its bar.
enum Measure {
    /// The median main figure of the first row over that of the second.
    Ratio(&'static str, &'static str),
    /// A median field of one row.
    Median(&'static str, Field),
}

/// The targets on the flat image's rows, in report order, with
/// context rows (not the targets) marked as such: against a
/// download that is saved to a file, timed to the close of the disk (when
/// the cache file holds every byte), and the fetch path without the cache.
const TARGETS: &[(&str, Measure, Cmp, f64)] = &[
    (
        "cold sequential 64 KiB / curl",
        Ratio("flat-cold-seq-64k", "curl"),
        AtLeast,
        0.6,
    ),
    (
        "cold sequential 1 MiB / curl",
        Ratio("flat-cold-seq-1m", "curl"),
        AtLeast,
        0.7,
    ),
    (
        "(context) cold sequential 64 KiB / curl saving to a file",
        Ratio("flat-cold-seq-64k", "curl-file"),
        AtLeast,
        0.6,
    ),
    (
        "(context) cold sequential 1 MiB / curl saving to a file",
        Ratio("flat-cold-seq-1m", "curl-file"),
        AtLeast,
        0.7,
    ),
    (
        "(context) cold sequential 1 MiB timed to close / curl saving to a file",
        Ratio("flat-cold-seq-1m-closed", "curl-file"),
        AtLeast,
        0.7,
    ),
    (
        "(context) sequential 1 MiB without the read cache / curl",
        Ratio("flat-uncached-seq-1m", "curl"),
        AtLeast,
        0.7,
    ),
    (
        "warm sequential 1 MiB / cat",
        Ratio("flat-warm-seq-1m", "cat"),
        AtLeast,
        0.5,
    ),
    (
        "warm random 4 KiB / one-row-per-sector layout",
        Ratio("flat-warm-random", "per-sector-random"),
        AtLeast,
        2.0,
    ),
    (
        "cold random 4 KiB: fetched / read",
        Median("flat-cold-random", Field::FetchedPerRead),
        AtMost,
        16.0,
    ),
    (
        "cache file / cached data (flat-cold-seq-1m)",
        Median("flat-cold-seq-1m", Field::CachePerData),
        AtMost,
        1.05,
    ),
    (
        "cache file / cached data (flat-cold-random)",
        Median("flat-cold-random", Field::CachePerData),
        AtMost,
        1.05,
    ),
    (
        "NBD cold: ours / nbdkit",
        Ratio("nbd-ours-cold", "nbd-nbdkit-cold"),
        AtLeast,
        1.0,
    ),
    (
        "NBD warm: ours / nbdkit",
        Ratio("nbd-ours-warm", "nbd-nbdkit-warm"),
        AtLeast,
        1.0,
    ),
    (
        "NBD local file: ours / nbdkit file",
        Ratio("nbd-file-ours", "nbd-file-nbdkit"),
        AtLeast,
        1.0,
    ),
    (
        "guest boot cold remote / local",
        Ratio("boot-cold", "boot-local"),
        AtMost,
        1.3,
    ),
    (
        "guest boot warm remote / local",
        Ratio("boot-warm", "boot-local"),
        AtMost,
        1.05,
    ),
    (
        "guest boot cold remote, 20 ms latency / local",
        Ratio("boot-cold-20ms", "boot-local"),
        AtMost,
        2.0,
    ),
    (
        "Debian boot cold, 50 ms per request, prefetch list / local",
        Ratio("distro-cold-50ms-prefetch", "distro-local"),
        AtMost,
        1.05,
    ),
];

/// Targets on the guest's disk-wait (seconds with a read outstanding at
/// the NBD export): a cold Debian boot from a far-away store with the
/// image's prefetch list, and (context) the same without the list.
const WAIT_TARGETS: &[(&str, &str, f64)] = &[
    (
        "Debian boot cold, 50 ms per request, prefetch list: disk-wait",
        "distro-cold-50ms-prefetch",
        1.0,
    ),
    (
        "(context) Debian boot cold, 50 ms per request, no list: disk-wait",
        "distro-cold-50ms",
        1.0,
    ),
];

/// Adds every target to `r`: [`TARGETS`], then (with `--baseline-bin`)
/// ours against the baseline build, then peak RSS.
pub(super) fn targets(r: &mut Report) {
    for (label, measure, cmp, bar) in TARGETS {
        let measured = match measure {
            Ratio(num, den) => r.ratio(num, den),
            Median(key, field) => r.get(key, *field),
        };
        r.target(label, measured, *cmp, *bar, "x");
    }
    for (label, key, bar) in WAIT_TARGETS {
        r.target(label, r.get(key, Field::DiskWait), AtMost, *bar, " s");
    }
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
            r.target(&label, t, AtLeast, 1.0, "x");
        }
    }
    for (key, what) in [("rss-1g", "cold"), ("rss-1g-warm", "warm")] {
        let t = r.get(key, Field::PeakRss).map(|v| v / MIB as f64);
        let label = format!("peak RSS reading 1 GiB sequentially, {what} (VmHWM)");
        r.target(&label, t, AtMost, 256.0, " MiB");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::report::Sample;
    use crate::suite::report::Unit;

    fn row(r: &mut Report, key: &str, value: f64) {
        let sample = Sample {
            value,
            ..Default::default()
        };
        r.push(key, key, Unit::MBps, vec![sample]);
    }

    /// Every target is in the report, in order, measured on the rows it
    /// names or "not measured" without them.
    #[test]
    fn targets_are_measured_on_the_rows_they_name() {
        let mut r = Report::default();
        row(&mut r, "flat-cold-seq-1m", 70.0);
        row(&mut r, "curl", 100.0);
        row(&mut r, "boot-warm", 21.0);
        row(&mut r, "boot-local", 20.0);
        r.push(
            "distro-cold-50ms-prefetch",
            "x",
            Unit::Seconds,
            vec![Sample {
                value: 20.0,
                disk_wait: Some(0.4),
                ..Default::default()
            }],
        );
        targets(&mut r);
        assert_eq!(
            r.targets.len(),
            TARGETS.len() + WAIT_TARGETS.len() + 2,
            "without a baseline"
        );
        assert_eq!(r.targets[0].label, "cold sequential 64 KiB / curl");
        assert_eq!(r.targets[0].passed(), None);
        assert_eq!(r.targets[1].measured, Some(0.7));
        assert_eq!(r.targets[1].passed(), Some(true));
        let boot = r
            .targets
            .iter()
            .find(|t| t.label == "guest boot warm remote / local")
            .unwrap();
        assert_eq!((boot.measured, boot.passed()), (Some(1.05), Some(true)));
        // Disk-wait targets read the row's disk-wait, in seconds.
        let wait = &r.targets[TARGETS.len()];
        assert_eq!(wait.label, WAIT_TARGETS[0].0);
        assert_eq!((wait.measured, wait.passed()), (Some(0.4), Some(true)));
        assert_eq!(r.targets[TARGETS.len() + 1].passed(), None, "no such row");
        row(&mut r, "base-flat-cold-seq-1m", 140.0);
        r.targets.clear();
        targets(&mut r);
        let base = &r.targets[TARGETS.len() + WAIT_TARGETS.len()];
        assert_eq!(
            base.label,
            "(context) flat-cold-seq-1m: ours / baseline build"
        );
        assert_eq!((base.measured, base.passed()), (Some(0.5), Some(false)));
    }
}
