//! The local HTTP API: a technician's tablet, a line-side dashboard and the fleet's monitoring
//! reach the running daemon without shell access (docs/api.md, docs/openapi.yaml).
//!
//! What flows in: the daemon's [`AppHandle`] (the bounded request queue, the model worker, the
//! report store, cameras, counters, the events broadcast, the shutdown token) and the validated
//! [`ApiSettings`]. What flows out: JSON, report pages and media, server-sent event streams of
//! answers as they are generated ([`ask`]), and Prometheus metrics ([`metrics`]).
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | liveness and readiness (model loaded, store readable), cameras, microphone |
//! | `GET /status` | bundle, providers, cameras, queue, store, last errors, update state |
//! | `POST /ask` | a question (JSON or multipart); `202 {report_id}` once its report exists |
//! | `GET /ask/{id}/events` | its events as SSE: what was missed first, then live |
//! | `GET /reports`, `/reports/{id}`, `/reports/{id}.html`, `/reports/{id}/media/{n}` | the store |
//! | `POST /model/reload`, `POST /model/unload` | the worker's bundle |
//! | `GET /metrics` | OpenMetrics text |
//! | `GET /alerts`, `GET /alerts/events` | alert rules' states, and their changes as SSE ([`alerts`]) |
//! | `GET /`, `GET /events`, `GET /cameras/{name}/frame` | the live board page and what it reads |
//! | `POST /v1/chat/completions`, `GET /v1/models` | OpenAI-compatible chat ([`openai`]) |
//!
//! Exposure: the server binds loopback by default. Any other address needs a bearer token
//! ([`check_exposure`]); when a token is set every request must carry it (compared in constant
//! time over its SHA-256). Bounds: bodies over `max_body` get 413 before they are read, at most
//! `max_asks` API questions are queued or answered at once (beyond that, or with the daemon's
//! request queue full, 429 with `Retry-After`), and every live-stream client has its own bounded
//! channel (see [`ask`]) so a slow reader never holds up the model.

pub(crate) mod alerts;
pub(crate) mod ask;
pub(crate) mod config;
pub(crate) mod metrics;
pub(crate) mod openai;
mod reports;
pub(crate) mod serve;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use crate::daemon::AppHandle;
pub use config::ApiSettings;
use tokio_util::sync::CancellationToken;

/// Where the API listens unless the config or `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// Shortest bearer token accepted: a guessable token on a network address is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// Every route, as docs/openapi.yaml lists it (the test suite holds the two equal).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/status"),
    ("post", "/ask"),
    ("get", "/ask/{id}/events"),
    ("get", "/reports"),
    ("get", "/reports/{id}"),
    ("get", "/reports/{id}.html"),
    ("get", "/reports/{id}/media/{n}"),
    ("post", "/model/reload"),
    ("post", "/model/unload"),
    ("get", "/metrics"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/models"),
    ("get", "/alerts"),
    ("get", "/alerts/events"),
    ("get", "/events"),
    ("get", "/cameras/{name}/frame"),
    ("get", "/"),
];

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "refusing to serve the API on {addr}: it is not a loopback address and no token is set; \
         set api.token or api.token_file in the config, or listen on 127.0.0.1 (put a TLS reverse \
         proxy in front for remote clients, see docs/api.md)"
    )]
    Exposed { addr: SocketAddr },
    #[error("cannot listen on {addr} for the API: {source}; set api.listen in the config or pass --listen ADDR (port 0 picks a free port)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// True for addresses only this machine can reach: 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The exposure rule: a non-loopback address (including the wildcards 0.0.0.0 and ::) needs a
/// token.
pub fn check_exposure(s: &ApiSettings) -> Result<(), ApiError> {
    if !is_loopback(s.listen.ip()) && s.token.is_none() {
        return Err(ApiError::Exposed { addr: s.listen });
    }
    Ok(())
}

/// A token must be long enough and printable (it travels in an HTTP header).
pub fn check_token(t: &str) -> Result<(), String> {
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token is {} characters; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
            t.len()
        ));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be printable ASCII without spaces".into());
    }
    Ok(())
}

