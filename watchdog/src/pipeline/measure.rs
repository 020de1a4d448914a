//! Times the run (not the queue wait) and keeps the in-flight gauge right
//! even when the deadline or a cancellation drops the future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use runtime_sdk::{Invocation, InvokeResult};
use tower::{Layer, Service};

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct MeasureLayer(pub Metrics);

impl<S> Layer<S> for MeasureLayer {
    type Service = Measure<S>;
    fn layer(&self, inner: S) -> Measure<S> {
        Measure {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Measure<S> {
    inner: S,
    metrics: Metrics,
}

struct Running {
    metrics: Metrics,
    started: Instant,
    success: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.metrics.in_flight().dec();
        self.metrics.finished(self.success, self.started.elapsed());
    }
}

impl<S> Service<Invocation> for Measure<S>
where
    S: Service<Invocation, Response = InvokeResult, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = InvokeResult;
    type Error = Infallible;
    // Named, not boxed: whoever holds the pipeline's future holds it whole.
    type Future = Measured<S::Future>;

    super::always_ready!();

    fn call(&mut self, inv: Invocation) -> Self::Future {
        self.metrics.in_flight().inc();
        let running = Running {
            metrics: self.metrics.clone(),
            started: Instant::now(),
            // Stays false if the deadline drops this future mid-run.
            success: false,
        };
        Measured {
            inner: self.inner.call(inv),
            running: Some(running),
        }
    }
}

pin_project_lite::pin_project! {
    /// The run, with its `Running` record ended when it ends or is dropped.
    pub struct Measured<F> {
        #[pin]
        inner: F,
        running: Option<Running>,
    }
}

impl<F> Future for Measured<F>
where
    F: Future<Output = Result<InvokeResult, Infallible>>,
{
    type Output = Result<InvokeResult, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(r) = ready!(this.inner.poll(cx));
        if let Some(mut running) = this.running.take() {
            running.success = r.is_ok();
        }
        Poll::Ready(Ok(r))
    }
}
