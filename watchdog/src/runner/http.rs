//! `HTTP` (contract section 2): a long-running runtime started once, whose
//! health decides readiness; each invocation is a POST to it over a pooled
//! keep-alive connection.
//!
//! `RELOAD` restarts the runtime (`Handler::reload`): the invocations in
//! flight finish, new ones wait, the runtime is stopped, started again and
//! waited for on `HEALTH_URL`, then the waiting invocations go to it.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use runtime_sdk::names::header;
use runtime_sdk::{
    names, BoxFuture, ErrorCode, Handler, Health, Invocation, InvokeError, InvokeResult, Json,
    Output,
};
use tokio::sync::{watch, RwLock};

use super::process::{self, ProcessGroup, Tail};
use crate::config::HttpConfig;
use crate::shutdown::Shutdown;

/// How often `HEALTH_URL` is polled while starting (section 2).
const POLL_EVERY: Duration = Duration::from_millis(50);

pub struct HttpRunner {
    cfg: HttpConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    runtime_uri: Uri,
    shutdown: Shutdown,
    child: Mutex<Option<Runtime>>,
    health: Arc<Mutex<Health>>,
    /// With `RELOAD` only (it costs every invocation a lock): invocations
    /// hold it shared, a restart holds it alone, so a restart waits for the
    /// invocations in flight and the ones that arrive meanwhile wait for it.
    restart: Option<RwLock<()>>,
}

/// The runtime process the watchdog started.
struct Runtime {
    group: ProcessGroup,
    /// Set when the watchdog stops it for a restart: its exit is then no
    /// fault.
    retired: Arc<AtomicBool>,
}

