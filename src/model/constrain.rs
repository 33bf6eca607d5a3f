//! Constrained decoding: what an answer must look like.
//!
//! In: a [`ResponseFormat`] per request (`gemba ask --json-schema/--choice/--regex`, `POST /ask`'s
//! `response_format`, an alert rule's `schema`). Out: a token mask applied by the sampler over
//! the model's real vocabulary at every step, so the text generated is always a complete match
//! (a JSON document that validates, one of the choices, a match of the expression).

use serde::{Deserialize, Serialize};

/// The shape an answer is held to (`{"type": "json_schema", "schema": …}` in the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// A JSON document valid under this JSON schema.
    JsonSchema { schema: serde_json::Value },
    /// Exactly one of these strings.
    Choice { choices: Vec<String> },
    /// A full match of this regular expression.
    Regex { pattern: String },
}
