//! `LOOP` (contract sections 2 and 8): `MAX_CONCURRENCY` kept children, each
//! running one invocation at a time. An invocation is one JSON line on the
//! child's stdin; its result is one JSON line on the child's fd 3, so stdout
//! and stderr stay free for logs. (`loop` is a keyword, hence the name.)
//!
//! Each slot has a supervisor task that owns its child outright: it writes
//! the request, reads fd 3, forwards stdout and stderr, watches the exit and
//! the deadline, and restarts the child. Owning everything in one task is
//! what lets output be attributed to the invocation in flight without locks:
//! when a result arrives, whatever the child printed before it is already in
//! the pipes and is read then, in the invocation's span.
//!
//! Idle supervisors take jobs from one shared queue, so a job goes to an idle
//! child and a busy child never gets a second one. `docs/loop-protocol.md`
//! describes the protocol and what happens on each fault.
//!
//! `RELOAD` (`Handler::reload`) bumps a code generation: each supervisor
//! replaces a child of an older generation as soon as it is idle (a busy one
//! finishes its invocation first), one slot at a time, so the other children
//! keep taking jobs and queued invocations wait for a free child. The
//! protocol has no "ready" line, so a new child counts as started once it
//! answered its first invocation; until then (at most `TURN_LIMIT`) the next
//! slot waits its turn, unless no invocation came for `QUIET_PASS`: with no
//! load, capacity does not matter and the next slot goes at once.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use runtime_sdk::{
    BoxFuture, ErrorCode, Handler, Health, Invocation, InvokeError, InvokeResult, Json, Output,
};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Span;

use super::process::{self, GroupGuard, LineSplitter, ProcessGroup, Tail};
use crate::config::{Config, Mode, ProcessConfig};

/// The child's file descriptor for result lines (section 8).
pub const RESULT_FD: RawFd = 3;

/// How long start-up waits after spawning, so a child that dies at once is
/// seen before the watchdog says it is ready (warm mode only).
const SETTLE: Duration = Duration::from_millis(50);

/// A child that dies (or breaks the protocol) before its first invocation and
/// sooner than this after its start is crashing at start: it is restarted
/// with backoff, and its slot counts as unusable for `/health`.
const STABLE_AFTER: Duration = Duration::from_secs(1);

/// Restart backoff after crashes at start: doubling from the first to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Room for a result line's envelope (`{"id": ..., "output": ...}`) on top
/// of `MAX_OUTPUT_BYTES`: a longer line fails with `OUTPUT_TOO_LARGE` and the
/// child is replaced, rather than buffered without bound.
const ENVELOPE: usize = 64 * 1024;

const CHUNK: usize = 16 * 1024;

/// When a job ends, output already in the pipes is read at once, up to this
/// many chunks, so a chatty grandchild cannot hold the answer.
const DRAIN_CHUNKS: usize = 64;

/// How long `reload` waits for every child to be replaced; a child busy with a
/// longer invocation is replaced when that ends, after `reload` returned.
const RELOAD_WAIT: Duration = Duration::from_secs(2);

/// The longest a new child keeps the next slot waiting for its turn (its
/// first invocation may be a slow one).
const TURN_LIMIT: Duration = Duration::from_secs(1);

/// A new child passes the turn on after this long with no invocation
/// arriving: nothing waits for capacity. Shorter than the gap between
/// invocations under any load worth keeping a child for.
const QUIET_PASS: Duration = Duration::from_millis(50);

/// Restart delay after `failures` consecutive crashes at start.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

type Queue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>;

pub struct LoopRunner {
    shared: Arc<Shared>,
    slots: usize,
    settle: Duration,
    jobs: mpsc::UnboundedSender<Job>,
    queue: Queue,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
}

/// What the supervisors and the runner share.
struct Shared {
    cfg: ProcessConfig,
    stop: CancellationToken,
    started: AtomicBool,
    slots: Mutex<Vec<SlotHealth>>,
    /// The code generation children should run, bumped by `reload`: a child
    /// started before the bump is replaced as soon as it is idle.
    code: watch::Sender<u64>,
    /// Held while a slot replaces its child and the new child starts: one
    /// at a time, so under load at most one slot has a child still starting.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Notified whenever a slot starts a child (`reload` waits for them).
    spawned: Notify,
    /// Invocations handed to the children so far: a new child holding the
    /// replacement turn watches it for a quiet spell.
    sent: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct SlotHealth {
    /// Has a child that can take an invocation (or is being replaced after
    /// a normal death); false while crashing at start.
    usable: bool,
    /// Why the last child crashed at start.
    failure: Option<String>,
    /// The code generation of the slot's current child.
    generation: u64,
}

impl Shared {
    fn set_usable(&self, slot: usize) {
        let mut slots = self.slots.lock().unwrap();
        slots[slot].usable = true;
        slots[slot].failure = None;
    }

    fn set_failed(&self, slot: usize, reason: String) {
        let mut slots = self.slots.lock().unwrap();
        slots[slot].usable = false;
        slots[slot].failure = Some(reason);
    }

    fn set_generation(&self, slot: usize, generation: u64) {
        self.slots.lock().unwrap()[slot].generation = generation;
        self.spawned.notify_waiters();
    }

