//! The `[voice]` section of the config: the file schema (every field optional, unknown keys
//! rejected) and its validation into [`VoiceSettings`]. (`[microphone]` is the capture
//! module's: [`crate::capture::config`].)
//!
//! `config.rs` owns the file as a whole; this module owns this section so the voice stage's
//! keys, defaults and checks live in one place. Errors come back as `(key, message)` for
//! `config.rs` to attach the file to.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::listen::TriggerMode;
use super::output::OutputTarget;
use super::segment::SegmentConfig;
use super::tts::TtsSettings;
use crate::capture::config::format_of;
use crate::config::{HumanDuration, KeyError};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVoice {
    pub enabled: Option<bool>,
    /// `vad` (default) or `push_to_talk`.
    pub trigger: Option<String>,
    /// Push-to-talk FIFO: a line `down` / `up` (or `1` / `0`) presses and releases.
    pub push_to_talk: Option<PathBuf>,
    /// Cameras whose latest frame goes with each question.
    pub cameras: Option<Vec<String>>,
    /// Text that goes with every spoken question (default none: the question is the audio). The
    /// engine names the cameras and places the audio in the user turn itself.
    pub prompt: Option<String>,
    pub barge_in: Option<bool>,
    /// `none`, `file:/path.wav`, or an output device name (default `default`).
    pub output: Option<String>,
    pub output_format: Option<String>,
    pub output_rate: Option<u32>,
    pub output_channels: Option<u16>,
    /// `espeak-ng` (default) or `piper`.
    pub tts: Option<String>,
    pub espeak_voice: Option<String>,
    pub espeak_speed: Option<u32>,
    /// A Piper voice: `model.onnx` with `model.onnx.json` beside it.
    pub piper_model: Option<PathBuf>,
    pub piper_speaker: Option<i64>,
    /// Say aloud each alert raised at or above this severity (`info`, `warning`, `critical`),
    /// or `off` (default).
    pub announce_alerts: Option<String>,
    #[serde(default)]
    pub vad: RawVad,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVad {
    /// The Silero VAD ONNX file (default: models/vad/silero_vad_16k_op15.onnx where installed).
    pub model: Option<PathBuf>,
    pub threshold: Option<f32>,
    pub min_speech: Option<HumanDuration>,
    pub end_silence: Option<HumanDuration>,
    pub pre_roll: Option<HumanDuration>,
    pub max_utterance: Option<HumanDuration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VadSettings {
    pub model: Option<PathBuf>,
    pub threshold: f32,
    pub min_speech: HumanDuration,
    pub end_silence: HumanDuration,
    pub pre_roll: HumanDuration,
    pub max_utterance: HumanDuration,
}

impl VadSettings {
    pub fn segment(&self) -> SegmentConfig {
        SegmentConfig {
            threshold: self.threshold,
            min_speech: self.min_speech.0,
            end_silence: self.end_silence.0,
            max_utterance: self.max_utterance.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VoiceSettings {
    pub trigger: TriggerMode,
    pub push_to_talk: Option<PathBuf>,
    pub cameras: Vec<String>,
    pub prompt: String,
    pub barge_in: bool,
    #[serde(skip)]
    pub output: OutputTarget,
    /// `voice.output` as written, for `config check`.
    pub output_spec: String,
    pub tts: TtsSettings,
    pub vad: VadSettings,
    /// Alerts raised at or above this severity are announced through the voice output.
    pub announce_alerts: Option<crate::alerts::Severity>,
}

pub const DEFAULT_PROMPT: &str = "";

/// Validates `[voice]` against the cameras the config defines.
pub fn validate_voice(
    raw: RawVoice,
    camera_names: &[&str],
    abs: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Option<VoiceSettings>, KeyError> {
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let trigger = match raw.trigger.as_deref().unwrap_or("vad") {
        "vad" => TriggerMode::Vad,
        "push_to_talk" | "push-to-talk" | "ptt" => TriggerMode::PushToTalk,
        other => {
            return Err((
                "voice.trigger".into(),
                format!("\"{other}\" is not a trigger (vad, push_to_talk)"),
            ))
        }
    };
    if trigger == TriggerMode::PushToTalk && raw.push_to_talk.is_none() {
        return Err((
            "voice.push_to_talk".into(),
            "trigger = \"push_to_talk\" needs a FIFO path here (e.g. /run/gemba/talk)".into(),
        ));
    }
    let cameras = raw.cameras.unwrap_or_default();
    for (i, c) in cameras.iter().enumerate() {
        if !camera_names.contains(&c.as_str()) {
            return Err((
                format!("voice.cameras[{i}]"),
                format!(
                    "\"{c}\" is not a configured camera (cameras: {})",
                    camera_names.join(", ")
                ),
            ));
        }
    }
    let prompt = raw.prompt.unwrap_or_else(|| DEFAULT_PROMPT.into());
    if prompt.contains("<|image_") || prompt.contains("<|audio_") {
        return Err(("voice.prompt".into(), "no <|image_N|> / <|audio_N|> placeholders: the engine places the frames and the question's audio itself".into()));
    }
    let announce_alerts = match raw.announce_alerts.as_deref().unwrap_or("off") {
        "off" | "none" => None,
        s => Some(crate::alerts::Severity::parse(s).ok_or_else(|| {
            (
                "voice.announce_alerts".to_string(),
                format!("\"{s}\" is not a severity (info, warning, critical) or off"),
            )
        })?),
    };
    let output_spec = raw.output.unwrap_or_else(|| "default".into());
    let out_format = format_of("voice.output_format", raw.output_format.as_deref())?;
    let out_channels = raw.output_channels.unwrap_or(1);
    if !(1..=32).contains(&out_channels) {
        return Err((
            "voice.output_channels".into(),
            format!("{out_channels} is out of range 1–32"),
        ));
    }
    if let Some(r) = raw.output_rate {
        if !(8_000..=192_000).contains(&r) {
            return Err((
                "voice.output_rate".into(),
                format!("{r} Hz is out of range 8000–192000"),
            ));
        }
    }
    let mut output = OutputTarget::parse(&output_spec, out_format, raw.output_rate, out_channels);
    if let OutputTarget::File { path, .. } = &mut output {
        if path.as_os_str().is_empty() {
            return Err((
                "voice.output".into(),
                "\"file:\" needs a path (file:/var/lib/gemba/spoken.wav)".into(),
            ));
        }
        *path = abs(path.clone());
    }
    let tts = match raw.tts.as_deref().unwrap_or("espeak-ng") {
        "espeak-ng" | "espeak" => {
            let speed = raw.espeak_speed.unwrap_or(175);
            if !(80..=450).contains(&speed) {
                return Err((
                    "voice.espeak_speed".into(),
                    format!("{speed} words per minute is out of range 80–450"),
                ));
            }
            TtsSettings::EspeakNg {
                voice: raw.espeak_voice.unwrap_or_else(|| "en-us".into()),
                speed,
            }
        }
        "piper" => TtsSettings::Piper {
            model: abs(raw.piper_model.ok_or_else(|| {
                (
                    "voice.piper_model".to_string(),
                    "tts = \"piper\" needs the voice's .onnx (with its .onnx.json beside it)"
                        .to_string(),
                )
            })?),
            speaker: raw.piper_speaker,
            espeak_voice: raw.espeak_voice,
        },
        other => {
            return Err((
                "voice.tts".into(),
                format!("\"{other}\" is not a synthesizer (espeak-ng, piper)"),
            ))
        }
    };
    let v = raw.vad;
    let vad = VadSettings {
        model: v.model.map(abs),
        threshold: v.threshold.unwrap_or(0.5),
        min_speech: v
            .min_speech
            .unwrap_or(HumanDuration(Duration::from_millis(250))),
        end_silence: v
            .end_silence
            .unwrap_or(HumanDuration(Duration::from_millis(600))),
        pre_roll: v
            .pre_roll
            .unwrap_or(HumanDuration(Duration::from_millis(300))),
        max_utterance: v
            .max_utterance
            .unwrap_or(HumanDuration(Duration::from_secs(30))),
    };
    if !(0.05..=0.95).contains(&vad.threshold) {
        return Err((
            "voice.vad.threshold".into(),
            format!("{} is out of range 0.05–0.95", vad.threshold),
        ));
    }
    if vad.end_silence.0 < Duration::from_millis(64) || vad.end_silence.0 > Duration::from_secs(10)
    {
        return Err((
            "voice.vad.end_silence".into(),
            format!(
                "{:?} is out of range 64ms–10s (two VAD windows at least)",
                vad.end_silence.0
            ),
        ));
    }
    if vad.max_utterance.0 < Duration::from_secs(1)
        || vad.max_utterance.0 > Duration::from_secs(600)
    {
        return Err((
            "voice.vad.max_utterance".into(),
            format!("{:?} is out of range 1s–10m", vad.max_utterance.0),
        ));
    }
    if vad.pre_roll.0 > Duration::from_secs(5) {
        return Err((
            "voice.vad.pre_roll".into(),
            format!("{:?} is out of range 0s–5s", vad.pre_roll.0),
        ));
    }
    if vad.min_speech.0 < Duration::from_millis(32) || vad.min_speech.0 > Duration::from_secs(10) {
        return Err((
            "voice.vad.min_speech".into(),
            format!(
                "{:?} is out of range 32ms–10s (one VAD window at least)",
                vad.min_speech.0
            ),
        ));
    }
    if let Some(s) = raw.piper_speaker {
        if !(0..=65_535).contains(&s) {
            return Err((
                "voice.piper_speaker".into(),
                format!("{s} is out of range 0–65535"),
            ));
        }
    }
    Ok(Some(VoiceSettings {
        trigger,
        push_to_talk: raw.push_to_talk.map(abs),
        cameras,
        prompt,
        barge_in: raw.barge_in.unwrap_or(true),
        output,
        output_spec,
        tts,
        vad,
        announce_alerts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            PathBuf::from("/etc/gemba").join(p)
        }
    }

    #[test]
    fn defaults_and_paths() {
        let v = validate_voice(
            RawVoice {
                cameras: Some(vec!["press-2".into()]),
                output: Some("file:spoken.wav".into()),
                ..Default::default()
            },
            &["press-2"],
            &id,
        )
        .unwrap()
        .unwrap();
        assert_eq!(v.trigger, TriggerMode::Vad);
        assert_eq!(
            v.output,
            OutputTarget::File {
                path: "/etc/gemba/spoken.wav".into(),
                paced: true,
                rate: None
            }
        );
        assert_eq!(
            v.tts,
            TtsSettings::EspeakNg {
                voice: "en-us".into(),
                speed: 175
            }
        );
        assert_eq!(v.vad.end_silence.0, Duration::from_millis(600));
        assert_eq!(v.announce_alerts, None, "announcements are opt-in");
        let raw = |a: &str| RawVoice {
            announce_alerts: Some(a.into()),
            ..Default::default()
        };
        let v = validate_voice(raw("warning"), &[], &id).unwrap().unwrap();
        assert_eq!(v.announce_alerts, Some(crate::alerts::Severity::Warning));
        let (k, m) = validate_voice(raw("loud"), &[], &id).unwrap_err();
        assert_eq!(k, "voice.announce_alerts");
        assert!(m.contains("\"loud\" is not a severity"), "{m}");
        assert!(validate_voice(
            RawVoice {
                enabled: Some(false),
                ..Default::default()
            },
            &[],
            &id
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(RawVoice, &str)> = vec![
            (
                RawVoice {
                    cameras: Some(vec!["nope".into()]),
                    ..Default::default()
                },
                "voice.cameras[0]",
            ),
            (
                RawVoice {
                    trigger: Some("clap".into()),
                    ..Default::default()
                },
                "voice.trigger",
            ),
            (
                RawVoice {
                    trigger: Some("push_to_talk".into()),
                    ..Default::default()
                },
                "voice.push_to_talk",
            ),
            (
                RawVoice {
                    tts: Some("piper".into()),
                    ..Default::default()
                },
                "voice.piper_model",
            ),
            (
                RawVoice {
                    tts: Some("sam".into()),
                    ..Default::default()
                },
                "voice.tts",
            ),
            (
                RawVoice {
                    output: Some("file:".into()),
                    ..Default::default()
                },
                "voice.output",
            ),
            (
                RawVoice {
                    output_format: Some("u8".into()),
                    ..Default::default()
                },
                "voice.output_format",
            ),
            (
                RawVoice {
                    prompt: Some("<|audio_1|>".into()),
                    ..Default::default()
                },
                "voice.prompt",
            ),
            (
                RawVoice {
                    vad: RawVad {
                        threshold: Some(1.5),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "voice.vad.threshold",
            ),
            (
                RawVoice {
                    vad: RawVad {
                        max_utterance: Some(HumanDuration(Duration::from_secs(3600))),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "voice.vad.max_utterance",
            ),
        ];
        for (raw, key) in cases {
            let (k, msg) = validate_voice(raw, &["press-2"], &id).unwrap_err();
            assert_eq!(k, key, "{msg}");
        }
    }
}
