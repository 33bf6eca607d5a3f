//! The daemon (`gemba run`): [`run`]`(settings, shutdown)` builds the pipeline from
//! [`Settings`], spawns the stages, and shuts down in order when the `shutdown` future completes
//! (mini-redis style: `gemba run` passes [`stop_signals`], a test its own future).
//!
//! ```text
//! cameras (threads, latest frame on watch) ─▶ monitor (interval + change gate) ─┐
//!   API, voice, MQTT (a person's question) ──────────────────────────────────────┴▶ request queue
//!   (bounded, with classes) ─▶ dispatcher ─▶ model worker (thread owning the sessions) ─▶ events
//!   ─▶ report writer (store), listeners
//! ```
//! Start-up: open the store (recovery marks cut-off reports incomplete), bind the API, load ONNX
//! Runtime, open the cameras (a camera that cannot work stops start-up before the model loads),
//! load the model, write `status.json`, tell systemd READY, start the cameras' threads and the
//! monitors. A stop (SIGTERM, SIGINT) during start-up ends it at once. Every stage is supervised
//! ([`crate::stage`]): one that dies stops the daemon with an error. SIGHUP reloads
//! the config and the model (the old model serves until the new one has loaded). SIGTERM stops
//! the sources; the query in flight gets `drain_deadline` to finish, after which its generation
//! is cancelled and its report closed as incomplete; nothing acknowledged is lost.
//!
//! Its parts: [`request`] (the request types and the [`AppHandle`] other stages reach the daemon
//! through), [`queue`] (one queue with classes: a person's question before alerts before
//! routine looks), [`dispatch`] (request → model worker → report), [`worker`] (the thread that
//! owns the ONNX sessions), [`cameras`] (sources opened before the model loads), [`status`]
//! (`status.json`, shared with the updater).

pub(crate) mod cameras;
pub(crate) mod dispatch;
pub(crate) mod prompt;
pub(crate) mod queue;
pub(crate) mod request;
pub mod status;
pub mod worker;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::model::runtime;
use crate::monitor::{Looks, MonitorStats};
use crate::report::{RetentionPolicy, Store};
use crate::systemd::{self, Progress};
use cameras::{open_cameras, start_pipeline};
use dispatch::{Dispatch, InFlight};
use queue::RequestQueue;
use request::MonitorLooks;
pub use request::{AppHandle, FollowUp, LiveEvent, Request, RequestEvent};
use status::{write_status, write_status_with, DaemonStats};
use worker::Worker;

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
        s.api.listen_on(l)?;
    }
    Ok(s)
}

/// Reads the settings again (SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<Settings> + Send + Sync>;

/// What `gemba run`'s command line adds to [`run`].
#[derive(Default)]
pub struct Options {
    /// How SIGHUP gets the new settings; `None` reloads the running settings (the model and
    /// the cameras are opened again).
    pub reload: Option<Reload>,
    /// Stop by itself this long after it started serving, as if SIGTERM came (demos, soak runs).
    pub stop_after: Option<Duration>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("reload", &self.reload.is_some())
            .field("stop_after", &self.stop_after)
            .finish()
    }
}