static BOUND: Mutex<Option<SocketAddr>> = Mutex::new(None);

/// The address the API is serving on in this process (for status.json), once bound; follows a
/// reload that moved it.
pub fn bound_addr() -> Option<SocketAddr> {
    *BOUND.lock().expect("poisoned")
}

/// A listening socket, bound early at start-up (so a taken port is reported before the model
/// loads), served once the pipeline exists.
pub struct Bound {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    settings: ApiSettings,
}

impl Bound {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds (the settings passed the exposure rule when they were made). Logs and prints the
/// address actually bound.
pub async fn bind(settings: &ApiSettings) -> Result<Bound, ApiError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ApiError::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ApiError::Bind {
        addr: settings.listen,
        source,
    })?;
    *BOUND.lock().expect("poisoned") = Some(addr);
    let auth = if settings.token.is_some() {
        "bearer token required"
    } else {
        "no token (loopback only)"
    };
    log::info!("api: listening on http://{addr} ({auth})");
    eprintln!("gemba: API listening on http://{addr} ({auth})");
    Ok(Bound {
        listener,
        addr,
        settings: settings.clone(),
    })
}

/// Serves until the daemon's shutdown token is cancelled; open event streams end when their ask
/// closes (the dispatcher drains it), so nothing in flight is cut short.
pub fn serve(bound: Bound, app: AppHandle) -> Server {
    let api = Api::new(app, &bound.settings, bound.addr);
    let router = router(api.clone());
    let listening = spawn_listener(
        bound.listener,
        router.clone(),
        &api,
        limits(&bound.settings),
    );
    Server {
        api,
        router,
        settings: bound.settings,
        listening,
    }
}

/// One listener's accept loop, stopped by its own token (a child of the daemon's shutdown, so
/// shutdown stops it too). It is the stage `api` (crate::stage): ending while the daemon runs
/// is a failure, unless a reload replaced it with a listener on the new address.
struct Listening {
    stop: CancellationToken,
    replaced: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// The connection limits of `[api]` (src/api/serve.rs).
fn limits(s: &ApiSettings) -> serve::Limits {
    serve::Limits {
        max_connections: s.max_connections,
        header_timeout: s.header_timeout.0,
    }
}

fn spawn_listener(
    listener: tokio::net::TcpListener,
    router: Router,
    api: &Api,
    limits: serve::Limits,
) -> Listening {
    let stop = api.inner.app.shutdown.child_token();
    let until = stop.clone();
    let replaced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let was_replaced = Arc::clone(&replaced);
    let metrics = Arc::clone(&api.inner.metrics);
    let task = tokio::spawn(async move {
        let guard = crate::stage::enter("api");
        crate::stage::injected_fault("api");
        // Header timeout, connection cap, JSON for hyper's own errors: src/api/serve.rs.
        serve::serve(listener, router, until, limits, metrics).await;
        if was_replaced.load(Ordering::SeqCst) {
            guard.replaced();
        }
    });
    Listening {
        stop,
        replaced,
        task,
    }
}

/// The running API: served until shutdown, and changed in place by a reload (SIGHUP).
pub struct Server {
    api: Api,
    router: Router,
    settings: ApiSettings,
    listening: Listening,
}

impl Server {
    /// Applies a reloaded `[api]`: a rotated or removed token takes effect for the next request,
    /// a new `listen` address is bound and served (the old listener stops accepting; its open
    /// streams finish). All or nothing: when the new address cannot be bound, nothing changes
    /// and the error says why (the exposure rule held when the new settings were made).
    /// Returns what changed, for the log.
    pub async fn apply(&mut self, new: &ApiSettings) -> Result<Vec<String>, ApiError> {
        let mut changed = Vec::new();
        let rebound = if new.listen != self.settings.listen {
            let b = bind(new).await?;
            changed.push(format!(
                "listening on http://{} (was {})",
                b.addr, self.settings.listen
            ));
            Some(b)
        } else {
            None
        };
        if new.token != self.settings.token {
            changed.push(match (&self.settings.token, &new.token) {
                (_, None) => "token removed: requests need none".to_string(),
                (None, Some(_)) => "token set: every request needs it".to_string(),
                (Some(_), Some(_)) => {
                    "token rotated: the old one is refused from now on".to_string()
                }
            });
            *self.api.inner.token_digest.write().expect("poisoned") =
                new.token.as_deref().map(digest);
        }
        if let Some(b) = rebound {
            let old = std::mem::replace(
                &mut self.listening,
                spawn_listener(b.listener, self.router.clone(), &self.api, limits(new)),
            );
            old.replaced.store(true, Ordering::SeqCst);
            old.stop.cancel();
            *self.api.inner.addr.write().expect("poisoned") = b.addr;
        }
        self.settings = new.clone();
        Ok(changed)
    }

