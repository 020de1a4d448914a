//! Outermost layer: reads the request's ids once, opens the invocation's
//! span, and sets `X-Execution-Id` on every response, rejections included.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::header::HeaderValue;
use runtime_sdk::names::header;
use tower::{Layer, Service};
use tracing::Instrument;

use super::meta::RequestMeta;
use super::state::State;
use super::{HttpRequest, HttpResponse};
use runtime_sdk::BoxFuture;

#[derive(Clone)]
pub struct TraceLayer(pub Arc<State>);

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            state: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> Service<HttpRequest> for Trace<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every service of this stack is always ready: load is shed by the
        // concurrency layer with a 429, never by back-pressure.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: HttpRequest) -> Self::Future {
        let meta = RequestMeta::read(req.headers(), self.state.config.execution_id.as_deref());
        let span = crate::logging::invocation_span(
            meta.execution_id.as_deref().unwrap_or(""),
            meta.trace_id.as_deref(),
        );
        let id = meta
            .execution_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok());
        req.extensions_mut().insert(Arc::new(meta));
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let mut resp = fut.await?;
                if let Some(id) = id {
                    resp.headers_mut().insert(header::EXECUTION_ID, id);
                }
                Ok(resp)
            }
            .instrument(span),
        )
    }
}
