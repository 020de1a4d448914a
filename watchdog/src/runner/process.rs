//! What every child-process runner shares: spawning with a scrubbed
//! environment in a process group of its own, killing that whole group,
//! forwarding output as log lines, and reading JSON from what it printed.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use runtime_sdk::{names, ErrorCode, Invocation, InvokeError, Json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tracing::{Instrument, Span};

use crate::config::ProcessConfig;

/// The content type of raw bytes (section 3).
pub const OCTET_STREAM: &str = "application/octet-stream";

/// How much of stderr an error message keeps (contract section 2).
pub const STDERR_TAIL_BYTES: usize = 4096;

/// A log line longer than this is forwarded in pieces, so a child that
/// prints megabytes without a newline never makes us buffer it all.
const MAX_LOG_LINE: usize = 64 * 1024;

/// Builds the command for `cfg`: no shell, own process group, secrets
/// removed, the invocation's ids set.
pub fn command(cfg: &ProcessConfig, inv: Option<&Invocation>) -> Command {
    let mut cmd = Command::new(&cfg.argv[0]);
    cmd.args(&cfg.argv[1..]);
    for secret in names::SCRUBBED_FROM_CHILDREN {
        cmd.env_remove(secret);
    }
    if let Some(inv) = inv {
        cmd.env(names::EXECUTION_ID, &*inv.execution_id);
        // The invocation's own, never one the watchdog inherited.
        for (name, value) in [
            (names::TRACE_ID, &inv.trace_id),
            (names::TRACEPARENT, &inv.traceparent),
            (names::TRACESTATE, &inv.tracestate),
        ] {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
    } else {
        // A process kept across invocations: no invocation's trace context
        // (in one-shot mode the watchdog's own TRACEPARENT is the caller's).
        cmd.env_remove(names::TRACEPARENT);
        cmd.env_remove(names::TRACESTATE);
    }
    // A group of its own, so a timeout can reach grandchildren too.
    cmd.process_group(0);
    cmd.kill_on_drop(false);
    cmd
}

/// Spawns `cmd` in a process group of its own.
pub fn spawn(cmd: &mut Command, program: &str) -> Result<(Child, ProcessGroup), InvokeError> {
    let child = cmd.spawn().map_err(|e| {
        InvokeError::new(
            ErrorCode::FunctionError,
            format!("could not start `{program}`: {e}"),
        )
    })?;
    let pid = child.id().unwrap_or(0) as i32;
    Ok((child, ProcessGroup { pgid: pid }))
}

/// A child's process group. Stopping it sends SIGTERM to the whole group,
/// then SIGKILL after the grace.
#[derive(Debug, Clone, Copy)]
pub struct ProcessGroup {
    pub pgid: i32,
}

impl ProcessGroup {
    fn exists(self) -> bool {
        self.pgid > 0 && killpg(Pid::from_raw(self.pgid), None).is_ok()
    }

    /// SIGTERM now, SIGKILL after `grace` if anything of the group is left.
    pub async fn stop(self, grace: Duration) {
        if !self.exists() {
            return;
        }
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGTERM);
        self.kill_after(grace).await;
    }

    async fn kill_after(self, grace: Duration) {
        let step = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        while waited < grace {
            tokio::time::sleep(step).await;
            waited += step;
            if !self.exists() {
                return;
            }
        }
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
    }

    /// Stops the group without waiting: used when an invocation ends (cut
    /// by its deadline, or done but leaving strays behind). SIGTERM goes
    /// out at once, so it is sent even if the process exits right after.
    pub fn stop_in_background(self, grace: Duration) {
        if !self.exists() {
            return;
        }
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGTERM);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(self.kill_after(grace));
            }
            Err(_) => {
                let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
            }
        }
    }
}

/// Stops the group when dropped: a timed-out invocation's future is simply
/// dropped, and this makes sure its processes go with it.
pub struct GroupGuard {
    group: ProcessGroup,
    grace: Duration,
}

impl GroupGuard {
    pub fn new(group: ProcessGroup, grace: Duration) -> Self {
        GroupGuard { group, grace }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.group.stop_in_background(self.grace);
    }
}

/// The last bytes a child wrote to stderr.
#[derive(Debug, Default)]
pub struct Tail {
    buf: VecDeque<u8>,
}

impl Tail {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
        let excess = self.buf.len().saturating_sub(STDERR_TAIL_BYTES);
        self.buf.drain(..excess);
    }

    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(self.buf.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).trim_end().to_owned()
    }
}

pub type SharedTail = Arc<Mutex<Tail>>;

/// Cuts a child's output into log lines; a line longer than
/// `MAX_LOG_LINE` is logged in pieces.
#[derive(Debug, Default)]
pub struct LineSplitter {
    line: Vec<u8>,
}

impl LineSplitter {
    /// Logs every complete line in `data` (in `span` when given, else the
    /// current one) and keeps the rest for the next call.
    pub fn feed(&mut self, stream: &'static str, data: &[u8], span: Option<&Span>) {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..pos]);
            emit(stream, &self.line, span);
            self.line.clear();
            rest = &rest[pos + 1..];
        }
        self.line.extend_from_slice(rest);
        if self.line.len() >= MAX_LOG_LINE {
            self.flush(stream, span);
        }
    }

    /// Logs a last line that has no newline yet.
    pub fn flush(&mut self, stream: &'static str, span: Option<&Span>) {
        if !self.line.is_empty() {
            emit(stream, &self.line, span);
            self.line.clear();
        }
    }
}

