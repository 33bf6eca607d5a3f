//! The daemon (`gemba run`): builds the pipeline from [`Settings`], spawns the stages, handles
//! signals, and shuts down in order.
//!
//! ```text
//! cameras (threads, latest frame on watch) ─▶ monitor (interval + change gate) ─▶ queries (bounded)
//!   ─▶ dispatcher ─▶ model worker (thread owning the sessions) ─▶ events ─▶ report writer (store)
//! ```
//! Start-up: open the store (recovery marks cut-off reports incomplete), bind the API, load ONNX
//! Runtime, open the cameras (a camera that cannot work stops start-up before the model loads),
//! load the model, write `status.json`, tell systemd READY, start the cameras' threads and the
//! monitors. SIGTERM during start-up stops it at once. Every stage is supervised
//! ([`crate::stage`]): one that dies stops the daemon with an error. SIGHUP reloads
//! the config and the model (the old model serves until the new one has loaded). SIGTERM stops
//! the sources; the query in flight gets `drain_deadline` to finish, after which its generation
//! is cancelled and its report closed as incomplete; nothing acknowledged is lost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capture::{spawn_camera, Camera, ReplayCamera, ReplayConfig};
use crate::config::{CameraSettings, CameraSource, Settings};
use crate::daemon::queue::{Class, Pushed, Refused, RequestQueue};
use crate::model::worker::{AskInput, AskSettings, Job, JobEvent, ModelInfo, Worker};
use crate::model::{runtime, CancelToken, Event};
use crate::monitor::{CameraWatch, GateConfig, Looks, MonitorStats, Offer, Query};
use crate::report::{ReportMeta, ReportStats, RetentionPolicy, Store, TextTimings, Trigger};
use crate::systemd::{self, Beat, Progress};

/// How `gemba run` was asked to start.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub demo: bool,
    pub data: Option<PathBuf>,
    pub onnxruntime: Option<PathBuf>,
    /// Overrides the config's `[api] listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// Stop by itself after this long, as if SIGTERM came (demos, soak runs).
    pub stop_after: Option<Duration>,
}

/// The demo's config: replay cameras over the demo frames, the demo model, a local store.
pub fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/gemba-demo.toml")
}

/// Loads the settings `gemba run` would use.
pub fn settings_for(args: &RunArgs) -> Result<Settings> {
    let path = match (&args.config, args.demo) {
        (Some(p), _) => p.clone(),
        (None, true) => demo_config(),
        (None, false) => PathBuf::from(crate::config::DEFAULT_CONFIG),
    };
    if !path.exists() {
        anyhow::bail!(
            "config {} does not exist; pass --config FILE, or try the built-in demo with `gemba run --demo`",
            path.display()
        );
    }
    let mut s = Settings::load(&path)?;
    if let Some(d) = &args.data {
        s.data_dir = d.clone();
        s.state_dir = d.clone();
    } else if args.demo && args.config.is_none() {
        s.data_dir = PathBuf::from("gemba-demo");
        s.state_dir = s.data_dir.clone();
    }
    if args.onnxruntime.is_some() {
        s.onnxruntime = args.onnxruntime.clone();
    }
    if let Some(l) = args.listen {
        s.api.listen = l;
        crate::api::check_exposure(&s.api)?;
    }
    Ok(s)
}

/// Counters the daemon keeps (status, metrics).
#[derive(Debug, Default)]
pub struct DaemonStats {
    pub queries: AtomicU64,
    /// Queued looks replaced by a newer look at the same camera.
    pub looks_replaced: AtomicU64,
    /// Waiting requests dropped from a full queue for one that ranks higher.
    pub requests_bumped: AtomicU64,
    pub reports: AtomicU64,
    pub reports_incomplete: AtomicU64,
    pub query_errors: AtomicU64,
    pub write_errors: AtomicU64,
}

/// `status.json`: what the daemon runs now. Written atomically; `gemba model install` reads it
/// as its health gate (the bundle it installed is loaded and ready).
#[derive(Debug, Serialize)]
pub struct StatusFile<'a> {
    pub pid: u32,
    pub bundle_dir: &'a Path,
    pub bundle_id: &'a str,
    pub bundle_hash: &'a str,
    pub loaded_at: String,
    pub ready: bool,
    pub smoke_ok: Option<bool>,
    pub error: Option<&'a str>,
    pub providers: std::collections::BTreeMap<String, String>,
    pub data_dir: &'a Path,
    /// Where the local API serves (the address actually bound).
    pub api_addr: Option<String>,
    /// Live counters, refreshed every few seconds while the daemon runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
}

/// The daemon's counters as status.json shows them (`gemba bench soak` reads them).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Counters {
    pub uptime_s: f64,
    pub requests: u64,
    pub reports: u64,
    pub reports_incomplete: u64,
    pub errors: u64,
    pub monitor_looks: u64,
    pub monitor_unchanged: u64,
    pub monitor_dropped: u64,
    pub cameras: std::collections::BTreeMap<String, CameraCounters>,
    pub store_bytes: u64,
    pub rss_bytes: u64,
    pub open_fds: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct CameraCounters {
    pub frames: u64,
    pub dropped: u64,
    pub decode_errors: u64,
    pub reconnects: u64,
}

