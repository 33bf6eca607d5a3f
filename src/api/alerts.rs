//! Alerts and the live board over HTTP.
//!
//! | route | what |
//! |---|---|
//! | `GET /alerts` | every rule's current state (camera, rule, state, severity, since, last answer, report) |
//! | `GET /alerts/events` | SSE: each change of a rule's state, as it is persisted |
//! | `GET /events` | SSE for the board: alert changes, the sentences of answers in progress (with their camera), reports closing |
//! | `GET /cameras/{name}/frame` | a camera's latest frame as JPEG |
//! | `GET /` | the live board page (one file, no external assets) |
//!
//! In: the daemon's [`Alerts`](crate::alerts::Alerts) (states, the events broadcast) and its
//! events broadcast of every request. Out: JSON, SSE, JPEG, HTML. Drop policy: both streams
//! follow broadcasts of 256; a client that falls behind gets a `lagged` event with the number
//! missed (and reads `GET /alerts` for the states) — it never holds up the model.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::{blocking, Api, HttpError};
use crate::model::Event;

/// `GET /alerts`.
pub async fn list(State(api): State<Api>) -> Json<Value> {
    let a = &api.inner.app.alerts;
    Json(json!({ "alerts": a.snapshot(), "raised": a.raised() }))
}

fn sse<S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static>(s: S) -> Response {
    let mut r = Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn lagged(n: u64) -> SseEvent {
    SseEvent::default()
        .event("lagged")
        .data(json!({ "missed": n }).to_string())
}

/// Ends with the daemon's shutdown, so the API's graceful stop is not held by open streams.
fn until_shutdown<S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static>(
    api: &Api,
    s: S,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let stop = api.inner.app.shutdown.clone();
    s.take_until(async move { stop.cancelled_owned().await })
}

/// `GET /alerts/events`: `event: alert`, `data:` the change as JSON (see `AlertEvent`).
pub async fn events(State(api): State<Api>) -> Response {
    let rx = api.inner.app.alerts.subscribe();
    let s = tokio_stream_of(rx, |ev| {
        SseEvent::default()
            .event("alert")
            .data(serde_json::to_string(&ev).unwrap_or_default())
    });
    sse(until_shutdown(&api, s))
}

/// `GET /events`: what the board shows live.
/// - `alert`: a rule's change (as on `/alerts/events`);
/// - `sentence`: `{report_id, camera, trigger, index, text}` of an answer in progress;
/// - `done`: `{report_id, camera, trigger}` when an answer ends (the board reloads its reports).
pub async fn board_events(State(api): State<Api>) -> Response {
    let alerts = tokio_stream_of(api.inner.app.alerts.subscribe(), |ev| {
        SseEvent::default()
            .event("alert")
            .data(serde_json::to_string(&ev).unwrap_or_default())
    });
    let store = api.inner.app.store.clone();
    let rx = api.inner.app.events.subscribe();
    // report id → (camera, trigger), looked up once per report.
    let answers = stream::unfold(
        (rx, HashMap::<String, (Option<String>, String)>::new()),
        move |(mut rx, mut known)| {
            let store = store.clone();
            async move {
                loop {
                    let (id, cameras, ev) = match rx.recv().await {
                        Ok(x) => (x.report_id, x.cameras, x.event),
                        Err(RecvError::Lagged(n)) => return Some((Ok(lagged(n)), (rx, known))),
                        Err(RecvError::Closed) => return None,
                    };
                    let (name, body) = match &ev {
                        Event::Sentence(s) => {
                            let cited = crate::report::cite::cite(&s.text, &cameras);
                            (
                                "sentence",
                                json!({
                                    "index": s.index,
                                    "text": cited.text,
                                    "regions": cited.regions,
                                }),
                            )
                        }
                        Event::Done(_) => ("done", json!({})),
                        Event::Token(_) => continue,
                    };
                    if !known.contains_key(&id) {
                        if known.len() > 64 {
                            known.clear();
                        }
                        let (s, rid) = (store.clone(), id.clone());
                        let who = tokio::task::spawn_blocking(move || {
                            let r = crate::report::ReportId::parse(&rid)
                                .ok()
                                .and_then(|r| s.get(&r).ok());
                            r.map(|r| (r.meta.cameras.first().cloned(), r.meta.trigger.to_string()))
                        })
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or((None, String::new()));
                        known.insert(id.clone(), who);
                    }
                    let (camera, trigger) = known.get(&id).cloned().unwrap_or_default();
                    let mut body = body;
                    body["report_id"] = json!(id);
                    body["camera"] = json!(camera);
                    body["trigger"] = json!(trigger);
                    let ev = SseEvent::default().event(name).data(body.to_string());
                    return Some((Ok(ev), (rx, known)));
                }
            }
        },
    );
    sse(until_shutdown(&api, stream::select(alerts, answers)))
}

fn tokio_stream_of<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
    f: impl Fn(T) -> SseEvent + Send + Sync + 'static + Copy,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    stream::unfold(rx, move |mut rx| async move {
        match rx.recv().await {
            Ok(v) => Some((Ok(f(v)), rx)),
            Err(RecvError::Lagged(n)) => Some((Ok(lagged(n)), rx)),
            Err(RecvError::Closed) => None,
        }
    })
}

/// `GET /cameras/{name}/frame`: the camera's latest frame, JPEG.
pub async fn frame(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, HttpError> {
    let f = api.inner.app.latest_frame(&name).ok_or_else(|| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            format!("no camera {name:?} with a frame (GET /status lists the cameras)"),
        )
    })?;
    let jpeg = blocking(move || -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
            .encode(&f.rgb, f.width, f.height, image::ExtendedColorType::Rgb8)
            .map_err(|e| {
                HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding the frame: {e}"),
                )
            })?;
        Ok(out)
    })
    .await??;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        jpeg,
    )
        .into_response())
}

/// The board page: HTML, CSS and script in one file (works offline, on a tablet).
pub const BOARD_HTML: &str = include_str!("board.html");

/// `GET /`.
pub async fn board() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        BOARD_HTML,
    )
        .into_response()
}
