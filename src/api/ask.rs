//! `POST /ask` and `GET /ask/{id}/events`: a question in, its answer out as server-sent events.
//!
//! What flows through: the request body (JSON `{text, cameras?, image?, audio?}` or multipart)
//! becomes an [`daemon::Request`](crate::daemon::Request) on the daemon's bounded queue, with the
//! named cameras' latest frames and the decoded image and audio. The request's listener feeds a
//! pump task that owns the ask's [`AskLog`]: every event, serialized once, numbered, appended.
//!
//! Streams: a client gets the log from where it is (`Last-Event-ID` resumes after an id), then
//! live events through its own bounded channel. The pump never waits on a client, so no client
//! can hold up the model: when a client's channel is full the event is dropped for that client
//! (drop newest, counted in `gemba_api_sse_overflow_events_total`), and the client's stream
//! fills the gap from the log once it reads again (it sees a jump in the ids). A client thus
//! loses nothing the log kept; the log keeps every sentence, `done` and `closed`, and up to
//! [`MAX_LOG_EVENTS`] token events (tokens past that are dropped for everyone and counted in
//! `gemba_api_sse_log_dropped_events_total`). Memory per ask: its log; per client: its channel.
//!
//! Event names and data are those of `gemba ask --json` (`token`, `sentence`, `done`); a final
//! `closed` event (`{"event":"closed","report_id","complete","error"}`) says the report is
//! written, and the stream ends.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::{report_id, Api, HttpError};
use crate::capture::{AudioClip, Frame};
use crate::daemon::{Request as AppRequest, RequestEvent};
use crate::model::constrain::ResponseFormat;
use crate::model::Event;
use crate::report::Trigger;

/// Longest question accepted, in characters.
pub const MAX_TEXT: usize = 16 * 1024;
/// Longest uploaded audio kept, in seconds: the model hears at most its `max_samples` (30 s at
/// 16 kHz, 60 s at 8 kHz), so the rest is never decoded.
pub const MAX_AUDIO_SECONDS: usize = 60;
/// Events kept per ask; token events beyond this are not kept (sentences always are).
pub const MAX_LOG_EVENTS: usize = 16 * 1024;
/// How long a closed ask's log stays for late or reconnecting clients.
pub const KEEP_CLOSED: Duration = Duration::from_secs(600);
/// Closed asks kept at most (oldest go first).
pub const MAX_KEPT: usize = 256;
/// Name of the uploaded image as a camera (in prompts, citations and the report).
pub const UPLOAD_CAMERA: &str = "upload";

/// One event of an ask, serialized once for every client.
#[derive(Debug, Clone)]
pub struct Item {
    pub seq: u64,
    /// `token`, `sentence`, `done` or `closed`.
    pub kind: &'static str,
    pub json: Arc<str>,
}

impl Item {
    /// Tokens may be left out of the log past its cap; the sentence carries their text.
    fn droppable(&self) -> bool {
        self.kind == "token"
    }
}

struct Subscriber {
    tx: mpsc::Sender<Item>,
}

#[derive(Default)]
struct LogInner {
    items: Vec<Item>,
    next_seq: u64,
    closed: bool,
    closed_at: Option<Instant>,
    subscribers: Vec<Subscriber>,
}

/// The events of one ask so far, and the clients following it.
pub struct AskLog {
    inner: Mutex<LogInner>,
    buffer: usize,
    metrics: Arc<Metrics>,
}

/// What [`AskLog::subscribe`] hands a client: the backlog, and the live channel unless closed.
pub struct Subscription {
    pub backlog: Vec<Item>,
    pub live: Option<mpsc::Receiver<Item>>,
}

