//! The request types every stage uses to reach the model: a [`Request`] (from the monitor, the
//! local API, a voice utterance, MQTT), the [`RequestEvent`]s its listener receives, the
//! [`FollowUp`] a requester adds once generation has ended, and the [`AppHandle`] through which
//! the API, voice and the publisher reach the running daemon.
//!
//! In: requests built by the stages. Out: the one [`RequestQueue`] (`try_submit`, never
//! blocking). Whatever the queue drops for a newcomer is counted and its listener told
//! (`Closed` with the reason); a listener that went away is not an error.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cameras::CameraHandle;
use super::queue::{Class, Pushed, Refused, RequestQueue};
use super::status::{process_usage, CameraCounters, Counters, DaemonStats};
use super::worker::{GenOverrides, Worker};
use crate::config::Settings;
use crate::model::{CancelToken, Event};
use crate::monitor::{Looks, MonitorStats, Offer, Query};
use crate::report::{Store, Trigger};

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
    pub overrides: GenOverrides,
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
    pub(crate) fn drop_unanswered(self, why: &str) {
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
    pub events: tokio::sync::broadcast::Sender<LiveEvent>,
    /// Cancelled when the daemon stops.
    pub shutdown: CancellationToken,
    /// Alert rules and their states (src/alerts/).
    pub alerts: Arc<crate::alerts::Alerts>,
}

/// One event of a report being generated, as broadcast to live listeners.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub report_id: String,
    /// The query's cameras: the names its `[cam:NAME box:…]` markers may cite.
    pub cameras: Arc<[String]>,
    pub event: Event,
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
pub(crate) fn submit(
    queue: &RequestQueue,
    stats: &DaemonStats,
    req: Request,
) -> Result<(), Box<Request>> {
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

/// The monitor's looks go straight into the request queue as routine looks.
pub(crate) struct MonitorLooks {
    pub(crate) queue: RequestQueue,
    pub(crate) stats: Arc<DaemonStats>,
    pub(crate) alerts: Arc<crate::alerts::Alerts>,
}

impl Looks for MonitorLooks {
    fn undecided(&self, camera: &str) -> bool {
        self.alerts.undecided(camera)
    }

    fn offer(&self, q: Query) -> Offer {
        let camera = q
            .frames
            .first()
            .map(|f| f.camera.clone())
            .unwrap_or_default();
        // A camera with alert rules: an alert look — its rules on this frame, then the routine
        // look on the same frame, in one request (two requests would let a camera's alert looks,
        // ranked higher, starve its routine looks on a busy model).
        let rules = self.alerts.has_rules(&camera);
        let mut r = Request::new(Trigger::Monitor { camera }, q.prompt);
        if rules {
            r.class = Class::Alert;
        }
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
