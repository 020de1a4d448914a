use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// The wire error codes of contract section 7.
///
/// `Custom` carries a code a Python handler chose with
/// `ember.FunctionError(code, message)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    PayloadTooLarge,
    Overloaded,
    NotReady,
    Timeout,
    StartupError,
    HandlerError,
    HandlerLoadError,
    OutputSerializationError,
    OutputValidationError,
    OutputTooLarge,
    FunctionError,
    Cancelled,
    Custom(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::NotReady => "NOT_READY",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::StartupError => "STARTUP_ERROR",
            ErrorCode::HandlerError => "HANDLER_ERROR",
            ErrorCode::HandlerLoadError => "HANDLER_LOAD_ERROR",
            ErrorCode::OutputSerializationError => "OUTPUT_SERIALIZATION_ERROR",
            ErrorCode::OutputValidationError => "OUTPUT_VALIDATION_ERROR",
            ErrorCode::OutputTooLarge => "OUTPUT_TOO_LARGE",
            ErrorCode::FunctionError => "FUNCTION_ERROR",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::Custom(code) => code,
        }
    }

    /// Parses a wire code; anything unknown becomes `Custom`.
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            "INVALID_REQUEST" => ErrorCode::InvalidRequest,
            "UNAUTHORIZED" => ErrorCode::Unauthorized,
            "PAYLOAD_TOO_LARGE" => ErrorCode::PayloadTooLarge,
            "OVERLOADED" => ErrorCode::Overloaded,
            "NOT_READY" => ErrorCode::NotReady,
            "TIMEOUT" => ErrorCode::Timeout,
            "STARTUP_ERROR" => ErrorCode::StartupError,
            "HANDLER_ERROR" => ErrorCode::HandlerError,
            "HANDLER_LOAD_ERROR" => ErrorCode::HandlerLoadError,
            "OUTPUT_SERIALIZATION_ERROR" => ErrorCode::OutputSerializationError,
            "OUTPUT_VALIDATION_ERROR" => ErrorCode::OutputValidationError,
            "OUTPUT_TOO_LARGE" => ErrorCode::OutputTooLarge,
            "FUNCTION_ERROR" => ErrorCode::FunctionError,
            "CANCELLED" => ErrorCode::Cancelled,
            other => ErrorCode::Custom(other.to_owned()),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why an invocation failed: a code and a one-line message. It is what the
/// warm error body, the callback's `error` and the one-shot result carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvokeError {
    pub code: ErrorCode,
    pub message: String,
}

impl InvokeError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        InvokeError {
            code,
            message: message.into(),
        }
    }

    /// `TIMEOUT` for an invocation cut by its deadline; `budget` is the
    /// time it was given (`min(TIMEOUT_MS, X-Timeout-Ms)`).
    pub fn timeout(execution_id: &str, budget: Duration) -> Self {
        InvokeError::new(
            ErrorCode::Timeout,
            format!(
                "execution {execution_id} did not finish within its {} ms deadline (TIMEOUT_MS or X-Timeout-Ms)",
                // Measured just after the deadline was set: round the few
                // microseconds spent since then back up.
                budget.as_micros().div_ceil(1000)
            ),
        )
    }

    /// `OUTPUT_TOO_LARGE`: `what` (stdout, the output file...) went past
    /// `MAX_OUTPUT_BYTES` and was not read further.
    pub fn output_too_large(what: &str, limit: usize) -> Self {
        InvokeError::new(
            ErrorCode::OutputTooLarge,
            format!("{what} is larger than MAX_OUTPUT_BYTES={limit}; reading stopped there"),
        )
    }

    /// `CANCELLED`, with why.
    pub fn cancelled(why: impl Into<String>) -> Self {
        InvokeError::new(ErrorCode::Cancelled, why)
    }

    /// The error body of contract section 4: `{"error": ..., "code": ...}`.
    pub fn to_body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.message, "code": self.code.as_str() })
    }
}

impl fmt::Display for InvokeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for InvokeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_wire_names() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::Timeout,
            ErrorCode::OutputValidationError,
            ErrorCode::Cancelled,
        ] {
            assert_eq!(ErrorCode::parse(code.as_str()), code);
        }
        assert_eq!(
            ErrorCode::parse("RATE_LIMITED"),
            ErrorCode::Custom("RATE_LIMITED".into())
        );
    }

    #[test]
    fn error_body_has_error_and_code() {
        let e = InvokeError::new(ErrorCode::Timeout, "took too long");
        assert_eq!(
            e.to_body(),
            serde_json::json!({"error": "took too long", "code": "TIMEOUT"})
        );
        let wire = serde_json::to_value(&e).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"code": "TIMEOUT", "message": "took too long"})
        );
    }
}
