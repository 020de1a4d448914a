//! The one place that reads the environment (contract sections 1-11).
//!
//! clap reads every variable (so `--help` lists them with their defaults);
//! [`Config::load`] then checks how they combine and builds typed config.
//! Any problem is a [`ConfigError`]: one line naming the variable, the bad
//! value and what is accepted; `main` prints it and exits 2.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Parser, ValueEnum};
use runtime_sdk::names;

/// Runner names of contract section 2, matched in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum RunnerKind {
    Python,
    Http,
    Stdio,
    File,
    Loop,
}

impl RunnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerKind::Python => "PYTHON",
            RunnerKind::Http => "HTTP",
            RunnerKind::Stdio => "STDIO",
            RunnerKind::File => "FILE",
            RunnerKind::Loop => "LOOP",
        }
    }

    /// Default `MAX_CONCURRENCY` per runner (README documents these).
    fn default_concurrency(self) -> usize {
        match self {
            // One OS thread per slot; the GIL serialises CPU work anyway.
            RunnerKind::Python => 4,
            // The upstream is a server of its own: let it see the load.
            RunnerKind::Http => 64,
            // A process per call: bounded so a burst cannot fork-bomb the pod.
            RunnerKind::Stdio | RunnerKind::File => 8,
            // One kept process per slot.
            RunnerKind::Loop => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OneshotOutput {
    /// The result object of section 6 as one JSON line.
    Result,
    /// Only the function's output (or the error body).
    Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err("accepted: 1, true, yes, 0, false, no (any case)".into()),
    }
}

fn parse_positive(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) | Err(_) => Err("accepted: a whole number above 0".into()),
        Ok(n) => Ok(n),
    }
}

fn parse_count(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| "accepted: a whole number, 0 or more".into())
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .map_err(|_| "accepted: a port number from 0 to 65535".into())
}

