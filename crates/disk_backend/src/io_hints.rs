//! Hints that travel with an I/O through a stack of disks without being
//! arguments of every method: today one, whether the I/O is *background*
//! work (a prefetch) that must never make a guest's read wait.
//!
//! Why a scoped hint rather than a parameter: a read passes through the
//! layered disk, a layer, a `Disk` handle and a blob before it becomes an
//! HTTP request; only the first (who starts a prefetch) and the last (the
//! HTTP client, which then skips readahead for it and may merge it into
//! larger requests) care. The hint is set for the duration of each poll of
//! a future ([`with_hints`]) and read with [`current`], so it follows the
//! future on whatever thread polls it, under any executor. Work spawned as
//! a new task does not inherit it (it is not part of that future).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

/// Hints for the I/O a future does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoHints {
    /// Background work (a prefetch): no readahead on its behalf, and it may
    /// be fetched in larger requests. Guest reads are never background.
    pub background: bool,
}

thread_local! {
    static CURRENT: Cell<IoHints> = const { Cell::new(IoHints { background: false }) };
}

/// The hints of the I/O being polled on this thread right now.
pub fn current() -> IoHints {
    CURRENT.with(Cell::get)
}

/// Runs `fut` with `hints` in effect for every poll of it.
pub fn with_hints<F: Future>(hints: IoHints, fut: F) -> WithHints<F> {
    WithHints {
        hints,
        fut: Box::pin(fut),
    }
}

/// A future with [`IoHints`] in effect while it is polled (see
/// [`with_hints`]).
pub struct WithHints<F> {
    hints: IoHints,
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for WithHints<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let hints = self.hints;
        let outer = CURRENT.with(|c| c.replace(hints));
        // Restored even if the inner future panics.
        struct Restore(IoHints);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(outer);
        self.fut.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hints_hold_across_awaits_and_nest() {
        assert!(!current().background);
        let bg = IoHints { background: true };
        with_hints(bg, async {
            assert!(current().background);
            tokio::task::yield_now().await;
            assert!(current().background, "after a suspension too");
            with_hints(IoHints::default(), async {
                assert!(!current().background);
            })
            .await;
            assert!(current().background, "restored after the inner scope");
        })
        .await;
        assert!(!current().background);
    }

    #[tokio::test]
    async fn spawned_tasks_do_not_inherit() {
        let bg = IoHints { background: true };
        let inner = with_hints(bg, async { tokio::spawn(async { current() }).await })
            .await
            .unwrap();
        assert!(!inner.background);
    }
}