    /// The `[api]` settings in force.
    pub fn settings(&self) -> &ApiSettings {
        &self.settings
    }

    /// Waits for the listener to stop (after the daemon's shutdown token is cancelled).
    pub async fn stopped(self) {
        let _ = self.listening.task.await;
    }
}

/// State shared by every handler.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    app: AppHandle,
    /// Where the API is served; a reload can move it.
    addr: RwLock<SocketAddr>,
    /// The bearer token's digest; a reload can rotate or remove it.
    token_digest: RwLock<Option<[u8; 32]>>,
    started: SystemTime,
    asks: ask::Registry,
    metrics: Arc<metrics::Metrics>,
    /// One model operation (reload, unload) at a time.
    model_ops: tokio::sync::Mutex<()>,
}

impl Api {
    fn new(app: AppHandle, s: &ApiSettings, addr: SocketAddr) -> Api {
        let metrics = Arc::new(metrics::Metrics::new());
        metrics::spawn_event_listener(&app, Arc::clone(&metrics));
        Api {
            inner: Arc::new(Inner {
                token_digest: RwLock::new(s.token.as_deref().map(digest)),
                asks: ask::Registry::new(s.max_asks, s.sse_buffer, Arc::clone(&metrics)),
                app,
                addr: RwLock::new(addr),
                started: SystemTime::now(),
                metrics,
                model_ops: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

fn digest(s: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes()).into()
}

/// The routes, their limits and the token check (outermost first: JSON errors, token, body
/// limit).
pub fn router(api: Api) -> Router {
    let max_body = api
        .inner
        .app
        .settings
        .lock()
        .expect("poisoned")
        .api
        .max_body
        .0 as usize;
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/ask", post(ask::post_ask))
        .route("/ask/{id}/events", get(ask::events))
        .route("/reports", get(reports::list))
        .route("/reports/{id}", get(reports::get_one))
        .route("/reports/{id}/media/{n}", get(reports::media))
        .route("/model/reload", post(model_reload))
        .route("/model/unload", post(model_unload))
        .route("/metrics", get(metrics::handler))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/alerts", get(alerts::list))
        .route("/alerts/events", get(alerts::events))
        .route("/events", get(alerts::board_events))
        .route("/cameras/{name}/frame", get(alerts::frame))
        .route("/", get(alerts::board))
        .fallback(|| async {
            HttpError::new(
                StatusCode::NOT_FOUND,
                "no such route (see docs/openapi.yaml)",
            )
        })
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(middleware::from_fn_with_state(api.clone(), authorize))
        .layer(middleware::map_response(json_errors))
        .with_state(api)
}

/// Bearer token check, in constant time over SHA-256 digests (so neither the content nor the
/// length of the token leaks through timing).
async fn authorize(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    let want = *api.inner.token_digest.read().expect("poisoned");
    if let Some(want) = &want {
        // A browser cannot set a header on an <img> or an EventSource: a GET may carry the
        // token as `access_token` in its query instead (RFC 6750 §2.3), as the board page does.
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(digest)
            .or_else(|| {
                (req.method() == axum::http::Method::GET)
                    .then(|| query_token(req.uri().query().unwrap_or("")))
                    .flatten()
                    .map(|t| digest(&t))
            });
        let ok =
            given.is_some_and(|g| bool::from(subtle::ConstantTimeEq::ct_eq(&g[..], &want[..])));
        if !ok {
            api.inner.metrics.api_unauthorized.inc();
            let mut r = HttpError::new(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required (Authorization: Bearer TOKEN)",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gemba\""),
            );
            return r;
        }
    }
    // The handlers never see `access_token` (their queries are strict about their keys).
    if let Some(q) = req.uri().query().filter(|q| q.contains("access_token=")) {
        let rest: Vec<&str> = q
            .split('&')
            .filter(|kv| !kv.starts_with("access_token="))
            .collect();
        let pq = if rest.is_empty() {
            req.uri().path().to_string()
        } else {
            format!("{}?{}", req.uri().path(), rest.join("&"))
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(u) = axum::http::Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
    }
    next.run(req).await
}

/// The `access_token` parameter of a query string, percent-decoded (`+` is a space, which no
/// valid token holds).
fn query_token(q: &str) -> Option<String> {
    let raw = q
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token="))?;
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().filter(|t| !t.is_empty())
}

/// The token of an `Authorization: Bearer TOKEN` header. The scheme name is case-insensitive
/// (RFC 7235 §2.1: `bearer`, `BEARER` are the same scheme); the token is taken as sent.
fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, token) = v.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Errors from axum's extractors and the body limit come as plain text; every error this API
/// answers is `{"error": "…"}`.
async fn json_errors(res: Response) -> Response {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if res.status().as_u16() < 400 || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let msg = String::from_utf8_lossy(&text).trim().to_string();
    let msg = if msg.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_string()
    } else {
        msg
    };
    let body = serde_json::to_vec(&json!({ "error": msg })).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// An error answer: a status, `{"error": msg}`, and `Retry-After` where waiting helps.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub msg: String,
    pub retry_after: Option<u64>,
}

impl HttpError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> HttpError {
        HttpError {
            status,
            msg: msg.into(),
            retry_after: None,
        }
    }
    pub fn retry_after(mut self, secs: u64) -> HttpError {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.msg }))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// Runs store work off the async threads (SQLite and file reads block).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal task failed: {e}"),
        )
    })
}

