//! The daemon's configuration: a TOML file (default `/etc/gemba/gemba.toml`) merged over a board
//! profile (`board/<name>.toml`), validated into [`Settings`].
//!
//! Each file is first checked on its own against the schema, so an unknown key is reported with
//! the file it is in and its full path (`cameras[1].fsp`). The profile is then deep-merged under
//! the config (tables merge, values and arrays from the config win) and the result is validated:
//! durations and sizes in human units (`"30s"`, `"2GiB"`) and ranges. Each section is validated
//! by the module that owns it — `[[cameras]]` and `[microphone]` by [`crate::capture::config`],
//! `[api]` (token, exposure) by [`crate::api::config`], `[voice]` by [`crate::voice::config`],
//! `[mqtt]` by [`crate::publish::config`] — which return `(key, message)`; this module attaches
//! the file the key came from. [`Settings`] is what the rest of gemba consumes; an invalid state
//! cannot be represented in it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::providers::{CudaSettings, ProviderKind, ProviderPolicy, TensorRtSettings};

pub const DEFAULT_CONFIG: &str = "/etc/gemba/gemba.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML: {msg}")]
    Syntax { path: PathBuf, msg: String },
    #[error("{path}: {key}: {msg}")]
    Key {
        path: PathBuf,
        key: String,
        msg: String,
    },
    #[error("board profile \"{name}\" not found (looked for {tried}); known profiles: {known}")]
    NoBoard {
        name: String,
        tried: String,
        known: String,
    },
}

use crate::capture::config::CameraSettings;
pub use crate::sys::duration::HumanDuration;

/// A size in human units (`"512MiB"`, `"2GiB"`, `"100 MB"`) or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(HumanSize(n)),
            Raw::S(s) => s
                .parse::<bytesize::ByteSize>()
                .map(|b| HumanSize(b.as_u64()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "\"{s}\" is not a size ({e}); write e.g. \"512MiB\", \"2GiB\""
                    ))
                }),
        }
    }
}

/// A size, or `"auto"` (the owner picks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoSize {
    Auto,
    Size(HumanSize),
}

impl<'de> Deserialize<'de> for AutoSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Auto(AutoWord),
            Size(HumanSize),
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum AutoWord {
            Auto,
        }
        match Raw::deserialize(d) {
            Ok(Raw::Auto(_)) => Ok(AutoSize::Auto),
            Ok(Raw::Size(s)) => Ok(AutoSize::Size(s)),
            Err(_) => Err(serde::de::Error::custom(
                "expected \"auto\" or a size (bytes, or e.g. \"64MiB\")",
            )),
        }
    }
}

impl Serialize for HumanSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&bytesize::ByteSize(self.0).display().iec().to_string())
    }
}

/// `store.min_free`: free space the store leaves on its file system for everything else (logs,
/// engine caches, the OS). `"auto"` (the default): 5 % of the file system, at most 64 MiB — so a
/// 50 MB card keeps 2.5 MB free, not more than it holds; `"N%"` of the file system; or a size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    Auto,
    Percent(f64),
    Bytes(u64),
}

impl MinFree {
    /// The floor in bytes on a file system of `fs_bytes`.
    pub fn bytes_on(self, fs_bytes: u64) -> u64 {
        match self {
            MinFree::Auto => (fs_bytes / 20).min(64 << 20),
            MinFree::Percent(p) => (fs_bytes as f64 * p / 100.0) as u64,
            MinFree::Bytes(b) => b,
        }
    }
}

impl<'de> Deserialize<'de> for MinFree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(MinFree::Bytes(n)),
            Raw::S(s) if s == "auto" => Ok(MinFree::Auto),
            Raw::S(s) => match s.strip_suffix('%') {
                Some(p) => match p.trim().parse::<f64>() {
                    Ok(p) if p.is_finite() && (0.0..=50.0).contains(&p) => Ok(MinFree::Percent(p)),
                    _ => Err(serde::de::Error::custom(format!(
                        "\"{s}\" is not a share of the file system from 0% to 50%"
                    ))),
                },
                None => s.parse::<bytesize::ByteSize>().map(|b| MinFree::Bytes(b.as_u64())).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "\"{s}\" is not \"auto\", a percentage (\"5%\") or a size ({e}); write e.g. \"64MiB\""
                    ))
                }),
            },
        }
    }
}

