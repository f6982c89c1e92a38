//! Log output of petri's binaries (the test harness, `petri-tool`): one
//! rule for where log lines go and when they are coloured.
//!
//! Lines go to standard error, filtered by `RUST_LOG` (else a default the
//! binary chooses). They carry ANSI colour codes only when standard error
//! is a terminal and `NO_COLOR` is unset or empty (<https://no-color.org>),
//! so logs written to a file, a pipe or a CI log are plain text.

use std::ffi::OsStr;
use std::io::IsTerminal;

/// Installs the process's log subscriber (see the module docs), with
/// `default_filter` when `RUST_LOG` is unset or invalid. Does nothing if a
/// subscriber is installed already.
pub fn init_stderr_logging(default_filter: &str) {
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .try_init();
}

/// Whether output to a stream should be coloured: only on a terminal, and
/// not when `NO_COLOR` holds a non-empty value.
pub fn use_colour(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }
}
