//! The one place where an invocation's outcome becomes an HTTP response
//! (status and body of contract section 4). It also counts rejections and
//! queues the warm callback once the answer is on its way.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::StatusCode;
use runtime_sdk::names::header;
use runtime_sdk::{BoxFuture, ErrorCode, InvokeError, InvokeResult};
use tower::{Layer, Service};

use super::meta::RequestMeta;
use super::state::State;
use super::{HttpRequest, HttpResponse, Reply};
use crate::callback::{self, Delivery};

/// Status for each code; exhaustive on purpose, so a new code does not
/// build until it is mapped.
pub fn status_of(code: &ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::StartupError => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::HandlerError => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::HandlerLoadError => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::OutputSerializationError => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::OutputValidationError => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::FunctionError => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Custom(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut resp = HttpResponse::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub fn error_response(e: &InvokeError) -> HttpResponse {
    let mut resp = json_response(status_of(&e.code), e.to_body().to_string().into_bytes());
    if e.code == ErrorCode::Overloaded {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

#[derive(Clone)]
pub struct RespondLayer(pub Arc<State>);

impl<S> Layer<S> for RespondLayer {
    type Service = Respond<S>;
    fn layer(&self, inner: S) -> Respond<S> {
        Respond {
            inner,
            state: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Respond<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> Service<HttpRequest> for Respond<S>
where
    S: Service<HttpRequest, Response = Reply, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let meta = req.extensions().get::<Arc<RequestMeta>>().cloned();
        let state = self.state.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let reply = fut.await?;
            // Shed load (429) was parsed but never ran: like the requests refused
            // above the body step, it counts as rejected and gets no callback.
            let taken = reply.accepted
                && !matches!(&reply.result, Err(e) if e.code == ErrorCode::Overloaded);
            let mut resp = match &reply.result {
                Ok(output) => json_response(
                    StatusCode::OK,
                    serde_json::to_vec(output).unwrap_or_default(),
                ),
                Err(e) => {
                    if !taken {
                        state
                            .metrics
                            .rejected(&e.code.as_str().to_ascii_lowercase());
                    }
                    if matches!(e.code, ErrorCode::HandlerError) {
                        tracing::warn!(code = %e.code, error = %e.message, "invocation failed");
                    } else {
                        tracing::info!(code = %e.code, error = %e.message, "invocation failed");
                    }
                    error_response(e)
                }
            };
            if reply.cold_start {
                let h = resp.headers_mut();
                h.insert(header::COLD_START, HeaderValue::from_static("true"));
                let init = state.init_duration.get().copied().unwrap_or_default();
                h.insert(
                    header::INIT_DURATION_MS,
                    HeaderValue::from(init.as_millis() as u64),
                );
            }
            if let Some(meta) = meta {
                queue_callback(&state, &meta, &reply.result, taken);
            }
            Ok(resp)
        })
    }
}

/// Section 6: a warm invocation is reported too when a callback URL is
/// known. Load shedding (429) is not reported: the request was not taken,
/// and the control plane is free to send it elsewhere.
fn queue_callback(state: &State, meta: &RequestMeta, result: &InvokeResult, taken: bool) {
    if !taken {
        return;
    }
    let Some(execution_id) = meta.execution_id.as_deref() else {
        return;
    };
    let from_header = meta.callback_url.as_deref().and_then(|raw| {
        match url::Url::parse(raw) {
            Ok(u) if state.config.allowed_callback_origins.allows(&u) => Some(u),
            Ok(u) => {
                tracing::warn!(url = %u, "X-Callback-Url ignored: its origin is not in CALLBACK_ALLOWED_ORIGINS");
                None
            }
            Err(e) => {
                tracing::warn!(url = raw, "X-Callback-Url ignored: {e}");
                None
            }
        }
    });
    let Some(base) = from_header.or_else(|| state.callbacks.config().url.clone()) else {
        return;
    };
    match callback::complete_url(&base, execution_id) {
        Ok(url) => state.callbacks.spawn(Delivery::from_parts(
            url,
            execution_id,
            meta.trace_id.clone(),
            meta.attempt,
            meta.idempotency_key.clone(),
            result,
        )),
        Err(e) => tracing::warn!("callback URL cannot take the execution id: {e}"),
    }
}
