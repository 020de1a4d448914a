//! `HTTP` (contract section 2): a long-running runtime started once, whose
//! health decides readiness; each invocation is a POST to it over a pooled
//! keep-alive connection.
//!
//! `RELOAD` restarts the runtime (`Handler::reload`): the invocations in
//! flight finish, new ones wait, the runtime is stopped, started again and
//! waited for on `HEALTH_URL`, then the waiting invocations go to it.

use std::process::{ExitStatus, Stdio};
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
use tokio_util::sync::CancellationToken;

use super::process::{self, ProcessGroup, SharedTail, Tail};
use super::relay;
use crate::config::HttpConfig;
use crate::shutdown::Shutdown;

/// How often `HEALTH_URL` is polled while starting (section 2).
const POLL_EVERY: Duration = Duration::from_millis(50);

/// How often it is polled in warm mode once no child is left to watch
/// (section 2).
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How long one health request may take before it counts as no answer.
const HEALTH_REQUEST_LIMIT: Duration = Duration::from_secs(1);

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

/// The runtime the watchdog started (or, without `WATCHDOG_CMD`, waited for).
struct Runtime {
    /// `None` without `WATCHDOG_CMD`.
    group: Option<ProcessGroup>,
    /// Cancelled when the watchdog stops it (restart, shutdown): its
    /// supervision ends, and its exit is then no fault.
    retired: CancellationToken,
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

