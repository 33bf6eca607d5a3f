//! The V4L2 camera (USB UVC cameras; cargo feature `v4l2`): device listing, format
//! negotiation against what the device enumerates, mmap streaming on the camera's own thread,
//! decoding to RGB, and reconnecting with exponential backoff after an unplug.
//!
//! In: a [`V4l2Config`] (device path, size, rate, acceptable formats). Out: frames through the
//! [`FramePublisher`]; device sequence gaps as `device_dropped`; unplugs and stalls as
//! `reconnects` and `last_error`.
//!
//! The pure parts — negotiation ([`super::negotiate`]), pixel conversion ([`super::pixel`]),
//! backoff and error classification ([`super::camera`]) — are tested without a camera; this
//! file is the ioctl glue (no virtual camera can exist on the build machines: see
//! `shared/notes/hardware.md`).
//!
//! CSI Bayer sensors on Jetson need the ISP (libargus); plain V4L2 gives raw Bayer, which
//! negotiation rejects with the list of what the node offers.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use v4l::buffer::Type;
use v4l::io::traits::CaptureStream;
use v4l::prelude::MmapStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::camera::{is_unplugged, Backoff, CameraError, CameraSource, FramePublisher};
use super::negotiate::{
    negotiate, FormatChoice, FormatRequest, Interval, IntervalOffer, OfferedFormat, OfferedMode,
    PixelFormat, SizeOffer,
};
use super::pixel;

#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Config {
    pub name: String,
    /// `/dev/video0`, or a stable `/dev/v4l/by-id/...` link (survives re-enumeration on replug).
    pub device: PathBuf,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Acceptable formats, most preferred first.
    pub formats: Vec<PixelFormat>,
    /// mmap buffers queued in the driver (more: fewer device drops, more latency).
    pub buffers: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// No frame for this long → treat the device as stalled and reopen it.
    pub stall_after: Duration,
}

impl V4l2Config {
    pub fn new(
        name: impl Into<String>,
        device: impl Into<PathBuf>,
        width: u32,
        height: u32,
        fps: f64,
    ) -> Self {
        V4l2Config {
            name: name.into(),
            device: device.into(),
            width,
            height,
            fps,
            formats: PixelFormat::DEFAULT_PREFERENCE.to_vec(),
            buffers: 4,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            stall_after: Duration::from_secs(5),
        }
    }
}

/// One video node, as `gemba doctor` lists it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub path: PathBuf,
    pub card: String,
    pub bus: String,
    /// Empty for nodes that do not capture (UVC metadata nodes, encoders).
    pub formats: Vec<OfferedFormat>,
}

/// Every `/dev/video*` node that opens, with what it offers (sorted by path).
pub fn list_devices() -> Vec<DeviceInfo> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("video"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let dev = Device::with_path(&path).ok()?;
            let caps = dev.query_caps().ok()?;
            let formats = enumerate(&dev).unwrap_or_default();
            Some(DeviceInfo {
                path,
                card: caps.card,
                bus: caps.bus,
                formats,
            })
        })
        .collect()
}

/// The formats, sizes and rates a device offers. For stepwise sizes the rates are queried at
/// `at` (the requested size), since V4L2 reports intervals per size.
fn enumerate_at(dev: &Device, at: Option<(u32, u32)>) -> io::Result<Vec<OfferedFormat>> {
    let mut out = Vec::new();
    for desc in dev.enum_formats()? {
        let mut modes = Vec::new();
        for fs in dev.enum_framesizes(desc.fourcc).unwrap_or_default() {
            let (size, probe) = match fs.size {
                v4l::framesize::FrameSizeEnum::Discrete(d) => (
                    SizeOffer::Discrete {
                        width: d.width,
                        height: d.height,
                    },
                    Some((d.width, d.height)),
                ),
                v4l::framesize::FrameSizeEnum::Stepwise(s) => (
                    SizeOffer::Stepwise {
                        min_w: s.min_width,
                        max_w: s.max_width,
                        step_w: s.step_width,
                        min_h: s.min_height,
                        max_h: s.max_height,
                        step_h: s.step_height,
                    },
                    at,
                ),
            };
            let intervals = match probe {
                Some((w, h)) => dev
                    .enum_frameintervals(desc.fourcc, w, h)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|fi| match fi.interval {
                        v4l::frameinterval::FrameIntervalEnum::Discrete(f) => {
                            IntervalOffer::Discrete(Interval {
                                num: f.numerator,
                                den: f.denominator,
                            })
                        }
                        v4l::frameinterval::FrameIntervalEnum::Stepwise(s) => {
                            IntervalOffer::Stepwise {
                                min: Interval {
                                    num: s.min.numerator,
                                    den: s.min.denominator,
                                },
                                max: Interval {
                                    num: s.max.numerator,
                                    den: s.max.denominator,
                                },
                            }
                        }
                    })
                    .collect(),
                None => Vec::new(),
            };
            modes.push(OfferedMode { size, intervals });
        }
        out.push(OfferedFormat {
            fourcc: desc.fourcc.repr,
            description: desc.description,
            modes,
        });
    }
    Ok(out)
}