impl Serialize for MinFree {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MinFree::Auto => s.serialize_str("auto"),
            MinFree::Percent(p) => s.serialize_str(&format!("{p}%")),
            MinFree::Bytes(b) => HumanSize(*b).serialize(s),
        }
    }
}

// ---- The file schema (every field optional, so a profile and a config can each give part) ----

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Board profile name (`board/<name>.toml`); default: detected from the device tree.
    pub board: Option<String>,
    /// The report store.
    pub data_dir: Option<PathBuf>,
    /// Where the daemon writes status.json and its pid (default: data_dir).
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub onnxruntime: RawOnnxRuntime,
    #[serde(default)]
    pub model: RawModel,
    #[serde(default)]
    pub providers: RawProviders,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub monitor: RawMonitor,
    #[serde(default)]
    pub cameras: Vec<crate::capture::config::RawCamera>,
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub api: crate::api::config::RawApi,
    /// The microphone the voice stage listens on.
    pub microphone: Option<crate::capture::config::RawMicrophone>,
    /// Spoken questions and answers (needs `[microphone]`).
    pub voice: Option<crate::voice::config::RawVoice>,
    /// Fleet updates (`gemba model …`): models root, trusted keys, health gate.
    pub update: Option<crate::update::UpdateConfig>,
    /// Publishing to an MQTT broker (src/publish/, docs/mqtt.md).
    pub mqtt: Option<crate::publish::RawMqtt>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnnxRuntime {
    pub library: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The bundle directory (for fleet installs: `<models>/current`).
    pub path: Option<PathBuf>,
    pub system_prompt: Option<String>,
    pub max_new_tokens: Option<usize>,
    pub deadline: Option<HumanDuration>,
    /// Prompt-lookup speculative decoding: `"auto"` (default: on where the bundle's greedy
    /// output stays exact, see model::exact), true or false.
    pub speculate: Option<crate::model::exact::Switch>,
    /// KV of prefilled prefixes kept for prompts that start the same way: `"auto"` (default:
    /// 64 MiB where reuse is exact, else off) or a size (0 = off).
    pub prefix_cache: Option<AutoSize>,
    /// A cached prefix unused for this long is dropped (a follow-up question's window).
    pub prefix_cache_ttl: Option<HumanDuration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProviders {
    pub order: Option<Vec<ProviderKind>>,
    pub decoder: Option<Vec<ProviderKind>>,
    pub embedding: Option<Vec<ProviderKind>>,
    pub vision: Option<Vec<ProviderKind>>,
    pub speech: Option<Vec<ProviderKind>>,
    pub strict: Option<bool>,
    pub intra_op_threads: Option<usize>,
    pub inter_op_threads: Option<usize>,
    #[serde(default)]
    pub tensorrt: RawTensorRt,
    #[serde(default)]
    pub cuda: RawCuda,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTensorRt {
    pub fp16: Option<bool>,
    pub workspace: Option<HumanSize>,
    pub cache_dir: Option<PathBuf>,
    pub builder_optimization_level: Option<u8>,
    pub profile_min_shapes: Option<String>,
    pub profile_opt_shapes: Option<String>,
    pub profile_max_shapes: Option<String>,
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCuda {
    pub device_id: Option<i32>,
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub max_bytes: Option<HumanSize>,
    pub max_age: Option<HumanDuration>,
    pub check_every: Option<HumanDuration>,
    /// Free space to leave on the file system: "auto" (5 %, at most 64 MiB), "N%" or a size.
    pub min_free: Option<MinFree>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    /// Queries waiting for the model; beyond this new ones are dropped and counted.
    pub queue: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    /// How long SIGTERM waits for the report in flight before marking it incomplete.
    pub drain_deadline: Option<HumanDuration>,
}

// ---- Validated settings ----

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub board: String,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub onnxruntime: Option<PathBuf>,
    pub model: ModelSettings,
    pub providers: ProviderPolicy,
    pub store: StoreSettings,
    pub monitor_queue: usize,
    pub cameras: Vec<CameraSettings>,
    pub drain_deadline: HumanDuration,
    pub api: crate::api::config::ApiSettings,
    pub microphone: Option<crate::capture::config::MicSettings>,
    /// Present when `[voice]` is there and not `enabled = false`.
    pub voice: Option<crate::voice::VoiceSettings>,
    pub update: crate::update::UpdateConfig,
    /// Present when `[mqtt]` names a broker.
    pub mqtt: Option<crate::publish::MqttSettings>,
    /// The files this came from, for status and `config check`.
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSettings {
    pub path: PathBuf,
    pub system_prompt: Option<String>,
    pub max_new_tokens: usize,
    pub deadline: HumanDuration,
    pub speculate: crate::model::exact::Switch,
    /// `None`: auto.
    pub prefix_cache: Option<HumanSize>,
    pub prefix_cache_ttl: HumanDuration,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreSettings {
    pub max_bytes: HumanSize,
    pub max_age: HumanDuration,
    pub check_every: HumanDuration,
    pub min_free: MinFree,
}

/// Reads one TOML file and checks it against the schema on its own.
fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse_table(&text, path)
}

fn parse_table(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.into(),
        msg: one_line(&e.to_string()),
    })?;
    to_raw(&table, path)?;
    Ok(table)
}

fn to_raw(table: &toml::Table, path: &Path) -> Result<RawConfig, ConfigError> {
    let de = toml::Value::Table(table.clone());
    serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
        let key = e.path().to_string();
        let msg = e.inner().to_string();
        let msg = if msg.starts_with("unknown field") {
            format!("unknown key ({})", one_line(&msg))
        } else {
            one_line(&msg)
        };
        ConfigError::Key {
            path: path.into(),
            key,
            msg,
        }
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Deep-merges `over` into `base`: tables merge, anything else from `over` replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Where board profiles are looked for: `$GEMBA_BOARD_DIR`, `/etc/gemba/board`,
/// `/usr/share/gemba/board`, and the source tree's `board/`.
pub fn board_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("GEMBA_BOARD_DIR") {
        v.push(PathBuf::from(d));
    }
    v.push(PathBuf::from("/etc/gemba/board"));
    v.push(PathBuf::from("/usr/share/gemba/board"));
    v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("board"));
    v
}

