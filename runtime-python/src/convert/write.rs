//! Python objects to compact JSON bytes, written as the value is walked.

use std::fmt;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Nesting limit of the walk: a list that contains itself must end as an error, not a
/// stack overflow (512 levels fit a 2 MiB thread stack even in a debug build).
const MAX_DEPTH: usize = 512;

/// Appends `obj` to `out` as compact JSON: `str`, `dict` with `str` keys, `list`, `tuple`,
/// `None`, `bool`, `int` (exact, any size), finite `float` (shortest spelling that reads
/// back the same, `1.0` staying `1.0`), subclasses included.
///
/// `out` never grows past `limit` bytes (its length before the call included): a value
/// that would is an error for which [`OutputError::is_too_large`] holds, found before
/// the bytes that would cross the limit are copied. On any error `out` is truncated back
/// to its length before the call.
pub fn py_to_json(
    obj: &Bound<'_, PyAny>,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), OutputError> {
    let start = out.len();
    let mut writer = Writer { out, limit };
    let result = writer.value(obj, 0);
    if result.is_err() {
        writer.out.truncate(start);
    }
    result
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
}

impl Writer<'_> {
    fn value(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> Result<(), OutputError> {
        if depth > MAX_DEPTH {
            return Err(OutputError::new(format!(
                "nesting deeper than {MAX_DEPTH} levels (a container that contains itself?)"
            )));
        }
        // Most common types first; each check is a flag or pointer test, subclasses included.
        if let Ok(s) = obj.cast::<PyString>() {
            return self.string(s);
        }
        if let Ok(dict) = obj.cast::<PyDict>() {
            return self.dict(dict, depth);
        }
        if let Ok(list) = obj.cast::<PyList>() {
            return self.array(list.iter(), depth);
        }
        if obj.is_none() {
            return self.push(b"null");
        }
        // bool is a subclass of int: test it first.
        if let Ok(b) = obj.cast::<PyBool>() {
            return self.push(if b.is_true() { b"true" } else { b"false" });
        }
        if obj.cast::<PyInt>().is_ok() {
            return self.int(obj);
        }
        if let Ok(f) = obj.cast::<PyFloat>() {
            return self.float(f.value());
        }
        if let Ok(tuple) = obj.cast::<PyTuple>() {
            return self.array(tuple.iter(), depth);
        }
        Err(OutputError::new(format!(
            "Object of type {} is not JSON serializable",
            type_name(obj)
        )))
    }

    fn array<'py>(
        &mut self,
        items: impl Iterator<Item = Bound<'py, PyAny>>,
        depth: usize,
    ) -> Result<(), OutputError> {
        self.push(b"[")?;
        for (i, item) in items.enumerate() {
            if i > 0 {
                self.push(b",")?;
            }
            self.value(&item, depth + 1)
                .map_err(|e| e.at(Segment::Index(i)))?;
        }
        self.push(b"]")
    }

    fn dict(&mut self, dict: &Bound<'_, PyDict>, depth: usize) -> Result<(), OutputError> {
        self.push(b"{")?;
        if dict.is_exact_instance_of::<PyDict>() {
            for (i, (k, v)) in dict.iter().enumerate() {
                self.entry(i, &k, &v, depth)?;
            }
        } else {
            // A subclass keeps its own order (an OrderedDict after move_to_end), which
            // only its items() knows; json.dumps asks it too.
            let items = dict
                .call_method0(intern!(dict.py(), "items"))
                .and_then(|items| items.try_iter())
                .map_err(|e| OutputError::new(format!("dict items could not be read: {e}")))?;
            for (i, item) in items.enumerate() {
                let (k, v) = item
                    .and_then(|item| item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>())
                    .map_err(|e| OutputError::new(format!("dict items could not be read: {e}")))?;
                self.entry(i, &k, &v, depth)?;
            }
        }
        self.push(b"}")
    }

    fn entry(
        &mut self,
        i: usize,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        depth: usize,
    ) -> Result<(), OutputError> {
        let Ok(key) = k.cast::<PyString>() else {
            return Err(OutputError::new(format!(
                "dict key {} ({}) is not a str",
                short_repr(k),
                type_name(k)
            )));
        };
        let key = utf8(key)?;
        if i > 0 {
            self.push(b",")?;
        }
        self.escaped(key)?;
        self.push(b":")?;
        self.value(v, depth + 1)
            .map_err(|e| e.at(Segment::Key(key.to_owned())))
    }

    fn string(&mut self, s: &Bound<'_, PyString>) -> Result<(), OutputError> {
        // Each character takes at least one byte: a str too long for the limit is refused
        // before Python makes (and caches on the str) the UTF-8 copy of a non-ASCII one.
        // SAFETY: `s` is a str; the macro reads its length field.
        let chars = unsafe { ffi::PyUnicode_GET_LENGTH(s.as_ptr()) } as usize;
        self.room(chars.saturating_add(2))?;
        self.escaped(utf8(s)?)
    }

    fn escaped(&mut self, text: &str) -> Result<(), OutputError> {
        let bytes = text.as_bytes();
        let Some(first) = bytes.iter().position(|&b| ESCAPES[usize::from(b)] != 0) else {
            // Nothing to escape, the common case: one check, one copy.
            self.room(bytes.len() + 2)?;
            self.out.push(b'"');
            self.out.extend_from_slice(bytes);
            self.out.push(b'"');
            return Ok(());
        };
        self.push(b"\"")?;
        let mut run = 0;
        for (i, &b) in bytes.iter().enumerate().skip(first) {
            let escape = ESCAPES[usize::from(b)];
            if escape == 0 {
                continue;
            }
            self.push(&bytes[run..i])?;
            if escape == b'u' {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.push(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ])?;
            } else {
                self.push(&[b'\\', escape])?;
            }
            run = i + 1;
        }
        self.push(&bytes[run..])?;
        self.push(b"\"")
    }

    fn int(&mut self, obj: &Bound<'_, PyAny>) -> Result<(), OutputError> {
        let mut overflow = 0;
        // SAFETY: obj is an int (checked by the caller); the call only reads it.
        let small = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
        if overflow == 0 {
            if small == -1 {
                if let Some(e) = PyErr::take(obj.py()) {
                    return Err(OutputError::new(format!("int could not be read: {e}")));
                }
            }
            return self.push(itoa::Buffer::new().format(small).as_bytes());
        }
        // Beyond 64 bits: Python's own decimal digits, so the number is exact.
        // PyNumber_ToBase formats the int value, whatever __str__ a subclass (an IntEnum)
        // defines.
        // SAFETY: obj is an int; the result is a new reference or NULL with an exception set.
        let digits = unsafe {
            Bound::from_owned_ptr_or_err(obj.py(), ffi::PyNumber_ToBase(obj.as_ptr(), 10))
        }
        .and_then(|s| s.cast_into::<PyString>().map_err(Into::into))
        .map_err(|e| OutputError::new(format!("int could not be formatted: {e}")))?;
        let text = utf8(&digits)?;
        self.push(text.as_bytes())
    }

    fn float(&mut self, v: f64) -> Result<(), OutputError> {
        if !v.is_finite() {
            // Python's spelling, as the handler's author wrote it.
            let text = if v.is_nan() {
                "nan"
            } else if v > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            return Err(OutputError::new(format!(
                "float {text} is not a JSON number"
            )));
        }
        // ryu, as serde_json: the shortest digits that read back as the same double,
        // and always a fraction or exponent (1.0, 1e300), so a float stays a float.
        self.push(ryu::Buffer::new().format_finite(v).as_bytes())
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        self.room(bytes.len())?;
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    /// Makes room for `n` more bytes, or fails if they would cross the limit.
    fn room(&mut self, n: usize) -> Result<(), OutputError> {
        let needed = self.out.len().saturating_add(n);
        if needed > self.limit {
            return Err(OutputError::too_large(self.limit));
        }
        if needed > self.out.capacity() {
            // Geometric growth, capped at the limit, so even a value found too large late
            // never holds more than `limit` bytes.
            let target = needed
                .max(self.out.capacity().saturating_mul(2))
                .max(256)
                .min(self.limit);
            self.out.reserve_exact(target - self.out.len());
        }
        Ok(())
    }
}

