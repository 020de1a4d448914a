//! `STDIO` (contract section 2): a child per invocation, payload on stdin,
//! output on stdout.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use runtime_sdk::{BoxFuture, Handler, Invocation, InvokeResult};
use tokio::io::AsyncWriteExt;

use super::process::{self, GroupGuard, Tail, PIPE_GRACE};
use crate::config::ProcessConfig;

pub struct StdioRunner {
    cfg: ProcessConfig,
}

impl StdioRunner {
    pub fn new(cfg: ProcessConfig) -> Self {
        StdioRunner { cfg }
    }

    async fn run(&self, inv: Invocation) -> InvokeResult {
        let budget = inv.remaining();
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
        let stdout = process::collect(child.stdout.take().expect("piped"));
        let mut stdin = child.stdin.take().expect("piped");
        let payload = serde_json::to_vec(&inv.payload).unwrap_or_default();
        // Written in its own task: a child that never reads stdin must not
        // hold up the wait below; a closed pipe is the child's business.
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        });

        let work = async {
            let status = child.wait().await;
            writer.abort();
            // Pipes held open by a stray grandchild must not hold the result.
            let out = tokio::time::timeout(PIPE_GRACE, stdout)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let _ = tokio::time::timeout(PIPE_GRACE, stderr).await;
            (status, out)
        };
        match tokio::time::timeout_at(inv.deadline.into(), work).await {
            Err(_) => Err(process::timeout_error(&inv.execution_id, budget)),
            Ok((Err(e), _)) => Err(runtime_sdk::InvokeError::new(
                runtime_sdk::ErrorCode::FunctionError,
                format!("could not wait for the function: {e}"),
            )),
            Ok((Ok(status), _)) if !status.success() => {
                Err(process::exit_error(status, &tail.lock().unwrap().text()))
            }
            Ok((Ok(_), out)) => process::parse_output(&out),
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
