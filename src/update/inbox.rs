//! The inbox: what `gemba-update.service` runs when `gemba-update.path` sees a file land.
//!
//! Uploaders write into a staging directory beside the inbox and `rename()` into it, so only
//! complete archives appear (dot-files and `*.part` / `*.tmp` are ignored anyway). Each archive,
//! oldest first, is installed; then it moves to `done/` or `failed/`, with `NAME.result.json`
//! beside it saying what happened (outcome or reason, final state, time). An archive stays in the
//! inbox only while its install is running, so a power cut mid-install means it is tried again
//! on the next boot (after recovery has restored the old bundle).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::fsutil::write_atomic;
use super::install::{install, InstallContext, Outcome};
use super::state::now;
use super::{IoAt, UpdateError};

#[derive(Debug, Clone, Serialize)]
pub struct InboxResult {
    pub archive: String,
    pub ok: bool,
    /// Where the archive went.
    pub moved_to: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The update state after the attempt (`healthy`, `rejected`, `rolled-back`).
    pub state: String,
    pub at: String,
}

/// How long an archive waits for another update (a manual install) to release the lock.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// Installs every archive in `inbox`; moves each to `done` or `failed`.
pub fn process(
    inbox: &Path,
    done: &Path,
    failed: &Path,
    ctx: &InstallContext,
) -> Result<Vec<InboxResult>, UpdateError> {
    for d in [inbox, done, failed] {
        std::fs::create_dir_all(d).at(d)?;
    }
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(inbox).at(inbox)? {
        let e = e.at(inbox)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".part") || name.ends_with(".tmp") {
            continue;
        }
        let meta = e.metadata().at(&e.path())?;
        if meta.is_file() {
            files.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), e.path()));
        }
    }
    files.sort();
    let mut out = Vec::new();
    for (_, file) in files {
        let t0 = Instant::now();
        let result = loop {
            match install(&file, ctx) {
                Err(UpdateError::Locked { .. }) if t0.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_secs(2))
                }
                r => break r,
            }
        };
        let state = super::read_record(&ctx.config.models_dir)
            .map(|r| r.state.name().to_string())
            .unwrap_or_else(|e| e.to_string());
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (ok, outcome, reason) = match result {
            Ok(o) => (true, Some(o), None),
            Err(e) => (false, None, Some(e.to_string())),
        };
        let dest_dir = if ok { done } else { failed };
        let mut dest = dest_dir.join(&name);
        if dest.exists() {
            dest = dest_dir.join(format!(
                "{}.{name}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
            ));
        }
        std::fs::rename(&file, &dest).at(&dest)?;
        let r = InboxResult {
            archive: name,
            ok,
            moved_to: dest.clone(),
            outcome,
            reason,
            state,
            at: now(),
        };
        let mut result_path = dest.into_os_string();
        result_path.push(".result.json");
        write_atomic(
            Path::new(&result_path),
            &serde_json::to_vec_pretty(&r).expect("result serialises"),
        )?;
        match &r.reason {
            None => log::info!("inbox: {} installed", r.archive),
            Some(why) => log::warn!("inbox: {} failed: {why}", r.archive),
        }
        out.push(r);
    }
    Ok(out)
}
