//! Admission (section 4): at most `MAX_CONCURRENCY` invocations run at once
//! and up to `QUEUE_DEPTH` more wait, in arrival order. A request takes its
//! place here before its body is read, so a 429 never reads a body and the
//! bodies held in memory are bounded by the slots and the queue (section 10).

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::future::{ready, Either, Ready};
use runtime_sdk::{ErrorCode, InvokeError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::{HttpRequest, Outcome};
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AdmissionLayer {
    shared: Arc<Shared>,
}

struct Shared {
    /// Running plus waiting: `MAX_CONCURRENCY + QUEUE_DEPTH` places.
    places: Arc<Semaphore>,
    /// Running: `MAX_CONCURRENCY`; fair, so waiters are served in order.
    slots: Arc<Semaphore>,
    max: usize,
    queue_depth: usize,
    metrics: Metrics,
}

impl AdmissionLayer {
    pub fn new(max: usize, queue_depth: usize, metrics: Metrics) -> Self {
        AdmissionLayer {
            shared: Arc::new(Shared {
                places: Arc::new(Semaphore::new(max + queue_depth)),
                slots: Arc::new(Semaphore::new(max)),
                max,
                queue_depth,
                metrics,
            }),
        }
    }
}

/// A request with its place taken; the body step reads its body next.
pub struct Admitted {
    pub req: HttpRequest,
    pub ticket: Ticket,
}

/// A place among the running and the waiting; `slot` turns it into a
/// running slot. Dropped, it frees the place.
pub struct Ticket {
    place: OwnedSemaphorePermit,
    shared: Arc<Shared>,
}

/// A running slot, held until the run ends.
pub struct Slot {
    _slot: OwnedSemaphorePermit,
    _place: OwnedSemaphorePermit,
}

/// Leaves the queue gauge when dropped, also when the wait is cut short.
struct Waiting<'a>(&'a Metrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queue_depth().dec();
    }
}

impl Ticket {
    /// Waits for a free slot, in arrival order; the caller bounds the wait
    /// by the invocation's deadline.
    pub async fn slot(self) -> Slot {
        let shared = self.shared.clone();
        if let Ok(slot) = shared.slots.clone().try_acquire_owned() {
            return Slot {
                _slot: slot,
                _place: self.place,
            };
        }
        shared.metrics.queue_depth().inc();
        let _waiting = Waiting(&shared.metrics);
        let slot = shared
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        Slot {
            _slot: slot,
            _place: self.place,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<HttpRequest> for Admission<S>
where
    S: Service<Admitted, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    // The inner future as it is: no box of our own on the way in.
    type Future = Either<Ready<Result<Outcome, Infallible>>, S::Future>;

    crate::pipeline::always_ready!();

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let shared = &self.shared;
        let Ok(place) = shared.places.clone().try_acquire_owned() else {
            let e = InvokeError::new(
                ErrorCode::Overloaded,
                format!(
                    "all {} slots are busy and the queue is full (MAX_CONCURRENCY={}, QUEUE_DEPTH={}); retry later",
                    shared.max, shared.max, shared.queue_depth
                ),
            );
            return Either::Left(ready(Ok(Outcome::Refused(e))));
        };
        let ticket = Ticket {
            place,
            shared: shared.clone(),
        };
        Either::Right(self.inner.call(Admitted { req, ticket }))
    }
}
