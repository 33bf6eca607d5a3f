//! The model worker: one thread that owns the engine (ONNX sessions take `&mut`), takes jobs in
//! and sends events out.
//!
//! Jobs arrive on a bounded channel; each `Ask` carries its own event channel, so a generation
//! streams to whoever asked (the report writer, speech output, API listeners) while the worker
//! moves on. `Reload` swaps in a new bundle only once it has loaded: a bundle that fails to load
//! leaves the old one serving, and the failure is visible in [`ModelInfo::last_error`].
//! `Unload` drops the sessions (their memory goes back) until the next `Reload`; asks meanwhile
//! fail at once with [`NOT_LOADED`], and [`Worker::is_loaded`] says so to readiness checks.
//!
//! The worker marks its watchdog stage alive while idle (every second) and between tokens, so a
//! generation stuck inside ONNX Runtime stops the beats.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::model::generate::{CancelToken, Done, Event, GenerateError};
use crate::model::providers::{ProviderPolicy, ProviderReport};
use crate::model::runtime::Runtime;
use crate::model::Engine;
use crate::systemd::Beat;

/// What a question holds: text, camera frames (named as the prompt names them) and audio.
#[derive(Debug, Clone, Default)]
pub struct AskInput {
    pub text: String,
    pub frames: Vec<crate::capture::Frame>,
    pub audio: Vec<crate::capture::AudioClip>,
}

/// Per-job generation settings (the rest comes from the bundle).
#[derive(Debug, Clone)]
pub struct AskSettings {
    pub system_prompt: Option<String>,
    pub max_new_tokens: usize,
    pub deadline: Duration,
    /// What the requester asked for over the config's and the bundle's defaults.
    pub overrides: GenOverrides,
    /// Prompt-lookup speculative decoding (`[model] speculate`).
    pub speculate: bool,
    /// KV prefix reuse (`[model] prefix_cache`, `prefix_cache_ttl`).
    pub prefix_cache: crate::model::prefix::PrefixLimits,
}

/// Per-request generation choices (the OpenAI-compatible API's `max_tokens`, `temperature`,
/// `top_p`, `seed`, `stop`, system message); `None` keeps the config's or the bundle's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenOverrides {
    pub system_prompt: Option<String>,
    /// At most the config's `model.max_new_tokens`.
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy; above 0 samples.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// The shape the answer is held to (constrained decoding); `None` = free text.
    pub response_format: Option<crate::model::constrain::ResponseFormat>,
}

pub enum Job {
    Ask {
        input: AskInput,
        settings: AskSettings,
        cancel: CancelToken,
        /// Every event of the generation, then the channel closes. An error ends it without
        /// `Done`; its text is sent as [`JobEvent::Failed`].
        events: tokio::sync::mpsc::UnboundedSender<JobEvent>,
    },
    Reload {
        path: PathBuf,
        policy: ProviderPolicy,
        reply: tokio::sync::oneshot::Sender<Result<ModelInfo, String>>,
    },
    /// Drops the engine; answered once it is gone.
    Unload {
        reply: tokio::sync::oneshot::Sender<()>,
    },
}

/// Why an ask fails while the model is unloaded.
pub const NOT_LOADED: &str = "no model loaded (it was unloaded; a reload loads it again)";

#[derive(Debug, Clone)]
pub enum JobEvent {
    Event(Event),
    Failed(String),
}

/// The loaded bundle, as the daemon's status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub bundle_dir: PathBuf,
    pub bundle_id: String,
    pub bundle_hash: String,
    pub model_type: String,
    pub providers: Vec<ProviderReport>,
    #[serde(with = "crate::daemon::worker::rfc3339")]
    pub loaded_at: SystemTime,
    pub load_ms: f64,
    /// The bundle's own smoke test (from its signed manifest), run after loading; `None` for a
    /// bundle without a manifest.
    pub smoke_ok: Option<bool>,
    /// The last failed (re)load, while the previous bundle keeps serving.
    pub last_error: Option<String>,
}

pub(crate) mod rfc3339 {
    pub fn serialize<S: serde::Serializer>(
        t: &std::time::SystemTime,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let ts = jiff::Timestamp::try_from(*t).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&ts.to_string())
    }
}

