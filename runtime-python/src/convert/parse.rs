//! JSON bytes to Python objects in one pass: a strict RFC 8259 parser whose only output
//! is the objects themselves.

use std::cell::RefCell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::Range;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyString};

/// Nesting limit of the parse. The watchdog refuses deeper request bodies already
/// (serde_json's limit); here it bounds the recursion, so a 100,000-level body is an
/// error, not a stack overflow.
const MAX_DEPTH: usize = 128;

/// Builds the Python object for a JSON document: `dict` (keys in document order; a
/// repeated key keeps its first place and its last value, as with `json.loads`), `list`,
/// `str`, `int` (exact, any size), `float` (`1e400` is `inf`, as in Python), `bool` or
/// `None`.
///
/// Strict: anything but one value between optional whitespace is a `ValueError` giving
/// the byte offset (`invalid JSON at byte 12: ...`), as is nesting deeper than 128
/// levels and bytes that are not UTF-8. A `\uXXXX` escape of a lone surrogate gives a
/// `str` holding it, as `json.loads` does.
pub fn json_to_py<'py>(py: Python<'py>, json: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    KEYS.with(|keys| match keys.try_borrow_mut() {
        Ok(mut keys) => parse(py, json, &mut keys),
        // Only if building a dict ran Python code (a collection, a finalizer) that
        // parses in turn: that document gets a memo of its own.
        Err(_) => parse(py, json, &mut KeyCache::default()),
    })
}

fn parse<'py>(py: Python<'py>, json: &[u8], keys: &mut KeyCache) -> PyResult<Bound<'py, PyAny>> {
    let mut parser = Parser {
        py,
        json,
        pos: 0,
        scratch: Vec::new(),
        items: Vec::new(),
        keys,
    };
    parser.skip_ws();
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos < json.len() {
        return Err(parser.unexpected("the end of the document"));
    }
    Ok(value)
}

struct Parser<'py, 'a, 'k> {
    py: Python<'py>,
    json: &'a [u8],
    pos: usize,
    /// A string with escapes, unescaped (lone surrogates as their three-byte generalised
    /// UTF-8 form, which Python's `surrogatepass` decodes); also a big int's digits.
    scratch: Vec<u8>,
    /// Items of the arrays being parsed, innermost last: a list is made once its length
    /// is known, and filled without resizing. Shared, so nesting allocates nothing.
    items: Vec<Bound<'py, PyAny>>,
    keys: &'k mut KeyCache,
}

