//! Span export (OpenTelemetry over OTLP/HTTP), on only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! set; without it there is no [`Spans`], and nothing here runs.
//!
//! One span per invocation, `invoke <function>`, child of the caller's
//! `traceparent`, with two children: the wait before running (`queue` in
//! warm mode, `init` in one-shot: input check and start-up) and `run` (the
//! pipeline). Its span id is chosen when the request is read (see
//! `tracecontext`), because the function's `traceparent` names it before
//! it runs; so the spans are written as `SpanData` when the invocation
//! ends, and handed straight to the SDK's batch processor, without the
//! SDK's tracer (which picks its own ids).
//!
//! The batch processor exports on its own thread; an invocation only
//! pushes into a bounded queue and never waits. In front of the processor
//! sits a count of the spans it holds: past `OTEL_BSP_MAX_QUEUE_SIZE` a new
//! span is dropped here, so the processor's own queue (which drops
//! silently) never fills. Spans lost that way, or in an export that
//! failed, are counted in `watchdog_trace_spans_dropped_total`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response, ResponseBodyTooLarge};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SpanData, SpanEvents,
    SpanExporter, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use runtime_sdk::{Invocation, InvokeResult};

use crate::config::OtelConfig;
use crate::metrics::Metrics;
use crate::tracecontext::TraceContext;

/// How long exiting waits for the last spans to go out.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// A collector's answer is a small status message; more is not read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The exporter of one watchdog; cheap to clone.
#[derive(Clone)]
pub struct Spans {
    inner: Arc<Inner>,
}

struct Inner {
    processor: BatchSpanProcessor,
    /// Spans handed to the processor that the exporter has not taken yet.
    pending: Arc<AtomicUsize>,
    capacity: usize,
    dropped: IntCounter,
    scope: InstrumentationScope,
    /// `invoke <function>`.
    name: Cow<'static, str>,
    mode: &'static str,
    ids: RandomIdGenerator,
}

