//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` and `tracestate` a caller sends (request headers in warm
//! mode, `TRACEPARENT`/`TRACESTATE` in one-shot), and the `traceparent` the
//! function sees.
//!
//! A small strict parser rather than `opentelemetry`'s
//! `TraceContextPropagator`: this runs on every invocation whether or not
//! spans are exported, and the propagator would build an OTel `Context`
//! (boxed, reference-counted) and a `TraceState` map per request only to
//! hand back two ids and a flag. Parsing here allocates nothing.
//!
//! What the function sees: when the watchdog records its own span of the
//! invocation (spans are exported and the caller did not ask for "not
//! sampled"), that span is the parent; otherwise the caller's context goes
//! on as it came. A parent id naming a span that is never exported would
//! leave every span of the function without its parent in the trace.

use std::fmt;

use crate::header_names as names;
use hyper::HeaderMap;
use runtime_sdk::Invocation;

/// `tracestate` longer than this is dropped rather than passed on (the
/// spec asks for at least 512 characters to be propagated).
const MAX_TRACESTATE: usize = 4096;

/// One `traceparent`: the trace, the span that is the parent of whoever
/// receives it, and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

/// Why a `traceparent` was not taken; it is then ignored, never a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Length,
    Version,
    Delimiter,
    NotLowerHex,
    ZeroTraceId,
    ZeroParentId,
    Repeated,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invalid::Length => "wrong length (version 00 is 55 characters)",
            Invalid::Version => "version ff or not two hex digits",
            Invalid::Delimiter => "fields not separated by '-'",
            Invalid::NotLowerHex => "a field is not lower-case hex",
            Invalid::ZeroTraceId => "the trace id is all zeros",
            Invalid::ZeroParentId => "the parent id is all zeros",
            Invalid::Repeated => "more than one traceparent header",
        })
    }
}

/// `00-` + 32 + `-` + 16 + `-` + 2.
const LEN_V00: usize = 55;
const SAMPLED: u8 = 0x01;

fn lower_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn decode(hex: &[u8], out: &mut [u8]) -> Result<(), Invalid> {
    for (pair, byte) in hex.chunks_exact(2).zip(out.iter_mut()) {
        let hi = lower_hex(pair[0]).ok_or(Invalid::NotLowerHex)?;
        let lo = lower_hex(pair[1]).ok_or(Invalid::NotLowerHex)?;
        *byte = hi << 4 | lo;
    }
    Ok(())
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
}

impl TraceParent {
    /// Parses a `traceparent` value as the spec's version 00 says. A higher
    /// version is read the same way, as the spec asks, when what follows
    /// the first four fields starts with `-`; `ff` is never valid.
    pub fn parse(value: &str) -> Result<TraceParent, Invalid> {
        let b = value.as_bytes();
        if b.len() < LEN_V00 {
            return Err(Invalid::Length);
        }
        let mut version = [0u8; 1];
        decode(&b[0..2], &mut version).map_err(|_| Invalid::Version)?;
        if version[0] == 0xff {
            return Err(Invalid::Version);
        }
        if (version[0] == 0 && b.len() != LEN_V00) || (b.len() > LEN_V00 && b[LEN_V00] != b'-') {
            return Err(Invalid::Length);
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(Invalid::Delimiter);
        }
        let mut tp = TraceParent {
            trace_id: [0; 16],
            parent_id: [0; 8],
            sampled: false,
        };
        decode(&b[3..35], &mut tp.trace_id)?;
        decode(&b[36..52], &mut tp.parent_id)?;
        let mut flags = [0u8; 1];
        decode(&b[53..55], &mut flags)?;
        if tp.trace_id == [0; 16] {
            return Err(Invalid::ZeroTraceId);
        }
        if tp.parent_id == [0; 8] {
            return Err(Invalid::ZeroParentId);
        }
        tp.sampled = flags[0] & SAMPLED != 0;
        Ok(tp)
    }

    /// The version-00 header value. Flags other than sampled are not
    /// passed on: version 00 defines no other.
    pub fn header(&self) -> String {
        let mut s = String::with_capacity(LEN_V00);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.parent_id);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.trace_id);
        s
    }
}

/// The trace context of one invocation.
#[derive(Debug, Clone, Default)]
pub struct TraceContext {
    /// The caller's, when it sent a valid `traceparent`.
    pub incoming: Option<TraceParent>,
    /// The caller's `tracestate`, kept only with a valid `traceparent`.
    pub tracestate: Option<String>,
    /// The watchdog's own span of this invocation, when it is recorded:
    /// its trace id, its span id (in `parent_id`, as the function sees it)
    /// and sampled.
    pub own: Option<TraceParent>,
}

