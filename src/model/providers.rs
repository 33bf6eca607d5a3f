//! Execution providers per component: which of TensorRT, CUDA and CPU each ONNX session runs on.
//!
//! The order comes from the bundle's `session_options.provider_options` (as ORT-GenAI reads it),
//! unless the gemba config or the board profile overrides it per component (the fixed-shape
//! encoders on TensorRT, the decoder on CUDA, CPU last). Each provider is registered on its own
//! so that a failure is seen, logged and recorded — ONNX Runtime would otherwise fall back to CPU
//! without a word. With `strict`, a provider that fails to register, or a node that would land
//! on CPU, is an error instead of a fallback.
//!
//! What flows out: a committed `ort` session and a [`ProviderReport`] saying what was asked for,
//! what registered, what failed and why. `gemba doctor` and the daemon's status print it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use serde::{Deserialize, Serialize};

use super::genai_config::{GraphOptLevel, SessionOptions};
use super::runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(
        "{component}: provider \"{name}\" in {key} is not one gemba can use (tensorrt, cuda, cpu)"
    )]
    UnknownProvider {
        component: String,
        name: String,
        key: String,
    },
    #[error("{component}: {provider} failed to register and providers are strict: {reason}")]
    StrictRegistration {
        component: String,
        provider: ProviderKind,
        reason: String,
    },
    #[error("{component}: cannot load {file}: {reason}")]
    Load {
        component: String,
        file: PathBuf,
        reason: String,
    },
    #[error("{component}: session option {what}: {reason}")]
    Option {
        component: String,
        what: String,
        reason: String,
    },
    #[error("{component}: cannot hash {file} for the TensorRT cache key: {source}")]
    Hash {
        component: String,
        file: PathBuf,
        source: std::io::Error,
    },
}

/// The most ONNX Runtime threads a session may ask for (intra-op or inter-op): four per logical
/// CPU of this machine. More only costs memory and start-up time (each thread has its own
/// stack and arena), and a session with thousands of them takes minutes to build and to stop.
pub fn max_threads() -> usize {
    4 * std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Tensorrt,
    Cuda,
    Cpu,
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderKind::Tensorrt => "tensorrt",
            ProviderKind::Cuda => "cuda",
            ProviderKind::Cpu => "cpu",
        })
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ProviderKind::from_genai_name(s)
            .ok_or_else(|| format!("unknown provider \"{s}\" (tensorrt, cuda, cpu)"))
    }
}

impl ProviderKind {
    /// Maps an ORT-GenAI provider name (`cuda`, `CUDA`, `tensorrt`, `TensorRT`, `cpu`).
    pub fn from_genai_name(name: &str) -> Option<ProviderKind> {
        match name.to_ascii_lowercase().as_str() {
            "cpu" => Some(ProviderKind::Cpu),
            "cuda" => Some(ProviderKind::Cuda),
            "tensorrt" | "trt" => Some(ProviderKind::Tensorrt),
            _ => None,
        }
    }
}

/// TensorRT settings. Defaults keep a small board usable: the 1 GiB default workspace of
/// ONNX Runtime is a lot on an 8 GB Orin Nano.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TensorRtSettings {
    pub fp16: bool,
    /// Bytes; `None` keeps ONNX Runtime's default.
    pub workspace_bytes: Option<u64>,
    /// Engine and timing caches live under this directory, in a sub-directory keyed by the ONNX
    /// file's content hash and the ONNX Runtime version (TensorRT's own engine id hashes names,
    /// not weights: a retrained model would silently reuse a stale engine).
    pub cache_dir: Option<PathBuf>,
    pub builder_optimization_level: Option<u8>,
    /// `name:1x3x448x448,other:…` (all three or none).
    pub profile_min_shapes: Option<String>,
    pub profile_opt_shapes: Option<String>,
    pub profile_max_shapes: Option<String>,
    /// Any other `trt_*` option, passed through.
    pub options: BTreeMap<String, String>,
}