    /// Slots whose child runs code older than `generation`.
    fn older_than(&self, generation: u64) -> usize {
        let slots = self.slots.lock().unwrap();
        slots.iter().filter(|s| s.generation < generation).count()
    }
}

/// One invocation waiting for, or held by, a child.
struct Job {
    id: String,
    /// The request line, newline included.
    line: Vec<u8>,
    deadline: Instant,
    budget: Duration,
    /// The invocation's span: the child's output is logged in it.
    span: Span,
    reply: oneshot::Sender<InvokeResult>,
}

impl Job {
    fn answer(self, result: InvokeResult) {
        // The caller may have gone (deadline, disconnect): nothing to do then.
        let _ = self.reply.send(result);
    }
}

/// The request line of section 8, written around the payload's own bytes.
fn request_line(inv: &Invocation) -> Vec<u8> {
    let payload = inv.payload.as_bytes();
    let mut line = Vec::with_capacity(payload.len() + inv.execution_id.len() + 96);
    line.extend_from_slice(b"{\"id\":");
    serde_json::to_writer(&mut line, &*inv.execution_id).expect("a str serialises");
    line.extend_from_slice(b",\"payload\":");
    // A raw newline in valid JSON can only be white space between tokens
    // (inside strings it must be escaped), so it becomes a space: the
    // request stays one line.
    line.extend(payload.iter().map(|&b| match b {
        b'\n' | b'\r' => b' ',
        b => b,
    }));
    line.extend_from_slice(b",\"deadline_ms\":");
    line.extend_from_slice(inv.deadline_unix_ms().to_string().as_bytes());
    line.extend_from_slice(b",\"trace_id\":");
    serde_json::to_writer(&mut line, &inv.trace_id).expect("an Option<String> serialises");
    line.extend_from_slice(b"}\n");
    line
}

impl LoopRunner {
    /// `slots` children; one-shot mode runs a single invocation, so it keeps
    /// one child and skips the settle wait.
    pub fn from_config(cfg: ProcessConfig, config: &Config) -> Self {
        match config.mode {
            Mode::Warm(_) => LoopRunner::new(cfg, config.max_concurrency, SETTLE),
            Mode::Oneshot(_) => LoopRunner::new(cfg, 1, Duration::ZERO),
        }
    }

    pub fn new(cfg: ProcessConfig, slots: usize, settle: Duration) -> Self {
        let slots = slots.max(1);
        let (jobs, queue) = mpsc::unbounded_channel();
        LoopRunner {
            shared: Arc::new(Shared {
                cfg,
                stop: CancellationToken::new(),
                started: AtomicBool::new(false),
                slots: Mutex::new(vec![SlotHealth::default(); slots]),
                code: watch::Sender::new(0),
                turn: Arc::new(tokio::sync::Mutex::new(())),
                spawned: Notify::new(),
                sent: AtomicU64::new(0),
            }),
            slots,
            settle,
            jobs,
            queue: Arc::new(tokio::sync::Mutex::new(queue)),
            supervisors: Mutex::new(Vec::new()),
        }
    }

    /// Ready once every child is spawned and `settle` has passed. A command
    /// that cannot be spawned at all is a start-up error; a child that dies
    /// is the supervisors' business (restart, backoff, `health`).
    async fn start_children(&self) -> Result<(), InvokeError> {
        let mut firsts = Vec::with_capacity(self.slots);
        {
            let mut supervisors = self.supervisors.lock().unwrap();
            if !supervisors.is_empty() {
                return Ok(());
            }
            for slot in 0..self.slots {
                let (tx, rx) = oneshot::channel();
                supervisors.push(tokio::spawn(supervise(
                    self.shared.clone(),
                    self.queue.clone(),
                    slot,
                    tx,
                )));
                firsts.push(rx);
            }
        }
        for first in firsts {
            if let Ok(Err(e)) = first.await {
                return Err(InvokeError::new(ErrorCode::StartupError, e.message));
            }
        }
        self.shared.started.store(true, Ordering::Release);
        tokio::time::sleep(self.settle).await;
        tracing::info!(children = self.slots, "LOOP children started");
        Ok(())
    }

    async fn call(&self, inv: Invocation) -> InvokeResult {
        if inv.payload.is_binary() {
            // Section 8's request is a JSON line: there is no place for raw bytes.
            return Err(InvokeError::new(
                ErrorCode::InvalidRequest,
                "a LOOP child takes JSON lines: send this payload as JSON, not application/octet-stream",
            ));
        }
        let budget = inv.remaining();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            id: inv.execution_id.to_string(),
            line: request_line(&inv),
            deadline: inv.deadline,
            budget,
            span: Span::current(),
            reply,
        };
        if self.shared.stop.is_cancelled() || self.jobs.send(job).is_err() {
            return Err(cancelled());
        }
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        // The supervisor enforces the deadline on the child; the pipeline's
        // deadline drops this future, which closes `answer`, and a supervisor
        // holding the job then stops the child (`Busy::Abandoned`).
        answer.await.unwrap_or_else(|_| Err(cancelled()))
    }

    /// Has every child replaced by one running the code as it is now, and
    /// waits (a while) for that to happen.
    async fn replace_children(&self) -> Result<(), InvokeError> {
        let shared = &self.shared;
        if !shared.started.load(Ordering::Acquire) || shared.stop.is_cancelled() {
            return Ok(()); // `start` is about to run the code as it is now
        }
        let mut target = 0;
        shared.code.send_modify(|generation| {
            *generation += 1;
            target = *generation;
        });
        let all_replaced = async {
            loop {
                // Made before the check, so a start in between still wakes it.
                let spawned = shared.spawned.notified();
                if shared.older_than(target) == 0 {
                    return;
                }
                spawned.await;
            }
        };
        if tokio::time::timeout(RELOAD_WAIT, all_replaced)
            .await
            .is_err()
        {
            tracing::info!(
                children = shared.older_than(target),
                "LOOP children still busy after {} ms are replaced when their invocation ends",
                RELOAD_WAIT.as_millis()
            );
        }
        Ok(())
    }

    async fn stop_children(&self) {
        self.shared.stop.cancel();
        let supervisors = std::mem::take(&mut *self.supervisors.lock().unwrap());
        for s in supervisors {
            let _ = s.await;
        }
        // Whatever is still queued will never run.
        let mut queue = self.queue.lock().await;
        queue.close();
        while let Ok(job) = queue.try_recv() {
            job.answer(Err(cancelled()));
        }
    }
}

fn cancelled() -> InvokeError {
    InvokeError::new(
        ErrorCode::Cancelled,
        "shut down before it ran (the LOOP children are stopping)",
    )
}