/// Every variable of the contract. Flags exist too (handy for local runs),
/// but the environment is the interface.
#[derive(Debug, Parser)]
#[command(
    name = "watchdog",
    version,
    about = "Ember's function watchdog: runs a function once (one-shot) or keeps it warm behind HTTP.",
    after_help = "Every option is read from the environment variable named beside it; see README.md for the contract."
)]
struct Args {
    /// Warm mode (HTTP server) or one-shot; default: one-shot when EXECUTION_ID or a payload variable is set
    #[arg(long, env = names::WARM, value_parser = parse_bool)]
    warm: Option<bool>,
    /// Runner: PYTHON, HTTP, STDIO, FILE, LOOP [default: PYTHON when built with Python and WATCHDOG_CMD is unset or HANDLER_MODULE is set, else HTTP]
    #[arg(long, env = names::EXECUTION_MODE, ignore_case = true, hide_possible_values = true)]
    execution_mode: Option<RunnerKind>,
    /// Command of the function (split like a POSIX shell, not run through one)
    #[arg(long, env = names::WATCHDOG_CMD)]
    watchdog_cmd: Option<String>,
    /// PYTHON: module to import [default: handler]
    #[arg(long, env = names::HANDLER_MODULE)]
    handler_module: Option<String>,
    /// PYTHON: function to call
    #[arg(long, env = names::HANDLER_FUNCTION, default_value = "handle")]
    handler_function: String,
    /// PYTHON: directory put first on sys.path [default: the working directory]
    #[arg(long, env = names::HANDLER_PATH)]
    handler_path: Option<PathBuf>,
    /// HTTP: where invocations are POSTed [default: http://127.0.0.1:8081/invoke warm, :8080 one-shot]
    #[arg(long, env = names::RUNTIME_URL)]
    runtime_url: Option<String>,
    /// HTTP: polled until 2xx before the first invocation [default: RUNTIME_URL with /invoke -> /health]
    #[arg(long, env = names::HEALTH_URL)]
    health_url: Option<String>,
    /// HTTP: how long the runtime may take to become healthy
    #[arg(long, env = names::READY_TIMEOUT_MS, default_value = "10000", value_parser = parse_positive)]
    ready_timeout_ms: u64,
    /// FILE: where the payload is written
    #[arg(long, env = names::INPUT_FILE, default_value = "/tmp/input.json")]
    input_file: PathBuf,
    /// FILE: where the output is read from
    #[arg(long, env = names::OUTPUT_FILE, default_value = "/tmp/output.json")]
    output_file: PathBuf,
    /// Time between SIGTERM and SIGKILL for a child past its deadline
    #[arg(long, env = names::KILL_GRACE_MS, default_value = "100", value_parser = parse_count)]
    kill_grace_ms: u64,
    /// The execution's id (one-shot; warm: fallback when X-Execution-Id is absent)
    #[arg(long, env = names::EXECUTION_ID)]
    execution_id: Option<String>,
    /// Trace id (one-shot)
    #[arg(long, env = names::TRACE_ID)]
    trace_id: Option<String>,
    /// W3C traceparent of the caller (one-shot; warm: the traceparent header)
    #[arg(long, env = names::TRACEPARENT)]
    traceparent: Option<String>,
    /// W3C tracestate of the caller (one-shot; warm: the tracestate header)
    #[arg(long, env = names::TRACESTATE)]
    tracestate: Option<String>,
    /// One-shot payload (nanofaas Jobs)
    #[arg(long, env = names::INVOCATION_PAYLOAD, hide_env_values = true)]
    invocation_payload: Option<String>,
    /// One-shot payload (Circuit Breaker)
    #[arg(long, env = names::INPUT_DATA, hide_env_values = true)]
    input_data: Option<String>,
    /// One-shot payload (Norn)
    #[arg(long, env = names::NORN_REQUEST_BODY, hide_env_values = true)]
    norn_request_body: Option<String>,
    /// One-shot stdout without CALLBACK_URL: result or output [default: output for INPUT_DATA/NORN_REQUEST_BODY, else result]
    #[arg(long, env = names::ONESHOT_OUTPUT, ignore_case = true)]
    oneshot_output: Option<OneshotOutput>,
    /// Deadline of one invocation
    #[arg(long, env = names::TIMEOUT_MS, default_value = "30000", value_parser = parse_positive)]
    timeout_ms: u64,
    /// Labels logs and metrics [default: HANDLER_MODULE with PYTHON, else unknown]
    #[arg(long, env = names::FUNCTION_NAME)]
    function_name: Option<String>,
    /// Warm: listening port (nanofaas name)
    #[arg(long, env = names::WARM_PORT, value_parser = parse_port)]
    warm_port: Option<u16>,
    /// Warm: listening port when WARM_PORT is unset [default: 8080]
    #[arg(long, env = names::PORT, value_parser = parse_port)]
    port: Option<u16>,
    /// Warm: listening address
    #[arg(long, env = names::BIND_ADDRESS, default_value = "0.0.0.0")]
    bind_address: String,
    /// Warm: largest accepted request body
    #[arg(long, env = names::MAX_BODY_BYTES, default_value = "6291456", value_parser = parse_positive)]
    max_body_bytes: u64,
    /// Largest output a function may produce (stdout, output file, runtime answer, LOOP line, Python return value)
    #[arg(long, env = names::MAX_OUTPUT_BYTES, default_value = "6291456", value_parser = parse_positive)]
    max_output_bytes: u64,
    /// Warm: invocations running at once [default: PYTHON 4, HTTP 64, STDIO 8, FILE 8, LOOP 4]
    #[arg(long, env = names::MAX_CONCURRENCY, value_parser = parse_positive)]
    max_concurrency: Option<u64>,
    /// Warm: invocations waiting for a slot before 429 [default: 4 x MAX_CONCURRENCY]
    #[arg(long, env = names::QUEUE_DEPTH, value_parser = parse_count)]
    queue_depth: Option<u64>,
    /// Warm: HTTP methods /invoke accepts, comma-separated (GET, POST, PUT, PATCH, DELETE)
    #[arg(long, env = names::INVOKE_METHODS, default_value = "POST")]
    invoke_methods: String,
    /// Warm: bearer token required on /invoke
    #[arg(long, env = names::INVOKE_TOKEN, hide_env_values = true)]
    invoke_token: Option<String>,
    /// Warm: a request's headers must arrive within this time (from the connection's
    /// start or the request's first byte), and a body being read may not pause longer, else
    /// the connection is closed
    #[arg(long, env = names::HEADER_READ_TIMEOUT_MS, default_value = "10000", value_parser = parse_positive)]
    header_read_timeout_ms: u64,
    /// Warm: a keep-alive connection with no request in flight is closed after this long
    #[arg(long, env = names::IDLE_TIMEOUT_MS, default_value = "60000", value_parser = parse_positive)]
    idle_timeout_ms: u64,
    /// Warm: open connections at most; more wait in the listen backlog
    #[arg(long, env = names::MAX_CONNECTIONS, default_value = "1024", value_parser = parse_positive)]
    max_connections: u64,
    /// Warm: largest request line plus headers; larger gets 431
    #[arg(long, env = names::MAX_HEADER_BYTES, default_value = "65536", value_parser = parse_positive)]
    max_header_bytes: u64,
    /// Where results are posted: {CALLBACK_URL}/{EXECUTION_ID}:complete
    #[arg(long, env = names::CALLBACK_URL)]
    callback_url: Option<String>,
    /// Bearer token sent on callbacks
    #[arg(long, env = names::CALLBACK_TOKEN, hide_env_values = true)]
    callback_token: Option<String>,
    /// Callback attempts before giving up
    #[arg(long, env = names::CALLBACK_ATTEMPTS, default_value = "3", value_parser = parse_positive)]
    callback_attempts: u64,
    /// Time limit of one callback attempt
    #[arg(long, env = names::CALLBACK_TIMEOUT_MS, default_value = "5000", value_parser = parse_positive)]
    callback_timeout_ms: u64,
    /// Origins an X-Callback-Url may point at, comma-separated [default: CALLBACK_URL's origin, else any]
    #[arg(long, env = names::CALLBACK_ALLOWED_ORIGINS)]
    callback_allowed_origins: Option<String>,
    /// json or text
    #[arg(long, env = names::LOG_FORMAT, default_value = "json", ignore_case = true)]
    log_format: LogFormat,
    /// error, warn, info, debug or trace
    #[arg(long, env = names::LOG_LEVEL, default_value = "info", ignore_case = true)]
    log_level: LogLevel,
    /// How long running and queued invocations may take to finish after SIGTERM
    #[arg(long, env = names::DRAIN_TIMEOUT_MS, default_value = "25000", value_parser = parse_count)]
    drain_timeout_ms: u64,
    /// JSON Schema (a path or inline JSON) the payload must satisfy
    #[arg(long, env = names::INPUT_SCHEMA)]
    input_schema: Option<String>,
    /// JSON Schema (a path or inline JSON) the output must satisfy
    #[arg(long, env = names::OUTPUT_SCHEMA)]
    output_schema: Option<String>,
    /// Development: warm mode watches the function's files and reloads it when they change (PYTHON: HANDLER_PATH; LOOP, HTTP: the directories of the files named in WATCHDOG_CMD)
    #[arg(long, env = names::RELOAD, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    reload: bool,
    /// true: export no spans whatever else is set
    #[arg(long, env = names::OTEL_SDK_DISABLED, value_parser = parse_bool)]
    otel_sdk_disabled: Option<bool>,
    /// OTLP/HTTP collector base URL; spans go to {it}/v1/traces [default: no span export]
    #[arg(long, env = names::OTEL_EXPORTER_OTLP_ENDPOINT)]
    otel_exporter_otlp_endpoint: Option<String>,
    /// OTLP/HTTP URL spans are POSTed to, used as is [default: from OTEL_EXPORTER_OTLP_ENDPOINT]
    #[arg(long, env = names::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)]
    otel_exporter_otlp_traces_endpoint: Option<String>,
    /// OTLP protocol; only http/protobuf [default: http/protobuf]
    #[arg(long, env = names::OTEL_EXPORTER_OTLP_PROTOCOL)]
    otel_exporter_otlp_protocol: Option<String>,
    /// OTLP protocol for spans, over OTEL_EXPORTER_OTLP_PROTOCOL
    #[arg(long, env = names::OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)]
    otel_exporter_otlp_traces_protocol: Option<String>,
    /// Time limit of one span export, in ms [default: 10000]
    #[arg(long, env = names::OTEL_EXPORTER_OTLP_TIMEOUT, value_parser = parse_positive)]
    otel_exporter_otlp_timeout: Option<u64>,
    /// Time limit of one span export, in ms, over OTEL_EXPORTER_OTLP_TIMEOUT
    #[arg(long, env = names::OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, value_parser = parse_positive)]
    otel_exporter_otlp_traces_timeout: Option<u64>,
    /// service.name of exported spans [default: FUNCTION_NAME]
    #[arg(long, env = names::OTEL_SERVICE_NAME)]
    otel_service_name: Option<String>,
    /// Spans waiting for export before new ones are dropped (and counted)
    #[arg(long, env = names::OTEL_BSP_MAX_QUEUE_SIZE, default_value = "2048", value_parser = parse_positive)]
    otel_bsp_max_queue_size: u64,
}

