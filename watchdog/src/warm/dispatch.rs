//! Runs an accepted invocation, owned by the watchdog from here, not by the
//! request future (section 10): it is polled on its connection's task until
//! its answer is in, and goes on as a task of its own if the response is
//! dropped first or has more to do (see `Owned`). The response waits for
//! its result; a client that disconnects is logged and counted,
//! and then the invocation runs on when its result has a callback target,
//! or is stopped (`CANCELLED`) when nobody would ever see it. Past
//! `DRAIN_TIMEOUT_MS` it is stopped and answered with `CANCELLED`.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use runtime_sdk::{
    Body, BoxFuture, ChunkStream, ErrorCode, InvokeError, InvokeResult, Json, Output,
};
use tokio::sync::{mpsc, oneshot};
use tower::Service;
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
    type Future = Answering;

    crate::pipeline::always_ready!();

    fn call(&mut self, accepted: Accepted) -> Self::Future {
        let (reply, answer) = oneshot::channel();
        let cold_start = accepted.inv.cold_start;
        // Boxed bare and entered in its span when polled: wrapped in the span
        // first (`in_current_span`), the whole future would be moved twice.
        let run: BoxFuture<'static, ()> = Box::pin(execute(self.state.clone(), accepted, reply));
        let span = tracing::Span::current();
        let run = if self.state.handler.runs_detached() {
            spawn(run.instrument(span));
            Owned::done()
        } else {
            Owned(Some(run), span)
        };
        Answering {
            run,
            answer,
            cold_start,
        }
    }
}

/// An accepted invocation, polled on its connection's task until its answer
/// is in: a quick call then costs no task of its own and no second wake-up.
/// What is left of it after the answer (a stream's values, the callback), or
/// all of it when the response is dropped first (the client went away), runs
/// on as a task of its own: the watchdog owns it, not the connection. Empty
/// when the runner asked for a task from the start (`Handler::runs_detached`).
struct Owned(Option<BoxFuture<'static, ()>>, tracing::Span);

impl Owned {
    /// Nothing left to run here.
    fn done() -> Owned {
        Owned(None, tracing::Span::none())
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(run) = self.0.take() {
            spawn(run.instrument(std::mem::replace(&mut self.1, tracing::Span::none())));
        }
    }
}

/// The response's side of an invocation: its answer, with the invocation
/// itself polled here until the answer is in (see `Owned`). Dropping it
/// hands what is left of the invocation to a task.
pub struct Answering {
    run: Owned,
    answer: oneshot::Receiver<InvokeResult>,
    cold_start: bool,
}

impl Future for Answering {
    type Output = Result<Outcome, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(run) = this.run.0.as_mut() {
            // A panic here is contained as it was in a task of its own: the
            // invocation is dropped, and its dropped sender tells the caller.
            let polled = {
                let _entered = this.run.1.enter();
                catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(cx)))
            };
            if !matches!(polled, Ok(Poll::Pending)) {
                this.run.0 = None;
            }
        }
        let answer = if this.run.0.is_some() {
            // `execute` answers only while it is polled here, and its own
            // wake-ups bring us back: the answer needs no waker of its own.
            // With one, the answer would wake this task while it runs, and
            // the connection would be polled once more for nothing.
            let mut quiet = Context::from_waker(std::task::Waker::noop());
            Pin::new(&mut this.answer).poll(&mut quiet)
        } else {
            // Once `execute` has ended, its sender has answered or is gone.
            Pin::new(&mut this.answer).poll(cx)
        };
        let Poll::Ready(answer) = answer else {
            return Poll::Pending;
        };
        let result = answer.unwrap_or_else(|_| {
            Err(InvokeError::new(
                ErrorCode::FunctionError,
                "the invocation ended without a result (the watchdog is shutting down)",
            ))
        });
        // What is left of the invocation goes on as a task of its own.
        drop(std::mem::replace(&mut this.run, Owned::done()));
        Poll::Ready(Ok(Outcome::Completed {
            result,
            cold_start: this.cold_start,
        }))
    }
}

fn spawn(run: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(run)),
        // Only when the runtime itself is going away, and its invocations with it.
        Err(_) => tracing::error!("an invocation was dropped with its runtime"),
    }
}

