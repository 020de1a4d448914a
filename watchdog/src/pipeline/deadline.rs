//! The one owner of an invocation's deadline and of the `TIMEOUT` error.
//! The deadline itself is set when the invocation arrives (warm: queued time
//! counts, section 4; one-shot: from when the function is ready, section 5);
//! this layer ends the run there by dropping it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use runtime_sdk::{ErrorCode, Invocation, InvokeError, InvokeResult};
use tokio::time::Timeout;
use tower::{Layer, Service};

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct DeadlineLayer {
    metrics: Metrics,
}

impl DeadlineLayer {
    pub fn new(metrics: Metrics) -> Self {
        DeadlineLayer { metrics }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> Service<Invocation> for Deadline<S>
where
    S: Service<Invocation, Response = InvokeResult, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = InvokeResult;
    type Error = Infallible;
    // Named, not boxed: whoever holds the pipeline's future holds it whole.
    type Future = Timed<S::Future>;

    super::always_ready!();

    fn call(&mut self, inv: Invocation) -> Self::Future {
        let deadline = inv.deadline;
        let budget = inv.budget();
        let execution_id = inv.execution_id.clone();
        Timed {
            inner: tokio::time::timeout_at(deadline.into(), self.inner.call(inv)),
            metrics: self.metrics.clone(),
            execution_id,
            budget,
        }
    }
}

pin_project_lite::pin_project! {
    /// The run, dropped at the deadline and answered with `TIMEOUT` then.
    pub struct Timed<F> {
        #[pin]
        inner: Timeout<F>,
        metrics: Metrics,
        execution_id: Arc<str>,
        budget: Duration,
    }
}

impl<F> Future for Timed<F>
where
    F: Future<Output = Result<InvokeResult, Infallible>>,
{
    type Output = Result<InvokeResult, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match ready!(this.inner.poll(cx)) {
            Ok(Ok(r)) => r,
            Err(_) => Err(InvokeError::timeout(this.execution_id, *this.budget)),
        };
        if matches!(&result, Err(e) if e.code == ErrorCode::Timeout) {
            this.metrics.timeout();
        }
        Poll::Ready(Ok(result))
    }
}
