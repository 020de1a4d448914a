//! Posting results to the control plane (contract section 6): one pooled
//! client, exponential backoff with jitter on retryable failures, the same
//! `Idempotency-Key` on every attempt.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use runtime_sdk::names::header;
use runtime_sdk::{Invocation, InvokeResult};
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::config::CallbackConfig;
use crate::metrics::Metrics;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// `{CALLBACK_URL}/{EXECUTION_ID}:complete`; a URL already ending in
/// `:complete` is used as is, a trailing `/` dropped.
pub fn complete_url(base: &url::Url, execution_id: &str) -> Result<url::Url, String> {
    let text = base.as_str().trim_end_matches('/');
    if text.ends_with(":complete") {
        return url::Url::parse(text).map_err(|e| e.to_string());
    }
    let id: String = url::form_urlencoded::byte_serialize(execution_id.as_bytes()).collect();
    url::Url::parse(&format!("{text}/{id}:complete")).map_err(|e| e.to_string())
}

/// The callback body (section 6), written around the output's own bytes.
pub fn result_body(result: &InvokeResult) -> Vec<u8> {
    match result {
        Ok(output) => {
            // Bytes travel as a base64 string, marked so (README, "Binary payloads").
            let as_json = output.to_json();
            let mut body = Vec::with_capacity(as_json.json.len() + 64);
            body.extend_from_slice(b"{\"success\":true,\"output\":");
            body.extend_from_slice(as_json.json.as_bytes());
            if let Some(encoding) = as_json.encoding {
                body.extend_from_slice(b",\"output_encoding\":");
                serde_json::to_writer(&mut body, encoding).expect("a str serialises");
            }
            body.extend_from_slice(b",\"error\":null}");
            body
        }
        Err(e) => serde_json::to_vec(&json!({"success": false, "output": null, "error": e}))
            .expect("an error serialises"),
    }
}

/// What identifies an invocation on its callback.
#[derive(Debug, Clone, Default)]
pub struct Ids {
    pub execution_id: String,
    pub trace_id: Option<String>,
    pub attempt: Option<u32>,
    pub idempotency_key: Option<String>,
}

impl Ids {
    pub fn of(inv: &Invocation) -> Self {
        Ids {
            execution_id: inv.execution_id.to_string(),
            trace_id: inv.trace_id.clone(),
            attempt: inv.attempt,
            idempotency_key: inv.idempotency_key.clone(),
        }
    }
}

/// One result to deliver.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: url::Url,
    pub execution_id: String,
    pub trace_id: Option<String>,
    pub attempt: Option<u32>,
    pub idempotency_key: String,
    pub body: bytes::Bytes,
}

impl Delivery {
    pub fn new(url: url::Url, ids: &Ids, result: &InvokeResult) -> Self {
        Delivery {
            url,
            execution_id: ids.execution_id.clone(),
            trace_id: ids.trace_id.clone(),
            attempt: ids.attempt,
            // Stable across attempts and restarts, so the control plane can
            // drop a duplicate of the same execution's result.
            idempotency_key: ids
                .idempotency_key
                .clone()
                .unwrap_or_else(|| ids.execution_id.clone()),
            body: result_body(result).into(),
        }
    }
}

/// Whether `CALLBACK_TOKEN` may go to `url` (section 6): only to `CALLBACK_URL`'s
/// origin and to listed ones. Origins compare as scheme, host and port, so
/// `http://cp` and `http://cp:80` are one origin and `https://cp` another.
fn may_receive_token(token_origins: &[String], url: &url::Url) -> bool {
    let origin = url.origin();
    origin.is_tuple() && token_origins.contains(&origin.ascii_serialization())
}

#[derive(Debug)]
struct AttemptError {
    retryable: bool,
    message: String,
}

#[derive(Clone)]
pub struct CallbackClient {
    http: reqwest::Client,
    cfg: CallbackConfig,
    metrics: Metrics,
    tracker: TaskTracker,
}

/// An error and what caused it, on one line: reqwest's own text ("error
/// sending request") does not say whether DNS, the connection or the TLS
/// certificate (`UnknownIssuer`) failed; its sources do.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

impl CallbackClient {
    pub fn new(cfg: CallbackConfig, metrics: Metrics) -> Self {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // Section 6: a redirect would carry the result (and, to the same
            // origin, the token) wherever the answer points; a 3xx is a failed
            // delivery instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("TLS backend available");
        CallbackClient {
            http,
            cfg,
            metrics,
            tracker: TaskTracker::new(),
        }
    }

    pub fn config(&self) -> &CallbackConfig {
        &self.cfg
    }

    /// The longest one delivery can take: every attempt timing out, with
    /// the longest backoff between them. Flushing at exit waits this long
    /// at most (README, "Choosing the shutdown timeouts").
    pub fn budget(&self) -> Duration {
        let attempts = self.cfg.attempts.max(1);
        self.cfg.timeout * attempts + MAX_BACKOFF * (attempts - 1)
    }

