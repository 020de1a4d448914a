//! The section-4 request headers, read once per request by the trace layer
//! and handed down in the request's extensions.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hyper::HeaderMap;
use runtime_sdk::names::header;
use runtime_sdk::{ErrorCode, InvokeError};

use crate::otel::Spans;
use crate::tracecontext::TraceContext;

#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// `X-Execution-Id`, else the `EXECUTION_ID` fallback.
    pub execution_id: Option<String>,
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
    /// Whether `execution_id` came from `X-Execution-Id`.
    pub id_from_header: bool,
    /// Set when the request is in Alyx's form (section 4): its
    /// `request_id`; the answer is then written in Alyx's shape.
    pub alyx: OnceLock<String>,
}

fn text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
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
        let mut problem = None;
        let mut positive = |name: &str| -> Option<u64> {
            let raw = text(headers, name)?;
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
        let attempt = positive(header::DISPATCH_ATTEMPT).map(|n| n.min(u32::MAX as u64) as u32);
        let timeout_ms = positive(header::TIMEOUT_MS);
        let from_header = text(headers, header::EXECUTION_ID);
        let mut trace = TraceContext::from_headers(headers);
        if let Some(spans) = spans {
            spans.open(&mut trace);
        }
        RequestMeta {
            id_from_header: from_header.is_some(),
            accepts_event_stream: headers
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("text/event-stream")),
            alyx: OnceLock::new(),
            execution_id: from_header.or_else(|| fallback_id.map(str::to_owned)),
            // X-Trace-Id keeps winning for logs and the callback.
            trace_id: text(headers, header::TRACE_ID).or_else(|| trace.trace_id()),
            trace,
            attempt,
            idempotency_key: text(headers, header::IDEMPOTENCY_KEY),
            callback_url: text(headers, header::CALLBACK_URL),
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
