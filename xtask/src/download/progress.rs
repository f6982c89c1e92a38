//! Download progress: indicatif bars on a terminal, plain periodic lines
//! otherwise (CI logs).

use indicatif::HumanBytes;
use indicatif::MultiProgress;
use indicatif::ProgressBar;
use indicatif::ProgressDrawTarget;
use indicatif::ProgressStyle;
use parking_lot::Mutex;
use std::time::Duration;
use std::time::Instant;

/// How often a plain progress line is printed per file, by default.
pub(crate) const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

/// Progress of the whole run.
pub(crate) struct Progress {
    mode: Mode,
    interval: Duration,
}

enum Mode {
    Bars {
        multi: MultiProgress,
        total: ProgressBar,
    },
    Plain {
        total: Mutex<PlainTotal>,
    },
}

struct PlainTotal {
    len: u64,
    done: u64,
}

/// Progress of one file.
pub(crate) struct FileProgress<'a> {
    parent: &'a Progress,
    name: String,
    bar: Option<ProgressBar>,
    plain: Mutex<PlainFile>,
}

struct PlainFile {
    len: u64,
    done: u64,
    fetched_this_run: u64,
    started: Instant,
    last_print: Instant,
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Progress {
    /// Progress for `total_len` bytes; bars if `tty`.
    pub(crate) fn new(total_len: u64, tty: bool, interval: Duration) -> Self {
        let mode = if tty {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let total = multi.add(ProgressBar::new(total_len));
            total.set_style(bar_style(
                "{prefix:>28} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ));
            total.set_prefix("total");
            Mode::Bars { multi, total }
        } else {
            Mode::Plain {
                total: Mutex::new(PlainTotal {
                    len: total_len,
                    done: 0,
                }),
            }
        };
        Progress { mode, interval }
    }

    /// Prints a line without breaking the bars.
    pub(crate) fn println(&self, line: &str) {
        match &self.mode {
            Mode::Bars { multi, .. } => {
                if multi.println(line).is_err() {
                    println!("{line}");
                }
            }
            Mode::Plain { .. } => println!("{line}"),
        }
    }

    /// Corrects the total when a file turns out to have `actual` bytes
    /// instead of the `expected` counted at start.
    pub(crate) fn adjust_total(&self, expected: u64, actual: u64) {
        match &self.mode {
            Mode::Bars { total, .. } => {
                let len = total.length().unwrap_or(0);
                total.set_length(len.saturating_sub(expected).saturating_add(actual));
            }
            Mode::Plain { total } => {
                let mut t = total.lock();
                t.len = t.len.saturating_sub(expected).saturating_add(actual);
            }
        }
    }

    /// Removes `n` bytes from the total's done count (a restart from zero).
    fn undo(&self, n: u64) {
        match &self.mode {
            Mode::Bars { total, .. } => total.set_position(total.position().saturating_sub(n)),
            Mode::Plain { total } => {
                let mut t = total.lock();
                t.done = t.done.saturating_sub(n);
            }
        }
    }

    fn add(&self, n: u64) {
        match &self.mode {
            Mode::Bars { total, .. } => total.inc(n),
            Mode::Plain { total } => total.lock().done += n,
        }
    }

    /// Starts a file of `len` bytes of which `done` are already there.
    pub(crate) fn start_file(&self, name: &str, len: u64, done: u64) -> FileProgress<'_> {
        self.add(done);
        let bar = match &self.mode {
            Mode::Bars { multi, total } => {
                let bar = multi.insert_before(total, ProgressBar::new(len));
                bar.set_style(bar_style(
                    "{prefix:>28} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                ));
                bar.set_prefix(short(name, 28));
                bar.set_position(done);
                bar.reset_eta();
                Some(bar)
            }
            Mode::Plain { .. } => {
                println!(
                    "download-image: {name}: {} to fetch{}",
                    HumanBytes(len - done.min(len)),
                    if done > 0 {
                        format!(" (resuming, {} already there)", HumanBytes(done))
                    } else {
                        String::new()
                    }
                );
                None
            }
        };
        let now = Instant::now();
        FileProgress {
            parent: self,
            name: name.to_string(),
            bar,
            plain: Mutex::new(PlainFile {
                len,
                done,
                fetched_this_run: 0,
                started: now,
                last_print: now,
            }),
        }
    }

    /// Clears the bars at the end.
    pub(crate) fn finish(&self) {
        if let Mode::Bars { total, .. } = &self.mode {
            total.finish();
        }
    }
}

impl FileProgress<'_> {
    /// `n` more bytes are on disk.
    pub(crate) fn inc(&self, n: u64) {
        self.parent.add(n);
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        let mut p = self.plain.lock();
        p.done += n;
        p.fetched_this_run += n;
        if p.last_print.elapsed() >= self.parent.interval {
            p.last_print = Instant::now();
            let secs = p.started.elapsed().as_secs_f64().max(0.001);
            let rate = p.fetched_this_run as f64 / secs;
            let left = p.len.saturating_sub(p.done);
            let eta = if rate > 0.0 {
                format!("{:.0}s", left as f64 / rate)
            } else {
                "?".into()
            };
            let (tdone, tlen) = match &self.parent.mode {
                Mode::Plain { total } => {
                    let t = total.lock();
                    (t.done, t.len)
                }
                Mode::Bars { .. } => (0, 0),
            };
            println!(
                "download-image: {}: {} / {} ({}%), {}/s, ETA {eta}; total {} / {}",
                self.name,
                HumanBytes(p.done),
                HumanBytes(p.len),
                percent(p.done, p.len),
                HumanBytes(rate as u64),
                HumanBytes(tdone),
                HumanBytes(tlen),
            );
        }
    }

    /// The download restarts from zero: forget `n` bytes counted so far.
    pub(crate) fn restart(&self, n: u64) {
        self.parent.undo(n);
        if let Some(bar) = &self.bar {
            bar.set_position(0);
            bar.reset_eta();
        }
        let mut p = self.plain.lock();
        p.done = 0;
    }

    /// The file is done (or failed); removes its bar.
    pub(crate) fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn percent(done: u64, len: u64) -> u64 {
    if len == 0 {
        100
    } else {
        ((u128::from(done) * 100) / u128::from(len)) as u64
    }
}

fn short(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_string()
    } else {
        let tail: String = name
            .chars()
            .skip(name.chars().count() - (max - 1))
            .collect();
        format!("…{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_short_names() {
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
        assert_eq!(short("abc", 5), "abc");
        assert_eq!(short("abcdefgh", 5), "…efgh");
    }
}