impl AskLog {
    pub fn new(buffer: usize, metrics: Arc<Metrics>) -> AskLog {
        AskLog {
            inner: Mutex::new(LogInner::default()),
            buffer,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event and offers it to every client, never waiting (see the module docs for
    /// the drop policy). `closed` ends the log and the clients' channels.
    pub fn push(&self, kind: &'static str, json: String) {
        let mut g = self.lock();
        if g.closed {
            return;
        }
        let item = Item {
            seq: g.next_seq,
            kind,
            json: json.into(),
        };
        g.next_seq += 1;
        if item.droppable() && g.items.len() >= MAX_LOG_EVENTS {
            self.metrics.sse_log_dropped.inc();
        } else {
            g.items.push(item.clone());
        }
        let metrics = &self.metrics;
        g.subscribers.retain(|s| match s.tx.try_send(item.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The client's stream re-reads it from the log when it catches up.
                metrics.sse_overflow.inc();
                true
            }
        });
        if kind == "closed" {
            g.closed = true;
            g.closed_at = Some(Instant::now());
            g.subscribers.clear();
        }
    }

    /// The events after `after` (all with `None`), and a live channel unless the ask is closed.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let mut g = self.lock();
        let backlog: Vec<Item> = g
            .items
            .iter()
            .filter(|i| after.is_none_or(|a| i.seq > a))
            .cloned()
            .collect();
        let live = if g.closed {
            None
        } else {
            let (tx, rx) = mpsc::channel(self.buffer);
            g.subscribers.push(Subscriber { tx });
            Some(rx)
        };
        Subscription { backlog, live }
    }

    /// The kept events with `from <= seq < to` (`to`: `None` for all after `from`).
    pub fn range(&self, from: u64, to: Option<u64>) -> Vec<Item> {
        let g = self.lock();
        g.items
            .iter()
            .filter(|i| i.seq >= from && to.is_none_or(|t| i.seq < t))
            .cloned()
            .collect()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn closed_at(&self) -> Option<Instant> {
        self.lock().closed_at
    }
}

/// The asks of this API by report id, each kept [`KEEP_CLOSED`] after it closes.
pub struct Registry {
    asks: Mutex<HashMap<String, Arc<AskLog>>>,
    order: Mutex<VecDeque<String>>,
    permits: Arc<tokio::sync::Semaphore>,
    max_asks: usize,
    buffer: usize,
    metrics: Arc<Metrics>,
    /// Mean time a request took from queueing to its report closing (ms, moving average), for
    /// `Retry-After`.
    avg_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Registry {
    pub fn new(max_asks: usize, buffer: usize, metrics: Arc<Metrics>) -> Registry {
        Registry {
            asks: Mutex::new(HashMap::new()),
            order: Mutex::new(VecDeque::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(max_asks)),
            max_asks,
            buffer,
            metrics,
            avg_ms: AtomicU64::new(2000),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// A slot among the `max_asks` API questions at once (the OpenAI-compatible endpoint's too).
    pub(super) fn try_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// API asks queued or being answered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn get(&self, id: &str) -> Option<Arc<AskLog>> {
        self.asks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn insert(&self, id: &str) -> Arc<AskLog> {
        let log = Arc::new(AskLog::new(self.buffer, Arc::clone(&self.metrics)));
        let mut asks = self.asks.lock().unwrap_or_else(|e| e.into_inner());
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        // Forget closed asks past their time, and the oldest closed ones beyond the cap.
        let mut kept = Vec::with_capacity(order.len());
        let closed_total = order
            .iter()
            .filter(|id| asks.get(*id).is_some_and(|l| l.is_closed()))
            .count();
        let mut excess = (closed_total + 1).saturating_sub(MAX_KEPT);
        for old in order.drain(..) {
            let forget = match asks.get(&old) {
                None => true,
                Some(l) => match l.closed_at() {
                    Some(t) if t.elapsed() > KEEP_CLOSED => true,
                    Some(_) if excess > 0 => {
                        excess -= 1;
                        true
                    }
                    _ => false,
                },
            };
            if forget {
                asks.remove(&old);
            } else {
                kept.push(old);
            }
        }
        order.extend(kept);
        order.push_back(id.to_string());
        asks.insert(id.to_string(), Arc::clone(&log));
        log
    }

    /// Seconds a refused client should wait: the asks ahead of it times the recent mean time per
    /// request, between 1 s and 5 min.
    fn retry_after(&self, queued: usize) -> u64 {
        let ms = self.avg_ms.load(Ordering::Relaxed) * (queued as u64 + 1);
        (ms.div_ceil(1000)).clamp(1, 300)
    }

    fn record_duration(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        let old = self.avg_ms.load(Ordering::Relaxed);
        self.avg_ms.store((old * 7 + ms) / 8, Ordering::Relaxed);
    }
}

/// What `POST /ask` takes as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskBody {
    pub text: String,
    #[serde(default)]
    pub cameras: Vec<String>,
    /// A JPEG or PNG, base64.
    #[serde(default)]
    pub image: Option<String>,
    /// A WAV file, base64.
    #[serde(default)]
    pub audio: Option<String>,
    /// Constrained decoding: `{"type": "json_schema", "schema": …}`, `{"type": "choice",
    /// "choices": […]}` or `{"type": "regex", "pattern": …}`.
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
}

/// The parts of an ask once read (multipart files are bytes already).
#[derive(Default)]
struct AskParts {
    text: String,
    cameras: Vec<String>,
    image: Option<Vec<u8>>,
    audio: Option<Vec<u8>>,
    response_format: Option<ResponseFormat>,
}

fn unprocessable(msg: impl Into<String>) -> HttpError {
    HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, msg)
}

/// An uploaded file over `api.max_media_bytes`.
fn too_big(field: &str, len: usize, max: usize) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{field}: {len} bytes is over the api.max_media_bytes limit of {max} bytes"),
    )
}

fn b64(field: &str, s: &str, max: usize) -> Result<Vec<u8>, HttpError> {
    let s = s.trim();
    // Checked on the encoded length, before a decoded copy exists.
    let len = s.len() / 4 * 3;
    if len > max + 3 {
        return Err(too_big(field, len, max));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| unprocessable(format!("{field}: not base64: {e}")))?;
    if bytes.len() > max {
        return Err(too_big(field, bytes.len(), max));
    }
    Ok(bytes)
}

/// Reads the body's parts; uploaded files over `max_media` bytes are refused (413).
async fn read_parts(req: Request, max_media: usize) -> Result<AskParts, HttpError> {
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ctype.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| HttpError::new(e.status(), e.body_text()))?;
        let mut parts = AskParts::default();
        let mut text = None;
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| HttpError::new(e.status(), e.body_text()))?
        {
            let name = field.name().unwrap_or("").to_string();
            let data = field
                .bytes()
                .await
                .map_err(|e| HttpError::new(e.status(), e.body_text()))?;
            if matches!(name.as_str(), "image" | "audio") && data.len() > max_media {
                return Err(too_big(&name, data.len(), max_media));
            }
            let as_text = || {
                String::from_utf8(data.to_vec())
                    .map_err(|_| unprocessable(format!("field {name}: not UTF-8 text")))
            };
            match name.as_str() {
                "text" => text = Some(as_text()?),
                "cameras" => parts.cameras.extend(
                    as_text()?
                        .split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty()),
                ),
                "image" => parts.image = Some(data.to_vec()),
                "audio" => parts.audio = Some(data.to_vec()),
                "response_format" => {
                    parts.response_format =
                        Some(serde_json::from_str(&as_text()?).map_err(|e| {
                            HttpError::new(StatusCode::BAD_REQUEST, format!("response_format: {e}"))
                        })?)
                }
                other => {
                    return Err(unprocessable(format!(
                        "unknown field {other:?} (text, cameras, image, audio, response_format)"
                    )))
                }
            }
        }
        parts.text = text.ok_or_else(|| unprocessable("the field \"text\" is missing"))?;
        Ok(parts)
    } else if ctype.starts_with("application/json") {
        let Json(body) = Json::<AskBody>::from_request(req, &())
            .await
            .map_err(|e| HttpError::new(e.status(), e.body_text()))?;
        Ok(AskParts {
            text: body.text,
            cameras: body.cameras,
            image: body
                .image
                .as_deref()
                .map(|s| b64("image", s, max_media))
                .transpose()?,
            audio: body
                .audio
                .as_deref()
                .map(|s| b64("audio", s, max_media))
                .transpose()?,
            response_format: body.response_format,
        })
    } else {
        Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/json ({\"text\": …}) or multipart/form-data",
        ))
    }
}

