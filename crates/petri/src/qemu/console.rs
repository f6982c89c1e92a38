//! The serial console: a reader task appends QEMU's output lines to a log
//! file and to an in-memory buffer, and wakes whoever waits for a line.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncBufReadExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

/// Console lines kept in an error message.
pub(super) const CONSOLE_TAIL_LINES: usize = 40;

struct ConsoleState {
    lines: Vec<String>,
    closed: bool,
}

/// The serial console shared by the reader task and the VM handle.
pub(super) struct Console {
    state: Mutex<ConsoleState>,
    changed: watch::Sender<u64>,
}

impl Console {
    /// An empty, open console and a receiver that sees every change.
    pub(super) fn new() -> (Arc<Console>, watch::Receiver<u64>) {
        let (changed, rx) = watch::channel(0);
        let console = Arc::new(Console {
            state: Mutex::new(ConsoleState {
                lines: Vec::new(),
                closed: false,
            }),
            changed,
        });
        (console, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConsoleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a line and wakes the waiters.
    pub(super) fn push(&self, line: String) {
        self.lock().lines.push(line);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Marks the end of QEMU's output and wakes the waiters.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Whether QEMU's output has ended.
    pub(super) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Every line so far, newline-separated.
    pub(super) fn text(&self) -> String {
        self.lock().lines.join("\n")
    }

    /// The last [`CONSOLE_TAIL_LINES`] lines, indented, for an error message.
    pub(super) fn tail(&self) -> String {
        let state = self.lock();
        let start = state.lines.len().saturating_sub(CONSOLE_TAIL_LINES);
        let mut out = String::new();
        for line in &state.lines[start..] {
            out.push_str("\n    | ");
            out.push_str(line);
        }
        if out.is_empty() {
            out.push_str("\n    (no console output)");
        }
        out
    }
}

/// Waits until a line at or after `*next_line` contains `needle`; moves
/// `*next_line` past it. Fails on timeout or when the console closes
/// first, with the console tail.
pub(super) async fn wait_for_line(
    console: &Console,
    rx: &mut watch::Receiver<u64>,
    next_line: &mut usize,
    needle: &str,
    timeout: Duration,
    log: &Path,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        {
            let state = console.lock();
            if let Some((i, line)) = state
                .lines
                .iter()
                .enumerate()
                .skip(*next_line)
                .find(|(_, l)| l.contains(needle))
            {
                *next_line = i + 1;
                return Ok(line.clone());
            }
            *next_line = (*next_line).max(state.lines.len());
            if state.closed {
                drop(state);
                anyhow::bail!(
                    "the console closed (QEMU exited) before a line containing {needle:?} \
                     appeared; console {}:{}",
                    log.display(),
                    console.tail()
                );
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            // The sender is gone: the next pass sees `closed`.
            Ok(Err(_)) => console.close(),
            Err(_) => anyhow::bail!(
                "timed out after {timeout:?} waiting for a console line containing {needle:?}; \
                 console {}:{}",
                log.display(),
                console.tail()
            ),
        }
    }
}

/// Copies `reader`'s lines into `file` and, if given, `console` (closed
/// at the end), until the reader ends.
pub(super) async fn pump_lines<R>(reader: R, file: PathBuf, console: Option<Arc<Console>>)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut out = match tokio::fs::File::create(&file).await {
        Ok(f) => Some(f),
        Err(err) => {
            tracing::warn!(file = %file.display(), %err, "cannot create the console log");
            None
        }
    };
    let mut reader = tokio::io::BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if let Some(f) = &mut out
                    && f.write_all(&buf).await.is_err()
                {
                    out = None;
                }
                if let Some(console) = &console {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    console.push(line);
                }
            }
        }
    }
    if let Some(f) = &mut out {
        let _ = f.flush().await;
    }
    if let Some(console) = console {
        console.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn console_waits_for_lines_in_order_and_reports_the_tail() {
        let (console, mut rx) = Console::new();
        let log = Path::new("/logs/console.log");
        let feeder = {
            let console = console.clone();
            tokio::spawn(async move {
                for line in [
                    "boot",
                    "PETRI_GUEST_READY uptime=1",
                    "PETRI_STEP a status=0",
                ] {
                    console.push(line.into());
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut next = 0;
        let ready = wait_for_line(
            &console,
            &mut rx,
            &mut next,
            "READY",
            Duration::from_secs(60),
            log,
        )
        .await
        .unwrap();
        assert_eq!(ready, "PETRI_GUEST_READY uptime=1");
        let step = wait_for_line(
            &console,
            &mut rx,
            &mut next,
            "PETRI_STEP a",
            Duration::from_secs(60),
            log,
        )
        .await
        .unwrap();
        assert!(step.ends_with("status=0"));
        feeder.await.unwrap();
        // A matched line is not matched again: this one never comes.
        let err = wait_for_line(
            &console,
            &mut rx,
            &mut next,
            "READY",
            Duration::from_millis(20),
            log,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("timed out") && err.contains("\"READY\""),
            "{err}"
        );
        assert!(err.contains("/logs/console.log"), "{err}");
        assert!(err.contains("| PETRI_STEP a status=0"), "{err}");

        // After the console closes, waiting fails at once with the tail.
        console.close();
        let err = wait_for_line(
            &console,
            &mut rx,
            &mut next,
            "DONE",
            Duration::from_secs(600),
            log,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("console closed") && err.contains("| boot"),
            "{err}"
        );
    }

    #[test]
    fn console_tail_is_bounded() {
        let (console, _rx) = Console::new();
        assert!(console.tail().contains("(no console output)"));
        for i in 0..100 {
            console.push(format!("line {i}"));
        }
        let tail = console.tail();
        assert_eq!(tail.lines().count(), CONSOLE_TAIL_LINES + 1, "{tail}");
        assert!(
            tail.ends_with("| line 99") && !tail.contains("| line 59\n"),
            "{tail}"
        );
    }
}
