//! The OpenAI-compatible endpoints: `POST /v1/chat/completions` and `GET /v1/models`, so chat
//! front-ends, Frigate's GenAI and the official `openai` clients can talk to the board.
//!
//! What flows in: a chat request — messages whose content is text or parts (`text`,
//! `image_url` with a `data:` URI, `input_audio` with base64 WAV), `stream`, `max_tokens` /
//! `max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`. It becomes an
//! [`daemon::Request`](crate::daemon::Request) with trigger `api` (so every call is also a report),
//! with the per-request [`GenOverrides`]. What flows out: a `chat.completion`, or with
//! `stream: true` OpenAI's server-sent chunks (`data: {chat.completion.chunk}` … `data: [DONE]`).
//!
//! Choices made here: the answer streams a sentence per chunk (gemba's unit; citation markers
//! are taken out, as in reports), not a token per chunk. The `model` field is accepted and
//! ignored: the board answers with the bundle it has loaded (`GET /v1/models` names it).
//! Earlier turns of a conversation go into the question as context; the last user message is
//! the question, and a `system` (or `developer`) message replaces the configured system prompt.
//! `max_tokens` is capped by the config's `model.max_new_tokens`. Errors are OpenAI-shaped
//! (`{"error": {"message", "type", "param", "code"}}`); the bearer token rules are the API's.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::Api;
use crate::daemon::worker::GenOverrides;
use crate::daemon::{Request as AppRequest, RequestEvent};
use crate::model::{Event, StopReason};
use crate::report::Trigger;

/// An OpenAI-shaped error.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    retry_after: Option<u64>,
}

impl OpenAiError {
    fn invalid(param: Option<&'static str>, message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            retry_after: None,
        }
    }
    fn too_large(message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            ..Self::invalid(Some("messages"), message)
        }
    }
    fn bad_json(message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            ..Self::invalid(None, message)
        }
    }
    fn unavailable(message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            retry_after: None,
        }
    }
    fn busy(message: impl Into<String>, retry_after: u64) -> OpenAiError {
        OpenAiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            kind: "rate_limit_error",
            param: None,
            retry_after: Some(retry_after),
        }
    }
    fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": null } })
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(s),
            );
        }
        r
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    System,
    Developer,
    User,
    Assistant,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
    InputAudio { input_audio: InputAudio },
}

#[derive(Debug, Deserialize)]
struct ImageUrl {
    url: String,
}

