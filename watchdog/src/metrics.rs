//! Prometheus metrics of contract section 7. Label handles for the hot path
//! are resolved once, so recording an invocation is a few atomic adds.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    function: String,
    ok: IntCounter,
    failed: IntCounter,
    duration: Histogram,
    in_flight: IntGauge,
    timeouts: IntCounter,
    queue_depth: IntGauge,
    rejected: IntCounterVec,
    callbacks: IntCounterVec,
    init_duration: Gauge,
    client_disconnects: IntCounter,
    /// Only for the PYTHON runner.
    stuck_threads: Option<IntGauge>,
    /// Only when spans are exported.
    spans_dropped: OnceLock<IntCounter>,
}

impl Metrics {
    pub fn new(function: &str, mode: &str) -> Self {
        let registry = Registry::new();
        let invocations = IntCounterVec::new(
            Opts::new("watchdog_invocations_total", "Invocations run, by outcome"),
            &["function", "mode", "success"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "watchdog_invocation_duration_seconds",
                "Time spent running the function (queue wait excluded)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            &["function", "mode"],
        )
        .unwrap();
        let in_flight = IntGaugeVec::new(
            Opts::new("watchdog_invocations_in_flight", "Invocations running now"),
            &["function"],
        )
        .unwrap();
        let timeouts = IntCounterVec::new(
            Opts::new(
                "watchdog_timeouts_total",
                "Invocations cut by their deadline",
            ),
            &["function", "mode"],
        )
        .unwrap();
        let queue_depth = IntGaugeVec::new(
            Opts::new("watchdog_queue_depth", "Invocations waiting for a slot"),
            &["function"],
        )
        .unwrap();
        let rejected = IntCounterVec::new(
            Opts::new(
                "watchdog_rejected_total",
                "Requests refused before running, by reason",
            ),
            &["function", "reason"],
        )
        .unwrap();
        let callbacks = IntCounterVec::new(
            Opts::new("watchdog_callbacks_total", "Callbacks, by result"),
            &["function", "result"],
        )
        .unwrap();
        let disconnects = IntCounterVec::new(
            Opts::new(
                "watchdog_client_disconnects_total",
                "Clients that disconnected before their invocation's result",
            ),
            &["function"],
        )
        .unwrap();
        let init = GaugeVec::new(
            Opts::new(
                "watchdog_init_duration_seconds",
                "Time from process start until the function was ready",
            ),
            &["function"],
        )
        .unwrap();
        for c in [
            Box::new(invocations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(timeouts.clone()),
            Box::new(queue_depth.clone()),
            Box::new(rejected.clone()),
            Box::new(callbacks.clone()),
            Box::new(init.clone()),
            Box::new(disconnects.clone()),
        ] {
            registry.register(c).unwrap();
        }
        let stuck_threads = (mode == "PYTHON").then(|| {
            let g = IntGaugeVec::new(
                Opts::new(
                    "watchdog_python_stuck_threads",
                    "Python threads given up on past their deadline and still busy",
                ),
                &["function"],
            )
            .unwrap();
            registry.register(Box::new(g.clone())).unwrap();
            g.with_label_values(&[function])
        });
        #[cfg(target_os = "linux")]
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Metrics {
            inner: Arc::new(Inner {
                ok: invocations.with_label_values(&[function, mode, "true"]),
                failed: invocations.with_label_values(&[function, mode, "false"]),
                duration: duration.with_label_values(&[function, mode]),
                in_flight: in_flight.with_label_values(&[function]),
                timeouts: timeouts.with_label_values(&[function, mode]),
                queue_depth: queue_depth.with_label_values(&[function]),
                init_duration: init.with_label_values(&[function]),
                client_disconnects: disconnects.with_label_values(&[function]),
                stuck_threads,
                spans_dropped: OnceLock::new(),
                rejected,
                callbacks,
                function: function.to_owned(),
                registry,
            }),
        }
    }

    pub fn finished(&self, success: bool, took: Duration) {
        let i = &self.inner;
        if success { &i.ok } else { &i.failed }.inc();
        i.duration.observe(took.as_secs_f64());
    }

    pub fn in_flight(&self) -> &IntGauge {
        &self.inner.in_flight
    }

    pub fn queue_depth(&self) -> &IntGauge {
        &self.inner.queue_depth
    }

    pub fn timeout(&self) {
        self.inner.timeouts.inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.inner
            .rejected
            .with_label_values(&[&self.inner.function, reason])
            .inc();
    }

    pub fn callback(&self, result: &str) {
        self.inner
            .callbacks
            .with_label_values(&[&self.inner.function, result])
            .inc();
    }

    pub fn stuck_threads(&self, n: usize) {
        if let Some(g) = &self.inner.stuck_threads {
            g.set(n as i64);
        }
    }

    pub fn client_disconnect(&self) {
        self.inner.client_disconnects.inc();
    }

    /// `watchdog_trace_spans_dropped_total{function}`, registered on first
    /// use: only a watchdog that exports spans shows it.
    pub fn trace_spans_dropped(&self) -> IntCounter {
        let i = &self.inner;
        i.spans_dropped
            .get_or_init(|| {
                let c = IntCounterVec::new(
                    Opts::new(
                        "watchdog_trace_spans_dropped_total",
                        "Spans not exported: the export queue was full or the collector failed",
                    ),
                    &["function"],
                )
                .unwrap();
                let _ = i.registry.register(Box::new(c.clone()));
                c.with_label_values(&[&i.function])
            })
            .clone()
    }

    pub fn init_duration(&self, d: Duration) {
        self.inner.init_duration.set(d.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.inner.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_written_in_name_order() {
        let m = Metrics::new("echo", "STDIO");
        m.finished(true, Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains(
                r#"watchdog_invocations_total{function="echo",mode="STDIO",success="true"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("watchdog_invocation_duration_seconds_bucket"));
    }
}
