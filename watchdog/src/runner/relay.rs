//! A streamed answer from an `HTTP` runtime (server-sent events or NDJSON),
//! relayed value by value as it arrives: the watchdog never holds more than
//! one unfinished line of it. The values then go out as any streamed answer
//! does (see [`crate::stream`]): framed for the client as it asked, collected
//! into an array for a callback.
//!
//! The deadline and `MAX_OUTPUT_BYTES` apply to the whole stream: past
//! either, it ends with `TIMEOUT` or `OUTPUT_TOO_LARGE` and the connection to
//! the runtime is dropped, which tells the runtime to stop.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use runtime_sdk::{ChunkStream, ErrorCode, InvokeError, Json};

use super::process;

/// How a runtime frames the values of a streamed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream`: each event's `data` is a value (JSON, else the
    /// text as a JSON string); `event: error` ends the stream as a failure.
    Sse,
    /// `application/x-ndjson` (or `jsonl`): each non-empty line is a JSON value.
    Ndjson,
}

impl Framing {
    /// The framing a `Content-Type` names, if it names a stream.
    pub fn of(content_type: &str) -> Option<Framing> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        let is = |name: &str| media.eq_ignore_ascii_case(name);
        if is("text/event-stream") {
            Some(Framing::Sse)
        } else if is("application/x-ndjson")
            || is("application/jsonl")
            || is("application/jsonlines")
        {
            Some(Framing::Ndjson)
        } else {
            None
        }
    }
}

/// What a relay needs to know besides the body.
pub struct Limits {
    pub max_output: usize,
    pub deadline: Instant,
    pub execution_id: std::sync::Arc<str>,
    pub budget: Duration,
}

/// The runtime's body as a stream of values.
pub fn relay<B>(body: B, framing: Framing, limits: Limits) -> ChunkStream
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let relay = Relay {
        body,
        parser: Parser::new(framing),
        limits,
        seen: 0,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        relay,
        |mut relay| async move { relay.next().await.map(|item| (item, relay)) },
    ))
}

struct Relay<B> {
    body: B,
    parser: Parser,
    limits: Limits,
    /// Bytes of the body read so far, against `MAX_OUTPUT_BYTES`.
    seen: usize,
    done: bool,
}

impl<B> Relay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    async fn next(&mut self) -> Option<Result<Json, InvokeError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(item) = self.parser.next_value() {
                self.done = item.is_err();
                return Some(item);
            }
            let frame = tokio::time::timeout_at(self.limits.deadline.into(), self.body.frame());
            let failure = match frame.await {
                Err(_) => InvokeError::timeout(&self.limits.execution_id, self.limits.budget),
                Ok(None) => {
                    self.done = true;
                    return self.parser.finish();
                }
                Ok(Some(Err(e))) => InvokeError::new(
                    ErrorCode::FunctionError,
                    format!("the runtime's stream was cut off: {e}"),
                ),
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers
                    };
                    self.seen += data.len();
                    if self.seen > self.limits.max_output {
                        InvokeError::output_too_large(
                            "the runtime's stream",
                            self.limits.max_output,
                        )
                    } else {
                        self.parser.push(&data);
                        continue;
                    }
                }
            };
            self.done = true;
            return Some(Err(failure));
        }
    }
}

/// Splits the bytes into lines and lines into values.
struct Parser {
    framing: Framing,
    buf: BytesMut,
    /// SSE: the current event's data lines, joined with `\n`.
    data: Option<String>,
    /// SSE: the current event's type, when it says `error`.
    error_event: bool,
}

