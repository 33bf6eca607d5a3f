//! The dispatcher: takes requests from the queue one at a time, hands each to the model worker
//! and writes its report as the events come (cited frames, sentences, the requester's follow-up),
//! telling the request's listener and the daemon's event broadcast along the way.
//!
//! In: [`Request`]s popped from the [`RequestQueue`] (highest class first). Out: one report per
//! request in the store; [`RequestEvent`]s to the request's listener (unbounded: one request's
//! events, dropped silently if the listener went away); `(report id, Event)` on the broadcast
//! (bounded; a slow subscriber misses events, never slows generation).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::queue::{Class, RequestQueue};
use super::request::{FollowUp, Request, RequestEvent};
use super::status::DaemonStats;
use super::worker::{AskInput, AskSettings, Job, JobEvent, Worker};
use crate::config::Settings;
use crate::model::{CancelToken, Event};
use crate::report::{ReportMeta, ReportStats, Store, TextTimings};
use crate::systemd::Beat;

/// The cancel handle of the generation in flight, so shutdown can stop it.
pub(crate) type InFlight = Arc<Mutex<Option<CancelToken>>>;

/// Everything one request needs to become a report.
pub(crate) struct Dispatch {
    pub(crate) worker: Worker,
    pub(crate) store: Store,
    pub(crate) settings: Arc<Mutex<Settings>>,
    pub(crate) stats: Arc<DaemonStats>,
    pub(crate) in_flight: InFlight,
    pub(crate) beat: Beat,
    pub(crate) events: tokio::sync::broadcast::Sender<super::request::LiveEvent>,
    pub(crate) alerts: Arc<crate::alerts::Alerts>,
}

impl Dispatch {
    /// Serves requests one at a time until `stop` (the request in flight is finished first).
    pub(crate) async fn run(self, requests: RequestQueue, stop: CancellationToken) {
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
                error: Some(super::worker::NOT_LOADED.into()),
            });
            return;
        }
        let info = self.worker.info();
        if req.class == Class::Alert {
            if let Some(frame) = req.frames.first() {
                *self.in_flight.lock().expect("poisoned") = Some(req.cancel.clone());
                let ctx = crate::alerts::look::LookCtx {
                    worker: &self.worker,
                    store: &self.store,
                    settings: &self.settings,
                    alerts: &self.alerts,
                    info: &info,
                };
                crate::alerts::look::run(&ctx, frame, &req.cancel).await;
                *self.in_flight.lock().expect("poisoned") = None;
            }
            // Then the routine look on the same frame (its encoding is reused).
            if req.prompt.is_empty() || req.cancel.is_cancelled() {
                return;
            }
        }
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
        let cameras: Arc<[String]> = frames.iter().map(|f| f.camera.clone()).collect();
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
                let _ = self.events.send(super::request::LiveEvent {
                    report_id: report_id.clone(),
                    cameras: cameras.clone(),
                    event: e.clone(),
                });
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
                            .chain(p.crops.iter())
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
                // The writer fills in its own counts (dropped regions).
                ..Default::default()
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
