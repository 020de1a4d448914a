//! `STDIO` (contract section 2): a child per invocation, payload on stdin,
//! output on stdout.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use runtime_sdk::{BoxFuture, ErrorCode, Handler, Invocation, InvokeError, InvokeResult, Output};
use tokio::io::AsyncWriteExt;

use super::process::{self, GroupGuard, Tail, OCTET_STREAM, PIPE_GRACE};
use crate::config::ProcessConfig;

pub struct StdioRunner {
    cfg: ProcessConfig,
}

impl StdioRunner {
    pub fn new(cfg: ProcessConfig) -> Self {
        StdioRunner { cfg }
    }

    /// Runs until the child is done. The pipeline's deadline drops this
    /// future; the guard then stops the whole process group.
    async fn run(&self, inv: Invocation) -> InvokeResult {
        let mut cmd = process::command(&self.cfg, Some(&inv));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, group) = process::spawn(&mut cmd, &self.cfg.argv[0])?;
        // From here on, however this future ends, the group is stopped.
        let _guard = GroupGuard::new(group, self.cfg.kill_grace);

        let tail = Arc::new(Mutex::new(Tail::default()));
        let stderr = process::forward_lines(
            child.stderr.take().expect("piped"),
            "stderr",
            Some(tail.clone()),
        );
        let mut stdout =
            process::collect_limited(child.stdout.take().expect("piped"), self.cfg.max_output);
        let mut stdin = child.stdin.take().expect("piped");
        // The bytes as they arrived: no copy, every digit kept.
        let payload = inv.payload.bytes();
        let inv_binary = inv.payload.is_binary();
        // Written in its own task: a child that never reads stdin must not
        // hold up the wait below; a closed pipe is the child's business.
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        });

        // stdout may end before the child does (it closed it) or after (a
        // grandchild holds it): whichever comes first, neither is lost.
        let mut out: Option<Result<Vec<u8>, ()>> = None;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                read = &mut stdout, if out.is_none() => {
                    let read = read.unwrap_or(Ok(Vec::new()));
                    if read.is_err() {
                        // Past MAX_OUTPUT_BYTES: stop now, not at the deadline.
                        writer.abort();
                        return Err(InvokeError::output_too_large("stdout", self.cfg.max_output));
                    }
                    out = Some(read);
                }
            }
        };
        writer.abort();
        let out = match out {
            Some(read) => Some(read),
            // Pipes held open by a stray grandchild must not hold the result.
            None => tokio::time::timeout(PIPE_GRACE, stdout)
                .await
                .ok()
                .and_then(Result::ok),
        };
        let _ = tokio::time::timeout(PIPE_GRACE, stderr).await;
        match status {
            Err(e) => Err(InvokeError::new(
                ErrorCode::FunctionError,
                format!("could not wait for the function: {e}"),
            )),
            Ok(status) if !status.success() => {
                Err(process::exit_error(status, &tail.lock().unwrap().text()))
            }
            Ok(_) => match out {
                Some(Err(())) => Err(InvokeError::output_too_large("stdout", self.cfg.max_output)),
                // Bytes in, bytes out (section 3): stdout as it is.
                Some(Ok(bytes)) if inv_binary => Ok(Output::raw(bytes, OCTET_STREAM)),
                Some(Ok(bytes)) => process::parse_output(bytes).map(Output::from),
                None => process::parse_output(Vec::new()).map(Output::from),
            },
        }
    }
}

impl Handler for StdioRunner {
    fn mode(&self) -> &'static str {
        "STDIO"
    }

    fn invoke(&self, inv: Invocation) -> BoxFuture<'_, InvokeResult> {
        Box::pin(self.run(inv))
    }
}
