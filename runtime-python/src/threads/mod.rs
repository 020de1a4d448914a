//! Dedicated Python threads, granian style, and a lane for quick calls.
//!
//! `slots` OS threads attach to the interpreter once and take jobs from one shared queue.
//! While a thread waits it is detached (GIL released), so idle threads cost the running
//! ones nothing; a job runs with the GIL and answers through a tokio `oneshot`.
//!
//! A hand-off costs two wake-ups, more than a quick handler's call. So when the handler
//! has been quick, no other call runs and the runtime has a worker to spare, the call
//! runs on the tokio worker that asked for it instead ([`lane`]): no queue, no wake-up.
//! On one CPU the runtime keeps a held worker for that ([`spare`]).
//! Everything else (deadline, `TimeoutError`, logging, a stuck call's abandonment) is
//! the same for both, since both run [`Pool::run`] on a [`Slot`].
//!
//! Deadlines: the awaiting side gives up at the deadline (that is what makes
//! `invoke` end on time whatever Python does), and a short-lived `ember-py-deadline`
//! thread then stops the handler: `TimeoutError` raised in its thread with
//! `PyThreadState_SetAsyncExc`, or, for a coroutine, its task cancelled on the
//! thread's event loop. A handler still running `kill_grace` after its deadline makes
//! [`Pool::stuck`] report it, which `health()` turns into `Unhealthy`.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3::{ffi, intern};
use runtime_sdk::{
    ErrorCode, Invocation, InvokeError, InvokeResult, Json, Output, Payload, SlotRelease,
};
use tokio::sync::oneshot;

mod lane;
mod spare;

pub use spare::hold_spare_worker;

use crate::embed::{self, Runtime};
use crate::{convert, errors, logs, output, signals, PythonConfig};

/// How many streamed values may wait for a slow reader: enough to keep the generator
/// and the writer from waking each other per value, few enough that memory stays
/// flat however long the stream.
const STREAM_AHEAD: usize = 8;

/// Worker stack: CPython's main thread gets 8 MiB; so do these, so deep recursion in a
/// handler hits RecursionError, not a segfault. Only touched pages count as memory.
const STACK_SIZE: usize = 8 << 20;

/// The loaded handler, shared by every thread; a reload swaps in a new one whole.
pub(crate) struct Loaded {
    rt: &'static Runtime,
    func: Py<PyAny>,
    takes_context: bool,
    is_async: bool,
    /// A generator function: its call streams for as long as the reader reads.
    is_generator: bool,
}

enum Job {
    /// Initialise `ember`, import the module, find the function.
    Load(oneshot::Sender<Result<(), InvokeError>>),
    /// Import the module afresh and swap the handler (`RELOAD`).
    Reload(oneshot::Sender<Result<(), InvokeError>>),
    /// Boxed: a call (its `Invocation` is some 300 bytes) moves from the caller to the
    /// lane or the queue and on to a thread as a pointer, not copied at every step.
    Invoke(Box<Call>),
    /// Stay out of work while a lane call runs past the caller's end (see
    /// [`Pending`]): a thread's worth of capacity, as a thread's own call would hold.
    Hold(Arc<Slot>, u64),
}

/// The handler now serving. A reload replaces it whole while calls run: each call takes
/// the handler once, at its start, so one in flight finishes on the code it began with.
/// Workers keep their own `Arc` and compare one counter per call, so the hot path reads
/// a cache line that only a reload writes, and takes no lock.
#[derive(Default)]
struct Current {
    /// Bumped (under `loaded`'s lock) by every swap.
    generation: AtomicU64,
    loaded: Mutex<Option<Arc<Loaded>>>,
    /// The current handler's `takes_context`, read per request by the server.
    takes_context: AtomicBool,
    /// The current handler is neither a coroutine nor a generator function (the lane
    /// may run it).
    plain: AtomicBool,
}

/// A worker's copy of the handler, and the generation it was taken at.
type Held = Option<(u64, Arc<Loaded>)>;

impl Current {
    fn store(&self, loaded: Loaded) {
        let mut current = lock(&self.loaded);
        self.takes_context
            .store(loaded.takes_context, Ordering::Relaxed);
        self.plain
            .store(!loaded.is_async && !loaded.is_generator, Ordering::Relaxed);
        *current = Some(Arc::new(loaded));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The handler to run now: the worker's copy, refreshed if a swap happened since.
    fn get<'a>(&self, held: &'a mut Held) -> Option<&'a Loaded> {
        let now = self.generation.load(Ordering::Acquire);
        if held.as_ref().is_none_or(|(seen, _)| *seen != now) {
            let current = lock(&self.loaded);
            let generation = self.generation.load(Ordering::Relaxed);
            *held = current.clone().map(|loaded| (generation, loaded));
        }
        held.as_ref().map(|(_, loaded)| &**loaded)
    }
}

/// A reply and what to send on it.
type Answer = (oneshot::Sender<InvokeResult>, InvokeResult);

struct Call {
    seq: u64,
    inv: Invocation,
    reply: oneshot::Sender<InvokeResult>,
}

