//! The lane: a quick call runs on the tokio worker that asked for it.
//!
//! Handing a call to a Python thread costs two wake-ups (the thread, then the caller),
//! and on a busy core each is a context switch: more than an echo handler's whole call.
//! The lane skips both when it is safe to: the call runs in a task of its own on the
//! current worker (so the caller's deadline still fires on another worker), with the
//! GIL, on a [`Slot`] of that worker's own.
//!
//! A worker in the lane is a worker the runtime cannot use, so the lane is taken only
//! when all of these hold:
//! - the runtime has another worker (multi-thread, two or more; on one CPU, a held one:
//!   [`spare`](super::spare));
//! - nobody is in it, and no call is queued for or running on the Python threads (the
//!   GIL is then free: the worker does not wait for it behind a running call);
//! - the handler is a plain function, not a coroutine or generator function (those
//!   wait on I/O or a reader by design);
//! - its recent calls were quick ([`QUICK`], a moving average over both paths).
//!
//! A worker woken by I/O releases tokio's driver (I/O and timers) and wakes no other
//! worker when it has a single task to run (tokio's eager driver hand-off is unstable).
//! If that task blocks in the lane, the driver could go unpolled: no deadline would fire
//! and no request would be read. So while calls use the lane, a watch thread looks every
//! [`RESCUE`]; once a lane call has run that long, it releases a held worker and spawns
//! an empty task from outside the runtime, which wakes a parked worker; that worker then
//! parks on the driver.
//!
//! A call that turns out slow is still served: the deadline, `TimeoutError` and
//! abandonment past the grace act on the lane's slot as on a thread's. An abandoned
//! lane call keeps the lane closed until it returns; no thread replaces it, since the
//! pool's threads all still serve.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use pyo3::ffi;
use pyo3::prelude::*;
use tokio::runtime::{Handle, RuntimeFlavor};

use super::{lock, Call, Held, Pool, Slot};

/// A handler whose calls average more than this runs on the Python threads: the
/// hand-off is then a small part of the call, and a tokio worker is not held for long.
const QUICK: Duration = Duration::from_micros(250);

/// How long a lane call runs before the watch makes sure another worker polls the
/// driver; also how often the watch looks while the lane is in use.
const RESCUE: Duration = Duration::from_millis(1);

/// The watch sleeps until the next lane call after this long without one.
const WATCH_IDLE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Lane {
    /// Someone is in the lane.
    busy: AtomicBool,
    /// Calls queued for or running on the Python threads.
    on_threads: AtomicUsize,
    /// Moving average of recent calls' time (ns), weight 1/8 for each new call.
    recent_ns: AtomicU64,
    /// When the call in the lane entered it (ns since `epoch`), 0 when none is.
    entered: AtomicU64,
    /// When a call last entered (ns since `epoch`), for the watch's idle rule.
    last_entered: AtomicU64,
    epoch: OnceLock<Instant>,
    /// The watch thread, started on the first lane call.
    watch: OnceLock<Thread>,
    /// The watch sleeps until unparked (no lane call for `WATCH_IDLE`).
    watch_idle: AtomicBool,
}

thread_local! {
    /// This worker's slot in the lane, the pool it is listed in, and its copy of the
    /// handler.
    static HERE: RefCell<Option<(u64, Arc<Slot>, Held)>> = const { RefCell::new(None) };
    /// This thread's Python state is kept for good (made on its first lane call).
    static KEPT: Cell<bool> = const { Cell::new(false) };
}

impl Lane {
    /// Runs `call` in the lane if it may (see the module's doc), or hands it back for
    /// the threads.
    pub(super) fn try_run(&self, pool: &Arc<Pool>, call: Box<Call>) -> Option<Box<Call>> {
        let open = self.on_threads.load(Ordering::Acquire) == 0
            && Duration::from_nanos(self.recent_ns.load(Ordering::Relaxed)) < QUICK
            && pool.loaded.plain.load(Ordering::Relaxed)
            && spare_worker();
        if !open || self.busy.swap(true, Ordering::AcqRel) {
            return Some(call);
        }
        self.start_watch(pool);
        let pool = Arc::clone(pool);
        tokio::spawn(async move {
            let leave = Leave(&pool.lane.busy);
            let slot = call.inv.slot.clone();
            let started = pool.lane.enter();
            let answer = pool.run_here(call);
            pool.lane.entered.store(0, Ordering::Release);
            pool.lane.took(started.elapsed());
            // Out of the lane before answering: the caller's next call may come at once.
            drop(leave);
            // A stream was answered from inside, and keeps its slot until it ends.
            if let Some((reply, result)) = answer {
                // The function has returned: its slot goes to the next call now,
                // not when the caller's task is polled again.
                slot.release();
                let _ = reply.send(result);
            }
        });
        None
    }

    /// Marks a call in the lane (for the watch); returns when.
    fn enter(&self) -> Instant {
        let now = Instant::now();
        let ns = self.since_epoch(now).max(1);
        self.entered.store(ns, Ordering::SeqCst);
        self.last_entered.store(ns, Ordering::Relaxed);
        if self.watch_idle.load(Ordering::SeqCst) {
            if let Some(watch) = self.watch.get() {
                watch.unpark();
            }
        }
        now
    }

