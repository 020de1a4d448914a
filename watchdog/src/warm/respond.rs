//! The one place where an invocation's outcome becomes an HTTP response
//! (status and body of contract section 4), and where refusals are counted.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use futures_util::StreamExt;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::StatusCode;
use runtime_sdk::names::header;
use runtime_sdk::{ErrorCode, InvokeError, Output};
use tower::{Layer, Service};

use super::meta::RequestMeta;
use super::state::State;
use super::{Call, HttpResponse, Outcome};
use crate::header_names as names;
use crate::{alyx, stream};

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
        ErrorCode::OutputTooLarge => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::FunctionError => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Custom(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status of an accepted invocation's error. The codes of the
/// watchdog's own refusals (401, 413, 429, 503 `NOT_READY`) say "not taken,
/// send it elsewhere"; a function that returns one of them ran all the
/// same, so it answers 500 and keeps its code in the body.
fn status_of_completed(code: &ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized
        | ErrorCode::PayloadTooLarge
        | ErrorCode::Overloaded
        | ErrorCode::NotReady => StatusCode::INTERNAL_SERVER_ERROR,
        other => status_of(other),
    }
}

pub fn json_response(status: StatusCode, body: impl Into<Body>) -> HttpResponse {
    let mut resp = HttpResponse::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Headers a function may not set: hop-by-hop ones (RFC 9110 section 7.6.1),
/// those the server computes, and the watchdog's own.
const NOT_FROM_FUNCTIONS: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    header::EXECUTION_ID,
];

/// Server-sent events when the request accepts them, else NDJSON.
fn stream_format(meta: &RequestMeta) -> stream::Format {
    if meta.accepts_event_stream {
        stream::Format::Sse
    } else {
        stream::Format::Ndjson
    }
}

/// A function's answer: its body with its content type, and the status and
/// headers it chose (section 3; `ember.Response`, a `LOOP` line).
fn output_response(output: Output, format: stream::Format) -> HttpResponse {
    let status = output
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut resp = match output.body {
        runtime_sdk::Body::Json(json) => json_response(status, json.bytes()),
        // Chunked, each value written as it comes.
        runtime_sdk::Body::Stream(chunks) => {
            let frames = chunks
                .take()
                .map(|s| s.map(move |item| Ok::<_, Infallible>(format.frame(&item))));
            let body = match frames {
                Some(frames) => axum::body::Body::from_stream(frames),
                None => axum::body::Body::empty(),
            };
            let mut resp = HttpResponse::new(body);
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        runtime_sdk::Body::Raw {
            bytes,
            content_type,
        } => {
            let mut resp = json_response(status, bytes);
            match HeaderValue::from_str(&content_type) {
                Ok(ct) => resp.headers_mut().insert(CONTENT_TYPE, ct),
                Err(_) => {
                    tracing::warn!(content_type, "the function's content type is not a valid header value; sent as application/octet-stream");
                    resp.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    )
                }
            };
            resp
        }
    };
    for (name, value) in output.headers {
        let name = name.to_ascii_lowercase();
        if NOT_FROM_FUNCTIONS.contains(&name.as_str()) {
            tracing::debug!(header = name, "header dropped: a function may not set it");
            continue;
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(n), Ok(v)) => {
                if n == CONTENT_TYPE {
                    resp.headers_mut().insert(n, v);
                } else {
                    resp.headers_mut().append(n, v);
                }
            }
            _ => tracing::warn!(header = name, "header dropped: not a valid HTTP header"),
        }
    }
    resp
}

fn error_body(e: &InvokeError) -> Vec<u8> {
    serde_json::to_vec(&e.to_body()).expect("an error body serialises")
}

/// A refusal: the request was not taken.
pub fn error_response(e: &InvokeError) -> HttpResponse {
    let mut resp = json_response(status_of(&e.code), error_body(e));
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

impl<S> Service<Call> for Respond<S>
where
    S: Service<Call, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = HttpResponse;
    type Error = Infallible;
    // Named, not boxed: `trace`'s box holds it whole.
    type Future = Responding<S::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let meta = call.meta.clone();
        Responding {
            fut: self.inner.call(call),
            state: self.state.clone(),
            meta,
        }
    }
}

pin_project_lite::pin_project! {
    /// The layers below, then their outcome as a response.
    pub struct Responding<F> {
        #[pin]
        fut: F,
        state: Arc<State>,
        meta: Arc<RequestMeta>,
    }
}

impl<F> Future for Responding<F>
where
    F: Future<Output = Result<Outcome, Infallible>>,
{
    type Output = Result<HttpResponse, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(outcome) = ready!(this.fut.poll(cx));
        Poll::Ready(Ok(respond(this.state, this.meta, outcome)))
    }
}

/// The one place an outcome becomes a response.
fn respond(state: &State, meta: &RequestMeta, outcome: Outcome) -> HttpResponse {
    // Alyx reads only the body, whatever the status (section 4).
    if let Some(request_id) = meta.alyx.get() {
        return alyx_response(state, request_id, meta, outcome);
    }
    match outcome {
        Outcome::Refused(e) => {
            refused(state, &e);
            error_response(&e)
        }
        Outcome::Completed { result, cold_start } => {
            let mut resp = match result {
                Ok(output) => output_response(output, stream_format(meta)),
                Err(e) => {
                    if matches!(e.code, ErrorCode::HandlerError) {
                        tracing::warn!(code = %e.code, error = %e.message, "invocation failed");
                    } else {
                        tracing::info!(code = %e.code, error = %e.message, "invocation failed");
                    }
                    json_response(status_of_completed(&e.code), error_body(&e))
                }
            };
            if cold_start {
                let h = resp.headers_mut();
                h.insert(&names::COLD_START, HeaderValue::from_static("true"));
                let init = state.init_duration.get().copied().unwrap_or_default();
                h.insert(
                    &names::INIT_DURATION_MS,
                    HeaderValue::from(init.as_millis() as u64),
                );
            }
            resp
        }
    }
}

/// Counts and logs a request that was not taken.
fn refused(state: &State, e: &InvokeError) {
    state
        .metrics
        .rejected(&e.code.as_str().to_ascii_lowercase());
    tracing::info!(code = %e.code, error = %e.message, "request refused");
}

/// The same outcome, with its body in Alyx's shape.
fn alyx_response(
    state: &State,
    request_id: &str,
    meta: &RequestMeta,
    outcome: Outcome,
) -> HttpResponse {
    let took = meta.elapsed_ms();
    match outcome {
        Outcome::Refused(e) => {
            refused(state, &e);
            let mut resp =
                json_response(status_of(&e.code), alyx::answer(request_id, Err(&e), took));
            if e.code == ErrorCode::Overloaded {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            resp
        }
        Outcome::Completed { result, .. } => match &result {
            Ok(output) => json_response(
                StatusCode::OK,
                alyx::answer(request_id, Ok(&output.to_json().json), took),
            ),
            Err(e) => {
                tracing::info!(code = %e.code, error = %e.message, "invocation failed");
                json_response(
                    status_of_completed(&e.code),
                    alyx::answer(request_id, Err(e), took),
                )
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_cannot_pose_as_a_refusal() {
        for code in [
            ErrorCode::Overloaded,
            ErrorCode::NotReady,
            ErrorCode::Unauthorized,
            ErrorCode::PayloadTooLarge,
        ] {
            assert_ne!(status_of(&code), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(
                status_of_completed(&code),
                StatusCode::INTERNAL_SERVER_ERROR
            );
        }
        assert_eq!(
            status_of_completed(&ErrorCode::Timeout),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
