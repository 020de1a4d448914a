//! Times the run (not the queue wait) and keeps the in-flight gauge right
//! even when the deadline or a cancellation drops the future.

use std::convert::Infallible;
use std::time::Instant;

use runtime_sdk::{BoxFuture, Invocation, InvokeResult};
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
    type Future = BoxFuture<'static, Result<InvokeResult, Infallible>>;

    super::always_ready!();

    fn call(&mut self, inv: Invocation) -> Self::Future {
        self.metrics.in_flight().inc();
        let mut running = Running {
            metrics: self.metrics.clone(),
            started: Instant::now(),
            // Stays false if the deadline drops this future mid-run.
            success: false,
        };
        let fut = self.inner.call(inv);
        Box::pin(async move {
            let r = fut.await?;
            running.success = r.is_ok();
            drop(running);
            Ok(r)
        })
    }
}
