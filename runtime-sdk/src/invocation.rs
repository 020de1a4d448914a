use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Payload;

/// One call of the function: the payload and what the contract says travels
/// with it (section 4 headers, section 9 context).
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Shared, not copied: the deadline, the runner and its logs each keep it
    /// for the length of the call.
    pub execution_id: Arc<str>,
    pub trace_id: Option<String>,
    /// The W3C `traceparent` the function sees (children's `TRACEPARENT`,
    /// an `HTTP` runtime's header, Python's `context.traceparent`): the
    /// watchdog's own span as parent when it exports spans, else the
    /// caller's as it came.
    pub traceparent: Option<String>,
    /// W3C `tracestate`, passed on with `traceparent`.
    pub tracestate: Option<String>,
    /// `X-Dispatch-Attempt`, a positive integer.
    pub attempt: Option<u32>,
    pub idempotency_key: Option<String>,
    /// When the invocation must have ended; queued time counts against it.
    /// [`Invocation::deadline_unix_ms`] gives it as wall-clock time.
    pub deadline: Instant,
    /// True for the first invocation after start-up.
    pub cold_start: bool,
    pub function_name: String,
    /// Any JSON value, passed through unchanged as the bytes it came as,
    /// or raw bytes (section 3).
    pub payload: Payload,
    /// The HTTP request that carried it (warm mode), for handlers that
    /// want its method, path and headers.
    pub request: Option<std::sync::Arc<RequestInfo>>,
    /// Extra headers an `HTTP` runtime should see (lower-case names).
    pub headers: BTreeMap<String, String>,
    /// Frees the invocation's running slot (warm admission) once the function
    /// has returned, before its answer has travelled back; empty elsewhere.
    pub slot: SlotRelease,
    /// `deadline` minus when it was set, for the `TIMEOUT` message.
    budget: Duration,
}

/// Frees a running slot, at most once, whoever calls it first: the runner when
/// its function returns, or the watchdog when the invocation ends. A runner that
/// never calls it changes nothing. Why: the answer of a call that ran on a tokio
/// worker reaches its connection only when that connection is polled again, and
/// until then its slot would keep a waiting request waiting for nothing.
#[derive(Clone, Default)]
pub struct SlotRelease(Option<std::sync::Arc<dyn Fn() + Send + Sync>>);

impl SlotRelease {
    /// `free` must be idempotent: it runs on every call to `release`.
    pub fn new(free: impl Fn() + Send + Sync + 'static) -> Self {
        SlotRelease(Some(std::sync::Arc::new(free)))
    }

    pub fn release(&self) {
        if let Some(free) = &self.0 {
            free();
        }
    }
}

impl std::fmt::Debug for SlotRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SlotRelease"
        } else {
            "SlotRelease(none)"
        })
    }
}

impl Invocation {
    /// A new invocation whose deadline is `timeout` from now.
    pub fn new(
        execution_id: impl Into<Arc<str>>,
        payload: impl Into<Payload>,
        timeout: Duration,
    ) -> Self {
        Self::with_deadline(execution_id, payload, Instant::now() + timeout, timeout)
    }

    /// A new invocation due at `deadline`, given as `budget` when it was set
    /// (warm: at the request's arrival, so queued time counts).
    pub fn with_deadline(
        execution_id: impl Into<Arc<str>>,
        payload: impl Into<Payload>,
        deadline: Instant,
        budget: Duration,
    ) -> Self {
        Invocation {
            execution_id: execution_id.into(),
            trace_id: None,
            traceparent: None,
            tracestate: None,
            attempt: None,
            idempotency_key: None,
            deadline,
            cold_start: false,
            function_name: String::new(),
            payload: payload.into(),
            request: None,
            headers: BTreeMap::new(),
            slot: SlotRelease::default(),
            budget,
        }
    }

    /// Sets the deadline to `timeout` from now, whatever it was (one-shot:
    /// the clock starts once the function is ready, section 5).
    pub fn restart_deadline(&mut self, timeout: Duration) {
        self.deadline = Instant::now() + timeout;
        self.budget = timeout;
    }

    /// Moves the deadline earlier (never later) to `timeout` from now.
    pub fn shorten_deadline(&mut self, timeout: Duration) {
        let candidate = Instant::now() + timeout;
        if candidate < self.deadline {
            self.deadline = candidate;
            self.budget = timeout;
        }
    }

    /// The deadline as Unix milliseconds, for runners that hand it to another
    /// process (the `LOOP` protocol, Python's `context.deadline_ms`). Read from
    /// the clocks when asked, not kept: most invocations are never asked.
    pub fn deadline_unix_ms(&self) -> u64 {
        unix_ms_in(self.deadline.saturating_duration_since(Instant::now()))
    }

    /// The time this invocation was given when its deadline was set.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// The HTTP request of a warm invocation, as a handler sees it.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
}

fn unix_ms_in(d: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + d).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Json;

    #[test]
    fn deadline_only_moves_earlier() {
        let mut inv = Invocation::new("e1", Json::null(), Duration::from_secs(10));
        let before = inv.deadline;
        inv.shorten_deadline(Duration::from_secs(60));
        assert_eq!(inv.deadline, before);
        inv.shorten_deadline(Duration::from_millis(100));
        assert!(inv.deadline < before);
        assert!(inv.remaining() <= Duration::from_millis(100));
    }
}
