//! `FILE` (contract section 2): like `STDIO`, but the payload and output
//! travel through files whose paths the child finds in its environment.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use runtime_sdk::{
    names, BoxFuture, ErrorCode, Handler, Invocation, InvokeError, InvokeResult, Output,
};
use tokio::io::AsyncReadExt;

use super::process::{self, GroupGuard, Tail, PIPE_GRACE};
use crate::config::FileConfig;

pub struct FileRunner {
    cfg: FileConfig,
}

/// Where one invocation's files are, and what removes them afterwards.
struct Files {
    input: PathBuf,
    output: PathBuf,
    /// A private directory (removed with everything in it when dropped), or
    /// `None` when the configured paths are used as given.
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Files {
    fn drop(&mut self) {
        // Both files are removed after use, whatever happened (section 2).
        let _ = std::fs::remove_file(&self.input);
        let _ = std::fs::remove_file(&self.output);
    }
}

impl FileRunner {
    pub fn new(cfg: FileConfig) -> Self {
        FileRunner { cfg }
    }

    /// The configured paths when one invocation runs at a time; otherwise a
    /// fresh 0700 directory holding files of the same base names, so no two
    /// invocations ever share a path, whatever their execution ids.
    fn files(&self) -> Result<Files, InvokeError> {
        if !self.cfg.private_dirs {
            return Ok(Files {
                input: self.cfg.input_file.clone(),
                output: self.cfg.output_file.clone(),
                _dir: None,
            });
        }
        let parent = self
            .cfg
            .input_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("/tmp"));
        let dir = tempfile::Builder::new()
            .prefix("ember-file-")
            // Only the watchdog's user may list or open it (section 2).
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(|e| {
                InvokeError::new(
                    ErrorCode::FunctionError,
                    format!(
                        "could not make a private directory in {} for INPUT_FILE: {e}",
                        parent.display()
                    ),
                )
            })?;
        let input_name = base_name(&self.cfg.input_file, "input.json");
        let mut output_name = base_name(&self.cfg.output_file, "output.json");
        if output_name == input_name {
            output_name = format!("output-{output_name}");
        }
        Ok(Files {
            input: dir.path().join(input_name),
            output: dir.path().join(output_name),
            _dir: Some(dir),
        })
    }

    /// Runs until the child is done; the pipeline's deadline drops this
    /// future and the guard stops the process group.
    async fn run(&self, inv: Invocation) -> InvokeResult {
        let files = self.files()?;
        let (input, output) = (&files.input, &files.output);
        // A stale output from an earlier run must not pass for this one's.
        let _ = tokio::fs::remove_file(output).await;
        tokio::fs::write(input, inv.payload.as_bytes())
            .await
            .map_err(|e| {
                InvokeError::new(
                    ErrorCode::FunctionError,
                    format!("could not write INPUT_FILE {}: {e}", input.display()),
                )
            })?;

        let mut cmd = process::command(&self.cfg.process, Some(&inv));
        cmd.env(names::INPUT_FILE, input)
            .env(names::OUTPUT_FILE, output)
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
        let status = child.wait().await;
        let _ = tokio::time::timeout(PIPE_GRACE, stdout).await;
        let _ = tokio::time::timeout(PIPE_GRACE, stderr).await;
        let status = status.map_err(|e| {
            InvokeError::new(
                ErrorCode::FunctionError,
                format!("could not wait for the function: {e}"),
            )
        })?;
        if !status.success() {
            return Err(process::exit_error(status, &tail.lock().unwrap().text()));
        }
        let bytes = read_output(output, self.cfg.process.max_output).await?;
        if inv.payload.is_binary() {
            // Bytes in, bytes out (section 3): the file as it is.
            return Ok(Output::raw(bytes, process::OCTET_STREAM));
        }
        process::parse_output(bytes).map(Output::from)
    }
}

fn base_name(path: &Path, default: &str) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| default.to_owned())
}

/// Reads the output file: never through a symbolic link (the function could
/// point it at any file the watchdog can read, or at `/dev/zero`), only a
/// regular file, and at most `limit` bytes.
async fn read_output(path: &Path, limit: usize) -> Result<Vec<u8>, InvokeError> {
    let failed = |e: std::io::Error| {
        InvokeError::new(
            ErrorCode::FunctionError,
            format!("could not read OUTPUT_FILE {}: {e}", path.display()),
        )
    };
    let opened = tokio::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .await;
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InvokeError::new(
                ErrorCode::FunctionError,
                format!(
                    "OUTPUT_FILE {} was not created by the function",
                    path.display()
                ),
            ))
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(InvokeError::new(
                ErrorCode::FunctionError,
                format!(
                    "OUTPUT_FILE {} is a symbolic link, which is not followed; write the output to the file itself",
                    path.display()
                ),
            ))
        }
        Err(e) => return Err(failed(e)),
    };
    let meta = file.metadata().await.map_err(failed)?;
    if !meta.is_file() {
        return Err(InvokeError::new(
            ErrorCode::FunctionError,
            format!(
                "OUTPUT_FILE {} is not a regular file; write the output to a plain file",
                path.display()
            ),
        ));
    }
    if meta.len() > limit as u64 {
        return Err(InvokeError::output_too_large("OUTPUT_FILE", limit));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    // The file may still grow (a stray grandchild): read one byte past the
    // limit at most.
    file.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .await
        .map_err(failed)?;
    if out.len() > limit {
        return Err(InvokeError::output_too_large("OUTPUT_FILE", limit));
    }
    Ok(out)
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

    fn runner(private_dirs: bool) -> FileRunner {
        FileRunner::new(FileConfig {
            process: ProcessConfig {
                argv: vec!["true".into()],
                kill_grace: Duration::from_millis(100),
                max_output: 1024,
            },
            input_file: "/tmp/input.json".into(),
            output_file: "/tmp/out".into(),
            private_dirs,
        })
    }

    #[test]
    fn paths_are_private_only_when_several_run_at_once() {
        let f = runner(false).files().unwrap();
        assert_eq!(f.input, PathBuf::from("/tmp/input.json"));
        assert_eq!(f.output, PathBuf::from("/tmp/out"));
        std::mem::forget(f); // would remove /tmp/input.json

        let r = runner(true);
        let (a, b) = (r.files().unwrap(), r.files().unwrap());
        assert_ne!(a.input.parent(), b.input.parent());
        assert!(a.input.ends_with("input.json"));
        assert!(a.output.ends_with("out"));
        let mode = std::fs::metadata(a.input.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let dir = a.input.parent().unwrap().to_owned();
        drop(a);
        assert!(
            !dir.exists(),
            "the private directory goes with its invocation"
        );
    }

    #[tokio::test]
    async fn output_is_read_without_links_and_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_output(&link, 1024).await.unwrap_err();
        assert!(e.message.contains("symbolic link"), "{}", e.message);
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b' '; 2048]).unwrap();
        let e = read_output(&big, 1024).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::OutputTooLarge);
        let e = read_output(dir.path(), 1024).await.unwrap_err();
        assert!(e.message.contains("regular file"), "{}", e.message);
    }
}
