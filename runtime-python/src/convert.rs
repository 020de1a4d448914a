//! JSON bytes to Python objects and back, with no `serde_json::Value` in between.
//!
//! [`json_to_py`] parses the request body and builds the objects as it goes;
//! [`py_to_json`] writes a handler's return value as compact JSON as it walks it. Both
//! beat a text round trip through `json.loads`/`json.dumps` (figures in `README.md`, from
//! `benches/convert.rs`), and neither needs serde_json's `arbitrary_precision` or
//! `preserve_order`: integers of any size cross digit for digit, and keys keep their
//! order, because no tree sits between the bytes and the objects.
//!
//! Input rules are `json.loads`' (duplicate keys: the last value wins, at the first key's
//! place; a lone `\ud800` escape becomes a str holding that surrogate; `1e400` is `inf`),
//! but strict where it is lenient: no `NaN`/`Infinity`, and nesting is limited to 128
//! levels, as the watchdog limits request bodies.
//!
//! Output rules, stricter than `json.dumps` where that would lose or invent data:
//! dict keys must be `str`; `nan` and `inf` are rejected (`json.dumps` writes
//! `NaN`, which is not JSON); a str with a lone surrogate is rejected; tuples become
//! arrays; `bool` is checked before `int`.

mod parse;
mod write;

pub use parse::json_to_py;
pub use write::{py_to_json, OutputError};

/// The text round trip the direct path is measured against: `json.loads` of the bytes
/// decoded as a str, and `json.dumps` (compact, UTF-8) encoded back to bytes.
/// Kept for `benches/convert.rs`; the runtime does not use it.
#[doc(hidden)]
pub mod text {
    use pyo3::exceptions::PyValueError;
    use pyo3::intern;
    use pyo3::prelude::*;
    use pyo3::sync::PyOnceLock;
    use pyo3::types::{PyDict, PyString};

    pub fn json_to_py<'py>(py: Python<'py>, json: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let text = std::str::from_utf8(json).map_err(|e| PyValueError::new_err(e.to_string()))?;
        py.import(intern!(py, "json"))?
            .getattr(intern!(py, "loads"))?
            .call1((PyString::new(py, text),))
    }

    pub fn py_to_json(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
        // One encoder, made once, as json.dumps keeps one for its default arguments; made
        // per call, its construction would dominate a small payload.
        static ENCODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let py = obj.py();
        let encode = ENCODE.get_or_try_init(py, || -> PyResult<_> {
            let kwargs = PyDict::new(py);
            kwargs.set_item("ensure_ascii", false)?;
            kwargs.set_item("allow_nan", false)?;
            kwargs.set_item("separators", (",", ":"))?;
            let encoder = py
                .import("json")?
                .getattr("JSONEncoder")?
                .call((), Some(&kwargs))?;
            Ok(encoder.getattr("encode")?.unbind())
        })?;
        let text = encode.bind(py).call1((obj,))?;
        Ok(text.cast::<PyString>()?.to_str()?.as_bytes().to_vec())
    }
}
