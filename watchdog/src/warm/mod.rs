//! Warm mode (contract section 4): the function stays loaded behind
//! `POST /invoke`, `/health`, `/live` and `/metrics`.

mod admission;
mod auth;
mod body;
mod dispatch;
mod drain;
mod meta;
mod respond;
pub mod server;
mod signal;
mod state;
mod trace;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State as Extract;
use axum::routing::{get, on_service, MethodFilter};
use axum::Router;
use hyper::StatusCode;
use runtime_sdk::{ErrorCode, Handler, Health, InvokeError, InvokeResult};
use serde_json::json;
use std::future::Future;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use meta::RequestMeta;
pub use state::State;

use crate::callback::CallbackClient;
use crate::config::{Config, InvokeMethod, WarmConfig};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::validate::Validator;

pub type HttpRequest = hyper::Request<Body>;
pub type HttpResponse = hyper::Response<Body>;

/// A request to `/invoke` with the ids `trace` read from its headers: what
/// the layers under `trace` take. Passed beside the request, not in its
/// extensions, whose map costs three allocations per request.
pub struct Call {
    pub req: HttpRequest,
    /// Shared with `respond`, which reads what `body` learns (Alyx's form).
    pub meta: Arc<RequestMeta>,
}

/// What the layers under `respond` hand back to it.
pub enum Outcome {
    /// Not taken (400, 401, 413, 429, 503): counted as a rejection, never
    /// reported by callback; the control plane may send it elsewhere.
    Refused(InvokeError),
    /// Accepted and run (or stopped): its one result. Its callback, when it
    /// has a target, is sent by `dispatch`.
    Completed {
        result: InvokeResult,
        /// The first invocation after start-up (adds `X-Cold-Start`).
        cold_start: bool,
    },
}

/// The `/invoke` stack, outermost first (STYLE.md, "Warm stack"). The
/// invocation pipeline itself (deadline, measure, runner) is shared with
/// one-shot mode and runs inside `dispatch`, detached from the connection.
fn invoke_service(state: &Arc<State>) -> impl server::App {
    ServiceBuilder::new()
        // Outermost, so even rejections carry the execution id.
        .layer(trace::TraceLayer(state.clone()))
        // The one place outcomes become responses.
        .layer(respond::RespondLayer(state.clone()))
        // Before any body is read.
        .layer(auth::AuthLayer::new(state.config.invoke_token.as_deref()))
        // Before a place or a body is taken.
        .layer(drain::DrainLayer(state.clone()))
        // A place among the running and the waiting before the body is
        // read: a 429 reads no body, and memory is bounded by the places.
        .layer(admission::AdmissionLayer::new(
            state.config.max_concurrency,
            state.config.queue_depth,
            state.metrics.clone(),
        ))
        // Past this step the invocation is accepted.
        .layer(body::BodyLayer(state.clone()))
        .service(dispatch::Dispatch::new(state.clone()))
}

/// What the server runs. `/invoke` with a method of `INVOKE_METHODS` goes
/// straight to its stack; everything else (the other endpoints, 405s, `HEAD`)
/// goes through the router, which routes `/invoke` to the same stack. The
/// router's look-up, its URL parameters and its boxed copy of the stack cost
/// about 3% of a warm request's instructions (bench/PROFILING.md).
#[derive(Clone)]
pub struct App<I> {
    router: Router,
    invoke: I,
    methods: Arc<[hyper::Method]>,
}

/// The app the server runs (see [`App`]); tests may drive [`app`] instead.
pub fn service(state: Arc<State>) -> App<impl server::App> {
    App {
        methods: state
            .config
            .invoke_methods
            .iter()
            .map(|m| m.method())
            .collect(),
        invoke: invoke_service(&state),
        router: app(state),
    }
}

impl<I> tower::Service<HttpRequest> for App<I>
where
    I: tower::Service<HttpRequest, Response = HttpResponse, Error = Infallible>,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future =
        futures_util::future::Either<I::Future, <Router as tower::Service<HttpRequest>>::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        tower::Service::<HttpRequest>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        use futures_util::future::Either;
        if req.uri().path() == "/invoke" && self.methods.contains(req.method()) {
            Either::Left(self.invoke.call(req))
        } else {
            Either::Right(self.router.call(req))
        }
    }
}

/// `INVOKE_METHODS` as a router filter; other methods get 405 with `Allow`.
fn invoke_filter(methods: &[InvokeMethod]) -> MethodFilter {
    methods
        .iter()
        .filter_map(|m| MethodFilter::try_from(m.method()).ok())
        .reduce(MethodFilter::or)
        .unwrap_or(MethodFilter::POST)
}

