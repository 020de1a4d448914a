//! JSON values to Python objects and back, by walking both trees directly.
//!
//! The walk beats a text round trip through `json.loads`/`json.dumps` (figures in
//! `README.md`, from `benches/convert.rs`), and it keeps what the workspace's
//! `serde_json` keeps: key order (`preserve_order`) and integers of any size
//! (`arbitrary_precision`), which become Python `int`s and come back digit for digit.
//!
//! Output rules, stricter than `json.dumps` where that would lose or invent data:
//! dict keys must be `str`; `nan` and `inf` are rejected (`json.dumps` writes
//! `NaN`, which is not JSON); tuples become arrays; `bool` is checked before `int`.

use std::ffi::CString;
use std::fmt;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::{ffi, intern};
use serde_json::{Map, Number, Value};

/// Nesting limit of the output walk: a list that contains itself must end as an error,
/// not a stack overflow (512 levels fit a 2 MiB thread stack even in a debug build;
/// requests are limited to 128 levels by serde_json already).
const MAX_DEPTH: usize = 512;

/// Builds the Python object for a JSON value: `dict` (keys in order), `list`, `str`,
/// `int` (exact, any size), `float`, `bool` or `None`.
pub fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => number_to_py(py, n)?,
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let len = ffi::Py_ssize_t::try_from(items.len())
                .map_err(|_| PyValueError::new_err("array too long"))?;
            // SAFETY: PyList_New returns a new reference (or NULL with an exception set);
            // every slot is filled exactly once below, and a list dropped half-filled is
            // fine because list deallocation skips NULL slots.
            let list = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyList_New(len))? };
            for (i, item) in items.iter().enumerate() {
                let obj = to_py(py, item)?;
                unsafe {
                    ffi::PyList_SET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t, obj.into_ptr())
                };
            }
            list
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(PyString::new(py, k), to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

fn number_to_py<'py>(py: Python<'py>, n: &Number) -> PyResult<Bound<'py, PyAny>> {
    let text = n.as_str();
    if !text.contains(['.', 'e', 'E']) {
        if let Ok(i) = text.parse::<i64>() {
            return Ok(i.into_pyobject(py)?.into_any());
        }
        // Beyond 64 bits: let Python parse the digits, so the int is exact.
        let digits = CString::new(text).map_err(|e| PyValueError::new_err(e.to_string()))?;
        // SAFETY: a NUL-terminated string; the result is a new reference or NULL with an
        // exception set (which from_owned_ptr_or_err turns into the PyErr).
        return unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyLong_FromString(digits.as_ptr(), std::ptr::null_mut(), 10),
            )
        };
    }
    // Rust's parser gives the correctly rounded double, as Python's float() does;
    // out-of-range literals such as 1e400 become inf, as in Python.
    let f: f64 = text
        .parse()
        .map_err(|_| PyValueError::new_err(format!("not a number: {text}")))?;
    Ok(PyFloat::new(py, f).into_any())
}

/// Why a return value is not JSON, and where in it: `$.items[2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputError {
    what: String,
    /// Innermost first, as the walk unwinds; displayed outermost first.
    path: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl OutputError {
    fn new(what: impl Into<String>) -> Self {
        OutputError {
            what: what.into(),
            path: Vec::new(),
        }
    }

    fn at(mut self, seg: Segment) -> Self {
        self.path.push(seg);
        self
    }

    /// `$`, `$.a.b[3]`, `$["key with spaces"]`.
    pub fn path(&self) -> String {
        let mut out = String::from("$");
        for seg in self.path.iter().rev() {
            match seg {
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
                Segment::Key(k) if is_plain_key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Segment::Key(k) => out.push_str(&format!("[{}]", Value::String(k.clone()))),
            }
        }
        out
    }
}

fn is_plain_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_')
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{} (the return value itself)", self.what)
        } else {
            write!(f, "{} (at {} in the return value)", self.what, self.path())
        }
    }
}

impl std::error::Error for OutputError {}

/// Walks a handler's return value back into JSON.
pub fn from_py(obj: &Bound<'_, PyAny>) -> Result<Value, OutputError> {
    walk(obj, 0)
}

