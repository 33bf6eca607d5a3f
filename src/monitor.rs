//! When to look: per camera a pace (each new frame, or an interval), a change gate and a prompt →
//! a [`Query`] offered to a
//! [`Looks`] sink — the daemon's request queue, where it becomes a routine look (ranked below a
//! person's question, and replacing the camera's older look still waiting).
//!
//! In: each camera's [`FrameReceiver`] and its [`CameraWatch`] settings. Out: [`Query`]s, never
//! waiting. Drop policy: when the sink is full the look is **dropped and counted**
//! (`dropped_full`) and the gate is not advanced, so the next tick looks again with a fresher
//! frame — a busy model should get the newest scene, not a backlog of stale ones.
//!
//! ## The change gate
//! A look costs a model run; most ticks show the same scene. [`ChangeGate`] compares a tiny
//! greyscale thumbnail of the current frame (32×24 cells, each the mean BT.601 luma of its
//! block of pixels) with the thumbnail of the frame last *analysed*, by mean absolute
//! difference (MAD) in luma levels 0–255:
//!
//! - Averaging blocks of pixels (≈60×45 each at 1080p) removes sensor noise: a still scene
//!   scores well under 1.
//! - Something new covering a fraction `a` of the view with contrast `c` scores about `a · c`:
//!   a person (10 % of the view, 80 levels against the background) ≈ 8; a pallet moved across
//!   the frame more.
//! - A global brightness shift (lights, auto-exposure) scores its size too; that is a real
//!   change of scene for a watcher, and the threshold (default 6) sits above flicker.
//!
//! It fires on the first look, when MAD ≥ `threshold`, or when `max_interval` has passed
//! since the last analysed frame whatever the scene (so a slow drift is still reported). It is
//! compared against the last *analysed* frame, not the previous tick, so a slow change adds up
//! until it fires. The gate is pure: time comes in as an argument, so tests drive it with a
//! fake clock.
//!
//! Around the gate, [`watch_camera`] never counts a frame already looked at as a change (so
//! `threshold = 0` means every new frame, not every tick), and looks at each new frame while
//! one of the camera's alert rules is pending or clearing ([`Looks::undecided`]): a rule's
//! `raise_after` / `clear_after` count looks, which a still scene would otherwise not give.
//!
//! ## Pace
//! Without an `interval` the watch wakes on each new frame, so every frame the sink has room for
//! is judged. A timer at the frame period would not do that: its ticks and the camera's frames
//! drift against each other, and under load one tick sees the same frame twice and the next
//! skips one (a rule counting looks then raises a frame late). With an `interval` it wakes on a
//! timer and judges the newest frame, skipping the ones in between.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capture::{Frame, FrameReceiver};

/// Thumbnail size: enough cells to see a person-sized change, few enough that comparing costs
/// nothing next to the full-frame pass that builds it.
pub const THUMB_W: usize = 32;
pub const THUMB_H: usize = 24;

/// Mean luma per cell, row-major, `THUMB_W * THUMB_H` values.
#[derive(Clone, PartialEq, Eq)]
pub struct Thumbnail(pub [u8; THUMB_W * THUMB_H]);

impl fmt::Debug for Thumbnail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbnail({}x{})", THUMB_W, THUMB_H)
    }
}

/// Downscale an RGB frame to a luma thumbnail by box averaging. Luma uses the BT.601 weights
/// in 8.8 fixed point (77, 150, 29 = 0.299, 0.587, 0.114 × 256). A frame smaller than the
/// thumbnail repeats its pixels.
pub fn thumbnail(frame: &Frame) -> Thumbnail {
    thumbnail_rgb(&frame.rgb, frame.width as usize, frame.height as usize)
}

