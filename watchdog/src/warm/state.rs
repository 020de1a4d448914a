//! What the warm server's layers share.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use runtime_sdk::{Handler, InvokeError};
use tokio::sync::Notify;

use super::signal::Signal;
use crate::callback::CallbackClient;
use crate::config::WarmConfig;
use crate::metrics::Metrics;
use crate::otel::Spans;
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::validate::Validator;
use tokio_util::sync::CancellationToken;

pub struct State {
    pub config: WarmConfig,
    pub timeout: Duration,
    pub handler: Arc<dyn Handler>,
    pub metrics: Metrics,
    pub callbacks: CallbackClient,
    pub validator: Validator,
    /// Catch-panic, deadline, measure, output check, runner.
    pub pipeline: Pipeline,
    pub shutdown: Shutdown,
    /// Span export, when configured (`OTEL_EXPORTER_OTLP_*`).
    pub spans: Option<Spans>,
    /// Cancelled when `DRAIN_TIMEOUT_MS` passes: whatever still runs is
    /// stopped and answered with `CANCELLED`.
    pub stop_running: CancellationToken,
    /// Set once the function is loaded (section 4: per runner).
    pub ready: AtomicBool,
    /// Set on SIGTERM/SIGINT or a fatal fault; never cleared.
    pub draining: AtomicBool,
    /// Why start-up failed, answered to every invocation (`HANDLER_LOAD_ERROR`).
    pub start_error: OnceLock<InvokeError>,
    /// Process start to ready, reported on the first invocation.
    pub init_duration: OnceLock<Duration>,
    /// True until the first invocation is accepted.
    pub cold: AtomicBool,
    /// Requests past the drain check and invocations not yet answered;
    /// draining waits for zero.
    accepted: AtomicUsize,
    idle: Notify,
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: WarmConfig,
        timeout: Duration,
        handler: Arc<dyn Handler>,
        metrics: Metrics,
        callbacks: CallbackClient,
        validator: Validator,
        shutdown: Shutdown,
    ) -> Self {
        State {
            config,
            timeout,
            callbacks,
            pipeline: crate::pipeline::build(handler.clone(), validator.clone(), metrics.clone()),
            handler,
            metrics,
            validator,
            shutdown,
            spans: None,
            stop_running: CancellationToken::new(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            start_error: OnceLock::new(),
            init_duration: OnceLock::new(),
            cold: AtomicBool::new(true),
            accepted: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Exports a span per invocation through `spans`.
    pub fn with_spans(mut self, spans: Option<Spans>) -> Self {
        self.spans = spans;
        self
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Counts an accepted invocation until the guard drops.
    pub fn accept(self: &Arc<Self>) -> AcceptedGuard {
        self.accepted.fetch_add(1, Ordering::AcqRel);
        AcceptedGuard(self.clone())
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Resolves when `DRAIN_TIMEOUT_MS` has passed (`stop_running`); polled again
    /// only once it may have, so an invocation waiting on it costs no lock per poll.
    pub fn run_stopped(&self) -> impl Future<Output = ()> + '_ {
        Signal::new(self.stop_running.cancelled(), || {
            self.stop_running.is_cancelled()
        })
    }

    /// Resolves when no accepted invocation is left.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.accepted() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct AcceptedGuard(Arc<State>);

impl Drop for AcceptedGuard {
    fn drop(&mut self) {
        if self.0.accepted.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
