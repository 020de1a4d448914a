//! JSON text kept as the bytes it arrived as (contract section 3).
//!
//! A payload or an output is checked for syntax once, without building a
//! tree, and then forwarded as is: to a child's stdin, an `HTTP` runtime, a
//! `LOOP` line, a callback body. So numbers keep every digit and memory
//! holds one copy of the bytes, not a tree several times their size.

use std::fmt;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde_json::Value;

/// Syntactically valid JSON text, one value, surrounding white space removed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Json(Bytes);

impl Json {
    /// Checks `bytes` is one JSON value (nesting at most 128 levels, as
    /// serde_json allows) and keeps them without copying.
    pub fn parse(bytes: impl Into<Bytes>) -> Result<Json, serde_json::Error> {
        let bytes = bytes.into();
        serde_json::from_slice::<IgnoredAny>(&bytes)?;
        Ok(Json(trim(bytes)))
    }

    /// Like [`Json::parse`], but empty or blank text is `null` (an empty
    /// request body, an unset one-shot payload).
    pub fn parse_or_null(bytes: impl Into<Bytes>) -> Result<Json, serde_json::Error> {
        let bytes = bytes.into();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Json::null());
        }
        Json::parse(bytes)
    }

    pub fn null() -> Json {
        Json(Bytes::from_static(b"null"))
    }

    /// Text the caller knows is valid JSON (written by a serializer).
    pub fn from_trusted(bytes: impl Into<Bytes>) -> Json {
        Json(trim(bytes.into()))
    }

    pub fn from_value(value: &Value) -> Json {
        Json(Bytes::from(
            serde_json::to_vec(value).expect("a Value always serialises"),
        ))
    }

    /// A JSON string holding `text`.
    pub fn string(text: &str) -> Json {
        Json::from_value(&Value::String(text.to_owned()))
    }

    /// Builds the tree: only where a tree is really needed (schema checks,
    /// tests), never on the pass-through paths.
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.0).expect("checked when made")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text, for messages and tests (valid JSON is UTF-8).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("<not UTF-8>")
    }

    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first character tells an object from anything else without
    /// parsing (`{` can only start an object).
    pub fn is_object(&self) -> bool {
        self.0.first() == Some(&b'{')
    }
}

fn trim(bytes: Bytes) -> Bytes {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    bytes.slice(start..end)
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json({})", self.as_str())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Value> for Json {
    fn from(value: Value) -> Json {
        Json::from_value(&value)
    }
}

impl From<&Value> for Json {
    fn from(value: &Value) -> Json {
        Json::from_value(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_every_digit() {
        let text = "12345678901234567890.12345678901234567890";
        let j = Json::parse(format!(" {text}\n")).unwrap();
        assert_eq!(j.as_bytes(), text.as_bytes());
    }

    #[test]
    fn syntax_is_checked_without_a_tree() {
        assert!(Json::parse("{\"a\": [1, 2}").is_err());
        assert!(Json::parse("{} {}").is_err());
        assert!(Json::parse("").is_err());
        assert_eq!(Json::parse_or_null("  ").unwrap(), Json::null());
        let deep = "[".repeat(100_000);
        assert!(Json::parse(deep).is_err());
    }

    #[test]
    fn object_is_told_by_its_first_byte() {
        assert!(Json::parse(" {\"a\":1}").unwrap().is_object());
        assert!(!Json::parse("[1]").unwrap().is_object());
        assert_eq!(Json::string("a\"b").as_str(), r#""a\"b""#);
    }
}