impl HttpRunner {
    pub fn new(cfg: HttpConfig, shutdown: Shutdown) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let runtime_uri = cfg.runtime_url.as_str().parse().expect("validated URL");
        HttpRunner {
            cfg,
            client,
            runtime_uri,
            shutdown,
            child: Mutex::new(None),
            health: Arc::new(Mutex::new(Health::Starting)),
            restart: None,
        }
    }

    /// Lets `reload` restart the runtime (`RELOAD`).
    pub fn reloadable(mut self) -> Self {
        self.restart = Some(RwLock::new(()));
        self
    }

    async fn healthy(&self, uri: &Uri) -> bool {
        let req = Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        match tokio::time::timeout(Duration::from_secs(1), self.client.request(req)).await {
            Ok(Ok(resp)) => {
                let ok = resp.status().is_success();
                let _ = resp.into_body().collect().await;
                ok
            }
            _ => false,
        }
    }

    async fn start_runtime(&self) -> Result<(), InvokeError> {
        let started = Instant::now();
        let mut exited: Option<watch::Receiver<Option<std::process::ExitStatus>>> = None;
        let tail = Arc::new(Mutex::new(Tail::default()));
        let retired = Arc::new(AtomicBool::new(false));
        if let Some(pcfg) = &self.cfg.process {
            let mut cmd = process::command(pcfg, None);
            let port = self.cfg.runtime_url.port_or_known_default().unwrap_or(80);
            cmd.env(names::PORT, port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let (mut child, group) = process::spawn(&mut cmd, &pcfg.argv[0])
                .map_err(|e| InvokeError::new(ErrorCode::StartupError, e.message))?;
            *self.child.lock().unwrap() = Some(Runtime {
                group,
                retired: retired.clone(),
            });
            process::forward_lines(child.stdout.take().expect("piped"), "stdout", None);
            process::forward_lines(
                child.stderr.take().expect("piped"),
                "stderr",
                Some(tail.clone()),
            );
            let (tx, rx) = watch::channel(None);
            tokio::spawn(async move {
                let status = child.wait().await.ok();
                crate::reaper::untrack(group.pgid);
                let _ = tx.send(status);
            });
            exited = Some(rx);
        }

        let health_uri: Uri = self.cfg.health_url.as_str().parse().expect("validated URL");
        let deadline = started + self.cfg.ready_timeout;
        loop {
            if self.healthy(&health_uri).await {
                break;
            }
            if let Some(rx) = &exited {
                if let Some(status) = *rx.borrow() {
                    // Exit 0 before ready: a launcher (`sleep 0`); keep polling.
                    if !status.success() {
                        let e = process::exit_error(status, &tail.lock().unwrap().text());
                        return Err(self.startup_failed(format!(
                            "the runtime stopped before {} answered: {}",
                            self.cfg.health_url, e.message
                        )));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(self.startup_failed(format!(
                    "the runtime did not answer 2xx on HEALTH_URL {} within READY_TIMEOUT_MS={}",
                    self.cfg.health_url,
                    self.cfg.ready_timeout.as_millis()
                )));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        *self.health.lock().unwrap() = Health::Ready;

        // A runtime still running at ready time that exits later is fatal:
        // report not ready and let the orchestrator restart the container.
        if let Some(mut rx) = exited {
            if rx.borrow().is_none() {
                let health = self.health.clone();
                let shutdown = self.shutdown.clone();
                let tail = tail.clone();
                tokio::spawn(async move {
                    let _ = rx.changed().await;
                    if retired.load(Ordering::Acquire)
                        || (shutdown.is_requested() && shutdown.fatal_reason().is_none())
                    {
                        return; // we stopped it ourselves
                    }
                    let status = *rx.borrow();
                    let how = match status {
                        Some(s) => process::exit_error(s, &tail.lock().unwrap().text()).message,
                        None => "the runtime ended".into(),
                    };
                    let reason = format!("the HTTP runtime exited: {how}");
                    *health.lock().unwrap() = Health::Unhealthy(reason.clone());
                    shutdown.fail(reason);
                });
            }
        }
        Ok(())
    }

    fn startup_failed(&self, message: String) -> InvokeError {
        *self.health.lock().unwrap() = Health::Unhealthy(message.clone());
        InvokeError::new(ErrorCode::StartupError, message)
    }

    /// Stops the runtime and starts it again, once the invocations in flight
    /// are answered; those that arrive meanwhile wait (their deadline still
    /// counts). A runtime that does not come back leaves `/health` unhealthy
    /// until a later reload succeeds.
    async fn restart_runtime(&self) -> Result<(), InvokeError> {
        let (Some(restart), Some(pcfg)) = (&self.restart, &self.cfg.process) else {
            return Ok(());
        };
        let _alone = restart.write().await;
        let old = self.child.lock().unwrap().take();
        if let Some(old) = old {
            old.retired.store(true, Ordering::Release);
            old.group.stop(pcfg.kill_grace).await;
        }
        self.start_runtime().await
    }

    /// One POST to the runtime; the pipeline's deadline drops this future,
    /// which drops the request.
    async fn call(&self, inv: Invocation) -> InvokeResult {
        let _shared = match &self.restart {
            Some(restart) => Some(restart.read().await),
            None => None,
        };
        self.post(inv).await
    }

    async fn post(&self, inv: Invocation) -> InvokeResult {
        let body = inv.payload.bytes();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.runtime_uri.clone())
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static(if inv.payload.is_binary() {
                    process::OCTET_STREAM
                } else {
                    "application/json"
                }),
            );
        let forwarded = [
            (header::EXECUTION_ID, Some(&inv.execution_id)),
            (header::TRACE_ID, inv.trace_id.as_ref()),
            // The watchdog's span as parent when it records one.
            (header::TRACEPARENT, inv.traceparent.as_ref()),
            (header::TRACESTATE, inv.tracestate.as_ref()),
            (header::IDEMPOTENCY_KEY, inv.idempotency_key.as_ref()),
        ];
        for (name, value) in forwarded {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                req = req.header(name, v);
            }
        }
        if let Some(a) = inv.attempt {
            req = req.header(header::DISPATCH_ATTEMPT, a);
        }
        for (name, value) in &inv.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = req.body(Full::new(body)).map_err(|e| {
            InvokeError::new(
                ErrorCode::FunctionError,
                format!("bad request to runtime: {e}"),
            )
        })?;

        let resp = self.client.request(req).await.map_err(|e| {
            InvokeError::new(
                ErrorCode::FunctionError,
                format!(
                    "the runtime at {} could not be reached: {e}",
                    self.cfg.runtime_url
                ),
            )
        })?;
        let status = resp.status();
        let limit = self.cfg.max_output;
        // Read as it comes, stopped at MAX_OUTPUT_BYTES (section 10).
        let bytes = match Limited::new(resp.into_body(), limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(InvokeError::output_too_large("the runtime's answer", limit))
            }
            Err(e) => {
                return Err(InvokeError::new(
                    ErrorCode::FunctionError,
                    format!("the runtime's answer was cut off: {e}"),
                ))
            }
        };
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(InvokeError::new(
                ErrorCode::FunctionError,
                format!(
                    "the runtime answered HTTP {}: {}",
                    status.as_u16(),
                    process::preview(text.trim(), 500)
                ),
            ));
        }
        Ok(Output::json(match Json::parse(bytes.clone()) {
            Ok(json) => json,
            Err(_) => Json::string(&String::from_utf8_lossy(&bytes)),
        }))
    }
}

impl Handler for HttpRunner {
    fn mode(&self) -> &'static str {
        "HTTP"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(self.start_runtime())
    }

    fn invoke(&self, inv: Invocation) -> BoxFuture<'_, InvokeResult> {
        Box::pin(self.call(inv))
    }

    fn reload(&self) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(self.restart_runtime())
    }

    fn health(&self) -> Health {
        self.health.lock().unwrap().clone()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        let group = self.child.lock().unwrap().take().map(|r| r.group);
        let grace = self
            .cfg
            .process
            .as_ref()
            .map(|p| p.kill_grace)
            .unwrap_or_default();
        Box::pin(async move {
            if let Some(g) = group {
                g.stop(grace).await;
            }
        })
    }
}
