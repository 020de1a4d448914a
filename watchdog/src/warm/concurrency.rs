//! At most `MAX_CONCURRENCY` invocations run at once; up to `QUEUE_DEPTH`
//! more wait in arrival order (the semaphore is fair); beyond that, 429
//! `OVERLOADED` right away (section 4).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use runtime_sdk::{BoxFuture, ErrorCode, Invocation, InvokeError, InvokeResult};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct ConcurrencyLayer {
    shared: Arc<Shared>,
}

struct Shared {
    slots: Arc<Semaphore>,
    max: usize,
    queue_depth: usize,
    waiting: AtomicUsize,
    metrics: Metrics,
}

impl ConcurrencyLayer {
    pub fn new(max: usize, queue_depth: usize, metrics: Metrics) -> Self {
        ConcurrencyLayer {
            shared: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(max)),
                max,
                queue_depth,
                waiting: AtomicUsize::new(0),
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLayer {
    type Service = Concurrency<S>;
    fn layer(&self, inner: S) -> Concurrency<S> {
        Concurrency {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Concurrency<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Leaves the queue when dropped, also when the deadline cuts the wait.
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.queue_depth().dec();
    }
}

impl<S> Service<Invocation> for Concurrency<S>
where
    S: Service<Invocation, Response = InvokeResult, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = InvokeResult;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<InvokeResult, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inv: Invocation) -> Self::Future {
        let shared = self.shared.clone();
        let mut inner = self.inner.clone();
        // Fast path: a free slot, no queueing.
        if let Ok(permit) = shared.slots.clone().try_acquire_owned() {
            return Box::pin(async move {
                let r = inner.call(inv).await;
                drop(permit);
                r
            });
        }
        if shared.waiting.fetch_add(1, Ordering::AcqRel) >= shared.queue_depth {
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
            let e = InvokeError::new(
                ErrorCode::Overloaded,
                format!(
                    "all {} slots are busy and the queue is full (MAX_CONCURRENCY={}, QUEUE_DEPTH={}); retry later",
                    shared.max, shared.max, shared.queue_depth
                ),
            );
            return Box::pin(async move { Ok(Err(e)) });
        }
        shared.metrics.queue_depth().inc();
        Box::pin(async move {
            let permit = {
                let _waiting = Waiting(&shared);
                shared.slots.clone().acquire_owned().await
            };
            let Ok(permit) = permit else {
                return Ok(Err(InvokeError::new(
                    ErrorCode::Cancelled,
                    "shut down before it ran",
                )));
            };
            let r = inner.call(inv).await;
            drop(permit);
            r
        })
    }
}