/// The board this runs on, from the device tree (`x86-dev` off a Jetson).
pub fn detect_board() -> String {
    let model = crate::doctor::board_model()
        .unwrap_or_default()
        .to_lowercase();
    if model.contains("orin nano") {
        "orin-nano".into()
    } else if model.contains("orin nx") {
        "orin-nx".into()
    } else if model.contains("agx orin") || model.contains("jetson agx") {
        "agx-orin".into()
    } else {
        "x86-dev".into()
    }
}

fn find_board(name: &str) -> Result<PathBuf, ConfigError> {
    let mut tried = Vec::new();
    let mut known = std::collections::BTreeSet::new();
    for d in board_dirs() {
        let p = d.join(format!("{name}.toml"));
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Some(stem) = e.path().file_stem().and_then(|s| s.to_str()) {
                    if e.path().extension().is_some_and(|x| x == "toml") {
                        known.insert(stem.to_string());
                    }
                }
            }
        }
    }
    Err(ConfigError::NoBoard {
        name: name.into(),
        tried: tried.join(", "),
        known: known.into_iter().collect::<Vec<_>>().join(", "),
    })
}

impl Settings {
    /// Loads `config` (TOML) over its board profile. `base_dir` resolves relative paths in the
    /// config (the config file's directory).
    pub fn load(config: &Path) -> Result<Settings, ConfigError> {
        let table = read_table(config)?;
        // Relative paths in the config are relative to the config file, wherever gemba runs from.
        let abs = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
        let base = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
        Self::from_table(table, config, &base)
    }

    /// As [`Settings::load`], from text (named `path` in errors).
    pub fn from_str(text: &str, path: &Path, base_dir: &Path) -> Result<Settings, ConfigError> {
        let table = parse_table(text, path)?;
        Self::from_table(table, path, base_dir)
    }

