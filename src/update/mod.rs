//! Fleet model updates: signed bundle archives that are verified, unpacked, smoke-tested,
//! switched in atomically, health-checked by the running daemon, and rolled back by themselves.
//!
//! What flows in: a bundle archive (`.tar` or `.tar.zst`, made by [`pack::pack`]) and the
//! [`UpdateConfig`] (models root, trusted keys, the daemon's state directory, gate timings). What
//! flows out: a new `current` bundle the daemon serves — or, for any failure, the old one still
//! serving and the reason recorded in `<root>/update-state.json`.
//!
//! # The archive
//! Packed by `gemba model pack` (see docs/updates.md for the whole flow). Entry 0 is `gemba-manifest.json` ([`manifest::Manifest`]: every file's path, size and sha256,
//! the bundle version, the minimum gemba version, the genai model type and a smoke prompt with
//! the text its reply must contain). Entry 1 is `gemba-manifest.json.minisig`, a minisign
//! signature of the manifest's exact bytes ([`keys`]). Then the bundle's files, in any order,
//! regular files only. The *bundle hash* is the sha256 of the manifest bytes: it names the bundle
//! whatever the compression, keys the TensorRT engine cache (`<root>/cache/<bundle-hash>/`) and is
//! what the daemon reports.
//!
//! # The models root
//! ```text
//! <root>/versions/<version>/   verified bundles (files + gemba-manifest.json + .minisig)
//! <root>/current  -> versions/<version>     what the daemon loads (relative symlink)
//! <root>/previous -> versions/<version>     what a rollback returns to
//! <root>/staging/              partial unpacks; garbage whenever no update holds the lock
//! <root>/cache/<bundle-hash>/  TensorRT engines and timing caches
//! <root>/update-state.json     the state machine's record (below)
//! <root>/.lock                 flock held by install, rollback, recover and gc
//! ```
//! Nothing under `versions/` or `current` changes until every byte is verified: the archive is
//! verified while it streams into `staging/`, and only a complete, verified tree is renamed into
//! `versions/`.
//!
//! # The state machine ([`state::State`])
//! ```text
//!   Idle ─▶ Verifying ─▶ Unpacked ─▶ Smoked ─▶ Switched ─▶ Reloaded ─▶ Healthy
//!               │            │          │          │  └─(--no-daemon)──────▲
//!               ▼            ▼          ▼          ▼            │
//!           Rejected     Rejected   Rejected   RollingBack ◀────┘ ─▶ RolledBack
//! ```
//! (`Smoked → RollingBack` too: recovery after a crash between the rename over `current` and
//! the persisting of `Switched`.) A manual `gemba model rollback` walks the same machine with
//! `previous` as the target: its files re-verified against its signed manifest (`Verifying`),
//! smoke-tested, switched, gated.
//! Each state is persisted (write temp, fsync, rename, fsync the directory) right after the step
//! it names is complete, and logged. `Rejected` means the bundle was refused before the switch
//! (the old bundle never stopped being `current`); `RolledBack` means the switch happened and was
//! undone. A crash (power cut, kill -9) leaves a non-terminal state; the next `gemba model
//! recover` (systemd `ExecStartPre=` of the daemon) or `gemba model install` restores the
//! layout recorded in the attempt (`current` → the version active before, `previous` as it was),
//! deletes what the attempt unpacked, and ends in `Rejected` or `RolledBack` with the reason
//! "interrupted at `<state>`". Restoring is idempotent, so recovery does not need to know whether
//! the switch itself had happened. An unconfirmed update never survives a crash; the inbox
//! service retries the archive (it stays in the inbox until an install finishes).
//!
//! # The daemon contract (see [`daemon`])
//! - The daemon loads `<root>/current`, resolved once at load (`canonicalize`), with the TensorRT
//!   cache dir [`cache_dir`]`(root, bundle_hash)`.
//! - It writes `<state_dir>/status.json` atomically (temp + rename) whenever its state changes:
//!   `{"pid": N, "bundle_dir": "...", "bundle_id": "...", "bundle_hash": "...", "loaded_at":
//!   "RFC3339", "ready": bool, "smoke_ok": bool|null, "error": str|null}` (more keys are fine).
//!   `bundle_id` and `bundle_hash` come from [`identify`] on the resolved bundle directory.
//!   `smoke_ok` is the result of the manifest's smoke prompt if the daemon runs it
//!   ([`smoke::run_smoke`]), `null` if it does not.
//! - On SIGHUP it reloads config and model, re-resolving `current`, and rewrites status.json.
//! - The installer sends SIGHUP to `pid` (only if that pid is alive and is a `gemba` process),
//!   then waits up to `health_timeout` for status.json to show the new `bundle_hash` with
//!   `ready: true` and `smoke_ok != false` (a status from a restarted daemon with another pid
//!   counts too), then watches it stay so for `health_hold`. A status for the new hash with
//!   `smoke_ok: false` or an `error`, a daemon that reports an error while keeping the old
//!   bundle, or the timeout fail the gate → rollback, SIGHUP again, and the reason is recorded.
//! - The daemon may read `<root>/update-state.json` ([`state::UpdateRecord`], via
//!   [`read_record`]) for its own status page.