#[derive(Debug, Deserialize)]
struct InputAudio {
    data: String,
    format: AudioFormat,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AudioFormat {
    Wav,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: Role,
    content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The request; unknown members are ignored (clients send many).
#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    messages: Vec<Message>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
}

/// A request checked and turned into what the daemon takes.
struct Prepared {
    text: String,
    images: Vec<Vec<u8>>,
    audio: Vec<Vec<u8>>,
    overrides: GenOverrides,
    stream: bool,
    include_usage: bool,
}

fn data_uri(url: &str) -> Result<Vec<u8>, OpenAiError> {
    let param = Some("messages");
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(OpenAiError::invalid(
            param,
            "image_url: only data: URIs (data:image/png;base64,…) are taken; this board does not fetch URLs",
        ));
    };
    let (head, data) = rest.split_once(',').ok_or_else(|| {
        OpenAiError::invalid(param, "image_url: a data: URI needs a ',' before its data")
    })?;
    if !head.ends_with(";base64") {
        return Err(OpenAiError::invalid(
            param,
            "image_url: the data: URI must be base64 (data:image/jpeg;base64,…)",
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| OpenAiError::invalid(param, format!("image_url: not base64: {e}")))
}

fn prepare(req: ChatRequest, max_new_tokens: usize) -> Result<Prepared, OpenAiError> {
    if req.messages.is_empty() {
        return Err(OpenAiError::invalid(
            Some("messages"),
            "messages: at least one message",
        ));
    }
    let mut system = None;
    let mut turns: Vec<(String, String)> = Vec::new();
    let mut images = Vec::new();
    let mut audio = Vec::new();
    let last_user = req
        .messages
        .iter()
        .rposition(|m| matches!(m.role, Role::User));
    let Some(last_user) = last_user else {
        return Err(OpenAiError::invalid(
            Some("messages"),
            "messages: no user message to answer",
        ));
    };
    for (i, m) in req.messages.into_iter().enumerate() {
        let mut text = String::new();
        match m.content {
            Content::Text(t) => text = t,
            Content::Parts(parts) => {
                for p in parts {
                    match p {
                        Part::Text { text: t } => {
                            if !text.is_empty() {
                                text.push('\n');
                            }
                            text.push_str(&t);
                        }
                        // Media of earlier turns is not shown again: the model sees the question's.
                        Part::ImageUrl { image_url } if i == last_user => {
                            images.push(data_uri(&image_url.url)?)
                        }
                        Part::InputAudio { input_audio } if i == last_user => {
                            let AudioFormat::Wav = input_audio.format;
                            audio.push(
                                base64::engine::general_purpose::STANDARD
                                    .decode(input_audio.data.trim())
                                    .map_err(|e| {
                                        OpenAiError::invalid(
                                            Some("messages"),
                                            format!("input_audio: not base64: {e}"),
                                        )
                                    })?,
                            );
                        }
                        Part::ImageUrl { .. } | Part::InputAudio { .. } => {}
                    }
                }
            }
        }
        match m.role {
            Role::System | Role::Developer => system = Some(text),
            Role::User => turns.push(("user".into(), text)),
            Role::Assistant => turns.push(("assistant".into(), text)),
        }
    }
    let (_, question) = turns.pop().expect("the last user message");
    let text = if turns.is_empty() {
        question
    } else {
        let history: Vec<String> = turns.iter().map(|(r, t)| format!("{r}: {t}")).collect();
        format!(
            "Earlier in this conversation:\n{}\n\n{question}",
            history.join("\n")
        )
    };
    if text.trim().is_empty() && images.is_empty() && audio.is_empty() {
        return Err(OpenAiError::invalid(
            Some("messages"),
            "the user message is empty",
        ));
    }
    let chars = text.chars().count();
    if chars > super::ask::MAX_TEXT {
        return Err(OpenAiError::invalid(
            Some("messages"),
            format!(
                "messages: {chars} characters of text; at most {}",
                super::ask::MAX_TEXT
            ),
        ));
    }
    if images.len() > 4 || audio.len() > 1 {
        return Err(OpenAiError::invalid(
            Some("messages"),
            "at most 4 images and 1 audio clip per question",
        ));
    }
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    if max_tokens == Some(0) {
        return Err(OpenAiError::invalid(
            Some("max_tokens"),
            "max_tokens: at least 1",
        ));
    }
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(OpenAiError::invalid(
                Some("temperature"),
                format!("temperature: {t} is not in [0, 2]"),
            ));
        }
    }
    if let Some(p) = req.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(OpenAiError::invalid(
                Some("top_p"),
                format!("top_p: {p} is not in [0, 1]"),
            ));
        }
    }
    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(OpenAiError::invalid(
            Some("stop"),
            "stop: up to 4 non-empty strings",
        ));
    }
    Ok(Prepared {
        text,
        images,
        audio,
        overrides: GenOverrides {
            system_prompt: system,
            max_new_tokens: max_tokens.map(|n| (n as usize).min(max_new_tokens)),
            temperature: req.temperature.map(|t| t as f32),
            top_p: req.top_p.map(|p| p as f32),
            // Any 64-bit seed, negative ones included, keeps its bits.
            seed: req.seed.map(|s| s as u64),
            stop,
            response_format: None,
        },
        stream: req.stream.unwrap_or(false),
        include_usage: req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn finish_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::Eos | StopReason::StopString(_) => "stop",
        StopReason::MaxLength
        | StopReason::MaxNewTokens
        | StopReason::Deadline
        | StopReason::Cancelled => "length",
    }
}

