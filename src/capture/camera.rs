//! The camera interface: every camera (V4L2, replay) is a [`CameraSource`] run on its own
//! thread by [`spawn_camera`], publishing its newest [`Frame`] on a `tokio::sync::watch`
//! channel.
//!
//! In: a source and a stop signal (`CancellationToken`, passed in so tests and the app drive
//! shutdown). Out: a [`Camera`] handle — [`FrameReceiver`]s for consumers (the monitor, the API's
//! snapshot) and [`CameraStats`] readable at any time.
//!
//! Drop policy: **keep latest**. Capture never waits for a consumer; a frame replaced before any
//! consumer took it is counted in `dropped`. Frames the device itself skipped (V4L2 sequence
//! gaps) are counted in `device_dropped` and show as gaps in [`Frame::seq`]. A bad frame is
//! counted in `decode_errors` and logged once per cause; it never stops the camera. When the
//! source ends (cancelled, or a replay that does not loop) the watch sender is dropped, so every
//! receiver sees the end.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Frame;

/// Start-up errors of camera sources. Errors after start-up are counted in [`CameraStats`]
/// instead: the daemon keeps going.
#[derive(Debug, Error)]
pub enum CameraError {
    #[error("camera {camera}: {what}")]
    Config { camera: String, what: String },
    #[error("camera {camera}: no JPEG or PNG images match {pattern}")]
    NoImages { camera: String, pattern: String },
    #[error("camera {camera}: cannot read {path}: {err}")]
    Io {
        camera: String,
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    /// `err` names the file.
    #[error("camera {camera}: {err}")]
    BadImage {
        camera: String,
        path: std::path::PathBuf,
        err: super::pixel::PixelError,
    },
    #[error("camera {camera}: invalid glob pattern {pattern}: {err}")]
    Glob {
        camera: String,
        pattern: String,
        err: String,
    },
    #[error("camera {camera}: {device}: {err}")]
    Device {
        camera: String,
        device: std::path::PathBuf,
        err: String,
    },
    #[error("camera {camera}: {device}: {err}")]
    Negotiate {
        camera: String,
        device: std::path::PathBuf,
        err: super::negotiate::NegotiateError,
    },
    #[error("camera {camera}: cannot start its capture thread: {err}")]
    Thread { camera: String, err: std::io::Error },
}

/// A camera: something that captures frames on the thread it is run on.
pub trait CameraSource: Send + 'static {
    /// The configured camera name (`press-2`), used in frames, logs and the thread name.
    fn name(&self) -> &str;

    /// Capture until `cancel` fires (or the source ends), publishing every good frame through
    /// `out` and reporting bad ones to it. Runs on a dedicated thread: blocking is fine, but the
    /// source must notice `cancel` within a fraction of a second.
    fn run(self: Box<Self>, out: FramePublisher, cancel: CancellationToken);

    /// The time between frames this source is set to deliver (its configured rate), if it has
    /// one: the status calls a camera stalled only after several of its own intervals.
    fn frame_interval(&self) -> Option<Duration> {
        None
    }
}

/// A camera is stalled after this many of its own frame intervals without a frame (and never
/// before [`MIN_STALL`]): a 0.2 fps camera is not stalled 2 s after its last frame.
pub const STALL_INTERVALS: u32 = 3;
/// The shortest time without a frame that counts as a stall.
pub const MIN_STALL: Duration = Duration::from_secs(2);

/// Counters a camera keeps; shared between its thread and everyone who asks.
#[derive(Debug, Default)]
pub struct CameraStats {
    frames: AtomicU64,
    dropped: AtomicU64,
    device_dropped: AtomicU64,
    decode_errors: AtomicU64,
    reconnects: AtomicU64,
    /// Highest `seq` any consumer has taken (0: none yet; seqs start at 1).
    taken_seq: AtomicU64,
    slow: Mutex<SlowStats>,
}

