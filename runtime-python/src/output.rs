//! A handler's return value as the function's output (contract sections 3 and 9): a
//! JSON-serialisable value is written straight to JSON bytes; `bytes` answer
//! `application/octet-stream`; an `ember.Response` chooses its status, headers and
//! content type around one of those bodies.

use bytes::Bytes;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString};
use runtime_sdk::{ErrorCode, InvokeError, Json, Output};

use crate::convert;
use crate::embed::Runtime;

const OCTET_STREAM: &str = "application/octet-stream";

/// Why a return value is not an output: `OUTPUT_TOO_LARGE` or
/// `OUTPUT_SERIALIZATION_ERROR`, with the reason.
pub(crate) fn from_return(
    rt: &Runtime,
    obj: &Bound<'_, PyAny>,
    limit: usize,
) -> Result<Output, InvokeError> {
    let py = obj.py();
    if obj.is_instance(rt.response.bind(py)).unwrap_or(false) {
        return response(obj, limit);
    }
    body(obj, None, limit)
}

fn too_large(limit: usize) -> InvokeError {
    InvokeError::output_too_large("the return value", limit)
}

fn not_serialisable(e: impl std::fmt::Display) -> InvokeError {
    InvokeError::new(
        ErrorCode::OutputSerializationError,
        format!("the return value is not JSON-serialisable: {e}"),
    )
}

/// `bytes` as they are; a `str` with a `text/*` content type as text; anything
/// else as JSON.
fn body(
    obj: &Bound<'_, PyAny>,
    content_type: Option<&str>,
    limit: usize,
) -> Result<Output, InvokeError> {
    let raw = |bytes: &[u8]| {
        if bytes.len() > limit {
            return Err(too_large(limit));
        }
        Ok(Output::raw(
            Bytes::copy_from_slice(bytes),
            content_type.unwrap_or(OCTET_STREAM),
        ))
    };
    if let Ok(b) = obj.cast::<PyBytes>() {
        return raw(b.as_bytes());
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return raw(&b.to_vec());
    }
    if let (Some(ct), Ok(s)) = (content_type, obj.cast::<PyString>()) {
        if ct.starts_with("text/") {
            let text = s.to_str().map_err(not_serialisable)?;
            return raw(text.as_bytes());
        }
    }
    let mut out = Vec::new();
    match convert::py_to_json(obj, &mut out, limit) {
        Ok(()) => {
            let mut output = Output::json(Json::from_trusted(out));
            if let Some(ct) = content_type {
                output.headers.push(("content-type".into(), ct.into()));
            }
            Ok(output)
        }
        Err(e) if e.is_too_large() => Err(too_large(limit)),
        Err(e) => Err(not_serialisable(e)),
    }
}

fn response(obj: &Bound<'_, PyAny>, limit: usize) -> Result<Output, InvokeError> {
    let py = obj.py();
    let bad = |what: &str, e: PyErr| {
        InvokeError::new(
            ErrorCode::OutputSerializationError,
            format!("ember.Response {what}: {e}"),
        )
    };
    let status: u16 = obj
        .getattr(intern!(py, "status"))
        .and_then(|s| s.extract())
        .map_err(|e| bad("status", e))?;
    let content_type: Option<String> = obj
        .getattr(intern!(py, "content_type"))
        .and_then(|c| c.extract())
        .map_err(|e| bad("content_type", e))?;
    let headers = obj
        .getattr(intern!(py, "headers"))
        .map_err(|e| bad("headers", e))?;
    let headers = headers
        .cast::<PyDict>()
        .map_err(|e| bad("headers", e.into()))?;
    let mut pairs = Vec::with_capacity(headers.len());
    for (k, v) in headers.iter() {
        let name: String = k.extract().map_err(|e| bad("header name", e))?;
        let value: String = v.extract().map_err(|e| bad("header value", e))?;
        pairs.push((name.to_ascii_lowercase(), value));
    }
    let content_type = content_type.or_else(|| {
        pairs
            .iter()
            .find(|(n, _)| n == "content-type")
            .map(|(_, v)| v.clone())
    });
    let body_obj = obj
        .getattr(intern!(py, "body"))
        .map_err(|e| bad("body", e))?;
    let mut output = body(&body_obj, content_type.as_deref(), limit)?;
    output.status = Some(status);
    pairs.retain(|(n, _)| n != "content-type");
    output.headers.extend(pairs);
    Ok(output)
}
