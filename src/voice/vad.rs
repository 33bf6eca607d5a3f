//! Voice activity detection with Silero VAD (MIT), run through gemba's ONNX Runtime.
//!
//! The model is the ONNX file the PyPI `silero-vad` 6.2.3 wheel ships
//! (`silero_vad_16k_op15.onnx`, committed under `models/vad/` with its licence; `scripts/setup`
//! checks it against the wheel). In: 16 kHz mono windows of 512 samples (32 ms). Out: one speech
//! probability per window. The model is recurrent: each run takes the previous run's `state`
//! (`[2, 1, 128]`) and the last 64 samples of the previous window as context in front of the new
//! 512 — exactly as the package's own `OnnxWrapper` feeds it, so probabilities match the
//! reference. Input names and the state shape are checked against the session when it is built.
//!
//! The [`SpeechDetector`] trait lets the listener and its tests run over any detector.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::Tensor;

use crate::model::runtime::Runtime;

/// Samples per window at 16 kHz.
pub const WINDOW: usize = 512;
/// Samples of the previous window fed in front of each new one.
const CONTEXT: usize = 64;
pub const RATE: u32 = 16_000;
/// The file name of the model gemba uses, inside the VAD model directory.
pub const MODEL_FILE: &str = "silero_vad_16k_op15.onnx";

#[derive(Debug, thiserror::Error)]
pub enum VadError {
    #[error(
        "VAD model {path} not found (tried: {tried}); run scripts/setup or set voice.vad.model"
    )]
    NotFound { path: PathBuf, tried: String },
    #[error("VAD model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("VAD model {path}: expected {what}, found {found}")]
    Shape {
        path: PathBuf,
        what: String,
        found: String,
    },
    #[error("VAD model {path}: run failed: {reason}")]
    Run { path: PathBuf, reason: String },
}

/// Anything that turns a window of 16 kHz audio into a speech probability.
pub trait SpeechDetector: Send {
    /// Samples per window (at 16 kHz).
    fn window(&self) -> usize;
    fn probability(&mut self, window: &[f32]) -> Result<f32, VadError>;
    /// Forget the recurrent state (a new stream).
    fn reset(&mut self);
}

/// Where the VAD model is looked for when the config names none.
pub fn default_model_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("GEMBA_VAD_DIR") {
        v.push(PathBuf::from(d).join(MODEL_FILE));
    }
    v.push(PathBuf::from("/usr/share/gemba/models/vad").join(MODEL_FILE));
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            v.push(dir.join("../share/gemba/models/vad").join(MODEL_FILE));
        }
    }
    v.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/vad")
            .join(MODEL_FILE),
    );
    v
}

/// The configured model, or the first default candidate that exists.
pub fn resolve_model(configured: Option<&Path>) -> Result<PathBuf, VadError> {
    let candidates = match configured {
        Some(p) => vec![p.to_path_buf()],
        None => default_model_candidates(),
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| VadError::NotFound {
            path: candidates.first().cloned().unwrap_or_default(),
            tried: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

pub struct SileroVad {
    session: Session,
    path: PathBuf,
    state: Vec<f32>,
    /// Context + window, reused.
    input: Vec<f32>,
}

impl SileroVad {
    /// Builds the session on the CPU with one thread (a 32 ms window takes well under 1 ms).
    pub fn load(rt: &Runtime, path: &Path) -> Result<SileroVad, VadError> {
        let load_err = |e: ort::Error| VadError::Load {
            path: path.into(),
            reason: e.to_string(),
        };
        let session = Session::builder(&rt.env)
            .map_err(load_err)?
            .with_intra_threads(1)
            .map_err(|e| load_err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| load_err(e.into()))?
            .commit_from_file(path)
            .map_err(load_err)?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for want in ["input", "state", "sr"] {
            if !names.contains(&want) {
                return Err(VadError::Shape {
                    path: path.into(),
                    what: format!("an input named {want:?}"),
                    found: format!("inputs {names:?}"),
                });
            }
        }
        let outs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if outs.len() < 2 {
            return Err(VadError::Shape {
                path: path.into(),
                what: "outputs (probability, state)".into(),
                found: format!("{outs:?}"),
            });
        }
        Ok(SileroVad {
            session,
            path: path.into(),
            state: vec![0.0; 2 * 128],
            input: vec![0.0; CONTEXT + WINDOW],
        })
    }
}

impl SpeechDetector for SileroVad {
    fn window(&self) -> usize {
        WINDOW
    }

    fn probability(&mut self, window: &[f32]) -> Result<f32, VadError> {
        let run_err = |e: ort::Error| VadError::Run {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        if window.len() != WINDOW {
            return Err(VadError::Shape {
                path: self.path.clone(),
                what: format!("{WINDOW} samples"),
                found: window.len().to_string(),
            });
        }
        // [context | window]; the context is the previous window's last 64 samples.
        self.input.copy_within(WINDOW.., 0);
        self.input[CONTEXT..].copy_from_slice(window);
        let input = Tensor::from_array(([1usize, CONTEXT + WINDOW], self.input.clone()))
            .map_err(run_err)?;
        let state = Tensor::from_array(([2usize, 1, 128], self.state.clone())).map_err(run_err)?;
        let sr = Tensor::from_array(((), vec![i64::from(RATE)])).map_err(run_err)?;
        let outputs = self
            .session
            .run(ort::inputs! { "input" => input, "state" => state, "sr" => sr })
            .map_err(run_err)?;
        let (_, p) = outputs[0].try_extract_tensor::<f32>().map_err(run_err)?;
        let (shape, st) = outputs[1].try_extract_tensor::<f32>().map_err(run_err)?;
        if st.len() != self.state.len() {
            return Err(VadError::Shape {
                path: self.path.clone(),
                what: "state [2, 1, 128]".into(),
                found: format!("{shape:?}"),
            });
        }
        self.state.copy_from_slice(st);
        Ok(p.first().copied().unwrap_or(0.0))
    }

    fn reset(&mut self) {
        self.state.iter_mut().for_each(|v| *v = 0.0);
        self.input.iter_mut().for_each(|v| *v = 0.0);
    }
}
