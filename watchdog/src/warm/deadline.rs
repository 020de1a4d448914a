//! Ends every invocation by its deadline with `TIMEOUT` (504). It sits
//! above the concurrency layer because queued time counts (section 4).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use runtime_sdk::{BoxFuture, ErrorCode, Invocation, InvokeResult};
use tower::{Layer, Service};

use super::state::State;
use crate::runner::process::timeout_error;

#[derive(Clone)]
pub struct DeadlineLayer(pub Arc<State>);

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            state: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> Service<Invocation> for Deadline<S>
where
    S: Service<Invocation, Response = InvokeResult, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = InvokeResult;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<InvokeResult, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inv: Invocation) -> Self::Future {
        let state = self.state.clone();
        let budget = inv.remaining();
        let deadline = inv.deadline;
        let execution_id = inv.execution_id.clone();
        let fut = self.inner.call(inv);
        Box::pin(async move {
            let result = match tokio::time::timeout_at(deadline.into(), fut).await {
                Ok(r) => r?,
                // Dropping the inner future stops the runner's work (process
                // groups are killed by their guards).
                Err(_) => Err(timeout_error(&execution_id, budget)),
            };
            if matches!(&result, Err(e) if e.code == ErrorCode::Timeout) {
                state.metrics.timeout();
            }
            Ok(result)
        })
    }
}