#[derive(Debug, Default)]
struct SlowStats {
    fps: f64,
    /// The source's configured frame interval ([`CameraSource::frame_interval`]).
    expected_interval: Option<Duration>,
    last_frame_at: Option<Instant>,
    last_error: Option<String>,
}

/// A copy of a camera's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraStatsSnapshot {
    /// Frames published.
    pub frames: u64,
    /// Frames published over the last whole second or more (0 once no frame came for
    /// [`STALL_INTERVALS`] of the camera's frame intervals, and at least [`MIN_STALL`]).
    pub fps: f64,
    /// A frame came once, but none for [`STALL_INTERVALS`] of the camera's frame intervals (and
    /// at least [`MIN_STALL`]).
    pub stalled: bool,
    /// Frames replaced before any consumer took them (keep-latest policy).
    pub dropped: u64,
    /// Frames the device skipped (V4L2 sequence gaps).
    pub device_dropped: u64,
    pub decode_errors: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

impl CameraStats {
    pub fn snapshot(&self) -> CameraStatsSnapshot {
        let slow = self.slow.lock().unwrap_or_else(|e| e.into_inner());
        // The camera's own interval: as configured, else as measured.
        let interval = slow
            .expected_interval
            .or_else(|| (slow.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / slow.fps)));
        let limit = interval.map_or(MIN_STALL, |i| {
            i.saturating_mul(STALL_INTERVALS).max(MIN_STALL)
        });
        let stale = slow.last_frame_at.is_none_or(|t| t.elapsed() > limit);
        CameraStatsSnapshot {
            frames: self.frames.load(Ordering::Relaxed),
            fps: if stale { 0.0 } else { slow.fps },
            stalled: stale && slow.last_frame_at.is_some(),
            dropped: self.dropped.load(Ordering::Relaxed),
            device_dropped: self.device_dropped.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error: slow.last_error.clone(),
        }
    }

    fn slow(&self) -> std::sync::MutexGuard<'_, SlowStats> {
        self.slow.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The capture thread's side: publishes frames and reports problems. Owned by the source's
/// `run`; dropping it ends the camera's watch channel.
pub struct FramePublisher {
    camera: String,
    tx: watch::Sender<Option<Frame>>,
    stats: Arc<CameraStats>,
    seq: u64,
    logged_causes: HashSet<&'static str>,
    window_start: Instant,
    window_frames: u64,
}

impl FramePublisher {
    pub fn camera(&self) -> &str {
        &self.camera
    }

