//! 503 when draining or not ready, before taking a body or a slot; counts
//! what it lets through so draining knows when all is answered.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::future::{self, Either, Ready};
use runtime_sdk::{ErrorCode, InvokeError};
use tower::{Layer, Service};

use super::state::{AcceptedGuard, State};
use super::{Call, Outcome};

#[derive(Clone)]
pub struct DrainLayer(pub Arc<State>);

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;
    fn layer(&self, inner: S) -> Drain<S> {
        Drain {
            inner,
            state: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Drain<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> Service<Call> for Drain<S>
where
    S: Service<Call, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    // Named, not boxed: the layers above hold it whole.
    type Future = Either<Ready<Result<Outcome, Infallible>>, Counted<S::Future>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let state = &self.state;
        let refusal = if state.is_draining() {
            Some(InvokeError::new(
                ErrorCode::NotReady,
                "the watchdog is draining (shutting down): send this invocation to another instance",
            ))
        } else if !state.is_ready() {
            Some(state.start_error.get().cloned().unwrap_or_else(|| {
                InvokeError::new(ErrorCode::NotReady, "the function is still starting")
            }))
        } else {
            None
        };
        if let Some(e) = refusal {
            return Either::Left(future::ready(Ok(Outcome::Refused(e))));
        }
        let guard = state.accept();
        Either::Right(Counted {
            fut: self.inner.call(call),
            guard: Some(guard),
        })
    }
}

pin_project_lite::pin_project! {
    /// A request drain waits for, until it is answered.
    pub struct Counted<F> {
        #[pin]
        fut: F,
        guard: Option<AcceptedGuard>,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let reply = ready!(this.fut.poll(cx));
        // Answered: drain no longer waits for it.
        this.guard.take();
        Poll::Ready(reply)
    }
}
