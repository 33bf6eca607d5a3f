//! `GET /metrics`: the daemon in OpenMetrics text (what Prometheus scrapes), names prefixed
//! `gemba_`.
//!
//! What flows in: at scrape time, the counters the stages already keep (camera stats, the
//! daemon's and the monitor's counters, the store's usage and evictions, the loaded bundle's
//! provider reports, the request queue) are read by a collector — nothing is mirrored. Between
//! scrapes, the API's own counters (asks, refusals, event-stream drops) and the generation
//! figures taken from the daemon's events broadcast (`done` events of every request: tokens, a
//! time-to-first-sentence histogram) accumulate here. GPU memory is reported where it is known
//! without side effects: only when this process already holds a CUDA primary context (a
//! component runs on CUDA or TensorRT), read through the driver API and guarded like
//! `gemba doctor` (no driver → no GPU metrics, never a panic).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{blocking, Api, HttpError};
use crate::daemon::AppHandle;
use crate::model::Event;

type Labels = Vec<(String, String)>;

/// What the API counts itself, and what it learns from the events broadcast.
#[derive(Debug)]
pub struct Metrics {
    pub asks_accepted: Counter,
    asks_rejected: Family<Labels, Counter>,
    pub api_unauthorized: Counter,
    pub sse_clients: Gauge,
    /// Events that did not fit a client's channel (its stream re-reads them from the log).
    pub sse_overflow: Counter,
    /// Token events not kept in an ask's log (over its cap).
    pub sse_log_dropped: Counter,
    generated_tokens: Counter,
    prompt_tokens: Counter,
    generations: Family<Labels, Counter>,
    decode_tokens_per_s: Gauge<f64, AtomicU64>,
    ttfs: Histogram,
    ttft: Histogram,
    /// Events the metrics listener missed (the broadcast ran ahead of it).
    events_lagged: Counter,
    /// Connections open now, refused past `api.max_connections`, closed for not sending their
    /// headers within `api.header_timeout`.
    pub connections: Gauge,
    pub connections_refused: Counter,
    pub connections_timed_out: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds: 50 ms to ~100 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 12)
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            asks_accepted: Counter::default(),
            asks_rejected: Family::default(),
            api_unauthorized: Counter::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            connections_timed_out: Counter::default(),
            sse_clients: Gauge::default(),
            sse_overflow: Counter::default(),
            sse_log_dropped: Counter::default(),
            generated_tokens: Counter::default(),
            prompt_tokens: Counter::default(),
            generations: Family::default(),
            decode_tokens_per_s: Gauge::default(),
            ttfs: Histogram::new(latency_buckets()),
            ttft: Histogram::new(latency_buckets()),
            events_lagged: Counter::default(),
        }
    }

    pub fn asks_rejected(&self, reason: &str) {
        self.asks_rejected
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// Takes in one generation's summary.
    pub fn observe_done(&self, d: &crate::model::Done) {
        self.generated_tokens.inc_by(d.generated_tokens as u64);
        self.prompt_tokens.inc_by(d.prompt_tokens as u64);
        let stop = serde_json::to_value(&d.stop)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| format!("{:?}", d.stop));
        self.generations
            .get_or_create(&vec![("stop".to_string(), stop.to_lowercase())])
            .inc();
        if d.generated_tokens > 1 {
            self.decode_tokens_per_s.set(d.decode_tokens_per_s);
        }
        self.ttft.observe(d.time_to_first_token_ms / 1000.0);
        if let Some(t) = d.time_to_first_sentence_ms {
            self.ttfs.observe(t / 1000.0);
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "api_asks_accepted",
            "Questions POST /ask queued",
            self.asks_accepted.clone(),
        );
        r.register(
            "api_asks_rejected",
            "Questions POST /ask refused, by reason (busy, queue_full, unloaded)",
            self.asks_rejected.clone(),
        );
        r.register(
            "api_unauthorized",
            "Requests refused for a missing or wrong bearer token",
            self.api_unauthorized.clone(),
        );
        r.register(
            "api_sse_clients",
            "Event streams open now",
            self.sse_clients.clone(),
        );
        r.register(
            "api_connections",
            "HTTP connections open now",
            self.connections.clone(),
        );
        r.register(
            "api_connections_refused",
            "Connections answered 503 and closed because api.max_connections were open",
            self.connections_refused.clone(),
        );
        r.register(
            "api_connections_timed_out",
            "Connections closed for not sending a request's headers within api.header_timeout",
            self.connections_timed_out.clone(),
        );
        r.register(
            "api_sse_overflow_events",
            "Events dropped from a slow event-stream client's buffer (re-read from the ask's log when it catches up)",
            self.sse_overflow.clone(),
        );
        r.register(
            "api_sse_log_dropped_events",
            "Token events not kept in an ask's replay log (over its cap)",
            self.sse_log_dropped.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens generated (all requests); rate() gives tokens/s",
            self.generated_tokens.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens prefilled (all requests)",
            self.prompt_tokens.clone(),
        );
        r.register(
            "generations",
            "Generations finished, by stop reason",
            self.generations.clone(),
        );
        r.register(
            "decode_tokens_per_second",
            "Decode speed of the last generation",
            self.decode_tokens_per_s.clone(),
        );
        r.register(
            "time_to_first_sentence_seconds",
            "From the start of generation to the first final sentence",
            self.ttfs.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From the start of generation (prefill included) to the first token",
            self.ttft.clone(),
        );
        r.register(
            "metrics_events_lagged",
            "Events the metrics listener missed because the broadcast ran ahead",
            self.events_lagged.clone(),
        );
    }
}

