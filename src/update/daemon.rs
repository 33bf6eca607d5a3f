//! The installer's side of the daemon contract (module docs of [`crate::update`]): the daemon's
//! `status.json`, telling it to reload (SIGHUP), and the health gate that waits for it.
//!
//! The file's type is the daemon's own [`DaemonStatus`] (one type for both sides); the fake
//! daemon writes it with [`write_status`]; the installer uses [`probe`], [`reload`] and
//! [`wait_healthy`].

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::fsutil::write_atomic;
use super::UpdateError;

pub use crate::daemon::status::{read_status, status_path, DaemonStatus, STATUS_FILE};

pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Writes the daemon's status atomically (the daemon's side of the contract).
pub fn write_status(state_dir: &Path, status: &DaemonStatus) -> Result<(), UpdateError> {
    std::fs::create_dir_all(state_dir).map_err(|e| UpdateError::io(state_dir, e))?;
    write_atomic(&status_path(state_dir), &status.to_json())
}

/// Whether `pid` is a live (not zombie) `gemba` process. The name check keeps a stale status.json
/// (after a reboot the pid may belong to anything) from making us signal a stranger.
pub fn is_gemba_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": comm may contain spaces and parentheses; the state follows the last ')'.
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let state = stat[close + 1..].trim_start().chars().next();
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    let comm = &stat[stat.find('(').map(|i| i + 1).unwrap_or(0)..close];
    comm == "gemba" || comm.starts_with("gemba")
}

/// Checks, before anything changes, that a daemon is there to run the health gate.
pub fn probe(state_dir: &Path) -> Result<DaemonStatus, UpdateError> {
    match read_status(state_dir) {
        Err(detail) => Err(UpdateError::NoDaemon { detail }),
        Ok(None) => Err(UpdateError::NoDaemon {
            detail: format!("{} does not exist", status_path(state_dir).display()),
        }),
        Ok(Some(s)) if !is_gemba_alive(s.pid) => Err(UpdateError::NoDaemon {
            detail: format!(
                "{} names pid {}, which is not a running gemba",
                status_path(state_dir).display(),
                s.pid
            ),
        }),
        Ok(Some(s)) => Ok(s),
    }
}

/// Sends SIGHUP to the daemon named in status.json; returns when it was sent.
pub fn reload(state_dir: &Path) -> Result<SystemTime, String> {
    let s = read_status(state_dir)?
        .ok_or_else(|| format!("{} is gone", status_path(state_dir).display()))?;
    if !is_gemba_alive(s.pid) {
        return Err(format!("daemon pid {} is not running", s.pid));
    }
    let at = SystemTime::now();
    // SAFETY: kill(2) with a pid we checked is a live gemba process.
    if unsafe { libc::kill(s.pid as i32, libc::SIGHUP) } != 0 {
        return Err(format!(
            "SIGHUP to pid {}: {}",
            s.pid,
            std::io::Error::last_os_error()
        ));
    }
    log::info!("update: sent SIGHUP to the daemon (pid {})", s.pid);
    Ok(at)
}

/// Waits until the daemon reports `hash` ready (and not `smoke_ok: false`) within `timeout`, then
/// until it has stayed so for `hold`. `Err` is the reason the gate failed.
pub fn wait_healthy(
    state_dir: &Path,
    hash: &str,
    since: SystemTime,
    timeout: Duration,
    hold: Duration,
) -> Result<DaemonStatus, String> {
    let poll = Duration::from_millis(50);
    let t0 = Instant::now();
    let mut last: Option<DaemonStatus> = None;
    let mut last_err: Option<String> = None;
    let ready = loop {
        match read_status(state_dir) {
            Ok(Some(s)) => {
                let fresh = std::fs::metadata(status_path(state_dir))
                    .and_then(|m| m.modified())
                    .map(|m| m >= since)
                    .unwrap_or(false);
                if s.bundle_hash.as_deref() == Some(hash) {
                    if s.smoke_ok == Some(false) {
                        return Err(format!(
                            "the daemon's smoke test failed on bundle {}: {}",
                            short(hash),
                            s.error.as_deref().unwrap_or("no error given")
                        ));
                    }
                    if let (false, Some(e)) = (s.ready, &s.error) {
                        return Err(format!(
                            "the daemon reports an error on bundle {}: {e}",
                            short(hash)
                        ));
                    }
                    if s.ready {
                        break s;
                    }
                } else if fresh && s.error.is_some() {
                    return Err(format!(
                        "the daemon did not load bundle {} and reports: {}",
                        short(hash),
                        s.error.as_deref().unwrap_or_default()
                    ));
                }
                last = Some(s);
            }
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if t0.elapsed() >= timeout {
            let seen = match (&last, &last_err) {
                (Some(s), _) => {
                    let alive = if is_gemba_alive(s.pid) {
                        ""
                    } else {
                        " (not running)"
                    };
                    format!("last status: {}{alive}", s.summary())
                }
                (None, Some(e)) => e.clone(),
                (None, None) => "no status.json".into(),
            };
            return Err(format!(
                "the daemon did not report bundle {} ready within {} ({seen})",
                short(hash),
                humantime::format_duration(timeout)
            ));
        }
        std::thread::sleep(poll);
    };
    if hold.is_zero() {
        return Ok(ready);
    }
    log::info!(
        "update: daemon ready on {}; holding {}",
        short(hash),
        humantime::format_duration(hold)
    );
    let t1 = Instant::now();
    while t1.elapsed() < hold {
        std::thread::sleep(poll);
        let s = match read_status(state_dir) {
            Ok(Some(s)) => s,
            Ok(None) => return Err("status.json disappeared during the health hold".into()),
            Err(e) => return Err(e),
        };
        let healthy =
            s.bundle_hash.as_deref() == Some(hash) && s.ready && s.smoke_ok != Some(false);
        if !healthy || !is_gemba_alive(s.pid) {
            let alive = if is_gemba_alive(s.pid) {
                ""
            } else {
                " (not running)"
            };
            return Err(format!(
                "the daemon stopped being healthy {:.1} s into the {} hold: {}{alive}",
                t1.elapsed().as_secs_f64(),
                humantime::format_duration(hold),
                s.summary()
            ));
        }
    }
    Ok(ready)
}
