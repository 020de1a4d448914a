//! Why and when the watchdog stops: a signal (drain, exit 0) or a fatal
//! fault such as the `HTTP` runtime dying (drain, exit non-zero).

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    fatal: Arc<OnceLock<String>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A SIGTERM or SIGINT: drain and exit 0.
    pub fn request(&self) {
        self.token.cancel();
    }

    /// The function can no longer run here; the orchestrator should restart
    /// the container. The first reason wins.
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!(%reason, "fatal: the watchdog will drain and exit non-zero");
        let _ = self.fatal.set(reason);
        self.token.cancel();
    }

    pub fn fatal_reason(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn requested(&self) {
        self.token.cancelled().await
    }
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal that comes
/// while starting is not fatal), and calls `shutdown.request()` on the first.
pub fn on_signal(shutdown: &Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: draining"),
            _ = int.recv() => tracing::info!("SIGINT received: draining"),
        }
        shutdown.request();
    });
}
