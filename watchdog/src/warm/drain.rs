//! 503 when draining or not ready, before taking a body or a slot; counts
//! what it lets through so draining knows when all is answered.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use runtime_sdk::{BoxFuture, ErrorCode, InvokeError};
use tower::{Layer, Service};

use super::state::State;
use super::{HttpRequest, Outcome};

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

impl<S> Service<HttpRequest> for Drain<S>
where
    S: Service<HttpRequest, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Outcome, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
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
            return Box::pin(async move { Ok(Outcome::Refused(e)) });
        }
        let guard = state.accept();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let reply = fut.await;
            drop(guard);
            reply
        })
    }
}
