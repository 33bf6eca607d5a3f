//! The daemon's cameras: each configured camera's source opened (and checked) before the model
//! loads, then started on its own thread with the monitor watching the ones that have `monitor`
//! on. A [`Pipeline`] is one configuration's cameras and monitor, replaced whole on reload.
//!
//! In: [`Settings`]' `[[camera]]` sections. Out: [`CameraHandle`]s (latest frame on a `watch`,
//! so a slow reader only ever misses frames, never blocks the camera) and the monitor's looks,
//! offered to [`Looks`] (the request queue).

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::capture::config::{CameraSettings, CameraSource};
use crate::capture::{spawn_camera, Camera, ReplayCamera, ReplayConfig};
use crate::config::Settings;
use crate::monitor::{CameraWatch, GateConfig, Looks, MonitorStats};

/// A camera as other stages see it: its latest frame and its stats.
#[derive(Clone)]
pub struct CameraHandle {
    pub name: String,
    pub frames: crate::capture::FrameReceiver,
    pub stats: Arc<crate::capture::camera::CameraStats>,
}

/// Cameras and monitors of one configuration; replaced whole on reload.
pub(crate) struct Pipeline {
    cancel: CancellationToken,
    cameras: Vec<Camera>,
    monitor: tokio::task::JoinHandle<()>,
    pub(crate) handles: Vec<CameraHandle>,
}

fn camera_source(c: &CameraSettings) -> Result<Box<dyn crate::capture::CameraSource>> {
    Ok(match &c.source {
        CameraSource::Replay { source, looped } => {
            let mut rc = ReplayConfig::new(c.name.clone(), source.clone(), c.fps);
            rc.looped = *looped;
            Box::new(ReplayCamera::open(rc).with_context(|| format!("camera {}", c.name))?)
        }
        #[cfg(feature = "v4l2")]
        CameraSource::V4l2 {
            device,
            width,
            height,
            formats,
        } => {
            let mut vc = crate::capture::v4l2::V4l2Config::new(
                c.name.clone(),
                device.clone(),
                *width,
                *height,
                c.fps,
            );
            if !formats.is_empty() {
                vc.formats = formats.clone();
            }
            Box::new(
                crate::capture::v4l2::V4l2Camera::new(vc)
                    .with_context(|| format!("camera {}", c.name))?,
            )
        }
        #[cfg(not(feature = "v4l2"))]
        CameraSource::V4l2 { .. } => anyhow::bail!(
            "camera {}: this build has no V4L2 support (feature v4l2)",
            c.name
        ),
    })
}

/// Opens every camera's source (a replay camera lists and decodes its first image; a V4L2
/// camera is set up), so a camera that cannot work stops start-up before the model loads.
pub(crate) type Opened = Vec<(CameraSettings, Box<dyn crate::capture::CameraSource>)>;

pub(crate) fn open_cameras(settings: &Settings) -> Result<Opened> {
    settings
        .cameras
        .iter()
        .map(|c| Ok((c.clone(), camera_source(c)?)))
        .collect()
}

pub(crate) fn start_pipeline(
    opened: Opened,
    queries: Arc<dyn Looks>,
    stats: Arc<MonitorStats>,
) -> Result<Pipeline> {
    let cancel = CancellationToken::new();
    let mut cameras = Vec::new();
    let mut watches = Vec::new();
    let mut handles = Vec::new();
    for (c, source) in opened {
        let c = &c;
        log::info!("camera {}: starting ({})", c.name, source.name());
        let cam = spawn_camera(source, cancel.child_token())
            .with_context(|| format!("camera {}", c.name))?;
        handles.push(CameraHandle {
            name: c.name.clone(),
            frames: cam.subscribe(),
            stats: cam.shared_stats(),
        });
        if c.monitor {
            let watch = CameraWatch {
                interval: c.interval.map(|i| i.0),
                gate: GateConfig {
                    threshold: c.change_threshold,
                    max_interval: c.max_interval.0,
                },
                prompt: c.prompt.clone(),
            };
            watches.push((watch, cam.subscribe()));
        }
        cameras.push(cam);
    }
    let monitor = tokio::spawn(crate::stage::run(
        "monitor",
        crate::monitor::run_monitor(watches, queries, stats, cancel.child_token()),
    ));
    Ok(Pipeline {
        cancel,
        cameras,
        monitor,
        handles,
    })
}

impl Pipeline {
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        let _ = self.monitor.await;
        let cams = self.cameras;
        let _ = tokio::task::spawn_blocking(move || cams.into_iter().for_each(Camera::join)).await;
    }
}