    fn from_table(
        table: toml::Table,
        path: &Path,
        base_dir: &Path,
    ) -> Result<Settings, ConfigError> {
        let board = match table.get("board") {
            Some(toml::Value::String(b)) => b.clone(),
            _ => detect_board(),
        };
        let board_path = find_board(&board)?;
        let mut merged = read_table(&board_path)?;
        if merged.contains_key("board") || merged.contains_key("cameras") {
            return Err(ConfigError::Key {
                path: board_path,
                key: if merged.contains_key("board") {
                    "board"
                } else {
                    "cameras"
                }
                .into(),
                msg: "a board profile describes the board; this key belongs in the config".into(),
            });
        }
        let profile = merged.clone();
        let config_table = table.clone();
        merge(&mut merged, table);
        let raw = to_raw(&merged, path)?;
        // A bad value is reported in the file it came from: the config, or the profile when the
        // config does not set that key.
        let origin = |key: &str| -> PathBuf {
            if !has_key(&config_table, key) && has_key(&profile, key) {
                board_path.clone()
            } else {
                path.to_path_buf()
            }
        };
        Self::validate(
            raw,
            board,
            vec![board_path.clone(), path.to_path_buf()],
            &origin,
            base_dir,
        )
    }

    /// The one validation `gemba config check` and the daemon's start-up (and reload) share:
    /// every key's type (already checked by serde), range and cross-key rule; see the README's
    /// "Configuration ranges" table, which lists the same bounds.
    fn validate(
        raw: RawConfig,
        board: String,
        sources: Vec<PathBuf>,
        origin: &dyn Fn(&str) -> PathBuf,
        base: &Path,
    ) -> Result<Settings, ConfigError> {
        let bad = |key: &str, msg: String| ConfigError::Key {
            path: origin(key),
            key: key.into(),
            msg,
        };
        let range = Ranges { bad: &bad };
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let data_dir = abs(raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/gemba")));
        let state_dir = raw.state_dir.map(abs).unwrap_or_else(|| data_dir.clone());
        let model_path = abs(raw
            .model
            .path
            .unwrap_or_else(|| PathBuf::from("/var/lib/gemba/models/current")));
        let max_new_tokens = range.int(
            "model.max_new_tokens",
            raw.model.max_new_tokens.unwrap_or(128),
            1,
            1 << 20,
        )?;
        let deadline = range.duration(
            "model.deadline",
            raw.model
                .deadline
                .unwrap_or(HumanDuration(Duration::from_secs(120))),
            Duration::from_secs(1),
            DAY,
        )?;
        let p = raw.providers;
        let threads = crate::model::providers::max_threads();
        for (key, n) in [
            ("providers.intra_op_threads", p.intra_op_threads),
            ("providers.inter_op_threads", p.inter_op_threads),
        ] {
            if let Some(n) = n {
                if n == 0 || n > threads {
                    return Err(bad(
                        key,
                        format!("{n} is out of range 1–{threads} (4 per CPU of this machine); leave it unset for ONNX Runtime's default"),
                    ));
                }
            }
        }
        if let Some(w) = p.tensorrt.workspace {
            range.size("providers.tensorrt.workspace", w, 1 << 20, 1 << 40)?;
        }
        if let Some(id) = p.cuda.device_id {
            range.int("providers.cuda.device_id", i64::from(id), 0, 63)?;
        }
        let mut per_component = std::collections::BTreeMap::new();
        for (name, order) in [
            ("decoder", p.decoder),
            ("embedding", p.embedding),
            ("vision", p.vision),
            ("speech", p.speech),
        ] {
            if let Some(o) = order {
                if o.is_empty() {
                    return Err(bad(
                        &format!("providers.{name}"),
                        "an empty provider list; name at least one".into(),
                    ));
                }
                per_component.insert(name.to_string(), o);
            }
        }
        let defaults = TensorRtSettings::default();
        let providers = ProviderPolicy {
            order: p.order,
            per_component,
            strict: p.strict.unwrap_or(false),
            intra_op_threads: p.intra_op_threads,
            inter_op_threads: p.inter_op_threads,
            tensorrt: TensorRtSettings {
                fp16: p.tensorrt.fp16.unwrap_or(defaults.fp16),
                workspace_bytes: p.tensorrt.workspace.map(|s| s.0),
                cache_dir: Some(abs(p
                    .tensorrt
                    .cache_dir
                    .unwrap_or_else(|| PathBuf::from("/var/cache/gemba/tensorrt")))),
                builder_optimization_level: p.tensorrt.builder_optimization_level,
                profile_min_shapes: p.tensorrt.profile_min_shapes,
                profile_opt_shapes: p.tensorrt.profile_opt_shapes,
                profile_max_shapes: p.tensorrt.profile_max_shapes,
                options: p.tensorrt.options,
            },
            cuda: CudaSettings {
                device_id: p.cuda.device_id.unwrap_or(0),
                options: p.cuda.options,
            },
        };
        if let Some(l) = providers.tensorrt.builder_optimization_level {
            if l > 5 {
                return Err(bad(
                    "providers.tensorrt.builder_optimization_level",
                    format!("{l} is out of range 0–5"),
                ));
            }
        }
        let store = StoreSettings {
            max_bytes: raw.store.max_bytes.unwrap_or(HumanSize(2 << 30)),
            max_age: raw
                .store
                .max_age
                .unwrap_or(HumanDuration(Duration::from_secs(30 * 86_400))),
            check_every: raw
                .store
                .check_every
                .unwrap_or(HumanDuration(Duration::from_secs(300))),
            min_free: raw.store.min_free.unwrap_or(MinFree::Auto),
        };
        // At least 4MiB: the index (with its 256 KiB reserve) and a few reports' frames must fit
        // (with 1MiB every write failed).
        range.size("store.max_bytes", store.max_bytes, 4 << 20, 1 << 50)?;
        range.duration(
            "store.max_age",
            store.max_age,
            Duration::from_secs(60),
            100 * YEAR,
        )?;
        range.duration(
            "store.check_every",
            store.check_every,
            Duration::from_secs(1),
            DAY,
        )?;
        let cameras = crate::capture::config::validate_cameras(raw.cameras, base)
            .map_err(|(key, msg)| bad(&key, msg))?;
        let monitor_queue = range.int("monitor.queue", raw.monitor.queue.unwrap_or(4), 1, 1024)?;
        let drain_deadline = range.duration(
            "daemon.drain_deadline",
            raw.daemon
                .drain_deadline
                .unwrap_or(HumanDuration(Duration::from_secs(20))),
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        let api =
            crate::api::config::validate(raw.api, &abs).map_err(|(key, msg)| bad(&key, msg))?;
        let key_err = |(key, msg): (String, String)| bad(&key, msg);
        let microphone = raw
            .microphone
            .map(|m| crate::capture::config::validate_microphone(m, &abs))
            .transpose()
            .map_err(key_err)?;
        let names: Vec<&str> = cameras.iter().map(|c| c.name.as_str()).collect();
        let voice = match raw.voice {
            Some(v) => crate::voice::config::validate_voice(v, &names, &abs).map_err(key_err)?,
            None => None,
        };
        let mqtt = match raw.mqtt {
            Some(m) => crate::publish::config::validate(m, &abs).map_err(key_err)?,
            None => None,
        };
        if voice.is_some() && microphone.is_none() {
            return Err(bad("voice", "voice needs a [microphone] section (kind = \"cpal\" with a device, or kind = \"wav\" with a path)".into()));
        }
        Ok(Settings {
            board,
            data_dir,
            state_dir,
            onnxruntime: raw.onnxruntime.library.map(abs),
            model: ModelSettings {
                path: model_path,
                system_prompt: raw.model.system_prompt,
                max_new_tokens,
                deadline,
                speculate: raw.model.speculate.unwrap_or_default(),
                prefix_cache: match raw.model.prefix_cache {
                    None | Some(AutoSize::Auto) => None,
                    Some(AutoSize::Size(n)) => {
                        Some(range.size("model.prefix_cache", n, 0, 1 << 40)?)
                    }
                },
                prefix_cache_ttl: range.duration(
                    "model.prefix_cache_ttl",
                    raw.model
                        .prefix_cache_ttl
                        .unwrap_or(HumanDuration(Duration::from_secs(600))),
                    Duration::from_secs(1),
                    DAY,
                )?,
            },
            providers,
            store,
            monitor_queue,
            cameras,
            drain_deadline,
            api,
            microphone,
            voice,
            update: {
                let mut u = raw.update.unwrap_or_default();
                range.duration(
                    "update.health_timeout",
                    HumanDuration(u.health_timeout),
                    Duration::from_secs(1),
                    Duration::from_secs(3600),
                )?;
                range.duration(
                    "update.health_hold",
                    HumanDuration(u.health_hold),
                    Duration::ZERO,
                    DAY,
                )?;
                range.int("update.keep", u.keep, 0, 100)?;
                u.models_dir = abs(u.models_dir);
                u.state_dir = abs(u.state_dir);
                u.trusted_keys = u.trusted_keys.into_iter().map(abs).collect();
                u
            },
            mqtt,
            sources,
        })
    }
}

pub(crate) const DAY: Duration = Duration::from_secs(86_400);
/// humantime's year (365.25 days), so that the bound prints as "100years".
const YEAR: Duration = Duration::from_secs(31_557_600);

/// A bad value in a section validated by the module that owns it: `(key, message)`, to which
/// this module attaches the file.
pub type KeyError = (String, String);

/// Range checks that name the key (and, through `bad`, the file) of a value out of bounds;
/// `E` is [`ConfigError`] here and [`KeyError`] in the modules that validate their own section.
pub(crate) struct Ranges<'a, E> {
    pub(crate) bad: &'a dyn Fn(&str, String) -> E,
}

impl<E> Ranges<'_, E> {
    pub(crate) fn int<T: Copy + TryInto<i128> + std::fmt::Display>(
        &self,
        key: &str,
        v: T,
        lo: i64,
        hi: i64,
    ) -> Result<T, E> {
        let x: i128 = v.try_into().unwrap_or(i128::MAX);
        if x < i128::from(lo) || x > i128::from(hi) {
            return Err((self.bad)(key, format!("{v} is out of range {lo}–{hi}")));
        }
        Ok(v)
    }

