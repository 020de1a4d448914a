//! Handler output to the watchdog's log (contract section 10).
//!
//! `print()` and `sys.stderr` writes arrive here through `ember._native.write`, logging
//! records through `ember._native.log`. Each worker thread knows which invocation it
//! runs (a Rust thread-local set around the call, cheaper than a Python
//! `threading.local` and readable without touching Python), so every line carries that
//! invocation's execution and trace ids. Lines go to tracing under the target
//! `function`, the same target the process runners use for their children's output.

use std::cell::RefCell;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyString;

/// The tracing target of everything a function writes.
pub const TARGET: &str = "function";

struct Ids {
    execution_id: Arc<str>,
    trace_id: Option<String>,
}

thread_local! {
    static CURRENT: RefCell<Option<Ids>> = const { RefCell::new(None) };
    /// Text after the last newline, per stream, until its line ends or the call ends.
    static PARTIAL: RefCell<[String; 2]> = const { RefCell::new([String::new(), String::new()]) };
}

/// Which stream a line came from: the `stream` field of its log event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn from_fd(fd: i32) -> Stream {
        if fd == 2 {
            Stream::Stderr
        } else {
            Stream::Stdout
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Marks this thread as running an invocation, until [`end_call`].
pub(crate) fn begin_call(execution_id: &Arc<str>, trace_id: Option<&str>) {
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Ids {
            execution_id: Arc::clone(execution_id),
            trace_id: trace_id.map(str::to_owned),
        })
    });
}

/// Sends what is left of unterminated lines, still under the ending invocation's ids.
pub(crate) fn end_call() {
    for stream in [Stream::Stdout, Stream::Stderr] {
        let rest = PARTIAL.with(|p| std::mem::take(&mut p.borrow_mut()[stream.index()]));
        if !rest.is_empty() {
            emit_line(stream, rest.strip_suffix('\r').unwrap_or(&rest));
        }
    }
    CURRENT.with(|c| *c.borrow_mut() = None);
}

/// Appends text to this thread's buffer for `stream` and sends each completed line.
pub(crate) fn write(stream: Stream, text: &str) {
    let mut rest = text;
    while let Some(pos) = rest.find('\n') {
        let piece = &rest[..pos];
        let buffered = PARTIAL.with(|p| {
            let mut p = p.borrow_mut();
            let buf = &mut p[stream.index()];
            (!buf.is_empty()).then(|| {
                buf.push_str(piece);
                std::mem::take(buf)
            })
        });
        let line = buffered.as_deref().unwrap_or(piece);
        emit_line(stream, line.strip_suffix('\r').unwrap_or(line));
        rest = &rest[pos + 1..];
    }
    // What follows the last newline is an unfinished line: keep it.
    if !rest.is_empty() {
        PARTIAL.with(|p| p.borrow_mut()[stream.index()].push_str(rest));
    }
}

fn emit_line(stream: Stream, line: &str) {
    CURRENT.with(|c| {
        let c = c.borrow();
        let execution_id = c.as_ref().map(|i| &*i.execution_id);
        let trace_id = c.as_ref().and_then(|i| i.trace_id.as_deref());
        tracing::info!(target: TARGET, execution_id, trace_id, stream = stream.name(), "{line}");
    });
}

/// Sends one logging record at the level that matches its Python level.
pub(crate) fn record(
    levelno: i32,
    logger: &str,
    message: &str,
    execution_id: Option<&str>,
    trace_id: Option<&str>,
) {
    CURRENT.with(|c| {
        let c = c.borrow();
        // A record from context.logger names its invocation; any other record logged on
        // a worker thread belongs to the invocation that thread is running.
        let (execution_id, trace_id) = match execution_id {
            Some(id) => (Some(id), trace_id),
            None => (
                c.as_ref().map(|i| &*i.execution_id),
                c.as_ref().and_then(|i| i.trace_id.as_deref()),
            ),
        };
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(target: TARGET, $level, execution_id, trace_id, logger, "{message}")
            };
        }
        match levelno {
            40.. => event!(tracing::Level::ERROR),
            30..=39 => event!(tracing::Level::WARN),
            20..=29 => event!(tracing::Level::INFO),
            10..=19 => event!(tracing::Level::DEBUG),
            _ => event!(tracing::Level::TRACE),
        }
    });
}

