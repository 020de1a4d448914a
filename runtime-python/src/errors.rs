//! Python exceptions to contract errors (section 7), logged once with their traceback.

use pyo3::prelude::*;
use runtime_sdk::{ErrorCode, Invocation, InvokeError};

use crate::embed::Runtime;

/// The handler raised: `ember.FunctionError` keeps its code, anything else is
/// `HANDLER_ERROR` with `<Type>: <message>`. The traceback goes to the log, tied to the
/// invocation, and never to the caller.
pub(crate) fn handler_error(
    py: Python<'_>,
    rt: &Runtime,
    err: &PyErr,
    inv: &Invocation,
    stopped_by_deadline: bool,
) -> InvokeError {
    let (code, message) = describe(py, rt, err);
    let execution_id = &*inv.execution_id;
    let trace_id = inv.trace_id.as_deref();
    let code = match code {
        Some(code) => {
            // A chosen failure, not a crash: no traceback.
            tracing::warn!(
                execution_id,
                trace_id,
                code = code.as_str(),
                "handler failed: {message}"
            );
            code
        }
        None => {
            let traceback = traceback(py, rt, err);
            if stopped_by_deadline {
                // The caller already has TIMEOUT; this only says where the handler was.
                tracing::warn!(execution_id, trace_id, %traceback, "handler stopped at its deadline: {message}");
            } else {
                tracing::error!(execution_id, trace_id, %traceback, "handler raised {message}");
            }
            ErrorCode::HandlerError
        }
    };
    InvokeError::new(code, message)
}

/// The module or function could not be loaded: `HANDLER_LOAD_ERROR` with
/// `<Type>: <message>`, the traceback logged (it points into the user's module when the
/// import itself raised).
pub(crate) fn load_error(py: Python<'_>, rt: Option<&Runtime>, err: &PyErr) -> InvokeError {
    let (message, traceback) = match rt {
        Some(rt) => (describe(py, rt, err).1, traceback(py, rt, err)),
        None => (fallback_message(py, err), String::new()),
    };
    tracing::error!(%traceback, "python handler could not be loaded: {message}");
    InvokeError::new(ErrorCode::HandlerLoadError, message)
}

/// A reload (`RELOAD`) failed: like [`load_error`], but the previous handler keeps
/// serving, and the log says so.
pub(crate) fn reload_error(py: Python<'_>, rt: &Runtime, err: &PyErr) -> InvokeError {
    let message = describe(py, rt, err).1;
    let traceback = traceback(py, rt, err);
    tracing::error!(%traceback, "python handler could not be reloaded, the previous code keeps serving: {message}");
    InvokeError::new(ErrorCode::HandlerLoadError, message)
}

fn describe(py: Python<'_>, rt: &Runtime, err: &PyErr) -> (Option<ErrorCode>, String) {
    let described = rt
        .describe
        .bind(py)
        .call1((err.value(py),))
        .and_then(|t| t.extract::<(Option<String>, String)>());
    match described {
        Ok((code, message)) => (code.as_deref().map(ErrorCode::parse), message),
        Err(_) => (None, fallback_message(py, err)),
    }
}

fn traceback(py: Python<'_>, rt: &Runtime, err: &PyErr) -> String {
    rt.format_traceback
        .bind(py)
        .call1((err.value(py), err.traceback(py)))
        .and_then(|t| t.extract::<String>())
        .unwrap_or_else(|_| fallback_message(py, err))
}

/// When the `ember` helpers themselves are unusable: pyo3's own `Type: message`.
fn fallback_message(py: Python<'_>, err: &PyErr) -> String {
    let _ = py;
    err.to_string().replace('\n', " ")
}