fn enumerate(dev: &Device) -> io::Result<Vec<OfferedFormat>> {
    enumerate_at(dev, None)
}

/// What an open, configured device streams.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    choice: FormatChoice,
    /// Bytes per line the driver reported.
    stride: usize,
}

/// Why a connection attempt or a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Negotiate(#[from] super::negotiate::NegotiateError),
    #[error("driver set {got_w}x{got_h} {got_fourcc} instead of the negotiated {want_w}x{want_h} {want}")]
    FormatRefused {
        want: PixelFormat,
        want_w: u32,
        want_h: u32,
        got_fourcc: String,
        got_w: u32,
        got_h: u32,
    },
    #[error("no frame for {0:?}: device stalled")]
    Stalled(Duration),
}

impl SessionError {
    fn cause(&self) -> &'static str {
        match self {
            SessionError::Io(e) if is_unplugged(e) => "device lost",
            SessionError::Io(_) => "stream error",
            SessionError::Negotiate(_) => "format negotiation",
            SessionError::FormatRefused { .. } => "format refused",
            SessionError::Stalled(_) => "stalled",
        }
    }
}

pub struct V4l2Camera {
    config: V4l2Config,
}

impl V4l2Camera {
    /// Check the configuration (no device access: a camera unplugged at boot is retried by the
    /// capture loop, not fatal). Use [`V4l2Camera::probe`] to fail fast.
    pub fn new(config: V4l2Config) -> Result<Self, CameraError> {
        let bad = |what: String| CameraError::Config {
            camera: config.name.clone(),
            what,
        };
        if config.width == 0 || config.height == 0 {
            return Err(bad(format!(
                "size {}x{} must be positive",
                config.width, config.height
            )));
        }
        if !super::FPS_RANGE.contains(&config.fps) {
            return Err(bad(format!(
                "fps must be in {}–{}, got {}",
                super::FPS_RANGE.start(),
                super::FPS_RANGE.end(),
                config.fps
            )));
        }
        if config.formats.is_empty() {
            return Err(bad("no acceptable pixel formats".into()));
        }
        if config.buffers < 2 {
            return Err(bad(format!(
                "at least 2 buffers are needed, got {}",
                config.buffers
            )));
        }
        Ok(V4l2Camera { config })
    }

    fn request(&self) -> FormatRequest {
        let c = &self.config;
        FormatRequest {
            width: c.width,
            height: c.height,
            fps: c.fps,
            formats: c.formats.clone(),
        }
    }

    /// Open, negotiate, set format and rate.
    fn connect(&self) -> Result<(Device, Negotiated), SessionError> {
        let c = &self.config;
        let dev = Device::with_path(&c.device)?;
        let offered = enumerate_at(&dev, Some((c.width, c.height)))?;
        let choice = negotiate(&offered, &self.request())?;
        let want = v4l::Format::new(
            choice.width,
            choice.height,
            FourCC::new(&choice.format.fourcc()),
        );
        let got = dev.set_format(&want)?;
        if got.width != choice.width
            || got.height != choice.height
            || got.fourcc.repr != choice.format.fourcc()
        {
            return Err(SessionError::FormatRefused {
                want: choice.format,
                want_w: choice.width,
                want_h: choice.height,
                got_fourcc: super::negotiate::fourcc_str(got.fourcc.repr),
                got_w: got.width,
                got_h: got.height,
            });
        }
        let params = v4l::video::capture::Parameters::new(v4l::Fraction::new(
            choice.interval.num,
            choice.interval.den,
        ));
        // Some drivers accept S_FMT but not S_PARM; they stream at their default rate, which
        // the fps stat shows.
        if let Err(e) = dev.set_params(&params) {
            tracing::warn!(camera = %c.name, "could not set the frame rate: {e}");
        }
        let stride = got.stride as usize;
        Ok((dev, Negotiated { choice, stride }))
    }

