use std::time::Instant;

use runtime_sdk::names;
use watchdog::config::{Config, ConfigError, Mode};
use watchdog::otel::Spans;
use watchdog::shutdown::Shutdown;
use watchdog::validate::Validator;
use watchdog::{init, logging, memory, metrics::Metrics, oneshot, runner, secrets, warm};

/// The static build links musl, whose malloc is slow under the warm server's
/// many small allocations from several threads. The Python build takes mimalloc
/// too: glibc's malloc and free were a fifth of its instructions per warm request,
/// and it already pays for an interpreter (+0.75 MB, bench/PROFILING.md). The
/// plain glibc build keeps glibc's, for its smaller memory. Only Rust's allocations
/// move: libpython keeps glibc's malloc (overriding it cost more memory). How it
/// is called: `alloc.rs`.
#[cfg(any(target_env = "musl", feature = "python"))]
#[global_allocator]
static ALLOC: watchdog::alloc::Mimalloc = watchdog::alloc::Mimalloc;

/// One worker per CPU. With one CPU, warm Python gets a second, held worker, so
/// that quick calls can run on the worker that read them with a worker to fall
/// back on (`runtime_python::hold_spare_worker`).
fn runtime(config: &Config) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(feature = "python")]
    {
        let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
        let warm_python = matches!(config.mode, Mode::Warm(_))
            && matches!(config.runner, watchdog::config::RunnerConfig::Python(_));
        if one_cpu && warm_python {
            let runtime = builder.worker_threads(2).build().expect("tokio runtime");
            runtime_python::hold_spare_worker(
                runtime.handle(),
                watchdog::alloc::release_thread_pages,
            );
            return runtime;
        }
    }
    #[cfg(not(feature = "python"))]
    let _ = config;
    builder.build().expect("tokio runtime")
}

/// Exit code for a configuration error (contract section 1).
const EXIT_CONFIG: i32 = 2;

fn main() {
    let process_start = Instant::now();
    // Configuration is read and checked before anything starts.
    let config = match Config::load() {
        Ok(c) => c,
        Err(ConfigError::Display(text)) => {
            print!("{text}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    // Config holds the secrets now; nothing that runs later (children, Python)
    // may find them (contract section 2). Before any thread exists.
    let sealed = secrets::seal(&names::SCRUBBED_FROM_CHILDREN);
    // As PID 1, split off a minimal init that reaps orphans (section 10). After
    // sealing, so the init is non-dumpable with its environment erased too;
    // before any thread.
    init::split_if_pid1();
    memory::tune();
    let validator = match Validator::compile(&config.schemas) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    logging::init(config.log_format, config.log_level);
    // One-shot stdout holds the result line alone; taken before any thread.
    let stdout = match &config.mode {
        Mode::Oneshot(_) => oneshot::take_stdout(),
        Mode::Warm(_) => None,
    };
    if let Err(e) = sealed {
        tracing::warn!("{e}: other processes of this user may read the watchdog's memory");
    }

    let runtime = runtime(&config);
    let code = runtime.block_on(async {
        let shutdown = Shutdown::new();
        watchdog::shutdown::on_signal(&shutdown);
        let handler = runner::build(&config, &shutdown);
        let metrics = Metrics::new(&config.function_name, handler.mode());
        // Before any port is bound: an exporter that cannot be built is a
        // configuration error.
        let spans = match &config.otel {
            Some(cfg) => match Spans::start(
                cfg,
                &config.function_name,
                handler.mode(),
                &metrics,
                tokio::runtime::Handle::current(),
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("watchdog: configuration error: {e}");
                    return EXIT_CONFIG;
                }
            },
            None => None,
        };
        let code = match &config.mode {
            Mode::Warm(warm_cfg) => {
                warm::run(
                    &config,
                    warm_cfg,
                    handler,
                    validator,
                    metrics,
                    shutdown,
                    process_start,
                    spans.clone(),
                )
                .await
            }
            Mode::Oneshot(o) => {
                let spans = spans.clone();
                oneshot::run(
                    &config, o, handler, validator, metrics, shutdown, stdout, spans,
                )
                .await
            }
        };
        if let Some(s) = &spans {
            s.shutdown(watchdog::otel::FLUSH_LIMIT).await;
        }
        code
    });
    // Background tasks (a stuck Python thread, a blocked read) must not
    // keep the process alive past its answer.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
