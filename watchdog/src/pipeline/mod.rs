//! The one invocation pipeline both modes run (contract sections 4, 5, 10).
//!
//! An [`Invocation`] goes through, outermost first:
//! 1. `catch_panic`: a panic below becomes a `FUNCTION_ERROR` result, so no
//!    invocation ends without one;
//! 2. `deadline`: the one owner of the deadline and of `TIMEOUT`; dropping
//!    the inner future at the deadline is what stops the runner (process
//!    groups are killed by their guards, Python threads are interrupted);
//! 3. `measure`: times the run and keeps the in-flight gauge right when the
//!    deadline or a cancellation drops it;
//! 4. `output`: checks `OUTPUT_SCHEMA`;
//! 5. the runner, a [`Handler`].
//!
//! One-shot mode calls it once. Warm mode puts admission (slots and queue)
//! and the HTTP concerns in front of it, and runs it detached from the
//! connection (`warm::dispatch`).

mod catch_panic;
mod deadline;
mod measure;
mod output;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{FutureExt, Map};
use runtime_sdk::{BoxFuture, Handler, Invocation, InvokeResult};
use tower::{Service, ServiceBuilder};

pub use catch_panic::{CatchPanic, CatchPanicLayer};
pub use deadline::{Deadline, DeadlineLayer};
pub use measure::{Measure, MeasureLayer};
pub use output::{OutputCheck, OutputCheckLayer};

use crate::metrics::Metrics;
use crate::validate::Validator;

/// The whole pipeline, as one named type both modes hold. Not a boxed
/// service: that cost a clone and a box of the future per call. Its future is
/// named too, so the caller's own box (warm: `dispatch`) holds it whole.
pub type Pipeline = CatchPanic<Deadline<Measure<OutputCheck<Run>>>>;

pub fn build(handler: Arc<dyn Handler>, validator: Validator, metrics: Metrics) -> Pipeline {
    ServiceBuilder::new()
        // Outermost, so a panic in any layer still ends as a result.
        .layer(CatchPanicLayer)
        .layer(DeadlineLayer::new(metrics.clone()))
        // Inside the deadline: a run cut short is counted as a failure.
        .layer(MeasureLayer(metrics))
        .layer(OutputCheckLayer(validator))
        .service(Run(handler))
}

/// The runner as the innermost service.
#[derive(Clone)]
pub struct Run(pub Arc<dyn Handler>);

impl Service<Invocation> for Run {
    type Response = InvokeResult;
    type Error = Infallible;
    // The runner's one box, no second one of our own.
    type Future =
        Map<BoxFuture<'static, InvokeResult>, fn(InvokeResult) -> Result<InvokeResult, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inv: Invocation) -> Self::Future {
        self.0.clone().invoke_shared(inv).map(Ok)
    }
}

/// A service of this pipeline is always ready: load is shed in front of it
/// (warm admission), never by back-pressure.
macro_rules! always_ready {
    () => {
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
    };
}
pub(crate) use always_ready;

#[cfg(test)]
mod tests;