fn walk(obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value, OutputError> {
    if depth > MAX_DEPTH {
        return Err(OutputError::new(format!(
            "nesting deeper than {MAX_DEPTH} levels (a container that contains itself?)"
        )));
    }
    // Most common types first; each check is a flag or pointer test, subclasses included.
    if let Ok(s) = obj.cast::<PyString>() {
        return string(s).map(Value::String);
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut map = Map::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(OutputError::new(format!(
                    "dict key {} ({}) is not a str",
                    short_repr(&k),
                    type_name(&k)
                )));
            };
            let key = string(key)?;
            match walk(&v, depth + 1) {
                Ok(value) => {
                    map.insert(key, value);
                }
                Err(e) => return Err(e.at(Segment::Key(key))),
            }
        }
        return Ok(Value::Object(map));
    }
    if let Ok(list) = obj.cast::<PyList>() {
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            out.push(walk(&item, depth + 1).map_err(|e| e.at(Segment::Index(i)))?);
        }
        return Ok(Value::Array(out));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool is a subclass of int: test it first.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.cast::<PyInt>().is_ok() {
        return int(obj);
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Number::from_f64(v).map(Value::Number).ok_or_else(|| {
            // Python's spelling, as the handler's author wrote it.
            let text = if v.is_nan() {
                "nan"
            } else if v > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            OutputError::new(format!("float {text} is not a JSON number"))
        });
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        let mut out = Vec::with_capacity(tuple.len());
        for (i, item) in tuple.iter().enumerate() {
            out.push(walk(&item, depth + 1).map_err(|e| e.at(Segment::Index(i)))?);
        }
        return Ok(Value::Array(out));
    }
    Err(OutputError::new(format!(
        "Object of type {} is not JSON serializable",
        type_name(obj)
    )))
}

fn string(s: &Bound<'_, PyString>) -> Result<String, OutputError> {
    s.to_str().map(str::to_owned).map_err(|_| {
        OutputError::new(format!(
            "str {} is not valid Unicode (it has a lone surrogate)",
            short_repr(s.as_any())
        ))
    })
}

fn int(obj: &Bound<'_, PyAny>) -> Result<Value, OutputError> {
    let mut overflow = 0;
    // SAFETY: obj is an int (checked by the caller); the call only reads it.
    let small = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
    if overflow == 0 {
        if small == -1 {
            if let Some(e) = PyErr::take(obj.py()) {
                return Err(OutputError::new(format!("int could not be read: {e}")));
            }
        }
        return Ok(Value::Number(small.into()));
    }
    // Beyond 64 bits: Python's own decimal digits, so the number is exact. PyNumber_ToBase
    // formats the int value, whatever __str__ a subclass (an IntEnum) defines.
    let digits =
        unsafe { Bound::from_owned_ptr_or_err(obj.py(), ffi::PyNumber_ToBase(obj.as_ptr(), 10)) }
            .and_then(|s| s.cast_into::<PyString>().map_err(Into::into))
            .and_then(|s| s.to_str().map(str::to_owned))
            .map_err(|e| OutputError::new(format!("int could not be formatted: {e}")))?;
    serde_json::from_str::<Number>(&digits)
        .map(Value::Number)
        .map_err(|e| OutputError::new(format!("int {digits} is not a JSON number: {e}")))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn short_repr(obj: &Bound<'_, PyAny>) -> String {
    let text = obj
        .repr()
        .map(|r| r.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into());
    if text.chars().count() > 40 {
        let cut: String = text.chars().take(40).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// The text round trip the walk is measured against: `json.loads` and `json.dumps`.
/// Kept for `benches/convert.rs`; the runtime does not use it.
#[doc(hidden)]
pub mod text {
    use super::*;

    pub fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
        let text =
            serde_json::to_string(value).map_err(|e| PyValueError::new_err(e.to_string()))?;
        py.import(intern!(py, "json"))?
            .getattr(intern!(py, "loads"))?
            .call1((text,))
    }

    pub fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
        let py = obj.py();
        let text = py
            .import(intern!(py, "json"))?
            .getattr(intern!(py, "dumps"))?
            .call1((obj,))?;
        serde_json::from_str(text.cast::<PyString>()?.to_str()?)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }
}
