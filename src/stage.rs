//! Which of the daemon's stages are alive, and what happens when one dies.
//!
//! Every long-running stage (the monitor, the dispatcher, retention, the status writer, the API,
//! each camera thread, the model worker, the voice stage) holds a [`StageGuard`] for as long as it
//! runs. A stage that returns normally calls [`StageGuard::finish`]; a guard dropped without it —
//! a panic, or a loop that ended while the daemon was not stopping — marks the stage failed and
//! cancels [`Stages::failed`]. The daemon selects on that token and stops with an error (exit 1),
//! so systemd's `Restart=on-failure` restarts it whole: a stage never dies silently while the
//! rest runs on. (Restarting the one stage in-process was the alternative; a panic is a broken
//! invariant, and a restart of the same code with the same input would likely panic again,
//! quietly, in a loop — a visible restart of the whole daemon, with store recovery, is safer.)
//!
//! The registry is process-wide (one daemon per process), so a lower layer (capture, model) can
//! register its threads without knowing the daemon. [`install_panic_hook`] keeps each panic's
//! message for the guard on the panicking thread, so the failure says what went wrong.
//! `GET /status` shows [`Stages::snapshot`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// A stage's state as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum StageState {
    Running,
    /// Ended normally (the daemon is stopping, a non-looping replay camera ran out, a reload
    /// replaced it).
    Stopped,
    /// Panicked or ended while it should still run.
    Failed {
        error: String,
    },
    /// Configured but not started, by design (the voice stage without its microphone).
    Disabled {
        reason: String,
    },
}

/// The registry of stages (see the module docs).
#[derive(Default)]
pub struct Stages {
    states: Mutex<BTreeMap<String, StageState>>,
    stopping: AtomicBool,
    failed: CancellationToken,
    first_failure: Mutex<Option<String>>,
}

static STAGES: OnceLock<Arc<Stages>> = OnceLock::new();

/// The process's registry.
pub fn stages() -> &'static Arc<Stages> {
    STAGES.get_or_init(|| Arc::new(Stages::default()))
}

/// Marks `name` running until the guard is finished or dropped.
pub fn enter(name: impl Into<String>) -> StageGuard {
    stages().enter(name)
}

/// Runs `fut` as the stage `name` (see [`StageGuard`]).
pub async fn run<F: std::future::Future>(name: impl Into<String>, fut: F) -> F::Output {
    let name = name.into();
    let guard = enter(name.clone());
    injected_fault(&name);
    let out = fut.await;
    guard.finish();
    out
}

/// Runs `fut` as the stage `name`, which must run until the daemon stops: returning earlier is
/// a failure too (a loop whose input closed, a server that stopped).
pub async fn run_until_stop<F: std::future::Future>(name: impl Into<String>, fut: F) -> F::Output {
    let name = name.into();
    let _guard = enter(name.clone());
    injected_fault(&name);
    fut.await
}

/// A test hook: `GEMBA_FAULT_PANIC=NAME` makes the stage NAME panic as it starts (async stages
/// through [`run`] / [`run_until_stop`]; threads call it after [`enter`]), so the tests
/// can check what a stage's death does to the daemon (the config errors that once made stages
/// panic are refused now).
pub fn injected_fault(name: &str) {
    if std::env::var("GEMBA_FAULT_PANIC").is_ok_and(|v| v == name) {
        panic!("injected fault (GEMBA_FAULT_PANIC={name})");
    }
}

impl Stages {
    pub fn enter(self: &Arc<Self>, name: impl Into<String>) -> StageGuard {
        let name = name.into();
        self.states
            .lock()
            .expect("poisoned")
            .insert(name.clone(), StageState::Running);
        StageGuard {
            stages: Arc::clone(self),
            name: Some(name),
        }
    }

    /// From now on a stage that ends is stopped, not failed (shutdown has begun).
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Cancelled when the first stage fails.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// `stage NAME: WHAT` of the first failure.
    pub fn first_failure(&self) -> Option<String> {
        self.first_failure.lock().expect("poisoned").clone()
    }