impl Spans {
    /// Builds the exporter and starts the batch processor's thread. Its HTTP
    /// requests run on `runtime` (the processor's thread has none).
    pub fn start(
        cfg: &OtelConfig,
        function: &str,
        mode: &'static str,
        metrics: &Metrics,
        runtime: tokio::runtime::Handle,
    ) -> Result<Spans, String> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .build()
            .map_err(|e| format!("the OTLP HTTP client cannot be built: {e}"))?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OnRuntime { client, runtime })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.traces_endpoint.as_str())
            .with_timeout(cfg.timeout)
            .build()
            .map_err(|e| format!("the OTLP span exporter cannot be built: {e}"))?;
        // The builder's detectors add OTEL_RESOURCE_ATTRIBUTES.
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .with_attribute(KeyValue::new("faas.name", function.to_owned()))
            .build();
        exporter.set_resource(&resource);
        tracing::info!(
            endpoint = %cfg.traces_endpoint,
            service = %cfg.service_name,
            "exporting a span per invocation over OTLP/HTTP"
        );
        Ok(Spans::with_exporter(
            exporter,
            cfg.max_queue,
            function,
            mode,
            metrics,
        ))
    }

    /// The batch processor in front of `exporter` (tests pass their own).
    pub fn with_exporter<E: SpanExporter + 'static>(
        exporter: E,
        max_queue: usize,
        function: &str,
        mode: &'static str,
        metrics: &Metrics,
    ) -> Spans {
        let pending = Arc::new(AtomicUsize::new(0));
        let dropped = metrics.trace_spans_dropped();
        let counted = Counted {
            inner: exporter,
            pending: pending.clone(),
            dropped: dropped.clone(),
            failing: AtomicBool::new(false),
        };
        // Batch size and delay come from OTEL_BSP_* (read by the SDK); the
        // queue's size is the bound checked in `submit`.
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(max_queue)
            .build();
        let processor = BatchSpanProcessor::builder(counted)
            .with_batch_config(batch)
            .build();
        Spans {
            inner: Arc::new(Inner {
                processor,
                pending,
                capacity: max_queue,
                dropped,
                scope: InstrumentationScope::builder("ember-watchdog")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
                name: Cow::Owned(format!("invoke {function}")),
                mode,
                ids: RandomIdGenerator::default(),
            }),
        }
    }

    /// Gives the invocation the watchdog's span (and a new trace when the
    /// caller sent none), unless the caller said "not sampled".
    pub fn open(&self, trace: &mut TraceContext) {
        let ids = &self.inner.ids;
        trace.open_span(self.inner.span_id(), || {
            nonzero(|| ids.new_trace_id().to_bytes())
        });
    }

    /// Starts recording an invocation whose span `open` gave it (`None`
    /// when it was not sampled). `started` is when it arrived; the wait
    /// phase (`first`) starts now and ends at [`Recording::running`].
    pub fn begin(
        &self,
        trace: &TraceContext,
        inv: &Invocation,
        started: Instant,
        first: &'static str,
    ) -> Option<Recording> {
        let own = trace.own?;
        let now = Instant::now();
        Some(Recording {
            spans: self.clone(),
            trace_id: TraceId::from_bytes(own.trace_id),
            span_id: SpanId::from_bytes(own.parent_id),
            parent: trace.incoming.map(|tp| SpanId::from_bytes(tp.parent_id)),
            state: trace
                .tracestate
                .as_deref()
                .and_then(|s| s.parse::<TraceState>().ok())
                .unwrap_or_default(),
            execution_id: inv.execution_id.to_string(),
            cold_start: inv.cold_start,
            clock: (now, SystemTime::now()),
            started,
            waiting: now,
            first,
            running: OnceLock::new(),
        })
    }

    /// Hands a finished span to the batch processor, or drops and counts it
    /// when as many are already waiting as the queue holds.
    fn submit(&self, span: SpanData) {
        let i = &self.inner;
        if i.pending.fetch_add(1, Ordering::AcqRel) >= i.capacity {
            i.pending.fetch_sub(1, Ordering::AcqRel);
            i.dropped.inc();
            return;
        }
        i.processor.on_end(span);
    }

    /// Exports what is left, within `limit` (on exit).
    pub async fn shutdown(&self, limit: Duration) {
        let inner = self.inner.clone();
        // Blocking: it waits for the processor's thread, whose requests
        // run on this runtime's workers.
        let flush =
            tokio::task::spawn_blocking(move || inner.processor.shutdown_with_timeout(limit));
        match tokio::time::timeout(limit + Duration::from_millis(100), flush).await {
            Ok(Ok(Ok(()))) => tracing::debug!("spans flushed"),
            Ok(Ok(Err(e))) => tracing::warn!("the last spans were not all exported: {e}"),
            _ => tracing::warn!(
                "the last spans were not all exported within {} ms",
                limit.as_millis()
            ),
        }
    }
}

impl Inner {
    fn span_id(&self) -> [u8; 8] {
        nonzero(|| self.ids.new_span_id().to_bytes())
    }
}

/// Random ids are zero once in 2^64 draws; zero is invalid (W3C).
fn nonzero<const N: usize>(draw: impl Fn() -> [u8; N]) -> [u8; N] {
    loop {
        let id = draw();
        if id != [0; N] {
            return id;
        }
    }
}

/// One invocation being recorded: its three spans are written by `end`.
pub struct Recording {
    spans: Spans,
    trace_id: TraceId,
    span_id: SpanId,
    /// The caller's span, when it sent a `traceparent`.
    parent: Option<SpanId>,
    state: TraceState,
    execution_id: String,
    cold_start: bool,
    /// One reading of both clocks, to turn `Instant`s into wall time.
    clock: (Instant, SystemTime),
    started: Instant,
    waiting: Instant,
    first: &'static str,
    running: OnceLock<Instant>,
}

impl Recording {
    /// The invocation has its slot and starts running.
    pub fn running(&self) {
        let _ = self.running.set(Instant::now());
    }

    fn wall(&self, at: Instant) -> SystemTime {
        let (then, wall) = self.clock;
        if at >= then {
            wall + (at - then)
        } else {
            wall - (then - at)
        }
    }

    fn span(&self, id: SpanId, parent: SpanId, remote: bool, name: Cow<'static, str>) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                id,
                TraceFlags::SAMPLED,
                false,
                self.state.clone(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: remote,
            span_kind: SpanKind::Internal,
            name,
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: self.spans.inner.scope.clone(),
        }
    }