/// A configuration problem: printed as one line, exit code 2.
#[derive(Debug)]
pub enum ConfigError {
    Invalid {
        variable: String,
        value: String,
        accepted: String,
    },
    /// `--help` or `--version`: print and exit 0.
    Display(String),
}

impl ConfigError {
    pub fn invalid(variable: &str, value: &str, accepted: impl Into<String>) -> Self {
        ConfigError::Invalid {
            variable: variable.to_owned(),
            value: value.to_owned(),
            accepted: accepted.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid {
                variable,
                value,
                accepted,
            } => write!(
                f,
                "watchdog: configuration error: {variable}={value:?} is not valid; {accepted}"
            ),
            ConfigError::Display(text) => f.write_str(text),
        }
    }
}

/// Where the one-shot payload came from (section 5), which picks the
/// default `ONESHOT_OUTPUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadSource {
    Variable { name: &'static str, text: String },
    Stdin,
}

#[derive(Debug, Clone)]
pub enum Mode {
    Warm(WarmConfig),
    Oneshot(OneshotConfig),
}

#[derive(Debug, Clone)]
pub struct WarmConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_concurrency: usize,
    pub queue_depth: usize,
    pub invoke_token: Option<String>,
    /// `INVOKE_METHODS`: the methods `/invoke` accepts (405 for others).
    pub invoke_methods: Vec<InvokeMethod>,
    /// Fallback when a request has no `X-Execution-Id`.
    pub execution_id: Option<String>,
    pub drain_timeout: Duration,
    pub allowed_callback_origins: AllowedOrigins,
    /// `RELOAD`: watch the function's files and reload it on a change.
    pub reload: bool,
    pub conn: ConnLimits,
}

/// What one client connection may hold (the warm server's defence against slow
/// and numerous clients, see `warm::server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// `HEADER_READ_TIMEOUT_MS`: a request line and headers must be complete this
    /// long after the connection opened or the request's first byte came, and a
    /// request body being read may not pause longer.
    pub header_read_timeout: Duration,
    /// `IDLE_TIMEOUT_MS`: a connection with no request in flight is closed after
    /// this long without traffic, and so is one whose client stops reading.
    pub idle_timeout: Duration,
    /// `MAX_CONNECTIONS`: connections served at once.
    pub max_connections: usize,
    /// `MAX_HEADER_BYTES`: request line plus headers.
    pub max_header_bytes: usize,
}

impl Default for ConnLimits {
    /// The documented defaults of `--help`.
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// A method `/invoke` may accept (`INVOKE_METHODS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl InvokeMethod {
    pub fn method(self) -> hyper::Method {
        match self {
            InvokeMethod::Get => hyper::Method::GET,
            InvokeMethod::Post => hyper::Method::POST,
            InvokeMethod::Put => hyper::Method::PUT,
            InvokeMethod::Patch => hyper::Method::PATCH,
            InvokeMethod::Delete => hyper::Method::DELETE,
        }
    }
}

