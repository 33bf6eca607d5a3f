//! The update state machine and its record, `<root>/update-state.json`.
//!
//! [`Machine::transition_to`] is the only way the state changes: it checks the transition
//! against the table in [`State::can_go_to`], persists the record atomically (fsync'd), logs
//! it, tells the caller's observer, and then honours the test hook that pauses the process right
//! there (so that tests can kill -9 it at every transition).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsutil::write_atomic;
use super::UpdateError;

/// Set to a state name (`verifying`, `switched`, …) or a pause point (`current-tmp-linked`,
/// `unpacking`) to make the installer print `gemba-update: paused after NAME` on stderr and wait
/// there until killed. A test hook: a kill -9 at that point is a power cut there.
pub const PAUSE_ENV: &str = "GEMBA_UPDATE_PAUSE_AFTER";

/// Stops the process at `point` when [`PAUSE_ENV`] names it.
pub fn pause_point(point: &str) {
    if std::env::var(PAUSE_ENV).ok().as_deref() == Some(point) {
        eprintln!(
            "gemba-update: paused after {point} (pid {})",
            std::process::id()
        );
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    /// No update has run on this root yet.
    Idle,
    /// The archive is being verified and unpacked into staging/.
    Verifying,
    /// `versions/<v>` holds the complete, verified bundle.
    Unpacked,
    /// The smoke prompt passed on the unpacked bundle.
    Smoked,
    /// `current` points at the new version, `previous` at the old one.
    Switched,
    /// The daemon was told to reload (SIGHUP).
    Reloaded,
    /// Terminal: the new version is active (and passed the health gate unless it was skipped).
    Healthy,
    /// `current` is being pointed back at the old version.
    RollingBack { reason: String },
    /// Terminal: the switch was undone; the old version is active.
    RolledBack { reason: String },
    /// Terminal: refused before the switch; the old version never stopped being active.
    Rejected { reason: String },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Verifying => "verifying",
            State::Unpacked => "unpacked",
            State::Smoked => "smoked",
            State::Switched => "switched",
            State::Reloaded => "reloaded",
            State::Healthy => "healthy",
            State::RollingBack { .. } => "rolling-back",
            State::RolledBack { .. } => "rolled-back",
            State::Rejected { .. } => "rejected",
        }
    }

    /// No update in flight.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            State::Idle | State::Healthy | State::RolledBack { .. } | State::Rejected { .. }
        )
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            State::RollingBack { reason }
            | State::RolledBack { reason }
            | State::Rejected { reason } => Some(reason),
            _ => None,
        }
    }

    /// The transition table.
    pub fn can_go_to(&self, next: &State) -> bool {
        use State::*;
        match (self, next) {
            (s, Verifying) => s.is_terminal(),
            (Verifying, Unpacked)
            | (Unpacked, Smoked)
            | (Smoked, Switched)
            | (Switched, Reloaded) => true,
            // Already active (nothing to switch), or the gate skipped with --no-daemon.
            (Verifying, Healthy) | (Switched, Healthy) | (Reloaded, Healthy) => true,
            (Verifying | Unpacked | Smoked, Rejected { .. }) => true,
            (Smoked | Switched | Reloaded, RollingBack { .. }) => true,
            (RollingBack { .. }, RolledBack { .. }) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason() {
            Some(r) => write!(f, "{}: {r}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptKind {
    /// A bundle archive.
    Install,
    /// Back to the `previous` version (`gemba model rollback`).
    Rollback,
}

/// What the update in flight (or the last one) is doing, and what to restore if it fails.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub kind: AttemptKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<PathBuf>,
    /// Known once the manifest is verified.
    pub version: Option<String>,
    pub bundle_hash: Option<String>,
    /// The signer's key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `versions/<version>` was created by this attempt (and is deleted if it fails).
    pub fresh: bool,
    /// `current` before the attempt (what a rollback restores).
    pub from: Option<String>,
    /// `previous` before the attempt.
    pub from_previous: Option<String>,
    pub pid: u32,
    pub started_at: String,
    /// How the health gate went: `passed`, `skipped (--no-daemon)`, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    pub at: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `<root>/update-state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpdateRecord {
    pub schema: u32,
    #[serde(flatten)]
    pub state: State,
    pub attempt: Option<Attempt>,
    pub updated_at: String,
    /// Oldest first, the last [`HISTORY`] transitions.
    pub history: Vec<HistoryEntry>,
}

pub const HISTORY: usize = 200;

impl Default for UpdateRecord {
    fn default() -> Self {
        UpdateRecord {
            schema: 1,
            state: State::Idle,
            attempt: None,
            updated_at: now(),
            history: Vec::new(),
        }
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Reads a root's record; a root without one is `Idle`.
pub fn read_record(root: &Path) -> Result<UpdateRecord, UpdateError> {
    let path = root.join("update-state.json");
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UpdateRecord::default()),
        Err(e) => Err(UpdateError::io(&path, e)),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| UpdateError::State {
            path,
            detail: format!("not a valid record: {e}"),
        }),
    }
}

/// Observes transitions (the CLI prints them).
pub type Observer<'a> = &'a dyn Fn(&State, Option<&Attempt>);

/// The record plus the rules for changing it.
pub struct Machine<'a> {
    path: PathBuf,
    pub record: UpdateRecord,
    observer: Option<Observer<'a>>,
}