    /// Writes the invocation's spans: the wait, the run (if it got that
    /// far), and the invocation with its outcome.
    pub fn end(&self, result: &InvokeResult) {
        let inner = &self.spans.inner;
        let ended = Instant::now();
        let running = self.running.get().copied();

        let mut wait = self.span(
            SpanId::from_bytes(inner.span_id()),
            self.span_id,
            false,
            Cow::Borrowed(self.first),
        );
        wait.start_time = self.wall(self.waiting);
        wait.end_time = self.wall(running.unwrap_or(ended));
        self.spans.submit(wait);

        if let Some(running) = running {
            let mut run = self.span(
                SpanId::from_bytes(inner.span_id()),
                self.span_id,
                false,
                Cow::Borrowed("run"),
            );
            run.start_time = self.wall(running);
            run.end_time = self.wall(ended);
            self.spans.submit(run);
        }

        let mut invoke = self.span(
            self.span_id,
            self.parent.unwrap_or(SpanId::INVALID),
            self.parent.is_some(),
            inner.name.clone(),
        );
        invoke.span_kind = SpanKind::Server;
        invoke.start_time = self.wall(self.started);
        invoke.end_time = self.wall(ended);
        invoke.attributes = vec![
            KeyValue::new("ember.execution_id", self.execution_id.clone()),
            KeyValue::new("ember.mode", inner.mode),
            KeyValue::new("ember.success", result.is_ok()),
            KeyValue::new("faas.coldstart", self.cold_start),
        ];
        if let Err(e) = result {
            invoke.attributes.push(KeyValue::new(
                "ember.error_code",
                e.code.as_str().to_owned(),
            ));
            invoke.status = Status::error(format!(
                "{}: {}",
                e.code,
                crate::runner::process::preview(&e.message, 500)
            ));
        }
        self.spans.submit(invoke);
    }
}

/// The OTLP exporter, with the spans it takes off the count in front of
/// the processor, and those of a failed export counted as dropped.
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    dropped: IntCounter,
    /// Set while exports fail: one warning per outage, not per batch.
    failing: AtomicBool,
}

