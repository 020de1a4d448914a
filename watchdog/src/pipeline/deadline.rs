//! The one owner of an invocation's deadline and of the `TIMEOUT` error.
//! The deadline itself is set when the invocation arrives (warm: queued time
//! counts, section 4; one-shot: from when the function is ready, section 5);
//! this layer ends the run there by dropping it.

use std::convert::Infallible;

use runtime_sdk::{BoxFuture, ErrorCode, Invocation, InvokeError, InvokeResult};
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
    type Future = BoxFuture<'static, Result<InvokeResult, Infallible>>;

    super::always_ready!();

    fn call(&mut self, inv: Invocation) -> Self::Future {
        let metrics = self.metrics.clone();
        let deadline = inv.deadline;
        let budget = inv.budget();
        let execution_id = inv.execution_id.clone();
        let fut = self.inner.call(inv);
        Box::pin(async move {
            let result = match tokio::time::timeout_at(deadline.into(), fut).await {
                Ok(r) => r?,
                Err(_) => Err(InvokeError::timeout(&execution_id, budget)),
            };
            if matches!(&result, Err(e) if e.code == ErrorCode::Timeout) {
                metrics.timeout();
            }
            Ok(result)
        })
    }
}
