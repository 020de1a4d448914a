//! Runners: each turns an [`Invocation`](runtime_sdk::Invocation) into a
//! result by running the function some way (contract section 2).

pub mod file;
pub mod http;
pub mod kept;
pub mod process;
pub mod relay;
pub mod stdio;

use std::sync::Arc;

use runtime_sdk::Handler;

use crate::config::{Config, Mode, RunnerConfig};
use crate::shutdown::Shutdown;

/// Builds the runner the configuration asks for.
pub fn build(config: &Config, shutdown: &Shutdown) -> Arc<dyn Handler> {
    match &config.runner {
        RunnerConfig::Stdio(p) => Arc::new(stdio::StdioRunner::new(p.clone())),
        RunnerConfig::File(f) => Arc::new(file::FileRunner::new(f.clone())),
        RunnerConfig::Http(h) => {
            let runner = http::HttpRunner::new(h.clone(), shutdown.clone());
            match &config.mode {
                Mode::Warm(w) if w.reload => Arc::new(runner.reloadable()),
                _ => Arc::new(runner),
            }
        }
        RunnerConfig::Loop(p) => Arc::new(kept::LoopRunner::from_config(p.clone(), config)),
        #[cfg(feature = "python")]
        RunnerConfig::Python(p) => Arc::new(runtime_python::PythonHandler::new(
            runtime_python::PythonConfig {
                module: p.module.clone(),
                function: p.function.clone(),
                path: p.path.clone(),
                slots: config.max_concurrency,
                kill_grace: p.kill_grace,
                function_name: config.function_name.clone(),
                max_output: p.max_output,
            },
        )),
        #[cfg(not(feature = "python"))]
        RunnerConfig::Python(_) => unreachable!("config rejects PYTHON without the feature"),
    }
}
