//! Streamed answers (a Python generator): written out as newline-delimited JSON
//! (`application/x-ndjson`) or, when the request asks for `text/event-stream`, as
//! server-sent events; collected into one JSON array where only one value fits (a
//! callback, a one-shot result).

use bytes::Bytes;
use futures_util::StreamExt;
use runtime_sdk::{ChunkStream, InvokeError, InvokeResult, Json, Output};

/// How a stream is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON value per line; an error ends it as `{"error": ..., "code": ...}`.
    Ndjson,
    /// `data: <json>\n\n` per value; an error ends it as `event: error`.
    Sse,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Sse => "text/event-stream",
        }
    }

    /// One value, framed.
    pub fn frame(self, item: &Result<Json, InvokeError>) -> Bytes {
        let (event, json) = match item {
            Ok(json) => (None, json.as_bytes().to_vec()),
            Err(e) => (
                Some("error"),
                serde_json::to_vec(&e.to_body()).expect("an error body serialises"),
            ),
        };
        let mut out = Vec::with_capacity(json.len() + 16);
        match self {
            Format::Ndjson => {
                out.extend_from_slice(&json);
                out.push(b'\n');
            }
            Format::Sse => {
                if let Some(event) = event {
                    out.extend_from_slice(b"event: ");
                    out.extend_from_slice(event.as_bytes());
                    out.push(b'\n');
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"\n\n");
            }
        }
        Bytes::from(out)
    }
}

/// Reads a whole stream into a JSON array of its values, or its error.
pub async fn collect(mut stream: ChunkStream) -> InvokeResult {
    let mut values = Vec::new();
    while let Some(item) = stream.next().await {
        values.push(item?);
    }
    Ok(array(&values))
}

/// The values as one JSON array.
pub fn array(values: &[Json]) -> Output {
    let mut out = b"[".to_vec();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b']');
    Output::json(Json::from_trusted(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_sdk::ErrorCode;

    #[test]
    fn frames() {
        let v = Ok(Json::parse("{\"a\":1}").unwrap());
        assert_eq!(&Format::Ndjson.frame(&v)[..], b"{\"a\":1}\n");
        assert_eq!(&Format::Sse.frame(&v)[..], b"data: {\"a\":1}\n\n");
        let e = Err(InvokeError::new(ErrorCode::Timeout, "late"));
        let sse = Format::Sse.frame(&e);
        assert!(sse.starts_with(b"event: error\ndata: {"), "{sse:?}");
        assert!(String::from_utf8_lossy(&Format::Ndjson.frame(&e)).contains("\"code\":\"TIMEOUT\""));
    }

    #[tokio::test]
    async fn collects_into_an_array() {
        let items = vec![
            Ok(Json::parse("1").unwrap()),
            Ok(Json::parse("[2]").unwrap()),
        ];
        let out = collect(Box::pin(futures_util::stream::iter(items)))
            .await
            .unwrap();
        assert_eq!(out.as_json().unwrap().as_str(), "[1,[2]]");
    }
}
