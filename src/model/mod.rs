//! The model stage: an onnxruntime-genai bundle → ONNX Runtime sessions → generation → a stream
//! of sentences.
//!
//! Multimodal pre-processing (phi4mm) is ONNX-Runtime-free and lives in [`crate::media`]; this
//! module builds its processor from the bundle's parsed config and tokenizer ([`preprocess`])
//! and feeds the tensors to the sessions ([`multimodal`]). `model` depends on `media`, `config`
//! and `sys` only, never on capture, the daemon or anything above (`tests/layering.rs`).
//!
//! What flows through: a prompt (text, later images and audio) goes in; [`Event`]s come out —
//! each token, each sentence the moment it is final, and a [`Done`] summary with the timings and
//! the provider every component actually ran on.

pub mod bundle;
pub mod constrain;
pub mod engine;
pub mod genai_config;
pub mod generate;
pub mod multimodal;
pub mod prefix;
pub mod preprocess;
pub mod providers;
pub mod runtime;
pub mod sample;
pub mod speculate;
pub mod stream;
pub mod tokenizer;

#[cfg(test)]
mod alloc_count;

pub use engine::Engine;
pub use generate::{CancelToken, Done, Event, GenerateParams, StopReason};

use std::time::Duration;

use serde::Serialize;

/// One finished sentence of a reply, as it leaves the splitter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sentence {
    /// 0-based position of the sentence in the reply.
    pub index: usize,
    /// The sentence text, trimmed of surrounding whitespace.
    pub text: String,
    /// Generated-token indices `[start, end)` whose text makes up this sentence.
    pub token_span: (usize, usize),
    /// Time since generation started when the sentence became final.
    #[serde(serialize_with = "ser_ms")]
    pub at: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_micros() as f64 / 1000.0)
}