fn parse_methods(text: &str) -> Result<Vec<InvokeMethod>, ConfigError> {
    let mut methods = Vec::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let m =
            match word.to_ascii_uppercase().as_str() {
                "GET" => InvokeMethod::Get,
                "POST" => InvokeMethod::Post,
                "PUT" => InvokeMethod::Put,
                "PATCH" => InvokeMethod::Patch,
                "DELETE" => InvokeMethod::Delete,
                _ => return Err(ConfigError::invalid(
                    names::INVOKE_METHODS,
                    text,
                    "accepted: a comma-separated list of GET, POST, PUT, PATCH, DELETE (any case)",
                )),
            };
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    if methods.is_empty() {
        return Err(ConfigError::invalid(
            names::INVOKE_METHODS,
            text,
            "accepted: at least one of GET, POST, PUT, PATCH, DELETE",
        ));
    }
    Ok(methods)
}

#[derive(Debug, Clone)]
pub enum AllowedOrigins {
    Any,
    Only(Vec<String>),
}

impl AllowedOrigins {
    /// Whether an `X-Callback-Url` may be used (section 6).
    pub fn allows(&self, url: &url::Url) -> bool {
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::Only(list) => {
                let origin = url.origin().ascii_serialization();
                list.contains(&origin)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct OneshotConfig {
    pub execution_id: String,
    pub trace_id: Option<String>,
    /// `TRACEPARENT` and `TRACESTATE` as given (checked per invocation:
    /// an invalid one is ignored, like the header in warm mode).
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub payload: PayloadSource,
    pub output: OneshotOutput,
}

#[derive(Debug, Clone)]
pub struct CallbackConfig {
    pub url: Option<url::Url>,
    pub token: Option<String>,
    /// Origins `token` may be sent to (section 6): `CALLBACK_URL`'s and those
    /// listed in `CALLBACK_ALLOWED_ORIGINS`, never one only a request named.
    pub token_origins: Vec<String>,
    pub attempts: u32,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Program and arguments, already split.
    pub argv: Vec<String>,
    pub kill_grace: Duration,
    /// `MAX_OUTPUT_BYTES`: stdout, the output file or a `LOOP` line past
    /// this fails with `OUTPUT_TOO_LARGE`.
    pub max_output: usize,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `None` when the runtime is started by something else.
    pub process: Option<ProcessConfig>,
    pub runtime_url: url::Url,
    pub health_url: url::Url,
    pub ready_timeout: Duration,
    /// `MAX_OUTPUT_BYTES` for the runtime's answer.
    pub max_output: usize,
    /// Warm mode: once no child is left to watch (none was started, or it was
    /// a launcher that exited 0), `HEALTH_URL` keeps being polled (section 2).
    pub watch_health: bool,
}

#[derive(Debug, Clone)]
pub struct FileConfig {
    pub process: ProcessConfig,
    pub input_file: PathBuf,
    pub output_file: PathBuf,
    /// A private directory per invocation (several may run at once).
    pub private_dirs: bool,
}

#[derive(Debug, Clone)]
pub struct PythonConfig {
    pub module: String,
    pub function: String,
    pub path: PathBuf,
    pub kill_grace: Duration,
    pub max_output: usize,
}

#[derive(Debug, Clone)]
pub enum RunnerConfig {
    Python(PythonConfig),
    Http(HttpConfig),
    Stdio(ProcessConfig),
    File(FileConfig),
    Loop(ProcessConfig),
}

impl RunnerConfig {
    pub fn kind(&self) -> RunnerKind {
        match self {
            RunnerConfig::Python(_) => RunnerKind::Python,
            RunnerConfig::Http(_) => RunnerKind::Http,
            RunnerConfig::Stdio(_) => RunnerKind::Stdio,
            RunnerConfig::File(_) => RunnerKind::File,
            RunnerConfig::Loop(_) => RunnerKind::Loop,
        }
    }
}

/// Span export over OTLP/HTTP: present only when an endpoint is set (and
/// `OTEL_SDK_DISABLED` is not true). The SDK reads its other standard
/// variables itself (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_RESOURCE_ATTRIBUTES`,
/// `OTEL_BSP_SCHEDULE_DELAY`, ...).
#[derive(Debug, Clone)]
pub struct OtelConfig {
    /// Where spans are POSTed (`.../v1/traces`).
    pub traces_endpoint: url::Url,
    pub service_name: String,
    /// Limit of one export attempt.
    pub timeout: Duration,
    /// Spans waiting for export; past it new spans are dropped and counted.
    pub max_queue: usize,
}

/// Schemas as given (path or inline JSON); compiled by `validate`.
#[derive(Debug, Clone, Default)]
pub struct SchemaConfig {
    pub input: Option<String>,
    pub output: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub runner: RunnerConfig,
    pub function_name: String,
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub callback: CallbackConfig,
    pub log_format: LogFormat,
    pub log_level: LogLevel,
    pub schemas: SchemaConfig,
    /// `None`: no span is exported and nothing is spent on them.
    pub otel: Option<OtelConfig>,
}

/// Whether this binary embeds Python (the `python` cargo feature).
pub const PYTHON_BUILT_IN: bool = cfg!(feature = "python");

impl Config {
    /// Reads the process's arguments and environment.
    pub fn load() -> Result<Config, ConfigError> {
        Config::from_args(std::env::args_os())
    }

    /// Parses `args`, reading variables from the process environment.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args = Args::try_parse_from(args).map_err(clap_error)?;
        build(args, StdinKind::of_this_process())
    }
}

/// What the process's standard input is, which section 1 reads as a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinKind {
    /// A pipe or a regular file: a payload was handed over (`echo ... |`,
    /// `< file`, Alyx's subprocess runtime).
    PipeOrFile,
    Terminal,
    /// `/dev/null` (Kubernetes, `docker run -d`), a socket, or closed.
    Other,
}

impl StdinKind {
    pub fn of_this_process() -> StdinKind {
        use std::os::unix::fs::FileTypeExt;
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return StdinKind::Terminal;
        }
        use std::os::fd::FromRawFd;
        // fstat on fd 0, borrowed: never closed here. A closed fd 0 fails.
        // SAFETY: fd 0 is only read through this File, which is never dropped.
        let stdin = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
        match stdin.metadata() {
            Ok(m) if m.file_type().is_fifo() || m.file_type().is_file() => StdinKind::PipeOrFile,
            _ => StdinKind::Other,
        }
    }
}