/// One worker thread, as the deadline thread and `health()` see it.
struct Slot {
    name: String,
    /// `threading.get_ident()` of the thread, the id `PyThreadState_SetAsyncExc` takes.
    ident: AtomicU64,
    /// The thread's Python state, whose stack is looked at before raising in it.
    tstate: AtomicPtr<ffi::PyThreadState>,
    /// The invocation this thread runs. Locked only briefly and never across a Python
    /// call (a Python call may release the GIL, and a thread waiting for this lock while
    /// holding the GIL would deadlock with one waiting for the GIL while holding it).
    running: Mutex<Option<Running>>,
    /// This thread's `AsyncRunner`, made on its first coroutine.
    runner: OnceLock<Py<PyAny>>,
    /// Set when the thread stayed in a job past its deadline plus the grace: a fresh
    /// thread took its place, and this one exits as soon as its job returns.
    abandoned: AtomicBool,
    /// A tokio worker's slot in the lane: no thread replaces it when abandoned.
    in_lane: bool,
}

impl Slot {
    fn new(name: String, in_lane: bool) -> Slot {
        Slot {
            name,
            ident: AtomicU64::new(0),
            tstate: AtomicPtr::new(std::ptr::null_mut()),
            running: Mutex::new(None),
            runner: OnceLock::new(),
            abandoned: AtomicBool::new(false),
            in_lane,
        }
    }

    /// Records the calling thread's Python identity (attached, for good).
    fn attach_here(&self, py: Python<'_>) {
        match thread_ident(py) {
            Ok(id) => self.ident.store(id, Ordering::Relaxed),
            Err(e) => tracing::warn!(thread = %self.name, "no Python thread id: {e}"),
        }
        // SAFETY: attached, so this thread has a state; it keeps it until it exits.
        self.tstate
            .store(unsafe { ffi::PyThreadState_Get() }, Ordering::Release);
    }
}

struct Running {
    seq: u64,
    execution_id: Arc<str>,
    deadline: Instant,
    is_async: bool,
    /// Set by the deadline thread; the worker then clears any exception still pending.
    interrupted: bool,
}

pub(crate) struct Pool {
    /// Tells pools apart (a worker's lane slot belongs to one).
    id: u64,
    cfg: PythonConfig,
    queue: JobQueue,
    /// Every live worker thread, abandoned ones included until they exit.
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Threads abandoned past their deadline and still inside their job.
    stuck_threads: AtomicUsize,
    /// Cloned into each worker; the receiver closes when every worker has exited.
    alive: Mutex<Option<tokio::sync::mpsc::Sender<()>>>,
    /// Names the threads (`ember-py-N`), replacements included.
    next_thread: AtomicUsize,
    loaded: Current,
    /// Closes when every thread has exited (each holds a sender).
    exited: Mutex<Option<tokio::sync::mpsc::Receiver<()>>>,
    next_seq: AtomicU64,
    lane: lane::Lane,
}

/// The jobs every thread takes from. A condvar wakes exactly one idle thread per job
/// (a mutex around an mpsc receiver would also wake the next thread in line for the
/// mutex on every job: measurably slower with several slots, see README). The lock is
/// held only to push or pop, never across a Python call.
#[derive(Default)]
struct JobQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Set by shutdown: threads drain what is queued, then exit.
    closed: bool,
}

impl JobQueue {
    /// Queues a job; false once closed.
    fn push(&self, job: Job) -> bool {
        self.push_at(job, false)
    }

    /// Queues a job ahead of the waiting ones (a reload, so that a queue of calls does
    /// not hold back the new code); false once closed.
    fn push_first(&self, job: Job) -> bool {
        self.push_at(job, true)
    }

    fn push_at(&self, job: Job, first: bool) -> bool {
        let mut state = lock(&self.state);
        if state.closed {
            return false;
        }
        if first {
            state.jobs.push_front(job);
        } else {
            state.jobs.push_back(job);
        }
        drop(state);
        self.ready.notify_one();
        true
    }

    /// The next job; `None` once closed and drained.
    fn pop(&self) -> Option<Job> {
        let mut state = lock(&self.state);
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    pub(crate) fn new(cfg: PythonConfig) -> Arc<Pool> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Arc::new(Pool {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cfg,
            queue: JobQueue::default(),
            slots: Mutex::new(Vec::new()),
            stuck_threads: AtomicUsize::new(0),
            alive: Mutex::new(None),
            next_thread: AtomicUsize::new(0),
            loaded: Current::default(),
            exited: Mutex::new(None),
            next_seq: AtomicU64::new(1),
            lane: lane::Lane::default(),
        })
    }

    /// Spawns the threads, then has one of them import the handler.
    pub(crate) async fn start(self: &Arc<Pool>) -> Result<(), InvokeError> {
        self.spawn()?;
        let (tx, rx) = oneshot::channel();
        self.send(Job::Load(tx))?;
        rx.await.unwrap_or_else(|_| {
            Err(InvokeError::new(
                ErrorCode::HandlerLoadError,
                "the Python thread loading the handler ended without an answer",
            ))
        })
    }

