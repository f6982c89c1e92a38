//! The benchmark's figures: samples, medians, target checks and the
//! markdown report. No I/O here, so the table logic is unit-tested.

use std::fmt::Write;

/// How a row's main figure is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Megabytes (10^6 bytes) per second; higher is better.
    MBps,
    /// Operations per second; higher is better.
    Iops,
    /// Seconds; lower is better.
    Seconds,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::MBps => "MB/s",
            Unit::Iops => "IOPS",
            Unit::Seconds => "s",
        }
    }
}

/// One repetition of one workload.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// The main figure in the row's unit.
    pub value: f64,
    /// HTTP requests sent to the origin.
    pub requests: Option<f64>,
    /// Bytes fetched from the origin.
    pub fetched: Option<f64>,
    /// Bytes the workload read.
    pub bytes_read: Option<f64>,
    /// Bytes of the cache files after the run.
    pub cache_file: Option<f64>,
    /// Bytes of data present in the cache after the run.
    pub cached_data: Option<f64>,
    /// Peak resident set size, bytes.
    pub peak_rss: Option<f64>,
    /// The client's disk-wait (time with a read outstanding), seconds.
    pub disk_wait: Option<f64>,
    /// Bytes a prefetch fetched ahead (part of `fetched`).
    pub prefetched: Option<f64>,
}

/// The per-sample figures a row reports (each the median over samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The main figure.
    Value,
    /// HTTP requests.
    Requests,
    /// Bytes fetched.
    Fetched,
    /// Bytes fetched / bytes read.
    FetchedPerRead,
    /// Cache file bytes.
    CacheFile,
    /// Cache file bytes / cached data bytes.
    CachePerData,
    /// Peak RSS bytes.
    PeakRss,
    /// The client's disk-wait, seconds.
    DiskWait,
    /// Bytes prefetched.
    Prefetched,
}