/// A WAV file in memory → mono samples, decoded as `gemba ask --audio` decodes a file
/// (dr_wav's scaling), keeping at most [`MAX_AUDIO_SECONDS`].
pub(super) fn decode_wav(bytes: &[u8]) -> Result<AudioClip, HttpError> {
    use crate::media::speech;
    let pcm = speech::decode_wav_within(bytes, UPLOAD_CAMERA, &|rate| {
        Some(rate as usize * MAX_AUDIO_SECONDS)
    })
    .map_err(|e| unprocessable(e.to_string()))?;
    if !(8_000..=192_000).contains(&pcm.sample_rate) {
        return Err(unprocessable(format!(
            "audio {UPLOAD_CAMERA}: {} channels at {} Hz is not usable (8000 to 192000 Hz)",
            pcm.channels, pcm.sample_rate
        )));
    }
    let mut mono = Vec::with_capacity(pcm.samples.len() / usize::from(pcm.channels));
    crate::capture::mic::downmix_into(&pcm.samples, usize::from(pcm.channels), &mut mono);
    Ok(AudioClip {
        source: UPLOAD_CAMERA.into(),
        started_at: SystemTime::now(),
        sample_rate: pcm.sample_rate,
        samples: Arc::new(mono),
    })
}

/// The uploaded image's header, checked against `api.max_image_pixels` before anything is
/// decoded or queued (413 over the budget, 422 when it is not a PNG or JPEG header).
pub(super) fn check_image_header(bytes: &[u8], max_pixels: u64) -> Result<(), HttpError> {
    let h = crate::media::vision::read_header(bytes, UPLOAD_CAMERA)
        .map_err(|e| unprocessable(e.to_string()))?;
    let pixels = h.width as u64 * h.height as u64;
    if pixels > max_pixels {
        return Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "image {UPLOAD_CAMERA}: its {} header says {}x{} = {pixels} pixels, over the api.max_image_pixels \
                 limit of {max_pixels}; nothing was decoded",
                h.format, h.width, h.height
            ),
        ));
    }
    Ok(())
}