/// Turns clap's multi-line error into the contract's one line.
fn clap_error(err: clap::Error) -> ConfigError {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ConfigError::Display(err.to_string()),
        _ => {
            let arg = match err.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(s)) => s.clone(),
                _ => String::new(),
            };
            let value = match err.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(s)) => s.clone(),
                _ => String::new(),
            };
            let accepted = match err.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => format!("accepted: {} (any case)", v.join(", ")),
                _ => err
                    .source()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| err.kind().to_string()),
            };
            // "--timeout-ms <TIMEOUT_MS>" -> "TIMEOUT_MS": name the variable.
            let variable = arg
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_start_matches('-')
                .replace('-', "_")
                .to_ascii_uppercase();
            if variable.is_empty() {
                ConfigError::Invalid {
                    variable: "arguments".into(),
                    value: String::new(),
                    accepted: err.to_string().lines().next().unwrap_or_default().into(),
                }
            } else {
                ConfigError::Invalid {
                    variable,
                    value,
                    accepted,
                }
            }
        }
    }
}

use std::error::Error as _;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn build(a: Args, stdin: StdinKind) -> Result<Config, ConfigError> {
    // Section 1: WARM decides; unset, any one-shot trigger means one-shot,
    // and so does a payload handed over on standard input.
    let payload_var = [
        (names::INVOCATION_PAYLOAD, &a.invocation_payload),
        (names::INPUT_DATA, &a.input_data),
        (names::NORN_REQUEST_BODY, &a.norn_request_body),
    ]
    .into_iter()
    .find_map(|(name, v)| v.clone().map(|text| PayloadSource::Variable { name, text }));
    let warm = a.warm.unwrap_or(
        a.execution_id.is_none() && payload_var.is_none() && stdin != StdinKind::PipeOrFile,
    );

    let kind = match a.execution_mode {
        Some(kind) => kind,
        None if PYTHON_BUILT_IN && (a.watchdog_cmd.is_none() || a.handler_module.is_some()) => {
            RunnerKind::Python
        }
        None => RunnerKind::Http,
    };

    let argv = match &a.watchdog_cmd {
        Some(cmd) => {
            let words = shell_words::split(cmd).map_err(|e| {
                ConfigError::invalid(
                    names::WATCHDOG_CMD,
                    cmd,
                    format!("accepted: a command line with balanced quotes ({e})"),
                )
            })?;
            if words.is_empty() {
                return Err(ConfigError::invalid(
                    names::WATCHDOG_CMD,
                    cmd,
                    "accepted: a command to run, e.g. \"python3 handler.py\"",
                ));
            }
            Some(words)
        }
        None => None,
    };
    let kill_grace = ms(a.kill_grace_ms);
    let max_output = a.max_output_bytes as usize;
    let process = |argv: Option<Vec<String>>| -> Result<ProcessConfig, ConfigError> {
        match argv {
            Some(argv) => Ok(ProcessConfig {
                argv,
                kill_grace,
                max_output,
            }),
            None => Err(ConfigError::invalid(
                names::WATCHDOG_CMD,
                "",
                format!(
                    "EXECUTION_MODE={} needs the function's command, e.g. WATCHDOG_CMD=\"python3 handler.py\"",
                    kind.as_str()
                ),
            )),
        }
    };

    let max_concurrency = a
        .max_concurrency
        .map(|n| n as usize)
        .unwrap_or_else(|| kind.default_concurrency());

    let runner = match kind {
        RunnerKind::Python => {
            if !PYTHON_BUILT_IN {
                return Err(ConfigError::invalid(
                    names::EXECUTION_MODE,
                    "PYTHON",
                    "this watchdog was built without Python (cargo feature `python`); accepted: HTTP, STDIO, FILE, LOOP, or use the ember/python image",
                ));
            }
            RunnerConfig::Python(PythonConfig {
                module: a.handler_module.clone().unwrap_or_else(|| "handler".into()),
                function: a.handler_function.clone(),
                path: match &a.handler_path {
                    Some(p) => p.clone(),
                    None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
                },
                kill_grace,
                max_output,
            })
        }
        RunnerKind::Http => {
            let default_port = if warm { 8081 } else { 8080 };
            let runtime_text = a
                .runtime_url
                .clone()
                .unwrap_or_else(|| format!("http://127.0.0.1:{default_port}/invoke"));
            let runtime_url = parse_http_url(names::RUNTIME_URL, &runtime_text)?;
            let health_url = match &a.health_url {
                Some(h) => parse_http_url(names::HEALTH_URL, h)?,
                None => {
                    let mut u = runtime_url.clone();
                    let path = u.path().to_owned();
                    let new_path = match path.strip_suffix("/invoke") {
                        Some(prefix) => format!("{prefix}/health"),
                        None => "/health".to_owned(),
                    };
                    u.set_path(&new_path);
                    u.set_query(None);
                    u
                }
            };
            RunnerConfig::Http(HttpConfig {
                process: argv.map(|argv| ProcessConfig {
                    argv,
                    kill_grace,
                    max_output,
                }),
                runtime_url,
                health_url,
                ready_timeout: ms(a.ready_timeout_ms),
                max_output,
                watch_health: warm,
            })
        }
        RunnerKind::Stdio => RunnerConfig::Stdio(process(argv)?),
        RunnerKind::Loop => RunnerConfig::Loop(process(argv)?),
        RunnerKind::File => RunnerConfig::File(FileConfig {
            process: process(argv)?,
            input_file: a.input_file.clone(),
            output_file: a.output_file.clone(),
            private_dirs: warm && max_concurrency > 1,
        }),
    };

    let callback_url = match &a.callback_url {
        Some(u) if !u.is_empty() => Some(parse_http_url(names::CALLBACK_URL, u)?),
        _ => None,
    };

    let function_name = a.function_name.clone().unwrap_or_else(|| match &runner {
        RunnerConfig::Python(p) => p.module.clone(),
        _ => "unknown".into(),
    });

    // Listed origins, in both modes: in one-shot mode they only widen where
    // CALLBACK_TOKEN may go (CALLBACK_URL itself is the target).
    let listed_origins = match &a.callback_allowed_origins {
        Some(list) => {
            let mut origins = Vec::new();
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let u = parse_http_url(names::CALLBACK_ALLOWED_ORIGINS, item)?;
                origins.push(u.origin().ascii_serialization());
            }
            Some(origins)
        }
        None => None,
    };
    let mut token_origins: Vec<String> = callback_url
        .iter()
        .map(|u| u.origin().ascii_serialization())
        .collect();
    for o in listed_origins.iter().flatten() {
        if !token_origins.contains(o) {
            token_origins.push(o.clone());
        }
    }

    let mode = if warm {
        let ip: IpAddr = a.bind_address.parse().map_err(|_| {
            ConfigError::invalid(
                names::BIND_ADDRESS,
                &a.bind_address,
                "accepted: an IP address such as 0.0.0.0, 127.0.0.1 or ::",
            )
        })?;
        let port = a.warm_port.or(a.port).unwrap_or(8080);
        let allowed_callback_origins = match listed_origins {
            Some(origins) => AllowedOrigins::Only(origins),
            None => match &callback_url {
                Some(u) => AllowedOrigins::Only(vec![u.origin().ascii_serialization()]),
                None => AllowedOrigins::Any,
            },
        };
        Mode::Warm(WarmConfig {
            listen: SocketAddr::new(ip, port),
            max_body_bytes: a.max_body_bytes as usize,
            max_concurrency,
            queue_depth: a
                .queue_depth
                .map(|n| n as usize)
                .unwrap_or(4 * max_concurrency),
            invoke_token: a.invoke_token.clone().filter(|t| !t.is_empty()),
            invoke_methods: parse_methods(&a.invoke_methods)?,
            execution_id: a.execution_id.clone(),
            drain_timeout: ms(a.drain_timeout_ms),
            allowed_callback_origins,
            reload: a.reload,
            conn: ConnLimits {
                header_read_timeout: ms(a.header_read_timeout_ms),
                idle_timeout: ms(a.idle_timeout_ms),
                max_connections: usize::try_from(a.max_connections).unwrap_or(usize::MAX),
                max_header_bytes: usize::try_from(a.max_header_bytes).unwrap_or(usize::MAX),
            },
        })
    } else {
        let platform_form = matches!(
            &payload_var,
            Some(PayloadSource::Variable { name, .. })
                if *name == names::INPUT_DATA || *name == names::NORN_REQUEST_BODY
        );
        let payload = match payload_var {
            Some(p) => p,
            None if stdin != StdinKind::Terminal => PayloadSource::Stdin,
            None => PayloadSource::Variable {
                name: "none",
                text: "null".into(),
            },
        };
        Mode::Oneshot(OneshotConfig {
            // Norn sets no id: one is made up so logs can still be joined.
            execution_id: a
                .execution_id
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            trace_id: a.trace_id.clone(),
            traceparent: a.traceparent.clone(),
            tracestate: a.tracestate.clone(),
            payload,
            output: a.oneshot_output.unwrap_or(if platform_form {
                OneshotOutput::Output
            } else {
                OneshotOutput::Result
            }),
        })
    };

    let otel = otel_config(&a, &function_name)?;

    Ok(Config {
        mode,
        runner,
        function_name,
        timeout: ms(a.timeout_ms),
        max_concurrency,
        callback: CallbackConfig {
            url: callback_url,
            token: a.callback_token.clone().filter(|t| !t.is_empty()),
            token_origins,
            attempts: a.callback_attempts.min(u32::MAX as u64) as u32,
            timeout: ms(a.callback_timeout_ms),
        },
        log_format: a.log_format,
        log_level: a.log_level,
        schemas: SchemaConfig {
            input: a.input_schema.clone(),
            output: a.output_schema.clone(),
        },
        otel,
    })
}

