//! Environment variable and header names of the contract, in one place.

// Mode and runner (sections 1 and 2).
pub const WARM: &str = "WARM";
pub const EXECUTION_MODE: &str = "EXECUTION_MODE";
pub const WATCHDOG_CMD: &str = "WATCHDOG_CMD";
pub const HANDLER_MODULE: &str = "HANDLER_MODULE";
pub const HANDLER_FUNCTION: &str = "HANDLER_FUNCTION";
pub const HANDLER_PATH: &str = "HANDLER_PATH";
pub const RUNTIME_URL: &str = "RUNTIME_URL";
pub const HEALTH_URL: &str = "HEALTH_URL";
pub const READY_TIMEOUT_MS: &str = "READY_TIMEOUT_MS";
pub const INPUT_FILE: &str = "INPUT_FILE";
pub const OUTPUT_FILE: &str = "OUTPUT_FILE";
pub const KILL_GRACE_MS: &str = "KILL_GRACE_MS";

// Invocation and one-shot (sections 3 and 5).
pub const EXECUTION_ID: &str = "EXECUTION_ID";
pub const TRACE_ID: &str = "TRACE_ID";
/// W3C trace context: read in one-shot mode, set for children.
pub const TRACEPARENT: &str = "TRACEPARENT";
pub const TRACESTATE: &str = "TRACESTATE";
pub const INVOCATION_PAYLOAD: &str = "INVOCATION_PAYLOAD";
pub const INPUT_DATA: &str = "INPUT_DATA";
pub const NORN_REQUEST_BODY: &str = "NORN_REQUEST_BODY";
pub const ONESHOT_OUTPUT: &str = "ONESHOT_OUTPUT";
pub const TIMEOUT_MS: &str = "TIMEOUT_MS";
pub const FUNCTION_NAME: &str = "FUNCTION_NAME";

// Warm server (section 4).
pub const WARM_PORT: &str = "WARM_PORT";
pub const PORT: &str = "PORT";
pub const BIND_ADDRESS: &str = "BIND_ADDRESS";
pub const MAX_BODY_BYTES: &str = "MAX_BODY_BYTES";
pub const MAX_OUTPUT_BYTES: &str = "MAX_OUTPUT_BYTES";
pub const MAX_CONCURRENCY: &str = "MAX_CONCURRENCY";
pub const QUEUE_DEPTH: &str = "QUEUE_DEPTH";
pub const INVOKE_TOKEN: &str = "INVOKE_TOKEN";
pub const INVOKE_METHODS: &str = "INVOKE_METHODS";
pub const HEADER_READ_TIMEOUT_MS: &str = "HEADER_READ_TIMEOUT_MS";
pub const IDLE_TIMEOUT_MS: &str = "IDLE_TIMEOUT_MS";
pub const MAX_CONNECTIONS: &str = "MAX_CONNECTIONS";
pub const MAX_HEADER_BYTES: &str = "MAX_HEADER_BYTES";

// Callback (section 6).
pub const CALLBACK_URL: &str = "CALLBACK_URL";
pub const CALLBACK_TOKEN: &str = "CALLBACK_TOKEN";
pub const CALLBACK_ATTEMPTS: &str = "CALLBACK_ATTEMPTS";
pub const CALLBACK_TIMEOUT_MS: &str = "CALLBACK_TIMEOUT_MS";
pub const CALLBACK_ALLOWED_ORIGINS: &str = "CALLBACK_ALLOWED_ORIGINS";

// Logs, signals, validation (sections 10 and 11).
pub const LOG_FORMAT: &str = "LOG_FORMAT";
pub const LOG_LEVEL: &str = "LOG_LEVEL";
pub const DRAIN_TIMEOUT_MS: &str = "DRAIN_TIMEOUT_MS";
pub const INPUT_SCHEMA: &str = "INPUT_SCHEMA";
pub const OUTPUT_SCHEMA: &str = "OUTPUT_SCHEMA";

// Development settings (not part of the contract).
pub const RELOAD: &str = "RELOAD";

// OpenTelemetry's standard variables (span export over OTLP/HTTP).
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const OTEL_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";

/// Secrets that never reach a child process's environment (section 2).
pub const SCRUBBED_FROM_CHILDREN: [&str; 3] = [CALLBACK_URL, CALLBACK_TOKEN, INVOKE_TOKEN];

/// Request and callback headers (sections 4 and 6), lower case as HTTP/2 wants.
pub mod header {
    pub const EXECUTION_ID: &str = "x-execution-id";
    pub const TRACE_ID: &str = "x-trace-id";
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    pub const DISPATCH_ATTEMPT: &str = "x-dispatch-attempt";
    pub const CALLBACK_URL: &str = "x-callback-url";
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    pub const TIMEOUT_MS: &str = "x-timeout-ms";
    pub const COLD_START: &str = "x-cold-start";
    pub const INIT_DURATION_MS: &str = "x-init-duration-ms";
}