/// For each byte, what follows the backslash that escapes it (`u`: `\u00XX`), or 0.
const ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

fn utf8<'a>(s: &'a Bound<'_, PyString>) -> Result<&'a str, OutputError> {
    s.to_str().map_err(|_| {
        OutputError::new(format!(
            "str {} is not valid Unicode (it has a lone surrogate)",
            short_repr(s.as_any())
        ))
    })
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

/// Why a return value cannot be written as JSON: it is not JSON (`what`, and where in it:
/// `$.items[2]`), or it is larger than the limit given to [`py_to_json`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputError {
    kind: Kind,
    /// Innermost first, as the walk unwinds; displayed outermost first.
    path: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    NotJson(String),
    TooLarge(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl OutputError {
    pub(super) fn new(what: impl Into<String>) -> Self {
        OutputError {
            kind: Kind::NotJson(what.into()),
            path: Vec::new(),
        }
    }

    /// The JSON would be longer than `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        OutputError {
            kind: Kind::TooLarge(limit),
            path: Vec::new(),
        }
    }

    /// True for the size limit (`OUTPUT_TOO_LARGE`), false for a value that is not JSON
    /// (`OUTPUT_SERIALIZATION_ERROR`).
    pub fn is_too_large(&self) -> bool {
        matches!(self.kind, Kind::TooLarge(_))
    }

    fn at(mut self, seg: Segment) -> Self {
        // Where the limit was crossed says nothing about the value: no path for it.
        if !self.is_too_large() {
            self.path.push(seg);
        }
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
                Segment::Key(k) => {
                    let quoted = serde_json::to_string(k).expect("a str is JSON");
                    out.push_str(&format!("[{quoted}]"));
                }
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
        match &self.kind {
            Kind::TooLarge(limit) => {
                write!(f, "the return value is larger than {limit} bytes as JSON")
            }
            Kind::NotJson(what) if self.path.is_empty() => {
                write!(f, "{what} (the return value itself)")
            }
            Kind::NotJson(what) => write!(f, "{what} (at {} in the return value)", self.path()),
        }
    }
}

impl std::error::Error for OutputError {}
