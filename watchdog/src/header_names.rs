//! The section-4 header names the warm path still looks up or inserts by name,
//! parsed once. A look-up or insert by `&str` parses and checks the name on
//! every call (`parse_hdr` alone was 1.3k of a warm request's 41.7k
//! instructions, bench/PROFILING.md). `warm::meta` reads the others in its
//! one pass over the headers.

use hyper::header::HeaderName;
use runtime_sdk::names::header;

pub static EXECUTION_ID: HeaderName = HeaderName::from_static(header::EXECUTION_ID);
pub static TRACEPARENT: HeaderName = HeaderName::from_static(header::TRACEPARENT);
pub static TRACESTATE: HeaderName = HeaderName::from_static(header::TRACESTATE);
pub static COLD_START: HeaderName = HeaderName::from_static(header::COLD_START);
pub static INIT_DURATION_MS: HeaderName = HeaderName::from_static(header::INIT_DURATION_MS);