    pub(crate) fn float(&self, key: &str, v: f64, lo: f64, hi: f64, unit: &str) -> Result<f64, E> {
        if !v.is_finite() || v < lo || v > hi {
            return Err((self.bad)(
                key,
                format!("{v:?} is out of range {lo:?}–{hi:?}{unit}"),
            ));
        }
        Ok(v)
    }

    pub(crate) fn duration(
        &self,
        key: &str,
        d: HumanDuration,
        lo: Duration,
        hi: Duration,
    ) -> Result<HumanDuration, E> {
        if d.0 < lo || d.0 > hi {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            let why = if d.0.is_zero() {
                " (zero would mean nothing happens)"
            } else {
                ""
            };
            return Err((self.bad)(
                key,
                format!(
                    "\"{}\" is out of range \"{}\"–\"{}\"{why}",
                    show(d.0),
                    show(lo),
                    show(hi)
                ),
            ));
        }
        Ok(d)
    }

    pub(crate) fn size(&self, key: &str, s: HumanSize, lo: u64, hi: u64) -> Result<HumanSize, E> {
        if s.0 < lo || s.0 > hi {
            let show = |b: u64| bytesize::ByteSize(b).display().iec().to_string();
            return Err((self.bad)(
                key,
                format!(
                    "\"{}\" is out of range \"{}\"–\"{}\"",
                    show(s.0),
                    show(lo),
                    show(hi)
                ),
            ));
        }
        Ok(s)
    }
}

