//! `genai_config.json`: the onnxruntime-genai bundle description, parsed strictly.
//!
//! gemba reads the same file ORT-GenAI reads, so a real export runs unchanged. Like ORT-GenAI,
//! an unknown key is an error — reported with its full path (`model.decoder.inputs.foo`). Keys
//! ORT-GenAI knows but gemba does not implement (pipelines, sliding windows, encoders, speculative
//! decoding, …) are refused by name rather than silently ignored, since ignoring them would change
//! the model's output. Informational keys that change nothing gemba does are accepted.
//!
//! What flows out: a [`GenaiConfig`] with defaults filled in the way ORT-GenAI fills them
//! (`search.max_length` 0 → `context_length`, `top_k` 50, …). Checking the config against the
//! ONNX graphs happens in `bundle.rs`, where the sessions are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON at line {line}, column {column}: {msg}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{path}: {key}: {msg}")]
    Key {
        path: PathBuf,
        key: String,
        msg: String,
    },
    #[error("{path}: {key}: ORT-GenAI feature not supported by gemba ({what})")]
    Unsupported {
        path: PathBuf,
        key: String,
        what: String,
    },
}

/// `eos_token_id`: a single id or a list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct GenaiConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub search: Search,
    #[serde(default)]
    speculative: Option<IgnoredAny>,
    #[serde(default)]
    engine: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct ModelSection {
    #[serde(rename = "type")]
    pub model_type: String,
    #[serde(default)]
    pub context_length: u32,
    #[serde(default)]
    pub vocab_size: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    pub eos_token_id: TokenIds,
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    #[serde(default)]
    pub tokenizer_dir: Option<String>,
    pub decoder: Decoder,
    #[serde(default)]
    pub vision: Option<Vision>,
    #[serde(default)]
    pub speech: Option<Speech>,
    #[serde(default)]
    pub embedding: Option<Embedding>,
    // Informational ids that change nothing gemba does with the supported model types.
    #[serde(default)]
    decoder_start_token_id: Option<IgnoredAny>,
    #[serde(default)]
    sep_token_id: Option<IgnoredAny>,
    #[serde(default)]
    pub image_token_id: Option<i64>,
    #[serde(default)]
    pub audio_token_id: Option<i64>,
    #[serde(default)]
    boa_token_id: Option<IgnoredAny>,
    #[serde(default)]
    video_token_id: Option<IgnoredAny>,
    #[serde(default)]
    vision_start_token_id: Option<IgnoredAny>,
    // ORT-GenAI keys for model families gemba does not run (speech recognisers, enc-dec, …).
    #[serde(default)]
    encoder: Option<IgnoredAny>,
    #[serde(default)]
    draft: Option<IgnoredAny>,
    #[serde(default)]
    joiner: Option<IgnoredAny>,
    #[serde(default)]
    vad: Option<IgnoredAny>,
    #[serde(default)]
    mtp: Option<IgnoredAny>,
    #[serde(default)]
    tdt_durations: Option<IgnoredAny>,
    #[serde(default)]
    num_mels: Option<IgnoredAny>,
    #[serde(default)]
    fft_size: Option<IgnoredAny>,
    #[serde(default)]
    hop_length: Option<IgnoredAny>,
    #[serde(default)]
    win_length: Option<IgnoredAny>,
    #[serde(default)]
    preemph: Option<IgnoredAny>,
    #[serde(default)]
    log_eps: Option<IgnoredAny>,
    #[serde(default)]
    norm_eps: Option<IgnoredAny>,
    #[serde(default)]
    subsampling_factor: Option<IgnoredAny>,
    #[serde(default)]
    left_context: Option<IgnoredAny>,
    #[serde(default)]
    conv_context: Option<IgnoredAny>,
    #[serde(default)]
    pre_encode_cache_size: Option<IgnoredAny>,
    #[serde(default)]
    sample_rate: Option<IgnoredAny>,
    #[serde(default)]
    chunk_samples: Option<IgnoredAny>,
    #[serde(default)]
    blank_id: Option<IgnoredAny>,
    #[serde(default)]
    max_symbols_per_step: Option<IgnoredAny>,
    #[serde(default)]
    left_context_samples: Option<IgnoredAny>,
    #[serde(default)]
    right_context_samples: Option<IgnoredAny>,
}

/// A provider entry: `{"cuda": {"enable_cuda_graph": "0"}}` → name `cuda`, string options.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderOptions {
    pub name: String,
    pub options: Vec<(String, String)>,
}

