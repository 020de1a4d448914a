use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Invocation, InvokeError, InvokeResult};

/// A boxed, sendable future, so `Handler` stays object safe without an
/// async-trait dependency.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What `/health` reports for the function itself (draining is the
/// watchdog's own state and is not part of this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Still loading: importing a module, waiting for an upstream.
    Starting,
    Ready,
    /// Loaded but unusable (load error, a handler stuck past its grace);
    /// the orchestrator should replace the pod.
    Unhealthy(String),
}

/// Runs the function. Every runner implements this: a child process per
/// call, a kept process, an HTTP upstream, the embedded Python runtime.
pub trait Handler: Send + Sync + 'static {
    /// The runner's name in capitals, for the `mode` metric label.
    fn mode(&self) -> &'static str;

    /// Gets the function ready (import, spawn, wait for health). Called once
    /// before the first `invoke`. An error is reported as the result of
    /// every invocation in one-shot mode, and makes warm mode unhealthy.
    fn start(&self) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(async { Ok(()) })
    }

    /// Runs one invocation. The caller drops the future at `inv.deadline`
    /// (the watchdog's pipeline owns the deadline and the `TIMEOUT` error);
    /// dropping it must stop the work, and a runner keeps only the timers
    /// that must act on a process or a thread.
    fn invoke(&self, inv: Invocation) -> BoxFuture<'_, InvokeResult>;

    /// `invoke` on a shared handler, with a future that holds its own handle:
    /// what the watchdog's pipeline calls. The default boxes `invoke`'s future
    /// once more; a runner on the hot path returns one box of its own.
    fn invoke_shared(self: Arc<Self>, inv: Invocation) -> BoxFuture<'static, InvokeResult> {
        Box::pin(async move { self.invoke(inv).await })
    }

    /// Whether invocations should carry the HTTP request's method, path and
    /// headers (`Invocation::request`); copying them costs, so only a runner
    /// that hands them on asks.
    fn wants_request_info(&self) -> bool {
        false
    }

    /// Whether warm mode should run each invocation as a task of its own
    /// instead of on its connection's task. Only a runner whose calls queue
    /// for a few workers that are themselves tasks asks: as a task, a call
    /// that ends hands its slot to the next queued call before its response
    /// is written, which keeps those workers busy.
    fn runs_detached(&self) -> bool {
        false
    }

    fn health(&self) -> Health {
        Health::Ready
    }

    /// `Err` with the reason when the runner can no longer recover by
    /// itself and the process should be restarted (`/live` fails).
    fn live(&self) -> Result<(), String> {
        Ok(())
    }

    /// Worker threads given up on past their deadline and still busy
    /// (the Python runtime's; 0 for other runners).
    fn stuck_threads(&self) -> usize {
        0
    }

    /// Picks up the function's changed code (`RELOAD`, a development
    /// setting): called after `start`, once per burst of file changes, never
    /// twice at once. Invocations in flight finish on the old code; those
    /// that arrive meanwhile wait rather than fail. `Err` says why the new
    /// code could not be loaded; a runner that can keeps the old code
    /// serving then. The default does nothing: a runner that starts the
    /// function afresh per invocation picks up changes by itself.
    fn reload(&self) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(async { Ok(()) })
    }

    /// Stops whatever the runner keeps (children, threads); called once at
    /// exit, after in-flight invocations ended or the drain timed out.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
