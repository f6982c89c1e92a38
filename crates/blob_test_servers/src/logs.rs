//! Every log line of a test process, kept in memory, so a test can check
//! what was logged (how many warnings, that no secret appears).
//!
//! The subscriber is the process's global one, so lines logged on any
//! thread (engine threads, blocking helpers) are kept. Install it once per
//! test binary with [`captured_logs`] before the code under test runs;
//! tests running in one process share it, so a test filters lines by
//! something of its own (a temporary directory's path).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;

/// The captured log text of this process.
#[derive(Clone)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// The warning lines logged so far that contain `needle`.
    pub fn warnings_with(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// Installs (once) a global subscriber that keeps every line at `TRACE`
/// and above, without colours, and returns its buffer.
pub fn captured_logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs(Arc::default());
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        logs
    })
}