/// Whether `key` (`a.b.c`; `cameras[1].x` is never in a profile) is set in `table`.
fn has_key(table: &toml::Table, key: &str) -> bool {
    let mut t = table;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        match t.get(*part) {
            Some(toml::Value::Table(sub)) if i + 1 < parts.len() => t = sub,
            Some(_) if i + 1 == parts.len() => return true,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::config::CameraSource;

    /// Relative paths resolve here: the demo's frames are real images for replay cameras.
    const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo");

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_str(text, Path::new("/etc/gemba/gemba.toml"), Path::new(DEMO))
    }

    const GOOD: &str = r#"
board = "orin-nano"
data_dir = "/var/lib/gemba"
[model]
path = "/var/lib/gemba/models/current"
max_new_tokens = 64
[store]
max_bytes = "1GiB"
max_age = "7d"
[[cameras]]
name = "press-2"
kind = "v4l2"
device = "/dev/video0"
interval = "30s"
[[cameras]]
name = "belt-1"
kind = "replay"
source = "frames/*.jpg"
fps = 2.0
"#;

    #[test]
    fn config_merges_over_the_board_profile() {
        let s = load(GOOD).unwrap();
        assert_eq!(s.board, "orin-nano");
        assert_eq!(s.store.max_bytes.0, 1 << 30, "config wins over the profile");
        assert_eq!(s.store.max_age.0, Duration::from_secs(7 * 86_400));
        // From board/orin-nano.toml: the encoders on TensorRT, a small workspace.
        assert_eq!(
            s.providers.per_component["vision"][0],
            ProviderKind::Tensorrt
        );
        assert!(s.providers.tensorrt.workspace_bytes.unwrap() <= 512 << 20);
        assert_eq!(s.cameras.len(), 2);
        assert_eq!(s.cameras[0].interval.unwrap().0, Duration::from_secs(30));
        // No interval: each new frame, and the effective settings say so.
        assert_eq!(s.cameras[1].interval, None);
        let shown = serde_json::to_value(&s.cameras).unwrap();
        assert_eq!(
            (&shown[0]["interval"], &shown[1]["interval"]),
            (
                &serde_json::json!("30s"),
                &serde_json::json!("each new frame")
            )
        );
        assert_eq!(
            s.cameras[1].source,
            CameraSource::Replay {
                source: format!("{DEMO}/frames/*.jpg"),
                looped: true
            }
        );
        assert_eq!(s.sources.len(), 2);
    }

    #[test]
    fn speculation_and_prefix_reuse_are_auto_unless_set() {
        use crate::model::exact::Switch;
        let m = load("board = \"x86-dev\"\n").unwrap().model;
        assert_eq!((m.speculate, m.prefix_cache), (Switch::Auto, None));
        let m =
            load("board = \"x86-dev\"\n[model]\nspeculate = \"auto\"\nprefix_cache = \"auto\"\n")
                .unwrap()
                .model;
        assert_eq!((m.speculate, m.prefix_cache), (Switch::Auto, None));
        for (v, want) in [("true", Switch::On), ("false", Switch::Off)] {
            let t = format!("board = \"x86-dev\"\n[model]\nspeculate = {v}\nprefix_cache = 0\n");
            let m = load(&t).unwrap().model;
            assert_eq!((m.speculate, m.prefix_cache), (want, Some(HumanSize(0))));
        }
        let e = load("board = \"x86-dev\"\n[model]\nprefix_cache = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefix_cache") || e.contains("auto"), "{e}");
        let m = load(
            "board = \"x86-dev\"\n[model]\nprefix_cache = \"8MiB\"\nprefix_cache_ttl = \"30s\"\n",
        )
        .unwrap()
        .model;
        assert_eq!(
            (m.prefix_cache, m.prefix_cache_ttl.0),
            (Some(HumanSize(8 << 20)), Duration::from_secs(30))
        );
        let e = load("board = \"x86-dev\"\n[model]\nspeculate = \"no\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.speculate"), "{e}");
    }

    #[test]
    fn the_api_defaults_to_loopback_with_bounds() {
        let s = load("board = \"x86-dev\"\n").unwrap();
        assert_eq!(s.api.listen, crate::api::DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(
            (s.api.max_body.0, s.api.max_asks, s.api.sse_buffer),
            (16 << 20, 4, 256)
        );
        assert!(s.api.token.is_none());
        let s = load("board = \"x86-dev\"\n[api]\nlisten = \"[::]:0\"\ntoken = \"0123456789abcdef0123\"\nmax_body = \"1MiB\"\nmax_asks = 2\n").unwrap();
        assert_eq!(s.api.listen.port(), 0);
        assert_eq!((s.api.max_body.0, s.api.max_asks), (1 << 20, 2));
        let shown = serde_json::to_string(&s.api).unwrap();
        assert!(
            shown.contains("\"token\":\"(set)\"") && !shown.contains("0123456789abcdef0123"),
            "{shown}"
        );
    }

    #[test]
    fn every_board_profile_parses() {
        for b in ["orin-nano", "orin-nx", "agx-orin", "x86-dev"] {
            let s = load(&format!("board = \"{b}\"\n")).unwrap_or_else(|e| panic!("{b}: {e}"));
            assert_eq!(s.board, b);
        }
    }

    #[test]
    fn bad_configs_name_file_and_key() {
        let cases: &[(&str, &str)] = &[
            ("board = \"x86-dev\"\n[model]\nmax_new_tokenz = 3\n", "model.max_new_tokenz: unknown key"),
            ("board = \"x86-dev\"\n[[cameras]]\nname = \"a\"\nkind = \"replay\"\nsource = \"frames\"\nfsp = 3\n", "cameras[0].fsp: unknown key"),
            ("board = \"x86-dev\"\n[store]\nmax_bytes = \"lots\"\n", "store.max_bytes"),
            ("board = \"x86-dev\"\n[store]\nmax_age = \"forever\"\n", "store.max_age"),
            ("board = \"x86-dev\"\n[[cameras]]\nname = \"a\"\nkind = \"usb\"\n", "cameras[0].kind"),
            ("board = \"x86-dev\"\n[[cameras]]\nname = \"a\"\nkind = \"v4l2\"\n", "cameras[0].device"),
            ("board = \"x86-dev\"\n[[cameras]]\nname = \"a\"\nkind = \"v4l2\"\ndevice = \"/dev/video9\"\nformats = [\"mjpeg\", \"h264\"]\n", "cameras[0].formats[1]: \"h264\" is not a format gemba decodes (mjpeg, yuyv, nv12, rgb24)"),
            ("board = \"x86-dev\"\n[[cameras]]\nname = \"a b\"\nkind = \"replay\"\nsource = \"frames\"\n", "cameras[0].name"),
            (
                "board = \"x86-dev\"\n[[cameras]]\nname = \"a\"\nkind = \"replay\"\nsource = \"frames\"\n[[cameras]]\nname = \"a\"\nkind = \"replay\"\nsource = \"frames\"\n",
                "cameras[1].name",
            ),
            ("board = \"x86-dev\"\n[providers]\norder = [\"dml\"]\n", "providers.order"),
            ("board = \"moon-base\"\n", "board profile \"moon-base\" not found"),
            ("board = \"x86-dev\"\n[model\n", "not valid TOML"),
            ("board = \"x86-dev\"\n[api]\nlisten = \"0.0.0.0:8470\"\n", "api.listen: refusing to serve the API on 0.0.0.0:8470"),
            ("board = \"x86-dev\"\n[api]\nlisten = \"localhost\"\n", "api.listen: \"localhost\" is not an IP:PORT address"),
            ("board = \"x86-dev\"\n[api]\ntoken = \"0123456789abcdef\"\ntoken_file = \"t\"\n", "api.token_file: set api.token or api.token_file, not both"),
            ("board = \"x86-dev\"\n[api]\ntoken_file = \"/nonexistent/token\"\n", "api.token_file: cannot read /nonexistent/token"),
            ("board = \"x86-dev\"\n[api]\ntoken = \"short\"\n", "api.token: the token is 5 characters"),
            ("board = \"x86-dev\"\n[api]\nmax_body = \"100B\"\n", "api.max_body"),
            ("board = \"x86-dev\"\n[api]\nport = 8470\n", "api.port: unknown key"),
            (
                "board = \"x86-dev\"\n[[cameras]]\nname = \"a\"\nkind = \"replay\"\nsource = \"nothing-*.jpg\"\n",
                "cameras[0].source: camera a: no JPEG or PNG images match",
            ),
            ("board = \"x86-dev\"\n[[cameras]]\nname = \"a\"\nkind = \"replay\"\nsource = \"frames\"\nfps = 1e-20\n", "cameras[0].fps: 1e-20 is out of range 0.001–1000.0 frames per second"),
            ("board = \"x86-dev\"\n[[cameras]]\nname = \"a\"\nkind = \"replay\"\nsource = \"frames\"\ninterval = \"0s\"\n", "cameras[0].interval: \"0s\" is out of range"),
            ("board = \"x86-dev\"\n[store]\ncheck_every = \"0s\"\n", "store.check_every"),
            ("board = \"x86-dev\"\n[model]\ndeadline = \"0s\"\n", "model.deadline"),
            ("board = \"x86-dev\"\n[monitor]\nqueue = 9223372036854775807\n", "monitor.queue: 9223372036854775807 is out of range 1–1024"),
            ("board = \"x86-dev\"\n[api]\nsse_buffer = 9223372036854775807\n", "api.sse_buffer"),
            ("board = \"x86-dev\"\n[providers]\nintra_op_threads = 100000\n", "providers.intra_op_threads: 100000 is out of range"),
        ];
        for (text, want) in cases {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
            assert!(
                e.contains("gemba.toml") || e.contains("board profile"),
                "names the file: {e}"
            );
        }
    }
}
