//! `INPUT_SCHEMA` and `OUTPUT_SCHEMA` (contract section 11): compiled once
//! at start-up; every failing place is reported with its JSON pointer.

use std::sync::Arc;

use runtime_sdk::{names, ErrorCode, InvokeError, Output, Payload};
use serde_json::Value;

use crate::config::{ConfigError, SchemaConfig};

#[derive(Clone, Default)]
pub struct Validator {
    input: Option<Arc<jsonschema::Validator>>,
    output: Option<Arc<jsonschema::Validator>>,
}

impl Validator {
    pub fn compile(cfg: &SchemaConfig) -> Result<Self, ConfigError> {
        Ok(Validator {
            input: compile_one(names::INPUT_SCHEMA, cfg.input.as_deref())?,
            output: compile_one(names::OUTPUT_SCHEMA, cfg.output.as_deref())?,
        })
    }

    pub fn has_input(&self) -> bool {
        self.input.is_some()
    }

    pub fn has_output(&self) -> bool {
        self.output.is_some()
    }

    /// `INVALID_REQUEST` when the payload breaks `INPUT_SCHEMA`. The tree
    /// the schema needs is built only when a schema is set.
    pub fn check_input(&self, payload: &Payload) -> Result<(), InvokeError> {
        let Some(v) = &self.input else {
            return Ok(());
        };
        let Some(payload) = payload.as_json() else {
            return Err(InvokeError::new(
                ErrorCode::InvalidRequest,
                "INPUT_SCHEMA is set, and a binary (application/octet-stream) payload cannot be checked against it: send JSON",
            ));
        };
        check(v, &payload.to_value()).map_err(|places| {
            InvokeError::new(
                ErrorCode::InvalidRequest,
                format!("the payload does not match INPUT_SCHEMA: {places}"),
            )
        })
    }

    /// `OUTPUT_VALIDATION_ERROR` when the output breaks `OUTPUT_SCHEMA`.
    pub fn check_output(&self, output: &Output) -> Result<(), InvokeError> {
        let Some(v) = &self.output else {
            return Ok(());
        };
        let Some(output) = output.as_json() else {
            return Err(InvokeError::new(
                ErrorCode::OutputValidationError,
                "OUTPUT_SCHEMA is set, and the output is not JSON (raw bytes or text)",
            ));
        };
        check(v, &output.to_value()).map_err(|places| {
            InvokeError::new(
                ErrorCode::OutputValidationError,
                format!("the output does not match OUTPUT_SCHEMA: {places}"),
            )
        })
    }
}

fn check(validator: &jsonschema::Validator, value: &Value) -> Result<(), String> {
    let places: Vec<String> = validator
        .iter_errors(value)
        .map(|e| {
            let pointer = e.instance_path().to_string();
            let pointer = if pointer.is_empty() {
                "/".to_owned()
            } else {
                pointer
            };
            format!("{pointer}: {e}")
        })
        .collect();
    if places.is_empty() {
        Ok(())
    } else {
        Err(places.join("; "))
    }
}

/// A schema is inline JSON when it looks like JSON, else a file path.
fn compile_one(
    variable: &str,
    text: Option<&str>,
) -> Result<Option<Arc<jsonschema::Validator>>, ConfigError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let inline = text.starts_with('{') || text == "true" || text == "false";
    let source = if inline {
        text.to_owned()
    } else {
        std::fs::read_to_string(text).map_err(|e| {
            ConfigError::invalid(
                variable,
                text,
                format!("accepted: inline JSON Schema or a readable schema file ({e})"),
            )
        })?
    };
    let schema: Value = serde_json::from_str(&source).map_err(|e| {
        ConfigError::invalid(
            variable,
            text,
            format!("the schema is not valid JSON ({e}); accepted: a JSON Schema document"),
        )
    })?;
    // A schema file is its own base URI, so a relative `$ref` ("common.json")
    // resolves next to it, as it does for any JSON Schema tool.
    let mut options = jsonschema::options();
    if !inline {
        if let Some(uri) = std::path::absolute(text)
            .ok()
            .and_then(|p| url::Url::from_file_path(p).ok())
        {
            options = options.with_base_uri(uri.to_string());
        }
    }
    let validator = options.build(&schema).map_err(|e| {
        ConfigError::invalid(
            variable,
            text,
            format!("the schema is not a valid JSON Schema ({e})"),
        )
    })?;
    Ok(Some(Arc::new(validator)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_sdk::Json;
    use serde_json::json;

    fn validator(input: &str) -> Validator {
        Validator::compile(&SchemaConfig {
            input: Some(input.into()),
            output: None,
        })
        .unwrap()
    }

    #[test]
    fn every_failing_place_is_listed_with_its_pointer() {
        let v = validator(
            r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"]}"#,
        );
        assert!(v
            .check_input(&Payload::Json(Json::from(json!({"a": 1, "b": "x"}))))
            .is_ok());
        let e = v
            .check_input(&Payload::Json(Json::from(json!({"a": "one", "b": 2}))))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("/a"), "{}", e.message);
        assert!(e.message.contains("/b"), "{}", e.message);
    }

    #[test]
    fn a_schema_file_resolves_relative_refs_next_to_it() {
        let dir = std::env::temp_dir().join(format!("ember-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("int.json"), r#"{"type": "integer"}"#).unwrap();
        let main = dir.join("main.json");
        std::fs::write(&main, r#"{"properties": {"a": {"$ref": "int.json"}}}"#).unwrap();
        let v = validator(main.to_str().unwrap());
        assert!(v
            .check_input(&Payload::Json(Json::from(json!({"a": 1}))))
            .is_ok());
        let e = v
            .check_input(&Payload::Json(Json::from(json!({"a": "x"}))))
            .unwrap_err();
        assert!(e.message.contains("/a"), "{}", e.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_schema_is_a_config_error() {
        let err = Validator::compile(&SchemaConfig {
            input: Some(r#"{"type": 12}"#.into()),
            output: None,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("INPUT_SCHEMA"));
        let err = Validator::compile(&SchemaConfig {
            input: None,
            output: Some("/nonexistent/schema.json".into()),
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("OUTPUT_SCHEMA"));
    }
}
