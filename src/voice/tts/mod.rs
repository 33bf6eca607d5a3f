//! Text → speech, pluggable: espeak-ng (the default, always there after `scripts/setup`) or a
//! Piper-format neural voice (`model.onnx` + `model.onnx.json`) run through ONNX Runtime.
//!
//! In: one sentence of text (citation markers already removed). Out: mono f32 samples at the
//! synthesizer's rate, handed to a callback as they are produced — espeak-ng streams a sentence
//! in pieces, Piper hands over the sentence whole — so playback can start before synthesis ends.
//! Synthesis stops early when the cancel flag is set (barge-in).

pub(crate) mod espeak;
pub(crate) mod piper;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

pub use espeak::Espeak;
pub use piper::PiperVoice;

#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("espeak-ng ({program}): {reason}; install it (Debian: apt-get install espeak-ng, or scripts/setup)")]
    Espeak { program: String, reason: String },
    #[error("Piper voice config {path}: {reason}")]
    PiperConfig { path: PathBuf, reason: String },
    #[error("Piper voice {path}: {reason}")]
    PiperModel { path: PathBuf, reason: String },
    #[error("phonemizing {text:?} for the Piper voice: {reason}")]
    Phonemes { text: String, reason: String },
}

/// A speech synthesizer.
pub trait Synthesizer: Send {
    /// What it is, for reports and logs (`espeak-ng:en-us`, `piper:voice.onnx`).
    fn name(&self) -> String;
    fn sample_rate(&self) -> u32;
    /// Speaks `text`, handing samples to `out` as they are made; stops early when `cancel` is set.
    fn synthesize(
        &mut self,
        text: &str,
        cancel: &AtomicBool,
        out: &mut dyn FnMut(&[f32]),
    ) -> Result<(), TtsError>;
}

/// Which synthesizer, as configured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "engine", rename_all = "kebab-case")]
pub enum TtsSettings {
    EspeakNg {
        voice: String,
        /// Words per minute.
        speed: u32,
    },
    Piper {
        model: PathBuf,
        /// Speaker id for multi-speaker voices.
        speaker: Option<i64>,
        /// espeak-ng voice used for the phonemes (default: the voice config's `espeak.voice`).
        espeak_voice: Option<String>,
    },
}

impl Default for TtsSettings {
    fn default() -> Self {
        TtsSettings::EspeakNg {
            voice: "en-us".into(),
            speed: 175,
        }
    }
}

/// Builds the configured synthesizer (Piper needs the runtime for its session).
pub fn build(
    settings: &TtsSettings,
    rt: Option<&crate::model::runtime::Runtime>,
) -> Result<Box<dyn Synthesizer>, TtsError> {
    Ok(match settings {
        TtsSettings::EspeakNg { voice, speed } => Box::new(Espeak::new(voice, *speed)?),
        TtsSettings::Piper {
            model,
            speaker,
            espeak_voice,
        } => {
            let rt = rt.ok_or_else(|| TtsError::PiperModel {
                path: model.clone(),
                reason: "ONNX Runtime is not loaded".into(),
            })?;
            Box::new(PiperVoice::load(
                rt,
                model,
                *speaker,
                espeak_voice.as_deref(),
            )?)
        }
    })
}

/// The text a sentence is spoken as: `[cam:NAME]` markers and other bracketed tags removed,
/// whitespace collapsed.
pub fn speakable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        match rest[i..].find(']') {
            Some(j) if rest[i + 1..i + j].starts_with("cam:") => rest = &rest[i + j + 1..],
            _ => {
                out.push('[');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citations_are_not_spoken() {
        for (text, want) in [
            ("[cam:press-2] The lamp is amber.", "The lamp is amber."),
            (
                "The lamp [cam:press-2]  is amber. [cam:belt-1]",
                "The lamp is amber.",
            ),
            ("Pressure [bar] is 3.5.", "Pressure [bar] is 3.5."),
            ("[cam:unterminated", "[cam:unterminated"),
            ("", ""),
        ] {
            assert_eq!(speakable(text), want, "{text:?}");
        }
    }
}