/// Follows the daemon's events broadcast for the generation figures until shutdown.
pub fn spawn_event_listener(app: &AppHandle, metrics: Arc<Metrics>) {
    let mut rx = app.events.subscribe();
    let stop = app.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = rx.recv() => match r {
                    Ok(crate::daemon::LiveEvent { event: Event::Done(d), .. }) => metrics.observe_done(&d),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => { metrics.events_lagged.inc_by(n); }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
}

/// Reads the pipeline's own counters at scrape time.
struct Pipeline {
    app: AppHandle,
    usage: Option<crate::report::Usage>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipeline")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Counts and bytes print as integers.
fn gauge_int(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One family with one labelled sample per entry.
fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    samples: &[(Labels, f64)],
) -> std::fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in samples {
        let fam = m.encode_family(labels)?;
        match ty {
            MetricType::Counter => ConstCounter::new(*v as u64).encode(fam)?,
            // Whole numbers (bytes, counts, 0/1) print as integers.
            _ if v.fract() == 0.0 && v.abs() < 9.0e15 => ConstGauge::new(*v as i64).encode(fam)?,
            _ => ConstGauge::new(*v).encode(fam)?,
        }
    }
    Ok(())
}

fn l1(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Collector for Pipeline {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let app = &self.app;
        let cams = app.cameras.lock().map(|c| c.clone()).unwrap_or_default();
        let snaps: Vec<(String, crate::capture::CameraStatsSnapshot)> = cams
            .iter()
            .map(|c| (c.name.clone(), c.stats.snapshot()))
            .collect();
        let per_cam =
            |f: &dyn Fn(&crate::capture::CameraStatsSnapshot) -> f64| -> Vec<(Labels, f64)> {
                snaps.iter().map(|(n, s)| (l1("camera", n), f(s))).collect()
            };
        use MetricType::{Counter as C, Gauge as G};
        family(
            &mut e,
            "camera_frames",
            "Frames captured and published.",
            C,
            &per_cam(&|s| s.frames as f64),
        )?;
        family(
            &mut e,
            "camera_frames_dropped",
            "Frames replaced before any consumer took them (keep-latest).",
            C,
            &per_cam(&|s| s.dropped as f64),
        )?;
        family(
            &mut e,
            "camera_device_dropped",
            "Frames the device skipped (sequence gaps).",
            C,
            &per_cam(&|s| s.device_dropped as f64),
        )?;
        family(
            &mut e,
            "camera_decode_errors",
            "Frames that could not be decoded.",
            C,
            &per_cam(&|s| s.decode_errors as f64),
        )?;
        family(
            &mut e,
            "camera_reconnects",
            "Times the camera was reopened.",
            C,
            &per_cam(&|s| s.reconnects as f64),
        )?;
        family(
            &mut e,
            "camera_fps",
            "Frames per second over the last second (0 when stalled).",
            G,
            &per_cam(&|s| s.fps),
        )?;

        let st = &app.stats;
        counter(
            &mut e,
            "queries",
            "Requests the dispatcher took (monitor, API, voice).",
            st.queries.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "reports",
            "Reports closed.",
            st.reports.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "reports_incomplete",
            "Reports closed incomplete (cancelled, deadline, worker gone).",
            st.reports_incomplete.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "query_errors",
            "Requests the model failed.",
            st.query_errors.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "report_write_errors",
            "Report writes that failed.",
            st.write_errors.load(Ordering::Relaxed),
        )?;
        let ms = &app.monitor_stats;
        counter(
            &mut e,
            "monitor_looks",
            "Monitor wake-ups (new frames, or interval ticks) that had a frame to look at.",
            ms.looks.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "monitor_unchanged",
            "Looks the change gate passed over.",
            ms.unchanged.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "monitor_dropped",
            "Monitor queries dropped because the queue was full.",
            ms.dropped_full.load(Ordering::Relaxed),
        )?;
        let cap = app.requests.capacity();
        gauge_int(
            &mut e,
            "request_queue_depth",
            "Requests waiting for the model.",
            app.requests.len() as i64,
        )?;
        gauge_int(
            &mut e,
            "request_queue_capacity",
            "Requests the queue holds at most.",
            cap as i64,
        )?;

        let info = app.worker.info();
        gauge_int(
            &mut e,
            "model_loaded",
            "1 while a bundle is loaded.",
            i64::from(app.worker.is_loaded()),
        )?;
        gauge_int(
            &mut e,
            "model_busy",
            "1 while a generation runs.",
            i64::from(app.worker.is_busy()),
        )?;
        family(
            &mut e,
            "model_info",
            "The loaded bundle (value 1)",
            G,
            &[(
                vec![
                    ("bundle_id".into(), info.bundle_id.clone()),
                    ("bundle_hash".into(), info.bundle_hash.clone()),
                ],
                1.0,
            )],
        )?;
        let prov: Vec<(Labels, f64)> = info
            .providers
            .iter()
            .map(|r| {
                (
                    vec![
                        ("component".into(), r.component.clone()),
                        ("provider".into(), r.actual().to_string()),
                    ],
                    1.0,
                )
            })
            .collect();
        family(
            &mut e,
            "model_provider",
            "Execution provider each component runs on (value 1).",
            G,
            &prov,
        )?;
        let fallbacks: Vec<(Labels, f64)> = info
            .providers
            .iter()
            .map(|r| (l1("component", &r.component), r.failures.len() as f64))
            .collect();
        family(
            &mut e,
            "provider_fallbacks",
            "Providers that failed to register for the loaded bundle (each a fallback to the next).",
            G,
            &fallbacks,
        )?;

        if let Some(u) = &self.usage {
            let kinds = [
                ("media", u.media_bytes),
                ("html", u.html_bytes),
                ("index", u.index_bytes),
            ];
            let by_kind: Vec<(Labels, f64)> = kinds
                .iter()
                .map(|(k, v)| (l1("kind", k), *v as f64))
                .collect();
            family(
                &mut e,
                "store_bytes",
                "Report store size by kind.",
                G,
                &by_kind,
            )?;
            gauge_int(
                &mut e,
                "store_total_bytes",
                "Report store size the byte budget counts.",
                u.total_bytes as i64,
            )?;
            if let Some(m) = u.max_bytes {
                gauge_int(
                    &mut e,
                    "store_max_bytes",
                    "Report store byte budget.",
                    m as i64,
                )?;
            }
            if let Some(f) = u.fs_free_bytes {
                gauge_int(
                    &mut e,
                    "store_fs_free_bytes",
                    "Free space on the store's file system.",
                    f as i64,
                )?;
            }
            gauge_int(
                &mut e,
                "store_reports",
                "Reports in the store.",
                u.reports as i64,
            )?;
        }
        let ev = app.store.evictions();
        counter(
            &mut e,
            "store_evicted_reports",
            "Reports evicted by retention since start.",
            ev.reports,
        )?;
        counter(
            &mut e,
            "store_evicted_bytes",
            "Bytes freed by evictions since start.",
            ev.bytes,
        )?;

        if let Some(m) = crate::publish::state() {
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            gauge_int(
                &mut e,
                "mqtt_connected",
                "1 while connected to the MQTT broker.",
                i64::from(m.connected.load(Ordering::Relaxed)),
            )?;
            gauge_int(
                &mut e,
                "mqtt_outbox_pending",
                "Messages in the outbox waiting for the broker's acknowledgement.",
                get(&m.pending) as i64,
            )?;
            gauge_int(
                &mut e,
                "mqtt_outbox_oldest_pending_seconds",
                "Age of the oldest waiting message.",
                (get(&m.oldest_pending_ms) / 1000) as i64,
            )?;
            counter(
                &mut e,
                "mqtt_outbox_dropped",
                "Messages dropped before delivery (their report evicted, or over the cap).",
                get(&m.dropped),
            )?;
            counter(
                &mut e,
                "mqtt_delivered",
                "Outbox messages the broker acknowledged.",
                get(&m.delivered),
            )?;
            counter(
                &mut e,
                "mqtt_sentences",
                "Live sentences published (QoS 0).",
                get(&m.sentences),
            )?;
            counter(
                &mut e,
                "mqtt_connects",
                "Connections made to the broker.",
                get(&m.connects),
            )?;
            counter(
                &mut e,
                "mqtt_connect_failures",
                "Connection attempts that failed.",
                get(&m.connect_failures),
            )?;
            counter(
                &mut e,
                "mqtt_asks",
                "Questions received on <prefix>/ask.",
                get(&m.asks),
            )?;
            counter(
                &mut e,
                "mqtt_ask_errors",
                "Questions refused as malformed or unanswerable.",
                get(&m.ask_errors),
            )?;
        }
        if let Some(rss) = resident_bytes() {
            gauge_int(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory of the daemon.",
                rss as i64,
            )?;
        }
        let uses_cuda = info
            .providers
            .iter()
            .any(|r| matches!(r.actual().to_string().as_str(), "cuda" | "tensorrt"));
        if uses_cuda {
            let gpus = gpu_memory();
            let total: Vec<(Labels, f64)> = gpus
                .iter()
                .map(|g| (l1("device", &g.index.to_string()), g.total as f64))
                .collect();
            let used: Vec<(Labels, f64)> = gpus
                .iter()
                .map(|g| {
                    (
                        l1("device", &g.index.to_string()),
                        (g.total - g.free) as f64,
                    )
                })
                .collect();
            family(
                &mut e,
                "gpu_memory_total_bytes",
                "GPU memory on the device.",
                G,
                &total,
            )?;
            family(
                &mut e,
                "gpu_memory_used_bytes",
                "GPU memory in use on the device (all processes).",
                G,
                &used,
            )?;
        }
        // Alert rules: state per rule (0 ok, 1 pending, 2 raised, 3 clearing) and changes.
        let rules = app.alerts.snapshot();
        let states: Vec<(Labels, f64)> = rules
            .iter()
            .map(|a| {
                (
                    vec![
                        ("camera".to_string(), a.camera.clone()),
                        ("rule".to_string(), a.rule.clone()),
                    ],
                    a.state.metric() as f64,
                )
            })
            .collect();
        family(
            &mut e,
            "alert_state",
            "An alert rule's state: 0 ok, 1 pending, 2 raised, 3 clearing.",
            G,
            &states,
        )?;
        let changes: Vec<(Labels, f64)> = app
            .alerts
            .transitions()
            .into_iter()
            .map(|((camera, rule, to), n)| {
                (
                    vec![
                        ("camera".to_string(), camera),
                        ("rule".to_string(), rule),
                        ("to".to_string(), to.word().to_string()),
                    ],
                    n as f64,
                )
            })
            .collect();
        family(
            &mut e,
            "alert_transitions",
            "Changes of an alert rule's state since start, by the state entered.",
            C,
            &changes,
        )?;
        if !rules.is_empty() {
            counter(
                &mut e,
                "alert_looks",
                "Looks that asked a camera's alert rules.",
                app.alerts.looks.load(std::sync::atomic::Ordering::Relaxed),
            )?;
            counter(
                &mut e,
                "alert_answer_errors",
                "Alert answers that could not be judged (a failed run, not JSON, not a choice).",
                app.alerts.errors.load(std::sync::atomic::Ordering::Relaxed),
            )?;
        }
        Ok(())
    }
}

/// Resident set size from /proc/self/statm (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * if page > 0 { page as u64 } else { 4096 })
}