impl Handler for LoopRunner {
    fn mode(&self) -> &'static str {
        "LOOP"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(self.start_children())
    }

    fn invoke(&self, inv: Invocation) -> BoxFuture<'_, InvokeResult> {
        Box::pin(self.call(inv))
    }

    /// The children's supervisors are tasks: on the connection's task, a
    /// freed slot reached the next call only after the response was
    /// written, and the LOOP echo lost 12% of its req/s.
    fn runs_detached(&self) -> bool {
        true
    }

    fn reload(&self) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(self.replace_children())
    }

    fn health(&self) -> Health {
        if !self.shared.started.load(Ordering::Acquire) {
            return Health::Starting;
        }
        let slots = self.shared.slots.lock().unwrap();
        if slots.iter().any(|s| s.usable) {
            return Health::Ready;
        }
        // /health answers anyone: why the children failed (exit status and
        // stderr, the function's output) is in the log, not here.
        match slots.iter().any(|s| s.failure.is_some()) {
            true => Health::Unhealthy(
                "no LOOP child is usable: each ended soon after its start; restarting with \
                 backoff (the log has its exit status and stderr)"
                    .into(),
            ),
            false => Health::Starting,
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_children())
    }
}

/// How a child's life ended.
enum End {
    /// The watchdog is shutting down: no restart.
    Stopped,
    /// Died or broke the protocol before its first invocation, soon after
    /// its start: a crash at start, restarted with backoff.
    Early(String),
    /// Any other end: restarted at once.
    Done,
    /// Idle, running older code than `Shared::code` (`reload`), and holding
    /// the replacement turn: still running, replaced by the supervisor.
    Stale(OwnedMutexGuard<()>),
}

/// One slot: starts its child, serves jobs with it, restarts it when it
/// ends, until shutdown.
async fn supervise(
    shared: Arc<Shared>,
    queue: Queue,
    slot: usize,
    first: oneshot::Sender<Result<(), InvokeError>>,
) {
    let mut first = Some(first);
    let mut failures: u32 = 0;
    // A job taken by a child found dead before it was sent: the next child
    // runs it, so a child dying while idle loses nothing.
    let mut carried: Option<Job> = None;
    let mut code = shared.code.subscribe();
    // A child started to replace one that runs older code.
    let mut replacement: Option<Kept> = None;
    // Dropped to pass the replacement turn on (see `Shared::turn`).
    let mut turn: Option<oneshot::Sender<()>> = None;
    loop {
        if failures > 0 {
            tokio::select! {
                _ = tokio::time::sleep(backoff(failures)) => {}
                _ = shared.stop.cancelled() => break,
                // New code (`reload`) may start fine: try it at once.
                _ = code.changed() => failures = 0,
            }
        }
        if shared.stop.is_cancelled() {
            break;
        }
        let spawned = match replacement.take() {
            Some(kept) => Ok(kept),
            None => Kept::spawn(&shared.cfg, *code.borrow_and_update()),
        };
        let mut kept = match spawned {
            Ok(k) => k,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::error!(slot, error = %e.message, "cannot start the LOOP child");
                shared.set_failed(slot, e.message.clone());
                if let Some(f) = first.take() {
                    let _ = f.send(Err(e));
                }
                continue;
            }
        };
        if let Some(f) = first.take() {
            let _ = f.send(Ok(()));
        }
        if failures == 0 {
            shared.set_usable(slot);
        }
        shared.set_generation(slot, kept.generation);
        tracing::debug!(slot, pid = kept.pid, "LOOP child started");
        let end = kept
            .serve(&shared, &queue, slot, &mut carried, &mut code, &mut turn)
            .await;
        turn = None;
        match end {
            End::Stopped => break,
            End::Early(reason) => {
                failures = failures.saturating_add(1);
                tracing::warn!(
                    slot,
                    pid = kept.pid,
                    retry_in_ms = backoff(failures).as_millis() as u64,
                    "the LOOP child crashed at start: {reason}"
                );
                shared.set_failed(slot, reason);
            }
            End::Done => failures = 0,
            End::Stale(held) => {
                failures = 0;
                let (pass, passed) = oneshot::channel::<()>();
                tokio::spawn(async move {
                    let _held = held;
                    let _ = tokio::time::timeout(TURN_LIMIT, passed).await;
                });
                turn = Some(pass);
                // The new child starts (imports its code) while the old one,
                // idle, is stopped. A command that no longer starts is
                // reported when the loop tries again.
                replacement = Kept::spawn(&shared.cfg, *code.borrow_and_update()).ok();
                kept.stop(None).await;
                tracing::info!(
                    slot,
                    old_pid = kept.pid,
                    pid = replacement.as_ref().map(|k| k.pid),
                    "LOOP child replaced to run the new code"
                );
            }
        }
    }
    if let Some(job) = carried {
        job.answer(Err(cancelled()));
    }
}

/// Splits one output stream of the child into log lines.
struct LogStream<R> {
    reader: R,
    name: &'static str,
    open: bool,
    buf: Box<[u8]>,
    lines: LineSplitter,
    /// stderr keeps its last bytes for error messages.
    tail: Option<Tail>,
}

impl<R: AsyncRead + AsRawFd + Unpin> LogStream<R> {
    fn new(reader: R, name: &'static str, keep_tail: bool) -> Self {
        LogStream {
            reader,
            name,
            open: true,
            buf: vec![0u8; CHUNK].into_boxed_slice(),
            lines: LineSplitter::default(),
            tail: keep_tail.then(Tail::default),
        }
    }

    async fn read(&mut self) -> std::io::Result<usize> {
        self.reader.read(&mut self.buf).await
    }

    /// Handles what `read` returned, logging whole lines in `span`.
    fn feed(&mut self, read: std::io::Result<usize>, span: Option<&Span>) {
        let n = match read {
            Ok(0) | Err(_) => {
                self.open = false;
                return;
            }
            Ok(n) => n,
        };
        if let Some(t) = &mut self.tail {
            t.push(&self.buf[..n]);
        }
        self.lines.feed(self.name, &self.buf[..n], span);
    }