/// sha256 over every file of the bundle directory (sorted relative paths and contents): the
/// identity of the exact weights a report was made with.
pub fn bundle_hash(dir: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut all = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let rel = f
            .strip_prefix(dir)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        let mut h = Sha256::new();
        let mut file = std::fs::File::open(&f)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        all.update(rel.as_bytes());
        all.update([0]);
        all.update(h.finalize());
    }
    Ok(hex::encode(all.finalize()))
}

fn load(
    rt: &'static Runtime,
    path: &Path,
    policy: &ProviderPolicy,
) -> Result<(Engine, ModelInfo), String> {
    let t0 = std::time::Instant::now();
    // Test hook: `GEMBA_TEST_LOAD_DELAY_MS` makes the load take that much longer (a big bundle on
    // a board, or a stuck file system), so the tests can signal the daemon while it loads.
    if let Some(ms) = std::env::var("GEMBA_TEST_LOAD_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    // Resolve `current` symlinks now: the info names the exact version that was loaded.
    let dir = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut engine = Engine::load(rt, &dir, policy).map_err(|e| e.to_string())?;
    // An installed bundle is identified by its signed manifest (the id and hash `gemba model
    // install` waits for), and proves itself with the manifest's smoke prompt.
    let (id, hash, smoke_ok) = match crate::update::identify(&dir) {
        Ok(ident) => {
            let smoke =
                crate::update::smoke::run_smoke(&mut engine, &ident.manifest.smoke, &mut |_| {});
            if let Err(e) = &smoke {
                log::error!("{}: smoke test failed: {e}", ident.id);
            }
            (ident.id, ident.hash, Some(smoke.is_ok()))
        }
        Err(_) => {
            let hash = bundle_hash(&dir).map_err(|e| format!("hashing {}: {e}", dir.display()))?;
            (engine.bundle.id(), hash, None)
        }
    };
    let info = ModelInfo {
        bundle_id: id,
        bundle_dir: dir,
        bundle_hash: hash,
        smoke_ok,
        model_type: engine.bundle.config.model.model_type.clone(),
        providers: engine.provider_reports(),
        loaded_at: SystemTime::now(),
        load_ms: t0.elapsed().as_secs_f64() * 1000.0,
        last_error: None,
    };
    Ok((engine, info))
}

/// Handle to the worker thread.
#[derive(Clone)]
pub struct Worker {
    tx: std::sync::mpsc::SyncSender<Job>,
    info: Arc<RwLock<ModelInfo>>,
    busy: Arc<std::sync::atomic::AtomicBool>,
    loaded: Arc<std::sync::atomic::AtomicBool>,
}

impl Worker {
    /// Loads the bundle at `path` on a new thread and returns once it is loaded (or failed).
    pub fn spawn(
        rt: &'static Runtime,
        path: &Path,
        policy: &ProviderPolicy,
        beat: Beat,
    ) -> Result<Worker, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(4);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        let policy = policy.clone();
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy2 = Arc::clone(&busy);
        let loaded = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let loaded2 = Arc::clone(&loaded);
        std::thread::Builder::new()
            .name("gemba-model".into())
            .spawn(move || {
                let (engine, info) = match load(rt, &path, &policy) {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let shared = Arc::new(RwLock::new(info));
                let stage = crate::stage::enter("model worker");
                let _ = ready_tx.send(Ok(Arc::clone(&shared)));
                crate::stage::injected_fault("model worker");
                run(Some(engine), rx, shared, rt, beat, busy2, loaded2);
                stage.finish();
            })
            .map_err(|e| format!("cannot start the model thread: {e}"))?;
        let info = ready_rx
            .recv()
            .map_err(|_| "the model thread died while loading".to_string())??;
        Ok(Worker {
            tx,
            info,
            busy,
            loaded,
        })
    }

    pub fn info(&self) -> ModelInfo {
        self.info.read().expect("poisoned").clone()
    }

    /// Whether a generation is running now.
    pub fn is_busy(&self) -> bool {
        self.busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a bundle is loaded (false after [`Worker::unload`] until the next reload).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops the loaded bundle once the generation in flight (if any) has finished.
    pub async fn unload(&self) -> Result<(), String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(Job::Unload { reply }).map_err(drop))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the model worker has stopped".to_string())?;
        rx.await
            .map_err(|_| "the model worker stopped during the unload".to_string())
    }

    /// Queues a job; blocks while the worker's queue is full.
    pub fn submit(&self, job: Job) -> Result<(), String> {
        self.tx
            .send(job)
            .map_err(|_| "the model worker has stopped".to_string())
    }

    /// Loads another bundle; the old one keeps serving if this fails.
    pub async fn reload(&self, path: &Path, policy: &ProviderPolicy) -> Result<ModelInfo, String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let tx = self.tx.clone();
        let job = Job::Reload {
            path: path.to_path_buf(),
            policy: policy.clone(),
            reply,
        };
        tokio::task::spawn_blocking(move || tx.send(job).map_err(drop))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the model worker has stopped".to_string())?;
        rx.await
            .map_err(|_| "the model worker stopped during the reload".to_string())?
    }
}