pub fn thumbnail_rgb(rgb: &[u8], width: usize, height: usize) -> Thumbnail {
    let mut out = [0u8; THUMB_W * THUMB_H];
    if width == 0 || height == 0 || rgb.len() < width * height * 3 {
        return Thumbnail(out);
    }
    let span = |i: usize, n: usize, total: usize| {
        let a = i * total / n;
        let b = ((i + 1) * total / n).max(a + 1).min(total);
        (a.min(total - 1), b)
    };
    for ty in 0..THUMB_H {
        let (y0, y1) = span(ty, THUMB_H, height);
        for tx in 0..THUMB_W {
            let (x0, x1) = span(tx, THUMB_W, width);
            let mut sum = 0u64;
            for y in y0..y1 {
                let row = &rgb[(y * width + x0) * 3..(y * width + x1) * 3];
                for px in row.chunks_exact(3) {
                    sum += u64::from(
                        (77 * u32::from(px[0])
                            + 150 * u32::from(px[1])
                            + 29 * u32::from(px[2])
                            + 128)
                            >> 8,
                    );
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as u64;
            out[ty * THUMB_W + tx] = ((sum + n / 2) / n) as u8;
        }
    }
    Thumbnail(out)
}

/// Mean absolute difference of two thumbnails, in luma levels (0–255).
pub fn mean_abs_diff(a: &Thumbnail, b: &Thumbnail) -> f32 {
    let total: u32 =
        a.0.iter()
            .zip(&b.0)
            .map(|(x, y)| u32::from(x.abs_diff(*y)))
            .sum();
    total as f32 / (THUMB_W * THUMB_H) as f32
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateConfig {
    /// Fire when the MAD against the last analysed frame reaches this (luma levels).
    pub threshold: f32,
    /// Fire anyway once this long has passed since the last analysed frame.
    pub max_interval: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            threshold: 6.0,
            max_interval: Duration::from_secs(600),
        }
    }
}

/// Why the gate fired; its `Display` is the query's trigger string.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    First,
    Change {
        mad: f32,
        threshold: f32,
    },
    MaxInterval {
        since: Duration,
    },
    /// A new frame while an alert rule of the camera is undecided ([`Looks::undecided`]).
    Undecided,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::First => f.write_str("first look"),
            Trigger::Change { mad, threshold } => {
                write!(
                    f,
                    "scene changed (mean abs diff {mad:.1} >= {threshold:.1} luma levels)"
                )
            }
            Trigger::MaxInterval { since } => write!(
                f,
                "max interval ({:.0} s since the last look)",
                since.as_secs_f64()
            ),
            Trigger::Undecided => f.write_str("alert rule undecided (pending or clearing)"),
        }
    }
}

/// The change gate (see the module docs).
#[derive(Debug, Clone)]
pub struct ChangeGate {
    config: GateConfig,
    last: Option<(Thumbnail, Instant)>,
}

impl ChangeGate {
    pub fn new(config: GateConfig) -> Self {
        ChangeGate { config, last: None }
    }

    /// Should this frame be analysed? Does not change the gate: call [`ChangeGate::commit`]
    /// once the look was actually sent.
    pub fn evaluate(&self, thumb: &Thumbnail, now: Instant) -> Option<Trigger> {
        let Some((last, at)) = &self.last else {
            return Some(Trigger::First);
        };
        let mad = mean_abs_diff(thumb, last);
        if mad >= self.config.threshold {
            return Some(Trigger::Change {
                mad,
                threshold: self.config.threshold,
            });
        }
        let since = now.saturating_duration_since(*at);
        (since >= self.config.max_interval).then_some(Trigger::MaxInterval { since })
    }

    /// This thumbnail was analysed at `now`: the next comparisons are against it.
    pub fn commit(&mut self, thumb: Thumbnail, now: Instant) {
        self.last = Some((thumb, now));
    }
}

/// A request to the model: look at these frames with this prompt. The lead extends it (audio,
/// reply channel, deadline).
#[derive(Debug, Clone)]
pub struct Query {
    pub frames: Vec<Frame>,
    pub prompt: String,
    /// Why the query was made, for the report ("scene changed (…)", "max interval (…)").
    pub trigger: String,
}

/// What the sink did with a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Taken,
    /// No room: dropped (counted); the gate is not advanced, so the next tick looks again.
    Full,
    /// The sink is gone: the watch ends.
    Closed,
}