/// A sentence as the client sees it: citation markers out.
fn clean(sentence: &str) -> String {
    crate::report::cite::cite(sentence, &[] as &[&str]).text
}

/// `GET /v1/models`: the loaded bundle.
pub async fn models(State(api): State<Api>) -> Response {
    let app = &api.inner.app;
    let info = app.worker.info();
    let created = info
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let data: Vec<Value> = if app.worker.is_loaded() {
        vec![
            json!({ "id": info.bundle_id, "object": "model", "created": created, "owned_by": "gemba" }),
        ]
    } else {
        Vec::new()
    };
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(api): State<Api>, body: Bytes) -> Response {
    match chat(api, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat(api: Api, body: Bytes) -> Result<Response, OpenAiError> {
    let inner = &api.inner;
    let app = inner.app.clone();
    if app.shutdown.is_cancelled() {
        return Err(OpenAiError::unavailable("the daemon is stopping"));
    }
    let req: ChatRequest = serde_json::from_slice(&body)
        .map_err(|e| OpenAiError::bad_json(format!("not a chat request: {e}")))?;
    let max_new = app.settings.lock().expect("poisoned").model.max_new_tokens;
    let p = prepare(req, max_new)?;
    if !app.worker.is_loaded() {
        return Err(OpenAiError::unavailable(crate::daemon::worker::NOT_LOADED));
    }
    // Untrusted media: sizes and image headers checked against the API's budgets before
    // anything is decoded or a slot is taken (as POST /ask does).
    let limits = app.settings.lock().expect("poisoned").api.clone();
    let max_pixels = limits.max_image_pixels;
    for (what, b) in p
        .images
        .iter()
        .map(|b| ("image_url", b))
        .chain(p.audio.iter().map(|b| ("input_audio", b)))
    {
        if b.len() as u64 > limits.max_media_bytes.0 {
            return Err(OpenAiError::too_large(format!(
                "{what}: {} bytes, over the api.max_media_bytes limit of {}",
                b.len(),
                limits.max_media_bytes.0
            )));
        }
    }
    for b in &p.images {
        super::ask::check_image_header(b, max_pixels).map_err(|e| {
            if e.status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                OpenAiError::too_large(e.msg)
            } else {
                OpenAiError::invalid(Some("messages"), e.msg)
            }
        })?;
    }
    let permit = inner.asks.try_permit().ok_or_else(|| {
        inner.metrics.asks_rejected("busy");
        OpenAiError::busy(
            "too many questions are queued or being answered; try again later",
            5,
        )
    })?;
    // Decoding untrusted bytes is CPU work: off the async threads, with the slot held.
    let (images, audio) = (p.images, p.audio);
    let decoded = tokio::task::spawn_blocking(move || {
        let frames = images
            .iter()
            .map(|b| super::ask::decode_image(b, max_pixels))
            .collect::<Result<Vec<_>, _>>()?;
        let clips = audio
            .iter()
            .map(|b| super::ask::decode_wav(b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, super::HttpError>((frames, clips))
    })
    .await
    .map_err(|e| OpenAiError::unavailable(format!("internal task failed: {e}")))?;
    let (mut frames, clips) = decoded.map_err(|e| OpenAiError::invalid(Some("messages"), e.msg))?;
    // Several images: each its own "camera" name, so the model can cite them apart.
    if frames.len() > 1 {
        for (i, f) in frames.iter_mut().enumerate() {
            f.camera = format!("{}-{}", super::ask::UPLOAD_CAMERA, i + 1);
        }
    }
    let (ltx, lrx) = mpsc::unbounded_channel();
    let mut r = AppRequest::new(Trigger::Api, p.text);
    r.reason = "POST /v1/chat/completions".into();
    r.frames = frames;
    r.audio = clips;
    r.listener = Some(ltx);
    r.overrides = p.overrides;
    if app.try_submit(r).is_err() {
        inner.metrics.asks_rejected("queue_full");
        return Err(OpenAiError::busy(
            "the model's request queue is full; try again later",
            5,
        ));
    }
    inner.metrics.asks_accepted.inc();
    let model = app.worker.info().bundle_id;
    let fingerprint = app
        .worker
        .info()
        .bundle_hash
        .chars()
        .take(16)
        .collect::<String>();
    if p.stream {
        Ok(stream(lrx, model, fingerprint, p.include_usage, permit))
    } else {
        whole(lrx, model, fingerprint, permit).await
    }
}

/// Waits for the whole answer.
async fn whole(
    mut lrx: mpsc::UnboundedReceiver<RequestEvent>,
    model: String,
    fingerprint: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response, OpenAiError> {
    let mut report_id = None;
    let mut sentences = Vec::new();
    let mut done = None;
    let mut closed = None;
    while let Some(ev) = lrx.recv().await {
        match ev {
            RequestEvent::Started { report_id: id } => report_id = Some(id),
            RequestEvent::Event(Event::Sentence(s)) => sentences.push(clean(&s.text)),
            RequestEvent::Event(Event::Done(d)) => done = Some(d),
            RequestEvent::Event(Event::Token(_)) => {}
            RequestEvent::Closed { error, .. } => {
                closed = Some(error);
                break;
            }
        }
    }
    let (Some(d), Some(report_id)) = (done, report_id) else {
        let why = closed
            .flatten()
            .unwrap_or_else(|| "the daemon stopped before the question was answered".into());
        return Err(OpenAiError::unavailable(why));
    };
    let content = sentences
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let body = json!({
        "id": format!("chatcmpl-{report_id}"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "logprobs": null,
            "finish_reason": finish_reason(&d.stop),
        }],
        "usage": {
            "prompt_tokens": d.prompt_tokens,
            "completion_tokens": d.generated_tokens,
            "total_tokens": d.prompt_tokens + d.generated_tokens,
        },
        "report": format!("/reports/{report_id}"),
    });
    let mut res = Json(body).into_response();
    if let Ok(v) = format!("/reports/{report_id}").parse() {
        res.headers_mut().insert("x-gemba-report", v);
    }
    Ok(res)
}

/// OpenAI's chunk stream: a role chunk, a chunk per sentence, a finish chunk, (usage), `[DONE]`.
fn stream(
    lrx: mpsc::UnboundedReceiver<RequestEvent>,
    model: String,
    fingerprint: String,
    include_usage: bool,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    struct St {
        lrx: mpsc::UnboundedReceiver<RequestEvent>,
        id: String,
        created: u64,
        model: String,
        fingerprint: String,
        include_usage: bool,
        sentences: usize,
        ended: bool,
        _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
    }
    impl St {
        fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
            json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": self.fingerprint,
                "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
            })
        }
    }
    let st = St {
        lrx,
        id: String::new(),
        created: unix_now(),
        model,
        fingerprint,
        include_usage,
        sentences: 0,
        ended: false,
        _permit: Arc::new(permit),
    };
    let events = futures_util::stream::unfold(st, |mut st| async move {
        if st.ended {
            return None;
        }
        loop {
            let Some(ev) = st.lrx.recv().await else {
                st.ended = true;
                let err = json!({ "error": { "message": "the daemon stopped before the answer was finished", "type": "server_error", "param": null, "code": null } });
                return Some((vec![err.to_string(), "[DONE]".to_string()], st));
            };
            match ev {
                RequestEvent::Started { report_id } => {
                    st.id = format!("chatcmpl-{report_id}");
                    let c = st.chunk(json!({ "role": "assistant", "content": "" }), None);
                    return Some((vec![c.to_string()], st));
                }
                RequestEvent::Event(Event::Sentence(s)) => {
                    let text = clean(&s.text);
                    if text.is_empty() {
                        continue;
                    }
                    let text = if st.sentences > 0 {
                        format!(" {text}")
                    } else {
                        text
                    };
                    st.sentences += 1;
                    let c = st.chunk(json!({ "content": text }), None);
                    return Some((vec![c.to_string()], st));
                }
                RequestEvent::Event(Event::Done(d)) => {
                    let mut out = vec![st
                        .chunk(json!({}), Some(finish_reason(&d.stop)))
                        .to_string()];
                    if st.include_usage {
                        let mut u = st.chunk(json!({}), None);
                        u["choices"] = json!([]);
                        u["usage"] = json!({
                            "prompt_tokens": d.prompt_tokens,
                            "completion_tokens": d.generated_tokens,
                            "total_tokens": d.prompt_tokens + d.generated_tokens,
                        });
                        out.push(u.to_string());
                    }
                    return Some((out, st));
                }
                RequestEvent::Event(Event::Token(_)) => continue,
                RequestEvent::Closed { error, .. } => {
                    st.ended = true;
                    let mut out = Vec::new();
                    if let Some(e) = error {
                        out.push(json!({ "error": { "message": e, "type": "server_error", "param": null, "code": null } }).to_string());
                    }
                    out.push("[DONE]".to_string());
                    return Some((out, st));
                }
            }
        }
    });
    use futures_util::StreamExt as _;
    let sse = events.flat_map(|v| {
        futures_util::stream::iter(
            v.into_iter()
                .map(|d| Ok::<_, Infallible>(SseEvent::default().data(d))),
        )
    });
    Sse::new(sse)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Result<Prepared, OpenAiError> {
        prepare(
            serde_json::from_value(v).map_err(|e| OpenAiError::bad_json(e.to_string()))?,
            80,
        )
    }

    #[test]
    fn requests_become_questions_with_their_choices() {
        let p = req(json!({
            "model": "x", "max_tokens": 500, "temperature": 0.7, "top_p": 0.9, "seed": -1, "stop": "END",
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "user", "content": "What is on press 2?" },
                { "role": "assistant", "content": "A red lamp." },
                { "role": "user", "content": [
                    { "type": "text", "text": "And now?" },
                    { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=" } }
                ] }
            ]
        }))
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert!(p.text.starts_with("Earlier in this conversation:\nuser: What is on press 2?\nassistant: A red lamp.\n\n"), "{}", p.text);
        assert!(p.text.ends_with("And now?"));
        assert_eq!(p.images, vec![b"\x89PNG\r\n\x1a\n".to_vec()]);
        let o = p.overrides;
        assert_eq!(
            (o.system_prompt.as_deref(), o.max_new_tokens, o.seed),
            (Some("Be brief."), Some(80), Some(u64::MAX))
        );
        assert_eq!(
            (o.temperature, o.top_p, o.stop),
            (Some(0.7), Some(0.9), vec!["END".to_string()])
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let user = json!([{ "role": "user", "content": "hi" }]);
        let cases = [
            (json!({ "messages": [] }), "at least one message"),
            (
                json!({ "messages": [{ "role": "system", "content": "x" }] }),
                "no user message",
            ),
            (
                json!({ "messages": user, "temperature": 3.0 }),
                "temperature",
            ),
            (json!({ "messages": user, "top_p": 1.5 }), "top_p"),
            (json!({ "messages": user, "max_tokens": 0 }), "max_tokens"),
            (
                json!({ "messages": user, "stop": ["a", "b", "c", "d", "e"] }),
                "stop",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "https://x/y.png" } }] }] }),
                "does not fetch URLs",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": "  " }] }),
                "empty",
            ),
        ];
        for (v, why) in cases {
            let e = req(v.clone())
                .err()
                .unwrap_or_else(|| panic!("accepted {v}"));
            assert!(e.message.contains(why), "{v}: {}", e.message);
        }
        for bad in [
            json!({ "messages": [{ "role": "tool", "content": "x" }] }),
            json!({ "messages": [{ "role": "user", "content": [{ "type": "video", "x": 1 }] }] }),
            json!({ "messages": user, "seed": "x" }),
        ] {
            assert!(
                serde_json::from_value::<ChatRequest>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