    async fn start_runtime(&self) -> Result<(), InvokeError> {
        let started = Instant::now();
        let tail = Arc::new(Mutex::new(Tail::default()));
        let retired = CancellationToken::new();
        let (group, child) = match &self.cfg.process {
            Some(pcfg) => {
                let (group, rx) = self.spawn_child(pcfg, &tail)?;
                (Some(group), Some(rx))
            }
            None => (None, None),
        };
        *self.child.lock().unwrap() = Some(Runtime {
            group,
            retired: retired.clone(),
        });

        let probe = HealthProbe::new(self.client.clone(), &self.cfg.health_url);
        let deadline = started + self.cfg.ready_timeout;
        loop {
            if probe.answers().await {
                break;
            }
            // Exit 0 is a launcher's (`sleep 0`): polling goes on (section 2).
            if let Some(ChildState::Failed(status)) = child.as_ref().map(|rx| *rx.borrow()) {
                let stopped = format!(
                    "the runtime stopped before {} answered",
                    self.cfg.health_url
                );
                // The result (one-shot) carries the stderr tail; /health, which
                // anyone may read, only how the runtime ended.
                *self.health.lock().unwrap() = Health::Unhealthy(format!(
                    "{stopped}: it {} (its stderr is in the log)",
                    how_it_ended(status)
                ));
                return Err(InvokeError::new(
                    ErrorCode::StartupError,
                    format!("{stopped}: {}", exit_message(status, &tail)),
                ));
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

        tokio::spawn(
            Supervisor {
                probe,
                health_url: self.cfg.health_url.to_string(),
                ready_timeout: self.cfg.ready_timeout,
                watch_health: self.cfg.watch_health,
                health: self.health.clone(),
                shutdown: self.shutdown.clone(),
                retired,
                tail,
            }
            .run(child),
        );
        Ok(())
    }

    /// Starts `WATCHDOG_CMD` with `PORT` set to the runtime's port; the
    /// receiver tells what became of it.
    fn spawn_child(
        &self,
        pcfg: &crate::config::ProcessConfig,
        tail: &SharedTail,
    ) -> Result<(ProcessGroup, watch::Receiver<ChildState>), InvokeError> {
        let mut cmd = process::command(pcfg, None);
        let port = self.cfg.runtime_url.port_or_known_default().unwrap_or(80);
        cmd.env(names::PORT, port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, group) = process::spawn(&mut cmd, &pcfg.argv[0])
            .map_err(|e| InvokeError::new(ErrorCode::StartupError, e.message))?;
        process::forward_lines(child.stdout.take().expect("piped"), "stdout", None);
        process::forward_lines(
            child.stderr.take().expect("piped"),
            "stderr",
            Some(tail.clone()),
        );
        let (tx, rx) = watch::channel(ChildState::Running);
        tokio::spawn(async move {
            let state = ChildState::from_wait(child.wait().await);
            let _ = tx.send(state);
        });
        Ok((group, rx))
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
            old.retired.cancel();
            if let Some(group) = old.group {
                group.stop(pcfg.kill_grace).await;
            }
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
            (header::EXECUTION_ID, Some(&*inv.execution_id)),
            (header::TRACE_ID, inv.trace_id.as_deref()),
            // The watchdog's span as parent when it records one.
            (header::TRACEPARENT, inv.traceparent.as_deref()),
            (header::TRACESTATE, inv.tracestate.as_deref()),
            (header::IDEMPOTENCY_KEY, inv.idempotency_key.as_deref()),
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
        let content_type = resp.headers().get(CONTENT_TYPE).cloned();
        let framing = content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(relay::Framing::of);
        if let (true, Some(framing)) = (status.is_success(), framing) {
            // Relayed as it arrives, never held whole.
            let limits = relay::Limits {
                max_output: self.cfg.max_output,
                deadline: inv.deadline,
                budget: inv.budget(),
                execution_id: inv.execution_id,
            };
            let mut out = Output::stream(relay::relay(resp.into_body(), framing, limits));
            out.status = passed_on(status);
            return Ok(out);
        }
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
        let mut out = output_of_answer(content_type.as_ref(), bytes)?;
        out.status = passed_on(status);
        Ok(out)
    }
}

/// A 2xx status other than 200, which the client gets too (section 2).
fn passed_on(status: hyper::StatusCode) -> Option<u16> {
    (status.is_success() && status != hyper::StatusCode::OK).then_some(status.as_u16())
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
        let runtime = self.child.lock().unwrap().take();
        let group = runtime.and_then(|r| {
            r.retired.cancel();
            r.group
        });
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

/// What became of the runtime's child process (section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildState {
    Running,
    /// Exited 0: a launcher (`sleep 0` in front of a runtime started by
    /// something else). Never a failure by itself: the runtime's health
    /// decides from then on.
    Launched,
    /// Exited non-zero or by a signal (`None`: it could not be waited for).
    Failed(Option<ExitStatus>),
}

impl ChildState {
    fn from_wait(waited: std::io::Result<ExitStatus>) -> Self {
        match waited {
            Ok(status) if status.success() => ChildState::Launched,
            Ok(status) => ChildState::Failed(Some(status)),
            Err(_) => ChildState::Failed(None),
        }
    }
}

/// How the runtime ended, without its output: for `/health`, which anyone
/// may read (its stderr is in the log).
fn how_it_ended(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => process::how_it_ended(s),
        None => "ended (its status could not be read)".into(),
    }
}

fn exit_message(status: Option<ExitStatus>, tail: &SharedTail) -> String {
    match status {
        Some(s) => process::exit_error(s, &tail.lock().unwrap().text()).message,
        None => "the runtime's process ended and its status could not be read".into(),
    }
}

/// `GET HEALTH_URL`: does the runtime answer 2xx?
#[derive(Clone)]
struct HealthProbe {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
}

impl HealthProbe {
    fn new(client: Client<HttpConnector, Full<Bytes>>, url: &url::Url) -> Self {
        let uri = url.as_str().parse().expect("validated URL");
        HealthProbe { client, uri }
    }

