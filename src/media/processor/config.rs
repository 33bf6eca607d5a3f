//! The bundle's processor settings: `vision_processor.json` and `speech_processor.json` (the
//! onnxruntime-extensions pipeline format) → [`VisionSettings`] / [`SpeechSettings`].
//!
//! The files describe a pipeline of operations by type name. gemba implements the Phi-4
//! pipelines natively, so a file is accepted only when it names exactly those operations, in
//! that order, with attributes gemba knows: an unknown operation, attribute or key is an error
//! naming the file and the key, never silently ignored (a changed setting would otherwise produce
//! plausible but wrong tensors).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::media::speech::{SpeechSettings, StftSettings};
use crate::media::vision::VisionSettings;

/// A processor settings file that gemba cannot use as written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("{path}: {at}: {detail}")]
    Key {
        path: PathBuf,
        at: String,
        detail: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VisionFile {
    processor: PipelineDef,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineDef {
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    transforms: Vec<Step>,
    #[serde(default)]
    output_aligner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpeechFile {
    feature_extraction: SequenceDef,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SequenceDef {
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    sequence: Vec<Step>,
    #[serde(default)]
    output_aligner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    operation: Operation,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Operation {
    #[allow(dead_code)]
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    attrs: Map<String, Value>,
    /// Wiring between operations; the Phi-4 pipelines' wiring is fixed, so it is not checked.
    #[serde(default)]
    #[allow(dead_code)]
    inputs: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecodeImageAttrs {
    #[serde(default = "rgb")]
    color_space: String,
}

fn rgb() -> String {
    "RGB".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DynamicPreprocessAttrs {
    #[serde(default = "default_dynamic_hd")]
    dynamic_hd: i64,
    #[serde(default = "default_base")]
    dyhd_base_resolution: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RescaleAttrs {
    #[serde(default = "default_rescale")]
    rescale_factor: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NormalizeAttrs {
    mean: [f64; 3],
    std: [f64; 3],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VisionProcessorAttrs {
    #[serde(default = "default_base")]
    dyhd_base_resolution: i64,
    /// Parsed and validated like the reference, which then always uses bicubic.
    #[serde(default)]
    interpolation: Option<String>,
}

fn default_dynamic_hd() -> i64 {
    36
}
fn default_base() -> i64 {
    448
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}

const VISION_PIPELINE: [&str; 5] = [
    "DecodeImage",
    "Phi4VisionDynamicPreprocess",
    "Rescale",
    "Normalize",
    "Phi4VisionProcessor",
];

fn read_json(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
        path: path.to_owned(),
        err,
    })
}

fn attrs<T: serde::de::DeserializeOwned>(
    path: &Path,
    at: &str,
    attrs: &Map<String, Value>,
) -> Result<T, ConfigError> {
    serde_json::from_value(Value::Object(attrs.clone())).map_err(|e| ConfigError::Key {
        path: path.to_owned(),
        at: format!("{at}.attrs"),
        detail: e.to_string(),
    })
}

/// Parse `vision_processor.json`.
pub fn parse_vision(path: &Path) -> Result<VisionSettings, ConfigError> {
    parse_vision_str(&read_json(path)?, path)
}

pub(crate) fn parse_vision_str(text: &str, path: &Path) -> Result<VisionSettings, ConfigError> {
    let invalid = |detail: String| ConfigError::Invalid {
        path: path.to_owned(),
        detail,
    };
    let file: VisionFile = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let steps = &file.processor.transforms;
    let kinds: Vec<&str> = steps.iter().map(|s| s.operation.kind.as_str()).collect();
    if kinds != VISION_PIPELINE {
        return Err(invalid(format!(
            "processor.transforms are {kinds:?}; gemba implements the Phi-4 vision pipeline {VISION_PIPELINE:?}"
        )));
    }
    match file.processor.output_aligner.as_deref() {
        Some("phi4-vision-aligner") => {}
        other => {
            return Err(ConfigError::Key {
                path: path.to_owned(),
                at: "processor.output_aligner".into(),
                detail: format!("{other:?} (expected \"phi4-vision-aligner\")"),
            })
        }
    }
    let at = |i: usize| format!("processor.transforms[{i}] ({})", kinds[i]);
    let key = |i: usize, detail: String| ConfigError::Key {
        path: path.to_owned(),
        at: at(i),
        detail,
    };

    let decode: DecodeImageAttrs = attrs(path, &at(0), &steps[0].operation.attrs)?;
    if decode.color_space != "RGB" {
        return Err(key(
            0,
            format!(
                "color_space {:?} (only \"RGB\" is supported)",
                decode.color_space
            ),
        ));
    }
    let dynamic: DynamicPreprocessAttrs = attrs(path, &at(1), &steps[1].operation.attrs)?;
    let rescale: RescaleAttrs = attrs(path, &at(2), &steps[2].operation.attrs)?;
    let normalize: NormalizeAttrs = attrs(path, &at(3), &steps[3].operation.attrs)?;
    let processor: VisionProcessorAttrs = attrs(path, &at(4), &steps[4].operation.attrs)?;
    if let Some(interp) = &processor.interpolation {
        const KNOWN: [&str; 4] = ["NEAREST", "LINEAR", "CUBIC", "LANCZOS"];
        if !KNOWN.contains(&interp.as_str()) {
            return Err(key(
                4,
                format!("interpolation {interp:?} (expected one of {KNOWN:?})"),
            ));
        }
    }
    if dynamic.dyhd_base_resolution != processor.dyhd_base_resolution {
        return Err(invalid(format!(
            "dyhd_base_resolution differs between Phi4VisionDynamicPreprocess ({}) and Phi4VisionProcessor ({})",
            dynamic.dyhd_base_resolution, processor.dyhd_base_resolution
        )));
    }
    let base = dynamic.dyhd_base_resolution;
    if base <= 0 || base % 28 != 0 {
        return Err(key(
            1,
            format!("dyhd_base_resolution {base} (must be a positive multiple of 28)"),
        ));
    }
    if !(1..=1024).contains(&dynamic.dynamic_hd) {
        return Err(key(
            1,
            format!("dynamic_hd {} (must be 1 to 1024)", dynamic.dynamic_hd),
        ));
    }
    if normalize.std.contains(&0.0) {
        return Err(key(3, "std has a zero entry".into()));
    }
    Ok(VisionSettings {
        max_crops: dynamic.dynamic_hd as usize,
        base_resolution: base as usize,
        rescale_factor: rescale.rescale_factor as f32,
        mean: normalize.mean.map(|v| v as f32),
        std: normalize.std.map(|v| v as f32),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AudioDecoderAttrs {
    #[serde(default)]
    target_sample_rate: Option<i64>,
    #[serde(default)]
    target_sample_rates: Option<Vec<i64>>,
    #[serde(default)]
    stereo_to_mono: Option<i64>,
    #[serde(default)]
    max_samples: Option<i64>,
}

/// Parse `speech_processor.json`.
pub fn parse_speech(path: &Path) -> Result<SpeechSettings, ConfigError> {
    parse_speech_str(&read_json(path)?, path)
}

pub(crate) fn parse_speech_str(text: &str, path: &Path) -> Result<SpeechSettings, ConfigError> {
    let invalid = |detail: String| ConfigError::Invalid {
        path: path.to_owned(),
        detail,
    };
    let file: SpeechFile = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let steps = &file.feature_extraction.sequence;
    let kinds: Vec<&str> = steps.iter().map(|s| s.operation.kind.as_str()).collect();
    let decoder_ok = matches!(kinds.first(), Some(&("AudioDecoderEx" | "AudioDecoder")));
    if kinds.len() != 2 || !decoder_ok || kinds[1] != "Phi4AudioEmbed" {
        return Err(invalid(format!(
            "feature_extraction.sequence is {kinds:?}; gemba implements the Phi-4 audio pipeline \
             [\"AudioDecoderEx\", \"Phi4AudioEmbed\"]"
        )));
    }
    match file.feature_extraction.output_aligner.as_deref() {
        Some("phi4-audio-aligner") => {}
        other => {
            return Err(ConfigError::Key {
                path: path.to_owned(),
                at: "feature_extraction.output_aligner".into(),
                detail: format!("{other:?} (expected \"phi4-audio-aligner\")"),
            })
        }
    }
    let at = |i: usize| format!("feature_extraction.sequence[{i}] ({})", kinds[i]);
    let key = |i: usize, detail: String| ConfigError::Key {
        path: path.to_owned(),
        at: at(i),
        detail,
    };

    let mut s = SpeechSettings::default();
    let dec: AudioDecoderAttrs = attrs(path, &at(0), &steps[0].operation.attrs)?;
    // As the reference: a single target rate, or a list (sorted); a single rate alone means 16 kHz
    // unless given.
    let mut rates: Vec<i64> = match (dec.target_sample_rates, dec.target_sample_rate) {
        (Some(list), _) => list,
        (None, Some(r)) => vec![r],
        (None, None) => vec![16000],
    };
    rates.sort_unstable();
    if rates.is_empty() || rates.iter().any(|&r| r != 8000 && r != 16000) {
        return Err(key(
            0,
            format!(
                "target sample rates {rates:?} (the Phi-4 features are defined at 8000 and 16000)"
            ),
        ));
    }
    s.target_rates = rates.into_iter().map(|r| r as u32).collect();
    s.target_rates.dedup();
    s.stereo_to_mono = dec.stereo_to_mono.unwrap_or(1) != 0;
    if let Some(m) = dec.max_samples {
        if m < 0 {
            return Err(key(0, format!("max_samples {m} (must be ≥ 0)")));
        }
        s.max_samples = m as usize;
    }

    let embed = &steps[1].operation.attrs;
    let int = |k: &str, v: &Value| -> Result<usize, ConfigError> {
        v.as_i64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| key(1, format!("attrs.{k} is {v} (expected a positive integer)")))
    };
    let (mut mel_n_fft, mut mel_n_mel, mut mel8_n_fft, mut mel8_n_mel) = (512, 80, 512, 80);
    for (k, v) in embed {
        match k.as_str() {
            "audio_compression_rate" => s.compression_rate = int(k, v)?,
            "qformer_compression_rate" => {
                // The reference parses it but its token count uses audio_compression_rate alone.
                int(k, v)?;
            }
            "stft_normal/n_fft" => s.stft.n_fft = int(k, v)?,
            "stft_normal/frame_length" => s.stft.frame_length = int(k, v)?,
            "stft_normal/hop_length" => s.stft.hop_length = int(k, v)?,
            "stft_normal_8k/n_fft" => s.stft_8k.n_fft = int(k, v)?,
            "stft_normal_8k/frame_length" => s.stft_8k.frame_length = int(k, v)?,
            "stft_normal_8k/hop_length" => s.stft_8k.hop_length = int(k, v)?,
            "stft_normal/win_fn" | "stft_normal_8k/win_fn" => {
                if v.as_str() != Some("hamming") {
                    return Err(key(
                        1,
                        format!("attrs.{k} is {v} (gemba implements \"hamming\")"),
                    ));
                }
            }
            "logmel/n_fft" => mel_n_fft = int(k, v)?,
            "logmel/n_mel" => mel_n_mel = int(k, v)?,
            "logmel_8k/n_fft" => mel8_n_fft = int(k, v)?,
            "logmel_8k/n_mel" => mel8_n_mel = int(k, v)?,
            // Parsed by the reference's LogMel, unused by the Phi-4 (SpeechLib) features.
            "logmel/chunk_size"
            | "logmel/hop_length"
            | "logmel/feature_first"
            | "logmel/no_padding"
            | "logmel_8k/chunk_size"
            | "logmel_8k/hop_length"
            | "logmel_8k/feature_first"
            | "logmel_8k/no_padding" => {
                v.as_i64()
                    .ok_or_else(|| key(1, format!("attrs.{k} is {v} (expected an integer)")))?;
            }
            other => return Err(key(1, format!("unknown attribute attrs.{other:?}"))),
        }
    }
    if mel_n_fft != mel8_n_fft || mel_n_mel != mel8_n_mel {
        return Err(key(
            1,
            format!(
                "logmel ({mel_n_fft}-point, {mel_n_mel} bins) and logmel_8k ({mel8_n_fft}-point, \
                 {mel8_n_mel} bins) differ; the Phi-4 features share one filterbank"
            ),
        ));
    }
    s.mel_n_fft = mel_n_fft;
    s.n_mel = mel_n_mel;
    for (name, st) in [("stft_normal", &s.stft), ("stft_normal_8k", &s.stft_8k)] {
        check_stft(st).map_err(|d| key(1, format!("{name}: {d}")))?;
    }
    Ok(s)
}

fn check_stft(s: &StftSettings) -> Result<(), String> {
    if s.frame_length > s.n_fft {
        return Err(format!(
            "frame_length {} exceeds n_fft {}",
            s.frame_length, s.n_fft
        ));
    }
    if s.frame_length < 2 {
        return Err(format!("frame_length {} is too short", s.frame_length));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VISION: &str = r#"{"processor": {"name": "phi_4_vision_processor", "transforms": [
        {"operation": {"name": "decode_image", "type": "DecodeImage", "attrs": {"color_space": "RGB"}}},
        {"operation": {"name": "p", "type": "Phi4VisionDynamicPreprocess", "attrs": {"dynamic_hd": 36, "dyhd_base_resolution": 448}}},
        {"operation": {"name": "rescale", "type": "Rescale", "inputs": [":0"]}},
        {"operation": {"name": "normalize", "type": "Normalize", "attrs": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}},
        {"operation": {"name": "q", "type": "Phi4VisionProcessor", "inputs": [":0", "p:1"], "attrs": {"dyhd_base_resolution": 448, "interpolation": "CUBIC"}}}
      ], "output_aligner": "phi4-vision-aligner"}}"#;

    const SPEECH: &str = r#"{"feature_extraction": {"sequence": [
        {"operation": {"name": "audio_decoder", "type": "AudioDecoderEx", "attrs": {"target_sample_rates": [16000, 8000]}}},
        {"operation": {"name": "e", "type": "Phi4AudioEmbed", "attrs": {
            "audio_compression_rate": 8, "stft_normal/n_fft": 512, "stft_normal/frame_length": 400,
            "stft_normal/hop_length": 160, "stft_normal/win_fn": "hamming", "logmel/chunk_size": 30,
            "logmel/hop_length": 160, "logmel/n_fft": 512, "logmel/n_mel": 80, "logmel/feature_first": 0,
            "logmel/no_padding": 1, "stft_normal_8k/n_fft": 256, "stft_normal_8k/frame_length": 200,
            "stft_normal_8k/hop_length": 80, "stft_normal_8k/win_fn": "hamming", "logmel_8k/chunk_size": 30,
            "logmel_8k/hop_length": 80, "logmel_8k/n_fft": 512, "logmel_8k/n_mel": 80,
            "logmel_8k/feature_first": 0, "logmel_8k/no_padding": 1}}}
      ], "output_aligner": "phi4-audio-aligner"}}"#;

    fn p() -> PathBuf {
        PathBuf::from("bundle/x.json")
    }

    #[test]
    fn phi4_files_parse_to_the_defaults() {
        assert_eq!(
            parse_vision_str(VISION, &p()).unwrap(),
            VisionSettings::default()
        );
        assert_eq!(
            parse_speech_str(SPEECH, &p()).unwrap(),
            SpeechSettings::default()
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = VISION.replace("\"dynamic_hd\": 36", "\"dynamic_hd\": 36, \"crop_mode\": 2");
        let e = parse_vision_str(&text, &p()).unwrap_err().to_string();
        assert!(
            e.contains("crop_mode") && e.contains("transforms[1]") && e.contains("x.json"),
            "{e}"
        );

        let text = VISION.replace("\"output_aligner\"", "\"extra\": 1, \"output_aligner\"");
        let e = parse_vision_str(&text, &p()).unwrap_err().to_string();
        assert!(e.contains("extra"), "{e}");

        let text = SPEECH.replace(
            "\"audio_compression_rate\": 8",
            "\"audio_compression_rate\": 8, \"logmel/fmax\": 8000",
        );
        let e = parse_speech_str(&text, &p()).unwrap_err().to_string();
        assert!(
            e.contains("logmel/fmax") && e.contains("sequence[1]"),
            "{e}"
        );

        let text = SPEECH.replace(
            "\"target_sample_rates\"",
            "\"resample\": 1, \"target_sample_rates\"",
        );
        let e = parse_speech_str(&text, &p()).unwrap_err().to_string();
        assert!(e.contains("resample"), "{e}");
    }

    #[test]
    fn unsupported_pipelines_and_values_are_refused() {
        let text = VISION.replace("\"type\": \"Rescale\"", "\"type\": \"Resize\"");
        assert!(parse_vision_str(&text, &p())
            .unwrap_err()
            .to_string()
            .contains("Resize"));
        let text = VISION.replace("\"color_space\": \"RGB\"", "\"color_space\": \"BGR\"");
        assert!(parse_vision_str(&text, &p())
            .unwrap_err()
            .to_string()
            .contains("BGR"));
        let text = VISION.replace(
            "\"dyhd_base_resolution\": 448, \"interpolation\"",
            "\"dyhd_base_resolution\": 336, \"interpolation\"",
        );
        assert!(parse_vision_str(&text, &p())
            .unwrap_err()
            .to_string()
            .contains("differs"));
        let text = SPEECH.replace("[16000, 8000]", "[22050]");
        assert!(parse_speech_str(&text, &p())
            .unwrap_err()
            .to_string()
            .contains("22050"));
        let text = SPEECH.replace(
            "\"stft_normal/win_fn\": \"hamming\"",
            "\"stft_normal/win_fn\": \"hann\"",
        );
        assert!(parse_speech_str(&text, &p())
            .unwrap_err()
            .to_string()
            .contains("hann"));
        assert!(parse_speech_str("{", &p())
            .unwrap_err()
            .to_string()
            .contains("x.json"));
    }
}
