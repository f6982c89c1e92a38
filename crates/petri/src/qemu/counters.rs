//! The report of what one VM's disk did, as the backend prints and stores
//! it (and as the main job in xtask reads it back).

use crate::disk_stack::DiskCounters;
use serde::Serialize;

/// What one VM's disk did, as printed after [`DISK_COUNTERS_MARKER`](super::DISK_COUNTERS_MARKER) and
/// stored in [`DISK_COUNTERS_FILE`](super::DISK_COUNTERS_FILE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DiskCountersReport {
    /// The full test name.
    pub test: String,
    /// Which boot of the test (1 for the first).
    pub boot: u32,
    /// The drive: `boot` or `drive<N>`.
    pub drive: String,
    /// The image: a path, or a URL with its query redacted.
    pub location: String,
    /// Whether the image was read from a remote store.
    pub remote: bool,
    /// The disk size the guest saw, in bytes.
    pub disk_bytes: u64,
    /// The disk's counters, as fields of this object (`remote_requests`,
    /// `remote_bytes_fetched`, ..., one per [`DiskCounters`] field).
    #[serde(flatten)]
    pub counters: DiskCounters,
    /// Read requests the guest sent to the NBD export.
    #[serde(default)]
    pub nbd_read_requests: u64,
    /// Bytes the guest read through the NBD export.
    #[serde(default)]
    pub nbd_bytes_read: u64,
    /// The guest's disk-wait time in microseconds: wall time with at least
    /// one read request outstanding at the NBD export.
    #[serde(default)]
    pub nbd_read_wait_micros: u64,
    /// Milliseconds from launch to the end of the VM.
    pub vm_millis: u64,
    /// QEMU's exit code, if it exited on its own.
    pub exit_code: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters are fields of the report object (what the main job in
    /// xtask parses, one per `DiskCounters` field), and a report
    /// round-trips.
    #[test]
    fn counters_report_json_has_one_field_per_counter() {
        let report = DiskCountersReport {
            test: "t".into(),
            boot: 2,
            drive: "boot".into(),
            location: "http://h/x.vhd?<redacted>".into(),
            remote: true,
            disk_bytes: 4096,
            counters: DiskCounters {
                remote_requests: 3,
                remote_bytes_fetched: 1024,
                cache_hit_bytes: 512,
                ..DiskCounters::default()
            },
            nbd_read_requests: 4,
            nbd_bytes_read: 2048,
            nbd_read_wait_micros: 77,
            vm_millis: 9,
            exit_code: Some(0),
        };
        let json = serde_json::to_value(&report).unwrap();
        let fields = json.as_object().unwrap();
        let counters = serde_json::to_value(report.counters).unwrap();
        let counters = counters.as_object().unwrap();
        assert!(counters.len() >= 7, "{counters:?}");
        for (name, value) in counters {
            assert_eq!(fields.get(name), Some(value), "{name}: {json}");
        }
        for name in [
            "test",
            "boot",
            "drive",
            "location",
            "remote",
            "disk_bytes",
            "nbd_read_requests",
            "nbd_bytes_read",
            "nbd_read_wait_micros",
            "vm_millis",
            "exit_code",
        ] {
            assert!(fields.contains_key(name), "{name} missing: {json}");
        }
        assert_eq!(fields.len(), 11 + counters.len(), "{json}");
        assert_eq!(json["remote_bytes_fetched"], 1024);
        let back: DiskCountersReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }
}
