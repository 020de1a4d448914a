//! Outermost layer: reads the request's ids once, opens the invocation's
//! span, and sets `X-Execution-Id` on every response, rejections included.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::future::Either;
use hyper::header::HeaderValue;
use tower::{Layer, Service};
use tracing::instrument::{Instrument, Instrumented};

use super::meta::RequestMeta;
use super::state::State;
use super::{Call, HttpRequest, HttpResponse};
use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use runtime_sdk::{BoxFuture, ErrorCode, InvokeError};

use crate::alyx;
use crate::header_names as names;

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
    S: Service<Call, Response = HttpResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    // Named for every request; boxed only when the body is probed first.
    type Future = Either<Traced<S::Future>, BoxFuture<'static, Result<HttpResponse, Infallible>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every service of this stack is always ready: load is shed by the
        // concurrency layer with a 429, never by back-pressure.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let mut meta = RequestMeta::read(
            req.headers(),
            self.state.config.execution_id.as_deref(),
            self.state.spans.as_ref(),
        );
        if meta.id_from_header || !small_post(&req) {
            return Either::Left(traced(&mut self.inner, req, meta));
        }
        let mut inner = self.inner.clone();
        let timeout = self.state.timeout;
        Either::Right(Box::pin(async move {
            match probe_alyx(req, &mut meta, timeout).await {
                Ok(req) => traced(&mut inner, req, meta).await,
                Err(e) => Ok(super::respond::error_response(&e)),
            }
        }))
    }
}

/// Calls the layers below inside the invocation's span.
fn traced<S>(inner: &mut S, req: HttpRequest, meta: RequestMeta) -> Traced<S::Future>
where
    S: Service<Call, Response = HttpResponse, Error = Infallible>,
{
    let span = crate::logging::invocation_span(
        meta.execution_id.as_deref().unwrap_or(""),
        meta.trace_id.as_deref(),
    );
    let id = (meta.execution_id.as_deref()).and_then(|id| HeaderValue::from_str(id).ok());
    let meta = Arc::new(meta);
    Traced {
        fut: inner.call(Call { req, meta }).instrument(span),
        id,
    }
}

pin_project_lite::pin_project! {
    /// The layers below in the invocation's span, then `X-Execution-Id` on
    /// their response.
    pub struct Traced<F> {
        #[pin]
        fut: Instrumented<F>,
        id: Option<HeaderValue>,
    }
}

impl<F> Future for Traced<F>
where
    F: Future<Output = Result<HttpResponse, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Ok(mut resp) = ready!(this.fut.poll(cx));
        if let Some(id) = this.id.take() {
            resp.headers_mut().insert(&names::EXECUTION_ID, id);
        }
        Poll::Ready(Ok(resp))
    }
}

/// A POST whose declared body is small enough to read before admission.
fn small_post(req: &HttpRequest) -> bool {
    req.method() == hyper::Method::POST
        && super::body::declared_length(req).is_some_and(|n| n <= alyx::EARLY_PROBE_BYTES)
}

/// Reads a small body without an execution id to tell whether it is Alyx's
/// form, so that every answer to it, refusals included, is in Alyx's shape
/// (section 4). The body goes on to the next layers as it was read.
async fn probe_alyx(
    req: HttpRequest,
    meta: &mut RequestMeta,
    timeout: std::time::Duration,
) -> Result<HttpRequest, InvokeError> {
    let (parts, body) = req.into_parts();
    let (deadline, _) = meta.deadline(timeout);
    let read = Limited::new(body, alyx::EARLY_PROBE_BYTES).collect();
    let bytes = match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => {
            return Err(InvokeError::new(
                ErrorCode::InvalidRequest,
                "could not read the request body",
            ))
        }
    };
    if let Some(request_id) = alyx::invoke_request_id(&bytes) {
        meta.take_alyx_form(request_id);
    }
    Ok(HttpRequest::from_parts(parts, Body::from(bytes)))
}