    /// Stream until cancelled (Ok) or the device fails (Err). Frames go to `out`.
    fn session(
        &self,
        dev: &Device,
        neg: Negotiated,
        out: &mut FramePublisher,
        cancel: &CancellationToken,
        frames: &mut u64,
    ) -> Result<(), SessionError> {
        let mut stream = MmapStream::with_buffers(dev, Type::VideoCapture, self.config.buffers)?;
        // Wake regularly to notice the stop signal.
        stream.set_timeout(Duration::from_millis(200));
        let FormatChoice {
            format,
            width,
            height,
            ..
        } = neg.choice;
        let mut last_seq: Option<u32> = None;
        let mut last_frame = Instant::now();
        while !cancel.is_cancelled() {
            let (buf, meta) = match CaptureStream::next(&mut stream) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    if last_frame.elapsed() > self.config.stall_after {
                        return Err(SessionError::Stalled(last_frame.elapsed()));
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            last_frame = Instant::now();
            let skipped = last_seq.map_or(0, |prev| {
                u64::from(meta.sequence.wrapping_sub(prev).saturating_sub(1))
            });
            last_seq = Some(meta.sequence);
            let data = &buf[..(meta.bytesused as usize).min(buf.len())];
            let rgb = match format {
                PixelFormat::Mjpeg => pixel::mjpeg_to_rgb(data, width, height),
                PixelFormat::Yuyv => pixel::yuyv_to_rgb(data, width, height, neg.stride),
                PixelFormat::Nv12 => pixel::nv12_to_rgb(data, width, height, neg.stride),
                PixelFormat::Rgb24 => pixel::rgb24_to_rgb(data, width, height, neg.stride),
            };
            match rgb {
                Ok(rgb) => {
                    out.publish(width, height, Arc::new(rgb), skipped);
                    *frames += 1;
                }
                Err(e) => out.bad_frame(e.cause(), &e),
            }
        }
        Ok(())
    }
}

impl CameraSource for V4l2Camera {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn frame_interval(&self) -> Option<Duration> {
        (self.config.fps.is_finite() && self.config.fps > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / self.config.fps))
    }

    fn run(self: Box<Self>, mut out: FramePublisher, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut failed_before = false;
        let device = self.config.device.display().to_string();
        while !cancel.is_cancelled() {
            let mut frames = 0u64;
            // v4l's stream panics in Drop if STREAMOFF fails with anything but ENODEV; a panic
            // must cost one session, not the camera.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let (dev, neg) = self.connect()?;
                if failed_before {
                    out.reconnected();
                }
                let c = neg.choice;
                tracing::info!(camera = %self.config.name, %device, format = %c.format, width = c.width,
                    height = c.height, fps = c.interval.fps(), "camera streaming");
                self.session(&dev, neg, &mut out, &cancel, &mut frames)
            }));
            match outcome {
                Ok(Ok(())) => return, // cancelled
                Ok(Err(e)) => out.error(e.cause(), &format_args!("{device}: {e}")),
                Err(_) => out.error(
                    "driver panic",
                    &format_args!("{device}: capture panicked; reopening"),
                ),
            }
            // The next successful connect counts as a reconnect.
            failed_before = true;
            if frames > 0 {
                // It was working: retry quickly; a persistent failure backs off to the cap.
                backoff.reset();
            }
            let missing = !self.config.device.exists();
            let deadline = Instant::now() + backoff.next_delay();
            // Wait out the backoff, but if the node was gone and comes back (replug), go now.
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                if Instant::now() >= deadline || (missing && self.config.device.exists()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_without_touching_a_device() {
        let ok = V4l2Config::new("press-2", "/dev/video-none", 1280, 720, 30.0);
        assert!(V4l2Camera::new(ok.clone()).is_ok());
        let mut bad = ok.clone();
        bad.fps = 0.0;
        assert_eq!(
            V4l2Camera::new(bad).err().unwrap().to_string(),
            "camera press-2: fps must be in 0.001–1000, got 0"
        );
        let mut bad = ok;
        bad.buffers = 1;
        assert!(V4l2Camera::new(bad)
            .err()
            .unwrap()
            .to_string()
            .contains("at least 2 buffers"));
    }

    /// Without a camera the probe fails with the OS error and names camera and device.
    /// A node that is not a video device: the ioctl fails and the loop keeps retrying, visible
    /// in stats, until stopped.
    #[test]
    fn a_missing_device_is_retried_with_backoff_and_visible_in_stats() {
        let mut cfg = V4l2Config::new("press-2", "/dev/video-gemba-missing", 640, 480, 30.0);
        cfg.backoff_initial = Duration::from_millis(10);
        cfg.backoff_max = Duration::from_millis(40);
        let cancel = CancellationToken::new();
        let cam =
            super::super::spawn_camera(Box::new(V4l2Camera::new(cfg).unwrap()), cancel.clone())
                .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let s = cam.stats();
        cancel.cancel();
        cam.join();
        assert_eq!(s.frames, 0);
        let err = s.last_error.unwrap();
        assert!(
            err.contains("/dev/video-gemba-missing") && err.contains("No such file"),
            "{err}"
        );
    }
}