/// Completes at SIGTERM or SIGINT, naming it. The handlers are installed when it is first
/// polled, which [`run`] does before anything else.
pub async fn stop_signals() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (term, int) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    let (mut term, mut int) = match (term, int) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            log::error!("cannot install the SIGTERM/SIGINT handlers: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// `gemba run`: loads the settings, starts the async runtime and runs the daemon until
/// `shutdown` (normally [`stop_signals`]).
pub fn main<F>(args: RunArgs, shutdown: F) -> Result<()>
where
    F: Future<Output = &'static str> + Send,
{
    let settings = settings_for(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gemba-rt")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    crate::stage::install_panic_hook();
    let opts = Options {
        stop_after: args.stop_after,
        reload: Some(Box::new(move || settings_for(&args))),
    };
    let result = rt.block_on(run_with(settings, opts, shutdown));
    // A stop during the model load returns while the load still runs on a blocking thread;
    // do not wait for it (nothing of the store's is in flight then).
    rt.shutdown_timeout(Duration::from_secs(1));
    result
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

/// Runs the daemon on `settings` until `shutdown` completes (its output names the cause, for
/// the log): `gemba run` passes [`stop_signals`] (SIGTERM, SIGINT); a test passes its own future.
/// SIGHUP reloads the settings, the model and the cameras (see [`Options::reload`]).
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = &'static str> + Send,
) -> Result<()> {
    run_with(settings, Options::default(), shutdown).await
}

/// [`run`] with `gemba run`'s options (how SIGHUP reloads the settings, `--stop-after`).
pub async fn run_with(
    settings: Settings,
    opts: Options,
    shutdown: impl Future<Output = &'static str> + Send,
) -> Result<()> {
    // The shutdown future is polled from the start: a stop during start-up ends it (below);
    // once the stages run, it is a clean, ordered stop.
    tokio::pin!(shutdown);
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    systemd::status("starting");
    for d in [&settings.data_dir, &settings.state_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Start-up (store recovery, API bind, cameras, the model load) races SIGTERM/SIGINT: nothing
    // is in flight yet, so a stop request ends the process at once instead of after a load that
    // may take minutes (or hang on a stuck file system). A recovery cut short is as safe as one
    // cut by kill -9 (tests/report_crash.rs).
    // A Mutex, not a Cell, so the daemon's future is Send (a test may spawn it).
    let phase = Mutex::new("opening the report store");
    let set_phase = |p: &'static str| *phase.lock().expect("poisoned") = p;
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
        set_phase("binding the API");
        let api = crate::api::bind(&settings.api).await?;
        let rt = runtime::init(settings.onnxruntime.as_deref())?;
        // Cameras are opened and checked before the model loads (minutes on a board), so a
        // camera that cannot work stops start-up at once, and READY means the cameras are open.
        set_phase("opening the cameras");
        let opened = tokio::task::spawn_blocking({
            let s = settings.clone();
            move || open_cameras(&s)
        })
        .await??;
        set_phase("loading the model");
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
        why = &mut shutdown => return stopped_during_start(why, *phase.lock().expect("poisoned")),
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
    let alerts = Arc::new(crate::alerts::Alerts::new(
        &settings.cameras,
        &store.alert_states().context("reading the alert states")?,
    ));
    let looks: Arc<dyn Looks> = Arc::new(MonitorLooks {
        queue: requests.clone(),
        stats: Arc::clone(&stats),
        alerts: Arc::clone(&alerts),
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
        alerts: Arc::clone(&alerts),
    };
    // Subscribed before the cameras start: an alert raised by the first looks, while the voice
    // stage is still loading, is announced all the same.
    let alert_events = alerts.subscribe();
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
        alerts: Arc::clone(&alerts),
    };
    // The publisher before the API serves, so /status never shows a configured [mqtt] as absent.
    let publisher = settings
        .mqtt
        .as_ref()
        .map(|m| crate::publish::start(m, handle.clone()))
        .transpose()?;
    let mut api_server = crate::api::serve(api, handle.clone());

    let voice = match crate::voice::start(&settings, handle.clone(), alert_events) {
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
                    let _w = status::STATUS_WRITE
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
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
    // `--stop-after` counts from here, once the daemon serves.
    let stop_after = async {
        match opts.stop_after {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop_after);
    loop {
        tokio::select! {
            why = &mut shutdown => {
                log::info!("{why}: stopping");
                break;
            }
            _ = failed.cancelled() => break,
            _ = &mut stop_after => {
                log::info!("stopping after {:?} (--stop-after)", opts.stop_after.unwrap_or_default());
                break;
            }
            _ = hup.recv() => {
                systemd::reloading();
                log::info!("SIGHUP: reloading the config and the model");
                let reloaded = match &opts.reload {
                    Some(f) => f(),
                    None => Ok(shared_settings.lock().expect("poisoned").clone()),
                };
                match reloaded {
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
                        alerts.configure(&new.cameras);
                        *shared_settings.lock().expect("poisoned") = new;
                    }
                }
                let _w = status::STATUS_WRITE
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
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