struct GpuMemory {
    index: i32,
    total: u64,
    free: u64,
}

/// Free and total memory of each device whose primary context this process already holds
/// (ONNX Runtime's CUDA provider uses it). Retaining an active primary context allocates
/// nothing; a device without one is skipped rather than given a context just to be measured.
#[cfg(feature = "gpu")]
fn gpu_memory() -> Vec<GpuMemory> {
    use cudarc::driver::{result, sys};
    let mut out = Vec::new();
    // cudarc panics when the driver library is absent unless asked first.
    // SAFETY: is_culib_present only tries to load the driver library; it takes no arguments
    // and touches no CUDA state.
    if !unsafe { sys::is_culib_present() } || result::init().is_err() {
        return out;
    }
    let Ok(count) = result::device::get_count() else {
        return out;
    };
    for i in 0..count {
        let Ok(dev) = result::device::get(i) else {
            continue;
        };
        let (mut flags, mut active) = (0u32, 0i32);
        // SAFETY: plain out-parameters for a valid device handle.
        let ok = unsafe { sys::cuDevicePrimaryCtxGetState(dev, &mut flags, &mut active) }
            == sys::CUresult::CUDA_SUCCESS;
        if !ok || active == 0 {
            continue;
        }
        // SAFETY: the context is retained before use and released after; this thread's current
        // context is restored to none.
        unsafe {
            let Ok(ctx) = result::primary_ctx::retain(dev) else {
                continue;
            };
            if result::ctx::set_current(ctx).is_ok() {
                if let Ok((free, total)) = result::mem_get_info() {
                    out.push(GpuMemory {
                        index: i,
                        total: total as u64,
                        free: free as u64,
                    });
                }
                let _ = result::ctx::set_current(std::ptr::null_mut());
            }
            let _ = result::primary_ctx::release(dev);
        }
    }
    out
}

#[cfg(not(feature = "gpu"))]
fn gpu_memory() -> Vec<GpuMemory> {
    Vec::new()
}

/// The whole exposition as text.
pub fn render(app: &AppHandle, metrics: &Metrics) -> String {
    let mut r = Registry::with_prefix("gemba");
    metrics.register(&mut r);
    let usage = app.store.usage().ok();
    r.register_collector(Box::new(Pipeline {
        app: app.clone(),
        usage,
    }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
        let _ = writeln!(out, "# EOF");
    }
    out
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`.
pub async fn handler(State(api): State<Api>) -> Result<Response, HttpError> {
    let app = api.inner.app.clone();
    let metrics = Arc::clone(&api.inner.metrics);
    // The store's usage is an SQLite query and the GPU query a driver call: off the async threads.
    let text = blocking(move || render(&app, &metrics)).await?;
    let mut res = (StatusCode::OK, text).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(res)
}