/// Decodes an uploaded PNG or JPEG with the decoder of `gemba ask --image` (JPEG with libjpeg
/// 9's arithmetic, truncated and CMYK files refused), so the model sees the same pixels.
pub(super) fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<Frame, HttpError> {
    let img = crate::media::vision::decode_image_within(bytes, UPLOAD_CAMERA, max_pixels as usize)
        .map_err(|e| unprocessable(e.to_string()))?;
    let side = |v: usize| u32::try_from(v).expect("sides are at most 16384");
    Ok(Frame {
        camera: UPLOAD_CAMERA.into(),
        seq: 0,
        captured_at: SystemTime::now(),
        width: side(img.width),
        height: side(img.height),
        rgb: Arc::new(img.rgb),
    })
}

/// `POST /ask`: queues the question; answers `202 {report_id, events, report}` once the
/// report exists (after the requests ahead of it have started).
pub async fn post_ask(State(api): State<Api>, req: Request) -> Result<Response, HttpError> {
    let inner = &api.inner;
    let app = &inner.app;
    let reg = &inner.asks;
    if app.shutdown.is_cancelled() {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is stopping",
        ));
    }
    let limits = app.settings.lock().expect("poisoned").api.clone();
    let parts = match tokio::time::timeout(
        limits.body_timeout.0,
        read_parts(req, limits.max_media_bytes.0 as usize),
    )
    .await
    {
        Ok(parts) => parts?,
        Err(_) => {
            return Err(HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within api.body_timeout ({})",
                    humantime::format_duration(limits.body_timeout.0)
                ),
            ))
        }
    };
    // A format that cannot compile (a bad schema or expression, an unsatisfiable schema) is the
    // requester's error, named before the question takes a slot.
    if let Some(f) = &parts.response_format {
        f.validate().map_err(|e| {
            HttpError::new(StatusCode::BAD_REQUEST, format!("response_format: {e}"))
        })?;
    }
    let text = parts.text.trim().to_string();
    if text.is_empty() {
        return Err(unprocessable("text: the question is empty"));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT {
        return Err(unprocessable(format!(
            "text: {chars} characters; at most {MAX_TEXT}"
        )));
    }
    if !app.worker.is_loaded() {
        inner.metrics.asks_rejected("unloaded");
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::daemon::worker::NOT_LOADED,
        ));
    }
    let mut frames = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in &parts.cameras {
        if !seen.insert(name.clone()) {
            continue;
        }
        let known: Vec<String> = app
            .cameras
            .lock()
            .expect("poisoned")
            .iter()
            .map(|c| c.name.clone())
            .collect();
        if !known.contains(name) {
            return Err(unprocessable(format!(
                "cameras: no camera named {name:?} (cameras: {})",
                known.join(", ")
            )));
        }
        match app.latest_frame(name) {
            Some(f) => frames.push(f),
            None => {
                return Err(HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("camera {name} has no frame yet"),
                )
                .retry_after(1))
            }
        }
    }
    // The image's size from its header: a decompression bomb is refused here, before it takes
    // an ask slot and before a pixel is decoded.
    if let Some(bytes) = &parts.image {
        check_image_header(bytes, limits.max_image_pixels)?;
    }

    let queued = app.requests.len();
    let Ok(permit) = Arc::clone(&reg.permits).try_acquire_owned() else {
        inner.metrics.asks_rejected("busy");
        return Err(HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} questions are already queued or being answered; try again later",
                reg.max_asks
            ),
        )
        .retry_after(reg.retry_after(reg.max_asks.max(queued))));
    };
    // Decoding is CPU work on untrusted bytes: off the async threads, and only with an ask slot
    // held, so at most `max_asks` uploads are decoded at once (each within its pixel budget).
    let max_pixels = limits.max_image_pixels;
    let response_format = parts.response_format.clone();
    let (image, audio) = super::blocking(move || {
        let image = parts
            .image
            .as_deref()
            .map(|b| decode_image(b, max_pixels))
            .transpose()?;
        let audio = parts.audio.as_deref().map(decode_wav).transpose()?;
        Ok::<_, HttpError>((image, audio))
    })
    .await??;
    frames.extend(image);
    let cameras: Vec<String> = frames.iter().map(|f| f.camera.clone()).collect();
    let (ltx, mut lrx) = mpsc::unbounded_channel();
    let mut r = AppRequest::new(Trigger::Api, text);
    r.reason = "POST /ask".into();
    r.frames = frames;
    r.audio = audio.into_iter().collect();
    r.listener = Some(ltx);
    r.overrides.response_format = response_format;
    if app.try_submit(r).is_err() {
        inner.metrics.asks_rejected("queue_full");
        return Err(HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "the model's request queue is full; try again later",
        )
        .retry_after(reg.retry_after(queued)));
    }
    inner.metrics.asks_accepted.inc();
    reg.in_flight.fetch_add(1, Ordering::Relaxed);
    let queued_at = Instant::now();

    // The pump owns the listener from here, so the ask keeps its slot and its log even if this
    // client goes away before the report starts.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Result<String, String>>();
    let api2 = api.clone();
    tokio::spawn(async move {
        let reg = &api2.inner.asks;
        let mut started = Some(started_tx);
        let mut log: Option<Arc<AskLog>> = None;
        while let Some(ev) = lrx.recv().await {
            match ev {
                RequestEvent::Started { report_id } => {
                    log = Some(reg.insert(&report_id));
                    if let Some(s) = started.take() {
                        let _ = s.send(Ok(report_id));
                    }
                }
                RequestEvent::Event(e) => {
                    if let Some(l) = &log {
                        let kind = match &e {
                            Event::Token(_) => "token",
                            Event::Sentence(_) => "sentence",
                            Event::Done(_) => "done",
                        };
                        let mut data = serde_json::to_value(&e).unwrap_or_default();
                        if let Event::Sentence(s) = &e {
                            // The regions its markers cite, beside the text as generated.
                            data["regions"] =
                                json!(crate::report::cite::cite(&s.text, &cameras).regions);
                        }
                        l.push(kind, data.to_string());
                    }
                }
                RequestEvent::Closed {
                    report_id,
                    complete,
                    error,
                } => {
                    match &log {
                        Some(l) => l.push(
                            "closed",
                            json!({ "event": "closed", "report_id": report_id, "complete": complete, "error": error })
                                .to_string(),
                        ),
                        None => {
                            if let Some(s) = started.take() {
                                let _ = s.send(Err(error.unwrap_or_else(|| "the request was dropped".into())));
                            }
                        }
                    }
                    break;
                }
            }
        }
        // The listener closed without `Closed`: the daemon dropped the request (stopping).
        if let Some(l) = &log {
            l.push("closed", json!({ "event": "closed", "report_id": null, "complete": false, "error": "the daemon stopped before the answer was finished" }).to_string());
        }
        if let Some(s) = started.take() {
            let _ = s.send(Err(
                "the daemon stopped before the question was answered".into()
            ));
        }
        reg.record_duration(queued_at.elapsed());
        reg.in_flight.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    });
    match started_rx.await {
        Ok(Ok(id)) => {
            let body = json!({
                "report_id": id,
                "events": format!("/ask/{id}/events"),
                "report": format!("/reports/{id}"),
            });
            let mut res = (StatusCode::ACCEPTED, Json(body)).into_response();
            if let Ok(v) = format!("/reports/{id}").parse() {
                res.headers_mut().insert(header::LOCATION, v);
            }
            Ok(res)
        }
        Ok(Err(e)) => Err(HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e)),
        Err(_) => Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the question was dropped",
        )),
    }
}