pub mod cli;
pub mod daemon;
#[doc(hidden)]
pub(crate) mod fake_daemon;
mod fsutil;
pub(crate) mod inbox;
pub(crate) mod install;
pub mod keys;
pub(crate) mod layout;
pub mod manifest;
pub mod pack;
pub(crate) mod smoke;
pub mod state;
pub(crate) mod unpack;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use daemon::DaemonStatus;
pub use install::{gc, install, list, recover, rollback, InstallContext, Outcome, VersionInfo};
pub use layout::{cache_dir, identify, BundleIdentity};
pub use manifest::{Manifest, SmokeSpec};
pub use state::{read_record, State, UpdateRecord};

/// The `update` section of the daemon config; also what `gemba model` flags fill in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// The models root (`versions/`, `current`, `previous`, `staging/`, `cache/`).
    pub models_dir: PathBuf,
    /// minisign public keys (`.pub` files, or directories of them) whose signatures are accepted.
    pub trusted_keys: Vec<PathBuf>,
    /// The daemon's state directory, where it writes `status.json`.
    pub state_dir: PathBuf,
    /// How long the daemon has to report the new bundle ready after SIGHUP.
    #[serde(with = "crate::sys::duration::serde_std")]
    pub health_timeout: Duration,
    /// How long the daemon must then stay ready on the new bundle before the update is committed.
    #[serde(with = "crate::sys::duration::serde_std")]
    pub health_hold: Duration,
    /// genai model types this board accepts (`phi4mm`, `qwen2`, …); empty accepts any.
    pub accept_model_types: Vec<String>,
    /// Versions `gemba model gc` keeps besides `current` and `previous`.
    pub keep: usize,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            models_dir: PathBuf::from("/var/lib/gemba/models"),
            trusted_keys: Vec::new(),
            state_dir: PathBuf::from("/var/lib/gemba"),
            health_timeout: Duration::from_secs(60),
            health_hold: Duration::ZERO,
            accept_model_types: Vec::new(),
            keep: 3,
        }
    }
}

