//! Ember's watchdog: configuration, the two modes, the runners, callbacks,
//! metrics, logging and shutdown. `main.rs` only wires them.

#[cfg(any(target_env = "musl", feature = "python"))]
pub mod alloc;
pub mod alyx;
pub mod callback;
pub mod config;
pub mod header_names;
pub mod init;
pub mod logging;
pub mod memory;
pub mod metrics;
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "python")))]
pub mod no_libm;
pub mod oneshot;
pub mod otel;
pub mod pipeline;
pub mod reload;
pub mod runner;
pub mod secrets;
pub mod shutdown;
pub mod stream;
pub mod tracecontext;
pub mod validate;
pub mod warm;