/// Counts open streams for the metrics; decremented when the stream is dropped.
struct ClientGuard(Arc<Metrics>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.sse_clients.dec();
    }
}

fn sse_event(i: &Item) -> SseEvent {
    SseEvent::default()
        .id(i.seq.to_string())
        .event(i.kind)
        .data(&*i.json)
}

/// `GET /ask/{id}/events`: the ask's events as server-sent events — what the client missed
/// first (all, or after `Last-Event-ID`), then live until `closed`.
pub async fn events(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let id = report_id(&id)?;
    let log = api.inner.asks.get(id.as_str()).ok_or_else(|| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no event stream for {id}: streams exist for questions asked through this API and are kept {} s after they close; the report is at /reports/{id}",
                KEEP_CLOSED.as_secs()
            ),
        )
    })?;
    let after = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        None => None,
        Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("Last-Event-ID {v:?} is not an event id of this stream"),
            )
        })?),
    };
    let metrics = Arc::clone(&api.inner.metrics);
    metrics.sse_clients.inc();
    let guard = ClientGuard(metrics);
    let out = follow(log, after).map(move |i| {
        let _keep = &guard;
        Ok::<_, Infallible>(sse_event(&i))
    });
    Ok(sse(out))
}

/// An ask's events for one client, in order and without gaps: the backlog after `after`, then
/// live items; a jump in ids (items dropped while the client's channel was full) is filled from
/// the log, and so is the end if `closed` itself did not fit.
pub fn follow(log: Arc<AskLog>, after: Option<u64>) -> impl Stream<Item = Item> + Send {
    let sub = log.subscribe(after);
    let next = sub
        .backlog
        .last()
        .map(|i| i.seq + 1)
        .or(after.map(|a| a + 1))
        .unwrap_or(0);
    let backlog = stream::iter(sub.backlog);
    let live = match sub.live {
        None => stream::empty().boxed(),
        Some(rx) => stream::unfold(
            (rx, next, log, false),
            |(mut rx, next, log, ended)| async move {
                if ended {
                    return None;
                }
                match rx.recv().await {
                    // At or before what the client has (a Last-Event-ID beyond the log's end).
                    Some(item) if item.seq < next => {
                        Some((stream::iter(Vec::new()), (rx, next, log, false)))
                    }
                    Some(item) => {
                        let mut items = if item.seq > next {
                            log.range(next, Some(item.seq))
                        } else {
                            Vec::new()
                        };
                        let next = item.seq + 1;
                        items.push(item);
                        Some((stream::iter(items), (rx, next, log, false)))
                    }
                    // Closed: whatever the channel could not take is in the log.
                    None => {
                        let rest = log.range(next, None);
                        Some((stream::iter(rest), (rx, next, log, true)))
                    }
                }
            },
        )
        .flatten()
        .boxed(),
    };
    backlog.chain(live)
}

