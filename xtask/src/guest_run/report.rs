//! What the main job reads back from a test run and the table it prints.
//!
//! Inputs:
//! - the QEMU backend's disk counters: every test's log directory holds
//!   `disk-counters.json`, a JSON array of reports, one per disk per boot
//!   (the format of `petri::qemu::DiskCountersReport`, whose counters are
//!   the real `disk_backend::DiskCounters` read here too; unknown fields are
//!   ignored, so the backend may add more);
//! - nextest's status lines (`PASS [  12.345s] (3/8) <binary> <test>`) for
//!   each test's wall time.
//!
//! Everything here is pure (text in, values out) and unit-tested; the
//! orchestration in the parent module does the I/O.

use anyhow::Context;
use anyhow::Result;
use disk_backend::DiskCounters;
use serde::Deserialize;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use vmm_test_images::BuiltGuest;
use vmm_test_images::KnownTestArtifacts;

/// The file each test's log directory holds (`petri::qemu::DISK_COUNTERS_FILE`).
pub const DISK_COUNTERS_FILE: &str = "disk-counters.json";

/// One disk of one boot, as the QEMU backend reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    /// The full test name.
    pub test: String,
    /// Which boot of the test (1 for the first).
    #[serde(default)]
    pub boot: u32,
    /// `boot` or `drive<N>`.
    #[serde(default)]
    pub drive: String,
    /// A path or a redacted URL.
    #[serde(default)]
    pub location: String,
    /// Whether the disk was read from a remote store.
    pub remote: bool,
    /// The disk size the guest saw.
    pub disk_bytes: u64,
    /// The disk's counters (requests, bytes fetched, cache hits, ...), as
    /// fields of the report object; a missing one reads as zero.
    #[serde(flatten)]
    pub counters: DiskCounters,
    /// Read requests the guest sent to the disk's NBD export.
    #[serde(default)]
    pub nbd_read_requests: u64,
    /// Bytes the guest read through the NBD export.
    #[serde(default)]
    pub nbd_bytes_read: u64,
    /// The guest's disk-wait in microseconds: wall time with at least one
    /// read outstanding at the NBD export.
    #[serde(default)]
    pub nbd_read_wait_micros: u64,
    /// Milliseconds the VM ran.
    #[serde(default)]
    pub vm_millis: u64,
}

/// Parses one `disk-counters.json`.
pub fn parse_counters_file(text: &str) -> Result<Vec<DiskReport>> {
    serde_json::from_str(text).context("parsing the disk counters JSON")
}

/// Every report under `dir` (each test's log directory, at any depth).
pub fn collect_reports(dir: &Path) -> Result<Vec<DiskReport>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("reading {}", d.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", d.display()))?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if entry.file_name() == DISK_COUNTERS_FILE {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                out.extend(
                    parse_counters_file(&text).with_context(|| format!("in {}", path.display()))?,
                );
            }
        }
    }
    Ok(out)
}

/// The built test guest whose image `location` (a path, or a URL whose
/// query is redacted) names, by its file name.
pub fn guest_of_location(location: &str) -> Option<BuiltGuest> {
    let path = location.split(['?', '#']).next().unwrap_or("");
    let file = path.rsplit('/').next().unwrap_or(path);
    KnownTestArtifacts::all()
        .find(|a| a.file_name() == file)
        .and_then(|a| a.built_guest())
}

/// One test's disks, summed over its boots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TestTotals {
    /// The built guest the test booted (`petri`, `debian`), from its boot
    /// disk's file name; empty when it is not a built guest.
    pub guest: String,
    /// Whether any of its disks was remote.
    pub remote: bool,
    /// Boots reported.
    pub boots: u32,
    /// The largest remote disk (else the largest disk), in bytes.
    pub image_bytes: u64,
    /// Bytes fetched from the store, all boots and disks.
    pub fetched: u64,
    /// Requests sent to the store.
    pub requests: u64,
    /// Bytes served from the read cache.
    pub cache_hit: u64,
    /// Bytes a prefetch fetched ahead of the guest (part of `fetched`).
    pub prefetched: u64,
    /// Read requests the guest sent to its disks.
    pub guest_reads: u64,
    /// Bytes the guest read from its disks.
    pub guest_bytes_read: u64,
    /// Microseconds the guest waited on its disks (summed over disks and
    /// boots; each disk's time with at least one read outstanding).
    pub disk_wait_micros: u64,
    /// Milliseconds the VMs ran.
    pub vm_millis: u64,
}

