//! Reads the body of an admitted request (413 over `MAX_BODY_BYTES`),
//! checks it is JSON without building a tree (400 otherwise) and against
//! `INPUT_SCHEMA`, and builds the [`Invocation`]. Past this step the
//! invocation is accepted: it will get exactly one result (section 10).

use std::convert::Infallible;
use std::future::{self, Future};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use runtime_sdk::{BoxFuture, ErrorCode, Invocation, InvokeError, Json, Payload, RequestInfo};
use tower::{Layer, Service};

use super::admission::{Admitted, Ticket};
use super::meta::RequestMeta;
use super::state::State;
use super::{Call, HttpRequest, Outcome};

#[derive(Clone)]
pub struct BodyLayer(pub Arc<State>);

impl<S> Layer<S> for BodyLayer {
    type Service = ReadBody<S>;
    fn layer(&self, inner: S) -> ReadBody<S> {
        ReadBody {
            inner,
            state: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ReadBody<S> {
    inner: S,
    state: Arc<State>,
}

/// An invocation past every refusal: the dispatch step runs it.
pub struct Accepted {
    pub inv: Invocation,
    pub ticket: Ticket,
    pub meta: Arc<RequestMeta>,
}

fn too_large(limit: usize) -> InvokeError {
    InvokeError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than MAX_BODY_BYTES={limit}"),
    )
}

fn invalid(message: String) -> InvokeError {
    InvokeError::new(ErrorCode::InvalidRequest, message)
}

/// The body's `Content-Length`, as hyper parsed it (its exact size hint): no
/// second look-up of the header.
pub(super) fn declared_length(req: &HttpRequest) -> Option<usize> {
    req.body()
        .size_hint()
        .exact()
        .and_then(|n| usize::try_from(n).ok())
}

/// The body, at most `limit` bytes, in one buffer sized from
/// `Content-Length` when there is one (no second copy to join frames).
async fn read(req: HttpRequest, limit: usize) -> Result<bytes::Bytes, InvokeError> {
    let declared = declared_length(&req);
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut body = req.into_body();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| invalid(format!("could not read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

impl<S> ReadBody<S> {
    async fn accept(state: &State, call: Call, ticket: Ticket) -> Result<Accepted, InvokeError> {
        let Call { req, meta } = call;
        if let Some(p) = &meta.problem {
            return Err(p.clone());
        }
        let (deadline, budget) = meta.deadline(state.timeout);
        let binary = meta.octet_stream;
        // Copied only for a handler that looks at it (Python's context.request).
        let request = state.handler.wants_request_info().then(|| {
            Arc::new(RequestInfo {
                method: req.method().to_string(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().path().to_owned(), |p| p.to_string()),
                headers: req
                    .headers()
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
            })
        });
        // The body must be in by the deadline too: a client that trickles it
        // cannot hold its place for longer than the invocation could run. Most
        // bodies came with their headers and are read at once, with no timer.
        let read = read(req, state.config.max_body_bytes);
        tokio::pin!(read);
        let bytes = match future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
            Poll::Ready(read) => read?,
            Poll::Pending => tokio::time::timeout_at(deadline.into(), read)
                .await
                .map_err(|_| {
                    invalid(format!(
                        "the request body did not arrive within the invocation's {} ms deadline",
                        budget.as_millis()
                    ))
                })??,
        };
        // A bigger body in Alyx's form than the early probe reads is
        // recognised here: its `request_id` is the execution id (section 4).
        if !meta.id_from_header && meta.alyx.get().is_none() {
            if let Some(request_id) = crate::alyx::invoke_request_id(&bytes) {
                let _ = meta.alyx.set(request_id.into());
            }
        }
        let Some(execution_id) = meta.alyx.get().or(meta.execution_id.as_ref()).cloned() else {
            return Err(invalid(
                "missing X-Execution-Id header (and no EXECUTION_ID fallback is set)".into(),
            ));
        };
        // Section 3: raw bytes only when the request says so; any other
        // request is JSON whatever its Content-Type (`curl -d` sends a form type).
        let payload = if binary {
            Payload::Binary(bytes)
        } else {
            Json::parse_or_null(bytes)
                .map(Payload::Json)
                .map_err(|e| invalid(format!("the request body is not valid JSON: {e}")))?
        };
        state.validator.check_input(&payload)?;

        let mut inv = Invocation::with_deadline(execution_id, payload, deadline, budget);
        inv.cold_start = state.cold.swap(false, Ordering::AcqRel);
        inv.trace_id = meta.trace_id.clone();
        meta.trace.apply(&mut inv);
        inv.attempt = meta.attempt;
        inv.idempotency_key = meta.idempotency_key.clone();
        inv.request = request;
        Ok(Accepted { inv, ticket, meta })
    }
}

impl<S> Service<Admitted> for ReadBody<S>
where
    S: Service<Accepted, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Outcome, Infallible>>;

    crate::pipeline::always_ready!();

    fn call(&mut self, admitted: Admitted) -> Self::Future {
        let state = self.state.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            match Self::accept(&state, admitted.call, admitted.ticket).await {
                Err(e) => Ok(Outcome::Refused(e)),
                Ok(accepted) => inner.call(accepted).await,
            }
        })
    }
}
