//! The spare worker: the lane on a machine with one CPU.
//!
//! The lane needs a second tokio worker to fall back on when a call in it runs long
//! (its watch then gets the driver polled). With one CPU the runtime has one worker,
//! so every call is handed to a Python thread and back: two context switches and two
//! futex calls per call, about 4 µs here. A second worker that takes part costs what
//! the lane saves: the first wakes it to steal, and the two share the core
//! (bench/PROFILING.md). So on one CPU the runtime is built with two workers and one
//! is held: a task blocks it, waking every [`HOLD`] to run whatever was left on its
//! queue. When the lane's watch finds a call in the lane past its rescue time, it
//! releases the held worker, which then serves as a normal one (I/O, timers,
//! deadlines) until the lane is clear again.
//!
//! Why a turn every [`HOLD`]: tokio has no way to hold a worker with an empty queue.
//! A worker held for good after serving (a rescue) could keep tasks on its queue that
//! only its own polling would run, under load perhaps never. The turn bounds their wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::Duration;

use tokio::runtime::Handle;

/// How long the held worker stays blocked before it runs what may have been left on
/// its own queue (tasks it scheduled just before it was held), which bounds their wait.
const HOLD: Duration = Duration::from_millis(10);

/// While released, how often the worker looks whether it may be held again.
const RELEASED_CHECK: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Spare {
    /// A call in the lane has run past its rescue time: the worker must serve.
    needed: AtomicBool,
    /// The thread the worker is held on, to unpark it.
    held_on: Mutex<Option<Thread>>,
}

static SPARE: OnceLock<Spare> = OnceLock::new();

/// Holds one worker of `handle`'s runtime (built with two workers for one CPU) for the
/// lane's rescue; see the module's doc. `rest` runs on the worker each time it is held
/// again: the tasks of its turn allocated on that thread, and the watchdog returns
/// those pages (`watchdog::alloc::release_thread_pages`).
pub fn hold_spare_worker(handle: &Handle, rest: fn()) {
    let spare = SPARE.get_or_init(Spare::default);
    drop(handle.spawn(async move {
        loop {
            if spare.needed.load(Ordering::SeqCst) {
                tokio::time::sleep(RELEASED_CHECK).await;
                continue;
            }
            *super::lock(&spare.held_on) = Some(thread::current());
            // Looked at again once the thread is known: a release from now on unparks
            // it, and one made before makes the park return at once.
            if !spare.needed.load(Ordering::SeqCst) {
                rest();
                thread::park_timeout(HOLD);
            }
            *super::lock(&spare.held_on) = None;
            tokio::task::yield_now().await;
        }
    }));
}

/// The lane's watch: a call in the lane has run past its rescue time (`true`), or
/// none has (`false`).
pub(super) fn needed(yes: bool) {
    let Some(spare) = SPARE.get() else { return };
    if spare.needed.swap(yes, Ordering::SeqCst) == yes || !yes {
        return;
    }
    if let Some(held) = super::lock(&spare.held_on).as_ref() {
        held.unpark();
    }
}