    /// Reads what is in the pipe right now, without waiting, then logs a
    /// partial last line too: all of it belongs to the job that just ended.
    /// A raw read sees bytes tokio's readiness may not have noticed yet (the
    /// fd is non-blocking, so an empty pipe answers `EAGAIN`).
    fn drain_now(&mut self, span: Option<&Span>) {
        for _ in 0..DRAIN_CHUNKS {
            if !self.open {
                break;
            }
            match nix::unistd::read(self.reader.as_raw_fd(), &mut self.buf) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Ok(n) => self.feed(Ok(n), span),
                Err(e) => self.feed(Err(e.into()), span),
            }
        }
        self.lines.flush(self.name, span);
    }

    fn tail_text(&self) -> String {
        self.tail.as_ref().map(Tail::text).unwrap_or_default()
    }
}

/// Bytes read from fd 3, cut into lines.
#[derive(Default)]
struct ResultBuf {
    buf: Vec<u8>,
    /// How far `buf` is known to hold no newline.
    scanned: usize,
}

impl ResultBuf {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line that is not blank, taken out of the buffer.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            let pos = self.scanned + self.buf[self.scanned..].iter().position(|&b| b == b'\n')?;
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            self.scanned = 0;
            if !line.trim_ascii().is_empty() {
                return Some(line);
            }
        }
    }

    fn mark_scanned(&mut self) {
        self.scanned = self.buf.len();
    }

    fn is_blank(&self) -> bool {
        self.buf.trim_ascii().is_empty()
    }

    fn too_long(&self, limit: usize) -> bool {
        self.buf.len() > limit
    }
}

/// A result line, judged against the job in flight: `Ok` with the
/// invocation's outcome, or `Err` with why the line breaks the protocol
/// (the child is then killed).
fn parse_result(line: &[u8], expected_id: &str) -> Result<InvokeResult, String> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    let shown = || process::preview(text, 200);
    // Only the envelope is parsed: the output stays the bytes the child wrote.
    let not_json = |e: serde_json::Error| {
        format!(
            "the LOOP child wrote a result line on fd 3 that is not JSON ({e}): {:?}",
            shown()
        )
    };
    if !text.starts_with('{') {
        serde_json::from_str::<IgnoredAny>(text).map_err(not_json)?;
        return Err(format!(
            "the LOOP child wrote a result line on fd 3 that is not a JSON object: {:?}",
            shown()
        ));
    }
    let result: ResultLine = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) if e.is_data() => {
            return Err(format!(
                "the LOOP child's result line does not fit the protocol ({e}): {:?}",
                shown()
            ))
        }
        Err(e) => return Err(not_json(e)),
    };
    match result.id {
        Some(Value::String(id)) if id == expected_id => {}
        Some(Value::String(id)) => {
            return Err(format!(
                "the LOOP child answered id {id:?} while {expected_id:?} was in flight"
            ))
        }
        _ => {
            return Err(format!(
                "the LOOP child wrote a result line with no string \"id\": {:?}",
                shown()
            ))
        }
    }
    match result.error {
        None | Some(Value::Null) => {}
        Some(Value::Object(e)) => {
            let code = match e.get("code") {
                Some(Value::String(c)) if !c.is_empty() => c.as_str(),
                _ => ErrorCode::HandlerError.as_str(),
            };
            let message = match e.get("message") {
                Some(Value::String(m)) => m.clone(),
                None | Some(Value::Null) => String::new(),
                Some(other) => other.to_string(),
            };
            return Ok(Err(InvokeError::new(ErrorCode::parse(code), message)));
        }
        Some(_) => {
            return Err(
                "the LOOP child's \"error\" must be an object {\"code\": ..., \"message\": ...}"
                    .to_owned(),
            )
        }
    }
    match result.output {
        Some(raw) => {
            // An HTTP-shaped answer (section 8): a status and headers beside the output.
            let mut output = Output::json(Json::from_trusted(raw.get().to_owned()));
            if let Some(status) = result.status {
                if !(200..=499).contains(&status) {
                    return Err(format!(
                        "the LOOP child's \"status\" must be from 200 to 499, not {status}"
                    ));
                }
                output.status = Some(status);
            }
            output.headers = result.headers.unwrap_or_default().into_iter().collect();
            Ok(Ok(output))
        }
        None => Err(format!(
            "the LOOP child's result line has neither \"output\" nor \"error\": {:?}",
            shown()
        )),
    }
}

/// A result line of section 8; `output` kept as raw JSON text.
#[derive(Deserialize)]
struct ResultLine {
    id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    output: Option<Box<RawValue>>,
    error: Option<Value>,
    status: Option<u16>,
    headers: Option<std::collections::BTreeMap<String, String>>,
}

/// `Some` whenever the field is there, `null` included (`Option` alone
/// would read `"output": null` as absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// How a job in flight ended, seen from the child's side.
enum Busy {
    Line(Vec<u8>),
    Exited(ExitStatus),
    WaitFailed(String),
    Deadline,
    Abandoned,
    Stopped,
    Broken(String),
    /// The result line went past `MAX_OUTPUT_BYTES`.
    TooLarge,
}

/// One running child and everything it is read and written through.
struct Kept {
    pid: u32,
    child: Child,
    group: ProcessGroup,
    grace: Duration,
    /// Stops the group if the task holding this is dropped (runtime exit).
    _guard: GroupGuard,
    stdin: Option<ChildStdin>,
    stdout: LogStream<ChildStdout>,
    stderr: LogStream<ChildStderr>,
    results: pipe::Receiver,
    results_open: bool,
    results_chunk: Box<[u8]>,
    pending: ResultBuf,
    started: Instant,
    /// Jobs sent to this child (carried ones excluded).
    jobs: u64,
    /// The code generation it was started for (`Shared::code`).
    generation: u64,
}

