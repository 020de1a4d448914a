//! The pipeline with fake runners: deadline, panic, output check, metrics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runtime_sdk::{BoxFuture, ErrorCode, Handler, Invocation, InvokeError, InvokeResult, Json};
use tower::ServiceExt;

use crate::config::SchemaConfig;
use crate::metrics::Metrics;
use crate::validate::Validator;

/// A runner that does what its payload says: `"sleep"`, `"panic"`,
/// `"fail"`, else echoes the payload.
struct Fake {
    dropped: Arc<AtomicUsize>,
}

struct CountDrop(Arc<AtomicUsize>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Handler for Fake {
    fn mode(&self) -> &'static str {
        "FAKE"
    }

    fn invoke(&self, inv: Invocation) -> BoxFuture<'_, InvokeResult> {
        let guard = CountDrop(self.dropped.clone());
        Box::pin(async move {
            let _guard = guard;
            let json = inv.payload.as_json().cloned().unwrap_or_else(Json::null);
            match json.as_str() {
                "\"sleep\"" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(Json::null().into())
                }
                "\"panic\"" => panic!("boom"),
                "\"fail\"" => Err(InvokeError::new(ErrorCode::FunctionError, "failed")),
                _ => Ok(json.into()),
            }
        })
    }
}

fn pipeline(output_schema: Option<&str>) -> (super::Pipeline, Arc<AtomicUsize>, Metrics) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let metrics = Metrics::new("fn", "FAKE");
    let validator = Validator::compile(&SchemaConfig {
        input: None,
        output: output_schema.map(str::to_owned),
    })
    .unwrap();
    let handler = Arc::new(Fake {
        dropped: dropped.clone(),
    });
    (
        super::build(handler, validator, metrics.clone()),
        dropped,
        metrics,
    )
}

fn inv(payload: &str, timeout: Duration) -> Invocation {
    Invocation::new("e1", Json::parse(payload.to_owned()).unwrap(), timeout)
}

async fn run(p: super::Pipeline, inv: Invocation) -> InvokeResult {
    p.oneshot(inv).await.unwrap_or_else(|never| match never {})
}

#[tokio::test]
async fn the_deadline_stops_the_runner_and_answers_timeout() {
    let (p, dropped, metrics) = pipeline(None);
    let e = run(p, inv("\"sleep\"", Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(e.message.contains("50 ms"), "{}", e.message);
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the run was dropped");
    let text = metrics.render();
    assert!(
        text.contains("watchdog_timeouts_total{function=\"fn\",mode=\"FAKE\"} 1"),
        "{text}"
    );
    assert!(text.contains("success=\"false\"} 1"), "{text}");
}

#[tokio::test]
async fn time_spent_before_the_pipeline_counts() {
    let (p, _, _) = pipeline(None);
    let mut i = inv("1", Duration::from_millis(100));
    // As if it had waited in the queue past its deadline.
    tokio::time::sleep(Duration::from_millis(120)).await;
    i.payload = Json::parse("\"sleep\"").unwrap().into();
    let e = run(p, i).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
}

#[tokio::test]
async fn a_panic_becomes_a_result() {
    let (p, _, _) = pipeline(None);
    let e = run(p.clone(), inv("\"panic\"", Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::FunctionError);
    assert!(e.message.contains("boom"), "{}", e.message);
    // And the pipeline keeps serving.
    let out = run(p, inv("[1, 2]", Duration::from_secs(5))).await.unwrap();
    assert_eq!(out.as_json().unwrap().as_str(), "[1, 2]");
}

#[tokio::test]
async fn the_output_is_checked_and_passed_through_as_bytes() {
    let (p, _, _) = pipeline(Some(r#"{"type": "array"}"#));
    let out = run(
        p.clone(),
        inv("[1.000000000000000000001]", Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(out.as_json().unwrap().as_str(), "[1.000000000000000000001]");
    let e = run(p, inv("{\"a\": 1}", Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::OutputValidationError);
}