/// The whole HTTP surface; tests drive it with `oneshot`.
pub fn app(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/invoke",
            on_service(
                invoke_filter(&state.config.invoke_methods),
                invoke_service(&state),
            ),
        )
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
    // A load error stands until a reload (`RELOAD`) fixes it.
    if let Some(e) = state.start_error.get().filter(|_| !state.is_ready()) {
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
    respond::json_response(status, body.to_string())
}

/// Liveness: the server answers, and the runner has not given up for good
/// (more Python threads stuck past their deadline than there are slots).
async fn live(Extract(state): Extract<Arc<State>>) -> HttpResponse {
    match state.handler.live() {
        Ok(()) => respond::json_response(StatusCode::OK, r#"{"status":"ok"}"#),
        Err(reason) => respond::json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unhealthy", "reason": reason}).to_string(),
        ),
    }
}

async fn metrics(Extract(state): Extract<Arc<State>>) -> HttpResponse {
    state.metrics.stuck_threads(state.handler.stuck_threads());
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

/// Serves `app` on `listener` until `shutdown` resolves, then lets the open
/// connections finish. Apart from the lifecycle, so tests can drive the
/// real server on port 0. The connections and their limits: `server`.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: server::ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: server::App,
{
    server::serve(listener, app, limits, shutdown).await;
    Ok(())
}

/// Drain (section 10): refuse new work, let what was accepted finish within
/// `limit`, then stop what still runs and answer it `CANCELLED` (response
/// and callback), and flush the callbacks within their budget.
pub async fn drain(state: &State, limit: Duration) {
    state.draining.store(true, Ordering::Release);
    if tokio::time::timeout(limit, state.idle()).await.is_err() {
        tracing::warn!(
            left = state.accepted(),
            "DRAIN_TIMEOUT_MS={} passed with invocations still running: stopping them (CANCELLED)",
            limit.as_millis()
        );
        state.stop_running.cancel();
        // Each stopped invocation answers at once; this only waits for
        // their tasks to hand over the results.
        if tokio::time::timeout(Duration::from_secs(2), state.idle())
            .await
            .is_err()
        {
            tracing::error!(
                left = state.accepted(),
                "invocations did not stop after DRAIN_TIMEOUT_MS"
            );
        }
    }
    state.callbacks.flush(state.callbacks.budget()).await;
}

/// Runs warm mode until a signal or a fatal fault; returns the exit code.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: &Config,
    warm: &WarmConfig,
    handler: Arc<dyn Handler>,
    validator: Validator,
    metrics: Metrics,
    shutdown: Shutdown,
    process_start: Instant,
    spans: Option<crate::otel::Spans>,
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
    let state = Arc::new(
        State::new(
            warm.clone(),
            config.timeout,
            handler.clone(),
            metrics.clone(),
            callbacks.clone(),
            validator,
            shutdown.clone(),
        )
        .with_spans(spans),
    );
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
        tokio::spawn(serve(
            listener,
            service(state.clone()),
            warm.conn,
            async move { stop.cancelled().await },
        ))
    };

    // Load the function while the server already answers /live and /health.
    {
        let state = state.clone();
        let runner = config.runner.clone();
        let reload = warm.reload;
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
                Err(e) if e.code == ErrorCode::StartupError => {
                    state.shutdown.fail(e.message);
                    return;
                }
                // A load error keeps the server up to say what is wrong.
                Err(e) => {
                    tracing::error!(code = %e.code, error = %e.message, "the function could not be loaded");
                    let _ = state.start_error.set(e);
                }
            }
            if reload {
                // After start, so a reload never races the first load; a
                // reload that fixes a load error makes the watchdog ready.
                let handler = state.handler.clone();
                let shutdown = state.shutdown.clone();
                crate::reload::spawn(&runner, handler, shutdown, move || {
                    if !state.ready.load(Ordering::Acquire) {
                        let init = process_start.elapsed();
                        let _ = state.init_duration.set(init);
                        state.ready.store(true, Ordering::Release);
                        tracing::info!(
                            init_ms = init.as_millis() as u64,
                            "ready: the reloaded function loads"
                        );
                    }
                });
            }
        });
    }

    shutdown.requested().await;

    drain(&state, warm.drain_timeout).await;
    handler.shutdown().await;
    server_stop.cancel();
    // Connections finish writing what they have (the CANCELLED answers
    // included) before the process exits.
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
