//! `FILE` (contract section 2): like `STDIO`, but the payload and output
//! travel through files whose paths the child finds in its environment.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use runtime_sdk::{names, BoxFuture, ErrorCode, Handler, Invocation, InvokeError, InvokeResult};

use super::process::{self, GroupGuard, Tail, PIPE_GRACE};
use crate::config::FileConfig;

pub struct FileRunner {
    cfg: FileConfig,
}

impl FileRunner {
    pub fn new(cfg: FileConfig) -> Self {
        FileRunner { cfg }
    }

    /// `/tmp/input.json` -> `/tmp/input.<id>.json` when several may run at once.
    fn path_for(&self, base: &Path, execution_id: &str) -> PathBuf {
        if !self.cfg.unique_names {
            return base.to_owned();
        }
        let safe: String = execution_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let stem = base.file_stem().and_then(|s| s.to_str()).unwrap_or("file");
        let name = match base.extension().and_then(|s| s.to_str()) {
            Some(ext) => format!("{stem}.{safe}.{ext}"),
            None => format!("{stem}.{safe}"),
        };
        base.with_file_name(name)
    }

    async fn run(&self, inv: Invocation) -> InvokeResult {
        let budget = inv.remaining();
        let input = self.path_for(&self.cfg.input_file, &inv.execution_id);
        let output = self.path_for(&self.cfg.output_file, &inv.execution_id);
        let _files = RemoveOnDrop(vec![input.clone(), output.clone()]);
        // A stale output from an earlier run must not pass for this one's.
        let _ = tokio::fs::remove_file(&output).await;
        let payload = serde_json::to_vec(&inv.payload).unwrap_or_default();
        tokio::fs::write(&input, payload).await.map_err(|e| {
            InvokeError::new(
                ErrorCode::FunctionError,
                format!("could not write INPUT_FILE {}: {e}", input.display()),
            )
        })?;

        let mut cmd = process::command(&self.cfg.process, Some(&inv));
        cmd.env(names::INPUT_FILE, &input)
            .env(names::OUTPUT_FILE, &output)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, group) = process::spawn(&mut cmd, &self.cfg.process.argv[0])?;
        let _guard = GroupGuard::new(group, self.cfg.process.kill_grace);
        let tail = Arc::new(Mutex::new(Tail::default()));
        let stdout = process::forward_lines(child.stdout.take().expect("piped"), "stdout", None);
        let stderr = process::forward_lines(
            child.stderr.take().expect("piped"),
            "stderr",
            Some(tail.clone()),
        );
        let work = async {
            let status = child.wait().await;
            let _ = tokio::time::timeout(PIPE_GRACE, stdout).await;
            let _ = tokio::time::timeout(PIPE_GRACE, stderr).await;
            status
        };
        let status = match tokio::time::timeout_at(inv.deadline.into(), work).await {
            Err(_) => return Err(process::timeout_error(&inv.execution_id, budget)),
            Ok(Err(e)) => {
                return Err(InvokeError::new(
                    ErrorCode::FunctionError,
                    format!("could not wait for the function: {e}"),
                ))
            }
            Ok(Ok(status)) => status,
        };
        if !status.success() {
            return Err(process::exit_error(status, &tail.lock().unwrap().text()));
        }
        match tokio::fs::read(&output).await {
            Ok(bytes) => process::parse_output(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(InvokeError::new(
                ErrorCode::FunctionError,
                format!(
                    "OUTPUT_FILE {} was not created by the function",
                    output.display()
                ),
            )),
            Err(e) => Err(InvokeError::new(
                ErrorCode::FunctionError,
                format!("could not read OUTPUT_FILE {}: {e}", output.display()),
            )),
        }
    }
}

/// Both files are removed after use, whatever happened (section 2).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Handler for FileRunner {
    fn mode(&self) -> &'static str {
        "FILE"
    }

    fn invoke(&self, inv: Invocation) -> BoxFuture<'_, InvokeResult> {
        Box::pin(self.run(inv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessConfig;
    use std::time::Duration;

    fn runner(unique: bool) -> FileRunner {
        FileRunner::new(FileConfig {
            process: ProcessConfig {
                argv: vec!["true".into()],
                kill_grace: Duration::from_millis(100),
            },
            input_file: "/tmp/input.json".into(),
            output_file: "/tmp/out".into(),
            unique_names: unique,
        })
    }

    #[test]
    fn names_are_unique_only_when_several_run_at_once() {
        let r = runner(false);
        assert_eq!(
            r.path_for(Path::new("/tmp/input.json"), "e1"),
            PathBuf::from("/tmp/input.json")
        );
        let r = runner(true);
        assert_eq!(
            r.path_for(Path::new("/tmp/input.json"), "e/1"),
            PathBuf::from("/tmp/input.e_1.json")
        );
        assert_eq!(
            r.path_for(Path::new("/tmp/out"), "e1"),
            PathBuf::from("/tmp/out.e1")
        );
    }
}