impl Kept {
    fn spawn(cfg: &ProcessConfig, generation: u64) -> Result<Kept, InvokeError> {
        let start_error = |e: std::io::Error| {
            InvokeError::new(
                ErrorCode::FunctionError,
                format!(
                    "could not create the result pipe for `{}`: {e}",
                    cfg.argv[0]
                ),
            )
        };
        // Close-on-exec on both ends, so no other child inherits them; the
        // child's fd 3 is a dup without that flag. Blocking on the child's
        // side, so adapters can write with plain blocking calls.
        let (tx, rx) = pipe::pipe().map_err(start_error)?;
        let mut write_end: OwnedFd = tx.into_blocking_fd().map_err(start_error)?;
        if write_end.as_raw_fd() == RESULT_FD {
            // dup2 onto itself would keep close-on-exec: move it first.
            write_end = write_end.try_clone().map_err(start_error)?;
        }
        let raw = write_end.as_raw_fd();

        let mut cmd = process::command(cfg, None);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: runs between fork and exec, and only calls dup2, which is
        // async-signal-safe; it allocates nothing. (libc through nix: its
        // own `dup2` needs a cargo feature the watchdog does not enable.)
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::dup2(raw, RESULT_FD) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (mut child, group) = process::spawn(&mut cmd, &cfg.argv[0])?;
        // Our copy must go, or fd 3 would never reach end-of-file.
        drop(write_end);
        let pid = child.id().unwrap_or(0);
        Ok(Kept {
            pid,
            stdin: child.stdin.take(),
            stdout: LogStream::new(child.stdout.take().expect("piped"), "stdout", false),
            stderr: LogStream::new(child.stderr.take().expect("piped"), "stderr", true),
            child,
            group,
            grace: cfg.kill_grace,
            _guard: GroupGuard::new(group, cfg.kill_grace),
            results: rx,
            results_open: true,
            results_chunk: vec![0u8; CHUNK].into_boxed_slice(),
            pending: ResultBuf::default(),
            started: Instant::now(),
            jobs: 0,
            generation,
        })
    }

    /// Serves jobs until the child ends or the watchdog stops.
    async fn serve(
        &mut self,
        shared: &Shared,
        queue: &Queue,
        slot: usize,
        carried: &mut Option<Job>,
        code: &mut watch::Receiver<u64>,
        turn: &mut Option<oneshot::Sender<()>>,
    ) -> End {
        let stable = tokio::time::sleep_until((self.started + STABLE_AFTER).into());
        tokio::pin!(stable);
        let mut proven = false;
        // Set once the code changed: waiting for the replacement turn, while
        // this child goes on taking invocations.
        let mut stale: Option<BoxFuture<'static, OwnedMutexGuard<()>>> = None;
        // While this new child holds the replacement turn: a quiet spell
        // passes it on (`QUIET_PASS`).
        let mut quiet =
            tokio::time::interval_at(tokio::time::Instant::now() + QUIET_PASS, QUIET_PASS);
        quiet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = shared.sent.load(Ordering::Relaxed);
        loop {
            let job = match carried.take() {
                Some(job) => job,
                None => {
                    let next = next_job(queue.clone());
                    tokio::pin!(next);
                    let idle = loop {
                        tokio::select! {
                            biased;
                            _ = shared.stop.cancelled() => break Err(None),
                            status = self.child.wait() => {
                                self.drain_outputs(None);
                                break Err(Some(describe_exit(status, &self.stderr)));
                            }
                            read = self.results.read(&mut self.results_chunk), if self.results_open => {
                                if let Some(reason) = self.unasked(read).await {
                                    break Err(Some(reason));
                                }
                            }
                            _ = code.changed(), if stale.is_none() => {
                                stale = Some(Box::pin(shared.turn.clone().lock_owned()));
                            }
                            // Before taking a job, so the job goes to new code.
                            held = async { stale.as_mut().expect("guarded").await }, if stale.is_some() => {
                                return End::Stale(held);
                            }
                            job = &mut next => match job {
                                Some(job) => break Ok(job),
                                None => break Err(None),
                            },
                            _ = quiet.tick(), if turn.is_some() => {
                                let now = shared.sent.load(Ordering::Relaxed);
                                if now == sent {
                                    *turn = None;
                                }
                                sent = now;
                            }
                            _ = &mut stable, if !proven => {
                                proven = true;
                                shared.set_usable(slot);
                            }
                            read = self.stdout.read(), if self.stdout.open => self.stdout.feed(read, None),
                            read = self.stderr.read(), if self.stderr.open => self.stderr.feed(read, None),
                        }
                    };
                    match idle {
                        Ok(job) => job,
                        Err(None) => {
                            self.stop(None).await;
                            return End::Stopped;
                        }
                        Err(Some(reason)) => {
                            self.stop(None).await;
                            return self.ended(reason);
                        }
                    }
                }
            };

            // Abandoned while queued: its caller already has a TIMEOUT.
            if job.reply.is_closed() {
                continue;
            }
            if Instant::now() >= job.deadline {
                let e = InvokeError::timeout(&job.id, job.budget);
                job.answer(Err(e));
                continue;
            }
            // Found dead as the job arrived: the next child takes it.
            if let Ok(Some(status)) = self.child.try_wait() {
                *carried = Some(job);
                self.drain_outputs(None);
                let reason = describe_exit(Ok(status), &self.stderr);
                self.stop(None).await;
                return self.ended(reason);
            }
            self.jobs += 1;
            match self.run(job, shared).await {
                Some(end) => return end,
                None => {
                    if !proven {
                        proven = true;
                        shared.set_usable(slot);
                    }
                    // It answered: started.
                    *turn = None;
                    if stale.is_none() && code.has_changed().unwrap_or(false) {
                        code.borrow_and_update();
                        stale = Some(Box::pin(shared.turn.clone().lock_owned()));
                    }
                }
            }
        }
    }