/// The standard OpenTelemetry variables the watchdog decides on itself.
fn otel_config(a: &Args, function_name: &str) -> Result<Option<OtelConfig>, ConfigError> {
    if a.otel_sdk_disabled == Some(true) {
        return Ok(None);
    }
    let set = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    // The per-signal URL is used as is; the base URL gets the signal's path
    // (OpenTelemetry's exporter specification).
    let traces_endpoint = match (
        set(&a.otel_exporter_otlp_traces_endpoint),
        set(&a.otel_exporter_otlp_endpoint),
    ) {
        (Some(url), _) => parse_http_url(names::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, url.trim())?,
        (None, Some(base)) => {
            parse_http_url(names::OTEL_EXPORTER_OTLP_ENDPOINT, base.trim())?;
            let joined = format!("{}/v1/traces", base.trim().trim_end_matches('/'));
            parse_http_url(names::OTEL_EXPORTER_OTLP_ENDPOINT, &joined)?
        }
        (None, None) => return Ok(None),
    };
    for (name, value) in [
        (
            names::OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
            &a.otel_exporter_otlp_traces_protocol,
        ),
        (
            names::OTEL_EXPORTER_OTLP_PROTOCOL,
            &a.otel_exporter_otlp_protocol,
        ),
    ] {
        if let Some(p) = set(value) {
            if p.trim() != "http/protobuf" {
                return Err(ConfigError::invalid(
                    name,
                    &p,
                    "accepted: http/protobuf (this watchdog exports spans over OTLP/HTTP only)",
                ));
            }
            // The per-signal variable, when set, is the one that counts.
            break;
        }
    }
    let timeout_ms = a
        .otel_exporter_otlp_traces_timeout
        .or(a.otel_exporter_otlp_timeout)
        .unwrap_or(10_000);
    Ok(Some(OtelConfig {
        traces_endpoint,
        service_name: set(&a.otel_service_name).unwrap_or_else(|| function_name.to_owned()),
        timeout: ms(timeout_ms),
        max_queue: a.otel_bsp_max_queue_size as usize,
    }))
}