impl<'a> Machine<'a> {
    pub fn load(root: &Path, observer: Option<Observer<'a>>) -> Result<Machine<'a>, UpdateError> {
        Ok(Machine {
            path: root.join("update-state.json"),
            record: read_record(root)?,
            observer,
        })
    }

    pub fn state(&self) -> &State {
        &self.record.state
    }

    pub fn attempt(&self) -> Option<&Attempt> {
        self.record.attempt.as_ref()
    }

    pub fn attempt_mut(&mut self) -> &mut Attempt {
        self.record
            .attempt
            .as_mut()
            .expect("an attempt is in flight")
    }

    /// Starts an attempt: → Verifying.
    pub fn begin(&mut self, attempt: Attempt) -> Result<(), UpdateError> {
        let next = State::Verifying;
        self.check(&next)?;
        self.record.attempt = Some(attempt);
        self.commit(next)
    }

    /// Moves to `next` if the table allows it; persisted and logged before returning.
    pub fn transition_to(&mut self, next: State) -> Result<(), UpdateError> {
        self.check(&next)?;
        self.commit(next)
    }

    /// Persists the attempt's fields without a transition (e.g. the version once known).
    pub fn save(&mut self) -> Result<(), UpdateError> {
        self.record.updated_at = now();
        self.persist()
    }

    /// Appends a note to the history without changing state (e.g. a repaired link).
    pub fn note(&mut self, text: String) -> Result<(), UpdateError> {
        log::warn!("update: {text}");
        self.record.history.push(HistoryEntry {
            at: now(),
            state: "note".into(),
            version: None,
            reason: Some(text),
        });
        self.save()
    }

    fn check(&self, next: &State) -> Result<(), UpdateError> {
        if self.record.state.can_go_to(next) {
            Ok(())
        } else {
            Err(UpdateError::State {
                path: self.path.clone(),
                detail: format!(
                    "transition {} → {} is not allowed (a bug)",
                    self.record.state.name(),
                    next.name()
                ),
            })
        }
    }

    fn commit(&mut self, next: State) -> Result<(), UpdateError> {
        let version = self.record.attempt.as_ref().and_then(|a| a.version.clone());
        self.record.history.push(HistoryEntry {
            at: now(),
            state: next.name().into(),
            version: version.clone(),
            reason: next.reason().map(String::from),
        });
        if self.record.history.len() > HISTORY {
            let cut = self.record.history.len() - HISTORY;
            self.record.history.drain(..cut);
        }
        self.record.state = next;
        self.record.updated_at = now();
        self.persist()?;
        match self.record.state.reason() {
            Some(r) => log::warn!(
                "update {}: {} ({r})",
                version.as_deref().unwrap_or("?"),
                self.record.state.name()
            ),
            None => log::info!(
                "update {}: {}",
                version.as_deref().unwrap_or("?"),
                self.record.state.name()
            ),
        }
        if let Some(obs) = self.observer {
            obs(&self.record.state, self.record.attempt.as_ref());
        }
        pause_point(self.record.state.name());
        Ok(())
    }

    fn persist(&self) -> Result<(), UpdateError> {
        let bytes = serde_json::to_vec_pretty(&self.record).expect("record serialises");
        write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<State> {
        let r = || "r".to_string();
        vec![
            State::Idle,
            State::Verifying,
            State::Unpacked,
            State::Smoked,
            State::Switched,
            State::Reloaded,
            State::Healthy,
            State::RollingBack { reason: r() },
            State::RolledBack { reason: r() },
            State::Rejected { reason: r() },
        ]
    }

    #[test]
    fn transition_table_is_exactly_the_documented_graph() {
        let allowed: &[(&str, &str)] = &[
            ("idle", "verifying"),
            ("healthy", "verifying"),
            ("rolled-back", "verifying"),
            ("rejected", "verifying"),
            ("verifying", "unpacked"),
            ("verifying", "healthy"),
            ("verifying", "rejected"),
            ("unpacked", "smoked"),
            ("unpacked", "rejected"),
            ("smoked", "switched"),
            ("smoked", "rejected"),
            ("smoked", "rolling-back"),
            ("switched", "reloaded"),
            ("switched", "healthy"),
            ("switched", "rolling-back"),
            ("reloaded", "healthy"),
            ("reloaded", "rolling-back"),
            ("rolling-back", "rolled-back"),
        ];
        for a in all() {
            for b in all() {
                let want = allowed.contains(&(a.name(), b.name()));
                assert_eq!(a.can_go_to(&b), want, "{} → {}", a.name(), b.name());
            }
        }
    }

    #[test]
    fn record_round_trips_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Machine::load(dir.path(), None).unwrap();
        assert_eq!(m.state(), &State::Idle);
        m.begin(Attempt {
            kind: AttemptKind::Install,
            archive: Some("b.tar".into()),
            version: Some("2".into()),
            bundle_hash: None,
            key_id: None,
            fresh: true,
            from: Some("1".into()),
            from_previous: None,
            pid: 1,
            started_at: now(),
            gate: None,
            note: None,
        })
        .unwrap();
        m.transition_to(State::Rejected {
            reason: "bad".into(),
        })
        .unwrap();
        assert!(m.transition_to(State::Switched).is_err());
        let r = read_record(dir.path()).unwrap();
        assert_eq!(
            r.state,
            State::Rejected {
                reason: "bad".into()
            }
        );
        assert_eq!(
            r.history
                .iter()
                .map(|h| h.state.as_str())
                .collect::<Vec<_>>(),
            ["verifying", "rejected"]
        );
        let text = std::fs::read_to_string(dir.path().join("update-state.json")).unwrap();
        assert!(
            text.contains("\"state\": \"rejected\"") && text.contains("\"reason\": \"bad\""),
            "{text}"
        );
    }
}