    /// Handles fd 3 data while no invocation is in flight: blank lines are
    /// tolerated; anything else, or fd 3 closing, ends the child (`Some`).
    async fn unasked(&mut self, read: std::io::Result<usize>) -> Option<String> {
        match read {
            Ok(n) if n > 0 => {
                self.pending.push(&self.results_chunk[..n]);
                if self.pending.is_blank() {
                    return None;
                }
                let text = String::from_utf8_lossy(&self.pending.buf).into_owned();
                Some(format!(
                    "the LOOP child wrote on fd 3 with no invocation in flight: {:?}",
                    process::preview(&text, 200)
                ))
            }
            // fd 3 closed: normally the child is exiting; one that lives on
            // can no longer answer, so it is replaced.
            _ => {
                self.results_open = false;
                let exit = tokio::time::timeout(process::PIPE_GRACE, self.child.wait()).await;
                self.drain_outputs(None);
                Some(match exit {
                    Ok(status) => describe_exit(status, &self.stderr),
                    Err(_) => "the LOOP child closed fd 3".to_owned(),
                })
            }
        }
    }

    /// Runs one job on this child. `None`: answered, the child can take the
    /// next one; `Some`: the child is gone.
    async fn run(&mut self, mut job: Job, shared: &Shared) -> Option<End> {
        let span = job.span.clone();
        let outcome = {
            let Kept {
                child,
                stdin,
                stdout,
                stderr,
                results,
                results_open,
                results_chunk,
                pending,
                ..
            } = self;
            let line = std::mem::take(&mut job.line);
            let max_line = shared.cfg.max_output + ENVELOPE;
            let write = async move {
                match stdin.as_mut() {
                    Some(stdin) => {
                        stdin.write_all(&line).await?;
                        stdin.flush().await
                    }
                    None => Err(std::io::ErrorKind::BrokenPipe.into()),
                }
            };
            tokio::pin!(write);
            let mut written = false;
            let deadline = tokio::time::sleep_until(job.deadline.into());
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    biased;
                    _ = shared.stop.cancelled() => break Busy::Stopped,
                    read = results.read(results_chunk), if *results_open => match read {
                        Ok(n) if n > 0 => {
                            pending.push(&results_chunk[..n]);
                            if let Some(line) = pending.next_line() {
                                break Busy::Line(line);
                            }
                            if pending.too_long(max_line) {
                                break Busy::TooLarge;
                            }
                            pending.mark_scanned();
                        }
                        // fd 3 closed: normally the child is exiting; one
                        // that lives on can no longer answer.
                        _ => match tokio::time::timeout(process::PIPE_GRACE, child.wait()).await {
                            Ok(Ok(status)) => break Busy::Exited(status),
                            Ok(Err(e)) => break Busy::WaitFailed(e.to_string()),
                            Err(_) => break Busy::Broken("the LOOP child closed fd 3".to_owned()),
                        },
                    },
                    status = child.wait() => match status {
                        Ok(status) => break Busy::Exited(status),
                        Err(e) => break Busy::WaitFailed(e.to_string()),
                    },
                    _ = &mut deadline => break Busy::Deadline,
                    _ = job.reply.closed() => break Busy::Abandoned,
                    result = &mut write, if !written => {
                        written = true;
                        // A child that closed stdin is judged by its exit,
                        // its answer or the deadline, like any other.
                        if let Err(e) = result {
                            tracing::debug!(parent: &span, "writing to the LOOP child's stdin failed: {e}");
                        }
                    }
                    read = stdout.read(), if stdout.open => stdout.feed(read, Some(&span)),
                    read = stderr.read(), if stderr.open => stderr.feed(read, Some(&span)),
                }
            }
        };

        match outcome {
            Busy::Line(line) => {
                // Output printed before the answer is in the pipes by now.
                self.drain_outputs(Some(&span));
                match parse_result(&line, &job.id) {
                    Ok(result) => {
                        let limit = shared.cfg.max_output;
                        job.answer(result.and_then(|output| {
                            if output.len() > limit {
                                Err(InvokeError::output_too_large("the LOOP output", limit))
                            } else {
                                Ok(output)
                            }
                        }));
                        if self.pending.is_blank() {
                            self.pending = ResultBuf::default();
                            return None;
                        }
                        let extra = String::from_utf8_lossy(&self.pending.buf).into_owned();
                        self.stop(Some(&span)).await;
                        Some(self.ended(format!(
                            "the LOOP child wrote more than one result line: {:?}",
                            process::preview(&extra, 200)
                        )))
                    }
                    Err(reason) => {
                        job.answer(Err(InvokeError::new(ErrorCode::FunctionError, &reason)));
                        self.stop(Some(&span)).await;
                        Some(self.ended(reason))
                    }
                }
            }
            Busy::Exited(status) => {
                self.drain_outputs(Some(&span));
                // An answer written just before exiting still counts.
                if let Some(result) = self.last_words(&job.id) {
                    job.answer(result);
                } else {
                    job.answer(Err(process::exit_error(status, &self.stderr.tail_text())));
                }
                let reason = describe_exit(Ok(status), &self.stderr);
                self.stop(Some(&span)).await;
                Some(self.ended(reason))
            }
            Busy::WaitFailed(e) => {
                let reason = format!("could not wait for the LOOP child: {e}");
                job.answer(Err(InvokeError::new(ErrorCode::FunctionError, &reason)));
                self.stop(Some(&span)).await;
                Some(self.ended(reason))
            }
            Busy::Deadline => {
                let e = InvokeError::timeout(&job.id, job.budget);
                job.answer(Err(e));
                self.stop(Some(&span)).await;
                Some(self.ended("it was stopped at its invocation's deadline".to_owned()))
            }
            Busy::Abandoned => {
                self.stop(Some(&span)).await;
                Some(self.ended(
                    "its invocation was abandoned (deadline passed or caller gone)".to_owned(),
                ))
            }
            Busy::TooLarge => {
                let limit = shared.cfg.max_output;
                job.answer(Err(InvokeError::output_too_large(
                    "the LOOP result line",
                    limit,
                )));
                self.pending = ResultBuf::default();
                self.stop(Some(&span)).await;
                Some(self.ended(format!(
                    "its result line went past MAX_OUTPUT_BYTES={limit}"
                )))
            }
            Busy::Broken(reason) => {
                job.answer(Err(InvokeError::new(ErrorCode::FunctionError, &reason)));
                self.stop(Some(&span)).await;
                Some(self.ended(reason))
            }
            Busy::Stopped => {
                job.answer(Err(InvokeError::new(
                    ErrorCode::FunctionError,
                    "the watchdog shut down while the invocation ran",
                )));
                self.stop(Some(&span)).await;
                Some(End::Stopped)
            }
        }
    }

    /// A result line that reached fd 3 before the child exited.
    fn last_words(&mut self, id: &str) -> Option<InvokeResult> {
        for _ in 0..DRAIN_CHUNKS {
            match nix::unistd::read(self.results.as_raw_fd(), &mut self.results_chunk) {
                Err(Errno::EINTR) => continue,
                Ok(n) if n > 0 => self.pending.push(&self.results_chunk[..n]),
                _ => break,
            }
        }
        let line = self.pending.next_line()?;
        parse_result(&line, id).ok()
    }

    fn drain_outputs(&mut self, span: Option<&Span>) {
        self.stdout.drain_now(span);
        self.stderr.drain_now(span);
    }

    /// Ends the child: stdin closed, SIGTERM to the group, SIGKILL after the
    /// grace; reaping it meanwhile, so an obedient child costs no wait.
    async fn stop(&mut self, span: Option<&Span>) {
        self.stdin = None;
        let _ = tokio::join!(self.group.stop(self.grace), self.child.wait());
        self.drain_outputs(span);
    }

    fn ended(&self, reason: String) -> End {
        if self.jobs == 0 && self.started.elapsed() < STABLE_AFTER {
            End::Early(reason)
        } else {
            tracing::warn!(
                pid = self.pid,
                "the LOOP child ended, restarting it: {reason}"
            );
            End::Done
        }
    }
}

