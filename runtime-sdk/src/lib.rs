//! The Ember contract (`CONTRACT.md`) as types, with no I/O.
//!
//! Every runner — a child process, the embedded Python runtime, a Rust
//! function — implements [`Handler`]; the watchdog's modes only ever talk to
//! that trait.

mod body;
mod error;
mod handler;
mod invocation;
mod json;
pub mod names;

pub use body::{AsJson, Body, ChunkStream, Chunks, Output, Payload};
pub use error::{ErrorCode, InvokeError};
pub use handler::{BoxFuture, Handler, Health};
pub use invocation::{Invocation, RequestInfo, SlotRelease};
pub use json::Json;

/// What one invocation ends with.
pub type InvokeResult = Result<Output, InvokeError>;