fn parse_http_url(variable: &str, text: &str) -> Result<url::Url, ConfigError> {
    match url::Url::parse(text) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => Ok(u),
        _ => Err(ConfigError::invalid(
            variable,
            text,
            "accepted: an absolute http:// or https:// URL",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(env: &[(&str, &str)]) -> Args {
        // clap reads the process environment; tests pass flags instead, which
        // go through the same parsers.
        let mut argv = vec!["watchdog".to_string()];
        for (k, v) in env {
            argv.push(format!(
                "--{}={}",
                k.to_ascii_lowercase().replace('_', "-"),
                v
            ));
        }
        Args::try_parse_from(argv).unwrap()
    }

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        build(args(env), StdinKind::Terminal)
    }

    #[test]
    fn a_payload_on_standard_input_means_oneshot() {
        let env = [("WATCHDOG_CMD", "cat"), ("EXECUTION_MODE", "STDIO")];
        let mode = |stdin| build(args(&env), stdin).unwrap().mode;
        assert!(matches!(
            mode(StdinKind::PipeOrFile),
            Mode::Oneshot(OneshotConfig {
                payload: PayloadSource::Stdin,
                ..
            })
        ));
        assert!(matches!(mode(StdinKind::Other), Mode::Warm(_)));
        assert!(matches!(mode(StdinKind::Terminal), Mode::Warm(_)));
        let forced = [
            ("WARM", "true"),
            ("WATCHDOG_CMD", "cat"),
            ("EXECUTION_MODE", "STDIO"),
        ];
        assert!(matches!(
            build(args(&forced), StdinKind::PipeOrFile).unwrap().mode,
            Mode::Warm(_)
        ));
    }

    #[test]
    fn execution_id_without_warm_means_oneshot() {
        let c = load(&[
            ("EXECUTION_ID", "e1"),
            ("WATCHDOG_CMD", "cat"),
            ("EXECUTION_MODE", "stdio"),
        ])
        .unwrap();
        assert!(matches!(c.mode, Mode::Oneshot(_)));
        let c = load(&[("WATCHDOG_CMD", "cat"), ("EXECUTION_MODE", "STDIO")]).unwrap();
        assert!(matches!(c.mode, Mode::Warm(_)));
        let c = load(&[
            ("EXECUTION_ID", "e1"),
            ("WARM", "TRUE"),
            ("WATCHDOG_CMD", "cat"),
        ])
        .unwrap();
        assert!(matches!(c.mode, Mode::Warm(_)));
    }

    #[test]
    fn platform_payloads_default_to_output_form() {
        let c = load(&[
            ("NORN_REQUEST_BODY", "{}"),
            ("WATCHDOG_CMD", "cat"),
            ("EXECUTION_MODE", "STDIO"),
        ])
        .unwrap();
        match c.mode {
            Mode::Oneshot(o) => assert_eq!(o.output, OneshotOutput::Output),
            _ => panic!("expected one-shot"),
        }
        let c = load(&[
            ("INVOCATION_PAYLOAD", "{}"),
            ("WATCHDOG_CMD", "cat"),
            ("EXECUTION_MODE", "STDIO"),
        ])
        .unwrap();
        match c.mode {
            Mode::Oneshot(o) => assert_eq!(o.output, OneshotOutput::Result),
            _ => panic!("expected one-shot"),
        }
    }

    #[test]
    fn command_is_split_like_a_shell() {
        let c = load(&[
            ("WATCHDOG_CMD", "python3 -c 'print(\"a b\")'"),
            ("EXECUTION_MODE", "STDIO"),
        ])
        .unwrap();
        match c.runner {
            RunnerConfig::Stdio(p) => assert_eq!(p.argv, ["python3", "-c", "print(\"a b\")"]),
            other => panic!("unexpected {other:?}"),
        }
        let err = load(&[
            ("WATCHDOG_CMD", "echo 'unbalanced"),
            ("EXECUTION_MODE", "STDIO"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("WATCHDOG_CMD"));
    }

    #[test]
    fn stdio_without_command_names_the_variable() {
        let err = load(&[("EXECUTION_MODE", "STDIO")]).unwrap_err();
        assert!(err.to_string().contains("WATCHDOG_CMD"), "{err}");
    }

    #[test]
    fn health_url_defaults_from_runtime_url() {
        let c = load(&[
            ("EXECUTION_MODE", "HTTP"),
            ("RUNTIME_URL", "http://127.0.0.1:9000/fn/invoke"),
        ])
        .unwrap();
        match c.runner {
            RunnerConfig::Http(h) => {
                assert_eq!(h.health_url.as_str(), "http://127.0.0.1:9000/fn/health")
            }
            other => panic!("unexpected {other:?}"),
        }
        let c = load(&[("EXECUTION_MODE", "HTTP"), ("EXECUTION_ID", "x")]).unwrap();
        match c.runner {
            RunnerConfig::Http(h) => {
                assert_eq!(h.runtime_url.as_str(), "http://127.0.0.1:8080/invoke")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn callback_origin_is_the_default_allow_list() {
        let c = load(&[
            ("WATCHDOG_CMD", "cat"),
            ("EXECUTION_MODE", "STDIO"),
            ("CALLBACK_URL", "http://cp:8080/v1/executions"),
        ])
        .unwrap();
        let Mode::Warm(w) = c.mode else { panic!() };
        assert!(w
            .allowed_callback_origins
            .allows(&url::Url::parse("http://cp:8080/other").unwrap()));
        assert!(!w
            .allowed_callback_origins
            .allows(&url::Url::parse("http://evil:8080/").unwrap()));
    }

    #[test]
    fn reload_is_off_unless_asked_for() {
        let warm = |env: &[(&str, &str)]| match load(env).unwrap().mode {
            Mode::Warm(w) => w.reload,
            Mode::Oneshot(_) => panic!("expected warm"),
        };
        let base = [("WATCHDOG_CMD", "cat"), ("EXECUTION_MODE", "STDIO")];
        assert!(!warm(&base));
        assert!(warm(&[base[0], base[1], ("RELOAD", "Yes")]));
        assert!(!warm(&[base[0], base[1], ("RELOAD", "0")]));
        let bad = vec!["watchdog".to_string(), "--reload=sometimes".to_string()];
        let err = Args::try_parse_from(bad).map_err(clap_error).unwrap_err();
        assert!(err.to_string().contains("RELOAD"), "{err}");
    }

    #[test]
    fn spans_are_exported_only_with_an_otlp_endpoint() {
        let base = [("WATCHDOG_CMD", "cat"), ("EXECUTION_MODE", "STDIO")];
        assert!(load(&base).unwrap().otel.is_none());
        let with = |extra: &[(&str, &str)]| {
            let env: Vec<_> = base.iter().chain(extra).copied().collect();
            load(&env)
        };
        let c = with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("FUNCTION_NAME", "echo"),
        ])
        .unwrap();
        let o = c.otel.unwrap();
        assert_eq!(
            o.traces_endpoint.as_str(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(o.service_name, "echo");
        assert_eq!(o.timeout, Duration::from_secs(10));
        let o = with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://other:4318/traces",
            ),
            ("OTEL_SERVICE_NAME", "svc"),
        ])
        .unwrap()
        .otel
        .unwrap();
        assert_eq!(o.traces_endpoint.as_str(), "http://other:4318/traces");
        assert_eq!(o.service_name, "svc");
        let off = with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert!(off.otel.is_none());
    }

    #[test]
    fn otlp_over_grpc_or_a_bad_endpoint_is_a_configuration_error() {
        let err = load(&[
            ("WATCHDOG_CMD", "cat"),
            ("EXECUTION_MODE", "STDIO"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
            "{err}"
        );
        let err = load(&[
            ("WATCHDOG_CMD", "cat"),
            ("EXECUTION_MODE", "STDIO"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{err}"
        );
    }

    #[test]
    fn bad_numbers_are_rejected_by_their_parsers() {
        assert!(parse_positive("0").is_err());
        assert!(parse_positive("abc").is_err());
        assert!(parse_positive("-1").is_err());
        assert_eq!(parse_positive("250"), Ok(250));
        assert!(parse_bool("maybe").is_err());
        assert_eq!(parse_bool("YES"), Ok(true));
    }
}