    fn since_epoch(&self, t: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(Instant::now);
        nanos(t.saturating_duration_since(epoch))
    }

    /// Starts the watch thread once (see the module's doc); it ends with the pool.
    fn start_watch(&self, pool: &Arc<Pool>) {
        if self.watch.get().is_some() {
            return;
        }
        let (pool, handle) = (Arc::downgrade(pool), Handle::current());
        match thread::Builder::new()
            .name("ember-lane-watch".into())
            .spawn(move || watch(&pool, &handle))
        {
            Ok(t) => {
                let _ = self.watch.set(t.thread().clone());
            }
            Err(e) => tracing::error!("could not start the lane's watch thread: {e}"),
        }
    }

    pub(super) fn queued(&self) {
        self.on_threads.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn dequeued(&self) {
        self.on_threads.fetch_sub(1, Ordering::AcqRel);
    }

    /// Adds a call's time to the average.
    pub(super) fn took(&self, elapsed: Duration) {
        let ns = nanos(elapsed);
        let old = self.recent_ns.load(Ordering::Relaxed);
        // Racy on purpose: a lost update only delays the average by one call.
        let new = old - old / 8 + ns / 8;
        self.recent_ns.store(new, Ordering::Relaxed);
    }
}

/// The watch thread's loop (see the module's doc).
fn watch(pool: &Weak<Pool>, handle: &Handle) {
    let mut rescued = 0;
    loop {
        let Some(pool) = pool.upgrade() else { return };
        let lane = &pool.lane;
        lane.watch_idle.store(false, Ordering::SeqCst);
        let now = lane.since_epoch(Instant::now());
        let entered = lane.entered.load(Ordering::SeqCst);
        if entered != 0 && entered != rescued && now.saturating_sub(entered) >= nanos(RESCUE) {
            rescued = entered;
            // A held worker is let go; and from outside the runtime, a task is queued
            // for all, which wakes a parked worker.
            super::spare::needed(true);
            drop(handle.spawn(async {}));
        } else if entered == 0 {
            super::spare::needed(false);
        }
        let mut sleep = RESCUE;
        if now.saturating_sub(lane.last_entered.load(Ordering::Relaxed)) >= nanos(WATCH_IDLE) {
            lane.watch_idle.store(true, Ordering::SeqCst);
            // Looked at again after saying so: a call entering from now on unparks us.
            if lane.entered.load(Ordering::SeqCst) == 0 {
                sleep = WATCH_IDLE;
            }
        }
        // Not kept while asleep: the pool may end meanwhile, and the watch with it.
        drop(pool);
        thread::park_timeout(sleep);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the current runtime has a worker besides this one.
fn spare_worker() -> bool {
    Handle::try_current().is_ok_and(|h| {
        h.runtime_flavor() == RuntimeFlavor::MultiThread && h.metrics().num_workers() >= 2
    })
}

/// Leaves the lane when the call ends, a panic included.
struct Leave<'a>(&'a AtomicBool);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Pool {
    /// Runs `call` on this thread, on its lane slot (made on its first call).
    fn run_here(self: &Arc<Pool>, call: Box<Call>) -> Option<super::Answer> {
        HERE.with(|here| {
            let mut here = here.borrow_mut();
            let answer = Python::attach(|py| {
                if !KEPT.replace(true) {
                    // One more PyGILState_Ensure, never released: attaching again then
                    // only takes the GIL, instead of making and freeing a thread state
                    // on every call.
                    // SAFETY: attached; the count it adds to is this thread's own.
                    unsafe { ffi::PyGILState_Ensure() };
                }
                if here.as_ref().is_none_or(|(pool, ..)| *pool != self.id) {
                    let slot = Arc::new(Slot::new("ember-lane".into(), true));
                    slot.attach_here(py);
                    lock(&self.slots).push(Arc::clone(&slot));
                    *here = Some((self.id, slot, None));
                }
                let (_, slot, held) = here.as_mut().expect("set above");
                let slot = Arc::clone(slot);
                self.run(py, &slot, call, held)
            });
            let abandoned = here
                .as_ref()
                .is_some_and(|(_, slot, _)| slot.abandoned.load(Ordering::Acquire));
            if let Some((_, slot, _)) = here.take_if(|_| abandoned) {
                // Back at last from a call given up on: a fresh slot next time.
                self.unlist_abandoned(&slot);
                tracing::warn!("a stuck handler call on a server thread returned at last");
            }
            answer
        })
    }
}

/// A Python thread's [`Job::Hold`](super::Job): waits (detached) until the lane call
/// `seq` ends, or is given up on (a fresh thread would then have taken its place).
pub(super) fn hold(lane: &Slot, seq: u64) {
    let running = || lock(&lane.running).as_ref().is_some_and(|r| r.seq == seq);
    while running() && !lane.abandoned.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(2));
    }
}