/// Sums reports per test.
pub fn aggregate(reports: &[DiskReport]) -> BTreeMap<String, TestTotals> {
    let mut out: BTreeMap<String, TestTotals> = BTreeMap::new();
    let mut boots: BTreeMap<&str, std::collections::BTreeSet<u32>> = BTreeMap::new();
    for r in reports {
        let t = out.entry(r.test.clone()).or_default();
        if t.guest.is_empty()
            && (r.drive == "boot" || r.drive.is_empty())
            && let Some(g) = guest_of_location(&r.location)
        {
            t.guest = g.cli_name().to_owned();
        }
        if r.remote && !t.remote {
            // The first remote disk decides the image size from now on.
            t.remote = true;
            t.image_bytes = 0;
        }
        if r.remote == t.remote {
            t.image_bytes = t.image_bytes.max(r.disk_bytes);
        }
        t.fetched += r.counters.remote_bytes_fetched;
        t.requests += r.counters.remote_requests;
        t.cache_hit += r.counters.cache_hit_bytes;
        t.prefetched += r.counters.prefetched_bytes;
        t.guest_reads += r.nbd_read_requests;
        t.guest_bytes_read += r.nbd_bytes_read;
        t.disk_wait_micros += r.nbd_read_wait_micros;
        boots.entry(&r.test).or_default().insert(r.boot);
        // Every disk of a boot reports the same VM time: count it once.
        if r.drive == "boot" || r.drive.is_empty() {
            t.vm_millis += r.vm_millis;
        }
    }
    for (test, b) in boots {
        if let Some(t) = out.get_mut(test) {
            t.boots = b.len() as u32;
        }
    }
    out
}

/// A nextest result line: status, seconds, test name.
#[derive(Debug, Clone, PartialEq)]
pub struct TestStatus {
    /// `PASS`, `FAIL`, `SIGSEGV`, `TIMEOUT`, ...
    pub status: String,
    /// Wall time.
    pub secs: f64,
    /// The test name (without the binary id).
    pub test: String,
}

/// Parses a nextest status line such as
/// `        PASS [   1.234s] (1/8) vmm_tests::vmm_tests boot::qemu_x`
/// (the `(n/m)` counter is optional; retries print `TRY 2 PASS`).
pub fn parse_nextest_status(line: &str) -> Option<TestStatus> {
    let line = line.trim();
    let (head, rest) = line.split_once('[')?;
    let status = head.split_whitespace().last()?;
    if status.is_empty() || !status.chars().all(|c| c.is_ascii_uppercase() || c == '-') {
        return None;
    }
    let (time, rest) = rest.split_once(']')?;
    let secs: f64 = time.trim().strip_suffix('s')?.trim().parse().ok()?;
    let mut words = rest.split_whitespace().peekable();
    if words
        .peek()
        .is_some_and(|w| w.starts_with('(') && w.ends_with(')'))
    {
        words.next();
    }
    let _binary = words.next()?;
    let test = words.next()?;
    if words.next().is_some() {
        return None;
    }
    Some(TestStatus {
        status: status.to_owned(),
        secs,
        test: test.to_owned(),
    })
}

/// What one run (cold or warm) produced.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Per test totals from the disk counters.
    pub totals: BTreeMap<String, TestTotals>,
    /// Per test nextest results (the last one for a retried test).
    pub statuses: BTreeMap<String, TestStatus>,
    /// The raw reports, one per disk per boot.
    pub reports: Vec<DiskReport>,
}

impl Phase {
    /// The nextest result of `test`: exact name, else the one whose name
    /// ends with it or that it ends with (harness name prefixes differ).
    fn status(&self, test: &str) -> Option<&TestStatus> {
        self.statuses.get(test).or_else(|| {
            self.statuses
                .iter()
                .find(|(name, _)| name.ends_with(test) || test.ends_with(name.as_str()))
                .map(|(_, s)| s)
        })
    }
}

/// `1.50 MiB`-style sizes (binary units, indicatif's formatting).
pub fn format_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