// ---- health and status ----

#[derive(Serialize)]
struct CameraHealth {
    name: String,
    /// `ok`, `waiting` (no frame yet) or `stalled` (no frame for three of the camera's own frame
    /// intervals, at least 2 s).
    state: &'static str,
    frames: u64,
    fps: f64,
    last_error: Option<String>,
}

fn camera_health(app: &AppHandle) -> Vec<CameraHealth> {
    let cams = app.cameras.lock().expect("poisoned").clone();
    cams.iter()
        .map(|c| {
            let s = c.stats.snapshot();
            let state = if s.frames == 0 {
                "waiting"
            } else if s.stalled {
                "stalled"
            } else {
                "ok"
            };
            CameraHealth {
                name: c.name.clone(),
                state,
                frames: s.frames,
                fps: s.fps,
                last_error: s.last_error,
            }
        })
        .collect()
}

/// `GET /health`: 200 when ready to answer (model loaded, store readable, not stopping), 503
/// otherwise; the body says which part is not.
async fn health(State(api): State<Api>) -> Response {
    let app = &api.inner.app;
    let loaded = app.worker.is_loaded();
    let info = app.worker.info();
    let store = app.store.clone();
    let store_state = match blocking(move || store.usage()).await {
        Ok(Ok(_)) => json!({ "state": "ok" }),
        Ok(Err(e)) => json!({ "state": "error", "error": e.to_string() }),
        Err(e) => json!({ "state": "error", "error": e.msg }),
    };
    // The voice stage's live state is not reachable from here yet: what is configured.
    let microphone = match &app.settings.lock().expect("poisoned").microphone {
        Some(m) => json!({ "state": "configured", "name": m.name }),
        None => json!({ "state": "not configured" }),
    };
    let stopping = app.shutdown.is_cancelled();
    let ready = loaded && store_state["state"] == "ok" && !stopping;
    let body = json!({
        "live": true,
        "ready": ready,
        "stopping": stopping,
        "model": {
            "state": if loaded { "loaded" } else { "unloaded" },
            "bundle_id": info.bundle_id,
            "last_error": info.last_error,
        },
        "cameras": camera_health(app),
        "microphone": microphone,
        "store": store_state,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /status`: what runs, how it is doing, and what went wrong last.
async fn status(State(api): State<Api>) -> Result<Json<Value>, HttpError> {
    let app = api.inner.app.clone();
    let info = app.worker.info();
    let settings = app.settings.lock().expect("poisoned").clone();
    let store = app.store.clone();
    let (usage, recovery, failed) = blocking(move || {
        let failed = store.list(&crate::report::ListFilter {
            limit: Some(5),
            status: Some("incomplete".into()),
            ..Default::default()
        });
        (store.usage(), store.recovery(), failed)
    })
    .await?;
    let providers: serde_json::Map<String, Value> = info
        .providers
        .iter()
        .map(|r| {
            (
                r.component.clone(),
                json!({
                    "actual": r.actual().to_string(),
                    "requested": r.requested.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    "registered": r.registered.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    "order_from": r.order_from,
                    "failures": r.failures.iter().map(|(p, why)| json!({ "provider": p.to_string(), "error": why })).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let cameras: Vec<Value> = {
        let cams = app.cameras.lock().expect("poisoned").clone();
        cams.iter()
            .map(|c| {
                let s = c.stats.snapshot();
                json!({
                    "name": c.name,
                    "frames": s.frames,
                    "fps": s.fps,
                    "dropped": s.dropped,
                    "device_dropped": s.device_dropped,
                    "decode_errors": s.decode_errors,
                    "reconnects": s.reconnects,
                    "last_error": s.last_error,
                })
            })
            .collect()
    };
    let st = &app.stats;
    let ms = &app.monitor_stats;
    let queue_capacity = app.requests.capacity();
    let [by_person, by_alert, by_look] = app.requests.depths();
    let camera_errors: serde_json::Map<String, Value> = cameras
        .iter()
        .filter(|c| !c["last_error"].is_null())
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["last_error"].clone(),
            )
        })
        .collect();
    let failed_reports: Vec<Value> = match failed {
        Ok(list) => list
            .iter()
            .map(|r| json!({ "id": r.id, "created_at": format!("{:.3}", r.created_at), "trigger": r.trigger, "reason": match &r.status { crate::report::ReportStatus::Incomplete { reason } => reason.clone(), s => s.to_string() } }))
            .collect(),
        Err(e) => vec![json!({ "error": e.to_string() })],
    };
    let now = SystemTime::now();
    let uptime = now
        .duration_since(api.inner.started)
        .unwrap_or_default()
        .as_secs_f64();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "board": settings.board,
        "api_addr": api.inner.addr.read().expect("poisoned").to_string(),
        "uptime_s": uptime,
        "model": {
            "loaded": app.worker.is_loaded(),
            "busy": app.worker.is_busy(),
            "bundle_id": info.bundle_id,
            "bundle_hash": info.bundle_hash,
            "bundle_dir": info.bundle_dir,
            "model_type": info.model_type,
            "loaded_at": jiff::Timestamp::try_from(info.loaded_at).map(|t| format!("{t:.3}")).unwrap_or_default(),
            "load_ms": info.load_ms,
            "config_path": settings.model.path,
            "providers": providers,
        },
        "cameras": cameras,
        // Every stage's state (running, stopped, failed with the error): see crate::stage.
        "stages": crate::stage::stages().snapshot(),
        "queue": {
            "depth": by_person + by_alert + by_look,
            "capacity": queue_capacity,
            "by_class": { "person": by_person, "alert": by_alert, "look": by_look },
            "looks_replaced": st.looks_replaced.load(Ordering::Relaxed),
            "dropped_for_higher": st.requests_bumped.load(Ordering::Relaxed),
            "api_asks": api.inner.asks.in_flight(),
            "api_max_asks": settings.api.max_asks,
        },
        "counters": {
            "queries": st.queries.load(Ordering::Relaxed),
            "reports": st.reports.load(Ordering::Relaxed),
            "reports_incomplete": st.reports_incomplete.load(Ordering::Relaxed),
            "query_errors": st.query_errors.load(Ordering::Relaxed),
            "write_errors": st.write_errors.load(Ordering::Relaxed),
            "monitor_looks": ms.looks.load(Ordering::Relaxed),
            "monitor_unchanged": ms.unchanged.load(Ordering::Relaxed),
            "monitor_dropped_full": ms.dropped_full.load(Ordering::Relaxed),
        },
        "store": {
            "dir": app.store.dir(),
            "usage": usage.map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
            "recovery_clean": recovery.is_clean(),
        },
        "last_errors": {
            "model": info.last_error,
            "cameras": camera_errors,
            "reports": failed_reports,
        },
        "mqtt": crate::publish::status_json(),
        "update": update_state(&[settings.update.models_dir.clone(), settings.model.path.parent().map(Into::into).unwrap_or_default()]),
    })))
}

/// `<models>/update-state.json` when the update module keeps one — `<models>` being
/// `[update] models_dir`, else the directory holding the config's model path (`…/current`);
/// `null` when neither has one. Only the last few transitions.
fn update_state(roots: &[std::path::PathBuf]) -> Value {
    let Some(path) = roots
        .iter()
        .map(|r| r.join("update-state.json"))
        .find(|p| p.exists())
    else {
        return Value::Null;
    };
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => json!({ "error": format!("{}: {e}", path.display()) }),
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut v) => {
                if let Some(h) = v.get_mut("history").and_then(Value::as_array_mut) {
                    let n = h.len();
                    h.drain(..n.saturating_sub(10));
                }
                v
            }
            Err(e) => json!({ "error": format!("{}: not JSON: {e}", path.display()) }),
        },
    }
}

// ---- model operations ----

fn model_json(app: &AppHandle) -> Value {
    let info = app.worker.info();
    json!({
        "loaded": app.worker.is_loaded(),
        "bundle_id": info.bundle_id,
        "bundle_hash": info.bundle_hash,
        "bundle_dir": info.bundle_dir,
        "load_ms": info.load_ms,
        "last_error": info.last_error,
    })
}

fn write_status(app: &AppHandle) {
    let _w = crate::daemon::status::STATUS_WRITE
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let s = app.settings.lock().expect("poisoned").clone();
    if let Err(e) = crate::daemon::status::write_status(
        &s.state_dir,
        &app.worker.info(),
        app.worker.is_loaded(),
        &s.data_dir,
    ) {
        log::error!("writing status.json: {e}");
    }
}

/// `POST /model/reload`: loads the bundle at the config's model path again (re-resolving a
/// `current` link); the old one keeps serving if the new one fails.
async fn model_reload(State(api): State<Api>) -> Result<Json<Value>, HttpError> {
    let app = &api.inner.app;
    let _op = api.inner.model_ops.try_lock().map_err(|_| {
        HttpError::new(
            StatusCode::CONFLICT,
            "another model operation is in progress",
        )
        .retry_after(5)
    })?;
    let (path, providers) = {
        let s = app.settings.lock().expect("poisoned");
        (s.model.path.clone(), s.providers.clone())
    };
    log::info!("api: reloading the model from {}", path.display());
    let result = app.worker.reload(&path, &providers).await;
    write_status(app);
    match result {
        Ok(info) => {
            log::info!(
                "api: now serving {} ({})",
                info.bundle_id,
                &info.bundle_hash[..12.min(info.bundle_hash.len())]
            );
            crate::systemd::status(&format!("serving {}", info.bundle_id));
            Ok(Json(model_json(app)))
        }
        Err(e) => {
            log::error!("api: reload failed: {e}");
            Err(HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the model did not load: {e}"),
            ))
        }
    }
}

/// `POST /model/unload`: drops the sessions once the answer in flight is done; `/health` is not
/// ready and `POST /ask` answers 503 until a reload.
async fn model_unload(State(api): State<Api>) -> Result<Json<Value>, HttpError> {
    let app = &api.inner.app;
    let _op = api.inner.model_ops.try_lock().map_err(|_| {
        HttpError::new(
            StatusCode::CONFLICT,
            "another model operation is in progress",
        )
        .retry_after(5)
    })?;
    app.worker
        .unload()
        .await
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    log::info!("api: model unloaded");
    crate::systemd::status("model unloaded (POST /model/reload loads it again)");
    write_status(app);
    Ok(Json(model_json(app)))
}

/// The id in a URL, validated: anything that is not a report id is refused (400) before it is
/// used. An id of the right form whose date does not exist (`20261399T…`) names no report: 404.
fn report_id(raw: &str) -> Result<crate::report::ReportId, HttpError> {
    crate::report::ReportId::parse(raw).map_err(|e| {
        let form_ok = raw.len() == 21
            && raw.bytes().enumerate().all(|(i, b)| match i {
                8 => b == b'T',
                15 => b == b'Z',
                16 => b == b'-',
                17.. => matches!(b, b'0'..=b'9' | b'a'..=b'f'),
                _ => b.is_ascii_digit(),
            });
        let status = if form_ok {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        HttpError::new(status, e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(listen: &str, token: Option<&str>) -> ApiSettings {
        ApiSettings {
            listen: listen.parse().unwrap(),
            token: token.map(String::from),
            max_body: crate::config::HumanSize(1 << 20),
            max_asks: 4,
            sse_buffer: 16,
            max_image_pixels: 1 << 20,
            max_media_bytes: crate::config::HumanSize(1 << 20),
            max_connections: 8,
            header_timeout: crate::config::HumanDuration(std::time::Duration::from_secs(1)),
            body_timeout: crate::config::HumanDuration(std::time::Duration::from_secs(1)),
        }
    }

    #[test]
    fn only_loopback_goes_without_a_token() {
        let cases = [
            ("127.0.0.1:8470", true),
            ("127.0.0.2:0", true),
            ("[::1]:8470", true),
            ("[::ffff:127.0.0.1]:8470", true),
            ("0.0.0.0:8470", false),
            ("[::]:8470", false),
            ("192.168.1.20:8470", false),
            ("10.0.0.1:80", false),
            ("[fe80::1]:8470", false),
            ("[::ffff:192.168.1.2]:8470", false),
        ];
        for (addr, ok) in cases {
            assert_eq!(
                check_exposure(&settings(addr, None)).is_ok(),
                ok,
                "{addr} without a token"
            );
            assert!(
                check_exposure(&settings(addr, Some("0123456789abcdef0123"))).is_ok(),
                "{addr} with a token"
            );
        }
        let e = check_exposure(&settings("0.0.0.0:8470", None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0.0.0.0:8470") && e.contains("api.token"), "{e}");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        for h in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "BeArEr   abc ",
            "Bearer\tabc",
        ] {
            assert_eq!(bearer_token(h), Some("abc"), "{h:?}");
        }
        assert_eq!(bearer_token("Bearer ABC"), Some("ABC"));
        for h in ["Basic abc", "Bearerabc", "Bearer", "", "Token abc"] {
            assert_eq!(bearer_token(h), None, "{h:?}");
        }
    }

    #[test]
    fn weak_tokens_are_refused() {
        assert!(check_token("short").unwrap_err().contains("at least 16"));
        assert!(check_token("0123456789abcdef with space").is_err());
        assert!(check_token("0123456789abcdef").is_ok());
    }
}
