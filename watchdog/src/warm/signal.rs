//! A future that waits for a rare signal (a stop, a cancellation), polled again
//! only when the signal may have come.
//!
//! Polling tokio's `Notified` (under `watch::Receiver::changed` and
//! `CancellationToken::cancelled`) takes a lock to renew its waker, and a busy
//! connection polls such a future on every request. The waker it holds stays
//! valid, so `Signal` polls it on its first poll, when its task's waker is not
//! the one it holds, and when a cheap check (`came`, an atomic read) says the
//! signal is there; otherwise it answers `Pending` at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

pin_project_lite::pin_project! {
    pub struct Signal<F, C> {
        #[pin]
        inner: F,
        came: C,
        holds: Option<Waker>,
    }
}

impl<F: Future, C: Fn() -> bool> Signal<F, C> {
    /// `came` must be true once `inner` would be ready (it may be true sooner).
    pub fn new(inner: F, came: C) -> Self {
        Signal {
            inner,
            came,
            holds: None,
        }
    }
}

impl<F: Future, C: Fn() -> bool> Future for Signal<F, C> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let renew = this.holds.as_ref().is_none_or(|w| !w.will_wake(cx.waker()));
        if !renew && !(this.came)() {
            return Poll::Pending;
        }
        let polled = this.inner.poll(cx);
        if polled.is_pending() && renew {
            *this.holds = Some(cx.waker().clone());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn it_is_ready_when_the_signal_comes_and_not_before() {
        let token = CancellationToken::new();
        let probe = token.clone();
        let mut signal = Box::pin(Signal::new(token.clone().cancelled_owned(), move || {
            probe.is_cancelled()
        }));
        for _ in 0..3 {
            assert!(futures_util::poll!(signal.as_mut()).is_pending());
        }
        let waiter = tokio::spawn(signal);
        tokio::task::yield_now().await;
        token.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken by the signal")
            .expect("no panic");
    }

    #[tokio::test]
    async fn a_new_waker_is_given_to_the_inner_future() {
        let (tx, mut rx) = tokio::sync::watch::channel(());
        let probe = rx.clone();
        // First polled here, with this task's waker; then moved to another task,
        // whose waker must reach the watch for the change to wake it.
        let mut signal = Box::pin(Signal::new(
            async move { rx.changed().await.is_ok() },
            move || probe.has_changed().unwrap_or(true),
        ));
        assert!(futures_util::poll!(signal.as_mut()).is_pending());
        let waiter = tokio::spawn(signal);
        tokio::task::yield_now().await;
        tx.send(()).expect("a receiver");
        let changed = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken by the change")
            .expect("no panic");
        assert!(changed);
    }
}
