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
        // serde_json skips an ignored value without checking two things its
        // other readers check: UTF-8 inside strings, and the nesting limit. Both
        // are checked here, so that text JSON requires reaches no child, and so
        // that `to_value` (schemas) never fails on text that passed.
        std::str::from_utf8(&bytes).map_err(|e| {
            <serde_json::Error as serde::de::Error>::custom(format!("not UTF-8: {e}"))
        })?;
        check_nesting(&bytes)?;
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

/// Deepest nesting serde_json reads into a tree (its recursion limit).
const MAX_NESTING: usize = 127;

/// Fails past `MAX_NESTING` levels of arrays and objects. Most texts have
/// fewer brackets than that in all, which one quick count shows; only the
/// others are walked (outside strings).
fn check_nesting(bytes: &[u8]) -> Result<(), serde_json::Error> {
    let openers = bytes.iter().filter(|&&b| b == b'[' || b == b'{').count();
    if openers <= MAX_NESTING {
        return Ok(());
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(<serde_json::Error as serde::de::Error>::custom(format!(
                        "nested more than {MAX_NESTING} levels deep"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
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
    fn what_a_tree_could_not_hold_is_refused() {
        // Closed, so the syntax alone is fine; serde_json's tree stops at 127.
        let at_limit = format!("{}{}", "[".repeat(127), "]".repeat(127));
        assert_eq!(
            Json::parse(at_limit.clone())
                .unwrap()
                .to_value()
                .to_string(),
            at_limit
        );
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(Json::parse(deep).is_err());
        let deep = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert!(Json::parse(deep).is_err());
        // Brackets inside strings do not count.
        let quoted = format!("[\"{}\", \"\\\"[[\"]", "[{".repeat(500));
        assert!(Json::parse(quoted).is_ok());
        // JSON text is UTF-8 (RFC 8259), in strings too.
        assert!(Json::parse(&b"\"\xff\xfe\""[..]).is_err());
        assert!(Json::parse(&b"{\"\xc3\x28\": 1}"[..]).is_err());
        assert!(Json::parse("\"\u{e9}\"").is_ok());
    }

    #[test]
    fn object_is_told_by_its_first_byte() {
        assert!(Json::parse(" {\"a\":1}").unwrap().is_object());
        assert!(!Json::parse("[1]").unwrap().is_object());
        assert_eq!(Json::string("a\"b").as_str(), r#""a\"b""#);
    }
}