/// Where looks go; never blocks.
pub trait Looks: Send + Sync {
    fn offer(&self, query: Query) -> Offer;
    /// Whether `camera` wants a look at each new frame even when the scene did not change: an
    /// alert rule is pending or clearing and its decision counts looks (`raise_after`,
    /// `clear_after`), which a still scene would otherwise never give it.
    fn undecided(&self, _camera: &str) -> bool {
        false
    }
}

/// A bounded channel as a sink (tests, tools).
impl Looks for mpsc::Sender<Query> {
    fn offer(&self, query: Query) -> Offer {
        match self.try_send(query) {
            Ok(()) => Offer::Taken,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }
}

/// How one camera is watched.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraWatch {
    /// How often to look at the newest frame; `None`: at each new frame.
    pub interval: Option<Duration>,
    pub gate: GateConfig,
    pub prompt: String,
}

/// Counters over all watched cameras.
#[derive(Debug, Default)]
pub struct MonitorStats {
    /// Ticks (or new frames) that had a frame to look at.
    pub looks: AtomicU64,
    /// Queries sent.
    pub queries: AtomicU64,
    /// Looks the gate passed over (scene unchanged).
    pub unchanged: AtomicU64,
    /// Ticks before the camera's first frame.
    pub no_frame: AtomicU64,
    /// Queries dropped because the channel was full.
    pub dropped_full: AtomicU64,
}

impl MonitorStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Watch one camera until the stop signal, the camera ending, or the query channel closing.
pub async fn watch_camera(
    watch: CameraWatch,
    mut frames: FrameReceiver,
    queries: Arc<dyn Looks>,
    stats: Arc<MonitorStats>,
    cancel: CancellationToken,
) {
    let mut gate = ChangeGate::new(watch.gate);
    // The sequence number of the frame last looked at: an undecided rule gets each new frame
    // once, never the same frame twice.
    let mut last_seq: Option<u64> = None;
    let mut tick = watch.interval.map(|i| {
        let mut tick = tokio::time::interval(i);
        // A late tick is skipped, not replayed in a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick
    });
    // At each new frame: a frame published before the watch subscribed is the first one.
    let mut first = if tick.is_none() {
        frames.latest()
    } else {
        None
    };
    loop {
        let frame = match tick.as_mut() {
            Some(tick) => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(frame) = frames.latest() else {
                    if frames.is_closed() {
                        return;
                    }
                    MonitorStats::bump(&stats.no_frame);
                    continue;
                };
                frame
            }
            None => match first.take() {
                Some(frame) => frame,
                None => tokio::select! {
                    _ = cancel.cancelled() => return,
                    next = frames.next() => match next {
                        Some(frame) => frame,
                        None => return,
                    },
                },
            },
        };
        MonitorStats::bump(&stats.looks);
        let thumb = thumbnail(&frame);
        // tokio's clock, so paused-time tests drive it.
        let now = tokio::time::Instant::now().into_std();
        // A frame already looked at is no change, whatever the threshold (0 = every frame).
        let same_frame = last_seq == Some(frame.seq);
        let trigger = gate
            .evaluate(&thumb, now)
            .filter(|t| !(same_frame && matches!(t, Trigger::Change { .. })))
            .or_else(|| {
                (last_seq.is_some_and(|s| frame.seq > s) && queries.undecided(&frame.camera))
                    .then_some(Trigger::Undecided)
            });
        let Some(trigger) = trigger else {
            MonitorStats::bump(&stats.unchanged);
            // At each new frame, the wait for the next one sees the camera end (after its last).
            if tick.is_some() && frames.is_closed() {
                return;
            }
            continue;
        };
        let seq = frame.seq;
        let query = Query {
            frames: vec![frame],
            prompt: watch.prompt.clone(),
            trigger: trigger.to_string(),
        };
        match queries.offer(query) {
            Offer::Taken => {
                gate.commit(thumb, now);
                last_seq = Some(seq);
                MonitorStats::bump(&stats.queries);
            }
            Offer::Full => MonitorStats::bump(&stats.dropped_full),
            Offer::Closed => return,
        }
    }
}

