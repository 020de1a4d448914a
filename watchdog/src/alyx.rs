//! Alyx's forms (contract sections 4 and 5). Its subprocess runtime writes
//! `{"request_id", "function", "input", "context"}` to stdin and parses the
//! whole of stdout as `{"request_id", "success", "output", "error"}`; its
//! container runtime POSTs the same request to `/invoke` with no
//! `X-Execution-Id` and reads only the answer's body, whatever the status.

use runtime_sdk::{InvokeError, Json};
use serde::Deserialize;
use serde_json::json;

/// Requests up to this size are recognised before admission, so even a
/// refusal (401, 429, 503) can answer in Alyx's shape; bigger ones are
/// recognised once their body is read.
pub const EARLY_PROBE_BYTES: usize = 64 * 1024;

/// `request_id`, when `payload` is an object with a string one (section 5).
pub fn request_id(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        request_id: Option<String>,
    }
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Probe>(payload)
        .ok()
        .and_then(|p| p.request_id)
}

/// `request_id`, when `body` is an Alyx `/invoke` request: an object with a
/// string `request_id` and a string `function` (section 4). Read without
/// building the body's tree.
pub fn invoke_request_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        request_id: String,
        #[allow(dead_code)]
        function: String,
    }
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Probe>(body)
        .ok()
        .map(|p| p.request_id)
}

/// The answer's body in Alyx's shape, for every outcome.
pub fn answer(request_id: &str, result: Result<&Json, &InvokeError>, duration_ms: u64) -> Vec<u8> {
    let mut body = b"{\"request_id\":".to_vec();
    serde_json::to_writer(&mut body, request_id).expect("a str serialises");
    match result {
        Ok(output) => {
            body.extend_from_slice(b",\"success\":true,\"output\":");
            body.extend_from_slice(output.as_bytes());
        }
        Err(e) => {
            body.extend_from_slice(b",\"success\":false,\"error\":");
            let error = json!({"code": e.code.as_str(), "message": e.message});
            serde_json::to_writer(&mut body, &error).expect("a Value serialises");
        }
    }
    body.extend_from_slice(format!(",\"duration_ms\":{duration_ms}}}").as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_sdk::ErrorCode;
    use serde_json::Value;

    #[test]
    fn the_invoke_form_needs_both_strings() {
        let alyx = br#"{"request_id": "r1", "function": "f", "input": {"a": 1}, "context": {}}"#;
        assert_eq!(invoke_request_id(alyx).as_deref(), Some("r1"));
        assert_eq!(invoke_request_id(br#"{"request_id": "r1"}"#), None);
        assert_eq!(
            invoke_request_id(br#"{"request_id": 1, "function": "f"}"#),
            None
        );
        assert_eq!(invoke_request_id(b"[1]"), None);
        assert_eq!(
            request_id(br#" {"request_id": "r2", "x": [1]}"#).as_deref(),
            Some("r2")
        );
        assert_eq!(request_id(b"\"r\""), None);
    }

    #[test]
    fn answers_have_alyx_shape() {
        let out = Json::parse("{\"n\": 1.00000000000000000001}").unwrap();
        let ok: Value = serde_json::from_slice(&answer("r1", Ok(&out), 7)).unwrap();
        assert_eq!(ok["request_id"], "r1");
        assert_eq!(ok["success"], true);
        assert_eq!(ok["duration_ms"], 7);
        let e = InvokeError::new(ErrorCode::Overloaded, "busy");
        let failed: Value = serde_json::from_slice(&answer("r1", Err(&e), 0)).unwrap();
        assert_eq!(
            failed,
            json!({"request_id": "r1", "success": false,
                   "error": {"code": "OVERLOADED", "message": "busy"}, "duration_ms": 0})
        );
    }
}