/// The Python logging level that lets through what the watchdog's subscriber would
/// keep for the `function` target, so records it would drop are never formatted.
pub(crate) fn python_level() -> i32 {
    use tracing::Level;
    if tracing::enabled!(target: TARGET, Level::TRACE) {
        5
    } else if tracing::enabled!(target: TARGET, Level::DEBUG) {
        10
    } else if tracing::enabled!(target: TARGET, Level::INFO) {
        20
    } else if tracing::enabled!(target: TARGET, Level::WARN) {
        30
    } else {
        40
    }
}

/// `ember._native`: the two functions the Python side of the runtime calls.
pub(crate) fn native_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let m = PyModule::new(py, "ember._native")?;
    m.add_function(wrap_pyfunction!(native_write, &m)?)?;
    m.add_function(wrap_pyfunction!(native_log, &m)?)?;
    Ok(m)
}

/// `write(stream, text)`: 1 is stdout, 2 stderr.
#[pyfunction(name = "write")]
fn native_write(stream: i32, text: &Bound<'_, PyString>) {
    // Lossy: a lone surrogate in a print() must not raise inside the handler.
    write(Stream::from_fd(stream), &text.to_string_lossy());
}

/// `log(levelno, logger_name, message, execution_id, trace_id)`.
#[pyfunction(name = "log")]
#[pyo3(signature = (levelno, logger, message, execution_id=None, trace_id=None))]
fn native_log(
    levelno: i32,
    logger: &Bound<'_, PyString>,
    message: &Bound<'_, PyString>,
    execution_id: Option<&Bound<'_, PyString>>,
    trace_id: Option<&Bound<'_, PyString>>,
) {
    let execution_id = execution_id.map(|s| s.to_string_lossy());
    let trace_id = trace_id.map(|s| s.to_string_lossy());
    record(
        levelno,
        &logger.to_string_lossy(),
        &message.to_string_lossy(),
        execution_id.as_deref(),
        trace_id.as_deref(),
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The messages logged while `f` runs, one per event, with their fields.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn writes_become_one_event_per_line_with_the_ids() {
        let lines = logged(|| {
            begin_call(&"e1".into(), Some("t1"));
            write(Stream::Stdout, "partial ");
            write(Stream::Stdout, "line\nsecond\r\nthi");
            write(Stream::Stderr, "err\n");
            write(Stream::Stdout, "rd");
            end_call();
            write(Stream::Stdout, "after\n");
        });
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(
            lines[0].ends_with(r#"partial line execution_id="e1" trace_id="t1" stream="stdout""#),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(" second execution_id=\"e1\""),
            "CR stripped: {}",
            lines[1]
        );
        assert!(
            lines[2].contains(" err execution_id=\"e1\"") && lines[2].contains("stream=\"stderr\""),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains(" third execution_id=\"e1\""),
            "unfinished line sent at the end: {}",
            lines[3]
        );
        assert!(
            lines[4].ends_with(r#"after stream="stdout""#),
            "no ids outside a call: {}",
            lines[4]
        );
    }

    #[test]
    fn empty_lines_are_kept_and_records_map_levels() {
        let lines = logged(|| {
            begin_call(&"e2".into(), None);
            write(Stream::Stdout, "\n\nx\n");
            record(40, "app", "bad", None, None);
            record(30, "app", "careful", Some("other"), Some("t9"));
            record(10, "app", "detail", None, None);
            end_call();
        });
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(
            lines[0].contains(r#"function:  execution_id="e2""#),
            "{}",
            lines[0]
        );
        assert!(
            lines[3].starts_with("ERROR")
                && lines[3].contains("bad execution_id=\"e2\" logger=\"app\""),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].starts_with(" WARN")
                && lines[4].contains("careful execution_id=\"other\" trace_id=\"t9\""),
            "{}",
            lines[4]
        );
        assert!(lines[5].starts_with("DEBUG"), "{}", lines[5]);
    }
}
