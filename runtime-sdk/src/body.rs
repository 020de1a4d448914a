//! What goes into a function and what comes out of it (contract section 3):
//! JSON by default, raw bytes when the request says `application/octet-stream`
//! or the function answers bytes, and optionally an HTTP status and headers
//! the function chose (`ember.Response`, a `LOOP` line, an `HTTP` runtime).

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_core::Stream;

use crate::{InvokeError, Json};

/// An invocation's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Any JSON value, as the bytes it came as.
    Json(Json),
    /// A warm request with `Content-Type: application/octet-stream`.
    Binary(Bytes),
}

impl Payload {
    /// The bytes a child process or an `HTTP` runtime gets.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Json(j) => j.as_bytes(),
            Payload::Binary(b) => b,
        }
    }

    pub fn bytes(&self) -> Bytes {
        match self {
            Payload::Json(j) => j.bytes(),
            Payload::Binary(b) => b.clone(),
        }
    }

    pub fn as_json(&self) -> Option<&Json> {
        match self {
            Payload::Json(j) => Some(j),
            Payload::Binary(_) => None,
        }
    }

    pub fn is_binary(&self) -> bool {
        matches!(self, Payload::Binary(_))
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl From<Json> for Payload {
    fn from(j: Json) -> Payload {
        Payload::Json(j)
    }
}

/// The body of a function's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Json(Json),
    /// Bytes with their content type: a handler that returned `bytes`
    /// (`application/octet-stream`), or text it chose to send as such.
    Raw {
        bytes: Bytes,
        content_type: String,
    },
    /// Values as the function produces them (a Python generator): written
    /// as they come, NDJSON or server-sent events; an error ends the stream.
    Stream(Chunks),
}

/// The values of a streamed answer, taken once by whoever writes them out.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Json, InvokeError>> + Send>>;

/// A [`ChunkStream`] in a cloneable handle (an [`Output`] is cloneable):
/// the first [`Chunks::take`] gets it.
#[derive(Clone)]
pub struct Chunks(Arc<Mutex<Option<ChunkStream>>>);

impl Chunks {
    pub fn new(stream: ChunkStream) -> Chunks {
        Chunks(Arc::new(Mutex::new(Some(stream))))
    }

    pub fn take(&self) -> Option<ChunkStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chunks(..)")
    }
}

impl PartialEq for Chunks {
    fn eq(&self, other: &Chunks) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Chunks {}

/// What a function answered: its body, and the HTTP status and headers it
/// chose, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub body: Body,
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
}

/// How an output is carried where only JSON fits (a callback, a one-shot
/// result): the JSON itself, or a JSON string and how to read it.
pub struct AsJson {
    pub json: Json,
    /// `Some("base64")` when `json` is a string of base64 bytes.
    pub encoding: Option<&'static str>,
}

impl Output {
    pub fn json(json: Json) -> Output {
        Output {
            body: Body::Json(json),
            status: None,
            headers: Vec::new(),
        }
    }

    pub fn raw(bytes: impl Into<Bytes>, content_type: impl Into<String>) -> Output {
        Output {
            body: Body::Raw {
                bytes: bytes.into(),
                content_type: content_type.into(),
            },
            status: None,
            headers: Vec::new(),
        }
    }

    pub fn stream(stream: ChunkStream) -> Output {
        Output {
            body: Body::Stream(Chunks::new(stream)),
            status: None,
            headers: Vec::new(),
        }
    }

    /// The JSON body, when the body is JSON.
    pub fn as_json(&self) -> Option<&Json> {
        match &self.body {
            Body::Json(j) => Some(j),
            Body::Raw { .. } | Body::Stream(_) => None,
        }
    }

    /// The output as a tree (tests, schema checks): JSON as it is, text and
    /// bytes as in [`Output::to_json`].
    pub fn to_value(&self) -> serde_json::Value {
        self.to_json().json.to_value()
    }

    /// The body's size in bytes.
    pub fn len(&self) -> usize {
        match &self.body {
            Body::Json(j) => j.len(),
            Body::Raw { bytes, .. } => bytes.len(),
            Body::Stream(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// JSON as it is; text (`text/*`) as a JSON string; other bytes as a
    /// base64 JSON string, marked so.
    pub fn to_json(&self) -> AsJson {
        match &self.body {
            // A stream is collected before it reaches a callback; one that was
            // not (nothing read it) has no value to show.
            Body::Stream(_) => AsJson {
                json: Json::null(),
                encoding: None,
            },
            Body::Json(j) => AsJson {
                json: j.clone(),
                encoding: None,
            },
            Body::Raw {
                bytes,
                content_type,
            } => match std::str::from_utf8(bytes) {
                Ok(text) if is_text(content_type) => AsJson {
                    json: Json::string(text),
                    encoding: None,
                },
                _ => {
                    use base64::Engine;
                    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
                    AsJson {
                        json: Json::string(&text),
                        encoding: Some("base64"),
                    }
                }
            },
        }
    }
}

impl PartialEq<Json> for Output {
    fn eq(&self, other: &Json) -> bool {
        self.as_json() == Some(other) && self.status.is_none() && self.headers.is_empty()
    }
}

impl From<Json> for Output {
    fn from(j: Json) -> Output {
        Output::json(j)
    }
}

/// Whether a `Content-Type` names a `text/*` media type (case-insensitive).
fn is_text(content_type: &str) -> bool {
    content_type
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("text/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_become_json_where_only_json_fits() {
        let j = Output::json(Json::parse("[1]").unwrap()).to_json();
        assert_eq!((j.json.as_str(), j.encoding), ("[1]", None));
        let t = Output::raw(&b"<p>hi</p>"[..], "text/html").to_json();
        assert_eq!((t.json.as_str(), t.encoding), ("\"<p>hi</p>\"", None));
        let b = Output::raw(&[0u8, 255][..], "application/octet-stream").to_json();
        assert_eq!((b.json.as_str(), b.encoding), ("\"AP8=\"", Some("base64")));
    }
}
