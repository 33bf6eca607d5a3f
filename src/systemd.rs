//! systemd integration in one place: `READY=1` once the model is loaded, `STATUS=` with what the
//! daemon is doing, `WATCHDOG=1` only while the pipeline really makes progress, `RELOADING=1`,
//! `STOPPING=1`, and `EXTEND_TIMEOUT_USEC=` while a long start-up (TensorRT engine builds) runs.
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.
//!
//! The watchdog is fed from [`Progress`]: stages mark themselves alive (the monitor loop each tick,
//! the model worker between tokens and while idle); a beat is sent only when every registered
//! stage was seen within the watchdog period, so a hung ONNX run or a stuck loop gets the service
//! restarted instead of being hidden by a timer thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify failed: {e}");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
}

pub fn status(msg: &str) {
    log::debug!("status: {msg}");
    send(&[NotifyState::Status(msg)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Asks systemd for `d` more before it gives up on start-up or reload.
pub fn extend_timeout(d: Duration) {
    send(&[NotifyState::ExtendTimeoutUsec(
        d.as_micros().min(u32::MAX as u128) as u32,
    )]);
}

/// The watchdog period systemd expects, when `WatchdogSec=` is set for this process.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Liveness marks from the pipeline's stages.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    start: Arc<Mutex<Option<Instant>>>,
    stages: Arc<Mutex<BTreeMap<&'static str, Arc<AtomicU64>>>>,
}

/// One stage's liveness mark; cheap to clone into a thread.
#[derive(Debug, Clone)]
pub struct Beat {
    origin: Instant,
    last: Arc<AtomicU64>,
}

impl Beat {
    /// This stage is alive and moving.
    pub fn alive(&self) {
        self.last
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            start: Arc::new(Mutex::new(Some(Instant::now()))),
            stages: Default::default(),
        }
    }

    fn origin(&self) -> Instant {
        self.start
            .lock()
            .expect("poisoned")
            .get_or_insert_with(Instant::now)
            .to_owned()
    }

    /// Registers a stage that must keep beating.
    pub fn stage(&self, name: &'static str) -> Beat {
        let last = Arc::new(AtomicU64::new(0));
        let b = Beat {
            origin: self.origin(),
            last: Arc::clone(&last),
        };
        b.alive();
        self.stages.lock().expect("poisoned").insert(name, last);
        b
    }

    /// Stops watching a stage (it ended on purpose).
    pub fn retire(&self, name: &'static str) {
        self.stages.lock().expect("poisoned").remove(name);
    }

    /// Stages not seen within `within`.
    pub fn stalled(&self, within: Duration) -> Vec<&'static str> {
        let now = self.origin().elapsed().as_millis() as u64;
        let limit = within.as_millis() as u64;
        self.stages
            .lock()
            .expect("poisoned")
            .iter()
            .filter(|(_, t)| now.saturating_sub(t.load(Ordering::Relaxed)) > limit)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Sends a watchdog beat when every stage made progress within `period`; returns the stalled
    /// stages otherwise (and logs them once per call).
    pub fn feed_watchdog(&self, period: Duration) -> Vec<&'static str> {
        let stalled = self.stalled(period);
        if stalled.is_empty() {
            send(&[NotifyState::Watchdog]);
        } else {
            log::warn!(
                "watchdog withheld: no progress from {} within {:?}",
                stalled.join(", "),
                period
            );
        }
        stalled
    }
}

/// Installs the logger: the journal's native protocol (structured fields, priorities) when
/// stderr goes to the journal (`JOURNAL_STREAM` names stderr, as systemd sets it for a service),
/// else human-readable lines on stderr. `GEMBA_LOG` overrides `default_level` (a level, or
/// env_logger's `module=level` filters on stderr).
pub fn init_logging(default_level: &str) {
    if systemd_journal_logger::connected_to_journal() {
        let level: log::LevelFilter = std::env::var("GEMBA_LOG")
            .ok()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| default_level.parse().unwrap_or(log::LevelFilter::Warn));
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            if j.with_syslog_identifier("gemba".into()).install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    let _ = env_logger::Builder::from_env(
        env_logger::Env::default().filter_or("GEMBA_LOG", default_level),
    )
    .format_timestamp_millis()
    .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_stages_are_named() {
        let p = Progress::new();
        let a = p.stage("monitor");
        let _b = p.stage("worker");
        std::thread::sleep(Duration::from_millis(60));
        a.alive();
        assert_eq!(p.stalled(Duration::from_millis(30)), vec!["worker"]);
        p.retire("worker");
        assert!(p.stalled(Duration::from_millis(30)).is_empty());
    }
}