fn describe_exit<R>(status: std::io::Result<ExitStatus>, stderr: &LogStream<R>) -> String
where
    R: AsyncRead + AsRawFd + Unpin,
{
    match status {
        Ok(status) => process::exit_error(status, &stderr.tail_text()).message,
        Err(e) => format!("could not wait for the LOOP child: {e}"),
    }
}

/// The next job for an idle child; `None` once the queue is closed. Waiting
/// on the lock is how idle children line up, in order.
async fn next_job(queue: Queue) -> Option<Job> {
    queue.lock().await.recv().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backoff_doubles_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(7), Duration::from_secs(5));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn result_line_with_output_or_error() {
        let ok = parse_result(br#"{"id": "e1", "output": {"a": 1}}"#, "e1").unwrap();
        assert_eq!(ok.unwrap().to_value(), json!({"a": 1}));
        let null = parse_result(br#"{"id": "e1", "output": null, "error": null}"#, "e1").unwrap();
        assert_eq!(null.unwrap(), Json::null());
        let e = parse_result(
            br#"{"id": "e1", "error": {"code": "RATE_LIMITED", "message": "slow down"}}"#,
            "e1",
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Custom("RATE_LIMITED".into()));
        assert_eq!(e.message, "slow down");
        let e = parse_result(br#"{"id": "e1", "error": {"message": "x"}}"#, "e1")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::HandlerError);
    }

    #[test]
    fn protocol_errors_are_told_apart_from_function_errors() {
        for (line, says) in [
            (&b"hello"[..], "not JSON"),
            (b"[1, 2]", "not a JSON object"),
            (br#"{"output": 1}"#, "no string \"id\""),
            (br#"{"id": "other", "output": 1}"#, "\"other\" while \"e1\""),
            (br#"{"id": "e1"}"#, "neither"),
            (br#"{"id": "e1", "error": "boom"}"#, "must be an object"),
        ] {
            let e = parse_result(line, "e1").unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn result_lines_skip_blanks_and_wait_for_newline() {
        let mut b = ResultBuf::default();
        b.push(b"\n  \n{\"id\":");
        assert_eq!(b.next_line(), None);
        b.mark_scanned();
        b.push(b" 1}\n{\"id\": 2}\n");
        assert_eq!(b.next_line().unwrap(), b"{\"id\": 1}\n");
        assert_eq!(b.next_line().unwrap(), b"{\"id\": 2}\n");
        assert!(b.is_blank());
    }

    #[test]
    fn request_line_keeps_the_payload_bytes_on_one_line() {
        let payload =
            Json::parse("{\n  \"n\": 12345678901234567890.12345678901234567890\n}").unwrap();
        let line = request_line(&Invocation::new("e1", payload, Duration::from_secs(1)));
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        assert!(
            text.contains("12345678901234567890.12345678901234567890"),
            "{text}"
        );
    }

    #[test]
    fn request_line_is_one_line() {
        let mut inv = Invocation::new(
            "e1",
            Json::from(json!({"text": "a\nb"})),
            Duration::from_secs(1),
        );
        inv.trace_id = Some("t1".into());
        let line = request_line(&inv);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["id"], "e1");
        assert_eq!(v["payload"], json!({"text": "a\nb"}));
        assert_eq!(v["trace_id"], "t1");
        assert!(v["deadline_ms"].as_u64().unwrap() > 0);
    }

    fn bash(script: &str) -> ProcessConfig {
        ProcessConfig {
            argv: vec!["bash".into(), "-c".into(), script.into()],
            kill_grace: Duration::from_millis(100),
            max_output: 1 << 20,
        }
    }

    // Echoes each request's payload back as its output.
    const ECHO: &str = r#"while IFS= read -r line; do
        id=$(printf '%s' "$line" | sed -E 's/^\{"id":"([^"]*)".*/\1/')
        payload=$(printf '%s' "$line" | sed -E 's/.*"payload":(.*),"deadline_ms".*/\1/')
        echo "log for $id"
        printf '{"id":"%s","output":%s}\n' "$id" "$payload" >&3
    done"#;

    #[tokio::test]
    async fn kept_child_answers_in_turn_and_is_restarted_after_a_crash() {
        let runner = LoopRunner::new(bash(ECHO), 1, Duration::ZERO);
        runner.start().await.unwrap();
        assert_eq!(runner.health(), Health::Ready);
        for i in 0..3 {
            let inv = Invocation::new(
                format!("e{i}"),
                Json::from(json!({"n": i})),
                Duration::from_secs(5),
            );
            assert_eq!(
                runner.invoke(inv).await.unwrap().to_value(),
                json!({"n": i})
            );
        }
        runner.shutdown().await;

        let crash = bash(r#"read -r line; echo dying >&2; exit 7"#);
        let runner = LoopRunner::new(crash, 1, Duration::ZERO);
        runner.start().await.unwrap();
        for _ in 0..2 {
            let inv = Invocation::new("e", Json::from(json!(null)), Duration::from_secs(5));
            let e = runner.invoke(inv).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::FunctionError);
            assert!(e.message.contains("code 7"), "{}", e.message);
            assert!(e.message.contains("dying"), "{}", e.message);
        }
        runner.shutdown().await;
    }

    #[tokio::test]
    async fn deadline_kills_the_child_and_the_next_one_answers() {
        let script = r#"while IFS= read -r line; do
            case "$line" in *hang*) sleep 30;; esac
            id=$(printf '%s' "$line" | sed -E 's/^\{"id":"([^"]*)".*/\1/')
            printf '{"id":"%s","output":"ok"}\n' "$id" >&3
        done"#;
        let runner = LoopRunner::new(bash(script), 1, Duration::ZERO);
        runner.start().await.unwrap();
        let inv = Invocation::new(
            "slow",
            Json::from(json!("hang")),
            Duration::from_millis(300),
        );
        let e = runner.invoke(inv).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Timeout);
        let inv = Invocation::new("fast", Json::from(json!(1)), Duration::from_secs(5));
        assert_eq!(runner.invoke(inv).await.unwrap().to_value(), json!("ok"));
        runner.shutdown().await;
    }

    #[tokio::test]
    async fn a_child_crashing_at_start_makes_the_runner_unhealthy() {
        let runner = LoopRunner::new(bash("echo broken >&2; exit 1"), 2, Duration::ZERO);
        runner.start().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Health::Unhealthy(reason) = runner.health() {
                assert!(!reason.contains("broken"), "{reason}");
                break;
            }
            assert!(Instant::now() < deadline, "never unhealthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        runner.shutdown().await;
    }

    #[tokio::test]
    async fn a_child_that_closes_fd3_but_lives_on_is_replaced() {
        let runner = LoopRunner::new(
            bash("exec 3>&-; while read -r l; do :; done"),
            1,
            Duration::ZERO,
        );
        runner.start().await.unwrap();
        let inv = Invocation::new("e", Json::from(json!(1)), Duration::from_secs(20));
        let e = runner.invoke(inv).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::FunctionError);
        assert!(e.message.contains("closed fd 3"), "{}", e.message);
        runner.shutdown().await;
    }

    #[tokio::test]
    async fn reload_replaces_every_child_and_a_busy_one_finishes_first() {
        // Each child reads the code's "version" once, at its start.
        let dir = tempfile::tempdir().unwrap();
        let version = dir.path().join("version");
        let started = dir.path().join("started");
        std::fs::write(&version, "1").unwrap();
        let script = format!(
            r#"v=$(cat {}); touch {}/read.$$; while IFS= read -r line; do
                case "$line" in *slow*) touch {}; sleep 0.5;; esac
                id=$(printf '%s' "$line" | sed -E 's/^\{{"id":"([^"]*)".*/\1/')
                printf '{{"id":"%s","output":"%s"}}\n' "$id" "$v" >&3
            done"#,
            version.display(),
            dir.path().display(),
            started.display()
        );
        let runner = LoopRunner::new(bash(&script), 2, Duration::ZERO);
        runner.start().await.unwrap();
        // Both children have read version 1 before it changes (a child started is
        // not yet one that has run its first line).
        let read = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("read.")
                })
                .count()
        };
        let waited = std::time::Instant::now();
        while read() < 2 {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "children never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let call = |id: &str, payload| {
            runner.invoke(Invocation::new(
                id,
                Json::from(payload),
                Duration::from_secs(5),
            ))
        };
        assert_eq!(call("e0", json!(0)).await.unwrap().to_value(), json!("1"));

        std::fs::write(&version, "2").unwrap();
        let reload = async {
            // Once the slow invocation runs on a child.
            while !started.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            runner.reload().await
        };
        let (slow, reloaded) = tokio::join!(call("slow", json!("slow")), reload);
        reloaded.unwrap();
        // In flight when the code changed: answered by the child it ran on.
        assert_eq!(slow.unwrap().to_value(), json!("1"));
        // Both children run the new code once `reload` returns.
        let (a, b) = tokio::join!(call("a", json!("slow")), call("b", json!("slow")));
        assert_eq!(a.unwrap().to_value(), json!("2"));
        assert_eq!(b.unwrap().to_value(), json!("2"));
        assert_eq!(runner.health(), Health::Ready);
        runner.shutdown().await;
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_fails_start_up() {
        let cfg = ProcessConfig {
            argv: vec!["/nonexistent/ember-loop-child".into()],
            kill_grace: Duration::from_millis(100),
            max_output: 1 << 20,
        };
        let runner = LoopRunner::new(cfg, 1, Duration::ZERO);
        let e = runner.start().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::StartupError);
        runner.shutdown().await;
    }
}