fn run(
    mut engine: Option<Engine>,
    rx: std::sync::mpsc::Receiver<Job>,
    info: Arc<RwLock<ModelInfo>>,
    rt: &'static Runtime,
    beat: Beat,
    busy: Arc<std::sync::atomic::AtomicBool>,
    loaded: Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        beat.alive();
        let job = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(j) => j,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        match job {
            Job::Ask {
                input,
                settings,
                cancel,
                events,
            } => {
                let Some(engine) = engine.as_mut() else {
                    let _ = events.send(JobEvent::Failed(NOT_LOADED.to_string()));
                    continue;
                };
                busy.store(true, std::sync::atomic::Ordering::Relaxed);
                let result = ask(engine, &input, &settings, &cancel, &beat, &events);
                busy.store(false, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = result {
                    let _ = events.send(JobEvent::Failed(e.to_string()));
                }
            }
            Job::Unload { reply } => {
                loaded.store(false, std::sync::atomic::Ordering::Relaxed);
                engine = None;
                let _ = reply.send(());
            }
            Job::Reload {
                path,
                policy,
                reply,
            } => {
                beat.alive();
                match load(rt, &path, &policy) {
                    Ok((new, new_info)) => {
                        engine = Some(new);
                        loaded.store(true, std::sync::atomic::Ordering::Relaxed);
                        *info.write().expect("poisoned") = new_info.clone();
                        let _ = reply.send(Ok(new_info));
                    }
                    Err(e) => {
                        info.write().expect("poisoned").last_error = Some(e.clone());
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }
}

fn ask(
    engine: &mut Engine,
    input: &AskInput,
    settings: &AskSettings,
    cancel: &CancelToken,
    beat: &Beat,
    events: &tokio::sync::mpsc::UnboundedSender<JobEvent>,
) -> Result<Done, GenerateError> {
    let mut params = engine.default_params();
    let o = &settings.overrides;
    params.max_new_tokens = Some(
        o.max_new_tokens
            .map_or(settings.max_new_tokens, |n| n.min(settings.max_new_tokens)),
    );
    params.deadline = Some(settings.deadline);
    if let Some(t) = o.temperature {
        params.sampling.do_sample = t > 0.0;
        params.sampling.temperature = t;
    }
    if let Some(p) = o.top_p {
        params.sampling.top_p = p;
    }
    if let Some(seed) = o.seed {
        params.sampling.seed = seed;
    }
    params.stop_strings.extend(o.stop.iter().cloned());
    let system_prompt = o
        .system_prompt
        .as_deref()
        .or(settings.system_prompt.as_deref());
    if settings.speculate {
        params.speculation = crate::model::speculate::Speculation::default();
    }
    if engine.decoder.prefix.limits != settings.prefix_cache {
        engine.decoder.prefix.set_limits(settings.prefix_cache);
    }
    // Test hook: `GEMBA_TEST_TOKEN_DELAY_MS` slows each token down to a real board's pace (the
    // tiny test models decode thousands of tokens per second), so tests can show what overlaps
    // with generation.
    let delay = std::env::var("GEMBA_TEST_TOKEN_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    engine.ask(input, system_prompt, &params, cancel, &mut |ev| {
        if let (Some(d), Event::Token(_)) = (delay, &ev) {
            std::thread::sleep(d);
        }
        beat.alive();
        // A listener that went away must not stop the generation (the report still wants it).
        let _ = events.send(JobEvent::Event(ev));
    })
}