    /// Imports the handler afresh on one of the threads and swaps it in; on an import
    /// error the previous handler keeps serving. Ahead of queued calls; calls in flight
    /// finish on the code they started with.
    pub(crate) async fn reload(self: &Arc<Pool>) -> Result<(), InvokeError> {
        let (tx, rx) = oneshot::channel();
        if lock(&self.slots).is_empty() || !self.queue.push_first(Job::Reload(tx)) {
            return Err(InvokeError::new(
                ErrorCode::HandlerLoadError,
                "no Python thread runs to reload the handler",
            ));
        }
        rx.await.unwrap_or_else(|_| {
            Err(InvokeError::new(
                ErrorCode::HandlerLoadError,
                "the Python thread reloading the handler ended without an answer",
            ))
        })
    }

    fn spawn(self: &Arc<Pool>) -> Result<(), InvokeError> {
        let (alive_tx, alive_rx) = tokio::sync::mpsc::channel::<()>(1);
        *lock(&self.alive) = Some(alive_tx);
        *lock(&self.exited) = Some(alive_rx);
        for _ in 0..self.cfg.slots.max(1) {
            self.spawn_worker().map_err(|e| {
                InvokeError::new(
                    ErrorCode::HandlerLoadError,
                    format!("could not start a Python thread: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// Starts one worker thread and lists its slot.
    fn spawn_worker(self: &Arc<Pool>) -> std::io::Result<()> {
        let Some(alive) = lock(&self.alive).clone() else {
            return Err(std::io::Error::other("the Python runtime has shut down"));
        };
        let n = self.next_thread.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new(format!("ember-py-{n}"), false));
        let (pool, worker_slot) = (Arc::clone(self), Arc::clone(&slot));
        lock(&self.slots).push(slot.clone());
        let spawned = thread::Builder::new()
            .name(slot.name.clone())
            .stack_size(STACK_SIZE)
            .spawn(move || pool.worker(&worker_slot, alive));
        if spawned.is_err() {
            lock(&self.slots).retain(|s| !Arc::ptr_eq(s, &slot));
        }
        spawned.map(drop)
    }

    fn send(&self, job: Job) -> Result<(), InvokeError> {
        if self.queue.push(job) {
            Ok(())
        } else {
            Err(InvokeError::new(
                ErrorCode::Cancelled,
                "the Python runtime has shut down",
            ))
        }
    }

    /// Runs one invocation on a Python thread; ends by the deadline whatever Python does.
    /// Takes the pool by value: the caller boxes this future alone, with no state of its
    /// own around it to move the call through.
    pub(crate) async fn invoke(self: Arc<Pool>, inv: Invocation) -> InvokeResult {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let deadline = inv.deadline;
        let execution_id = inv.execution_id.clone();
        let (tx, rx) = oneshot::channel();
        let call = Box::new(Call {
            seq,
            inv,
            reply: tx,
        });
        if let Some(call) = self.lane.try_run(&self, call) {
            self.lane.queued();
            if let Err(e) = self.send(Job::Invoke(call)) {
                self.lane.dequeued();
                return Err(e);
            }
        }
        let mut pending = Pending {
            pool: &self,
            seq,
            execution_id,
            deadline,
            answer: Some(rx),
        };
        // No timer here: the pipeline drops this future at the deadline, and
        // `pending` then has the handler stopped (the timer that must act on
        // the Python thread is `interrupt_later`).
        let rx = pending.answer.as_mut().expect("set above");
        let answer = rx.await;
        pending.answer = None;
        answer.unwrap_or_else(|_| {
            Err(InvokeError::new(
                ErrorCode::HandlerError,
                "the Python thread ended without a result",
            ))
        })
    }

    /// Whether the loaded handler takes a context (and so may read `context.request`).
    pub(crate) fn takes_context(&self) -> bool {
        self.loaded.takes_context.load(Ordering::Relaxed)
    }

    /// Threads abandoned past their deadline and still inside their job.
    pub(crate) fn stuck_threads(&self) -> usize {
        self.stuck_threads.load(Ordering::Acquire)
    }

    /// The invocation a thread has kept past its deadline plus `kill_grace`, if any.
    pub(crate) fn stuck(&self) -> Option<String> {
        let grace = self.cfg.kill_grace;
        let now = Instant::now();
        for slot in lock(&self.slots).iter() {
            if let Some(r) = lock(&slot.running).as_ref() {
                if now > r.deadline + grace {
                    return Some(format!(
                        "handler for {} did not stop within {} ms after its deadline \
                         (thread {} is still busy; a handler blocked in C code, such as \
                         time.sleep, sees TimeoutError only when that call returns)",
                        r.execution_id,
                        grace.as_millis(),
                        slot.name
                    ));
                }
            }
        }
        None
    }

    /// Closes the queue; waits a little for the threads, never for a stuck one.
    pub(crate) async fn shutdown(&self) {
        self.queue.close();
        // No replacement thread from now on; the channel closes with the last worker.
        lock(&self.alive).take();
        let Some(mut exited) = lock(&self.exited).take() else {
            return;
        };
        let wait = self.cfg.kill_grace.max(Duration::from_millis(500));
        if tokio::time::timeout(wait, exited.recv()).await.is_err() {
            let busy: Vec<Arc<str>> = lock(&self.slots)
                .iter()
                .filter_map(|s| lock(&s.running).as_ref().map(|r| r.execution_id.clone()))
                .collect();
            tracing::warn!(
                busy = ?busy,
                "Python threads still running at shutdown after {} ms; leaving them",
                wait.as_millis()
            );
        }
    }

    // ---- on the Python threads ----

    fn worker(self: Arc<Pool>, slot: &Slot, _alive: tokio::sync::mpsc::Sender<()>) {
        // The first thread here initialises the interpreter (signal handlers left to the
        // watchdog); the others wait for it inside initialize().
        Python::initialize();
        Python::attach(|py| {
            slot.attach_here(py);
            // The last job's answer, sent once the GIL is released: the caller's next job
            // may go to another thread, which then finds the GIL free instead of waking
            // up only to wait for this one to let go of it. With it, the call's running
            // slot, freed as the answer goes (see `send_answer`).
            let mut answer: Option<(Answer, SlotRelease)> = None;
            // This thread's copy of the handler (see `Current`); dropped with the GIL.
            let mut held: Held = None;
            loop {
                // Detached while waiting, so an idle thread never holds the GIL.
                let job = py.detach(|| {
                    send_answer(answer.take());
                    self.queue.pop()
                });
                let Some(job) = job else { break };
                let invoke = matches!(job, Job::Invoke(_));
                let started = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(|| match job {
                    Job::Load(reply) => {
                        let _ = reply.send(self.load(py, false));
                        None
                    }
                    Job::Reload(reply) => {
                        let _ = reply.send(self.load(py, true));
                        None
                    }
                    Job::Invoke(call) => {
                        let running = call.inv.slot.clone();
                        self.run(py, slot, call, &mut held).map(|a| (a, running))
                    }
                    Job::Hold(lane, seq) => {
                        py.detach(|| lane::hold(&lane, seq));
                        None
                    }
                }));
                if invoke {
                    self.lane.dequeued();
                    self.lane.took(started.elapsed());
                }
                match outcome {
                    Ok(next) => answer = next,
                    // A dropped reply tells the caller; the thread keeps serving.
                    Err(_) => {
                        tracing::error!(thread = %slot.name, "panic in the Python runtime; job abandoned")
                    }
                }
                if slot.abandoned.load(Ordering::Acquire) {
                    // A fresh thread serves in this one's place: leave.
                    send_answer(answer.take());
                    self.unlist_abandoned(slot);
                    tracing::warn!(thread = %slot.name, "a stuck Python thread returned at last and exits");
                    break;
                }
            }
        });
    }

    /// Imports the handler (`fresh`: in a new module namespace, for a reload) and makes
    /// it the one calls run.
    fn load(&self, py: Python<'_>, fresh: bool) -> Result<(), InvokeError> {
        let started = Instant::now();
        let rt = embed::install(py).map_err(|e| errors::load_error(py, None, &e))?;
        let path = self.cfg.path.to_string_lossy().into_owned();
        let loader = if fresh { &rt.reload } else { &rt.load };
        let signals = signals::Saved::now();
        let found = loader
            .bind(py)
            .call1((path, &self.cfg.module, &self.cfg.function))
            .and_then(|t| t.extract::<(Py<PyAny>, u8, bool, bool)>());
        signals.restore();
        let (func, arity, is_async, is_generator) = match found {
            Ok(found) => found,
            Err(e) if fresh => return Err(errors::reload_error(py, rt, &e)),
            Err(e) => return Err(errors::load_error(py, Some(rt), &e)),
        };
        tracing::info!(
            module = %self.cfg.module,
            function = %self.cfg.function,
            params = arity,
            is_async,
            threads = self.cfg.slots.max(1),
            load_ms = started.elapsed().as_secs_f64() * 1e3,
            "{}",
            if fresh {
                "python handler reloaded"
            } else {
                "python handler loaded"
            }
        );
        self.loaded.store(Loaded {
            rt,
            func,
            takes_context: arity == 2,
            is_async,
            is_generator,
        });
        Ok(())
    }

    /// Runs a job; returns its answer for the caller of `worker` to send.
    fn run(
        self: &Arc<Pool>,
        py: Python<'_>,
        slot: &Slot,
        call: Box<Call>,
        held: &mut Held,
    ) -> Option<Answer> {
        let Call { seq, inv, reply } = *call;
        let Some(loaded) = self.loaded.get(held) else {
            let not_loaded =
                InvokeError::new(ErrorCode::NotReady, "the Python handler is not loaded");
            return Some((reply, Err(not_loaded)));
        };
        // Mark the slot busy before looking at the caller, so the deadline thread (which
        // looks only after the caller is gone) either finds this job or finds it skipped.
        let busy = Busy::begin(slot, seq, &inv, loaded.is_async);
        if reply.is_closed() {
            tracing::debug!(execution_id = %inv.execution_id, "skipped: its caller is gone");
            return None;
        }
        if Instant::now() >= inv.deadline {
            return Some((
                reply,
                Err(InvokeError::timeout(&inv.execution_id, inv.budget())),
            ));
        }
        self.call_handler(py, slot, loaded, seq, &inv, busy, reply)
    }

    /// Calls the handler; a generator's values are streamed from here (the answer is
    /// then already sent: `None`).
    #[allow(clippy::too_many_arguments)]
    fn call_handler(
        self: &Arc<Pool>,
        py: Python<'_>,
        slot: &Slot,
        loaded: &Loaded,
        seq: u64,
        inv: &Invocation,
        busy: Busy<'_>,
        reply: oneshot::Sender<InvokeResult>,
    ) -> Option<Answer> {
        // Built straight from the request's bytes: no tree in between.
        let request = match &inv.payload {
            Payload::Json(json) => match convert::json_to_py(py, json.as_bytes()) {
                Ok(obj) => obj,
                Err(e) => {
                    let e = InvokeError::new(
                        ErrorCode::InvalidRequest,
                        format!("the payload cannot be passed to Python: {e}"),
                    );
                    return Some((reply, Err(e)));
                }
            },
            Payload::Binary(bytes) => PyBytes::new(py, bytes).into_any(),
        };
        logs::begin_call(&inv.execution_id, inv.trace_id.as_deref());
        let func = loaded.func.bind(py);
        let out = if loaded.takes_context {
            self.context(py, loaded, inv)
                .and_then(|ctx| func.call1((request, ctx)))
        } else {
            func.call1((request,))
        };
        let out = out.and_then(|obj| {
            // Also catches a plain def that returns a coroutine (a wrapped async def).
            if loaded.is_async || unsafe { ffi::PyCoro_CheckExact(obj.as_ptr()) } != 0 {
                busy.mark_async();
                runner(py, slot, loaded.rt)?.call_method1(intern!(py, "run"), (obj, seq))
            } else {
                Ok(obj)
            }
        });
        if let Ok(obj) = &out {
            // SAFETY: type checks on a live object, GIL held.
            let (sync_gen, async_gen) = unsafe {
                (
                    ffi::PyGen_Check(obj.as_ptr()) != 0,
                    ffi::PyAsyncGen_CheckExact(obj.as_ptr()) != 0,
                )
            };
            if sync_gen || async_gen {
                self.stream(py, slot, loaded, seq, inv, busy, obj, async_gen, reply);
                return None;
            }
        }
        let interrupted = busy.finish(py);
        logs::end_call();
        let result = match out {
            // Written straight from the Python objects, stopped at MAX_OUTPUT_BYTES.
            Ok(obj) => output::from_return(loaded.rt, &obj, self.cfg.max_output).inspect_err(|e| {
                if e.code == ErrorCode::OutputSerializationError {
                    tracing::warn!(
                        execution_id = %inv.execution_id,
                        trace_id = inv.trace_id.as_deref(),
                        "handler returned a value that is not JSON: {}",
                        e.message
                    );
                }
            }),
            Err(err) => Err(errors::handler_error(py, loaded.rt, &err, inv, interrupted)),
        };
        Some((reply, result))
    }

    /// Streams a generator's values (sync or async) to the caller as they come. The
    /// answer is a stream sent at once; each value is written to JSON and handed over
    /// through a short channel, so a slow reader holds the generator back. The
    /// deadline reaches the generator as `TimeoutError` (the stream then ends with a
    /// `TIMEOUT` error), `MAX_OUTPUT_BYTES` counts the whole stream, and a reader that
    /// goes away closes the generator (`GeneratorExit`, its `finally` runs).
    #[allow(clippy::too_many_arguments)]
    fn stream(
        self: &Arc<Pool>,
        py: Python<'_>,
        slot: &Slot,
        loaded: &Loaded,
        seq: u64,
        inv: &Invocation,
        busy: Busy<'_>,
        gen: &Bound<'_, PyAny>,
        is_async: bool,
        reply: oneshot::Sender<InvokeResult>,
    ) {
        if is_async {
            busy.mark_async();
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Json, InvokeError>>(STREAM_AHEAD);
        let reader_here = reply
            .send(Ok(Output::stream(Box::pin(Received(rx)))))
            .is_ok();
        // The deadline must act on this thread while it iterates.
        self.interrupt_later(seq, inv.execution_id.clone(), inv.deadline);
        let limit = self.cfg.max_output;
        let mut total = 0usize;
        let mut failure: Option<InvokeError> = None;
        let mut raised: Option<PyErr> = None;
        let mut close = !reader_here;
        while !close {
            match next_value(py, slot, loaded, gen, is_async, seq) {
                Ok(Some(item)) => {
                    let mut out = Vec::new();
                    match convert::py_to_json(&item, &mut out, limit - total) {
                        Ok(()) => {
                            total += out.len();
                            if !send(py, &tx, Ok(Json::from_trusted(out)), inv.deadline) {
                                close = true; // the reader is gone
                            }
                        }
                        Err(e) if e.is_too_large() => {
                            failure = Some(InvokeError::output_too_large("the stream", limit));
                            close = true;
                        }
                        Err(e) => {
                            failure = Some(InvokeError::new(
                                ErrorCode::OutputSerializationError,
                                format!("a streamed value is not JSON-serialisable: {e}"),
                            ));
                            close = true;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    raised = Some(e);
                    break;
                }
            }
        }
        if close {
            // GeneratorExit in the generator: its `finally` blocks run now.
            let closed = if is_async {
                gen.call_method0(intern!(py, "aclose")).and_then(|coro| {
                    runner(py, slot, loaded.rt)?.call_method1(intern!(py, "run"), (coro, seq))
                })
            } else {
                gen.call_method0(intern!(py, "close"))
            };
            if let Err(e) = closed {
                tracing::debug!(execution_id = %inv.execution_id, "closing the generator raised: {e}");
            }
        }
        let interrupted = busy.finish(py);
        logs::end_call();
        if let Some(e) = raised {
            failure = Some(errors::handler_error(py, loaded.rt, &e, inv, interrupted));
            if interrupted {
                failure = Some(InvokeError::timeout(&inv.execution_id, inv.budget()));
            }
        }
        if let Some(e) = failure {
            send(py, &tx, Err(e), inv.deadline + self.cfg.kill_grace);
        }
    }

    fn context<'py>(
        &self,
        py: Python<'py>,
        loaded: &Loaded,
        inv: &Invocation,
    ) -> PyResult<Bound<'py, PyAny>> {
        let function_name = if inv.function_name.is_empty() {
            self.cfg.function_name.as_str()
        } else {
            inv.function_name.as_str()
        };
        let request = match &inv.request {
            Some(r) => {
                let headers = PyDict::new(py);
                for (name, value) in &r.headers {
                    headers.set_item(name, value)?;
                }
                loaded
                    .rt
                    .request
                    .bind(py)
                    .call1((r.method.as_str(), r.path.as_str(), headers))?
            }
            None => py.None().into_bound(py),
        };
        loaded.rt.context.bind(py).call1((
            &*inv.execution_id,
            inv.trace_id.as_deref(),
            inv.attempt.unwrap_or(1),
            function_name,
            inv.deadline_unix_ms(),
            inv.cold_start,
            request,
            inv.traceparent.as_deref(),
        ))
    }

    // ---- at the deadline ----

    /// Stops invocation `seq` once its deadline has come, on a thread of its own: it
    /// needs the GIL, which a tokio worker must never wait for.
    fn interrupt_later(self: &Arc<Pool>, seq: u64, execution_id: Arc<str>, deadline: Instant) {
        let pool = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("ember-py-deadline".into())
            .spawn(move || pool.interrupt(seq, &execution_id, deadline));
        if let Err(e) = spawned {
            tracing::error!("could not start the thread that stops timed-out handlers: {e}");
        }
    }

    fn interrupt(self: &Arc<Pool>, seq: u64, execution_id: &str, deadline: Instant) {
        // `deadline` is when to stop it: the invocation's deadline, or now when the
        // watchdog gave up on it earlier (a client gone with no callback target, a drain).
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
        let grace = self.cfg.kill_grace;
        let give_up = deadline + grace;
        let Some(slot) = self.slot_running(seq) else {
            return; // finished, or still queued (it will be skipped)
        };
        let Some(is_async) = raise_when_safe(&slot, seq, false, give_up) else {
            return;
        };
        if is_async {
            // A cancelled task normally ends within a few ms; one blocked in synchronous
            // code never sees the cancellation, so it gets the TimeoutError too.
            thread::sleep((grace / 2).clamp(Duration::from_millis(10), Duration::from_millis(250)));
            if self.slot_running(seq).is_some() {
                raise_when_safe(&slot, seq, true, give_up);
            }
        }
        thread::sleep(give_up.saturating_duration_since(Instant::now()));
        if let Some(slot) = self.slot_running(seq) {
            self.abandon(&slot, seq, execution_id);
        }
    }

    /// Gives up on a thread that stays in job `seq` past its deadline plus the grace:
    /// a fresh thread takes its place, so the pool's capacity comes back, and this one
    /// leaves when (if ever) its job returns. `/health` says `unhealthy` while it is
    /// stuck; `/live` fails once more threads are stuck than there are slots.
    fn abandon(self: &Arc<Pool>, slot: &Slot, seq: u64, execution_id: &str) {
        {
            // Checked and set under the slot's lock, which the worker takes to end the
            // job: either it sees the flag after this job, or this sees the job ended.
            let running = lock(&slot.running);
            if running.as_ref().is_none_or(|r| r.seq != seq) {
                return;
            }
            slot.abandoned.store(true, Ordering::Release);
        }
        let stuck = self.stuck_threads.fetch_add(1, Ordering::AcqRel) + 1;
        if slot.in_lane {
            // A tokio worker, not one of the pool's threads: the pool's capacity is
            // whole, and the lane stays closed until the call returns.
            tracing::error!(
                execution_id,
                stuck_threads = stuck,
                "handler did not stop within {} ms after its deadline (it ran on a \
                 server thread); /health reports unhealthy until it returns",
                self.cfg.kill_grace.as_millis()
            );
            return;
        }
        tracing::error!(
            execution_id,
            thread = %slot.name,
            stuck_threads = stuck,
            "handler did not stop within {} ms after its deadline; a fresh thread takes its \
             slot, and /health reports unhealthy until it returns",
            self.cfg.kill_grace.as_millis()
        );
        if let Err(e) = self.spawn_worker() {
            tracing::error!("could not start a Python thread to replace a stuck one: {e}");
        }
    }

    /// A slot given up on ([`Pool::abandon`]) whose call returned at last: no longer
    /// stuck, and no longer listed.
    fn unlist_abandoned(&self, slot: &Slot) {
        self.stuck_threads.fetch_sub(1, Ordering::AcqRel);
        lock(&self.slots).retain(|s| !std::ptr::eq(&**s, slot));
    }

    fn slot_running(&self, seq: u64) -> Option<Arc<Slot>> {
        lock(&self.slots)
            .iter()
            .find(|s| lock(&s.running).as_ref().is_some_and(|r| r.seq == seq))
            .cloned()
    }
}

/// Sends a thread's answer. The function has returned, so its running slot goes to
/// the next call in line first: that call's task is then woken with the caller's, and
/// its job reaches the threads without waiting for the caller's task to run and free
/// the slot (as the lane does; about 5% more calls of a 1 ms handler, bench/PROFILING.md).
fn send_answer(answer: Option<(Answer, SlotRelease)>) {
    if let Some(((reply, result), running)) = answer {
        running.release();
        let _ = reply.send(result);
    }
}

/// The next value of a generator: `None` once it is exhausted.
fn next_value<'py>(
    py: Python<'py>,
    slot: &Slot,
    loaded: &Loaded,
    gen: &Bound<'py, PyAny>,
    is_async: bool,
    seq: u64,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    use pyo3::exceptions::{PyStopAsyncIteration, PyStopIteration};
    let next = if is_async {
        gen.call_method0(intern!(py, "__anext__")).and_then(|coro| {
            runner(py, slot, loaded.rt)?.call_method1(intern!(py, "run"), (coro, seq))
        })
    } else {
        gen.call_method0(intern!(py, "__next__"))
    };
    match next {
        Ok(value) => Ok(Some(value)),
        Err(e)
            if e.is_instance_of::<PyStopIteration>(py)
                || e.is_instance_of::<PyStopAsyncIteration>(py) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Hands one streamed value to the reader, waiting (without the GIL) while the reader
/// is behind; false when the reader is gone or `until` passed.
fn send(
    py: Python<'_>,
    tx: &tokio::sync::mpsc::Sender<Result<Json, InvokeError>>,
    item: Result<Json, InvokeError>,
    until: Instant,
) -> bool {
    use tokio::sync::mpsc::error::TrySendError;
    py.detach(|| {
        let mut item = item;
        let mut pause = Duration::from_micros(20);
        loop {
            match tx.try_send(item) {
                Ok(()) => return true,
                Err(TrySendError::Closed(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= until {
                        return false;
                    }
                    item = back;
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(2));
                }
            }
        }
    })
}

/// The receiving end of a stream, as the `Stream` the watchdog reads.
struct Received(tokio::sync::mpsc::Receiver<Result<Json, InvokeError>>);

impl futures_core::Stream for Received {
    type Item = Result<Json, InvokeError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// What [`raise_in`] did.
enum Interrupt {
    /// The coroutine's task was cancelled, or `TimeoutError` raised (`async`: in a
    /// thread that runs an event loop).
    Done { is_async: bool },
    /// The thread is where an exception must not land; try again shortly.
    NotNow,
}

/// [`raise_in`], retried every few ms while the thread is somewhere an exception must
/// not land. Returns whether the job was async; `None` if it ended or `give_up` came.
fn raise_when_safe(slot: &Slot, seq: u64, force_exception: bool, give_up: Instant) -> Option<bool> {
    loop {
        match Python::try_attach(|py| raise_in(py, slot, seq, force_exception)).flatten()? {
            Interrupt::Done { is_async } => return Some(is_async),
            Interrupt::NotNow if Instant::now() >= give_up => return None,
            Interrupt::NotNow => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Interrupts invocation `seq` if `slot` still runs it: cancels its task (a coroutine,
/// first try) or raises `TimeoutError` in its thread. `None` if the job had ended.
/// Runs with the GIL, which is what orders it against the worker's own
/// [`Busy::finish`] and keeps the worker still while its stack is looked at.
fn raise_in(py: Python<'_>, slot: &Slot, seq: u64, force_exception: bool) -> Option<Interrupt> {
    let is_async = {
        let running = lock(&slot.running);
        running.as_ref().filter(|r| r.seq == seq)?.is_async
    };
    if is_async && !force_exception {
        if let Some(runner) = slot.runner.get() {
            mark_interrupted(slot, seq)?;
            // Python code: called without the slot lock (see `Slot::running`).
            if let Err(e) = runner.bind(py).call_method1(intern!(py, "cancel"), (seq,)) {
                tracing::warn!("could not cancel the handler's task: {e}");
            }
            return Some(Interrupt::Done { is_async: true });
        }
    }
    // Nothing below runs Python code, so the GIL is held throughout and the worker
    // stays where it was seen, still in job `seq`.
    if !safe_to_raise(py, slot) {
        return Some(Interrupt::NotNow);
    }
    mark_interrupted(slot, seq)?;
    let ident = slot.ident.load(Ordering::Relaxed);
    // SAFETY: called with the GIL held; `ident` is the worker's thread id and the
    // exception type is a borrowed static.
    unsafe {
        ffi::PyThreadState_SetAsyncExc(ident as _, ffi::PyExc_TimeoutError);
    }
    if is_async {
        // A loop waiting in select() runs no bytecode, so it would not see the exception
        // until its next timer: wake it.
        if let Some(runner) = slot.runner.get() {
            let _ = runner.bind(py).call_method0(intern!(py, "wake"));
        }
    }
    Some(Interrupt::Done { is_async })
}

/// Flags job `seq` as interrupted, so the worker clears an exception it never reached.
fn mark_interrupted(slot: &Slot, seq: u64) -> Option<()> {
    let mut running = lock(&slot.running);
    running.as_mut().filter(|r| r.seq == seq)?.interrupted = true;
    Some(())
}

/// Whether an exception may be raised in the worker now. Not inside the import
/// system: an exception landing between its taking a lock and its `try` leaves the
/// global import lock (or a module's lock) held by a thread that never lets go, and
/// every later import in the process, the next handler load included, hangs. Nor in
/// ember's own Python code while it runs (an event loop half closed). Looked at with
/// the GIL held and without running bytecode, so the stack cannot change meanwhile.
fn safe_to_raise(py: Python<'_>, slot: &Slot) -> bool {
    let tstate = slot.tstate.load(Ordering::Acquire);
    if tstate.is_null() {
        return true;
    }
    // SAFETY: GIL held; `tstate` is the worker's, alive while the worker is in a job
    // (the caller saw it in one), and PyThreadState_GetFrame returns a new reference.
    let top =
        unsafe { Bound::from_owned_ptr_or_opt(py, ffi::PyThreadState_GetFrame(tstate).cast()) };
    let filename = |frame: &Bound<'_, PyAny>| -> Option<String> {
        frame
            .getattr(intern!(py, "f_code"))
            .and_then(|code| code.getattr(intern!(py, "co_filename")))
            .and_then(|name| name.extract())
            .ok()
    };
    let mut frame = top;
    let mut innermost = true;
    while let Some(f) = frame {
        if let Some(name) = filename(&f) {
            if name.contains("importlib") && name.contains("_bootstrap") {
                return false;
            }
            if innermost && name.ends_with("ember/_runtime.py") {
                return false;
            }
        }
        innermost = false;
        frame = f
            .getattr(intern!(py, "f_back"))
            .ok()
            .filter(|back| !back.is_none());
    }
    true
}

fn runner<'py>(py: Python<'py>, slot: &Slot, rt: &Runtime) -> PyResult<Bound<'py, PyAny>> {
    if let Some(r) = slot.runner.get() {
        return Ok(r.bind(py).clone());
    }
    let r = rt.async_runner.bind(py).call0()?;
    let _ = slot.runner.set(r.clone().unbind());
    Ok(r)
}

fn thread_ident(py: Python<'_>) -> PyResult<u64> {
    py.import(intern!(py, "threading"))?
        .getattr(intern!(py, "get_ident"))?
        .call0()?
        .extract()
}

/// The slot's claim on a job: set before the call, cleared after, and cleared on
/// unwinding too, so a panic cannot leave the slot looking busy (and /health unhealthy).
struct Busy<'a> {
    slot: &'a Slot,
}

impl<'a> Busy<'a> {
    fn begin(slot: &'a Slot, seq: u64, inv: &Invocation, is_async: bool) -> Busy<'a> {
        *lock(&slot.running) = Some(Running {
            seq,
            execution_id: inv.execution_id.clone(),
            deadline: inv.deadline,
            is_async,
            interrupted: false,
        });
        Busy { slot }
    }

    fn mark_async(&self) {
        if let Some(r) = lock(&self.slot.running).as_mut() {
            r.is_async = true;
        }
    }

    /// Ends the claim; returns whether the deadline thread interrupted this job, after
    /// dropping any `TimeoutError` it raised that the handler never reached (it would
    /// otherwise fire in the thread's next job).
    fn finish(self, _py: Python<'_>) -> bool {
        let interrupted = lock(&self.slot.running)
            .take()
            .is_some_and(|r| r.interrupted);
        if interrupted {
            let ident = self.slot.ident.load(Ordering::Relaxed);
            // SAFETY: GIL held (the `_py` token); a NULL exception clears a pending one.
            unsafe {
                ffi::PyThreadState_SetAsyncExc(ident as _, std::ptr::null_mut());
            }
        }
        std::mem::forget(self);
        interrupted
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(&self.slot.running).take();
        logs::end_call();
    }
}

/// An invocation whose caller may stop waiting. Dropped while still waiting for its
/// answer (the deadline passed, or the caller's future was dropped), it closes the
/// answer channel first, so a job not yet started is skipped, and has a job already
/// running stopped: at its deadline, or at once when it was cancelled before it.
struct Pending<'a> {
    pool: &'a Arc<Pool>,
    seq: u64,
    execution_id: Arc<str>,
    deadline: Instant,
    answer: Option<oneshot::Receiver<InvokeResult>>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        // Closed before looking at the slots: a worker marks its slot busy before it
        // checks the channel, so either it sees the channel closed or we see it busy.
        drop(answer);
        if let Some(slot) = self.pool.slot_running(self.seq) {
            if slot.in_lane {
                // A thread's call would keep its thread until it stops; a lane call
                // keeps one of the threads out of work instead, first in line.
                self.pool.queue.push_first(Job::Hold(slot, self.seq));
            }
            // Dropped before its deadline, the invocation was cancelled: nobody will
            // read its result, so the handler is stopped now and its thread freed.
            let stop_at = self.deadline.min(Instant::now());
            self.pool
                .interrupt_later(self.seq, std::mem::take(&mut self.execution_id), stop_at);
        }
    }
}
