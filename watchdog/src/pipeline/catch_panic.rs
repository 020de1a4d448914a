//! A panic in a runner (or a layer) becomes a `FUNCTION_ERROR` result, as
//! aws-lambda-rust-runtime's `CatchPanicService` does: the invocation still
//! gets its one result, and the watchdog keeps serving.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::future::{CatchUnwind, Either, Ready};
use futures_util::FutureExt;
use runtime_sdk::{ErrorCode, Invocation, InvokeError, InvokeResult};
use tower::{Layer, Service};

#[derive(Clone, Copy)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic(inner)
    }
}

#[derive(Clone)]
pub struct CatchPanic<S>(S);

fn panicked(payload: Box<dyn Any + Send>) -> InvokeError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    tracing::error!("the runner panicked: {what}");
    InvokeError::new(
        ErrorCode::FunctionError,
        format!(
            "the watchdog's runner failed unexpectedly (panic: {what}); this is a bug in Ember"
        ),
    )
}

impl<S> Service<Invocation> for CatchPanic<S>
where
    S: Service<Invocation, Response = InvokeResult, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = InvokeResult;
    type Error = Infallible;
    // Named, not boxed: the pipeline's future is held whole by its caller.
    type Future = Either<Ready<Result<InvokeResult, Infallible>>, Caught<S::Future>>;

    super::always_ready!();

    fn call(&mut self, inv: Invocation) -> Self::Future {
        // `call` itself may panic, before any future exists.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.call(inv))) {
            Ok(fut) => Either::Right(Caught {
                inner: AssertUnwindSafe(fut).catch_unwind(),
            }),
            Err(payload) => Either::Left(futures_util::future::ready(Ok(Err(panicked(payload))))),
        }
    }
}

pin_project_lite::pin_project! {
    /// The run, with a panic while it is polled turned into its result.
    pub struct Caught<F> {
        #[pin]
        inner: CatchUnwind<AssertUnwindSafe<F>>,
    }
}

impl<F> Future for Caught<F>
where
    F: Future<Output = Result<InvokeResult, Infallible>>,
{
    type Output = Result<InvokeResult, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().inner.poll(cx)) {
            Ok(result) => result,
            Err(payload) => Ok(Err(panicked(payload))),
        })
    }
}