async fn execute(state: Arc<State>, accepted: Accepted, mut reply: oneshot::Sender<InvokeResult>) {
    // Draining waits for this invocation, not for its connection.
    let _accepted = state.accept();
    let Accepted {
        mut inv,
        ticket,
        meta,
    } = accepted;
    // The ids are copied only for a callback to send.
    let target =
        callback_target(&state, &meta, &inv.execution_id).map(|url| (url, callback::Ids::of(&inv)));
    let (deadline, budget) = (inv.deadline, inv.budget());
    let arrived = meta.arrived.unwrap_or_else(std::time::Instant::now);
    let recording =
        (state.spans.as_ref()).and_then(|s| s.begin(&meta.trace, &inv, arrived, "queue"));
    let run = async {
        // Queued time counts against the deadline (section 4).
        let Some(slot) = ticket.slot_until(deadline).await else {
            state.metrics.timeout();
            return (Err(InvokeError::timeout(&inv.execution_id, budget)), None);
        };
        if let Some(r) = &recording {
            r.running();
        }
        inv.slot = slot.release();
        // Every layer of the pipeline is always ready (`always_ready!`): it is
        // called at once, not through `oneshot`, whose state would hold the
        // stack and the invocation side by side.
        let result = match state.pipeline.clone().call(inv).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        // A stream keeps its slot until it ends.
        (result, Some(slot))
    };
    tokio::pin!(run);
    let stop = state.run_stopped();
    tokio::pin!(stop);
    let mut watching = true;
    let mut slot = None;
    let result = loop {
        tokio::select! {
            (result, held) = &mut run => {
                slot = held;
                break result;
            }
            _ = &mut stop => {
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
    let result = match result {
        Ok(Output {
            body: Body::Stream(chunks),
            status,
            headers,
        }) => match chunks.take() {
            Some(source) => {
                let head = Head { status, headers };
                // Boxed: a stream's state would otherwise make every call's
                // future larger, and each is moved into its box.
                Box::pin(forward(
                    &state,
                    source,
                    head,
                    reply,
                    target.is_some(),
                    deadline,
                ))
                .await
            }
            None => Err(InvokeError::new(
                ErrorCode::FunctionError,
                "the stream was already read",
            )),
        },
        other if target.is_none() && recording.is_none() => {
            // Nothing else reads it: no copy.
            let _ = reply.send(other);
            return;
        }
        other => {
            let _ = reply.send(other.clone());
            other
        }
    };
    drop(slot);
    // A stream's run ends with its last value.
    if let Some(r) = &recording {
        r.end(&result);
    }
    if let Some((url, ids)) = target {
        state.callbacks.spawn(Delivery::new(url, &ids, &result));
    }
}

/// What a streamed answer says besides its values: the status and headers the
/// function chose, which the client gets with them.
struct Head {
    status: Option<u16>,
    headers: Vec<(String, String)>,
}

/// Passes a streamed answer on to the client value by value (back-pressure: one
/// value in flight), keeping the values for the callback when there is one (as a
/// JSON array). A client that goes away, the drain timeout, or a producer stuck past
/// the deadline ends it; the generator is then closed.
async fn forward(
    state: &State,
    mut source: ChunkStream,
    head: Head,
    reply: oneshot::Sender<InvokeResult>,
    collect: bool,
    deadline: std::time::Instant,
) -> InvokeResult {
    let (tx, rx) = mpsc::channel::<Result<Json, InvokeError>>(1);
    let to_client = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let to_client = Output {
        status: head.status,
        headers: head.headers,
        ..Output::stream(Box::pin(to_client))
    };
    let client_here = reply.send(Ok(to_client)).is_ok();
    let mut values: Vec<Json> = Vec::new();
    // The producer ends the stream with TIMEOUT at the deadline; this is the
    // backstop for one that cannot.
    let backstop = tokio::time::sleep_until((deadline + Duration::from_secs(2)).into());
    tokio::pin!(backstop);
    let stop = state.run_stopped();
    tokio::pin!(stop);
    let end = loop {
        let item = tokio::select! {
            item = source.next() => item,
            _ = &mut stop => Some(Err(InvokeError::cancelled(
                "the watchdog was shutting down and DRAIN_TIMEOUT_MS passed during the stream",
            ))),
            _ = &mut backstop => Some(Err(InvokeError::new(
                ErrorCode::Timeout,
                "the stream did not end by its deadline",
            ))),
        };
        let Some(item) = item else {
            break None;
        };
        let failed = item.as_ref().err().cloned();
        if let (true, Ok(json)) = (collect, &item) {
            values.push(json.clone());
        }
        if client_here && tx.send(item).await.is_err() {
            state.metrics.client_disconnect();
            tracing::info!("the client disconnected mid-stream: closing the generator");
            break Some(InvokeError::cancelled(
                "the client disconnected during the stream",
            ));
        }
        if failed.is_some() {
            break failed;
        }
    };
    // Dropping the source closes the generator's channel: it sees the reader gone.
    drop(source);
    match end {
        Some(e) => Err(e),
        None => Ok(crate::stream::array(&values)),
    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn result() -> InvokeResult {
        Err(InvokeError::new(ErrorCode::FunctionError, "the answer"))
    }

    async fn until(flag: &AtomicBool) {
        for _ in 0..200 {
            if flag.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the invocation did not run to its end");
    }

    /// An invocation to poll on the response's side, outside any span.
    fn owned(run: impl Future<Output = ()> + Send + 'static) -> Owned {
        Owned(Some(Box::pin(run)), tracing::Span::none())
    }

    /// What the response gets from an invocation polled on its side.
    async fn answered(run: Owned, answer: oneshot::Receiver<InvokeResult>) -> InvokeResult {
        let answering = Answering {
            run,
            answer,
            cold_start: false,
        };
        match answering.await {
            Ok(Outcome::Completed { result, .. }) => result,
            Ok(Outcome::Refused(e)) => Err(e),
        }
    }

    /// The client went away: the response is dropped, the invocation is not.
    #[tokio::test]
    async fn an_invocation_runs_on_after_its_response_is_dropped() {
        let (reply, answer) = oneshot::channel();
        let (go, wait) = oneshot::channel::<()>();
        let (ended, seen) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (e, s) = (ended.clone(), seen.clone());
        let run = owned(async move {
            let _ = wait.await;
            // As `execute` does, it sees that nobody waits for the answer.
            s.store(reply.send(result()).is_err(), Ordering::SeqCst);
            e.store(true, Ordering::SeqCst);
        });
        let response = tokio::time::timeout(Duration::from_millis(20), answered(run, answer));
        assert!(response.await.is_err(), "no answer yet");
        go.send(()).unwrap();
        until(&ended).await;
        assert!(
            seen.load(Ordering::SeqCst),
            "the answer had nobody to go to"
        );
    }

    /// A stream answers with its head and goes on with its values.
    #[tokio::test]
    async fn what_is_left_after_the_answer_runs_on() {
        let (reply, answer) = oneshot::channel();
        let (go, wait) = oneshot::channel::<()>();
        let ended = Arc::new(AtomicBool::new(false));
        let e = ended.clone();
        let run = owned(async move {
            let _ = reply.send(result());
            let _ = wait.await;
            e.store(true, Ordering::SeqCst);
        });
        let got = answered(run, answer).await;
        assert_eq!(got.unwrap_err().message, "the answer");
        assert!(!ended.load(Ordering::SeqCst));
        go.send(()).unwrap();
        until(&ended).await;
    }

    /// A panic outside the pipeline's own guard still ends in an answer.
    #[tokio::test]
    async fn a_panic_in_the_invocation_still_answers_its_caller() {
        let (reply, answer) = oneshot::channel();
        let run = owned(async move {
            let _reply = reply;
            panic!("a bug outside the pipeline");
        });
        let got = answered(run, answer).await.unwrap_err();
        assert!(
            got.message.contains("ended without a result"),
            "the sender was dropped: {}",
            got.message
        );
    }

    /// The answer of an invocation that ends in the first poll, with no task.
    #[tokio::test]
    async fn a_quick_invocation_answers_in_one_poll() {
        let (reply, answer) = oneshot::channel();
        let run = owned(async move {
            let _ = reply.send(result());
        });
        let got = futures_util::FutureExt::now_or_never(answered(run, answer));
        assert!(matches!(got, Some(Err(e)) if e.message == "the answer"));
    }
}
