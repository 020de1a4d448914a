//! Ember's in-process Python runtime: a [`Handler`] that embeds CPython (pyo3), imports
//! `HANDLER_MODULE` from `HANDLER_PATH` and calls `HANDLER_FUNCTION` per invocation
//! (contract sections 2, 3 and 9).
//!
//! - [`threads`]: `slots` dedicated Python threads fed by one queue; tokio only awaits.
//! - [`convert`]: JSON bytes to Python objects and back, with no tree in between.
//! - `errors`: exceptions to contract codes; `logs`: handler output to the watchdog's log.
//! - `embed`: the `ember` package (`python/ember/`), compiled in.
//!
//! ```no_run
//! use runtime_python::{PythonConfig, PythonHandler};
//! use runtime_sdk::{Handler, Invocation};
//! # async fn demo() {
//! let handler = PythonHandler::new(PythonConfig {
//!     module: "handler".into(),
//!     function: "handle".into(),
//!     path: "/app".into(),
//!     slots: 4,
//!     kill_grace: std::time::Duration::from_millis(100),
//!     function_name: "echo".into(),
//!     max_output: 6 << 20,
//! });
//! handler.start().await.expect("loads");
//! let payload = runtime_sdk::Json::parse(r#"{"input": 1}"#).unwrap();
//! let inv = Invocation::new("e1", payload, std::time::Duration::from_secs(5));
//! let output = handler.invoke(inv).await;
//! # }
//! ```

pub mod convert;
mod embed;
mod errors;
mod logs;
mod output;
mod signals;
mod threads;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use runtime_sdk::{BoxFuture, ErrorCode, Handler, Health, Invocation, InvokeError, InvokeResult};

pub use crate::threads::hold_spare_worker;
use crate::threads::Pool;

/// What the watchdog's configuration decides for the `PYTHON` runner.
#[derive(Debug, Clone)]
pub struct PythonConfig {
    /// `HANDLER_MODULE`, dotted (`pkg.sub`) or not.
    pub module: String,
    /// `HANDLER_FUNCTION`.
    pub function: String,
    /// `HANDLER_PATH`: put first on `sys.path` before the import.
    pub path: PathBuf,
    /// Python threads, one per concurrency slot (`MAX_CONCURRENCY`).
    pub slots: usize,
    /// `KILL_GRACE_MS`: how long past its deadline a handler may run before `/health`
    /// reports the runtime unhealthy.
    pub kill_grace: Duration,
    /// `FUNCTION_NAME`, for `context.function_name` when an invocation has none.
    pub function_name: String,
    /// `MAX_OUTPUT_BYTES`: a return value whose JSON is longer fails with
    /// `OUTPUT_TOO_LARGE`.
    pub max_output: usize,
}

enum State {
    NotStarted,
    Loading,
    Ready,
    /// The load error, returned by every invocation and reported by `health()`.
    Failed(InvokeError),
}

/// The `PYTHON` runner.
pub struct PythonHandler {
    pool: Arc<Pool>,
    slots: usize,
    state: Mutex<State>,
    /// `state` is `Ready`, for good: set with it, read without its lock.
    ready: AtomicBool,
}

impl PythonHandler {
    pub fn new(cfg: PythonConfig) -> Self {
        PythonHandler {
            slots: cfg.slots,
            pool: Pool::new(cfg),
            state: Mutex::new(State::NotStarted),
            ready: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the state, and `ready` with it.
    fn set_state(&self, state: State) {
        let mut current = self.state();
        self.ready
            .store(matches!(state, State::Ready), Ordering::Release);
        *current = state;
    }

    /// One invocation, boxed: the handler is checked first, so that the box holds the
    /// pool's future alone (a state around it would be moved into the box too, and the
    /// call moved again on the first poll).
    fn call(&self, inv: Invocation) -> BoxFuture<'static, InvokeResult> {
        if let Err(e) = self.loaded() {
            return Box::pin(std::future::ready(Err(e)));
        }
        Box::pin(self.pool.clone().invoke(inv))
    }

    /// Whether invocations may run: the handler is loaded.
    fn loaded(&self) -> Result<(), InvokeError> {
        // Once ready, always ready (a failed reload keeps the handler serving): no lock
        // per call.
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.state() {
            State::Ready => Ok(()),
            State::Failed(e) => Err(e.clone()),
            State::NotStarted | State::Loading => Err(InvokeError::new(
                ErrorCode::NotReady,
                "the Python handler is not loaded yet",
            )),
        }
    }
}

impl Handler for PythonHandler {
    fn mode(&self) -> &'static str {
        "PYTHON"
    }

    /// Starts the threads and imports the handler on one of them; the awaiting task
    /// never blocks its tokio worker.
    fn start(&self) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(async move {
            {
                let mut state = self.state();
                match &*state {
                    State::Ready => return Ok(()),
                    State::Failed(e) => return Err(e.clone()),
                    State::Loading => {
                        return Err(InvokeError::new(
                            ErrorCode::NotReady,
                            "the Python handler is already loading",
                        ))
                    }
                    State::NotStarted => *state = State::Loading,
                }
            }
            let loaded = self.pool.start().await;
            self.set_state(match &loaded {
                Ok(()) => State::Ready,
                Err(e) => State::Failed(e.clone()),
            });
            loaded
        })
    }

    fn invoke(&self, inv: Invocation) -> BoxFuture<'_, InvokeResult> {
        self.call(inv)
    }

    fn invoke_shared(self: Arc<Self>, inv: Invocation) -> BoxFuture<'static, InvokeResult> {
        self.call(inv)
    }

    /// Imports the module afresh and swaps the handler in; an import error leaves the
    /// previous handler serving. After a failed start, a reload that loads is the start.
    fn reload(&self) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(async move {
            let failed_start = match &*self.state() {
                // `start` is about to import the code as it is now.
                State::NotStarted | State::Loading => return Ok(()),
                State::Ready => false,
                State::Failed(_) => true,
            };
            let reloaded = self.pool.reload().await;
            if failed_start && reloaded.is_ok() {
                self.set_state(State::Ready);
            }
            reloaded
        })
    }

    fn health(&self) -> Health {
        match &*self.state() {
            State::NotStarted | State::Loading => Health::Starting,
            State::Failed(e) => Health::Unhealthy(e.message.clone()),
            State::Ready => match self.pool.stuck() {
                Some(reason) => Health::Unhealthy(reason),
                None => Health::Ready,
            },
        }
    }

    fn live(&self) -> Result<(), String> {
        let stuck = self.pool.stuck_threads();
        let slots = self.slots.max(1);
        if stuck > slots {
            Err(format!(
                "{stuck} Python threads are stuck in handlers past their deadline, more than \
                 MAX_CONCURRENCY={slots}: restart the process"
            ))
        } else {
            Ok(())
        }
    }

    fn wants_request_info(&self) -> bool {
        self.pool.takes_context()
    }

    fn stuck_threads(&self) -> usize {
        self.pool.stuck_threads()
    }

    /// Closes the job queue so the threads exit; waits at most `max(kill_grace, 500 ms)`
    /// for them, so a stuck handler cannot hold up the exit.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.pool.shutdown().await })
    }
}