impl Parser {
    fn new(framing: Framing) -> Parser {
        Parser {
            framing,
            buf: BytesMut::new(),
            data: None,
            error_event: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete value in what was pushed, if any.
    fn next_value(&mut self) -> Option<Result<Json, InvokeError>> {
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line = self.buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if let Some(item) = self.line(line.freeze()) {
                return Some(item);
            }
        }
        None
    }

    /// The end of the body: a last NDJSON line may lack its newline; an SSE
    /// event not ended by a blank line is dropped, as the SSE standard says.
    fn finish(&mut self) -> Option<Result<Json, InvokeError>> {
        let rest = self.buf.split().freeze();
        match self.framing {
            Framing::Ndjson => self.line(rest),
            Framing::Sse => None,
        }
    }

    fn line(&mut self, line: Bytes) -> Option<Result<Json, InvokeError>> {
        match self.framing {
            Framing::Ndjson => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    return None;
                }
                Some(Json::parse(line.clone()).map_err(|e| {
                    invalid(format!(
                        "a line of the runtime's NDJSON stream is not JSON ({e}): {:?}",
                        preview(&line)
                    ))
                }))
            }
            Framing::Sse => self.sse_line(line),
        }
    }

    fn sse_line(&mut self, line: Bytes) -> Option<Result<Json, InvokeError>> {
        if line.is_empty() {
            let error = std::mem::take(&mut self.error_event);
            let data = self.data.take()?;
            if error {
                return Some(Err(InvokeError::new(
                    ErrorCode::FunctionError,
                    format!(
                        "the runtime's stream ended with an error event: {}",
                        process::preview(&data, 500)
                    ),
                )));
            }
            let bytes = Bytes::from(data);
            return Some(Ok(match Json::parse(bytes.clone()) {
                Ok(json) => json,
                Err(_) => Json::string(&String::from_utf8_lossy(&bytes)),
            }));
        }
        if line.first() == Some(&b':') {
            return None; // a comment (a keep-alive)
        }
        let (field, mut value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (line.slice(..i), line.slice(i + 1..)),
            None => (line.clone(), Bytes::new()),
        };
        if value.first() == Some(&b' ') {
            value.advance(1);
        }
        match &field[..] {
            b"data" => {
                let value = String::from_utf8_lossy(&value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(&value);
                    }
                    None => self.data = Some(value.into_owned()),
                }
            }
            b"event" => self.error_event = &value[..] == b"error",
            _ => {} // id, retry, and fields the standard says to ignore
        }
        None
    }
}

fn invalid(what: String) -> InvokeError {
    InvokeError::new(
        ErrorCode::FunctionError,
        format!("Invalid JSON output: {what}"),
    )
}

fn preview(line: &[u8]) -> String {
    process::preview(String::from_utf8_lossy(line).trim(), 200).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(framing: Framing, chunks: &[&str]) -> Vec<Result<serde_json::Value, String>> {
        let mut p = Parser::new(framing);
        let mut out = Vec::new();
        for chunk in chunks {
            p.push(chunk.as_bytes());
            while let Some(item) = p.next_value() {
                out.push(item.map(|j| j.to_value()).map_err(|e| e.message));
            }
        }
        if let Some(item) = p.finish() {
            out.push(item.map(|j| j.to_value()).map_err(|e| e.message));
        }
        out
    }

    #[test]
    fn framing_comes_from_the_content_type() {
        assert_eq!(
            Framing::of("text/event-stream; charset=utf-8"),
            Some(Framing::Sse)
        );
        assert_eq!(Framing::of("Application/X-NDJSON"), Some(Framing::Ndjson));
        assert_eq!(Framing::of("application/jsonl"), Some(Framing::Ndjson));
        assert_eq!(Framing::of("application/json"), None);
        assert_eq!(Framing::of("text/plain"), None);
    }

    #[test]
    fn ndjson_lines_split_anywhere_become_values() {
        let got = values(
            Framing::Ndjson,
            &["{\"a\":", "1}\n\n[2,", "3]\r\n\"la", "st\""],
        );
        assert_eq!(
            got,
            vec![
                Ok(serde_json::json!({"a": 1})),
                Ok(serde_json::json!([2, 3])),
                Ok(serde_json::json!("last")),
            ]
        );
    }

    #[test]
    fn an_ndjson_line_that_is_not_json_is_invalid_json_output() {
        let got = values(Framing::Ndjson, &["1\nnope\n"]);
        assert_eq!(got[0], Ok(serde_json::json!(1)));
        let e = got[1].clone().unwrap_err();
        assert!(e.starts_with("Invalid JSON output"), "{e}");
    }

    #[test]
    fn sse_events_are_values_and_text_data_is_a_string() {
        let got = values(
            Framing::Sse,
            &[
                ": keep-alive\n\n",
                "id: 1\ndata: {\"n\"",
                ":1}\n\n",
                "event: message\ndata:two\ndata: lines\n\n",
                "retry: 10\n\ndata: [1]\r\n\r\n",
                "data: not ended",
            ],
        );
        assert_eq!(
            got,
            vec![
                Ok(serde_json::json!({"n": 1})),
                Ok(serde_json::json!("two\nlines")),
                Ok(serde_json::json!([1])),
            ]
        );
    }

    #[test]
    fn an_sse_error_event_ends_the_stream_as_a_failure() {
        let got = values(
            Framing::Sse,
            &["data: 1\n\nevent: error\ndata: {\"error\":\"boom\"}\n\n"],
        );
        assert_eq!(got[0], Ok(serde_json::json!(1)));
        let e = got[1].clone().unwrap_err();
        assert!(e.contains("boom"), "{e}");
    }
}
