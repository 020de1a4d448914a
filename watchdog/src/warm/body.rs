//! Reads the body once (413 over `MAX_BODY_BYTES`), parses it (400 if it is
//! not JSON), checks `INPUT_SCHEMA`, and builds the `Invocation` the layers
//! below work with.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::header::CONTENT_LENGTH;
use runtime_sdk::{BoxFuture, ErrorCode, Invocation, InvokeError, InvokeResult};
use serde_json::Value;
use tower::{Layer, Service};

use super::meta::RequestMeta;
use super::state::State;
use super::{HttpRequest, Reply};

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

fn too_large(limit: usize) -> InvokeError {
    InvokeError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than MAX_BODY_BYTES={limit}"),
    )
}

impl<S> ReadBody<S> {
    async fn invocation(
        state: &State,
        req: HttpRequest,
    ) -> Result<(Invocation, bool), InvokeError> {
        let limit = state.config.max_body_bytes;
        let meta = req
            .extensions()
            .get::<Arc<RequestMeta>>()
            .cloned()
            .unwrap_or_default();
        if let Some(p) = &meta.problem {
            return Err(p.clone());
        }
        let Some(execution_id) = meta.execution_id.clone() else {
            return Err(InvokeError::new(
                ErrorCode::InvalidRequest,
                "missing X-Execution-Id header (and no EXECUTION_ID fallback is set)",
            ));
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        let bytes = match Limited::new(req.into_body(), limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(too_large(limit))
            }
            Err(e) => {
                return Err(InvokeError::new(
                    ErrorCode::InvalidRequest,
                    format!("could not read the request body: {e}"),
                ))
            }
        };
        let payload: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            // No body at all: the payload is null, as in one-shot mode.
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                InvokeError::new(
                    ErrorCode::InvalidRequest,
                    format!("the request body is not valid JSON: {e}"),
                )
            })?
        };
        state.validator.check_input(&payload)?;

        let mut timeout = state.timeout;
        if let Some(ms) = meta.timeout_ms {
            timeout = timeout.min(Duration::from_millis(ms));
        }
        let mut inv = Invocation::new(execution_id, payload, timeout);
        let cold = state.cold.swap(false, Ordering::AcqRel);
        inv.cold_start = cold;
        inv.trace_id = meta.trace_id.clone();
        inv.traceparent = meta.traceparent.clone();
        inv.attempt = meta.attempt;
        inv.idempotency_key = meta.idempotency_key.clone();
        Ok((inv, cold))
    }
}

impl<S> Service<HttpRequest> for ReadBody<S>
where
    S: Service<Invocation, Response = InvokeResult, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Reply, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let state = self.state.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            match Self::invocation(&state, req).await {
                Err(e) => Ok(Reply::rejected(e)),
                Ok((inv, cold_start)) => {
                    let result = inner.call(inv).await?;
                    Ok(Reply {
                        result,
                        cold_start,
                        accepted: true,
                    })
                }
            }
        })
    }
}