    async fn answers(&self) -> bool {
        let req = Request::get(self.uri.clone())
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        match tokio::time::timeout(HEALTH_REQUEST_LIMIT, self.client.request(req)).await {
            Ok(Ok(resp)) => {
                let ok = resp.status().is_success();
                let _ = resp.into_body().collect().await;
                ok
            }
            _ => false,
        }
    }
}

/// Once ready: watches the child while it runs, then (warm mode) the
/// runtime's health, and turns a dead runtime into "not ready, exit
/// non-zero" so the orchestrator restarts the container (section 2).
struct Supervisor {
    probe: HealthProbe,
    health_url: String,
    ready_timeout: Duration,
    watch_health: bool,
    health: Arc<Mutex<Health>>,
    shutdown: Shutdown,
    retired: CancellationToken,
    tail: SharedTail,
}

impl Supervisor {
    async fn run(self, child: Option<watch::Receiver<ChildState>>) {
        let watched_since = match child {
            Some(_) => "its command exited 0 (a launcher)",
            None => "it was started by something else (no WATCHDOG_CMD)",
        };
        if let Some(rx) = child {
            let state = tokio::select! {
                s = until_exited(rx) => s,
                _ = self.ending() => return,
            };
            match state {
                ChildState::Launched => tracing::info!(
                    "the runtime's command exited 0: taken for a launcher, the runtime's health decides from now on"
                ),
                ChildState::Failed(status) => {
                    // The stderr tail goes to the log; the reason, shown by
                    // /health to anyone, only says how the runtime ended.
                    tracing::error!(
                        "the HTTP runtime exited: {}",
                        exit_message(status, &self.tail)
                    );
                    return self.dead(format!(
                        "the HTTP runtime {} (its stderr is in the log)",
                        how_it_ended(status)
                    ));
                }
                ChildState::Running => unreachable!("until_exited waits for an exit"),
            }
        }
        if self.watch_health {
            tokio::select! {
                reason = self.until_silent(watched_since) => self.dead(reason),
                _ = self.ending() => {}
            }
        }
    }

    /// Polls `HEALTH_URL` every second until it has not answered 2xx for
    /// `READY_TIMEOUT_MS`; returns why the runtime is taken for dead.
    async fn until_silent(&self, watched_since: &str) -> String {
        let mut watch = HealthWatch::new(Instant::now(), self.ready_timeout);
        let mut next = Instant::now() + WATCH_EVERY;
        loop {
            tokio::time::sleep_until(next.into()).await;
            // A runtime that takes connections but never answers must not
            // get a second more than its limit.
            let answered = tokio::select! {
                ok = self.probe.answers() => ok,
                _ = tokio::time::sleep_until(watch.dead_at().into()) => false,
            };
            match watch.observe(answered, Instant::now()) {
                Verdict::PollAt(at) => next = at,
                Verdict::Dead { silent_for } => {
                    return format!(
                        "the HTTP runtime has not answered 2xx on HEALTH_URL {} for {} ms (READY_TIMEOUT_MS={}); {watched_since}, so its health is all that tells it is alive",
                        self.health_url,
                        silent_for.as_millis(),
                        self.ready_timeout.as_millis()
                    );
                }
            }
        }
    }

    /// The watchdog is draining, or has stopped this runtime (restart,
    /// shutdown): nothing to watch.
    async fn ending(&self) {
        tokio::select! {
            _ = self.shutdown.requested() => {}
            _ = self.retired.cancelled() => {}
        }
    }

    fn dead(&self, reason: String) {
        if self.retired.is_cancelled()
            || (self.shutdown.is_requested() && self.shutdown.fatal_reason().is_none())
        {
            return; // we stopped it ourselves
        }
        *self.health.lock().unwrap() = Health::Unhealthy(reason.clone());
        self.shutdown.fail(reason);
    }
}

/// Waits until the child is no longer running.
async fn until_exited(mut rx: watch::Receiver<ChildState>) -> ChildState {
    loop {
        let state = *rx.borrow_and_update();
        if state != ChildState::Running {
            return state;
        }
        if rx.changed().await.is_err() {
            return ChildState::Failed(None);
        }
    }
}

/// The rule for a runtime with no child left to watch (section 2): dead once
/// `HEALTH_URL` has not answered 2xx for `READY_TIMEOUT_MS`, polled every
/// second, and at that limit exactly.
#[derive(Debug)]
struct HealthWatch {
    last_answer: Instant,
    limit: Duration,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    PollAt(Instant),
    Dead { silent_for: Duration },
}

impl HealthWatch {
    /// Watching starts as if the runtime had just answered: it was healthy
    /// at ready time, or the launcher has just exited.
    fn new(now: Instant, limit: Duration) -> Self {
        HealthWatch {
            last_answer: now,
            limit,
        }
    }