/// Watch every camera, each on its own task; returns when all have ended.
pub async fn run_monitor(
    watches: Vec<(CameraWatch, FrameReceiver)>,
    queries: Arc<dyn Looks>,
    stats: Arc<MonitorStats>,
    cancel: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for (watch, frames) in watches {
        tasks.spawn(watch_camera(
            watch,
            frames,
            queries.clone(),
            stats.clone(),
            cancel.clone(),
        ));
    }
    drop(queries);
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::replay::tests::write_png;
    use crate::capture::{spawn_camera, ReplayCamera, ReplayConfig};

    fn solid(w: usize, h: usize, rgb: [u8; 3]) -> Vec<u8> {
        rgb.repeat(w * h)
    }

    #[test]
    fn thumbnail_is_the_block_mean_of_bt601_luma() {
        // 64x48 → each cell is a 2x2 block. Left half white, right half black.
        let (w, h) = (64, 48);
        let mut rgb = solid(w, h, [0, 0, 0]);
        for y in 0..h {
            for x in 0..w / 2 {
                rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let t = thumbnail_rgb(&rgb, w, h);
        assert!(t
            .0
            .iter()
            .enumerate()
            .all(|(i, &v)| v == if i % THUMB_W < 16 { 255 } else { 0 }));
        // Pure colours: luma weights.
        assert_eq!(thumbnail_rgb(&solid(32, 24, [255, 0, 0]), 32, 24).0[0], 77);
        assert_eq!(thumbnail_rgb(&solid(32, 24, [0, 255, 0]), 32, 24).0[0], 149);
        assert_eq!(thumbnail_rgb(&solid(32, 24, [0, 0, 255]), 32, 24).0[0], 29);
        // A cell that averages 0 and 255 over 2 pixels rounds to 128; a tiny frame repeats.
        let t = thumbnail_rgb(&[0, 0, 0, 255, 255, 255], 2, 1);
        assert_eq!(
            (t.0[0], t.0[THUMB_W - 1], t.0[THUMB_W * THUMB_H - 1]),
            (0, 255, 255)
        );
    }

    #[test]
    fn mean_abs_diff_in_luma_levels() {
        let a = Thumbnail([100; THUMB_W * THUMB_H]);
        let mut b = a.clone();
        assert_eq!(mean_abs_diff(&a, &b), 0.0);
        // 10 % of the cells (77 of 768 ≈ 10 %) change by 80 levels → ≈ 8.
        for v in b.0.iter_mut().take(77) {
            *v = 180;
        }
        assert!((mean_abs_diff(&a, &b) - 77.0 * 80.0 / 768.0).abs() < 1e-4);
    }

    fn scene_dir(a: usize, b: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..a + b {
            let colour = if i < a { [40, 90, 160] } else { [220, 200, 60] };
            write_png(&dir.path().join(format!("{i:03}.png")), 64, 48, colour);
        }
        dir
    }

    fn frame_from(img: &crate::capture::replay::CachedImage, seq: u64) -> Frame {
        Frame {
            camera: "line-1".into(),
            seq,
            captured_at: std::time::SystemTime::now(),
            width: img.width,
            height: img.height,
            rgb: img.rgb.clone(),
        }
    }

    /// The replay directory shows scene A for 5 frames, then B for 5, looped. Driven frame by
    /// frame with a fake clock: the gate fires on the first frame, then exactly on the first
    /// frame of each new scene (within one frame period of the change), never in between.
    #[test]
    fn gate_fires_once_per_scene_change_driven_by_a_fake_clock() {
        let dir = scene_dir(5, 5);
        let mut cam = ReplayCamera::open(ReplayConfig::new(
            "line-1",
            dir.path().to_str().unwrap(),
            10.0,
        ))
        .unwrap();
        let period = cam.period();
        let mut gate = ChangeGate::new(GateConfig {
            threshold: 6.0,
            max_interval: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        let mut fired = Vec::new();
        for n in 0..30usize {
            let img = cam.image(n % 10).unwrap();
            let now = t0 + period * n as u32;
            let thumb = thumbnail(&frame_from(&img, n as u64 + 1));
            if let Some(trigger) = gate.evaluate(&thumb, now) {
                fired.push((n, trigger.to_string()));
                gate.commit(thumb, now);
            }
        }
        let at: Vec<usize> = fired.iter().map(|(n, _)| *n).collect();
        assert_eq!(at, [0, 5, 10, 15, 20, 25], "{fired:?}");
        assert_eq!(fired[0].1, "first look");
        assert!(
            fired[1].1.starts_with("scene changed (mean abs diff "),
            "{}",
            fired[1].1
        );
    }

    #[test]
    fn an_unchanged_scene_fires_again_only_after_the_max_interval() {
        let mut gate = ChangeGate::new(GateConfig {
            threshold: 6.0,
            max_interval: Duration::from_secs(1),
        });
        let still = thumbnail_rgb(&solid(64, 48, [90, 90, 90]), 64, 48);
        // Sensor noise: a few levels on a few cells stays under the threshold.
        let mut noisy = still.clone();
        for v in noisy.0.iter_mut().step_by(7) {
            *v += 3;
        }
        let t0 = Instant::now();
        let mut fired = Vec::new();
        for n in 0..35u32 {
            let now = t0 + Duration::from_millis(100) * n;
            let thumb = if n % 2 == 0 {
                still.clone()
            } else {
                noisy.clone()
            };
            if let Some(t) = gate.evaluate(&thumb, now) {
                fired.push((n, t));
                gate.commit(thumb, now);
            }
        }
        let at: Vec<u32> = fired.iter().map(|(n, _)| *n).collect();
        assert_eq!(at, [0, 10, 20, 30], "{fired:?}");
        assert_eq!(
            fired[1].1.to_string(),
            "max interval (1 s since the last look)"
        );
    }

    /// A slow drift adds up against the last analysed frame until it fires.
    #[test]
    fn a_slow_drift_accumulates() {
        let mut gate = ChangeGate::new(GateConfig {
            threshold: 6.0,
            max_interval: Duration::from_secs(3600),
        });
        let t0 = Instant::now();
        let mut fired = Vec::new();
        for n in 0..20u8 {
            let thumb = Thumbnail([100 + n; THUMB_W * THUMB_H]);
            if gate.evaluate(&thumb, t0).is_some() {
                fired.push(n);
                gate.commit(thumb, t0);
            }
        }
        assert_eq!(fired, [0, 6, 12, 18]);
    }

    /// The loop over a real replay camera: scenes alternate every 4 frames at 20 fps; the
    /// monitor looks every frame period. Queries come only on scene changes, so consecutive
    /// queries always show different scenes; generous bounds on their number.
    #[tokio::test]
    async fn monitor_loop_sends_a_query_per_scene_change() {
        let dir = scene_dir(4, 4);
        let cancel = CancellationToken::new();
        let cam = ReplayCamera::open(ReplayConfig::new(
            "line-1",
            dir.path().to_str().unwrap(),
            20.0,
        ))
        .unwrap();
        let camera = spawn_camera(Box::new(cam), cancel.clone()).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let stats = Arc::new(MonitorStats::default());
        let watch = CameraWatch {
            interval: Some(Duration::from_millis(50)),
            gate: GateConfig {
                threshold: 6.0,
                max_interval: Duration::from_secs(60),
            },
            prompt: "Is anyone inside the yellow lines?".into(),
        };
        let monitor = tokio::spawn(run_monitor(
            vec![(watch, camera.subscribe())],
            Arc::new(tx),
            stats.clone(),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(1600)).await;
        cancel.cancel();
        monitor.await.unwrap();
        let mut queries = Vec::new();
        while let Some(q) = rx.recv().await {
            queries.push(q);
        }
        // A scene lasts 4 frames = 0.2 s: about 8 changes in 1.6 s, plus the first look.
        assert!(
            (4..=12).contains(&queries.len()),
            "{} queries",
            queries.len()
        );
        assert_eq!(queries[0].trigger, "first look");
        assert_eq!(queries[0].prompt, "Is anyone inside the yellow lines?");
        for pair in queries.windows(2) {
            let (a, b) = (&pair[0].frames[0], &pair[1].frames[0]);
            assert_ne!(
                a.rgb[a.rgb.len() - 3..],
                b.rgb[b.rgb.len() - 3..],
                "two queries in a row on one scene"
            );
            assert!(
                pair[1].trigger.starts_with("scene changed"),
                "{}",
                pair[1].trigger
            );
        }
        let unchanged = stats.unchanged.load(Ordering::Relaxed);
        assert!(
            unchanged >= 10,
            "the gate passed over only {unchanged} looks"
        );
    }

    /// Without an interval the watch wakes at each new frame: with `threshold = 0` every frame
    /// of the camera is looked at exactly once, in order, none skipped, and the watch ends after
    /// the camera's last frame.
    #[tokio::test]
    async fn without_an_interval_each_new_frame_is_looked_at_once() {
        let dir = scene_dir(3, 3);
        let mut cfg = ReplayConfig::new("line-1", dir.path().to_str().unwrap(), 10.0);
        cfg.looped = false;
        let cancel = CancellationToken::new();
        let camera =
            spawn_camera(Box::new(ReplayCamera::open(cfg).unwrap()), cancel.clone()).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let stats = Arc::new(MonitorStats::default());
        let watch = CameraWatch {
            interval: None,
            gate: GateConfig {
                threshold: 0.0,
                max_interval: Duration::from_secs(600),
            },
            prompt: "p".into(),
        };
        let task = tokio::spawn(watch_camera(
            watch,
            camera.subscribe(),
            Arc::new(tx),
            stats.clone(),
            cancel.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the watch outlived its camera")
            .unwrap();
        let seqs: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|q| q.frames[0].seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "each frame once, in order");
        assert_eq!(stats.looks.load(Ordering::Relaxed), 6);
        assert_eq!(stats.no_frame.load(Ordering::Relaxed), 0);
    }

    /// A sink whose camera has an undecided alert rule while `undecided` is set.
    struct Undecided {
        tx: mpsc::Sender<Query>,
        undecided: std::sync::atomic::AtomicBool,
    }

    impl Looks for Undecided {
        fn offer(&self, query: Query) -> Offer {
            self.tx.offer(query)
        }
        fn undecided(&self, camera: &str) -> bool {
            assert_eq!(camera, "line-1");
            self.undecided.load(Ordering::Relaxed)
        }
    }

    /// A still scene gets one look; while an alert rule is undecided each new frame is looked
    /// at once (a rule's `raise_after` counts looks), and the gate's quiet returns after.
    #[tokio::test]
    async fn an_undecided_alert_rule_looks_at_each_new_frame_of_a_still_scene() {
        let dir = scene_dir(6, 0); // one scene, never a change
        let cancel = CancellationToken::new();
        let cam = ReplayCamera::open(ReplayConfig::new(
            "line-1",
            dir.path().to_str().unwrap(),
            20.0,
        ))
        .unwrap();
        let camera = spawn_camera(Box::new(cam), cancel.clone()).unwrap();
        let (tx, mut rx) = mpsc::channel(256);
        let sink = Arc::new(Undecided {
            tx,
            undecided: std::sync::atomic::AtomicBool::new(false),
        });
        let stats = Arc::new(MonitorStats::default());
        let watch = CameraWatch {
            // Ticks faster than frames: a frame is seen on several ticks.
            interval: Some(Duration::from_millis(20)),
            gate: GateConfig {
                threshold: 6.0,
                max_interval: Duration::from_secs(60),
            },
            prompt: "Is the lamp red?".into(),
        };
        let monitor = tokio::spawn(run_monitor(
            vec![(watch, camera.subscribe())],
            sink.clone(),
            stats.clone(),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let first: Vec<Query> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(first.len(), 1, "a still scene: the first look only");
        assert_eq!(first[0].trigger, "first look");
        sink.undecided.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(600)).await;
        sink.undecided.store(false, Ordering::Relaxed);
        // Let a look taken just before the switch arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let during: Vec<Query> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
        monitor.await.unwrap();
        let after: Vec<Query> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        // 600 ms at 20 fps is about 12 new frames; generous bounds.
        assert!(
            (4..=14).contains(&during.len()),
            "{} looks while undecided",
            during.len()
        );
        let mut seqs = vec![first[0].frames[0].seq];
        for q in &during {
            assert_eq!(q.trigger, "alert rule undecided (pending or clearing)");
            seqs.push(q.frames[0].seq);
        }
        assert!(
            seqs.windows(2).all(|w| w[1] > w[0]),
            "each frame looked at once, in order: {seqs:?}"
        );
        assert!(
            after.is_empty(),
            "looks after the rule was decided: {}",
            after.len()
        );
    }

    /// A full query channel drops the look, counts it, and does not advance the gate: once
    /// there is room the change is still reported.
    #[tokio::test]
    async fn a_full_query_channel_drops_and_counts_then_recovers() {
        let dir = scene_dir(1, 1); // A, B, A, B… every frame is a change
        let cancel = CancellationToken::new();
        let cam = ReplayCamera::open(ReplayConfig::new(
            "line-1",
            dir.path().to_str().unwrap(),
            50.0,
        ))
        .unwrap();
        let camera = spawn_camera(Box::new(cam), cancel.clone()).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let stats = Arc::new(MonitorStats::default());
        let watch = CameraWatch {
            interval: Some(Duration::from_millis(20)),
            gate: GateConfig::default(),
            prompt: "p".into(),
        };
        let monitor = tokio::spawn(watch_camera(
            watch,
            camera.subscribe(),
            Arc::new(tx),
            stats.clone(),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let dropped = stats.dropped_full.load(Ordering::Relaxed);
        assert!(dropped >= 3, "dropped {dropped}");
        assert_eq!(stats.queries.load(Ordering::Relaxed), 1);
        let first = rx.recv().await.unwrap();
        assert_eq!(first.trigger, "first look");
        let second = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            second.trigger.starts_with("scene changed"),
            "{}",
            second.trigger
        );
        cancel.cancel();
        monitor.await.unwrap();
    }

    /// Paused tokio time: the loop follows tokio's clock, so a still scene reaches the max
    /// interval (60 s) at once in real time, after five unchanged looks.
    #[tokio::test(start_paused = true)]
    async fn the_loop_runs_on_tokios_clock() {
        let dir = scene_dir(1, 0);
        let cancel = CancellationToken::new();
        let cfg = ReplayConfig::new("still", dir.path().to_str().unwrap(), 50.0);
        let camera =
            spawn_camera(Box::new(ReplayCamera::open(cfg).unwrap()), cancel.clone()).unwrap();
        let mut frames = camera.subscribe();
        // The capture thread runs in real time: wait for its first frame.
        while frames.latest().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (tx, mut rx) = mpsc::channel(16);
        let stats = Arc::new(MonitorStats::default());
        let watch = CameraWatch {
            interval: Some(Duration::from_secs(10)),
            gate: GateConfig {
                threshold: 6.0,
                max_interval: Duration::from_secs(60),
            },
            prompt: "p".into(),
        };
        let task = tokio::spawn(watch_camera(
            watch,
            frames,
            Arc::new(tx),
            stats.clone(),
            cancel.clone(),
        ));
        assert_eq!(rx.recv().await.unwrap().trigger, "first look");
        let second = rx.recv().await.unwrap();
        assert_eq!(second.trigger, "max interval (60 s since the last look)");
        assert_eq!(stats.unchanged.load(Ordering::Relaxed), 5);
        cancel.cancel();
        task.await.unwrap();
    }

    /// When the camera ends, its watcher ends (downstream exits when its input closes).
    #[tokio::test]
    async fn the_watch_ends_with_its_camera() {
        let dir = scene_dir(1, 0);
        let mut cfg = ReplayConfig::new("once", dir.path().to_str().unwrap(), 50.0);
        cfg.looped = false;
        let camera = spawn_camera(
            Box::new(ReplayCamera::open(cfg).unwrap()),
            CancellationToken::new(),
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let watch = CameraWatch {
            interval: Some(Duration::from_millis(20)),
            gate: GateConfig::default(),
            prompt: "p".into(),
        };
        let stats = Arc::new(MonitorStats::default());
        let task = tokio::spawn(watch_camera(
            watch,
            camera.subscribe(),
            Arc::new(tx),
            stats,
            CancellationToken::new(),
        ));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watch outlived its camera")
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().trigger, "first look");
        assert!(rx.recv().await.is_none());
    }
}
