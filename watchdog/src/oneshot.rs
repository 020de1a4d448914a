//! One-shot mode (contract section 5): run the function once, then post the
//! result to the callback URL or print it, and exit.

use std::io::{Read, Write};
use std::sync::Arc;

use runtime_sdk::{names, ErrorCode, Handler, Invocation, InvokeError, InvokeResult};
use serde_json::Value;
use tracing::Instrument;

use crate::callback::{self, CallbackClient, Delivery};
use crate::config::{Config, OneshotConfig, OneshotOutput, PayloadSource};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::validate::Validator;

/// Exit codes of section 5.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;

pub async fn run(
    config: &Config,
    oneshot: &OneshotConfig,
    handler: Arc<dyn Handler>,
    validator: Validator,
    metrics: Metrics,
    shutdown: Shutdown,
) -> i32 {
    let span = crate::logging::invocation_span(&oneshot.execution_id, oneshot.trace_id.as_deref());
    async {
        let payload = read_payload(&oneshot.payload);
        let request_id = payload
            .as_ref()
            .ok()
            .and_then(|p| p.get("request_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);

        let mut inv = Invocation::new(oneshot.execution_id.clone(), Value::Null, config.timeout);
        inv.trace_id = oneshot.trace_id.clone();
        inv.function_name = config.function_name.clone();
        inv.cold_start = true;

        // A SIGTERM (the Job deleted, its deadline passed) cancels the run;
        // the result is still reported, so nothing ends silently.
        let result = tokio::select! {
            r = execute(config, &handler, &validator, &metrics, payload, inv.clone()) => r,
            _ = shutdown.requested() => Err(match shutdown.fatal_reason() {
                // The runtime itself failed (the HTTP runtime exited): say so.
                Some(reason) => InvokeError::new(ErrorCode::FunctionError, reason),
                None => InvokeError::new(
                    ErrorCode::Cancelled,
                    "the watchdog was told to stop (SIGTERM or SIGINT) before the function finished",
                ),
            }),
        };
        handler.shutdown().await;
        match &result {
            Ok(_) => tracing::info!("function succeeded"),
            Err(e) => tracing::warn!(code = %e.code, error = %e.message, "function failed"),
        }

        match &config.callback.url {
            Some(base) => {
                let client = CallbackClient::new(config.callback.clone(), metrics);
                let url = match callback::complete_url(base, &inv.execution_id) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::error!("CALLBACK_URL cannot take the execution id: {e}");
                        return EXIT_FAILED;
                    }
                };
                match client.deliver(&Delivery::new(url, &inv, &result)).await {
                    Ok(()) => EXIT_OK,
                    Err(_) => EXIT_FAILED,
                }
            }
            None => {
                print_result(oneshot.output, &result, request_id);
                if result.is_ok() {
                    EXIT_OK
                } else {
                    EXIT_FAILED
                }
            }
        }
    }
    .instrument(span)
    .await
}

async fn execute(
    config: &Config,
    handler: &Arc<dyn Handler>,
    validator: &Validator,
    metrics: &Metrics,
    payload: Result<Value, InvokeError>,
    mut inv: Invocation,
) -> InvokeResult {
    let payload = payload?;
    validator.check_input(&payload)?;
    let started = std::time::Instant::now();
    handler.start().await?;
    metrics.init_duration(started.elapsed());
    // The deadline counts from when the function is ready (section 5).
    let fresh = Invocation::new(inv.execution_id.clone(), payload, config.timeout);
    inv.deadline = fresh.deadline;
    inv.deadline_unix_ms = fresh.deadline_unix_ms;
    inv.payload = fresh.payload;
    let budget = config.timeout;
    let deadline = inv.deadline;
    let run_started = std::time::Instant::now();
    let result = match tokio::time::timeout_at(deadline.into(), handler.invoke(inv.clone())).await {
        Ok(r) => r,
        Err(_) => Err(crate::runner::process::timeout_error(
            &inv.execution_id,
            budget,
        )),
    };
    metrics.finished(result.is_ok(), run_started.elapsed());
    let output = result?;
    validator.check_output(&output)?;
    Ok(output)
}

/// The first payload source that is set (section 5); invalid JSON fails
/// the invocation with `INVALID_REQUEST`.
fn read_payload(source: &PayloadSource) -> Result<Value, InvokeError> {
    let (name, text) = match source {
        PayloadSource::Variable { name, text } => (*name, text.clone()),
        PayloadSource::Stdin => {
            let mut buf = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut buf) {
                return Err(InvokeError::new(
                    ErrorCode::InvalidRequest,
                    format!("could not read the payload from standard input: {e}"),
                ));
            }
            ("standard input", buf)
        }
    };
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| {
        let what = if name == "standard input" {
            name.to_owned()
        } else {
            format!("{name} ({})", names_hint(name))
        };
        InvokeError::new(
            ErrorCode::InvalidRequest,
            format!("the payload in {what} is not valid JSON: {e}"),
        )
    })
}

fn names_hint(name: &str) -> &'static str {
    match name {
        n if n == names::INVOCATION_PAYLOAD => "nanofaas",
        n if n == names::INPUT_DATA => "Circuit Breaker",
        n if n == names::NORN_REQUEST_BODY => "Norn",
        _ => "payload",
    }
}

/// Without a callback URL the result goes to stdout as its last line.
fn print_result(form: OneshotOutput, result: &InvokeResult, request_id: Option<String>) {
    let value = match form {
        OneshotOutput::Result => {
            let mut body = callback::result_body(result);
            if let (Some(id), Some(map)) = (request_id, body.as_object_mut()) {
                map.insert("request_id".into(), Value::String(id));
            }
            body
        }
        OneshotOutput::Output => match result {
            Ok(output) => output.clone(),
            Err(e) => e.to_body(),
        },
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}