    fn dead_at(&self) -> Instant {
        self.last_answer + self.limit
    }

    fn observe(&mut self, answered: bool, now: Instant) -> Verdict {
        if answered {
            self.last_answer = now;
            return Verdict::PollAt(now + WATCH_EVERY);
        }
        if now >= self.dead_at() {
            return Verdict::Dead {
                silent_for: now - self.last_answer,
            };
        }
        Verdict::PollAt((now + WATCH_EVERY).min(self.dead_at()))
    }
}

/// A 2xx answer's body as the function's output (section 2): a JSON body
/// is the output; a body that is not JSON is one only when the runtime
/// labelled it `text/*`: the client then gets it as it is, with its
/// `Content-Type`, and the output (a callback's, a one-shot result) is that
/// text as a JSON string.
fn output_of_answer(content_type: Option<&HeaderValue>, body: Bytes) -> InvokeResult {
    let body = match Json::parse(body.clone()) {
        Ok(json) => return Ok(Output::json(json)),
        Err(_) => body,
    };
    let label = content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let invalid = |what: String| InvokeError::new(ErrorCode::FunctionError, what);
    match label.as_deref() {
        Some(l) if is_text(l) => match std::str::from_utf8(&body) {
            Ok(_) => Ok(Output::raw(body, l)),
            Err(e) => Err(invalid(format!(
                "Invalid JSON output: the runtime answered Content-Type {l} with a body that is not UTF-8 (at byte {})",
                e.valid_up_to()
            ))),
        },
        _ => {
            let said = match &label {
                Some(l) => format!("Content-Type {l}"),
                None => "no Content-Type".to_owned(),
            };
            let text = String::from_utf8_lossy(&body);
            let shown = if text.trim().is_empty() {
                "an empty body".to_owned()
            } else {
                format!("{:?}", process::preview(text.trim(), 200))
            };
            Err(invalid(format!(
                "Invalid JSON output: the runtime answered 2xx with {said} and {shown}; answer JSON, or label text with Content-Type text/*"
            )))
        }
    }
}

/// Whether a `Content-Type` value names a `text/*` media type.
fn is_text(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    media.len() > 5 && media[..5].eq_ignore_ascii_case("text/")
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn answer(content_type: Option<&'static str>, body: &'static str) -> InvokeResult {
        output_of_answer(
            content_type.map(HeaderValue::from_static).as_ref(),
            Bytes::from_static(body.as_bytes()),
        )
    }

    fn output(r: InvokeResult) -> serde_json::Value {
        r.expect("should succeed").to_value()
    }

    fn invalid_json(r: InvokeResult) -> String {
        let e = r.expect_err("should fail");
        assert_eq!(e.code, ErrorCode::FunctionError);
        assert!(e.message.contains("Invalid JSON output"), "{}", e.message);
        e.message
    }

    #[test]
    fn json_body_is_the_output_whatever_its_label() {
        let v = serde_json::json!({"a": [1, 2]});
        assert_eq!(
            output(answer(Some("application/json"), r#"{"a": [1, 2]}"#)),
            v
        );
        assert_eq!(output(answer(Some("text/plain"), r#"{"a": [1, 2]}"#)), v);
        assert_eq!(output(answer(None, " 42\n")), serde_json::json!(42));
    }

    #[test]
    fn text_body_labelled_text_is_a_json_string_to_the_byte() {
        assert_eq!(output(answer(Some("text/plain"), "hello")), "hello");
        assert_eq!(
            output(answer(Some("Text/HTML ; charset=utf-8"), "<b>hi</b>\n")),
            "<b>hi</b>\n"
        );
        assert_eq!(output(answer(Some("text/plain"), "")), "");
    }

    #[test]
    fn body_not_json_without_a_text_label_is_invalid_json_output() {
        let m = invalid_json(answer(Some("application/json"), "not json {"));
        assert!(
            m.contains("application/json") && m.contains("not json {"),
            "{m}"
        );
        let m = invalid_json(answer(None, "hello"));
        assert!(m.contains("no Content-Type"), "{m}");
        assert!(invalid_json(answer(None, "")).contains("an empty body"));
        invalid_json(answer(Some("application/octet-stream"), "hello"));
        invalid_json(answer(Some("texts/plain"), "hello"));
        invalid_json(answer(Some("text/"), "hello"));
    }

    #[test]
    fn text_that_is_not_utf8_is_invalid() {
        let ct = HeaderValue::from_static("text/plain");
        let m = invalid_json(output_of_answer(Some(&ct), Bytes::from_static(b"ab\xff")));
        assert!(m.contains("not UTF-8 (at byte 2)"), "{m}");
    }

    #[test]
    fn exit_0_is_a_launcher_anything_else_a_failure() {
        let ok = ExitStatus::from_raw(0);
        let code3 = ExitStatus::from_raw(3 << 8);
        let killed = ExitStatus::from_raw(9);
        assert_eq!(ChildState::from_wait(Ok(ok)), ChildState::Launched);
        assert_eq!(
            ChildState::from_wait(Ok(code3)),
            ChildState::Failed(Some(code3))
        );
        assert_eq!(
            ChildState::from_wait(Ok(killed)),
            ChildState::Failed(Some(killed))
        );
        assert_eq!(
            ChildState::from_wait(Err(std::io::Error::other("gone"))),
            ChildState::Failed(None)
        );
    }

    #[tokio::test]
    async fn until_exited_sees_an_exit_that_came_before_it_looked() {
        let (tx, rx) = watch::channel(ChildState::Running);
        tx.send(ChildState::Launched).unwrap();
        assert_eq!(until_exited(rx).await, ChildState::Launched);
        let (tx, rx) = watch::channel(ChildState::Running);
        drop(tx);
        assert_eq!(until_exited(rx).await, ChildState::Failed(None));
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn health_watch_polls_every_second_while_answered() {
        let t0 = Instant::now();
        let mut w = HealthWatch::new(t0, 3 * SEC);
        assert_eq!(w.observe(true, t0 + SEC), Verdict::PollAt(t0 + 2 * SEC));
        assert_eq!(w.dead_at(), t0 + 4 * SEC);
        // Answered again much later: the limit counts from the last answer.
        assert_eq!(
            w.observe(true, t0 + 10 * SEC),
            Verdict::PollAt(t0 + 11 * SEC)
        );
    }

    #[test]
    fn health_watch_is_dead_at_the_limit_exactly_not_a_poll_later() {
        let t0 = Instant::now();
        let limit = Duration::from_millis(2500);
        let mut w = HealthWatch::new(t0, limit);
        assert_eq!(w.observe(false, t0 + SEC), Verdict::PollAt(t0 + 2 * SEC));
        // The next whole second would pass the limit: poll at the limit.
        assert_eq!(w.observe(false, t0 + 2 * SEC), Verdict::PollAt(t0 + limit));
        assert_eq!(
            w.observe(false, t0 + limit),
            Verdict::Dead { silent_for: limit }
        );
    }

    #[test]
    fn health_watch_forgives_silence_shorter_than_the_limit() {
        let t0 = Instant::now();
        let mut w = HealthWatch::new(t0, 2 * SEC);
        assert_eq!(w.observe(false, t0 + SEC), Verdict::PollAt(t0 + 2 * SEC));
        assert_eq!(
            w.observe(true, t0 + Duration::from_millis(1900)),
            Verdict::PollAt(t0 + Duration::from_millis(2900))
        );
        assert_eq!(w.dead_at(), t0 + Duration::from_millis(3900));
    }
}