    async fn attempt(&self, d: &Delivery) -> Result<(), AttemptError> {
        let mut req = self
            .http
            .post(d.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(header::IDEMPOTENCY_KEY, &d.idempotency_key)
            .body(d.body.clone());
        if let Some(t) = &d.trace_id {
            req = req.header(header::TRACE_ID, t);
        }
        if let Some(a) = d.attempt {
            req = req.header(header::DISPATCH_ATTEMPT, a);
        }
        if let Some(token) = &self.cfg.token {
            if may_receive_token(&self.cfg.token_origins, &d.url) {
                req = req.bearer_auth(token);
            } else {
                tracing::warn!(
                    url = %d.url,
                    "CALLBACK_TOKEN withheld: the callback's origin is neither CALLBACK_URL's nor listed in CALLBACK_ALLOWED_ORIGINS"
                );
            }
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) if resp.status().is_redirection() => Err(AttemptError {
                retryable: false,
                message: format!(
                    "HTTP {} to {}: redirects are not followed",
                    resp.status().as_u16(),
                    resp.headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("(no Location)")
                ),
            }),
            Ok(resp) => {
                let status = resp.status().as_u16();
                Err(AttemptError {
                    retryable: status == 408 || status == 429 || status >= 500,
                    message: format!("HTTP {status}"),
                })
            }
            Err(e) => Err(AttemptError {
                retryable: true,
                message: if e.is_timeout() {
                    format!(
                        "no answer within CALLBACK_TIMEOUT_MS={}",
                        self.cfg.timeout.as_millis()
                    )
                } else {
                    with_causes(&e)
                },
            }),
        }
    }

    /// Delivers `d`, retrying as section 6 says. `Err` means it was not
    /// accepted; the caller decides what that means (exit 1 one-shot).
    pub async fn deliver(&self, d: &Delivery) -> Result<(), String> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(self.cfg.attempts.saturating_sub(1) as usize)
            .with_jitter();
        let result = (|| self.attempt(d))
            .retry(backoff)
            .when(|e| e.retryable)
            .notify(|e, wait| {
                tracing::warn!(url = %d.url, error = %e.message, retry_in_ms = wait.as_millis() as u64, "callback attempt failed")
            })
            .await;
        match result {
            Ok(()) => {
                self.metrics.callback("delivered");
                tracing::debug!(url = %d.url, "callback accepted");
                Ok(())
            }
            Err(e) => {
                self.metrics.callback("failed");
                let message = format!("callback to {} was not accepted: {}", d.url, e.message);
                tracing::error!(execution_id = %d.execution_id, "{message}");
                Err(message)
            }
        }
    }

    /// Warm mode: deliver in the background, never delaying the response.
    pub fn spawn(&self, d: Delivery) {
        let this = self.clone();
        let span = tracing::Span::current();
        self.tracker.spawn(tracing::Instrument::instrument(
            async move {
                let _ = this.deliver(&d).await;
            },
            span,
        ));
    }

    /// Waits for background deliveries (at most `limit`), before exit.
    pub async fn flush(&self, limit: Duration) {
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(
                pending = self.tracker.len(),
                "callbacks still pending at exit were not delivered"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn attempt_errors_say_what_caused_them() {
        let tls = Layer("invalid peer certificate: UnknownIssuer", None);
        let io = Layer(
            "invalid peer certificate: UnknownIssuer",
            Some(Box::new(tls)),
        );
        let e = Layer(
            "error sending request for url (https://cp/)",
            Some(Box::new(io)),
        );
        assert_eq!(
            with_causes(&e),
            "error sending request for url (https://cp/): invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(with_causes(&Layer("alone", None)), "alone");
    }

    #[test]
    fn complete_url_appends_the_execution() {
        assert_eq!(
            complete_url(&u("http://cp:8080/v1/internal/executions"), "e-1")
                .unwrap()
                .as_str(),
            "http://cp:8080/v1/internal/executions/e-1:complete"
        );
        assert_eq!(
            complete_url(&u("http://cp:8080/v1/executions/"), "e-1")
                .unwrap()
                .as_str(),
            "http://cp:8080/v1/executions/e-1:complete"
        );
        assert_eq!(
            complete_url(&u("http://cp:8080/v1/executions/x:complete"), "e-1")
                .unwrap()
                .as_str(),
            "http://cp:8080/v1/executions/x:complete"
        );
    }

    #[test]
    fn token_goes_only_to_configured_origins() {
        let origins = vec!["http://cp:8080".to_owned(), "https://other".to_owned()];
        assert!(may_receive_token(
            &origins,
            &u("http://cp:8080/v1/e:complete")
        ));
        assert!(may_receive_token(&origins, &u("https://other:443/x")));
        assert!(may_receive_token(&origins, &u("HTTP://CP:8080/y")));
        assert!(!may_receive_token(&origins, &u("http://cp:8081/v1")));
        assert!(!may_receive_token(&origins, &u("https://cp:8080/v1")));
        assert!(!may_receive_token(&origins, &u("http://cp.evil:8080/v1")));
        assert!(!may_receive_token(&[], &u("http://cp:8080/v1")));
    }

    #[test]
    fn body_has_success_output_error() {
        let ok: InvokeResult = Ok(runtime_sdk::Json::parse("{\"n\": 1.000000000000000000001}")
            .unwrap()
            .into());
        assert_eq!(
            String::from_utf8(result_body(&ok)).unwrap(),
            "{\"success\":true,\"output\":{\"n\": 1.000000000000000000001},\"error\":null}"
        );
        let err: InvokeResult = Err(runtime_sdk::InvokeError::new(
            runtime_sdk::ErrorCode::Timeout,
            "late",
        ));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&result_body(&err)).unwrap(),
            json!({"success": false, "output": null, "error": {"code": "TIMEOUT", "message": "late"}})
        );
    }
}