impl TraceContext {
    /// From a `traceparent` and a `tracestate` value; an invalid
    /// `traceparent` is logged at debug and ignored with its `tracestate`.
    pub fn read(traceparent: Option<&str>, tracestate: Option<&str>) -> TraceContext {
        let Some(raw) = traceparent.map(str::trim).filter(|s| !s.is_empty()) else {
            return TraceContext::default();
        };
        match TraceParent::parse(raw) {
            Ok(tp) => TraceContext {
                incoming: Some(tp),
                tracestate: tracestate.and_then(keep_tracestate),
                own: None,
            },
            Err(why) => {
                tracing::debug!(traceparent = raw, "traceparent ignored: {why}");
                TraceContext::default()
            }
        }
    }

    /// From request headers (section 4). Repeated `tracestate` headers are
    /// one list; a repeated `traceparent` is invalid.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let mut parents = headers.get_all(&names::TRACEPARENT).iter();
        let Some(first) = parents.next() else {
            return TraceContext::default();
        };
        let Ok(first) = first.to_str() else {
            tracing::debug!("traceparent ignored: {}", Invalid::NotLowerHex);
            return TraceContext::default();
        };
        if parents.next().is_some() {
            tracing::debug!(
                traceparent = first,
                "traceparent ignored: {}",
                Invalid::Repeated
            );
            return TraceContext::default();
        }
        let mut states = headers.get_all(&names::TRACESTATE).iter();
        let state = match (states.next(), states.next()) {
            (None, _) => None,
            (Some(one), None) => one.to_str().ok().map(str::to_owned),
            (Some(a), Some(b)) => {
                let mut joined = Vec::new();
                for v in [a, b].into_iter().chain(states) {
                    if let Ok(v) = v.to_str() {
                        joined.push(v.trim());
                    }
                }
                Some(joined.join(","))
            }
        };
        TraceContext::read(Some(first), state.as_deref())
    }

    /// Makes the watchdog's span the parent of what the function does,
    /// unless the caller said "not sampled" (then nothing records it, and
    /// the caller's context goes on unchanged). A new trace starts when the
    /// caller sent none. Returns whether the span is recorded.
    pub fn open_span(&mut self, span_id: [u8; 8], new_trace_id: impl FnOnce() -> [u8; 16]) -> bool {
        let (trace_id, sampled) = match &self.incoming {
            Some(tp) => (tp.trace_id, tp.sampled),
            None => (new_trace_id(), true),
        };
        if !sampled {
            return false;
        }
        self.own = Some(TraceParent {
            trace_id,
            parent_id: span_id,
            sampled,
        });
        true
    }

    /// The `traceparent` the function sees.
    pub fn child(&self) -> Option<&TraceParent> {
        self.own.as_ref().or(self.incoming.as_ref())
    }

    /// The W3C trace id, as the invocation's trace id when no `X-Trace-Id`
    /// (or `TRACE_ID`) names one.
    pub fn trace_id(&self) -> Option<String> {
        self.child().map(TraceParent::trace_id_hex)
    }

    /// Hands the context to the function, and the W3C trace id to an
    /// invocation that has no trace id of its own.
    pub fn apply(&self, inv: &mut Invocation) {
        let Some(child) = self.child() else {
            return;
        };
        if inv.trace_id.is_none() {
            inv.trace_id = Some(child.trace_id_hex());
        }
        inv.traceparent = Some(child.header());
        inv.tracestate = self.tracestate.clone();
    }
}

