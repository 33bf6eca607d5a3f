//! Voice: a technician asks aloud, the device answers aloud sentence by sentence and files a
//! report.
//!
//! The path, one home per stage:
//! - [`listen`] (+ [`vad`], [`segment`], [`resample`]): microphone chunks → 16 kHz → Silero VAD
//!   → utterances (pre-roll, minimum speech, end-of-speech silence, a cap on length), or
//!   push-to-talk presses.
//! - [`stage`]: an utterance + the latest frame of `voice.cameras` + the prompt template → a
//!   `Request` (trigger `voice`) through the daemon's `AppHandle`; barge-in.
//! - [`speak`] (+ [`tts`], [`output`]): each sentence, the moment it is final, is synthesized
//!   (espeak-ng by default, a Piper voice when configured) and played (cpal device, WAV file, or
//!   nowhere) while the model keeps generating; the answer's audio and timings go into the report.
//! - [`bench`]: `gemba bench voice`.
//!
//! In from the rest of gemba: [`crate::capture::mic`] (microphones), [`crate::daemon`] (requests,
//! listeners, reports), the ONNX Runtime. Out: requests and report follow-ups.

pub mod bench;
pub mod config;
pub mod listen;
pub mod output;
pub mod resample;
pub mod segment;
pub mod speak;
pub mod stage;
pub mod tts;
pub mod vad;

pub use config::{MicSettings, VoiceSettings};
pub use speak::{Answer, Speech, SpokenAnswer, Voice};
pub use stage::VoiceStage;

#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    #[error(transparent)]
    Mic(#[from] crate::capture::mic::MicError),
    #[error(transparent)]
    Vad(#[from] vad::VadError),
    #[error(transparent)]
    Tts(#[from] tts::TtsError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error("push-to-talk FIFO {path}: {err}")]
    PushToTalk {
        path: std::path::PathBuf,
        err: String,
    },
    #[error("cannot start a voice thread: {0}")]
    Thread(String),
    #[error("voice is configured but there is no [microphone] section")]
    NoMicrophone,
    #[error(transparent)]
    Runtime(#[from] crate::model::runtime::RuntimeError),
}

/// Starts the voice stage when the settings ask for it: `Ok(None)` when voice is off, `Err` when
/// it is on but cannot run (the daemon says "voice disabled: …" and carries on).
pub fn start(
    settings: &crate::config::Settings,
    app: crate::daemon::AppHandle,
) -> Result<Option<VoiceStage>, VoiceError> {
    let Some(voice) = &settings.voice else {
        return Ok(None);
    };
    let mic = settings
        .microphone
        .as_ref()
        .ok_or(VoiceError::NoMicrophone)?;
    let rt = crate::model::runtime::init(settings.onnxruntime.as_deref())?;
    stage::start(app, voice, mic, rt).map(Some)
}