impl<'py, 'a> Parser<'py, 'a, '_> {
    fn value(&mut self, depth: usize) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                Ok(self.string()?.into_any())
            }
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b't') => {
                self.literal(b"true")?;
                Ok(PyBool::new(py, true).to_owned().into_any())
            }
            Some(b'f') => {
                self.literal(b"false")?;
                Ok(PyBool::new(py, false).to_owned().into_any())
            }
            Some(b'n') => {
                self.literal(b"null")?;
                Ok(py.None().into_bound(py))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.unexpected("a value")),
        }
    }

    fn object(&mut self, depth: usize) -> PyResult<Bound<'py, PyAny>> {
        self.check_depth(depth)?;
        self.pos += 1;
        let dict = PyDict::new(self.py);
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(dict.into_any());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.unexpected("'\"' (a key)"));
            }
            self.pos += 1;
            let key = self.key()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.unexpected("':'"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth)?;
            dict.set_item(key, value)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(dict.into_any());
                }
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> PyResult<Bound<'py, PyAny>> {
        self.check_depth(depth)?;
        self.pos += 1;
        let base = self.items.len();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                let item = self.value(depth)?;
                self.items.push(item);
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                    }
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.unexpected("',' or ']'")),
                }
            }
        }
        // A Vec never holds more than isize::MAX bytes, so its length fits.
        let len = (self.items.len() - base) as ffi::Py_ssize_t;
        // SAFETY: PyList_New returns a new reference, or NULL with an exception set, which
        // from_owned_ptr_or_err turns into the PyErr.
        let list = unsafe { Bound::from_owned_ptr_or_err(self.py, ffi::PyList_New(len))? };
        for (i, item) in self.items.drain(base..).enumerate() {
            // SAFETY: `list` is a fresh list of `len` empty slots, each filled exactly
            // once; SET_ITEM steals the reference that into_ptr hands over.
            unsafe { ffi::PyList_SET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr()) };
        }
        Ok(list)
    }

    /// After the opening quote.
    fn string(&mut self) -> PyResult<Bound<'py, PyString>> {
        let (run, ascii) = self.run()?;
        if self.json[self.pos] == b'"' {
            // No escape: the common case, one slice of the input.
            self.pos += 1;
            let text = self.text(run, ascii)?;
            return self.new_str(text, ascii);
        }
        self.escaped_from(run, ascii)
    }

    /// A dict key, after the opening quote: `string`, but the same key spelt the same
    /// way is the same str object, made (and hashed, by the first dict it goes into)
    /// once. json.loads keeps such a memo too; records repeat their keys.
    fn key(&mut self) -> PyResult<Bound<'py, PyString>> {
        let (run, ascii) = self.run()?;
        if self.json[self.pos] != b'"' {
            return self.escaped_from(run, ascii);
        }
        self.pos += 1;
        let raw = &self.json[run.clone()];
        if let Some(key) = self.keys.get(self.py, raw) {
            // The same bytes as a key already checked: no UTF-8 check needed.
            return Ok(key);
        }
        let key = self.new_str(self.text(run, ascii)?, ascii)?;
        self.keys.put(raw, &key);
        Ok(key)
    }

    fn new_str(&self, text: &str, ascii: bool) -> PyResult<Bound<'py, PyString>> {
        if !ascii {
            return Ok(PyString::new(self.py, text));
        }
        // ASCII is already what a compact ASCII str stores: copy it in, skipping the
        // UTF-8 decoder's checks.
        let len = text.len() as ffi::Py_ssize_t;
        // SAFETY: PyUnicode_New(len, 127) returns a new compact ASCII str with room for
        // `len` bytes (or NULL with an exception set); it is filled before anyone else
        // sees it. For len 0 it is the shared empty str, and nothing is written.
        unsafe {
            let s = Bound::from_owned_ptr_or_err(self.py, ffi::PyUnicode_New(len, 127))?;
            std::ptr::copy_nonoverlapping(
                text.as_ptr(),
                ffi::PyUnicode_DATA(s.as_ptr()).cast::<u8>(),
                text.len(),
            );
            Ok(s.cast_into_unchecked())
        }
    }

    fn escaped_from(&mut self, run: Range<usize>, ascii: bool) -> PyResult<Bound<'py, PyString>> {
        self.text(run.clone(), ascii)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(&self.json[run]);
        let result = self.escaped(&mut scratch);
        self.scratch = scratch;
        result
    }

    /// The rest of a string that has escapes, from the first backslash.
    fn escaped(&mut self, out: &mut Vec<u8>) -> PyResult<Bound<'py, PyString>> {
        let mut surrogates = false;
        while self.json[self.pos] == b'\\' {
            self.pos += 1;
            surrogates |= self.escape(out)?;
            let (run, ascii) = self.run()?;
            self.text(run.clone(), ascii)?;
            out.extend_from_slice(&self.json[run]);
        }
        self.pos += 1;
        // SAFETY: `out` is valid UTF-8 (runs are checked, escapes encode chars) except for
        // lone surrogates in their three-byte form, which surrogatepass accepts; the
        // result is a new reference, or NULL with an exception set.
        unsafe {
            Bound::from_owned_ptr_or_err(
                self.py,
                ffi::PyUnicode_DecodeUTF8(
                    out.as_ptr().cast(),
                    out.len() as ffi::Py_ssize_t,
                    if surrogates {
                        c"surrogatepass".as_ptr()
                    } else {
                        std::ptr::null()
                    },
                ),
            )
            .map(|s| s.cast_into_unchecked())
        }
    }

    /// String bytes up to the next quote or backslash (which is then at `pos`), with no
    /// control character; and whether they are all ASCII.
    fn run(&mut self) -> PyResult<(Range<usize>, bool)> {
        let start = self.pos;
        let mut end = start;
        let mut high = 0;
        for &b in &self.json[start..] {
            if STOPS[usize::from(b)] {
                break;
            }
            high |= b;
            end += 1;
        }
        self.pos = end;
        match self.peek() {
            None => Err(self.error("unterminated string")),
            Some(b @ 0..0x20) => Err(self.error(format_args!(
                "control character U+{b:04X} in a string (it must be escaped)"
            ))),
            Some(_) => Ok((start..end, high < 0x80)),
        }
    }

    /// A range `run` returned, checked to be UTF-8 unless it is ASCII.
    fn text(&self, run: Range<usize>, ascii: bool) -> PyResult<&'a str> {
        let bytes = &self.json[run.clone()];
        if ascii {
            // SAFETY: ASCII is UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes)
            .map_err(|e| self.error_at(run.start + e.valid_up_to(), "invalid UTF-8 in a string"))
    }

    /// After a backslash; true when it wrote a lone surrogate.
    fn escape(&mut self, out: &mut Vec<u8>) -> PyResult<bool> {
        let simple = match self.peek() {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                self.pos += 1;
                return self.unicode_escape(out);
            }
            _ => return Err(self.unexpected("an escape (one of \"\\/bfnrtu)")),
        };
        self.pos += 1;
        out.push(simple);
        Ok(false)
    }

    /// After `\u`; true when it wrote a lone surrogate.
    fn unicode_escape(&mut self, out: &mut Vec<u8>) -> PyResult<bool> {
        let unit = self.hex4()?;
        let code = match unit {
            0xD800..=0xDBFF => {
                // A high surrogate pairs with a low one escaped right after it; alone, it
                // stays a lone surrogate, as in json.loads.
                let rest = &self.json[self.pos..];
                let low = if rest.starts_with(b"\\u") {
                    let save = self.pos;
                    self.pos += 2;
                    match self.hex4()? {
                        low @ 0xDC00..=0xDFFF => Some(low),
                        _ => {
                            self.pos = save;
                            None
                        }
                    }
                } else {
                    None
                };
                match low {
                    Some(low) => 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00),
                    None => {
                        push_surrogate(out, unit);
                        return Ok(true);
                    }
                }
            }
            0xDC00..=0xDFFF => {
                push_surrogate(out, unit);
                return Ok(true);
            }
            _ => unit,
        };
        let c = char::from_u32(code).expect("not a surrogate, at most U+10FFFF");
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        Ok(false)
    }

    fn hex4(&mut self) -> PyResult<u32> {
        let mut unit = 0;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.unexpected("a hex digit (\\u takes four)")),
            };
            unit = unit * 16 + u32::from(digit);
            self.pos += 1;
        }
        Ok(unit)
    }

    fn number(&mut self) -> PyResult<Bound<'py, PyAny>> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.error("leading zero in a number"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.unexpected("a digit")),
        }
        let int_digits = self.pos - int_start;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            float = true;
            self.some_digits("a digit after '.'")?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            float = true;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.some_digits("a digit in the exponent")?;
        }
        let py = self.py;
        if !float && int_digits <= 18 {
            // 18 digits always fit an i64: no overflow check needed.
            let magnitude = self.json[int_start..self.pos]
                .iter()
                .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
            let n = if negative { -magnitude } else { magnitude };
            return Ok(n.into_pyobject(py)?.into_any());
        }
        // Only ASCII digits, signs, '.' and 'e' were consumed.
        let text = std::str::from_utf8(&self.json[start..self.pos]).expect("ASCII");
        if float {
            // Rust's parse gives the correctly rounded double, as Python's float() does;
            // out-of-range literals such as 1e400 become inf, as in Python.
            let f: f64 = text.parse().map_err(|_| self.error("invalid number"))?;
            return Ok(PyFloat::new(py, f).into_any());
        }
        if let Ok(n) = text.parse::<i64>() {
            return Ok(n.into_pyobject(py)?.into_any());
        }
        // Beyond 64 bits: Python parses the digits, so the int is exact (and subject to
        // sys.get_int_max_str_digits(), as with json.loads).
        self.scratch.clear();
        self.scratch.extend_from_slice(text.as_bytes());
        self.scratch.push(0);
        // SAFETY: a NUL-terminated string of digits; the result is a new reference or
        // NULL with an exception set.
        unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyLong_FromString(self.scratch.as_ptr().cast(), std::ptr::null_mut(), 10),
            )
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self, expected: &str) -> PyResult<()> {
        let start = self.pos;
        self.digits();
        if self.pos == start {
            return Err(self.unexpected(expected));
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> PyResult<()> {
        for &b in word {
            if self.peek() != Some(b) {
                let word = std::str::from_utf8(word).expect("ASCII");
                return Err(self.unexpected(format_args!("'{word}'")));
            }
            self.pos += 1;
        }
        Ok(())
    }

    fn check_depth(&self, depth: usize) -> PyResult<()> {
        if depth > MAX_DEPTH {
            return Err(self.error(format_args!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn peek(&self) -> Option<u8> {
        self.json.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn unexpected(&self, expected: impl fmt::Display) -> PyErr {
        match self.peek() {
            None => self.error(format_args!("unexpected end, expected {expected}")),
            Some(b) if b == b' ' || b.is_ascii_graphic() => self.error(format_args!(
                "unexpected '{}', expected {expected}",
                char::from(b)
            )),
            Some(b) => self.error(format_args!(
                "unexpected byte 0x{b:02x}, expected {expected}"
            )),
        }
    }

    fn error(&self, what: impl fmt::Display) -> PyErr {
        self.error_at(self.pos, what)
    }

    fn error_at(&self, pos: usize, what: impl fmt::Display) -> PyErr {
        PyValueError::new_err(format!("invalid JSON at byte {pos}: {what}"))
    }
}

/// A UTF-16 surrogate in the three-byte form UTF-8 would give it if it were allowed.
fn push_surrogate(out: &mut Vec<u8>, unit: u32) {
    out.extend_from_slice(&[
        0xE0 | (unit >> 12) as u8,
        0x80 | ((unit >> 6) & 0x3F) as u8,
        0x80 | (unit & 0x3F) as u8,
    ]);
}

/// Bytes that end a run of string bytes: the quote, the backslash, and the control
/// characters JSON requires escaped.
const STOPS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

thread_local! {
    /// This thread's dict keys. Never dropped: a thread that ends may not hold the GIL,
    /// and its few keys are not worth taking it.
    static KEYS: RefCell<ManuallyDrop<KeyCache>> = RefCell::default();
}

/// Dict keys made on this thread, by their bytes, direct-mapped: a key evicts the one in
/// its slot. Kept from one document to the next, as requests to one function repeat
/// their keys: a key seen before is neither made nor hashed again (a str keeps its
/// hash). Only short keys without escapes; at most 64 of them, about 3 KB a thread.
#[derive(Default)]
struct KeyCache {
    slots: Vec<Option<Key>>,
}

struct Key {
    len: u8,
    bytes: [u8; KeyCache::MAX_LEN],
    str: Py<PyString>,
}

impl KeyCache {
    const SLOTS: usize = 64;
    const MAX_LEN: usize = 32;

    fn slot(raw: &[u8]) -> usize {
        // FNV-1a: a few cycles a byte, enough to spread keys over 64 slots.
        let hash = raw.iter().fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        (hash ^ (hash >> 32)) as usize % Self::SLOTS
    }

    fn get<'py>(&self, py: Python<'py>, raw: &[u8]) -> Option<Bound<'py, PyString>> {
        if raw.len() > Self::MAX_LEN || self.slots.is_empty() {
            return None;
        }
        match &self.slots[Self::slot(raw)] {
            Some(key) if &key.bytes[..usize::from(key.len)] == raw => {
                Some(key.str.bind(py).clone())
            }
            _ => None,
        }
    }

    fn put(&mut self, raw: &[u8], str: &Bound<'_, PyString>) {
        if raw.len() > Self::MAX_LEN {
            return;
        }
        if self.slots.is_empty() {
            self.slots.resize_with(Self::SLOTS, || None);
        }
        let mut bytes = [0; Self::MAX_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        self.slots[Self::slot(raw)] = Some(Key {
            len: raw.len() as u8,
            bytes,
            str: str.clone().unbind(),
        });
    }
}
