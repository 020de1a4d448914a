//! The section-4 request headers (and `Content-Type`), read once per request
//! by the trace layer and handed down beside the request (`Call`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use hyper::HeaderMap;
use runtime_sdk::names::header;
use runtime_sdk::{ErrorCode, InvokeError};

use crate::otel::Spans;
use crate::tracecontext::TraceContext;

#[derive(Debug)]
pub struct RequestMeta {
    /// `X-Execution-Id`, else the `EXECUTION_ID` fallback.
    pub execution_id: Option<Arc<str>>,
    /// `X-Trace-Id`, else the W3C trace id.
    pub trace_id: Option<String>,
    /// `traceparent`/`tracestate`, and the watchdog's span when recorded.
    pub trace: TraceContext,
    pub attempt: Option<u32>,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
    pub timeout_ms: Option<u64>,
    /// A header that was present but malformed: a 400 once the request is
    /// past authentication.
    pub problem: Option<InvokeError>,
    /// When the request arrived: the deadline counts from here, so queued
    /// time counts against it (section 4).
    pub arrived: Option<Instant>,
    /// `Accept: text/event-stream`: a streamed answer is written as SSE.
    pub accepts_event_stream: bool,
    /// `Content-Type: application/octet-stream`: the payload is raw bytes
    /// (section 3).
    pub octet_stream: bool,
    /// Whether `execution_id` came from `X-Execution-Id`.
    pub id_from_header: bool,
    /// Set when the request is in Alyx's form (section 4): its
    /// `request_id`; the answer is then written in Alyx's shape.
    pub alyx: OnceLock<Arc<str>>,
}

fn text(value: Option<&HeaderValue>) -> Option<String> {
    trimmed(value).map(str::to_owned)
}

fn trimmed(value: Option<&HeaderValue>) -> Option<&str> {
    value
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `Content-Type: application/octet-stream`, parameters and case aside.
fn is_octet_stream(content_type: Option<&HeaderValue>) -> bool {
    // On the bytes: every request asks, and the type is ASCII.
    content_type.is_some_and(|v| {
        let essence = v
            .as_bytes()
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default();
        essence
            .trim_ascii()
            .eq_ignore_ascii_case(b"application/octet-stream")
    })
}

/// The first value of each section-4 header, found in one pass over the
/// request's few headers: a look-up by name hashes the name and probes the
/// map, and ten of them were about 3% of a warm request's instructions.
#[derive(Default)]
struct Found<'a> {
    execution_id: Option<&'a HeaderValue>,
    trace_id: Option<&'a HeaderValue>,
    attempt: Option<&'a HeaderValue>,
    timeout_ms: Option<&'a HeaderValue>,
    idempotency_key: Option<&'a HeaderValue>,
    callback_url: Option<&'a HeaderValue>,
    accept: Option<&'a HeaderValue>,
    content_type: Option<&'a HeaderValue>,
    /// `traceparent` or `tracestate`, which `TraceContext` reads itself.
    trace_context: bool,
}

impl<'a> Found<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut found = Found::default();
        for (name, value) in headers {
            let first = match name.as_str() {
                header::EXECUTION_ID => &mut found.execution_id,
                header::TRACE_ID => &mut found.trace_id,
                header::DISPATCH_ATTEMPT => &mut found.attempt,
                header::TIMEOUT_MS => &mut found.timeout_ms,
                header::IDEMPOTENCY_KEY => &mut found.idempotency_key,
                header::CALLBACK_URL => &mut found.callback_url,
                "accept" => &mut found.accept,
                "content-type" => &mut found.content_type,
                header::TRACEPARENT | header::TRACESTATE => {
                    found.trace_context = true;
                    continue;
                }
                _ => continue,
            };
            first.get_or_insert(value);
        }
        found
    }
}

impl RequestMeta {
    /// The invocation's deadline, `min(TIMEOUT_MS, X-Timeout-Ms)` after
    /// arrival, and that budget.
    /// Milliseconds since the request arrived (Alyx's `duration_ms`).
    pub fn elapsed_ms(&self) -> u64 {
        self.arrived.map_or(0, |t| t.elapsed().as_millis() as u64)
    }

    /// Takes the Alyx form: `request_id` becomes the execution id, before
    /// the `EXECUTION_ID` fallback.
    pub fn take_alyx_form(&mut self, request_id: String) {
        let request_id = Arc::<str>::from(request_id);
        self.execution_id = Some(request_id.clone());
        let _ = self.alyx.set(request_id);
    }

    pub fn deadline(&self, timeout: Duration) -> (Instant, Duration) {
        let budget = match self.timeout_ms {
            Some(ms) => timeout.min(Duration::from_millis(ms)),
            None => timeout,
        };
        (self.arrived.unwrap_or_else(Instant::now) + budget, budget)
    }

