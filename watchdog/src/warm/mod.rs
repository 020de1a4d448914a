//! Warm mode (contract section 4): the function stays loaded behind
//! `POST /invoke`, `/health`, `/live` and `/metrics`.

mod auth;
mod body;
mod concurrency;
mod deadline;
mod drain;
mod measure;
mod meta;
mod respond;
mod run;
mod state;
mod trace;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State as Extract;
use axum::routing::{get, post_service};
use axum::Router;
use hyper::StatusCode;
use runtime_sdk::{ErrorCode, Handler, Health, InvokeError, InvokeResult};
use serde_json::json;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

pub use state::State;

use crate::callback::CallbackClient;
use crate::config::{Config, WarmConfig};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::validate::Validator;

pub type HttpRequest = hyper::Request<Body>;
pub type HttpResponse = hyper::Response<Body>;

/// What the layers above the body step hand back to `respond`.
pub struct Reply {
    pub result: InvokeResult,
    /// The first invocation after start-up (adds `X-Cold-Start`).
    pub cold_start: bool,
    /// Whether the invocation was taken (past auth, drain and body): only
    /// those are reported by callback, and the others count as rejected.
    pub accepted: bool,
}

impl Reply {
    pub fn rejected(e: InvokeError) -> Self {
        Reply {
            result: Err(e),
            cold_start: false,
            accepted: false,
        }
    }
}

/// The `/invoke` stack, outermost first (STYLE.md, "Warm stack").
fn invoke_service(
    state: &Arc<State>,
) -> impl tower::Service<
    HttpRequest,
    Response = HttpResponse,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        // Outermost, so even rejections carry the execution id.
        .layer(trace::TraceLayer(state.clone()))
        // The one place results become responses and callbacks.
        .layer(respond::RespondLayer(state.clone()))
        // Before any body is read.
        .layer(auth::AuthLayer::new(state.config.invoke_token.as_deref()))
        // Before a body or a slot is taken.
        .layer(drain::DrainLayer(state.clone()))
        .layer(body::BodyLayer(state.clone()))
        // Outside the queue: queued time counts against the deadline.
        .layer(deadline::DeadlineLayer(state.clone()))
        .layer(concurrency::ConcurrencyLayer::new(
            state.config.max_concurrency,
            state.config.queue_depth,
            state.metrics.clone(),
        ))
        // Innermost: times the run, not the wait.
        .layer(measure::MeasureLayer(state.metrics.clone()))
        .service(run::Run {
            handler: state.handler.clone(),
            validator: state.validator.clone(),
        })
}

/// The whole HTTP surface; tests drive it with `oneshot`.
pub fn app(state: Arc<State>) -> Router {
    Router::new()
        .route("/invoke", post_service(invoke_service(&state)))
        .route("/health", get(health))
        .route("/_/health", get(health))
        .route("/_/ready", get(health))
        .route("/live", get(live))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

fn health_body(state: &State) -> (StatusCode, serde_json::Value) {
    let unavailable = |status: &str, reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": status, "reason": reason}),
        )
    };
    if state.is_draining() {
        let reason = state
            .shutdown
            .fatal_reason()
            .unwrap_or("shutting down: finishing accepted invocations");
        return unavailable("draining", reason);
    }
    if let Some(e) = state.start_error.get() {
        return unavailable("unhealthy", &format!("{}: {}", e.code, e.message));
    }
    match state.handler.health() {
        Health::Unhealthy(reason) => unavailable("unhealthy", &reason),
        _ if !state.is_ready() => unavailable("starting", "the function is loading"),
        Health::Starting => unavailable("starting", "the function is loading"),
        Health::Ready => (StatusCode::OK, json!({"status": "ok"})),
    }
}

async fn health(Extract(state): Extract<Arc<State>>) -> HttpResponse {
    let (status, body) = health_body(&state);
    respond::json_response(status, body.to_string().into_bytes())
}

async fn live() -> HttpResponse {
    respond::json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

async fn metrics(Extract(state): Extract<Arc<State>>) -> HttpResponse {
    let mut resp = HttpResponse::new(Body::from(state.metrics.render()));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    let mut resp = respond::error_response(&InvokeError::new(
        ErrorCode::InvalidRequest,
        format!("no such endpoint: {}; try POST /invoke", req.uri().path()),
    ));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

/// Runs warm mode until a signal or a fatal fault; returns the exit code.
pub async fn run(
    config: &Config,
    warm: &WarmConfig,
    handler: Arc<dyn Handler>,
    validator: Validator,
    metrics: Metrics,
    shutdown: Shutdown,
    process_start: Instant,
) -> i32 {
    let listener = match TcpListener::bind(warm.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                "cannot listen on {} (WARM_PORT/PORT/BIND_ADDRESS): {e}",
                warm.listen
            );
            return 1;
        }
    };
    let callbacks = CallbackClient::new(config.callback.clone(), metrics.clone());
    let state = Arc::new(State::new(
        warm.clone(),
        config.timeout,
        handler.clone(),
        metrics.clone(),
        callbacks.clone(),
        validator,
        shutdown.clone(),
    ));
    tracing::info!(
        listen = %warm.listen,
        mode = handler.mode(),
        max_concurrency = warm.max_concurrency,
        queue_depth = warm.queue_depth,
        "listening"
    );

    let server_stop = tokio_util::sync::CancellationToken::new();
    let server = {
        let stop = server_stop.clone();
        let app = app(state.clone());
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };

    // Load the function while the server already answers /live and /health.
    {
        let state = state.clone();
        tokio::spawn(async move {
            match state.handler.start().await {
                Ok(_) => {
                    let init = process_start.elapsed();
                    let _ = state.init_duration.set(init);
                    state.metrics.init_duration(init);
                    state.ready.store(true, Ordering::Release);
                    tracing::info!(init_ms = init.as_millis() as u64, "ready");
                }
                // The runtime never came up: restart the container.
                Err(e) if e.code == ErrorCode::StartupError => state.shutdown.fail(e.message),
                // A load error keeps the server up to say what is wrong.
                Err(e) => {
                    tracing::error!(code = %e.code, error = %e.message, "the function could not be loaded");
                    let _ = state.start_error.set(e);
                }
            }
        });
    }

    shutdown.requested().await;

    // Drain (section 10): refuse new work, finish what was accepted.
    state.draining.store(true, Ordering::Release);
    let drain_started = Instant::now();
    if tokio::time::timeout(warm.drain_timeout, state.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.accepted(),
            "DRAIN_TIMEOUT_MS={} passed with invocations still running",
            warm.drain_timeout.as_millis()
        );
    }
    let left = warm.drain_timeout.saturating_sub(drain_started.elapsed());
    callbacks
        .flush(left.max(config.callback.timeout * config.callback.attempts))
        .await;
    handler.shutdown().await;
    server_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    match shutdown.fatal_reason() {
        Some(reason) => {
            tracing::error!(%reason, "exiting non-zero");
            1
        }
        None => {
            tracing::info!("drained, exiting");
            0
        }
    }
}
