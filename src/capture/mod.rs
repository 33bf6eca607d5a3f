//! Capture sources: cameras (V4L2, replay) and microphones (cpal, WAV replay).
//!
//! What flows out: each camera publishes its latest [`Frame`] (a `tokio::sync::watch` channel —
//! a slow consumer skips frames, never stalls capture); each microphone sends [`AudioClip`]
//! chunks on a bounded channel (a full channel drops the chunk and counts it).

pub(crate) mod camera;
pub(crate) mod config;
pub mod mic;
pub(crate) mod negotiate;
pub mod pixel;
pub mod replay;
#[cfg(feature = "v4l2")]
pub(crate) mod v4l2;

pub use camera::{
    spawn_camera, Camera, CameraError, CameraSource, CameraStats, CameraStatsSnapshot,
    FramePublisher, FrameReceiver,
};
pub use replay::{ReplayCamera, ReplayConfig};

use std::sync::Arc;
use std::time::SystemTime;

/// The frame rates a camera may be configured with: at least one frame every 1000 s (so a frame
/// period is a real duration), at most 1000 per second. `config check` and each camera enforce it.
pub const FPS_RANGE: std::ops::RangeInclusive<f64> = 0.001..=1000.0;

/// One decoded camera frame: packed RGB8, row-major, no padding.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The camera's configured name (e.g. `press-2`), as used in prompts and `[cam:NAME]` citations.
    pub camera: String,
    /// Monotonic per-camera sequence number (gaps = frames dropped before publishing).
    pub seq: u64,
    /// Wall-clock time the frame was captured.
    pub captured_at: SystemTime,
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub rgb: Arc<Vec<u8>>,
}

/// A piece of mono audio.
#[derive(Debug, Clone)]
pub struct AudioClip {
    /// Where it came from (microphone name, file path).
    pub source: String,
    pub started_at: SystemTime,
    pub sample_rate: u32,
    /// Mono samples in [-1, 1].
    pub samples: Arc<Vec<f32>>,
}