fn format_time(phase: &Phase, test: &str) -> String {
    match phase.status(test) {
        Some(s) if s.status == "PASS" => format!("{:.1}", s.secs),
        Some(s) => format!("{:.1} {}", s.secs, s.status),
        None => match phase.totals.get(test) {
            // No nextest line: the VM time is the best we have.
            Some(t) if t.vm_millis > 0 => format!("{:.1} vm", t.vm_millis as f64 / 1000.0),
            _ => "-".to_owned(),
        },
    }
}

/// The per-test table, one row per test and run (cold, then warm): the
/// guest booted, boots, wall time, what the guest read (requests, bytes),
/// what was fetched from the store (bytes, requests, the ratio to the bytes
/// read, the part a prefetch fetched), the guest's disk-wait, the image size
/// and the fraction of it fetched. Sums over the test's boots.
pub fn render_table(cold: &Phase, warm: &Phase) -> String {
    let mut tests: Vec<&String> = cold.totals.keys().chain(warm.totals.keys()).collect();
    tests.sort();
    tests.dedup();
    let header = [
        "test",
        "guest",
        "run",
        "boots",
        "secs",
        "reads",
        "read",
        "fetched",
        "req",
        "fetched/read",
        "prefetched",
        "disk-wait s",
        "image",
        "of image",
    ];
    let mut rows: Vec<[String; 14]> = Vec::new();
    for test in tests {
        let any = cold.totals.get(test).or(warm.totals.get(test));
        let remote = any.is_some_and(|t| t.remote);
        let guest = any
            .map(|t| t.guest.as_str())
            .filter(|g| !g.is_empty())
            .unwrap_or("-");
        let image = any.map_or(0, |t| t.image_bytes);
        for (run, phase) in [("cold", cold), ("warm", warm)] {
            let Some(t) = phase.totals.get(test) else {
                continue;
            };
            let dash = || "-".to_owned();
            let remote_cell = |cell: String| if remote { cell } else { dash() };
            let measured = t.guest_reads > 0;
            rows.push([
                test.clone(),
                guest.to_owned(),
                run.to_owned(),
                t.boots.to_string(),
                format_time(phase, test),
                if measured {
                    t.guest_reads.to_string()
                } else {
                    dash()
                },
                if measured {
                    format_bytes(t.guest_bytes_read)
                } else {
                    dash()
                },
                if remote {
                    format_bytes(t.fetched)
                } else {
                    "local".to_owned()
                },
                remote_cell(t.requests.to_string()),
                if remote && measured && t.guest_bytes_read > 0 {
                    format!("{:.2}x", t.fetched as f64 / t.guest_bytes_read as f64)
                } else {
                    dash()
                },
                remote_cell(format_bytes(t.prefetched)),
                if measured {
                    format!("{:.2}", t.disk_wait_micros as f64 / 1e6)
                } else {
                    dash()
                },
                if image > 0 {
                    format_bytes(image)
                } else {
                    dash()
                },
                if remote && image > 0 {
                    format!("{:.2}%", t.fetched as f64 * 100.0 / image as f64)
                } else {
                    dash()
                },
            ]);
        }
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 0 {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("  {cell:>w$}"));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORTS: &str = r#"[
      {"test": "qemu_linux_direct_x64::boot_remote", "boot": 1, "drive": "boot",
       "location": "http://127.0.0.1:4000/petri-test-guest-x64.vhd", "remote": true,
       "disk_bytes": 335544320, "remote_requests": 20, "remote_bytes_fetched": 3145728,
       "remote_retries": 0, "remote_errors": 0, "cache_hit_bytes": 0,
       "cache_miss_bytes": 3145728, "cache_fill_bytes": 3145728,
       "prefetched_bytes": 1048576, "nbd_read_requests": 300, "nbd_bytes_read": 1572864,
       "nbd_read_wait_micros": 1250000, "vm_millis": 9000,
       "exit_code": 0, "a_field_added_later": [1, 2]},
      {"test": "qemu_linux_direct_x64::boot_remote", "boot": 2, "drive": "boot",
       "location": "http://127.0.0.1:4000/petri-test-guest-x64.vhd", "remote": true,
       "disk_bytes": 335544320, "remote_requests": 1, "remote_bytes_fetched": 0,
       "cache_hit_bytes": 3145728, "vm_millis": 7000, "exit_code": 0}
    ]"#;

    fn local_report() -> DiskReport {
        DiskReport {
            test: "qemu_linux_direct_x64::boot_local".into(),
            boot: 1,
            drive: "boot".into(),
            location: "/images/petri-test-guest-x64.raw".into(),
            remote: false,
            disk_bytes: 335_544_320,
            counters: DiskCounters::default(),
            nbd_read_requests: 0,
            nbd_bytes_read: 0,
            nbd_read_wait_micros: 0,
            vm_millis: 5000,
        }
    }

    #[test]
    fn counters_files_parse_and_sum_per_test() {
        let reports = parse_counters_file(REPORTS).unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].counters.remote_bytes_fetched, 3 << 20);
        assert_eq!(reports[0].counters.cache_fill_bytes, 3 << 20);
        // Fields an older backend did not write read as zero.
        assert_eq!(reports[1].counters.cache_miss_bytes, 0);
        let totals = aggregate(&reports);
        let t = &totals["qemu_linux_direct_x64::boot_remote"];
        assert!(t.remote);
        assert_eq!(t.boots, 2);
        assert_eq!(t.fetched, 3 << 20);
        assert_eq!(t.requests, 21);
        assert_eq!(t.cache_hit, 3 << 20);
        assert_eq!(t.image_bytes, 320 << 20);
        assert_eq!(t.vm_millis, 16_000);
        assert_eq!(
            (
                t.guest_reads,
                t.guest_bytes_read,
                t.disk_wait_micros,
                t.prefetched
            ),
            (300, 3 << 19, 1_250_000, 1 << 20)
        );
        assert!(parse_counters_file("{not json").is_err());
        assert!(parse_counters_file(r#"[{"test": "x"}]"#).is_err());
    }

    #[test]
    fn the_guest_comes_from_the_boot_disks_file_name() {
        for (location, guest) in [
            ("/images/petri-test-guest-x64.raw", Some("petri")),
            (
                "http://127.0.0.1:4000/petri-debian-12-x64.vhd",
                Some("debian"),
            ),
            (
                "https://a.blob.core.windows.net/c/petri-debian-12-x64.raw?sig=REDACTED",
                Some("debian"),
            ),
            (
                "http://127.0.0.1:4000/ubuntu-24.04-server-cloudimg-amd64.vhd",
                None,
            ),
            ("/images/petri-debian-12-x64.vhd.part", None),
            ("", None),
        ] {
            assert_eq!(
                guest_of_location(location).map(|g| g.cli_name()),
                guest,
                "{location}"
            );
        }
        let mut debian = local_report();
        debian.test = "debian_guest::x::boot_to_marker".into();
        debian.location = "/images/petri-debian-12-x64.raw".into();
        let totals = aggregate(&[local_report(), debian]);
        assert_eq!(totals["qemu_linux_direct_x64::boot_local"].guest, "petri");
        assert_eq!(totals["debian_guest::x::boot_to_marker"].guest, "debian");
        let table = render_table(
            &Phase {
                totals,
                ..Default::default()
            },
            &Phase::default(),
        );
        let row = table
            .lines()
            .find(|l| l.starts_with("debian_guest::"))
            .unwrap();
        assert_eq!(row.split_whitespace().nth(1), Some("debian"), "{table}");
    }

    #[test]
    fn remote_disk_decides_the_image_size() {
        let mut small_remote = local_report();
        small_remote.remote = true;
        small_remote.disk_bytes = 1 << 20;
        small_remote.drive = "drive1".into();
        let totals = aggregate(&[local_report(), small_remote]);
        let t = &totals["qemu_linux_direct_x64::boot_local"];
        assert!(t.remote);
        assert_eq!(t.image_bytes, 1 << 20);
        assert_eq!(t.vm_millis, 5000, "the VM time counts once per boot");
    }

    #[test]
    fn reports_are_collected_from_nested_log_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("qemu_linux_direct_x64::boot_remote");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join(DISK_COUNTERS_FILE), REPORTS).unwrap();
        let b = dir.path().join("nested/deeper");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("console.log"), "not counters").unwrap();
        let reports = collect_reports(dir.path()).unwrap();
        assert_eq!(reports.len(), 2);
        assert!(
            collect_reports(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
        std::fs::write(b.join(DISK_COUNTERS_FILE), "[oops").unwrap();
        let err = format!("{:#}", collect_reports(dir.path()).unwrap_err());
        assert!(err.contains("nested/deeper"), "{err}");
    }

    #[test]
    fn nextest_status_lines() {
        assert_eq!(
            parse_nextest_status(
                "        PASS [  12.345s] (3/8) vmm_tests::vmm_tests qemu_linux_direct_x64::boot"
            ),
            Some(TestStatus {
                status: "PASS".into(),
                secs: 12.345,
                test: "qemu_linux_direct_x64::boot".into()
            })
        );
        assert_eq!(
            parse_nextest_status("        FAIL [   0.5s] vmm_tests::vmm_tests a::b"),
            Some(TestStatus {
                status: "FAIL".into(),
                secs: 0.5,
                test: "a::b".into()
            })
        );
        assert_eq!(
            parse_nextest_status("  TRY 2 PASS [   1.000s] (1/1) bin t"),
            Some(TestStatus {
                status: "PASS".into(),
                secs: 1.0,
                test: "t".into()
            })
        );
        for not_status in [
            "     Summary [   0.272s] 8 tests run: 8 passed, 0 skipped",
            "    Starting 8 tests across 1 binary",
            "   Compiling xtask v0.1.0 (/work/main/xtask)",
            "PASS [ abc] bin t",
            "",
            "[",
        ] {
            assert_eq!(parse_nextest_status(not_status), None, "{not_status}");
        }
    }

    #[test]
    fn table_shows_cold_warm_and_fraction_read() {
        let remote = "qemu_linux_direct_x64::boot_remote";
        let local = "qemu_linux_direct_x64::boot_local";
        let cold_reports = parse_counters_file(REPORTS).unwrap();
        let mut cold = Phase {
            totals: aggregate(&[&cold_reports[..1], &[local_report()]].concat()),
            ..Default::default()
        };
        let status = |secs, test: &str, st: &str| TestStatus {
            status: st.into(),
            secs,
            test: test.into(),
        };
        cold.statuses
            .insert(remote.into(), status(12.34, remote, "PASS"));
        cold.statuses
            .insert(local.into(), status(6.0, local, "PASS"));
        let mut warm = Phase {
            totals: aggregate(&[cold_reports[1].clone(), local_report()]),
            ..Default::default()
        };
        warm.totals.get_mut(remote).unwrap().boots = 1;
        warm.statuses
            .insert(remote.into(), status(8.0, remote, "FAIL"));

        let table = render_table(&cold, &warm);
        let lines: Vec<&str> = table.lines().collect();
        // A header, then cold and warm rows per test, sorted by name.
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("test"), "{table}");
        for col in [
            "run",
            "secs",
            "reads",
            "fetched",
            "fetched/read",
            "prefetched",
            "disk-wait s",
            "of image",
        ] {
            assert!(lines[0].contains(col), "{table}");
        }
        let cells = |row: &str, test: &str| -> Vec<String> {
            assert!(row.starts_with(test), "{table}");
            row[test.len()..]
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        };
        // A local disk: nothing fetched, no NBD figures.
        assert_eq!(
            cells(lines[1], local),
            [
                "petri",
                "cold",
                "1",
                "6.0",
                "-",
                "-",
                "local",
                "-",
                "-",
                "-",
                "-",
                "320.00 MiB",
                "-"
            ],
            "{table}"
        );
        // No nextest line in the warm run: the VM time.
        assert_eq!(
            cells(lines[2], local)[1..4],
            ["warm", "1", "5.0 vm"],
            "{table}"
        );
        assert_eq!(
            cells(lines[3], remote),
            [
                "petri",
                "cold",
                "1",
                "12.3",
                "300",
                "1.50 MiB",
                "3.00 MiB",
                "20",
                "2.00x",
                "1.00 MiB",
                "1.25",
                "320.00 MiB",
                "0.94%"
            ],
            "{table}"
        );
        // The warm report carries no NBD figures: dashes, not zeros.
        assert_eq!(
            cells(lines[4], remote),
            [
                "petri",
                "warm",
                "1",
                "8.0 FAIL",
                "-",
                "-",
                "0 B",
                "1",
                "-",
                "0 B",
                "-",
                "320.00 MiB",
                "0.00%"
            ],
            "{table}"
        );
        // Columns line up: every row is as wide as the header or wider.
        assert!(lines.iter().all(|l| l.len() >= lines[0].len() - 4));
    }
}
