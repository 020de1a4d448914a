//! Outermost layer: reads the request's ids once, opens the invocation's
//! span, and sets `X-Execution-Id` on every response, rejections included.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::header::HeaderValue;
use tower::{Layer, Service};
use tracing::Instrument;

use super::meta::RequestMeta;
use super::state::State;
use super::{HttpRequest, HttpResponse};
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
    S: Service<HttpRequest, Response = HttpResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

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
        let inner = self.inner.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let mut req = req;
            if !meta.id_from_header && small_post(&req) {
                // Boxed, as it is rare: it would make every request's future larger.
                req = match Box::pin(probe_alyx(req, &mut meta, state.timeout)).await {
                    Ok(req) => req,
                    Err(e) => return Ok(super::respond::error_response(&e)),
                };
            }
            let span = crate::logging::invocation_span(
                meta.execution_id.as_deref().unwrap_or(""),
                meta.trace_id.as_deref(),
            );
            let id = meta
                .execution_id
                .as_deref()
                .and_then(|id| HeaderValue::from_str(id).ok());
            req.extensions_mut().insert(Arc::new(meta));
            let mut inner = inner;
            let mut resp = inner.call(req).instrument(span).await?;
            if let Some(id) = id {
                resp.headers_mut().insert(&names::EXECUTION_ID, id);
            }
            Ok(resp)
        })
    }
}

/// A POST whose declared body is small enough to read before admission.
fn small_post(req: &HttpRequest) -> bool {
    req.method() == hyper::Method::POST
        && req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n <= alyx::EARLY_PROBE_BYTES)
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
