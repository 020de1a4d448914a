//! Admission (section 4): at most `MAX_CONCURRENCY` invocations run at once
//! and up to `QUEUE_DEPTH` more wait, in arrival order. A request takes its
//! place here before its body is read, so a 429 never reads a body and the
//! bodies held in memory are bounded by the slots and the queue (section 10).

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::{ready, Either, Ready};
use runtime_sdk::{ErrorCode, InvokeError, SlotRelease};
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

/// A running slot, held until the run ends; its running part can be freed
/// sooner, once the function has returned (`release`). The place is kept to
/// the end: what is held in memory stays bounded by the slots and the queue.
pub struct Slot {
    running: SlotRelease,
    _place: OwnedSemaphorePermit,
}

impl Slot {
    fn new(running: OwnedSemaphorePermit, place: OwnedSemaphorePermit) -> Slot {
        let running = Mutex::new(Some(running));
        Slot {
            running: SlotRelease::new(move || {
                drop(
                    running
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take(),
                )
            }),
            _place: place,
        }
    }

    /// For the runner: frees the running slot when its function has returned.
    pub fn release(&self) -> SlotRelease {
        self.running.clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Also when a runner still holds the release (a call stuck past its
        // deadline): the slot is the invocation's, which has ended.
        self.running.release();
    }
}

/// Leaves the queue gauge when dropped, also when the wait is cut short.
struct Waiting<'a>(&'a Metrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queue_depth().dec();
    }
}

impl Ticket {
    /// A free slot now, if there is one and nobody waits for it; else the
    /// ticket back, to wait with (`slot`). Lets the caller skip setting up a
    /// timer for a wait that will not happen.
    pub fn try_slot(self) -> Result<Slot, Ticket> {
        match self.shared.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(Slot::new(slot, self.place)),
            Err(_) => Err(self),
        }
    }

    /// Waits for a free slot, in arrival order; the caller bounds the wait
    /// by the invocation's deadline.
    pub async fn slot(self) -> Slot {
        let shared = self.shared.clone();
        if let Ok(slot) = shared.slots.clone().try_acquire_owned() {
            return Slot::new(slot, self.place);
        }
        shared.metrics.queue_depth().inc();
        let _waiting = Waiting(&shared.metrics);
        let slot = shared
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        Slot::new(slot, self.place)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(layer: &AdmissionLayer) -> Ticket {
        let shared = layer.shared.clone();
        let place = shared.places.clone().try_acquire_owned().expect("a place");
        Ticket { place, shared }
    }

    /// A runner frees the running slot when its function returns; the place in
    /// the queue is kept until the invocation ends, and a second free is a no-op.
    #[tokio::test]
    async fn a_slot_frees_its_running_part_early_and_its_place_at_the_end() {
        let layer = AdmissionLayer::new(1, 1, Metrics::new("echo", "FAKE"));
        let shared = layer.shared.clone();
        let slot = ticket(&layer).slot().await;
        assert_eq!(shared.slots.available_permits(), 0);
        let release = slot.release();
        release.release();
        assert_eq!(shared.slots.available_permits(), 1, "running slot freed");
        assert_eq!(shared.places.available_permits(), 1, "place still held");
        release.release();
        drop(slot);
        assert_eq!(shared.slots.available_permits(), 1);
        assert_eq!(shared.places.available_permits(), 2);
        // Unreleased, dropping the slot frees both, even while a runner still
        // holds the release (a call stuck past its deadline).
        let slot = ticket(&layer).slot().await;
        let held = slot.release();
        drop(slot);
        assert_eq!(shared.slots.available_permits(), 1);
        assert_eq!(shared.places.available_permits(), 2);
        drop(held);
    }

    /// `try_slot` takes a free slot, gives the ticket back when there is none,
    /// and never passes a caller already waiting in `slot`.
    #[tokio::test]
    async fn try_slot_takes_a_free_slot_and_never_passes_a_waiter() {
        let layer = AdmissionLayer::new(1, 2, Metrics::new("echo", "FAKE"));
        let first = ticket(&layer).try_slot().ok().expect("a free slot");
        let second = ticket(&layer).try_slot().err().expect("no free slot");
        let waiting = tokio::spawn(second.slot());
        tokio::task::yield_now().await;
        drop(first);
        // The freed slot went to the waiter, not to a newcomer.
        let third = ticket(&layer).try_slot();
        assert!(third.is_err(), "a newcomer passed the waiter");
        let held = waiting.await.expect("the waiter got the slot");
        drop(third);
        drop(held);
        assert!(ticket(&layer).try_slot().is_ok());
    }
}