impl<'de> Deserialize<'de> for ProviderOptions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::deserialize(d)?;
        if map.len() != 1 {
            return Err(D::Error::custom(format!(
                "each provider_options entry must be an object with exactly one provider name, found {}",
                map.len()
            )));
        }
        let (name, opts) = map.into_iter().next().expect("len checked");
        let mut options = Vec::new();
        for (k, v) in opts {
            match v {
                serde_json::Value::String(s) => options.push((k, s)),
                serde_json::Value::Object(_) if k == "device_filtering_options" => {}
                other => {
                    return Err(D::Error::custom(format!(
                        "provider option {name}.{k} must be a string (ORT-GenAI passes all provider options as strings), found {other}"
                    )))
                }
            }
        }
        Ok(ProviderOptions { name, options })
    }
}

// No deny_unknown_fields here: as in ORT-GenAI, other string entries are session config entries
// (collected by the flatten below); a non-string one is still an error.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SessionOptions {
    #[serde(default)]
    pub log_id: Option<String>,
    #[serde(default)]
    pub enable_profiling: Option<String>,
    #[serde(default)]
    pub intra_op_num_threads: Option<u32>,
    #[serde(default)]
    pub inter_op_num_threads: Option<u32>,
    #[serde(default)]
    pub log_severity_level: Option<i32>,
    #[serde(default)]
    pub log_verbosity_level: Option<i32>,
    #[serde(default)]
    pub enable_cpu_mem_arena: Option<bool>,
    #[serde(default)]
    pub enable_mem_pattern: Option<bool>,
    #[serde(default)]
    pub graph_optimization_level: Option<GraphOptLevel>,
    #[serde(default)]
    pub custom_ops_library: Option<String>,
    #[serde(default)]
    pub provider_options: Vec<ProviderOptions>,
    /// Any other string entry is an ONNX Runtime session config entry (`session.xxx`), as in
    /// ORT-GenAI.
    #[serde(flatten)]
    pub config_entries: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum GraphOptLevel {
    #[serde(rename = "ORT_DISABLE_ALL")]
    DisableAll,
    #[serde(rename = "ORT_ENABLE_BASIC")]
    Basic,
    #[serde(rename = "ORT_ENABLE_EXTENDED")]
    Extended,
    #[serde(rename = "ORT_ENABLE_ALL")]
    All,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct Decoder {
    pub filename: String,
    #[serde(default)]
    pub session_options: Option<SessionOptions>,
    #[serde(default)]
    pub run_options: Option<BTreeMap<String, String>>,
    pub head_size: u32,
    pub hidden_size: u32,
    pub num_attention_heads: u32,
    pub num_hidden_layers: u32,
    pub num_key_value_heads: u32,
    pub inputs: DecoderInputs,
    pub outputs: DecoderOutputs,
    #[serde(default)]
    sliding_window: Option<IgnoredAny>,
    #[serde(default)]
    pipeline: Option<IgnoredAny>,
    #[serde(default)]
    layer_types: Option<IgnoredAny>,
    #[serde(default)]
    shared_initializers: Option<IgnoredAny>,
    #[serde(default)]
    conv_cache_size: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct DecoderInputs {
    // Names default as in ORT-GenAI (config.h `Defaults`); which of them the graph really has
    // decides what is fed (checked in bundle.rs).
    #[serde(default = "default_input_ids")]
    pub input_ids: String,
    #[serde(default = "default_inputs_embeds")]
    pub inputs_embeds: String,
    #[serde(default = "default_attention_mask")]
    pub attention_mask: String,
    #[serde(default = "default_position_ids")]
    pub position_ids: String,
    #[serde(default = "default_past_key")]
    pub past_key_names: String,
    #[serde(default = "default_past_value")]
    pub past_value_names: String,
    // Known to ORT-GenAI, not implemented by gemba.
    #[serde(default)]
    past_names: Option<IgnoredAny>,
    #[serde(default)]
    cross_past_key_names: Option<IgnoredAny>,
    #[serde(default)]
    cross_past_value_names: Option<IgnoredAny>,
    #[serde(default)]
    past_sequence_length: Option<IgnoredAny>,
    #[serde(default)]
    current_sequence_length: Option<IgnoredAny>,
    #[serde(default)]
    total_sequence_length: Option<IgnoredAny>,
    #[serde(default)]
    encoder_hidden_states: Option<IgnoredAny>,
    #[serde(default)]
    encoder_attention_mask: Option<IgnoredAny>,
    #[serde(default)]
    rnn_states_prev: Option<IgnoredAny>,
    #[serde(default)]
    past_key_values_length: Option<IgnoredAny>,
    #[serde(default)]
    cache_indirection: Option<IgnoredAny>,
    #[serde(default)]
    cumulative_sequence_lengths: Option<IgnoredAny>,
    #[serde(default)]
    past_sequence_lengths: Option<IgnoredAny>,
    #[serde(default)]
    block_table: Option<IgnoredAny>,
    #[serde(default)]
    block_table_windowed: Option<IgnoredAny>,
    #[serde(default)]
    attention_metadata: Option<IgnoredAny>,
    #[serde(default)]
    past_conv_names: Option<IgnoredAny>,
    #[serde(default)]
    hidden_states: Option<IgnoredAny>,
    #[serde(default)]
    targets: Option<IgnoredAny>,
    #[serde(default)]
    lstm_hidden_state: Option<IgnoredAny>,
    #[serde(default)]
    lstm_cell_state: Option<IgnoredAny>,
    #[serde(default)]
    per_layer_inputs: Option<IgnoredAny>,
    #[serde(default)]
    targets_length: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct DecoderOutputs {
    #[serde(default = "default_logits")]
    pub logits: String,
    #[serde(default = "default_present_key")]
    pub present_key_names: String,
    #[serde(default = "default_present_value")]
    pub present_value_names: String,
    #[serde(default)]
    present_names: Option<IgnoredAny>,
    #[serde(default)]
    output_cross_qk_names: Option<IgnoredAny>,
    #[serde(default)]
    rnn_states: Option<IgnoredAny>,
    #[serde(default)]
    present_conv_names: Option<IgnoredAny>,
    #[serde(default)]
    hidden_states: Option<IgnoredAny>,
    #[serde(default)]
    outputs: Option<IgnoredAny>,
    #[serde(default)]
    lstm_hidden_state: Option<IgnoredAny>,
    #[serde(default)]
    lstm_cell_state: Option<IgnoredAny>,
    #[serde(default)]
    outputs_length: Option<IgnoredAny>,
}

fn default_logits() -> String {
    "logits".into()
}
fn default_attention_mask() -> String {
    "attention_mask".into()
}
fn default_position_ids() -> String {
    "position_ids".into()
}
fn default_past_key() -> String {
    "past_key_values.%d.key".into()
}
fn default_past_value() -> String {
    "past_key_values.%d.value".into()
}
fn default_present_key() -> String {
    "present.%d.key".into()
}
fn default_present_value() -> String {
    "present.%d.value".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct Vision {
    #[serde(default)]
    pub filename: String,
    #[serde(default)]
    pub config_filename: String,
    #[serde(default)]
    pub adapter_filename: Option<String>,
    #[serde(default)]
    pub session_options: Option<SessionOptions>,
    #[serde(default)]
    pub run_options: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub inputs: VisionInputs,
    #[serde(default)]
    pub outputs: VisionOutputs,
    #[serde(default)]
    spatial_merge_size: Option<IgnoredAny>,
    #[serde(default)]
    tokens_per_second: Option<IgnoredAny>,
    #[serde(default)]
    patch_size: Option<IgnoredAny>,
    #[serde(default)]
    num_visual_tokens: Option<IgnoredAny>,
    #[serde(default)]
    window_size: Option<IgnoredAny>,
    #[serde(default)]
    pipeline: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct VisionInputs {
    #[serde(default = "default_pixel_values")]
    pub pixel_values: String,
    #[serde(default = "default_image_sizes")]
    pub image_sizes: String,
    #[serde(default = "default_image_attention_mask")]
    pub attention_mask: String,
    #[serde(default)]
    pixel_position_ids: Option<IgnoredAny>,
    #[serde(default)]
    image_grid_thw: Option<IgnoredAny>,
}

impl Default for VisionInputs {
    fn default() -> Self {
        VisionInputs {
            pixel_values: default_pixel_values(),
            image_sizes: default_image_sizes(),
            attention_mask: default_image_attention_mask(),
            pixel_position_ids: None,
            image_grid_thw: None,
        }
    }
}

fn default_pixel_values() -> String {
    "pixel_values".into()
}
fn default_image_sizes() -> String {
    "image_sizes".into()
}
fn default_image_attention_mask() -> String {
    "image_attention_mask".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct VisionOutputs {
    #[serde(default = "default_image_features")]
    pub image_features: String,
}

impl Default for VisionOutputs {
    fn default() -> Self {
        VisionOutputs {
            image_features: default_image_features(),
        }
    }
}

fn default_image_features() -> String {
    "image_features".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct Speech {
    #[serde(default)]
    pub filename: String,
    #[serde(default)]
    pub config_filename: String,
    #[serde(default)]
    pub adapter_filename: Option<String>,
    #[serde(default)]
    pub session_options: Option<SessionOptions>,
    #[serde(default)]
    pub run_options: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub inputs: SpeechInputs,
    #[serde(default)]
    pub outputs: SpeechOutputs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct SpeechInputs {
    #[serde(default = "default_audio_embeds")]
    pub audio_embeds: String,
    #[serde(default = "default_audio_attention_mask")]
    pub attention_mask: String,
    #[serde(default = "default_audio_sizes")]
    pub audio_sizes: String,
    #[serde(default = "default_audio_projection_mode")]
    pub audio_projection_mode: String,
}

impl Default for SpeechInputs {
    fn default() -> Self {
        SpeechInputs {
            audio_embeds: default_audio_embeds(),
            attention_mask: default_audio_attention_mask(),
            audio_sizes: default_audio_sizes(),
            audio_projection_mode: default_audio_projection_mode(),
        }
    }
}

fn default_audio_embeds() -> String {
    "audio_embeds".into()
}
fn default_audio_attention_mask() -> String {
    "audio_attention_mask".into()
}
fn default_audio_sizes() -> String {
    "audio_sizes".into()
}
fn default_audio_projection_mode() -> String {
    "audio_projection_mode".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct SpeechOutputs {
    #[serde(default = "default_audio_features")]
    pub audio_features: String,
}

impl Default for SpeechOutputs {
    fn default() -> Self {
        SpeechOutputs {
            audio_features: default_audio_features(),
        }
    }
}

fn default_audio_features() -> String {
    "audio_features".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct Embedding {
    pub filename: String,
    #[serde(default)]
    pub session_options: Option<SessionOptions>,
    #[serde(default)]
    pub run_options: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub inputs: EmbeddingInputs,
    #[serde(default)]
    pub outputs: EmbeddingOutputs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct EmbeddingInputs {
    #[serde(default = "default_input_ids")]
    pub input_ids: String,
    #[serde(default = "default_image_features")]
    pub image_features: String,
    #[serde(default = "default_audio_features")]
    pub audio_features: String,
}

impl Default for EmbeddingInputs {
    fn default() -> Self {
        EmbeddingInputs {
            input_ids: default_input_ids(),
            image_features: default_image_features(),
            audio_features: default_audio_features(),
        }
    }
}

fn default_input_ids() -> String {
    "input_ids".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct EmbeddingOutputs {
    #[serde(default = "default_inputs_embeds")]
    pub inputs_embeds: String,
    #[serde(default)]
    per_layer_inputs: Option<IgnoredAny>,
}

impl Default for EmbeddingOutputs {
    fn default() -> Self {
        EmbeddingOutputs {
            inputs_embeds: default_inputs_embeds(),
            per_layer_inputs: None,
        }
    }
}

fn default_inputs_embeds() -> String {
    "inputs_embeds".into()
}

/// `search`: generation defaults. Numbers as ORT-GenAI defaults them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-unused keys are parsed so that they are not "unknown"
pub struct Search {
    #[serde(default)]
    pub do_sample: bool,
    #[serde(default)]
    pub min_length: u32,
    #[serde(default)]
    pub max_length: u32,
    #[serde(default = "one")]
    pub batch_size: u32,
    #[serde(default = "one")]
    pub num_beams: u32,
    #[serde(default = "one")]
    pub num_return_sequences: u32,
    #[serde(default = "one_f")]
    pub repetition_penalty: f32,
    #[serde(default = "fifty")]
    pub top_k: u32,
    #[serde(default)]
    pub top_p: f32,
    #[serde(default = "one_f")]
    pub temperature: f32,
    #[serde(default = "yes")]
    pub early_stopping: bool,
    #[serde(default)]
    pub no_repeat_ngram_size: u32,
    #[serde(default)]
    pub diversity_penalty: f32,
    #[serde(default = "one_f")]
    pub length_penalty: f32,
    #[serde(default)]
    pub past_present_share_buffer: bool,
    #[serde(default = "minus_one")]
    pub random_seed: i64,
    #[serde(default)]
    chunk_size: Option<IgnoredAny>,
    #[serde(default)]
    blank_penalty: Option<IgnoredAny>,
}

impl Default for Search {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all search fields have defaults")
    }
}

fn one() -> u32 {
    1
}
fn one_f() -> f32 {
    1.0
}
fn fifty() -> u32 {
    50
}
fn yes() -> bool {
    true
}
fn minus_one() -> i64 {
    -1
}

/// Model types whose decoder gemba runs: text decoders that share ORT-GenAI's decoder-only I/O,
/// and phi4mm (vision + speech + embedding around such a decoder).
pub const TEXT_TYPES: &[&str] = &[
    "chatglm",
    "ernie4_5",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gpt2",
    "granite",
    "llama",
    "mistral",
    "nemotron",
    "olmo",
    "phi",
    "phi3",
    "phi3small",
    "phimoe",
    "qwen2",
    "qwen3",
    "smollm3",
    "gptoss",
];

pub const MULTIMODAL_TYPES: &[&str] = &["phi4mm"];

impl GenaiConfig {
    /// Reads and validates `genai_config.json` at `path`.
    pub fn load(path: &Path) -> Result<GenaiConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text` (the contents of `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<GenaiConfig, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let mut cfg: GenaiConfig = match serde_path_to_error::deserialize(de) {
            Ok(c) => c,
            Err(err) => {
                let key = err.path().to_string();
                let inner = err.into_inner();
                if inner.is_syntax() || inner.is_eof() {
                    return Err(ConfigError::Syntax {
                        path: path.into(),
                        line: inner.line(),
                        column: inner.column(),
                        msg: inner.to_string(),
                    });
                }
                let msg = inner.to_string();
                // serde's "unknown field `x`, expected one of …" names the key; put it in the path.
                // serde_path_to_error's path already ends with an unknown field's name.
                let msg = match unknown_field(&msg) {
                    Some(_) => "unknown key (ORT-GenAI rejects it too)".to_string(),
                    None => strip_position(&msg),
                };
                return Err(ConfigError::Key {
                    path: path.into(),
                    key,
                    msg,
                });
            }
        };
        cfg.check(path)?;
        if cfg.search.max_length == 0 {
            cfg.search.max_length = cfg.model.context_length;
        }
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let unsupported = |key: &str, what: &str| ConfigError::Unsupported {
            path: path.into(),
            key: key.into(),
            what: what.into(),
        };
        let bad = |key: &str, msg: String| ConfigError::Key {
            path: path.into(),
            key: key.into(),
            msg,
        };
        let m = &self.model;
        let t = m.model_type.as_str();
        if !TEXT_TYPES.contains(&t) && !MULTIMODAL_TYPES.contains(&t) {
            return Err(bad(
                "model.type",
                format!(
                    "model type \"{t}\" is not one gemba runs (text decoders: {}; multimodal: {})",
                    TEXT_TYPES.join(", "),
                    MULTIMODAL_TYPES.join(", ")
                ),
            ));
        }
        if m.context_length == 0 {
            return Err(bad(
                "model.context_length",
                "must be set and greater than 0".into(),
            ));
        }
        if m.eos_token_id.to_vec().is_empty() {
            return Err(bad(
                "model.eos_token_id",
                "must name at least one token id".into(),
            ));
        }
        // Impossible sizes and ids are refused here, by key, instead of failing later as an
        // empty tensor, a division by zero or a stop token that can never be sampled.
        if m.vocab_size == Some(0) {
            return Err(bad("model.vocab_size", "must be greater than 0".into()));
        }
        let token_id = |key: &str, id: i64| -> Result<(), ConfigError> {
            if id < 0 {
                return Err(bad(
                    key,
                    format!("{id} is not a token id (ids are 0 or more)"),
                ));
            }
            if let Some(v) = m.vocab_size {
                if id >= i64::from(v) {
                    return Err(bad(
                        key,
                        format!("{id} is outside the vocabulary (model.vocab_size {v})"),
                    ));
                }
            }
            Ok(())
        };
        for id in m.eos_token_id.to_vec() {
            token_id("model.eos_token_id", id)?;
        }
        for (id, key) in [
            (m.bos_token_id, "model.bos_token_id"),
            (m.image_token_id, "model.image_token_id"),
            (m.audio_token_id, "model.audio_token_id"),
        ] {
            if let Some(id) = id {
                token_id(key, id)?;
            }
        }
        for (present, key, what) in [
            (
                m.encoder.is_some(),
                "model.encoder",
                "encoder-decoder models",
            ),
            (m.draft.is_some(), "model.draft", "draft models"),
            (m.joiner.is_some(), "model.joiner", "RNN-T joiners"),
            (m.vad.is_some(), "model.vad", "built-in VAD models"),
            (m.mtp.is_some(), "model.mtp", "multi-token prediction"),
            (
                m.decoder.sliding_window.is_some(),
                "model.decoder.sliding_window",
                "sliding-window KV caches",
            ),
            (
                m.decoder.pipeline.is_some(),
                "model.decoder.pipeline",
                "decoder pipelines",
            ),
            (
                m.decoder.layer_types.is_some(),
                "model.decoder.layer_types",
                "mixed layer types",
            ),
            (
                m.decoder.shared_initializers.is_some(),
                "model.decoder.shared_initializers",
                "shared initializers",
            ),
            (
                m.decoder.conv_cache_size.is_some(),
                "model.decoder.conv_cache_size",
                "convolution caches",
            ),
            (
                self.speculative.is_some(),
                "speculative",
                "speculative decoding",
            ),
            (self.engine.is_some(), "engine", "batching engines"),
            (
                self.search.chunk_size.is_some(),
                "search.chunk_size",
                "chunked prefill",
            ),
        ] {
            if present {
                return Err(unsupported(key, what));
            }
        }
        let di = &m.decoder.inputs;
        for (present, key) in [
            (di.past_names.is_some(), "model.decoder.inputs.past_names"),
            (
                di.cross_past_key_names.is_some(),
                "model.decoder.inputs.cross_past_key_names",
            ),
            (
                di.cross_past_value_names.is_some(),
                "model.decoder.inputs.cross_past_value_names",
            ),
            (
                di.past_sequence_length.is_some(),
                "model.decoder.inputs.past_sequence_length",
            ),
            (
                di.current_sequence_length.is_some(),
                "model.decoder.inputs.current_sequence_length",
            ),
            (
                di.total_sequence_length.is_some(),
                "model.decoder.inputs.total_sequence_length",
            ),
            (
                di.encoder_hidden_states.is_some(),
                "model.decoder.inputs.encoder_hidden_states",
            ),
            (
                di.encoder_attention_mask.is_some(),
                "model.decoder.inputs.encoder_attention_mask",
            ),
            (
                di.rnn_states_prev.is_some(),
                "model.decoder.inputs.rnn_states_prev",
            ),
            (
                di.past_key_values_length.is_some(),
                "model.decoder.inputs.past_key_values_length",
            ),
            (
                di.cache_indirection.is_some(),
                "model.decoder.inputs.cache_indirection",
            ),
            (
                di.cumulative_sequence_lengths.is_some(),
                "model.decoder.inputs.cumulative_sequence_lengths",
            ),
            (
                di.past_sequence_lengths.is_some(),
                "model.decoder.inputs.past_sequence_lengths",
            ),
            (di.block_table.is_some(), "model.decoder.inputs.block_table"),
            (
                di.block_table_windowed.is_some(),
                "model.decoder.inputs.block_table_windowed",
            ),
            (
                di.attention_metadata.is_some(),
                "model.decoder.inputs.attention_metadata",
            ),
            (
                di.past_conv_names.is_some(),
                "model.decoder.inputs.past_conv_names",
            ),
            (
                di.hidden_states.is_some(),
                "model.decoder.inputs.hidden_states",
            ),
            (di.targets.is_some(), "model.decoder.inputs.targets"),
            (
                di.lstm_hidden_state.is_some(),
                "model.decoder.inputs.lstm_hidden_state",
            ),
            (
                di.lstm_cell_state.is_some(),
                "model.decoder.inputs.lstm_cell_state",
            ),
            (
                di.per_layer_inputs.is_some(),
                "model.decoder.inputs.per_layer_inputs",
            ),
            (
                di.targets_length.is_some(),
                "model.decoder.inputs.targets_length",
            ),
        ] {
            if present {
                return Err(unsupported(key, "a decoder input of another model family"));
            }
        }
        let d = &m.decoder;
        let o = &d.outputs;
        for (present, key) in [
            (
                o.present_names.is_some(),
                "model.decoder.outputs.present_names",
            ),
            (
                o.output_cross_qk_names.is_some(),
                "model.decoder.outputs.output_cross_qk_names",
            ),
            (o.rnn_states.is_some(), "model.decoder.outputs.rnn_states"),
            (
                o.present_conv_names.is_some(),
                "model.decoder.outputs.present_conv_names",
            ),
            (
                o.hidden_states.is_some(),
                "model.decoder.outputs.hidden_states",
            ),
            (o.outputs.is_some(), "model.decoder.outputs.outputs"),
            (
                o.lstm_hidden_state.is_some(),
                "model.decoder.outputs.lstm_hidden_state",
            ),
            (
                o.lstm_cell_state.is_some(),
                "model.decoder.outputs.lstm_cell_state",
            ),
            (
                o.outputs_length.is_some(),
                "model.decoder.outputs.outputs_length",
            ),
        ] {
            if present {
                return Err(unsupported(key, "a decoder output of another model family"));
            }
        }
        for (name, key) in [
            (&di.past_key_names, "model.decoder.inputs.past_key_names"),
            (
                &di.past_value_names,
                "model.decoder.inputs.past_value_names",
            ),
            (
                &o.present_key_names,
                "model.decoder.outputs.present_key_names",
            ),
            (
                &o.present_value_names,
                "model.decoder.outputs.present_value_names",
            ),
        ] {
            if name.matches("%d").count() != 1 {
                return Err(bad(
                    key,
                    format!("\"{name}\" must contain exactly one %d (the layer index)"),
                ));
            }
        }
        for (value, key) in [
            (d.num_hidden_layers, "model.decoder.num_hidden_layers"),
            (d.head_size, "model.decoder.head_size"),
            (d.hidden_size, "model.decoder.hidden_size"),
            (d.num_attention_heads, "model.decoder.num_attention_heads"),
            (d.num_key_value_heads, "model.decoder.num_key_value_heads"),
        ] {
            if value == 0 {
                return Err(bad(key, "must be greater than 0".into()));
            }
        }
        if d.num_key_value_heads > d.num_attention_heads {
            return Err(bad(
                "model.decoder.num_key_value_heads",
                format!(
                    "{} is more than num_attention_heads {}",
                    d.num_key_value_heads, d.num_attention_heads
                ),
            ));
        }
        let s = &self.search;
        for (value, key) in [
            (s.temperature, "search.temperature"),
            (s.top_p, "search.top_p"),
            (s.repetition_penalty, "search.repetition_penalty"),
            (s.length_penalty, "search.length_penalty"),
            (s.diversity_penalty, "search.diversity_penalty"),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(bad(
                    key,
                    format!("{value} must be a finite number, 0 or more"),
                ));
            }
        }
        if s.top_p > 1.0 {
            return Err(bad(
                "search.top_p",
                format!("{} is out of range 0–1", s.top_p),
            ));
        }
        if s.repetition_penalty == 0.0 {
            return Err(bad(
                "search.repetition_penalty",
                "must be greater than 0 (1.0 is none)".into(),
            ));
        }
        if s.num_beams != 1 {
            return Err(unsupported(
                "search.num_beams",
                "beam search (gemba streams one sequence)",
            ));
        }
        if s.batch_size != 1 || s.num_return_sequences != 1 {
            return Err(unsupported(
                "search.batch_size",
                "batches (gemba streams one sequence)",
            ));
        }
        if s.max_length > m.context_length {
            return Err(bad(
                "search.max_length",
                format!(
                    "{} exceeds model.context_length {}",
                    s.max_length, m.context_length
                ),
            ));
        }
        if MULTIMODAL_TYPES.contains(&t) {
            if m.embedding.is_none() {
                return Err(bad(
                    "model.embedding",
                    format!("required for model type {t}"),
                ));
            }
            if let Some(v) = &m.vision {
                if v.filename.is_empty() != v.config_filename.is_empty() {
                    return Err(bad(
                        "model.vision",
                        "filename and config_filename must be given together (or both left empty)"
                            .into(),
                    ));
                }
                if v.pipeline.is_some() {
                    return Err(unsupported("model.vision.pipeline", "vision pipelines"));
                }
            }
            if let Some(sp) = &m.speech {
                if sp.filename.is_empty() != sp.config_filename.is_empty() {
                    return Err(bad(
                        "model.speech",
                        "filename and config_filename must be given together (or both left empty)"
                            .into(),
                    ));
                }
            }
        } else if m.embedding.is_some() || m.vision.is_some() || m.speech.is_some() {
            return Err(bad(
                "model.type",
                format!("\"{t}\" is a text model type but the config has vision/speech/embedding sections"),
            ));
        }
        Ok(())
    }

    /// The decoder's session options, or empty ones.
    pub fn decoder_session_options(&self) -> SessionOptions {
        self.model
            .decoder
            .session_options
            .clone()
            .unwrap_or_default()
    }
}

fn unknown_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(&rest[..rest.find('`')?])
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Expands a `%d` name template for layer `i`.
pub fn layer_name(template: &str, i: usize) -> String {
    template.replacen("%d", &i.to_string(), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "model": {
        "type": "qwen2", "context_length": 512, "vocab_size": 600,
        "bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": 0,
        "decoder": {
          "filename": "model.onnx", "head_size": 16, "hidden_size": 64,
          "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
          "session_options": {"log_id": "x", "provider_options": [{"cuda": {"enable_cuda_graph": "0"}}],
                              "session.intra_op.allow_spinning": "0"},
          "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                     "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
          "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}
        }
      },
      "search": {"do_sample": false, "max_length": 0, "past_present_share_buffer": true, "top_k": 1}
    }"#;

    fn parse(s: &str) -> Result<GenaiConfig, ConfigError> {
        GenaiConfig::parse(s, Path::new("b/genai_config.json"))
    }

    #[test]
    fn good_config_parses_with_genai_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.search.max_length, 512,
            "max_length 0 means context_length"
        );
        assert_eq!(c.model.eos_token_id.to_vec(), vec![2, 3]);
        assert_eq!(c.search.temperature, 1.0);
        assert_eq!(c.search.top_k, 1);
        let so = c.decoder_session_options();
        assert_eq!(so.provider_options[0].name, "cuda");
        assert_eq!(
            so.provider_options[0].options,
            vec![("enable_cuda_graph".into(), "0".into())]
        );
        assert_eq!(
            so.config_entries
                .get("session.intra_op.allow_spinning")
                .map(String::as_str),
            Some("0")
        );
        assert_eq!(
            layer_name("past_key_values.%d.key", 7),
            "past_key_values.7.key"
        );
    }

    #[test]
    fn eos_as_int() {
        let c = parse(&GOOD.replace("[2, 3]", "2")).unwrap();
        assert_eq!(c.model.eos_token_id.to_vec(), vec![2]);
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn malformed_configs_are_named_precisely() {
        let cases: &[(&str, &str, &str)] = &[
            // (replace, with, expected fragment)
            (
                "\"vocab_size\": 600,",
                "\"vocab_size\": 600, \"colour\": 1,",
                "model.colour: unknown key",
            ),
            (
                "\"top_k\": 1",
                "\"top_k\": 1, \"beam\": 2",
                "search.beam: unknown key",
            ),
            (
                "\"logits\": \"logits\",",
                "\"logits\": \"logits\", \"extra\": \"x\",",
                "model.decoder.outputs.extra: unknown key",
            ),
            (
                "\"context_length\": 512,",
                "",
                "model.context_length: must be set",
            ),
            (
                "\"head_size\": 16",
                "\"head_size\": \"16\"",
                "model.decoder.head_size",
            ),
            (
                "past_key_values.%d.key",
                "past_key_values.key",
                "model.decoder.inputs.past_key_names",
            ),
            ("\"type\": \"qwen2\"", "\"type\": \"whisper\"", "model.type"),
            (
                "\"top_k\": 1",
                "\"top_k\": 1, \"num_beams\": 4",
                "search.num_beams",
            ),
            (
                "\"num_hidden_layers\": 2,",
                "\"num_hidden_layers\": 2, \"sliding_window\": {},",
                "sliding_window",
            ),
            (
                "\"max_length\": 0",
                "\"max_length\": 9999",
                "search.max_length",
            ),
            (
                "{\"cuda\": {\"enable_cuda_graph\": \"0\"}}",
                "{\"cuda\": {\"enable_cuda_graph\": 0}}",
                "must be a string",
            ),
            (
                "\"eos_token_id\": [2, 3],",
                "\"eos_token_id\": [],",
                "model.eos_token_id",
            ),
        ];
        for (from, to, want) in cases {
            assert!(GOOD.contains(from), "fixture lacks {from}");
            let e = err(&GOOD.replacen(from, to, 1));
            assert!(
                e.contains(want),
                "replacing {from:?}: expected {want:?} in {e:?}"
            );
            assert!(
                e.starts_with("b/genai_config.json"),
                "error names the file: {e}"
            );
        }
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let e = err("{\n  \"model\": {,\n}");
        assert!(e.contains("line 2"), "{e}");
    }
}