    /// Records a configured stage that start-up left out, with why.
    pub fn disabled(&self, name: impl Into<String>, reason: impl Into<String>) {
        self.states.lock().expect("poisoned").insert(
            name.into(),
            StageState::Disabled {
                reason: reason.into(),
            },
        );
    }

    pub fn snapshot(&self) -> BTreeMap<String, StageState> {
        self.states.lock().expect("poisoned").clone()
    }

    fn end(&self, name: String, finished: bool) {
        let panic = LAST_PANIC.with(|p| p.borrow_mut().take());
        let state = match (finished, panic) {
            (true, _) => StageState::Stopped,
            (false, Some(msg)) => StageState::Failed {
                error: format!("panicked: {msg}"),
            },
            (false, None) if self.stopping.load(Ordering::SeqCst) => StageState::Stopped,
            (false, None) => StageState::Failed {
                error: "ended while the daemon was running".into(),
            },
        };
        if let StageState::Failed { error } = &state {
            log::error!("stage {name}: {error}");
            let mut first = self.first_failure.lock().expect("poisoned");
            if first.is_none() {
                *first = Some(format!("stage {name}: {error}"));
            }
            drop(first);
            self.failed.cancel();
        }
        self.states.lock().expect("poisoned").insert(name, state);
    }
}

/// Held by a running stage; see the module docs.
pub struct StageGuard {
    stages: Arc<Stages>,
    name: Option<String>,
}

impl StageGuard {
    /// The stage ended as it should.
    pub fn finish(mut self) {
        if let Some(name) = self.name.take() {
            self.stages.end(name, true);
        }
    }
}

impl StageGuard {
    /// The stage ended because a successor under the same name took over (a reload): its state
    /// is the successor's to set.
    pub fn replaced(mut self) {
        self.name = None;
    }
}

impl Drop for StageGuard {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            self.stages.end(name, false);
        }
    }
}

thread_local! {
    /// The message of the last panic on this thread, for the guard that is dropped next.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps each panic's message (and location) for the stage guard on the panicking thread; the
/// previous hook still prints it.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_stage_fails_and_a_finished_one_stops() {
        install_panic_hook();
        let s = Arc::new(Stages::default());
        let g = s.enter("fine");
        g.finish();
        let s2 = Arc::clone(&s);
        let r = std::thread::spawn(move || {
            let _g = s2.enter("bad");
            panic!("boom");
        })
        .join();
        assert!(r.is_err());
        let snap = s.snapshot();
        assert_eq!(snap["fine"], StageState::Stopped);
        assert!(
            matches!(&snap["bad"], StageState::Failed { error } if error.contains("boom")),
            "{snap:?}"
        );
        assert!(s.failed().is_cancelled());
        assert!(s
            .first_failure()
            .unwrap()
            .starts_with("stage bad: panicked: boom"));
    }

    #[test]
    fn a_disabled_stage_is_shown_with_its_reason() {
        let s = Arc::new(Stages::default());
        s.disabled("voice", "no microphone");
        assert_eq!(
            s.snapshot()["voice"],
            StageState::Disabled {
                reason: "no microphone".into()
            }
        );
        assert_eq!(
            serde_json::to_value(&s.snapshot()["voice"]).unwrap(),
            serde_json::json!({"state": "disabled", "reason": "no microphone"})
        );
        assert!(!s.failed().is_cancelled());
    }

    #[test]
    fn a_stage_that_ends_early_fails_unless_stopping() {
        let s = Arc::new(Stages::default());
        drop(s.enter("loop"));
        assert!(matches!(s.snapshot()["loop"], StageState::Failed { .. }));
        let s = Arc::new(Stages::default());
        s.stopping();
        drop(s.enter("loop"));
        assert_eq!(s.snapshot()["loop"], StageState::Stopped);
        assert!(!s.failed().is_cancelled());
    }
}