/// This process's resident set size and open descriptors (Linux /proc).
pub fn process_usage(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

impl AppHandle {
    /// A snapshot of the counters.
    pub fn counters(&self, started: std::time::Instant) -> Counters {
        let m = &self.monitor_stats;
        let (rss, fds) = process_usage(std::process::id());
        let cameras = self
            .cameras
            .lock()
            .expect("poisoned")
            .iter()
            .map(|c| {
                let s = c.stats.snapshot();
                (
                    c.name.clone(),
                    CameraCounters {
                        frames: s.frames,
                        dropped: s.dropped,
                        decode_errors: s.decode_errors,
                        reconnects: s.reconnects,
                    },
                )
            })
            .collect();
        Counters {
            uptime_s: started.elapsed().as_secs_f64(),
            requests: self.stats.queries.load(Ordering::Relaxed),
            reports: self.stats.reports.load(Ordering::Relaxed),
            reports_incomplete: self.stats.reports_incomplete.load(Ordering::Relaxed),
            errors: self.stats.query_errors.load(Ordering::Relaxed)
                + self.stats.write_errors.load(Ordering::Relaxed),
            monitor_looks: m.looks.load(Ordering::Relaxed),
            monitor_unchanged: m.unchanged.load(Ordering::Relaxed),
            monitor_dropped: m.dropped_full.load(Ordering::Relaxed),
            cameras,
            store_bytes: self
                .store
                .usage()
                .map(|u| u.media_bytes + u.html_bytes + u.index_bytes)
                .unwrap_or(0),
            rss_bytes: rss,
            open_fds: fds,
        }
    }
}

pub fn write_status(
    state_dir: &Path,
    info: &ModelInfo,
    ready: bool,
    data_dir: &Path,
) -> std::io::Result<()> {
    write_status_with(state_dir, info, ready, data_dir, None)
}

pub fn write_status_with(
    state_dir: &Path,
    info: &ModelInfo,
    ready: bool,
    data_dir: &Path,
    counters: Option<Counters>,
) -> std::io::Result<()> {
    let loaded_at = jiff::Timestamp::try_from(info.loaded_at)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let status = StatusFile {
        pid: std::process::id(),
        bundle_dir: &info.bundle_dir,
        bundle_id: &info.bundle_id,
        bundle_hash: &info.bundle_hash,
        loaded_at,
        ready,
        smoke_ok: info.smoke_ok,
        error: info.last_error.as_deref(),
        providers: info
            .providers
            .iter()
            .map(|r| (r.component.clone(), r.actual().to_string()))
            .collect(),
        data_dir,
        api_addr: crate::api::bound_addr().map(|a| a.to_string()),
        counters,
    };
    let json = serde_json::to_vec_pretty(&status).map_err(std::io::Error::other)?;
    crate::report::durable::write_atomic(&state_dir.join("status.json"), &json)
}

/// Cameras and monitors of one configuration; replaced whole on reload.
struct Pipeline {
    cancel: CancellationToken,
    cameras: Vec<Camera>,
    monitor: tokio::task::JoinHandle<()>,
    handles: Vec<CameraHandle>,
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
            use crate::capture::negotiate::PixelFormat;
            let prefs: Vec<PixelFormat> = formats
                .iter()
                .filter_map(|f| match f.as_str() {
                    "mjpeg" => Some(PixelFormat::Mjpeg),
                    "yuyv" => Some(PixelFormat::Yuyv),
                    "nv12" => Some(PixelFormat::Nv12),
                    "rgb24" => Some(PixelFormat::Rgb24),
                    _ => None, // rejected by config validation
                })
                .collect();
            if !prefs.is_empty() {
                vc.formats = prefs;
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
type Opened = Vec<(CameraSettings, Box<dyn crate::capture::CameraSource>)>;

fn open_cameras(settings: &Settings) -> Result<Opened> {
    settings
        .cameras
        .iter()
        .map(|c| Ok((c.clone(), camera_source(c)?)))
        .collect()
}

fn start_pipeline(
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
                interval: c.interval.0,
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
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.monitor.await;
        let cams = self.cameras;
        let _ = tokio::task::spawn_blocking(move || cams.into_iter().for_each(Camera::join)).await;
    }
}

/// The cancel handle of the generation in flight, so shutdown can stop it.
type InFlight = Arc<Mutex<Option<CancelToken>>>;

/// A question for the model, from any stage: the monitor, the local API, a voice utterance.
pub struct Request {
    pub trigger: Trigger,
    /// Its precedence in the queue (from the trigger: a person's question before looks).
    pub class: Class,
    /// Why it was asked (for the log): "scene changed (…)", "POST /ask", "utterance 2.1 s".
    pub reason: String,
    pub prompt: String,
    /// Frames shown to the model; their cameras are the names `[cam:NAME]` may cite.
    pub frames: Vec<crate::capture::Frame>,
    /// The spoken question, if any: shown to the model and kept in the report.
    pub audio: Vec<crate::capture::AudioClip>,
    /// A transcript of the audio, where one is known.
    pub audio_transcript: Option<String>,
    pub cancel: CancelToken,
    /// Receives this request's events (in order), then `Closed`.
    pub listener: Option<mpsc::UnboundedSender<RequestEvent>>,
    /// What the requester adds once generation has ended (the spoken answer's audio and voice
    /// timings); the report waits for it before closing, up to a minute, unless it is dropped.
    pub follow_up: Option<std::sync::mpsc::Receiver<FollowUp>>,
    /// Generation choices of this request (the OpenAI-compatible API's parameters).
    pub overrides: crate::model::worker::GenOverrides,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("trigger", &self.trigger.to_string())
            .field("class", &self.class)
            .field("reason", &self.reason)
            .field("prompt", &self.prompt)
            .field("frames", &self.frames.len())
            .field("audio", &self.audio.len())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// Tells the requester this request will not be answered (dropped from the queue).
    fn drop_unanswered(self, why: &str) {
        if let Some(l) = &self.listener {
            let _ = l.send(RequestEvent::Closed {
                report_id: String::new(),
                complete: false,
                error: Some(why.to_string()),
            });
        }
    }
}

/// Segments and figures a requester adds at the end of its report.
#[derive(Debug, Default)]
pub struct FollowUp {
    /// Audio clips (with transcripts), placed after the answer.
    pub audio: Vec<(crate::capture::AudioClip, Option<String>)>,
    pub voice: Option<crate::report::VoiceTimings>,
}

impl Request {
    pub fn new(trigger: Trigger, prompt: impl Into<String>) -> Request {
        Request {
            class: Class::of(&trigger),
            trigger,
            reason: String::new(),
            prompt: prompt.into(),
            frames: Vec::new(),
            audio: Vec::new(),
            audio_transcript: None,
            cancel: CancelToken::new(),
            listener: None,
            follow_up: None,
            overrides: Default::default(),
        }
    }
}

/// What a request's listener receives.
#[derive(Debug, Clone)]
pub enum RequestEvent {
    /// The report exists; its id.
    Started {
        report_id: String,
    },
    Event(Event),
    /// The report is closed: complete, or incomplete with the reason.
    Closed {
        report_id: String,
        complete: bool,
        error: Option<String>,
    },
}

/// A camera as other stages see it: its latest frame and its stats.
#[derive(Clone)]
pub struct CameraHandle {
    pub name: String,
    pub frames: crate::capture::FrameReceiver,
    pub stats: Arc<crate::capture::camera::CameraStats>,
}

/// What the other stages (local API, voice) get to reach the running pipeline.
#[derive(Clone)]
pub struct AppHandle {
    /// Bounded, with classes (see [`RequestQueue`]): `try_submit` fails when it is full of
    /// requests that rank as high as the new one.
    pub requests: RequestQueue,
    pub worker: Worker,
    pub store: Store,
    pub stats: Arc<DaemonStats>,
    pub monitor_stats: Arc<MonitorStats>,
    /// Replaced on reload.
    pub cameras: Arc<Mutex<Vec<CameraHandle>>>,
    pub settings: Arc<Mutex<Settings>>,
    /// Every request's events, tagged with the report id (dashboards, metrics).
    pub events: tokio::sync::broadcast::Sender<(String, Event)>,
    /// Cancelled when the daemon stops.
    pub shutdown: CancellationToken,
}

impl AppHandle {
    /// The newest frame of a camera, if it has one.
    pub fn latest_frame(&self, camera: &str) -> Option<crate::capture::Frame> {
        let cams = self.cameras.lock().expect("poisoned");
        cams.iter()
            .find(|c| c.name == camera)
            .and_then(|c| c.frames.clone().latest())
    }

    /// Queues a request; `Err` gives it back when the queue is full or the daemon is stopping.
    pub fn try_submit(&self, req: Request) -> Result<(), Box<Request>> {
        submit(&self.requests, &self.stats, req)
    }
}

/// Queues a request, counting (and telling the listener of) whatever the queue dropped for it.
fn submit(queue: &RequestQueue, stats: &DaemonStats, req: Request) -> Result<(), Box<Request>> {
    match queue.try_push(req) {
        Ok(Pushed::Queued) => Ok(()),
        Ok(Pushed::Replaced(old)) => {
            stats.looks_replaced.fetch_add(1, Ordering::Relaxed);
            old.drop_unanswered("replaced by a newer look at the same camera");
            Ok(())
        }
        Ok(Pushed::Bumped(old)) => {
            stats.requests_bumped.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "queue full: dropped a waiting {} ({}) for a {}",
                old.class.word(),
                old.trigger,
                "request that ranks higher"
            );
            old.drop_unanswered("dropped from a full queue for a request that ranks higher");
            Ok(())
        }
        Err(refused) => Err(Box::new(refused.into_request())),
    }
}

/// The monitor's looks go straight into the request queue as routine looks.
struct MonitorLooks {
    queue: RequestQueue,
    stats: Arc<DaemonStats>,
}

impl Looks for MonitorLooks {
    fn offer(&self, q: Query) -> Offer {
        let camera = q
            .frames
            .first()
            .map(|f| f.camera.clone())
            .unwrap_or_default();
        let mut r = Request::new(Trigger::Monitor { camera }, q.prompt);
        r.reason = q.trigger;
        r.frames = q.frames;
        match self.queue.try_push(r) {
            Err(Refused::Full(_)) => Offer::Full,
            Err(Refused::Closed(_)) => Offer::Closed,
            Ok(p) => {
                if let Pushed::Replaced(_) = p {
                    self.stats.looks_replaced.fetch_add(1, Ordering::Relaxed);
                }
                Offer::Taken
            }
        }
    }
}

/// Everything one request needs to become a report.
struct Dispatch {
    worker: Worker,
    store: Store,
    settings: Arc<Mutex<Settings>>,
    stats: Arc<DaemonStats>,
    in_flight: InFlight,
    beat: Beat,
    events: tokio::sync::broadcast::Sender<(String, Event)>,
}

impl Dispatch {
    /// Serves requests one at a time until `stop` (the request in flight is finished first).
    async fn run(self, requests: RequestQueue, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                r = requests.pop() => match r {
                    Some(r) => self.handle(r).await,
                    None => return,
                },
                _ = tick.tick() => self.beat.alive(),
            }
        }
    }

    async fn handle(&self, req: Request) {
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let listener = req.listener.clone();
        let tell = |ev: RequestEvent| {
            if let Some(l) = &listener {
                let _ = l.send(ev);
            }
        };
        // Unloaded (through the API): no report for a question nobody can answer.
        if !self.worker.is_loaded() {
            self.stats.query_errors.fetch_add(1, Ordering::Relaxed);
            tell(RequestEvent::Closed {
                report_id: String::new(),
                complete: false,
                error: Some(crate::model::worker::NOT_LOADED.into()),
            });
            return;
        }
        let info = self.worker.info();
        let cameras: Vec<String> = req.frames.iter().map(|f| f.camera.clone()).collect();
        log::info!(
            "request {} ({}): cameras [{}]",
            req.trigger,
            req.reason,
            cameras.join(", ")
        );
        let meta = ReportMeta {
            trigger: req.trigger.clone(),
            prompt: Some(req.prompt.clone()),
            cameras: cameras.clone(),
            bundle_id: info.bundle_id.clone(),
            bundle_hash: info.bundle_hash.clone(),
            providers: info
                .providers
                .iter()
                .map(|r| (r.component.clone(), r.actual().to_string()))
                .collect(),
        };
        let store = self.store.clone();
        let writer = match tokio::task::spawn_blocking(move || store.begin(meta)).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                log::error!("cannot start a report: {e}");
                tell(RequestEvent::Closed {
                    report_id: String::new(),
                    complete: false,
                    error: Some(e.to_string()),
                });
                return;
            }
            Err(e) => {
                log::error!("report task failed: {e}");
                return;
            }
        };
        let report_id = writer.id().as_str().to_string();
        tell(RequestEvent::Started {
            report_id: report_id.clone(),
        });
        let (settings_ask, sees_images) = {
            let s = self.settings.lock().expect("poisoned");
            (
                AskSettings {
                    system_prompt: s.model.system_prompt.clone(),
                    max_new_tokens: s.model.max_new_tokens,
                    deadline: s.model.deadline.0,
                    overrides: req.overrides.clone(),
                    speculate: s.model.speculate,
                    prefix_cache: s.model.prefix_cache.map(|b| b.0 as usize),
                    prefix_cache_ttl: s.model.prefix_cache_ttl.0,
                },
                info.providers.iter().any(|r| r.component == "vision"),
            )
        };
        *self.in_flight.lock().expect("poisoned") = Some(req.cancel.clone());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let job = Job::Ask {
            input: AskInput {
                text: req.prompt.clone(),
                frames: req.frames.clone(),
                audio: req.audio.clone(),
            },
            settings: settings_ask,
            cancel: req.cancel.clone(),
            events: tx,
        };
        // The report is written on its own blocking thread, in event order.
        let (wtx, wrx) = std::sync::mpsc::channel::<JobEvent>();
        let frames = req.frames.clone();
        let audio = req.audio.clone();
        let transcript = req.audio_transcript.clone();
        let stats = Arc::clone(&self.stats);
        let follow_up = req.follow_up;
        let writer_task = tokio::task::spawn_blocking(move || {
            write_report(
                writer,
                wrx,
                frames,
                audio,
                transcript,
                sees_images,
                stats,
                follow_up,
            )
        });
        let worker = self.worker.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || worker.submit(job))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        {
            let _ = wtx.send(JobEvent::Failed(e));
        }
        while let Some(ev) = rx.recv().await {
            self.beat.alive();
            if let JobEvent::Event(e) = &ev {
                let _ = self.events.send((report_id.clone(), e.clone()));
                tell(RequestEvent::Event(e.clone()));
            }
            if wtx.send(ev).is_err() {
                break;
            }
        }
        drop(wtx);
        let closed = writer_task.await.unwrap_or_else(|e| Err(e.to_string()));
        *self.in_flight.lock().expect("poisoned") = None;
        match closed {
            // An incomplete report's `closed` event carries why (the reason it was closed with).
            Ok((complete, why)) => tell(RequestEvent::Closed {
                report_id,
                complete,
                error: why,
            }),
            Err(e) => tell(RequestEvent::Closed {
                report_id,
                complete: false,
                error: Some(e),
            }),
        }
    }
}