impl Sample {
    fn get(&self, field: Field) -> Option<f64> {
        match field {
            Field::Value => Some(self.value),
            Field::Requests => self.requests,
            Field::Fetched => self.fetched,
            Field::FetchedPerRead => ratio(self.fetched?, self.bytes_read?),
            Field::CacheFile => self.cache_file,
            Field::CachePerData => ratio(self.cache_file?, self.cached_data?),
            Field::PeakRss => self.peak_rss,
            Field::DiskWait => self.disk_wait,
            Field::Prefetched => self.prefetched,
        }
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` for no values. NaNs sort last and so only win when most values
/// are NaN.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One workload: its label, unit and repetitions.
#[derive(Debug, Clone)]
pub struct Row {
    /// A stable id used by targets.
    pub key: String,
    /// What the row measures.
    pub label: String,
    /// Unit of the main figure.
    pub unit: Unit,
    /// The repetitions.
    pub samples: Vec<Sample>,
    /// A free-form note (e.g. why a row was not run).
    pub note: String,
}

impl Row {
    /// The smallest and largest main figure, if there are samples.
    pub fn spread(&self) -> Option<(f64, f64)> {
        let v = self.samples.iter().map(|s| s.value);
        let lo = v.clone().min_by(f64::total_cmp)?;
        let hi = v.max_by(f64::total_cmp)?;
        Some((lo, hi))
    }

    /// The median of `field` over the samples that have it.
    pub fn median(&self, field: Field) -> Option<f64> {
        let v: Vec<f64> = self.samples.iter().filter_map(|s| s.get(field)).collect();
        median(&v)
    }
}

/// A comparison against a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// Measured must be >= threshold.
    AtLeast,
    /// Measured must be <= threshold.
    AtMost,
}

/// One target and its outcome.
#[derive(Debug, Clone)]
pub struct Target {
    /// What is compared, e.g. "cold seq 64 KiB / curl".
    pub label: String,
    /// The measured figure (a ratio or a value); `None` if not measured.
    pub measured: Option<f64>,
    /// Direction.
    pub cmp: Cmp,
    /// The bar.
    pub threshold: f64,
    /// Unit suffix for the figures ("x", " MiB").
    pub suffix: &'static str,
}

impl Target {
    /// `Some(true)` pass, `Some(false)` fail, `None` not measured.
    pub fn passed(&self) -> Option<bool> {
        let m = self.measured?;
        if !m.is_finite() {
            return Some(false);
        }
        Some(match self.cmp {
            Cmp::AtLeast => m >= self.threshold,
            Cmp::AtMost => m <= self.threshold,
        })
    }
}

/// Every row of one run plus the targets evaluated on them.
#[derive(Debug, Default)]
pub struct Report {
    /// The rows in presentation order.
    pub rows: Vec<Row>,
    /// The targets.
    pub targets: Vec<Target>,
}

impl Report {
    /// Adds a row.
    pub fn push(&mut self, key: &str, label: &str, unit: Unit, samples: Vec<Sample>) {
        self.rows.push(Row {
            key: key.to_owned(),
            label: label.to_owned(),
            unit,
            samples,
            note: String::new(),
        });
    }

    /// Adds a row that was not measured, with the reason.
    pub fn skipped(&mut self, key: &str, label: &str, unit: Unit, why: &str) {
        self.rows.push(Row {
            key: key.to_owned(),
            label: label.to_owned(),
            unit,
            samples: Vec::new(),
            note: why.to_owned(),
        });
    }

    /// The row with `key`.
    pub fn row(&self, key: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == key)
    }

    /// The median of `field` in row `key`.
    pub fn get(&self, key: &str, field: Field) -> Option<f64> {
        self.row(key)?.median(field)
    }

    /// Median main figure of `num` divided by that of `den`.
    pub fn ratio(&self, num: &str, den: &str) -> Option<f64> {
        ratio(self.get(num, Field::Value)?, self.get(den, Field::Value)?)
    }

    /// Adds a target.
    pub fn target(
        &mut self,
        label: &str,
        measured: Option<f64>,
        cmp: Cmp,
        threshold: f64,
        suffix: &'static str,
    ) {
        self.targets.push(Target {
            label: label.to_owned(),
            measured,
            cmp,
            threshold,
            suffix,
        });
    }

    /// The report as markdown: the figures table, then the targets table.
    pub fn markdown(&self, header: &str) -> String {
        let mut s = String::new();
        s.push_str(header);
        s.push_str("\n\n| workload | reps | median | spread (min-max) | HTTP requests | fetched (MiB) | fetched / read | prefetched (MiB) | disk-wait (s) | cache file (MiB) | cache file / cached data | peak RSS (MiB) | note |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &self.rows {
            let value = match r.median(Field::Value) {
                Some(v) => format!("{} {}", fmt_value(v, r.unit), r.unit.name()),
                None => "not run".to_owned(),
            };
            let spread = match r.spread() {
                Some((lo, hi)) => format!("{}-{}", fmt_value(lo, r.unit), fmt_value(hi, r.unit)),
                None => "-".to_owned(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label,
                r.samples.len(),
                value,
                spread,
                opt(r.median(Field::Requests), |v| format!("{v:.0}")),
                opt(r.median(Field::Fetched), mib),
                opt(r.median(Field::FetchedPerRead), |v| format!("{v:.3}")),
                opt(r.median(Field::Prefetched).filter(|v| *v > 0.0), mib),
                opt(r.median(Field::DiskWait), |v| format!("{v:.2}")),
                opt(r.median(Field::CacheFile), mib),
                opt(r.median(Field::CachePerData), |v| format!("{v:.3}")),
                opt(r.median(Field::PeakRss), mib),
                r.note,
            );
        }
        s.push_str("\n| target | measured | bar | result |\n|---|---:|---:|---|\n");
        for t in &self.targets {
            let op = match t.cmp {
                Cmp::AtLeast => ">=",
                Cmp::AtMost => "<=",
            };
            let result = match t.passed() {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "not measured",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {op} {}{} | {result} |",
                t.label,
                opt(t.measured, |v| format!("{v:.3}{}", t.suffix)),
                t.threshold,
                t.suffix,
            );
        }
        s
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

fn mib(v: f64) -> String {
    format!("{:.1}", v / (1024.0 * 1024.0))
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::MBps => format!("{v:.1}"),
        Unit::Iops => format!("{v:.0}"),
        Unit::Seconds => format!("{v:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(value: f64) -> Sample {
        Sample {
            value,
            ..Default::default()
        }
    }

    #[test]
    fn median_odd_even_empty_and_unsorted() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        // One outlier does not move the median of three.
        assert_eq!(median(&[100.0, 1000000.0, 101.0]), Some(101.0));
    }

    #[test]
    fn derived_fields_are_medians_of_per_sample_ratios() {
        let mut r = Report::default();
        let mk = |fetched: f64, read: f64, file: f64, data: f64| Sample {
            value: 1.0,
            fetched: Some(fetched),
            bytes_read: Some(read),
            cache_file: Some(file),
            cached_data: Some(data),
            ..Default::default()
        };
        r.push(
            "x",
            "x",
            Unit::MBps,
            vec![
                mk(10.0, 1.0, 110.0, 100.0),
                mk(30.0, 2.0, 300.0, 100.0),
                mk(12.0, 1.0, 105.0, 100.0),
            ],
        );
        // Per-sample ratios 10, 15, 12 -> 12; 1.1, 3.0, 1.05 -> 1.1.
        assert_eq!(r.get("x", Field::FetchedPerRead), Some(12.0));
        assert_eq!(r.get("x", Field::CachePerData), Some(1.1));
        // A zero denominator yields no ratio rather than infinity.
        r.push("z", "z", Unit::MBps, vec![mk(1.0, 0.0, 1.0, 0.0)]);
        assert_eq!(r.get("z", Field::FetchedPerRead), None);
    }

    #[test]
    fn targets_pass_fail_and_unmeasured() {
        let mut r = Report::default();
        r.push("ours", "ours", Unit::MBps, vec![s(70.0), s(60.0), s(80.0)]);
        r.push(
            "curl",
            "curl",
            Unit::MBps,
            vec![s(100.0), s(100.0), s(90.0)],
        );
        r.skipped("nbd", "nbd", Unit::MBps, "nbdkit missing");
        assert_eq!(r.ratio("ours", "curl"), Some(0.7));
        r.target("ours/curl", r.ratio("ours", "curl"), Cmp::AtLeast, 0.7, "x");
        r.target(
            "ours/curl strict",
            r.ratio("ours", "curl"),
            Cmp::AtLeast,
            0.71,
            "x",
        );
        r.target("ours/nbd", r.ratio("ours", "nbd"), Cmp::AtLeast, 1.0, "x");
        r.target("time", Some(2.5), Cmp::AtMost, 2.0, "x");
        r.target("nan", Some(f64::NAN), Cmp::AtMost, 2.0, "x");
        let got: Vec<_> = r.targets.iter().map(Target::passed).collect();
        assert_eq!(
            got,
            [Some(true), Some(false), None, Some(false), Some(false)]
        );
    }

    #[test]
    fn markdown_has_every_row_and_target() {
        let mut r = Report::default();
        r.push(
            "seq",
            "cold seq 1 MiB",
            Unit::MBps,
            vec![Sample {
                value: 123.456,
                requests: Some(7.0),
                fetched: Some(2.0 * 1024.0 * 1024.0),
                bytes_read: Some(1024.0 * 1024.0),
                peak_rss: Some(50.0 * 1024.0 * 1024.0),
                disk_wait: Some(0.25),
                ..Default::default()
            }],
        );
        r.push(
            "iops",
            "warm random",
            Unit::Iops,
            vec![s(40000.4), s(30000.0), s(50000.0)],
        );
        r.skipped("boot", "guest boot", Unit::Seconds, "no images");
        r.target("a", Some(0.5), Cmp::AtLeast, 0.6, "x");
        r.target("b", None, Cmp::AtMost, 1.3, "x");
        let md = r.markdown("# Bench");
        assert!(md.starts_with("# Bench\n"), "{md}");
        assert!(
            md.contains(
                "| cold seq 1 MiB | 1 | 123.5 MB/s | 123.5-123.5 | 7 | 2.0 | 2.000 | - | 0.25 | - | - | 50.0 |  |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| warm random | 3 | 40000 IOPS | 30000-50000 |"),
            "{md}"
        );
        assert!(md.contains("| guest boot | 0 | not run | - |"), "{md}");
        assert!(md.contains("no images |"), "{md}");
        assert!(md.contains("| a | 0.500x | >= 0.6x | FAIL |"), "{md}");
        assert!(md.contains("| b | - | <= 1.3x | not measured |"), "{md}");
    }
}
