//! `status.json`: what the daemon runs now, and the counters it keeps. One type,
//! [`DaemonStatus`], for both sides of the contract (module docs of [`crate::update`]): the daemon
//! writes it atomically at start-up, on every change and every few seconds with live counters;
//! `gemba model install` reads it as its health gate, `gemba bench soak` for its samples.
//!
//! In: the worker's [`ModelInfo`], the daemon's counters. Out: `<state_dir>/status.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

use super::worker::ModelInfo;

/// The file's name in the state directory.
pub const STATUS_FILE: &str = "status.json";

/// `<state_dir>/status.json`. Unknown keys are kept on reading (`extra`), so a reader never
/// loses what a newer daemon writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DaemonStatus {
    pub pid: u32,
    pub bundle_dir: Option<PathBuf>,
    pub bundle_id: Option<String>,
    pub bundle_hash: Option<String>,
    /// RFC 3339.
    pub loaded_at: Option<String>,
    pub ready: bool,
    pub smoke_ok: Option<bool>,
    pub error: Option<String>,
    /// Component → the provider it actually runs on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Where the local API serves (the address actually bound).
    #[serde(default)]
    pub api_addr: Option<String>,
    /// Live counters, refreshed every few seconds while the daemon runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl DaemonStatus {
    /// The daemon's status for the loaded bundle `info`.
    pub fn of(
        info: &ModelInfo,
        ready: bool,
        data_dir: &Path,
        counters: Option<Counters>,
    ) -> DaemonStatus {
        let loaded_at = jiff::Timestamp::try_from(info.loaded_at)
            .map(|t| t.to_string())
            .unwrap_or_default();
        DaemonStatus {
            pid: std::process::id(),
            bundle_dir: Some(info.bundle_dir.clone()),
            bundle_id: Some(info.bundle_id.clone()),
            bundle_hash: Some(info.bundle_hash.clone()),
            loaded_at: Some(loaded_at),
            ready,
            smoke_ok: info.smoke_ok,
            error: info.last_error.clone(),
            providers: info
                .providers
                .iter()
                .map(|r| (r.component.clone(), r.actual().to_string()))
                .collect(),
            data_dir: Some(data_dir.to_path_buf()),
            api_addr: crate::api::bound_addr().map(|a| a.to_string()),
            counters,
            extra: Default::default(),
        }
    }

    /// The status as pretty JSON (what the file holds).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("status serialises")
    }
}

impl DaemonStatus {
    /// One line for messages: pid, bundle, ready, smoke test, error.
    pub fn summary(&self) -> String {
        format!(
            "pid {}, bundle {} ({}), ready {}, smoke_ok {}, error {}",
            self.pid,
            self.bundle_id.as_deref().unwrap_or("-"),
            self.bundle_hash
                .as_deref()
                .map(crate::update::daemon::short)
                .unwrap_or("-"),
            self.ready,
            self.smoke_ok
                .map(|b| b.to_string())
                .unwrap_or_else(|| "null".into()),
            self.error.as_deref().unwrap_or("null")
        )
    }
}

/// `<state_dir>/status.json`.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Reads status.json: `Ok(None)` when there is none.
pub fn read_status(state_dir: &Path) -> Result<Option<DaemonStatus>, String> {
    let p = status_path(state_dir);
    match std::fs::read(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: not a daemon status: {e}", p.display())),
    }
}

/// Counters the daemon keeps (status, metrics).
#[derive(Debug, Default)]
pub struct DaemonStats {
    pub queries: AtomicU64,
    /// Queued looks replaced by a newer look at the same camera.
    pub looks_replaced: AtomicU64,
    /// Waiting requests dropped from a full queue for one that ranks higher.
    pub requests_bumped: AtomicU64,
    pub reports: AtomicU64,
    pub reports_incomplete: AtomicU64,
    pub query_errors: AtomicU64,
    pub write_errors: AtomicU64,
}

/// The daemon's counters as status.json shows them (`gemba bench soak` reads them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Counters {
    pub uptime_s: f64,
    pub requests: u64,
    pub reports: u64,
    pub reports_incomplete: u64,
    pub errors: u64,
    pub monitor_looks: u64,
    pub monitor_unchanged: u64,
    pub monitor_dropped: u64,
    pub cameras: BTreeMap<String, CameraCounters>,
    pub store_bytes: u64,
    pub rss_bytes: u64,
    pub open_fds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CameraCounters {
    pub frames: u64,
    pub dropped: u64,
    pub decode_errors: u64,
    pub reconnects: u64,
}

/// This process's resident set size and open descriptors (Linux /proc).
pub fn process_usage(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

/// Held by whoever reads the state it writes and writes status.json, from the read to the write:
/// the periodic writer must not read "loaded", lose the race to `POST /model/unload`'s write, and
/// then put the stale "ready" back.
pub static STATUS_WRITE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes status.json for the loaded bundle `info` (no counters).
pub fn write_status(
    state_dir: &Path,
    info: &ModelInfo,
    ready: bool,
    data_dir: &Path,
) -> std::io::Result<()> {
    write_status_with(state_dir, info, ready, data_dir, None)
}

/// Writes status.json atomically, with the live counters where given.
pub fn write_status_with(
    state_dir: &Path,
    info: &ModelInfo,
    ready: bool,
    data_dir: &Path,
    counters: Option<Counters>,
) -> std::io::Result<()> {
    let status = DaemonStatus::of(info, ready, data_dir, counters);
    crate::sys::fs::write_atomic(&status_path(state_dir), &status.to_json())
}