/// Writes one report from its events: cited frames where the model cites them, sentences as they
/// come, frames nobody cited at the end (before the first sentence for a model that cannot see),
/// then what the requester follows up with (the spoken answer).
#[allow(clippy::too_many_arguments)]
fn write_report(
    mut writer: crate::report::ReportWriter,
    events: std::sync::mpsc::Receiver<JobEvent>,
    frames: Vec<crate::capture::Frame>,
    audio: Vec<crate::capture::AudioClip>,
    transcript: Option<String>,
    model_sees_images: bool,
    stats: Arc<DaemonStats>,
    follow_up: Option<std::sync::mpsc::Receiver<FollowUp>>,
) -> Result<(bool, Option<String>), String> {
    let id = writer.id().as_str().to_string();
    let fail = |stats: &DaemonStats, what: &str, e: &dyn std::fmt::Display| {
        stats.write_errors.fetch_add(1, Ordering::Relaxed);
        log::error!("report {id}: {what}: {e}");
    };
    let mut acks = AckLog::open(&id);
    // The question first: the spoken clip, as asked.
    for clip in &audio {
        match writer.add_audio(clip, transcript.as_deref()) {
            Ok(a) => acks.ack(&a),
            Err(e) => fail(&stats, "question audio", &e),
        }
    }
    if !model_sees_images {
        for f in &frames {
            match writer.add_image(f) {
                Ok(a) => acks.ack(&a),
                Err(e) => fail(&stats, "frame", &e),
            }
        }
    }
    let mut cited: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut done = None;
    let mut failed = None;
    for ev in events {
        match ev {
            JobEvent::Event(Event::Sentence(s)) => {
                match writer.add_sentence(&s.text, TextTimings::from(&s), &frames) {
                    Ok(p) => {
                        p.images
                            .iter()
                            .chain(p.text.iter())
                            .for_each(|a| acks.ack(a));
                        cited.extend(
                            crate::report::cite::cite(
                                &s.text,
                                &frames.iter().map(|f| f.camera.as_str()).collect::<Vec<_>>(),
                            )
                            .cameras,
                        );
                    }
                    Err(e) => fail(&stats, "sentence", &e),
                }
            }
            JobEvent::Event(Event::Done(d)) => done = Some(d),
            JobEvent::Event(Event::Token(_)) => {}
            JobEvent::Failed(e) => failed = Some(e),
        }
    }
    if model_sees_images {
        for f in frames.iter().filter(|f| !cited.contains(&f.camera)) {
            match writer.add_image(f) {
                Ok(a) => acks.ack(&a),
                Err(e) => fail(&stats, "frame", &e),
            }
        }
    }
    // The requester's follow-up comes after the end of generation (never after a failure).
    let mut voice = None;
    if let (Some(rx), Some(_)) = (follow_up, &done) {
        if let Ok(f) = rx.recv_timeout(Duration::from_secs(60)) {
            for (clip, text) in &f.audio {
                match writer.add_audio(clip, text.as_deref()) {
                    Ok(a) => acks.ack(&a),
                    Err(e) => fail(&stats, "answer audio", &e),
                }
            }
            voice = f.voice;
        }
    }
    let complete = matches!(&done, Some(d) if !matches!(d.stop, crate::model::StopReason::Cancelled | crate::model::StopReason::Deadline));
    // Why the report is incomplete (None when it is complete).
    let mut why = None;
    let mut abort = |stats: &DaemonStats, reason: String| {
        // Every report closed incomplete is counted as such, a failed model run included.
        stats.reports_incomplete.fetch_add(1, Ordering::Relaxed);
        let r = writer.abort(&reason);
        why = Some(reason);
        r
    };
    let closed = match (done, failed) {
        (Some(d), _)
            if !matches!(
                d.stop,
                crate::model::StopReason::Cancelled | crate::model::StopReason::Deadline
            ) =>
        {
            writer.finish(ReportStats {
                prompt_tokens: d.prompt_tokens as u64,
                generated_tokens: d.generated_tokens as u64,
                time_to_first_token_ms: Some(d.time_to_first_token_ms),
                time_to_first_sentence_ms: d.time_to_first_sentence_ms,
                total_ms: Some(d.total_ms),
                tokens_per_s: Some(d.decode_tokens_per_s),
                voice,
            })
        }
        (Some(d), _) => abort(&stats, format!("generation stopped: {:?}", d.stop)),
        (None, Some(e)) => {
            stats.query_errors.fetch_add(1, Ordering::Relaxed);
            abort(&stats, format!("the model failed: {e}"))
        }
        (None, None) => abort(&stats, "the model worker went away".into()),
    };
    match closed {
        Ok(id) => {
            acks.closed();
            stats.reports.fetch_add(1, Ordering::Relaxed);
            log::info!("report {id} written");
            Ok((complete, why))
        }
        Err(e) => {
            fail(&stats, "closing", &e);
            Err(e.to_string())
        }
    }
}