/// Everything that can go wrong, each with what a person needs to act on it. Each message is
/// complete on its own (it is also the reason recorded in update-state.json), so no variant
/// exposes a `source()` that a cause chain would print a second time.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no trusted key: pass --trusted-key PUB (or set update.trusted_keys); bundles are never installed unverified")]
    NoTrustedKey,
    #[error("{path}: not a usable minisign key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "{path}: the secret key is password-protected: put the password in GEMBA_SIGNING_PASSWORD"
    )]
    EncryptedKey { path: PathBuf },
    #[error("{path}: exists; pass --force to overwrite a key")]
    KeyExists { path: PathBuf },
    #[error("{archive}: truncated archive: {detail}")]
    Truncated { archive: PathBuf, detail: String },
    #[error("{archive}: not a readable bundle archive: {detail}")]
    Corrupt { archive: PathBuf, detail: String },
    #[error("{archive}: no manifest: the first entry must be gemba-manifest.json, found {found}")]
    NoManifest { archive: PathBuf, found: String },
    #[error("{archive}: no signature: the entry after the manifest must be gemba-manifest.json.minisig, found {found}")]
    NoSignature { archive: PathBuf, found: String },
    #[error(
        "{archive}: wrong key: signed by key {key_id}, which is not trusted (trusted: {trusted})"
    )]
    UntrustedKey {
        archive: PathBuf,
        key_id: String,
        trusted: String,
    },
    #[error("{archive}: bad signature: gemba-manifest.json does not match its signature by key {key_id} ({detail})")]
    BadSignature {
        archive: PathBuf,
        key_id: String,
        detail: String,
    },
    #[error("{archive}: gemba-manifest.json: {detail}")]
    Manifest { archive: PathBuf, detail: String },
    #[error("{archive}: entry {path:?}: {why}; refused")]
    UnsafeEntry {
        archive: PathBuf,
        path: String,
        why: String,
    },
    #[error("{archive}: extra file: entry {path:?} is not listed in the manifest")]
    Unlisted { archive: PathBuf, path: String },
    #[error("{archive}: entry {path:?} appears twice")]
    Duplicate { archive: PathBuf, path: String },
    #[error("{archive}: {path}: size {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        archive: PathBuf,
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{archive}: {path}: sha256 {actual}, the manifest says {expected} (tampered or corrupted)"
    )]
    HashMismatch {
        archive: PathBuf,
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{archive}: missing file(s) listed in the manifest: {}", paths.join(", "))]
    Missing {
        archive: PathBuf,
        paths: Vec<String>,
    },
    #[error("bundle {version}: the manifest says model type {manifest} but genai_config.json says {config}")]
    ModelTypeMismatch {
        version: String,
        manifest: String,
        config: String,
    },
    #[error("bundle {version} is for model type {model_type}; this board accepts {accepted} (update.accept_model_types)")]
    ModelTypeNotAccepted {
        version: String,
        model_type: String,
        accepted: String,
    },
    #[error("bundle {version} needs gemba >= {min}; this is gemba {ours}")]
    TooNew {
        version: String,
        min: String,
        ours: String,
    },
    #[error(
        "bundle {version} is older than the installed {current}; refused (a deliberate rollback \
         is packed with `gemba model pack --allow-downgrade`, or use `gemba model rollback`)"
    )]
    Downgrade { version: String, current: String },
    #[error(
        "bundle {version} needs {needed} bytes unpacked, and {path} has {free} bytes free; nothing \
         was unpacked (run `gemba model gc` or free space)"
    )]
    NoSpace {
        version: String,
        path: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("version {version} is already installed with other content (bundle {installed}, this one {new}); give the new bundle a new version")]
    VersionConflict {
        version: String,
        installed: String,
        new: String,
    },
    #[error("smoke test: bundle {version} does not load: {error}")]
    SmokeLoad {
        version: String,
        error: crate::model::bundle::BundleError,
    },
    #[error("smoke test: bundle {version}: {detail}")]
    SmokeRun { version: String, detail: String },
    #[error("smoke test failed: bundle {version}: the reply to {prompt:?} does not contain {expected:?}; it was {reply:?}")]
    SmokeFailed {
        version: String,
        prompt: String,
        expected: String,
        reply: String,
    },
    #[error("smoke test: {0}")]
    Runtime(crate::model::runtime::RuntimeError),
    #[error("no daemon to health-check: {detail}; start gemba.service or pass --no-daemon to install without the health gate")]
    NoDaemon { detail: String },
    #[error("health gate failed after switching to {version}: {reason}; rolled back to {rolled_back_to}")]
    RolledBack {
        version: String,
        reason: String,
        rolled_back_to: String,
    },
    #[error("{path}: another update holds the lock{}; try again when it has finished", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("{path}: {detail}")]
    State { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Layout { path: PathBuf, detail: String },
    #[error("{dir}: cannot pack: {detail}")]
    Pack { dir: PathBuf, detail: String },
    #[error("nothing to roll back to: {detail}")]
    NothingToRollBack { detail: String },
    #[error("{dir}: installed bundle does not match its manifest: {detail}")]
    Installed { dir: PathBuf, detail: String },
}

impl UpdateError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> UpdateError {
        UpdateError::Io {
            path: path.into(),
            error: source,
        }
    }
}

/// Adds the path to an `io::Error`.
pub(crate) trait IoAt<T> {
    fn at(self, path: &Path) -> Result<T, UpdateError>;
}

impl<T> IoAt<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T, UpdateError> {
        self.map_err(|e| UpdateError::io(path, e))
    }
}

/// This gemba's version, as bundles' `min_gemba` is compared against.
pub fn gemba_version() -> semver::Version {
    semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("CARGO_PKG_VERSION is semver")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_section_parses_with_human_durations_and_rejects_unknown_keys() {
        let c: UpdateConfig = toml::from_str(
            r#"
            models_dir = "/data/models"
            trusted_keys = ["/etc/gemba/update-keys"]
            health_timeout = "2m"
            health_hold = "15min"
            accept_model_types = ["phi4mm"]
            "#,
        )
        .unwrap();
        assert_eq!(c.models_dir, PathBuf::from("/data/models"));
        assert_eq!(c.health_timeout, Duration::from_secs(120));
        assert_eq!(c.health_hold, Duration::from_secs(900));
        assert_eq!(c.state_dir, UpdateConfig::default().state_dir);
        assert_eq!(c.keep, 3);
        let e = toml::from_str::<UpdateConfig>("health_timeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon") && e.contains("30s"), "{e}");
        let e = toml::from_str::<UpdateConfig>("trusted_key = []")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `trusted_key`"), "{e}");
        let round: UpdateConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
    }
}