impl<E> std::fmt::Debug for Counted<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counted")
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.pending.fetch_sub(n, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) => {
                self.dropped.inc_by(n as u64);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "span export failed, {n} spans dropped (counted in watchdog_trace_spans_dropped_total until it works again): {e}"
                    );
                } else {
                    tracing::debug!("span export failed, {n} spans dropped: {e}");
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("span export works again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The watchdog's reqwest client as the exporter's HTTP client. The batch
/// processor polls exports on its own thread, outside tokio, so each
/// request is spawned on the runtime and its result awaited.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let mut resp = client.execute(request).await?;
            let mut body = BytesMut::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err::<_, HttpError>(Box::new(ResponseBodyTooLarge::new()));
                }
                body.extend_from_slice(&chunk);
            }
            let mut answer = Response::new(body.freeze());
            *answer.status_mut() = resp.status();
            *answer.headers_mut() = std::mem::take(resp.headers_mut());
            Ok(answer)
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_sdk::{ErrorCode, InvokeError, Json};
    use std::sync::Mutex;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Keeps what it is given, or fails every export; a closed gate holds
    /// exports until it opens.
    #[derive(Debug, Clone, Default)]
    struct Collector {
        spans: Arc<Mutex<Vec<SpanData>>>,
        fail: bool,
        gate: Option<Arc<(Mutex<bool>, std::sync::Condvar)>>,
    }

    impl SpanExporter for Collector {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if let Some(gate) = &self.gate {
                let (open, cv) = &**gate;
                let _open = cv.wait_while(open.lock().unwrap(), |open| !*open).unwrap();
            }
            if self.fail {
                return Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    "the collector is down".into(),
                ));
            }
            self.spans.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn invocation(spans: &Spans, traceparent: Option<&str>) -> (Recording, TraceContext) {
        let mut trace = TraceContext::read(traceparent, Some("vendor=v1"));
        spans.open(&mut trace);
        let mut inv = Invocation::new("e1", Json::null(), Duration::from_secs(1));
        trace.apply(&mut inv);
        let r = spans.begin(&trace, &inv, Instant::now(), "queue").unwrap();
        (r, trace)
    }

    #[tokio::test]
    async fn an_invocation_is_a_span_with_a_wait_and_a_run_child() {
        let metrics = Metrics::new("echo", "FAKE");
        let collector = Collector::default();
        let spans = Spans::with_exporter(collector.clone(), 16, "echo", "FAKE", &metrics);
        let (r, trace) = invocation(&spans, Some(CALLER));
        r.running();
        r.end(&Err(InvokeError::new(ErrorCode::FunctionError, "boom")));
        spans.shutdown(Duration::from_secs(2)).await;

        let got = collector.spans.lock().unwrap().clone();
        let by_name = |n: &str| got.iter().find(|s| s.name == n).unwrap().clone();
        let (invoke, queue, run) = (by_name("invoke echo"), by_name("queue"), by_name("run"));
        let own = trace.own.unwrap();
        assert_eq!(invoke.span_context.span_id().to_bytes(), own.parent_id);
        assert_eq!(invoke.span_context.trace_id().to_bytes(), own.trace_id);
        assert_eq!(format!("{}", invoke.parent_span_id), "00f067aa0ba902b7");
        assert!(invoke.parent_span_is_remote);
        assert_eq!(invoke.span_context.trace_state().header(), "vendor=v1");
        for child in [&queue, &run] {
            assert_eq!(child.parent_span_id, invoke.span_context.span_id());
            assert!(invoke.start_time <= child.start_time && child.end_time <= invoke.end_time);
        }
        assert!(queue.end_time <= run.start_time);
        let attr = |k: &str| {
            invoke
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("ember.error_code").as_deref(), Some("FUNCTION_ERROR"));
        assert_eq!(attr("ember.success").as_deref(), Some("false"));
        assert_eq!(attr("ember.execution_id").as_deref(), Some("e1"));
        assert!(matches!(invoke.status, Status::Error { .. }));
    }

    #[tokio::test]
    async fn a_caller_that_says_not_sampled_gets_no_span() {
        let metrics = Metrics::new("echo", "FAKE");
        let spans = Spans::with_exporter(Collector::default(), 16, "echo", "FAKE", &metrics);
        let mut trace = TraceContext::read(Some(&CALLER.replace("-01", "-00")), None);
        spans.open(&mut trace);
        let inv = Invocation::new("e1", Json::null(), Duration::from_secs(1));
        assert!(spans.begin(&trace, &inv, Instant::now(), "queue").is_none());
        spans.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn spans_of_a_failed_export_are_counted_as_dropped() {
        let metrics = Metrics::new("echo", "FAKE");
        let collector = Collector {
            fail: true,
            ..Collector::default()
        };
        let spans = Spans::with_exporter(collector, 16, "echo", "FAKE", &metrics);
        let (r, _) = invocation(&spans, None);
        r.running();
        r.end(&Ok(Json::null().into()));
        spans.shutdown(Duration::from_secs(2)).await;
        assert_eq!(metrics.trace_spans_dropped().get(), 3);
        assert!(metrics
            .render()
            .contains(r#"watchdog_trace_spans_dropped_total{function="echo"} 3"#));
    }

    #[tokio::test]
    async fn a_full_queue_drops_new_spans_without_waiting() {
        let metrics = Metrics::new("echo", "FAKE");
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let collector = Collector {
            gate: Some(gate.clone()),
            ..Collector::default()
        };
        let spans = Spans::with_exporter(collector.clone(), 4, "echo", "FAKE", &metrics);
        let started = Instant::now();
        for _ in 0..10 {
            let (r, _) = invocation(&spans, None);
            r.running();
            r.end(&Ok(Json::null().into()));
        }
        assert!(started.elapsed() < Duration::from_millis(500));
        // At most a queue's worth waits, and one batch (at most the queue's
        // size) may be held by the stuck export: the rest is dropped.
        let dropped = metrics.trace_spans_dropped().get();
        assert!(dropped >= 30 - 2 * 4, "{dropped}");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        spans.shutdown(Duration::from_secs(2)).await;
        let exported = collector.spans.lock().unwrap().len() as u64;
        assert_eq!(exported + metrics.trace_spans_dropped().get(), 30);
    }
}