/// With `GEMBA_ACK_LOG=FILE` (a test hook), one line per segment the store acknowledged
/// (`ID INDEX KIND SHA256|-`) and per closed report (`ID closed`), written after the
/// acknowledgement: the crash tests check that every line's segment survives kill -9.
struct AckLog {
    id: String,
    file: Option<std::fs::File>,
}

impl AckLog {
    fn open(id: &str) -> AckLog {
        let file = std::env::var_os("GEMBA_ACK_LOG").and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        let mut log = AckLog {
            id: id.to_string(),
            file,
        };
        log.line(format!("{id} begun\n"));
        log
    }
    fn line(&mut self, l: String) {
        use std::io::Write;
        if let Some(f) = &mut self.file {
            let _ = f.write_all(l.as_bytes());
        }
    }
    fn ack(&mut self, a: &crate::report::Ack) {
        let sha = a.media.as_ref().map(|m| m.sha256.as_str()).unwrap_or("-");
        self.line(format!("{} {} {} {sha}\n", self.id, a.index, a.kind));
    }
    fn closed(&mut self) {
        self.line(format!("{} closed\n", self.id));
    }
}

/// The store's policy; the free-space floor is resolved against the size of the file system
/// the store is on (`store.min_free`).
fn retention(s: &Settings) -> RetentionPolicy {
    let fs_bytes = crate::report::durable::fs_bytes(&s.data_dir).unwrap_or(0);
    RetentionPolicy {
        max_bytes: Some(s.store.max_bytes.0),
        max_age: Some(s.store.max_age.0),
        min_free_bytes: s.store.min_free.bytes_on(fs_bytes),
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: RunArgs) -> Result<()> {
    let settings = settings_for(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gemba-rt")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    crate::stage::install_panic_hook();
    let result = rt.block_on(daemon(settings, args));
    // A SIGTERM during the model load returns while the load still runs on a blocking thread;
    // do not wait for it (nothing of the store's is in flight then).
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn daemon(settings: Settings, args: RunArgs) -> Result<()> {
    // Signals are taken from the start: a SIGTERM during start-up stops it (below); once the
    // stages run, it is a clean, ordered stop.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    systemd::status("starting");
    for d in [&settings.data_dir, &settings.state_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Start-up (store recovery, API bind, cameras, the model load) races SIGTERM/SIGINT: nothing
    // is in flight yet, so a stop request ends the process at once instead of after a load that
    // may take minutes (or hang on a stuck file system). A recovery cut short is as safe as one
    // cut by kill -9 (tests/report_crash.rs).
    let phase = std::cell::Cell::new("opening the report store");
    let progress = Progress::new();
    let startup = async {
        let data_dir = settings.data_dir.clone();
        let policy = retention(&settings);
        let store = tokio::task::spawn_blocking(move || Store::open(&data_dir, policy))
            .await?
            .with_context(|| {
                format!(
                    "opening the report store in {}",
                    settings.data_dir.display()
                )
            })?;
        let rec = store.recovery();
        log::info!("report store {}: {rec:?}", settings.data_dir.display());
        if let Some(m) = &settings.mqtt {
            crate::publish::install_outbox(&store, m)?;
        }

        // Bound before the model loads, so a taken port is reported at once.
        phase.set("binding the API");
        let api = crate::api::bind(&settings.api).await?;
        let rt = runtime::init(settings.onnxruntime.as_deref())?;
        // Cameras are opened and checked before the model loads (minutes on a board), so a
        // camera that cannot work stops start-up at once, and READY means the cameras are open.
        phase.set("opening the cameras");
        let opened = tokio::task::spawn_blocking({
            let s = settings.clone();
            move || open_cameras(&s)
        })
        .await??;
        phase.set("loading the model");
        systemd::status(&format!("loading model {}", settings.model.path.display()));
        systemd::extend_timeout(Duration::from_secs(600));
        let (model_path, providers) = (settings.model.path.clone(), settings.providers.clone());
        let beat = progress.stage("worker");
        let worker =
            tokio::task::spawn_blocking(move || Worker::spawn(rt, &model_path, &providers, beat))
                .await?
                .map_err(|e| anyhow::anyhow!("loading the model: {e}"))?;
        anyhow::Ok((store, api, opened, worker))
    };
    let (store, api, opened, worker) = tokio::select! {
        r = startup => r?,
        _ = term.recv() => return stopped_during_start("SIGTERM", phase.get()),
        _ = int.recv() => return stopped_during_start("SIGINT", phase.get()),
    };
    let info = worker.info();
    write_status(&settings.state_dir, &info, true, &settings.data_dir)
        .context("writing status.json")?;
    for r in &info.providers {
        log::info!("{}", r.summary());
    }
    systemd::ready();
    systemd::status(&format!(
        "serving {} ({} cameras)",
        info.bundle_id,
        settings.cameras.len()
    ));
    eprintln!(
        "gemba: serving {} on {} camera(s); reports in {} (open {}/index.html)",
        info.bundle_id,
        settings.cameras.len(),
        settings.data_dir.display(),
        settings.data_dir.join("html").display()
    );

    let stats = Arc::new(DaemonStats::default());
    let monitor_stats = Arc::new(MonitorStats::default());
    let requests = RequestQueue::new(settings.monitor_queue);
    let looks: Arc<dyn Looks> = Arc::new(MonitorLooks {
        queue: requests.clone(),
        stats: Arc::clone(&stats),
    });
    let in_flight: InFlight = Arc::new(Mutex::new(None));
    let shared_settings = Arc::new(Mutex::new(settings.clone()));
    let (events, _) = tokio::sync::broadcast::channel(256);
    let stop_dispatch = CancellationToken::new();
    let dispatch = Dispatch {
        worker: worker.clone(),
        store: store.clone(),
        settings: Arc::clone(&shared_settings),
        stats: Arc::clone(&stats),
        in_flight: Arc::clone(&in_flight),
        beat: progress.stage("dispatcher"),
        events: events.clone(),
    };
    let mut pipeline = Some(start_pipeline(
        opened,
        Arc::clone(&looks),
        Arc::clone(&monitor_stats),
    )?);
    let cameras = Arc::new(Mutex::new(
        pipeline
            .as_ref()
            .map(|p| p.handles.clone())
            .unwrap_or_default(),
    ));
    let dispatcher = tokio::spawn(crate::stage::run_until_stop(
        "dispatcher",
        dispatch.run(requests.clone(), stop_dispatch.clone()),
    ));
    let handle = AppHandle {
        requests: requests.clone(),
        worker: worker.clone(),
        store: store.clone(),
        stats: Arc::clone(&stats),
        monitor_stats: Arc::clone(&monitor_stats),
        cameras: Arc::clone(&cameras),
        settings: Arc::clone(&shared_settings),
        events,
        shutdown: CancellationToken::new(),
    };
    // The publisher before the API serves, so /status never shows a configured [mqtt] as absent.
    let publisher = settings
        .mqtt
        .as_ref()
        .map(|m| crate::publish::start(m, handle.clone()))
        .transpose()?;
    let mut api_server = crate::api::serve(api, handle.clone());

    let voice = match crate::voice::start(&settings, handle.clone()) {
        Ok(Some(v)) => {
            log::info!("{}", v.summary);
            eprintln!("gemba: {}", v.summary);
            Some(v)
        }
        Ok(None) => None,
        Err(e) => {
            crate::stage::stages().disabled("voice", e.to_string());
            log::warn!("voice disabled: {e}");
            eprintln!("gemba: voice disabled: {e}");
            systemd::status(&format!(
                "serving {} ({} cameras); voice disabled: {e}",
                info.bundle_id,
                settings.cameras.len()
            ));
            None
        }
    };

    let housekeeping = CancellationToken::new();
    {
        let store = store.clone();
        let every = settings.store.check_every.0;
        let stop = housekeeping.clone();
        tokio::spawn(crate::stage::run_until_stop("retention", async move {
            let mut t = tokio::time::interval(every);
            t.tick().await;
            loop {
                tokio::select! { _ = stop.cancelled() => return, _ = t.tick() => {} }
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.enforce_retention()).await {
                    Ok(Ok(ev)) => log::debug!("retention: {ev:?}"),
                    Ok(Err(e)) => log::warn!("retention: {e}"),
                    Err(e) => log::warn!("retention task: {e}"),
                }
            }
        }));
    }
    // status.json with live counters every few seconds.
    {
        let handle = handle.clone();
        let stop = housekeeping.clone();
        let worker = worker.clone();
        let started = std::time::Instant::now();
        tokio::spawn(crate::stage::run_until_stop("status", async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! { _ = stop.cancelled() => return, _ = t.tick() => {} }
                let (h, w) = (handle.clone(), worker.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    let s = h.settings.lock().expect("poisoned").clone();
                    if let Err(e) = write_status_with(
                        &s.state_dir,
                        &w.info(),
                        w.is_loaded(),
                        &s.data_dir,
                        Some(h.counters(started)),
                    ) {
                        log::warn!("writing status.json: {e}");
                    }
                })
                .await;
            }
        }));
    }
    if let Some(period) = systemd::watchdog_period() {
        let progress = progress.clone();
        let stop = housekeeping.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(period / 2);
            loop {
                tokio::select! { _ = stop.cancelled() => return, _ = t.tick() => {} }
                progress.feed_watchdog(period);
            }
        });
    }

    let failed = crate::stage::stages().failed();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = failed.cancelled() => break,
            _ = async {
                match args.stop_after {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {
                log::info!("stopping after {:?} (--stop-after)", args.stop_after.unwrap_or_default());
                break;
            }
            _ = int.recv() => break,
            _ = hup.recv() => {
                systemd::reloading();
                log::info!("SIGHUP: reloading the config and the model");
                match settings_for(&args) {
                    Err(e) => log::error!("reload: the config is invalid, keeping the running one: {e:#}"),
                    Ok(mut new) => {
                        match worker.reload(&new.model.path, &new.providers).await {
                            Ok(info) => log::info!("reload: now serving {} ({})", info.bundle_id, &info.bundle_hash[..12]),
                            Err(e) => log::error!("reload: the new model did not load, the old one keeps serving: {e}"),
                        }
                        if let Some(p) = pipeline.take() {
                            p.stop().await;
                        }
                        match api_server.apply(&new.api).await {
                            Ok(changed) if changed.is_empty() => {}
                            Ok(changed) => {
                                for c in changed {
                                    log::info!("reload: api: {c}");
                                }
                            }
                            Err(e) => {
                                log::error!("reload: api: refused, keeping the running listener and token: {e}");
                                new.api = api_server.settings().clone();
                            }
                        }
                        match tokio::task::spawn_blocking({
                            let s = new.clone();
                            move || open_cameras(&s)
                        })
                        .await
                        .map_err(anyhow::Error::from)
                        .and_then(|r| r)
                        .and_then(|opened| start_pipeline(opened, Arc::clone(&looks), Arc::clone(&monitor_stats)))
                        {
                            Ok(p) => {
                                *cameras.lock().expect("poisoned") = p.handles.clone();
                                pipeline = Some(p);
                            }
                            Err(e) => log::error!("reload: cameras: {e:#}"),
                        }
                        *shared_settings.lock().expect("poisoned") = new;
                    }
                }
                let s = shared_settings.lock().expect("poisoned").clone();
                // Not ready if the model was unloaded (API) and the reload failed.
                if let Err(e) = write_status(&s.state_dir, &worker.info(), worker.is_loaded(), &s.data_dir) {
                    log::error!("writing status.json: {e}");
                }
                systemd::ready();
            }
        }
    }

    // Shutdown: sources first; everything downstream ends when its input closes.
    crate::stage::stages().stopping();
    systemd::stopping();
    systemd::status("stopping");
    log::info!("stopping: sources first, then the query in flight");
    handle.shutdown.cancel();
    if let Some(v) = voice {
        v.stop().await;
    }
    if let Some(p) = pipeline.take() {
        p.stop().await;
    }
    // The request in flight finishes; queued ones are dropped (their listeners are told).
    for r in requests.close() {
        r.drop_unanswered("the daemon is stopping");
    }
    stop_dispatch.cancel();
    let drain = shared_settings.lock().expect("poisoned").drain_deadline.0;
    let mut dispatcher = dispatcher;
    if tokio::time::timeout(drain, &mut dispatcher).await.is_err() {
        log::warn!("the request in flight did not finish within {drain:?}; stopping it (its report is marked incomplete)");
        if let Some(c) = in_flight.lock().expect("poisoned").as_ref() {
            c.cancel();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), dispatcher).await;
    }
    // The API stopped accepting at shutdown; its event streams have ended with their asks.
    if tokio::time::timeout(Duration::from_secs(5), api_server.stopped())
        .await
        .is_err()
    {
        log::warn!("api: connections still open after 5 s; closing them");
    }
    if let Some(p) = publisher {
        p.stop().await;
    }
    housekeeping.cancel();
    progress.retire("worker");
    progress.retire("dispatcher");
    let s = shared_settings.lock().expect("poisoned").clone();
    let _ = write_status(&s.state_dir, &worker.info(), false, &s.data_dir);
    log::info!(
        "stopped: {} queries, {} reports ({} incomplete), {} errors",
        stats.queries.load(Ordering::Relaxed),
        stats.reports.load(Ordering::Relaxed),
        stats.reports_incomplete.load(Ordering::Relaxed),
        stats.query_errors.load(Ordering::Relaxed) + stats.write_errors.load(Ordering::Relaxed)
    );
    let index = store
        .write_index_html()
        .unwrap_or_else(|_| s.data_dir.join("html/index.html"));
    eprintln!(
        "gemba: stopped; {} reports written ({} incomplete) in {} — open {} in a browser, or run `gemba report --data {} list`",
        stats.reports.load(Ordering::Relaxed),
        stats.reports_incomplete.load(Ordering::Relaxed),
        s.data_dir.display(),
        index.display(),
        s.data_dir.display()
    );
    let _ = SystemTime::now();
    // A stage that died stopped the daemon; exit non-zero so that systemd restarts it.
    match crate::stage::stages().first_failure() {
        Some(f) => Err(anyhow::anyhow!(
            "{f}; the daemon stopped (it must not run on without the stage)"
        )),
        None => Ok(()),
    }
}

fn stopped_during_start(signal: &str, phase: &str) -> Result<()> {
    log::info!("{signal} during start-up ({phase}): stopping without waiting for it");
    systemd::stopping();
    eprintln!("gemba: {signal} during start-up ({phase}); stopped");
    Ok(())
}