/// Logs one line of a child's output, in `span` when given (the invocation
/// in flight), so the line carries its execution and trace ids.
pub fn emit(stream: &'static str, line: &[u8], span: Option<&Span>) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let log = || tracing::info!(target: "function", stream, "{text}");
    match span {
        Some(span) => span.in_scope(log),
        None => log(),
    }
}

/// Reads `reader` to its end, logging each line in the current span, and
/// keeping a tail if asked. Reading never stops early, so the child never
/// blocks on a full pipe.
pub fn forward_lines<R>(
    reader: R,
    stream: &'static str,
    tail: Option<SharedTail>,
) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            let mut reader = reader;
            let mut chunk = vec![0u8; 16 * 1024];
            let mut lines = LineSplitter::default();
            loop {
                let n = match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if let Some(t) = &tail {
                    t.lock().unwrap().push(&chunk[..n]);
                }
                lines.feed(stream, &chunk[..n], None);
            }
            lines.flush(stream, None);
        }
        .instrument(span),
    )
}

/// Reads `reader` (a child's stdout) into memory, at most `limit` bytes:
/// `Err` as soon as there is more, so a runaway child costs no more than
/// the limit (section 10).
pub fn collect_limited<R>(reader: R, limit: usize) -> tokio::task::JoinHandle<Result<Vec<u8>, ()>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut out = Vec::new();
        // One byte over the limit is enough to know.
        let mut reader = reader.take(limit as u64 + 1);
        let _ = reader.read_to_end(&mut out).await;
        if out.len() > limit {
            Err(())
        } else {
            Ok(out)
        }
    })
}

/// After the child exits, how long its pipes may stay open (held by a
/// stray grandchild) before we stop waiting for them.
pub const PIPE_GRACE: Duration = Duration::from_millis(200);

/// Parses a process runner's output (contract section 2): the whole text as
/// JSON, else its last non-empty line, else `FUNCTION_ERROR`. The bytes are
/// kept as they are (no tree), so numbers keep every digit.
pub fn parse_output(bytes: Vec<u8>) -> Result<Json, InvokeError> {
    let bytes = Bytes::from(bytes);
    if bytes.trim_ascii().is_empty() {
        return Err(InvokeError::new(
            ErrorCode::FunctionError,
            "Invalid JSON output: the function printed nothing",
        ));
    }
    if let Ok(json) = Json::parse(bytes.clone()) {
        return Ok(json);
    }
    // The end trimmed: the last segment is the last non-empty line.
    let body = bytes.trim_ascii_end();
    let start = body
        .split(|&b| b == b'\n')
        .next_back()
        .map_or(0, |last| body.len() - last.len());
    if start > 0 {
        if let Ok(json) = Json::parse(bytes.slice(start..body.len())) {
            return Ok(json);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    Err(InvokeError::new(
        ErrorCode::FunctionError,
        format!(
            "Invalid JSON output: the function printed {:?}",
            preview(text.trim(), 200)
        ),
    ))
}

/// The start of `text`, cut at a character boundary.
pub fn preview(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// `FUNCTION_ERROR` for a child that ended unsuccessfully.
pub fn exit_error(status: ExitStatus, tail: &str) -> InvokeError {
    let how = how_it_ended(status);
    let message = if tail.is_empty() {
        format!("function {how} (stderr was empty)")
    } else {
        format!("function {how}; stderr: {tail}")
    };
    InvokeError::new(ErrorCode::FunctionError, message)
}

/// "exited with code 1", "was killed by signal SIGKILL": how a child ended,
/// without its output, for places anyone may read (`/health`).
pub fn how_it_ended(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| sig.to_string());
            format!("was killed by signal {name}")
        }
        _ => "ended abnormally".to_owned(),
    }
}

/// Stdin that the child gets: piped when we write the payload, else null.
pub fn stdin_for(write_payload: bool) -> Stdio {
    if write_payload {
        Stdio::piped()
    } else {
        Stdio::null()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn out(bytes: &[u8]) -> Json {
        parse_output(bytes.to_vec()).unwrap()
    }

    #[test]
    fn whole_output_is_json() {
        assert_eq!(out(b" {\"a\": 1}\n").as_str(), "{\"a\": 1}");
        assert_eq!(out(b"[1,\n2]").to_value(), json!([1, 2]));
    }

    #[test]
    fn last_non_empty_line_is_tried_after_logs() {
        let printed = b"starting\nloaded 3 rows\n{\"rows\": 3}\n\n";
        assert_eq!(out(printed).to_value(), json!({"rows": 3}));
    }

    #[test]
    fn empty_and_non_json_output_fail_with_a_preview() {
        let e = parse_output(b"  \n".to_vec()).unwrap_err();
        assert_eq!(e.code, ErrorCode::FunctionError);
        assert!(e.message.contains("Invalid JSON output"));
        let e = parse_output(b"hello world".to_vec()).unwrap_err();
        assert!(e.message.contains("Invalid JSON output"));
        assert!(e.message.contains("hello world"));
    }

    #[test]
    fn big_numbers_survive_parsing() {
        let v = out(b"{\"n\": 12345678901234567890.12345678901234567890}");
        assert_eq!(
            v.as_str(),
            "{\"n\": 12345678901234567890.12345678901234567890}"
        );
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(&vec![b'a'; STDERR_TAIL_BYTES]);
        t.push(b"the end");
        let text = t.text();
        assert_eq!(text.len(), STDERR_TAIL_BYTES);
        assert!(text.ends_with("the end"));
    }

    #[test]
    fn preview_cuts_at_char_boundary() {
        assert_eq!(preview("héllo", 2), "h...");
    }
}
