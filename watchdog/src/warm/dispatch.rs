//! Runs an accepted invocation detached from its connection (section 10):
//! the watchdog owns it from here, not the request future. The response
//! waits for its result; a client that disconnects is logged and counted,
//! and then the invocation runs on when its result has a callback target,
//! or is stopped (`CANCELLED`) when nobody would ever see it. Past
//! `DRAIN_TIMEOUT_MS` it is stopped and answered with `CANCELLED`.

use std::convert::Infallible;
use std::sync::Arc;

use runtime_sdk::{BoxFuture, ErrorCode, InvokeError, InvokeResult};
use tokio::sync::oneshot;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::body::Accepted;
use super::meta::RequestMeta;
use super::state::State;
use super::Outcome;
use crate::callback::{self, Delivery};

#[derive(Clone)]
pub struct Dispatch {
    state: Arc<State>,
}

impl Dispatch {
    pub fn new(state: Arc<State>) -> Self {
        Dispatch { state }
    }
}

impl Service<Accepted> for Dispatch {
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Outcome, Infallible>>;

    crate::pipeline::always_ready!();

    fn call(&mut self, accepted: Accepted) -> Self::Future {
        let (reply, answer) = oneshot::channel();
        let cold_start = accepted.inv.cold_start;
        tokio::spawn(execute(self.state.clone(), accepted, reply).in_current_span());
        Box::pin(async move {
            let result = answer.await.unwrap_or_else(|_| {
                Err(InvokeError::new(
                    ErrorCode::FunctionError,
                    "the invocation ended without a result (the watchdog is shutting down)",
                ))
            });
            Ok(Outcome::Completed { result, cold_start })
        })
    }
}

async fn execute(state: Arc<State>, accepted: Accepted, mut reply: oneshot::Sender<InvokeResult>) {
    // Draining waits for this task, not for the connection.
    let _accepted = state.accept();
    let Accepted { inv, ticket, meta } = accepted;
    let target = callback_target(&state, &meta, &inv.execution_id);
    let ids = callback::Ids::of(&inv);
    let (deadline, budget) = (inv.deadline, inv.budget());
    let execution_id = inv.execution_id.clone();
    let pipeline = state.pipeline.clone();
    let run = async {
        // Queued time counts against the deadline (section 4).
        let Ok(slot) = tokio::time::timeout_at(deadline.into(), ticket.slot()).await else {
            state.metrics.timeout();
            return Err(InvokeError::timeout(&execution_id, budget));
        };
        let result = match pipeline.oneshot(inv).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        drop(slot);
        result
    };
    tokio::pin!(run);
    let mut watching = true;
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            _ = state.stop_running.cancelled() => {
                tracing::warn!("stopped: DRAIN_TIMEOUT_MS passed while it ran");
                break Err(InvokeError::cancelled(
                    "the watchdog was shutting down and DRAIN_TIMEOUT_MS passed before the function finished",
                ));
            }
            _ = reply.closed(), if watching => {
                watching = false;
                state.metrics.client_disconnect();
                if target.is_some() {
                    tracing::info!("the client disconnected; the invocation runs on and its result goes to the callback");
                } else {
                    tracing::info!("the client disconnected and there is no callback target: stopping the invocation");
                    break Err(InvokeError::cancelled(
                        "the client disconnected before the result, and there is no callback target to report it to",
                    ));
                }
            }
        }
    };
    if let Some(url) = target {
        state.callbacks.spawn(Delivery::new(url, &ids, &result));
    }
    let _ = reply.send(result);
}

/// Section 6: the request's `X-Callback-Url` when its origin is allowed,
/// else `CALLBACK_URL`, with `/{id}:complete` added.
fn callback_target(state: &State, meta: &RequestMeta, execution_id: &str) -> Option<url::Url> {
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
    let base = from_header.or_else(|| state.callbacks.config().url.clone())?;
    match callback::complete_url(&base, execution_id) {
        Ok(url) => Some(url),
        Err(e) => {
            tracing::warn!("callback URL cannot take the execution id: {e}");
            None
        }
    }
}