fn sse<S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static>(s: S) -> Response {
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut mpsc::Receiver<Item>) -> Vec<Item> {
        let mut v = Vec::new();
        while let Ok(i) = rx.try_recv() {
            v.push(i);
        }
        v
    }

    #[test]
    fn late_clients_get_the_backlog_then_live_events_in_order() {
        let m = Arc::new(Metrics::new());
        let log = AskLog::new(8, Arc::clone(&m));
        log.push("token", "t0".into());
        log.push("sentence", "s0".into());
        let mut sub = log.subscribe(None);
        assert_eq!(
            sub.backlog.iter().map(|i| i.seq).collect::<Vec<_>>(),
            [0, 1]
        );
        log.push("token", "t1".into());
        log.push("done", "d".into());
        log.push("closed", "c".into());
        let live = drain(sub.live.as_mut().unwrap());
        assert_eq!(
            live.iter().map(|i| (i.seq, i.kind)).collect::<Vec<_>>(),
            [(2, "token"), (3, "done"), (4, "closed")]
        );
        // The channel ends after `closed`.
        assert!(matches!(
            sub.live.unwrap().try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        // Resuming after id 2, and a client arriving after the end: no live channel.
        let resumed = log.subscribe(Some(2));
        assert_eq!(
            resumed.backlog.iter().map(|i| i.seq).collect::<Vec<_>>(),
            [3, 4]
        );
        assert!(resumed.live.is_none());
        // Nothing more is appended once closed.
        log.push("token", "late".into());
        assert_eq!(log.subscribe(None).backlog.len(), 5);
    }

    fn collect(st: impl Stream<Item = Item>) -> Vec<Item> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(st.collect::<Vec<_>>())
    }

    #[test]
    fn a_full_client_channel_never_blocks_the_producer_and_the_client_still_gets_everything() {
        let m = Arc::new(Metrics::new());
        let log = Arc::new(AskLog::new(4, Arc::clone(&m)));
        log.push("token", "t0".into());
        // One client that reads nothing while 20 more events arrive; another that keeps up.
        let slow = follow(Arc::clone(&log), None);
        let mut fast = log.subscribe(Some(0)).live.unwrap();
        let mut fast_seen = Vec::new();
        for t in 1..20 {
            log.push(
                if t % 5 == 0 { "sentence" } else { "token" },
                format!("e{t}"),
            );
            fast_seen.extend(drain(&mut fast));
        }
        log.push("done", "d".into());
        log.push("closed", "c".into());
        fast_seen.extend(drain(&mut fast));
        assert_eq!(
            fast_seen.len(),
            21,
            "the reader that keeps up gets each event live"
        );
        // The slow client's channel held 4; the other 17 overflowed, sentences and `closed`
        // included, and were counted…
        assert_eq!(m.sse_overflow.get(), 17);
        // …yet its stream is complete and in order: the gaps were filled from the log.
        let got = collect(slow);
        assert_eq!(
            got.iter().map(|i| i.seq).collect::<Vec<_>>(),
            (0..22).collect::<Vec<_>>()
        );
        assert_eq!(got.last().unwrap().kind, "closed");
    }

    #[test]
    fn a_resumed_stream_starts_after_the_last_event_id() {
        let m = Arc::new(Metrics::new());
        let log = Arc::new(AskLog::new(4, m));
        for t in 0..6 {
            log.push("token", format!("t{t}"));
        }
        log.push("closed", "c".into());
        assert_eq!(
            collect(follow(Arc::clone(&log), Some(3)))
                .iter()
                .map(|i| i.seq)
                .collect::<Vec<_>>(),
            [4, 5, 6]
        );
        assert!(collect(follow(Arc::clone(&log), Some(6))).is_empty());
        assert!(collect(follow(log, Some(100))).is_empty());
    }

    #[test]
    fn the_log_keeps_sentences_past_its_token_cap() {
        let m = Arc::new(Metrics::new());
        let log = AskLog::new(4, Arc::clone(&m));
        for _ in 0..MAX_LOG_EVENTS + 10 {
            log.push("token", "t".into());
        }
        log.push("sentence", "s".into());
        let b = log.subscribe(None).backlog;
        assert_eq!(b.len(), MAX_LOG_EVENTS + 1);
        assert_eq!(b.last().unwrap().kind, "sentence");
        assert_eq!(m.sse_log_dropped.get(), 10);
    }

    #[test]
    fn the_registry_forgets_the_oldest_closed_asks_beyond_its_cap() {
        let m = Arc::new(Metrics::new());
        let reg = Registry::new(4, 4, m);
        let open = reg.insert("open-one");
        for i in 0..MAX_KEPT + 5 {
            reg.insert(&format!("r{i}")).push("closed", "{}".into());
        }
        assert!(reg.get("r0").is_none() && reg.get("r4").is_none());
        assert!(reg.get(&format!("r{}", MAX_KEPT + 4)).is_some());
        assert!(
            reg.get("open-one").is_some(),
            "an open ask is never forgotten"
        );
        drop(open);
    }

    #[test]
    fn wav_and_image_uploads_decode_or_fail_clearly() {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let spec = hound::WavSpec {
                channels: 2,
                sample_rate: 16_000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::new(&mut buf, spec).unwrap();
            for i in 0..320 {
                w.write_sample((i * 50) as i16).unwrap();
                w.write_sample((i * 50) as i16).unwrap();
            }
            w.finalize().unwrap();
        }
        let clip = decode_wav(buf.get_ref()).unwrap();
        assert_eq!((clip.sample_rate, clip.samples.len()), (16_000, 320));
        assert!((clip.samples[100] - 5000.0 / 32768.0).abs() < 1e-6);
        assert!(decode_wav(b"RIFF....not a wav")
            .unwrap_err()
            .msg
            .starts_with("audio upload:"));
        let e = decode_image(b"\x89PNG\r\n\x1a\nbroken", 1 << 20).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            e.msg.starts_with("image upload:") && e.msg.contains("PNG") && !e.msg.contains("JPEG"),
            "{}",
            e.msg
        );
    }
}