fn keep_tracestate(value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.len() > MAX_TRACESTATE {
        tracing::debug!(
            len = value.len(),
            "tracestate dropped: longer than {MAX_TRACESTATE} characters"
        );
        return None;
    }
    Some(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            tp.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(tp.sampled);
        assert_eq!(tp.header(), VALID);
        let unsampled = VALID.replace("-01", "-00");
        let tp = TraceParent::parse(&unsampled).unwrap();
        assert!(!tp.sampled);
        assert_eq!(tp.header(), unsampled);
    }

    #[test]
    fn unknown_flags_are_not_passed_on() {
        let tp = TraceParent::parse(&VALID.replace("-01", "-03")).unwrap();
        assert!(tp.sampled);
        assert!(tp.header().ends_with("-01"));
    }

    #[test]
    fn version_ff_and_non_hex_versions_are_invalid() {
        assert_eq!(
            TraceParent::parse(&VALID.replacen("00", "ff", 1)),
            Err(Invalid::Version)
        );
        assert_eq!(
            TraceParent::parse(&VALID.replacen("00", "0g", 1)),
            Err(Invalid::Version)
        );
        assert_eq!(
            TraceParent::parse(&VALID.replacen("00", "0A", 1)),
            Err(Invalid::Version)
        );
    }

    #[test]
    fn a_higher_version_is_read_by_its_first_fields() {
        let future = VALID.replacen("00", "cc", 1) + "-what-comes-next";
        let tp = TraceParent::parse(&future).unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.header(), VALID);
        // The same length as version 00 is fine; more must start with '-'.
        assert!(TraceParent::parse(&VALID.replacen("00", "cc", 1)).is_ok());
        assert_eq!(
            TraceParent::parse(&(VALID.replacen("00", "cc", 1) + "x")),
            Err(Invalid::Length)
        );
    }

    #[test]
    fn all_zero_ids_are_invalid() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(zero_trace), Err(Invalid::ZeroTraceId));
        let zero_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        assert_eq!(TraceParent::parse(zero_parent), Err(Invalid::ZeroParentId));
    }

    #[test]
    fn wrong_lengths_are_invalid() {
        assert_eq!(TraceParent::parse(""), Err(Invalid::Length));
        assert_eq!(TraceParent::parse(&VALID[..54]), Err(Invalid::Length));
        assert_eq!(
            TraceParent::parse(&format!("{VALID}0")),
            Err(Invalid::Length)
        );
        // Version 00 with anything after it, even a '-', is invalid.
        assert_eq!(
            TraceParent::parse(&format!("{VALID}-")),
            Err(Invalid::Length)
        );
        // Field lengths shifted: a short trace id, a long parent id.
        let shifted = "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(shifted), Err(Invalid::Delimiter));
        let short_flags = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1";
        assert_eq!(TraceParent::parse(short_flags), Err(Invalid::Length));
    }

    #[test]
    fn upper_case_hex_is_invalid() {
        assert_eq!(
            TraceParent::parse(&VALID.to_uppercase()),
            Err(Invalid::NotLowerHex)
        );
        let upper_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01";
        assert_eq!(TraceParent::parse(upper_parent), Err(Invalid::NotLowerHex));
        let upper_flags = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A";
        assert_eq!(TraceParent::parse(upper_flags), Err(Invalid::NotLowerHex));
    }

    #[test]
    fn other_separators_are_invalid() {
        assert_eq!(
            TraceParent::parse(&VALID.replace('-', "_")),
            Err(Invalid::Delimiter)
        );
    }

    #[test]
    fn without_a_recorded_span_the_callers_context_goes_on() {
        let ctx = TraceContext::read(Some(VALID), Some("congo=t61rcWkgMzE"));
        let mut inv = Invocation::new("e1", runtime_sdk::Json::null(), Default::default());
        ctx.apply(&mut inv);
        assert_eq!(inv.traceparent.as_deref(), Some(VALID));
        assert_eq!(inv.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(
            inv.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn the_watchdogs_span_is_the_functions_parent() {
        let mut ctx = TraceContext::read(Some(VALID), None);
        assert!(ctx.open_span([7; 8], || unreachable!("the trace exists")));
        let mut inv = Invocation::new("e1", runtime_sdk::Json::null(), Default::default());
        inv.trace_id = Some("from-x-trace-id".into());
        ctx.apply(&mut inv);
        assert_eq!(
            inv.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0707070707070707-01")
        );
        // X-Trace-Id keeps winning for logs and the callback.
        assert_eq!(inv.trace_id.as_deref(), Some("from-x-trace-id"));
    }

    #[test]
    fn a_new_trace_starts_without_a_caller_and_none_when_not_sampled() {
        let mut ctx = TraceContext::read(None, None);
        assert!(ctx.open_span([1; 8], || [2; 16]));
        assert_eq!(ctx.trace_id().unwrap(), "02".repeat(16));
        let mut ctx = TraceContext::read(Some(&VALID.replace("-01", "-00")), None);
        assert!(!ctx.open_span([1; 8], || [2; 16]));
        assert!(ctx.own.is_none());
        assert_eq!(ctx.child().unwrap().parent_id[0], 0x00);
    }

    #[test]
    fn an_invalid_traceparent_drops_its_tracestate_too() {
        let ctx = TraceContext::read(Some("garbage"), Some("a=b"));
        assert!(ctx.incoming.is_none() && ctx.tracestate.is_none());
        assert!(ctx.trace_id().is_none());
    }

    #[test]
    fn headers_repeated_tracestate_joins_repeated_traceparent_is_invalid() {
        let mut h = HeaderMap::new();
        h.append("traceparent", VALID.parse().unwrap());
        h.append("tracestate", "a=1".parse().unwrap());
        h.append("tracestate", "b=2".parse().unwrap());
        let ctx = TraceContext::from_headers(&h);
        assert_eq!(ctx.tracestate.as_deref(), Some("a=1,b=2"));
        h.append("traceparent", VALID.parse().unwrap());
        assert!(TraceContext::from_headers(&h).incoming.is_none());
    }
}