    /// Publish a good frame. `device_skipped`: frames the device says it dropped since the last
    /// one (0 for sources that cannot tell). Returns the frame's `seq`.
    pub fn publish(
        &mut self,
        width: u32,
        height: u32,
        rgb: Arc<Vec<u8>>,
        device_skipped: u64,
    ) -> u64 {
        debug_assert_eq!(rgb.len(), width as usize * height as usize * 3);
        let previous = self.seq;
        self.seq += 1 + device_skipped;
        let stats = &self.stats;
        if device_skipped > 0 {
            stats
                .device_dropped
                .fetch_add(device_skipped, Ordering::Relaxed);
        }
        if previous > 0 && stats.taken_seq.load(Ordering::Acquire) < previous {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let frame = Frame {
            camera: self.camera.clone(),
            seq: self.seq,
            captured_at: SystemTime::now(),
            width,
            height,
            rgb,
        };
        // Counted before it is visible, so a consumer holding frame N reads `frames >= N`.
        stats.frames.fetch_add(1, Ordering::Relaxed);
        // send_replace: publish even while nobody subscribes (a receiver may come later).
        self.tx.send_replace(Some(frame));

        let now = Instant::now();
        self.window_frames += 1;
        let elapsed = now.duration_since(self.window_start);
        let mut slow = stats.slow();
        slow.last_frame_at = Some(now);
        if elapsed >= Duration::from_secs(1) {
            slow.fps = self.window_frames as f64 / elapsed.as_secs_f64();
            self.window_start = now;
            self.window_frames = 0;
        }
        self.seq
    }

    /// A frame that could not be used: counted, remembered as the last error, logged the first
    /// time this `cause` is seen.
    pub fn bad_frame(&mut self, cause: &'static str, err: &dyn fmt::Display) {
        self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
        self.note_error(cause, err);
    }

    /// A problem that is not one frame (open failed, device lost): remembered, logged once per
    /// cause.
    pub fn error(&mut self, cause: &'static str, err: &dyn fmt::Display) {
        self.note_error(cause, err);
    }

    /// The device is capturing again after a failure.
    pub fn reconnected(&mut self) {
        let n = self.stats.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(camera = %self.camera, reconnects = n, "camera reconnected");
    }

    fn note_error(&mut self, cause: &'static str, err: &dyn fmt::Display) {
        let text = err.to_string();
        if self.logged_causes.insert(cause) {
            tracing::warn!(camera = %self.camera, cause, "{text} (further '{cause}' errors are counted, not logged)");
        }
        self.stats.slow().last_error = Some(text);
    }

    /// Whether anyone still listens (all receivers and the handle dropped → no).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A consumer's view of one camera: the newest frame, or a wait for the next one.
#[derive(Clone)]
pub struct FrameReceiver {
    camera: String,
    rx: watch::Receiver<Option<Frame>>,
    stats: Arc<CameraStats>,
}

impl FrameReceiver {
    pub fn camera(&self) -> &str {
        &self.camera
    }

    fn take(&self, frame: Option<Frame>) -> Option<Frame> {
        if let Some(f) = &frame {
            self.stats.taken_seq.fetch_max(f.seq, Ordering::AcqRel);
        }
        frame
    }

    /// The newest frame (None before the first one), marking it seen.
    pub fn latest(&mut self) -> Option<Frame> {
        let frame = self.rx.borrow_and_update().clone();
        self.take(frame)
    }

    /// Wait for a frame newer than the last one this receiver saw. `None` once the camera has
    /// stopped.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            self.rx.changed().await.ok()?;
            let frame = self.rx.borrow_and_update().clone();
            if frame.is_some() {
                return self.take(frame);
            }
        }
    }

    /// Whether the camera has stopped (no frame will ever come again).
    pub fn is_closed(&self) -> bool {
        self.rx.has_changed().is_err()
    }

    /// The camera's counters.
    pub fn stats(&self) -> CameraStatsSnapshot {
        self.stats.snapshot()
    }
}

/// A running camera.
pub struct Camera {
    name: String,
    rx: watch::Receiver<Option<Frame>>,
    stats: Arc<CameraStats>,
    thread: Option<JoinHandle<()>>,
}

impl Camera {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn subscribe(&self) -> FrameReceiver {
        FrameReceiver {
            camera: self.name.clone(),
            rx: self.rx.clone(),
            stats: self.stats.clone(),
        }
    }

    pub fn stats(&self) -> CameraStatsSnapshot {
        self.stats.snapshot()
    }

    /// The live counters, for status pages that outlive this handle.
    pub fn shared_stats(&self) -> Arc<CameraStats> {
        self.stats.clone()
    }

    /// Whether the capture thread has ended (cancelled, or a source that ran out).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Wait for the capture thread to end (after the stop signal). Blocking: call it from
    /// `spawn_blocking` in async code.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(camera = %self.name, "camera thread panicked");
            }
        }
    }
}

