use std::future::Future;
use std::pin::Pin;

use crate::{Invocation, InvokeResult};

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
    fn start(&self) -> BoxFuture<'_, InvokeResult> {
        Box::pin(async { Ok(serde_json::Value::Null) })
    }

    /// Runs one invocation. Must end by `inv.deadline` (returning
    /// `ErrorCode::Timeout`) whatever the function does.
    fn invoke(&self, inv: Invocation) -> BoxFuture<'_, InvokeResult>;

    fn health(&self) -> Health {
        Health::Ready
    }

    /// Stops whatever the runner keeps (children, threads); called once at
    /// exit, after in-flight invocations ended or the drain timed out.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
