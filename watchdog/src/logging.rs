//! Logs with `tracing` to stderr (never stdout: one-shot mode's stdout is
//! the result). Invocation spans carry `execution_id` and `trace_id`, so
//! every line logged inside one carries them too.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogLevel};

pub fn init(format: LogFormat, level: LogLevel) {
    let level = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    // Dependencies' chatter (hyper, reqwest) only when debugging.
    let directives = if level >= LevelFilter::DEBUG {
        level.to_string()
    } else {
        format!("{level},hyper=warn,reqwest=warn,h2=warn")
    };
    let filter = EnvFilter::builder().parse_lossy(directives);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// The span every line about one invocation is logged in.
pub fn invocation_span(execution_id: &str, trace_id: Option<&str>) -> tracing::Span {
    tracing::info_span!(
        "invocation",
        execution_id = %execution_id,
        trace_id = trace_id.unwrap_or(""),
    )
}
