//! One-shot mode (contract section 5): run the function once, then post the
//! result to the callback URL or print it, and exit.

use std::io::{Read, Write};
use std::sync::Arc;

use runtime_sdk::{names, ErrorCode, Handler, Invocation, InvokeError, InvokeResult, Json};
use tower::ServiceExt;
use tracing::Instrument;

use crate::callback::{self, CallbackClient, Delivery};
use crate::config::{Config, OneshotConfig, OneshotOutput, PayloadSource};
use crate::metrics::Metrics;
use crate::otel::{Recording, Spans};
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::tracecontext::TraceContext;
use crate::validate::Validator;

/// Exit codes of section 5.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;

#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: &Config,
    oneshot: &OneshotConfig,
    handler: Arc<dyn Handler>,
    validator: Validator,
    metrics: Metrics,
    shutdown: Shutdown,
    stdout: Option<std::fs::File>,
    spans: Option<Spans>,
) -> i32 {
    // TRACEPARENT is honoured like the header in warm mode; TRACE_ID wins.
    let mut trace = TraceContext::read(
        oneshot.traceparent.as_deref(),
        oneshot.tracestate.as_deref(),
    );
    if let Some(s) = &spans {
        s.open(&mut trace);
    }
    let trace_id = oneshot.trace_id.clone().or_else(|| trace.trace_id());
    let span = crate::logging::invocation_span(&oneshot.execution_id, trace_id.as_deref());
    async {
        let payload = read_payload(&oneshot.payload);
        let request_id = payload
            .as_ref()
            .ok()
            .and_then(|p| crate::alyx::request_id(p.as_bytes()));

        let mut inv = Invocation::new(oneshot.execution_id.clone(), Json::null(), config.timeout);
        inv.trace_id = trace_id;
        trace.apply(&mut inv);
        inv.function_name = config.function_name.clone();
        inv.cold_start = true;
        let ids = callback::Ids::of(&inv);
        let pipeline = crate::pipeline::build(handler.clone(), validator.clone(), metrics.clone());
        let recording = (spans.as_ref())
            .and_then(|s| s.begin(&trace, &inv, std::time::Instant::now(), "init"));

        // A SIGTERM (the Job deleted, its deadline passed) cancels the run;
        // the result is still reported, so nothing ends silently.
        let result = tokio::select! {
            r = execute(config, &handler, &validator, &metrics, pipeline, payload, inv, recording.as_ref()) => r,
            _ = shutdown.requested() => Err(match shutdown.fatal_reason() {
                // The runtime itself failed (the HTTP runtime exited): say so.
                Some(reason) => InvokeError::new(ErrorCode::FunctionError, reason),
                None => InvokeError::cancelled(
                    "the watchdog was told to stop (SIGTERM or SIGINT) before the function finished",
                ),
            }),
        };
        if let Some(r) = &recording {
            r.end(&result);
        }
        handler.shutdown().await;
        match &result {
            Ok(_) => tracing::info!("function succeeded"),
            Err(e) => tracing::warn!(code = %e.code, error = %e.message, "function failed"),
        }

        match &config.callback.url {
            Some(base) => {
                let client = CallbackClient::new(config.callback.clone(), metrics);
                let url = match callback::complete_url(base, &ids.execution_id) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::error!("CALLBACK_URL cannot take the execution id: {e}");
                        return EXIT_FAILED;
                    }
                };
                match client.deliver(&Delivery::new(url, &ids, &result)).await {
                    Ok(()) => EXIT_OK,
                    Err(_) => EXIT_FAILED,
                }
            }
            None => {
                print_result(stdout, oneshot.output, &result, request_id);
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

/// The input check, start-up, then the pipeline called once.
#[allow(clippy::too_many_arguments)]
async fn execute(
    config: &Config,
    handler: &Arc<dyn Handler>,
    validator: &Validator,
    metrics: &Metrics,
    pipeline: Pipeline,
    payload: Result<Json, InvokeError>,
    mut inv: Invocation,
    recording: Option<&Recording>,
) -> InvokeResult {
    inv.payload = payload?.into();
    validator.check_input(&inv.payload)?;
    let started = std::time::Instant::now();
    handler.start().await?;
    metrics.init_duration(started.elapsed());
    // The deadline counts from when the function is ready (section 5).
    inv.restart_deadline(config.timeout);
    if let Some(r) = recording {
        r.running();
    }
    let output = match pipeline.oneshot(inv).await {
        Ok(result) => result?,
        Err(never) => match never {},
    };
    // A stream's values, collected: one-shot has one result to give.
    match &output.body {
        runtime_sdk::Body::Stream(chunks) => match chunks.take() {
            Some(s) => crate::stream::collect(s).await,
            None => Ok(output),
        },
        _ => Ok(output),
    }
}

/// The first payload source that is set (section 5); invalid JSON fails
/// the invocation with `INVALID_REQUEST`.
fn read_payload(source: &PayloadSource) -> Result<Json, InvokeError> {
    let (name, bytes) = match source {
        PayloadSource::Variable { name, text } => (*name, text.clone().into_bytes()),
        PayloadSource::Stdin => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                return Err(InvokeError::new(
                    ErrorCode::InvalidRequest,
                    format!("could not read the payload from standard input: {e}"),
                ));
            }
            ("standard input", buf)
        }
    };
    Json::parse_or_null(bytes).map_err(|e| {
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

/// Keeps the process's stdout for the result line alone (section 5): fd 1
/// is duplicated to a private descriptor (close-on-exec, so no child gets
/// it), and fd 1 then points at stderr, so whatever a handler prints, and
/// every byte its children or C extensions write to fd 1, lands in the log
/// stream. Alyx parses the whole of stdout as one JSON document; Norn
/// returns it as the response. Call before any thread or child starts.
pub fn take_stdout() -> Option<std::fs::File> {
    use nix::libc;
    use std::os::fd::FromRawFd;
    // SAFETY: plain descriptor calls on fds 1 and 2, before other threads
    // exist; the new descriptor is owned by the returned File alone.
    unsafe {
        let private = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if private < 0 {
            return None; // stdout closed: there is nowhere to print anyway
        }
        if libc::dup2(2, 1) < 0 {
            libc::close(private);
            return None;
        }
        Some(std::fs::File::from_raw_fd(private))
    }
}

/// Without a callback URL the result goes to stdout as its last line.
fn print_result(
    out: Option<std::fs::File>,
    form: OneshotOutput,
    result: &InvokeResult,
    request_id: Option<String>,
) {
    let mut line = match form {
        OneshotOutput::Result => {
            let body = callback::result_body(result);
            match request_id {
                // `{"request_id":"...",` + the rest of the result object.
                Some(id) => {
                    let mut line = b"{\"request_id\":".to_vec();
                    serde_json::to_writer(&mut line, &id).expect("a str serialises");
                    line.push(b',');
                    line.extend_from_slice(&body[1..]);
                    line
                }
                None => body,
            }
        }
        OneshotOutput::Output => match result {
            Ok(output) => output.to_json().json.as_bytes().to_vec(),
            Err(e) => serde_json::to_vec(&e.to_body()).expect("an error body serialises"),
        },
    };
    line.push(b'\n');
    match out {
        Some(mut out) => {
            let _ = out.write_all(&line);
            let _ = out.flush();
        }
        None => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line);
            let _ = out.flush();
        }
    }
}