/// Run `source` on a thread of its own (named `cam-NAME`) until `cancel` fires.
pub fn spawn_camera(
    source: Box<dyn CameraSource>,
    cancel: CancellationToken,
) -> Result<Camera, CameraError> {
    let name = source.name().to_string();
    let (tx, rx) = watch::channel(None);
    let stats = Arc::new(CameraStats::default());
    stats.slow().expected_interval = source.frame_interval();
    let publisher = FramePublisher {
        camera: name.clone(),
        tx,
        stats: stats.clone(),
        seq: 0,
        logged_causes: HashSet::new(),
        window_start: Instant::now(),
        window_frames: 0,
    };
    let thread = std::thread::Builder::new()
        .name(format!("cam-{name}"))
        .spawn(move || {
            // A camera thread that panics fails the daemon (crate::stage); one that returns
            // (cancelled, or a replay that ran out) has stopped.
            let stage = crate::stage::enter(format!("camera {}", source.name()));
            crate::stage::injected_fault(&format!("camera {}", source.name()));
            source.run(publisher, cancel);
            stage.finish();
        })
        .map_err(|err| CameraError::Thread {
            camera: name.clone(),
            err,
        })?;
    Ok(Camera {
        name,
        rx,
        stats,
        thread: Some(thread),
    })
}

/// Sleep until `deadline` unless `cancel` fires first; false when cancelled. Sleeps in slices so
/// a capture thread (which has no async runtime) notices the stop signal within 20 ms.
pub fn sleep_until(deadline: Instant, cancel: &CancellationToken) -> bool {
    const SLICE: Duration = Duration::from_millis(20);
    loop {
        if cancel.is_cancelled() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(SLICE));
    }
}

/// Exponential backoff between reconnect attempts: `initial`, doubling, capped at `max`;
/// [`Backoff::reset`] after a success.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Whether an I/O error means the device went away (unplugged, node removed): the capture loop
/// then reconnects with backoff instead of treating it as a bad frame.
pub fn is_unplugged(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ENXIO)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let got: Vec<u64> = (0..6).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [250, 500, 1000, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }

    #[test]
    fn unplug_errors_are_told_apart() {
        use std::io::Error;
        assert!(is_unplugged(&Error::from_raw_os_error(libc::ENODEV)));
        assert!(is_unplugged(&Error::from_raw_os_error(libc::ENOENT)));
        assert!(!is_unplugged(&Error::from_raw_os_error(libc::EIO)));
        assert!(!is_unplugged(&Error::from_raw_os_error(libc::ENOTTY)));
        assert!(!is_unplugged(&Error::new(
            std::io::ErrorKind::TimedOut,
            "VIDIOC_DQBUF"
        )));
    }

    /// A source that publishes a scripted sequence, for the publisher's bookkeeping.
    struct Scripted(Vec<Result<u64, &'static str>>);

    impl CameraSource for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn run(self: Box<Self>, mut out: FramePublisher, _cancel: CancellationToken) {
            for step in self.0 {
                match step {
                    Ok(skipped) => {
                        out.publish(1, 1, Arc::new(vec![0, 0, 0]), skipped);
                    }
                    Err(cause) => out.bad_frame(cause, &format!("bad: {cause}")),
                }
            }
            out.reconnected();
        }
    }

    #[test]
    fn publisher_counts_device_gaps_bad_frames_and_reconnects() {
        let script = vec![
            Ok(0),
            Ok(2),
            Err("corrupt JPEG"),
            Ok(0),
            Err("corrupt JPEG"),
            Err("truncated buffer"),
        ];
        let cam = spawn_camera(Box::new(Scripted(script)), CancellationToken::new()).unwrap();
        let mut rx = cam.subscribe();
        let stats = cam.shared_stats();
        cam.join();
        let s = stats.snapshot();
        assert_eq!(
            (s.frames, s.device_dropped, s.decode_errors, s.reconnects),
            (3, 2, 3, 1)
        );
        assert_eq!(s.last_error.as_deref(), Some("bad: truncated buffer"));
        // Seqs 1, 4 (two skipped by the device), 5; nobody took the first two.
        assert_eq!(s.dropped, 2);
        assert_eq!(rx.latest().unwrap().seq, 5);
    }
}
