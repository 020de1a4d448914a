//! A panic in a runner (or a layer) becomes a `FUNCTION_ERROR` result, as
//! aws-lambda-rust-runtime's `CatchPanicService` does: the invocation still
//! gets its one result, and the watchdog keeps serving.

use std::any::Any;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use runtime_sdk::{BoxFuture, ErrorCode, Invocation, InvokeError, InvokeResult};
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
    type Future = BoxFuture<'static, Result<InvokeResult, Infallible>>;

    super::always_ready!();

    fn call(&mut self, inv: Invocation) -> Self::Future {
        // `call` itself may panic, before any future exists.
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.call(inv))) {
            Ok(fut) => fut,
            Err(payload) => {
                let e = panicked(payload);
                return Box::pin(async move { Ok(Err(e)) });
            }
        };
        Box::pin(async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(result) => result,
                Err(payload) => Ok(Err(panicked(payload))),
            }
        })
    }
}
