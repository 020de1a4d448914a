//! Admission (section 4): at most `MAX_CONCURRENCY` invocations run at once
//! and up to `QUEUE_DEPTH` more wait, in arrival order. A request takes its
//! place here before its body is read, so a 429 never reads a body and the
//! bodies held in memory are bounded by the slots and the queue (section 10).

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures_util::future::{ready, Either, Ready};
use runtime_sdk::{ErrorCode, InvokeError, SlotRelease};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::{Call, Outcome};
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
    pub call: Call,
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
    /// A slot, in arrival order, or `None` once `deadline` passes (queued time
    /// counts against it, section 4). A free slot is taken at once, with no
    /// timer set up.
    pub async fn slot_until(self, deadline: Instant) -> Option<Slot> {
        let shared = self.shared.clone();
        if let Ok(slot) = shared.slots.clone().try_acquire_owned() {
            return Some(Slot::new(slot, self.place));
        }
        shared.metrics.queue_depth().inc();
        let _waiting = Waiting(&shared.metrics);
        let slot = tokio::time::timeout_at(deadline.into(), shared.slots.clone().acquire_owned())
            .await
            .ok()?
            .expect("the slot semaphore is never closed");
        Some(Slot::new(slot, self.place))
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

impl<S> Service<Call> for Admission<S>
where
    S: Service<Admitted, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    // The inner future as it is: no box of our own on the way in.
    type Future = Either<Ready<Result<Outcome, Infallible>>, S::Future>;

    crate::pipeline::always_ready!();

    fn call(&mut self, call: Call) -> Self::Future {
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
        Either::Right(self.inner.call(Admitted { call, ticket }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Far enough that no test waits for it.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

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
        let slot = ticket(&layer).slot_until(later()).await.expect("a slot");
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
        let slot = ticket(&layer).slot_until(later()).await.expect("a slot");
        let held = slot.release();
        drop(slot);
        assert_eq!(shared.slots.available_permits(), 1);
        assert_eq!(shared.places.available_permits(), 2);
        drop(held);
    }

    /// A free slot is taken at once; a newcomer never passes a caller already
    /// waiting, and gives up at its deadline.
    #[tokio::test]
    async fn a_free_slot_is_taken_and_a_newcomer_never_passes_a_waiter() {
        let layer = AdmissionLayer::new(1, 2, Metrics::new("echo", "FAKE"));
        let first = ticket(&layer).slot_until(Instant::now()).await;
        let first = first.expect("a free slot, even with the deadline passed");
        let waiting = tokio::spawn(ticket(&layer).slot_until(later()));
        tokio::task::yield_now().await;
        drop(first);
        // The freed slot went to the waiter, not to a newcomer.
        let third = ticket(&layer)
            .slot_until(Instant::now() + Duration::from_millis(50))
            .await;
        assert!(third.is_none(), "a newcomer passed the waiter");
        let held = waiting
            .await
            .expect("the waiter ran")
            .expect("the waiter got the slot");
        drop(held);
        assert!(ticket(&layer).slot_until(Instant::now()).await.is_some());
    }
}