impl Default for TensorRtSettings {
    fn default() -> Self {
        TensorRtSettings {
            fp16: true,
            workspace_bytes: None,
            cache_dir: None,
            builder_optimization_level: None,
            profile_min_shapes: None,
            profile_opt_shapes: None,
            profile_max_shapes: None,
            options: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CudaSettings {
    pub device_id: i32,
    /// Any other CUDA provider option (`arena_extend_strategy`, `enable_cuda_graph`, …).
    pub options: BTreeMap<String, String>,
}

/// What the config and the board profile say about providers. Every field is optional: unset
/// means "as the bundle says".
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderPolicy {
    /// Order for components not named in `per_component`.
    pub order: Option<Vec<ProviderKind>>,
    /// Order per component (`decoder`, `vision`, `speech`, `embedding`).
    pub per_component: BTreeMap<String, Vec<ProviderKind>>,
    /// Fail instead of falling back.
    pub strict: bool,
    pub intra_op_threads: Option<usize>,
    pub inter_op_threads: Option<usize>,
    pub tensorrt: TensorRtSettings,
    pub cuda: CudaSettings,
}

/// What happened when a component's session was built.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProviderReport {
    pub component: String,
    pub file: PathBuf,
    /// Where the order came from: `bundle`, `config`.
    pub order_from: &'static str,
    pub requested: Vec<ProviderKind>,
    /// Registered, in priority order; ONNX Runtime places each node on the first that takes it.
    pub registered: Vec<ProviderKind>,
    /// Providers that failed to register, with the reason.
    pub failures: Vec<(ProviderKind, String)>,
    pub intra_op_threads: Option<usize>,
    /// TensorRT cache directory used, when TensorRT registered.
    pub tensorrt_cache: Option<PathBuf>,
}

impl ProviderReport {
    /// The provider that runs this component's work: the first that registered (CPU otherwise).
    pub fn actual(&self) -> ProviderKind {
        self.registered
            .first()
            .copied()
            .unwrap_or(ProviderKind::Cpu)
    }

    /// One line for logs and `doctor`: `decoder: cpu (asked cuda, cpu; cuda failed: …)`.
    pub fn summary(&self) -> String {
        let asked: Vec<String> = self.requested.iter().map(|p| p.to_string()).collect();
        let mut s = format!(
            "{}: {} (asked {} from {})",
            self.component,
            self.actual(),
            asked.join(", "),
            self.order_from
        );
        for (p, why) in &self.failures {
            s.push_str(&format!("; {p} failed: {why}"));
        }
        s
    }
}

/// The provider order for `component`: the policy's, else the bundle's, with CPU appended last
/// unless strict (a strict list means exactly these).
pub fn plan(
    component: &str,
    bundle: &SessionOptions,
    bundle_key: &str,
    policy: &ProviderPolicy,
) -> Result<(Vec<ProviderKind>, &'static str), ProviderError> {
    let (mut order, from) = if let Some(o) = policy
        .per_component
        .get(component)
        .or(policy.order.as_ref())
    {
        (o.clone(), "config")
    } else {
        let mut o = Vec::new();
        for p in &bundle.provider_options {
            let kind = ProviderKind::from_genai_name(&p.name).ok_or_else(|| {
                ProviderError::UnknownProvider {
                    component: component.into(),
                    name: p.name.clone(),
                    key: format!("{bundle_key}.session_options.provider_options"),
                }
            })?;
            o.push(kind);
        }
        (o, "bundle")
    };
    let mut seen = std::collections::HashSet::new();
    order.retain(|p| seen.insert(*p));
    if !policy.strict && !order.contains(&ProviderKind::Cpu) {
        order.push(ProviderKind::Cpu);
    }
    if order.is_empty() {
        order.push(ProviderKind::Cpu);
    }
    Ok((order, from))
}

/// Hash of an ONNX file and its external data (`<file>.data`), for cache keys and bundle ids.
pub fn content_hash(onnx: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut files = vec![onnx.to_path_buf()];
    let data = PathBuf::from(format!("{}.data", onnx.display()));
    if data.is_file() {
        files.push(data);
    }
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut file = std::fs::File::open(&f)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// ONNX Runtime's session config key for the intra-op pool spinning between runs.
pub const SPINNING: &str = "session.intra_op.allow_spinning";

/// The session config entries for `component`: the bundle's, and for every component but the
/// decoder `session.intra_op.allow_spinning = 0` unless the bundle sets it.
///
/// Only the decoder keeps its threads spinning between runs. The vision, speech and embedding
/// sessions run once per prompt (the embedding once per token, for a moment); their idle pools,
/// spinning after each run, took the cores from the decoder's prefill that follows: on 2 cores
/// the demo's 1,128-token prefill went from 34 ms to 65–100 ms, and a camera look from about
/// 110 ms to 66 ms without it (README, Looks).
pub fn config_entries(component: &str, bundle: &SessionOptions) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = bundle
        .config_entries
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if component != "decoder" && !bundle.config_entries.contains_key(SPINNING) {
        out.push((SPINNING.into(), "0".into()));
    }
    out
}

/// Builds one component's session on the planned providers, with [`config_entries`].
pub fn build_session(
    rt: &Runtime,
    component: &str,
    onnx: &Path,
    bundle: &SessionOptions,
    bundle_key: &str,
    policy: &ProviderPolicy,
) -> Result<(Session, ProviderReport), ProviderError> {
    let (order, order_from) = plan(component, bundle, bundle_key, policy)?;
    let opt_err = |what: &str, e: ort::Error| ProviderError::Option {
        component: component.into(),
        what: what.into(),
        reason: e.to_string(),
    };
    let mut b = Session::builder(&rt.env).map_err(|e| opt_err("builder", e))?;
    let intra = policy
        .intra_op_threads
        .or(bundle.intra_op_num_threads.map(|n| n as usize));
    let inter = policy
        .inter_op_threads
        .or(bundle.inter_op_num_threads.map(|n| n as usize));
    for (n, what) in [
        (intra, "intra_op_num_threads"),
        (inter, "inter_op_num_threads"),
    ] {
        if let Some(n) = n.filter(|&n| n > max_threads()) {
            return Err(ProviderError::Option {
                component: component.into(),
                what: what.into(),
                reason: format!(
                    "{n} threads is more than {} (4 per CPU of this machine)",
                    max_threads()
                ),
            });
        }
    }
    if let Some(n) = intra {
        b = b
            .with_intra_threads(n)
            .map_err(|e| opt_err("intra_op_num_threads", e.into()))?;
    }
    if let Some(n) = inter {
        b = b
            .with_inter_threads(n)
            .map_err(|e| opt_err("inter_op_num_threads", e.into()))?;
    }
    if let Some(level) = bundle.graph_optimization_level {
        let l = match level {
            GraphOptLevel::DisableAll => GraphOptimizationLevel::Disable,
            GraphOptLevel::Basic => GraphOptimizationLevel::Level1,
            GraphOptLevel::Extended => GraphOptimizationLevel::Level2,
            GraphOptLevel::All => GraphOptimizationLevel::All,
        };
        b = b
            .with_optimization_level(l)
            .map_err(|e| opt_err("graph_optimization_level", e.into()))?;
    }
    if let Some(m) = bundle.enable_mem_pattern {
        b = b
            .with_memory_pattern(m)
            .map_err(|e| opt_err("enable_mem_pattern", e.into()))?;
    }
    for (k, v) in config_entries(component, bundle) {
        b = b
            .with_config_entry(&k, &v)
            .map_err(|e| opt_err(&k, e.into()))?;
    }
    if let Some(prefix) = &bundle.enable_profiling {
        // As in ORT-GenAI: the value is the file prefix; ONNX Runtime appends a timestamp.
        b = b
            .with_profiling(prefix)
            .map_err(|e| opt_err("enable_profiling", e.into()))?;
    }

    let mut report = ProviderReport {
        component: component.into(),
        file: onnx.to_path_buf(),
        order_from,
        requested: order.clone(),
        registered: Vec::new(),
        failures: Vec::new(),
        intra_op_threads: intra,
        tensorrt_cache: None,
    };
    let bundle_opts = |kind: ProviderKind| -> Vec<(String, String)> {
        bundle
            .provider_options
            .iter()
            .filter(|p| ProviderKind::from_genai_name(&p.name) == Some(kind))
            .flat_map(|p| p.options.iter().cloned())
            .collect()
    };
    for kind in &order {
        let dispatch = match kind {
            ProviderKind::Cpu => {
                report.registered.push(ProviderKind::Cpu);
                continue;
            }
            ProviderKind::Cuda => {
                let mut cuda = ep::CUDA::default().with_device_id(policy.cuda.device_id);
                for (k, v) in bundle_opts(ProviderKind::Cuda)
                    .into_iter()
                    .chain(policy.cuda.options.clone())
                {
                    cuda = cuda.with_arbitrary_config(k, v);
                }
                cuda.build().error_on_failure()
            }
            ProviderKind::Tensorrt => {
                let t = &policy.tensorrt;
                let mut trt = ep::TensorRT::default()
                    .with_device_id(policy.cuda.device_id)
                    .with_fp16(t.fp16);
                if let Some(ws) = t.workspace_bytes {
                    trt = trt.with_max_workspace_size(ws as usize);
                }
                if let Some(l) = t.builder_optimization_level {
                    trt = trt.with_builder_optimization_level(l);
                }
                if let (Some(min), Some(opt), Some(max)) = (
                    &t.profile_min_shapes,
                    &t.profile_opt_shapes,
                    &t.profile_max_shapes,
                ) {
                    trt = trt
                        .with_profile_min_shapes(min)
                        .with_profile_opt_shapes(opt)
                        .with_profile_max_shapes(max);
                }
                if let Some(root) = &t.cache_dir {
                    let hash = content_hash(onnx).map_err(|source| ProviderError::Hash {
                        component: component.into(),
                        file: onnx.to_path_buf(),
                        source,
                    })?;
                    let dir = root.join(format!("{component}-{}-ort{}", &hash[..16], rt.version));
                    let _ = std::fs::create_dir_all(&dir);
                    let d = dir.display().to_string();
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(&d)
                        .with_timing_cache(true)
                        .with_timing_cache_path(&d);
                    report.tensorrt_cache = Some(dir);
                }
                for (k, v) in bundle_opts(ProviderKind::Tensorrt)
                    .into_iter()
                    .chain(t.options.clone())
                {
                    trt = trt.with_arbitrary_config(k, v);
                }
                trt.build().error_on_failure()
            }
        };
        match dispatch.register(&mut b) {
            Ok(()) => {
                log::info!("{component}: registered {kind}");
                report.registered.push(*kind);
            }
            Err(e) => {
                let reason = first_line(&e.to_string());
                if policy.strict {
                    return Err(ProviderError::StrictRegistration {
                        component: component.into(),
                        provider: *kind,
                        reason,
                    });
                }
                log::warn!("{component}: {kind} did not register, falling back: {reason}");
                report.tensorrt_cache = report
                    .tensorrt_cache
                    .filter(|_| *kind != ProviderKind::Tensorrt);
                report.failures.push((*kind, reason));
            }
        }
    }
    if policy.strict && !report.registered.contains(&ProviderKind::Cpu) {
        b = b
            .with_disable_cpu_fallback()
            .map_err(|e| opt_err("disable_cpu_fallback", e.into()))?;
    }
    let session = b.commit_from_file(onnx).map_err(|e| ProviderError::Load {
        component: component.into(),
        file: onnx.to_path_buf(),
        reason: first_line(&e.to_string()),
    })?;
    Ok((session, report))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::genai_config::ProviderOptions;

    fn opts(names: &[&str]) -> SessionOptions {
        SessionOptions {
            provider_options: names
                .iter()
                .map(|n| ProviderOptions {
                    name: n.to_string(),
                    options: vec![],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_decoder_spins_unless_the_bundle_says_so() {
        let spin = |component: &str, so: &SessionOptions| {
            config_entries(component, so)
                .into_iter()
                .filter(|(k, _)| k == SPINNING)
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
        };
        let plain = opts(&[]);
        assert_eq!(spin("decoder", &plain), Vec::<String>::new());
        for c in ["vision", "speech", "embedding"] {
            assert_eq!(spin(c, &plain), vec!["0".to_string()], "{c}");
        }
        // The bundle's own entry wins, once, for every component.
        let mut set = plain.clone();
        set.config_entries.insert(SPINNING.into(), "1".into());
        set.config_entries
            .insert("session.other".into(), "x".into());
        for c in ["decoder", "vision"] {
            assert_eq!(spin(c, &set), vec!["1".to_string()], "{c}");
            assert!(config_entries(c, &set).contains(&("session.other".into(), "x".into())));
        }
    }

    #[test]
    fn bundle_order_gets_cpu_last() {
        let (o, from) = plan(
            "decoder",
            &opts(&["cuda"]),
            "model.decoder",
            &ProviderPolicy::default(),
        )
        .unwrap();
        assert_eq!(o, vec![ProviderKind::Cuda, ProviderKind::Cpu]);
        assert_eq!(from, "bundle");
        let (o, _) = plan(
            "decoder",
            &opts(&[]),
            "model.decoder",
            &ProviderPolicy::default(),
        )
        .unwrap();
        assert_eq!(o, vec![ProviderKind::Cpu]);
    }

    #[test]
    fn config_overrides_per_component_then_default() {
        let mut p = ProviderPolicy {
            order: Some(vec![ProviderKind::Cuda]),
            ..Default::default()
        };
        p.per_component.insert(
            "vision".into(),
            vec![ProviderKind::Tensorrt, ProviderKind::Cuda],
        );
        let (o, from) = plan("vision", &opts(&["cpu"]), "model.vision", &p).unwrap();
        assert_eq!(
            (o, from),
            (
                vec![
                    ProviderKind::Tensorrt,
                    ProviderKind::Cuda,
                    ProviderKind::Cpu
                ],
                "config"
            )
        );
        let (o, _) = plan("decoder", &opts(&[]), "model.decoder", &p).unwrap();
        assert_eq!(o, vec![ProviderKind::Cuda, ProviderKind::Cpu]);
    }

    #[test]
    fn strict_means_exactly_the_list() {
        let p = ProviderPolicy {
            order: Some(vec![ProviderKind::Cuda]),
            strict: true,
            ..Default::default()
        };
        let (o, _) = plan("decoder", &opts(&[]), "model.decoder", &p).unwrap();
        assert_eq!(o, vec![ProviderKind::Cuda]);
    }

    #[test]
    fn unknown_bundle_provider_names_the_key() {
        let e = plan(
            "decoder",
            &opts(&["dml"]),
            "model.decoder",
            &ProviderPolicy::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("model.decoder.session_options.provider_options"),
            "{e}"
        );
        assert!(e.to_string().contains("dml"), "{e}");
    }
}