    pub fn read(headers: &HeaderMap, fallback_id: Option<&str>, spans: Option<&Spans>) -> Self {
        let found = Found::of(headers);
        let mut problem = None;
        let mut positive = |name: &str, value: Option<&HeaderValue>| -> Option<u64> {
            // Bytes outside visible ASCII cannot spell a number: malformed, not absent.
            let raw = value?.to_str().unwrap_or("\u{fffd}").trim();
            if raw.is_empty() {
                return None;
            }
            match raw.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    problem.get_or_insert_with(|| {
                        InvokeError::new(
                            ErrorCode::InvalidRequest,
                            format!("header {name}: {raw:?} is not a positive integer"),
                        )
                    });
                    None
                }
            }
        };
        let attempt = positive(header::DISPATCH_ATTEMPT, found.attempt)
            .map(|n| n.min(u32::MAX as u64) as u32);
        let timeout_ms = positive(header::TIMEOUT_MS, found.timeout_ms);
        let from_header = trimmed(found.execution_id).map(Arc::from);
        let mut trace = if found.trace_context {
            TraceContext::from_headers(headers)
        } else {
            TraceContext::default()
        };
        if let Some(spans) = spans {
            spans.open(&mut trace);
        }
        RequestMeta {
            id_from_header: from_header.is_some(),
            accepts_event_stream: found
                .accept
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("text/event-stream")),
            octet_stream: is_octet_stream(found.content_type),
            alyx: OnceLock::new(),
            execution_id: from_header.or_else(|| fallback_id.map(Arc::from)),
            // X-Trace-Id keeps winning for logs and the callback.
            trace_id: text(found.trace_id).or_else(|| trace.trace_id()),
            trace,
            attempt,
            idempotency_key: text(found.idempotency_key),
            callback_url: text(found.callback_url),
            timeout_ms,
            problem,
            arrived: Some(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_over_the_env_fallback() {
        let mut h = HeaderMap::new();
        assert_eq!(
            RequestMeta::read(&h, Some("env"), None)
                .execution_id
                .as_deref(),
            Some("env")
        );
        h.insert("x-execution-id", "hdr".parse().unwrap());
        assert_eq!(
            RequestMeta::read(&h, Some("env"), None)
                .execution_id
                .as_deref(),
            Some("hdr")
        );
    }

    /// Raw bytes only for `application/octet-stream`, told by its essence:
    /// case and parameters aside (section 3).
    #[test]
    fn octet_stream_is_told_by_its_essence() {
        let binary = |value: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert("content-type", v.parse().unwrap());
            }
            RequestMeta::read(&h, Some("env"), None).octet_stream
        };
        for yes in [
            "application/octet-stream",
            "Application/Octet-Stream",
            " application/octet-stream ; name=x",
            "application/octet-stream;",
        ] {
            assert!(binary(Some(yes)), "{yes}");
        }
        for no in [
            "application/json",
            "application/octet-streams",
            "text/plain; application/octet-stream",
            "",
        ] {
            assert!(!binary(Some(no)), "{no}");
        }
        assert!(!binary(None));
    }

    /// The one pass over the headers reads what the look-ups by name read: the
    /// first of repeated values, every section-4 header among others, and the
    /// W3C trace context.
    #[test]
    fn one_pass_reads_what_lookups_read() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("host", "localhost"),
            ("x-execution-id", " first "),
            ("x-execution-id", "second"),
            ("x-trace-id", "t-1"),
            ("x-dispatch-attempt", "3"),
            ("x-timeout-ms", "250"),
            ("idempotency-key", "k"),
            ("x-callback-url", "http://cb/x"),
            ("accept", "text/event-stream"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ] {
            h.append(name, value.parse().unwrap());
        }
        let m = RequestMeta::read(&h, Some("env"), None);
        assert_eq!(m.execution_id.as_deref(), Some("first"));
        assert!(m.id_from_header);
        assert_eq!(m.trace_id.as_deref(), Some("t-1"));
        assert_eq!((m.attempt, m.timeout_ms), (Some(3), Some(250)));
        assert_eq!(m.idempotency_key.as_deref(), Some("k"));
        assert_eq!(m.callback_url.as_deref(), Some("http://cb/x"));
        assert!(m.accepts_event_stream);
        assert!(m.trace.incoming.is_some());
        assert!(m.problem.is_none());
        // Without X-Trace-Id the W3C trace id is the trace id.
        h.remove("x-trace-id");
        let m = RequestMeta::read(&h, None, None);
        assert_eq!(
            m.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    use proptest::prelude::*;

    /// Header values as a client may send them: visible ASCII, space, tab and
    /// obs-text bytes (0x80-0xFF), which `HeaderValue` accepts but `to_str` does not.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // Numbers, padded or not, in range or not.
            (any::<u64>(), 0usize..3).prop_map(|(n, pad)| format!(
                "{}{n}{}",
                " ".repeat(pad),
                "\t".repeat(pad)
            )
            .into_bytes()),
            "[0-9]{1,30}".prop_map(String::into_bytes),
            "-?[0-9a-z .]{0,12}".prop_map(String::into_bytes),
            proptest::collection::vec(
                prop_oneof![0x20u8..=0x7e, Just(b'\t'), 0x80u8..=0xff],
                0..64
            ),
        ]
    }

    /// What `HeaderValue::to_str` accepts: visible ASCII, space and tab.
    fn ascii(raw: &[u8]) -> Option<&str> {
        raw.iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
            .then(|| std::str::from_utf8(raw).unwrap())
    }

    /// `None`: absent (blank); `Some(None)`: malformed; `Some(Some(n))`: taken.
    fn positive(raw: &[u8]) -> Option<Option<u64>> {
        let Some(text) = ascii(raw) else {
            return Some(None);
        };
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(text.parse::<u64>().ok().filter(|&n| n > 0))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the headers hold, reading them never panics, a present id wins
        /// over the fallback, and a number is taken exactly or reported as a problem.
        #[test]
        fn any_header_values_are_read_or_reported(
            id in value(),
            attempt in value(),
            timeout in value(),
            trace in value(),
            fallback in proptest::option::of("[a-z0-9-]{1,8}"),
        ) {
            let mut h = HeaderMap::new();
            for (name, raw) in [
                (header::EXECUTION_ID, &id),
                (header::DISPATCH_ATTEMPT, &attempt),
                (header::TIMEOUT_MS, &timeout),
                (header::TRACE_ID, &trace),
            ] {
                let v = hyper::header::HeaderValue::from_bytes(raw).expect("valid header bytes");
                h.insert(name, v);
            }
            let m = RequestMeta::read(&h, fallback.as_deref(), None);

            let given_id = ascii(&id).map(str::trim).filter(|s| !s.is_empty());
            match given_id {
                Some(given) => prop_assert_eq!(m.execution_id.as_deref(), Some(given)),
                None => prop_assert_eq!(m.execution_id.as_deref(), fallback.as_deref()),
            }

            let mut problems = Vec::new();
            match positive(&attempt) {
                Some(Some(n)) => prop_assert_eq!(m.attempt, Some(n.min(u32::MAX as u64) as u32)),
                Some(None) => { prop_assert_eq!(m.attempt, None); problems.push(header::DISPATCH_ATTEMPT) }
                None => prop_assert_eq!(m.attempt, None),
            }
            match positive(&timeout) {
                Some(Some(n)) => prop_assert_eq!(m.timeout_ms, Some(n)),
                Some(None) => { prop_assert_eq!(m.timeout_ms, None); problems.push(header::TIMEOUT_MS) }
                None => prop_assert_eq!(m.timeout_ms, None),
            }
            // The first malformed header is the one reported.
            match (problems.first(), &m.problem) {
                (None, None) => {}
                (Some(name), Some(p)) => {
                    prop_assert_eq!(&p.code, &ErrorCode::InvalidRequest);
                    prop_assert!(p.message.contains(name), "{}", p.message);
                }
                (expected, got) => prop_assert!(false, "expected a problem with {:?}, got {:?}", expected, got),
            }
        }
    }

    #[test]
    fn the_w3c_trace_id_is_the_trace_id_unless_x_trace_id_names_one() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let m = RequestMeta::read(&h, None, None);
        assert_eq!(
            m.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        h.insert("x-trace-id", "t-1".parse().unwrap());
        assert_eq!(
            RequestMeta::read(&h, None, None).trace_id.as_deref(),
            Some("t-1")
        );
        // An invalid traceparent is ignored, never a problem.
        h.insert("traceparent", "00-nope".parse().unwrap());
        let m = RequestMeta::read(&h, None, None);
        assert!(m.problem.is_none() && m.trace.incoming.is_none());
    }

    #[test]
    fn malformed_numbers_are_a_problem() {
        let mut h = HeaderMap::new();
        h.insert("x-timeout-ms", "soon".parse().unwrap());
        let m = RequestMeta::read(&h, None, None);
        assert!(m.problem.unwrap().message.contains("x-timeout-ms"));
        let mut h = HeaderMap::new();
        h.insert("x-dispatch-attempt", "2".parse().unwrap());
        assert_eq!(RequestMeta::read(&h, None, None).attempt, Some(2));
    }
}
