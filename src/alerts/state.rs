//! An alert rule's state machine: ok → pending → raised → clearing → ok, with hysteresis.
//!
//! In: one judged look at a time (the rule matched or not). Out: the [`Change`] it caused, if
//! any. `raise_after` consecutive matching looks raise the alert (ok → pending → … → raised);
//! one look that does not match while pending goes back to ok. `clear_after` consecutive looks
//! that do not match clear it (raised → clearing → … → ok); one matching look while clearing
//! goes back to raised (it never cleared: no new report). Only a raise and a clear are reports
//! (`alert:NAME`); every change is an event (`GET /alerts/events`).
//!
//! Pure: time comes in as an argument, so tests drive it look by look.

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Ok,
    Pending,
    Raised,
    Clearing,
}

impl State {
    pub fn word(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Pending => "pending",
            State::Raised => "raised",
            State::Clearing => "clearing",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "ok" => State::Ok,
            "pending" => State::Pending,
            "raised" => State::Raised,
            "clearing" => State::Clearing,
            _ => return None,
        })
    }
    /// The value of the `gemba_alert_state` metric.
    pub fn metric(self) -> i64 {
        self as i64
    }
    /// Raised or clearing: the alert stands.
    pub fn is_active(self) -> bool {
        matches!(self, State::Raised | State::Clearing)
    }
}

/// One rule's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Machine {
    pub state: State,
    /// Consecutive looks counted toward the next step (matches while pending, misses while
    /// clearing).
    pub streak: u32,
    /// When the state was entered, ms since the Unix epoch.
    pub since_ms: i64,
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: State,
    pub to: State,
}

impl Change {
    /// A raise or a clear: the changes that are reports.
    pub fn kind(&self) -> Option<&'static str> {
        match (self.from, self.to) {
            (State::Ok | State::Pending, State::Raised) => Some("raise"),
            (State::Raised | State::Clearing, State::Ok) => Some("clear"),
            _ => None,
        }
    }
}

impl Machine {
    /// One judged look: `matched` is whether the rule's `when` held. Returns the change, if any
    /// (a look that only advances a streak changes nothing visible but the streak).
    pub fn step(
        &mut self,
        matched: bool,
        raise_after: u32,
        clear_after: u32,
        now_ms: i64,
    ) -> Option<Change> {
        let from = self.state;
        let (to, streak) = match (from, matched) {
            (State::Ok, false) | (State::Raised, true) => (from, 0),
            (State::Ok, true) | (State::Pending, true) => {
                let n = if from == State::Ok {
                    1
                } else {
                    self.streak + 1
                };
                if n >= raise_after {
                    (State::Raised, 0)
                } else {
                    (State::Pending, n)
                }
            }
            (State::Pending, false) => (State::Ok, 0),
            (State::Raised, false) | (State::Clearing, false) => {
                let n = if from == State::Raised {
                    1
                } else {
                    self.streak + 1
                };
                if n >= clear_after {
                    (State::Ok, 0)
                } else {
                    (State::Clearing, n)
                }
            }
            (State::Clearing, true) => (State::Raised, 0),
        };
        self.streak = streak;
        if to == from {
            return None;
        }
        self.state = to;
        self.since_ms = now_ms;
        Some(Change { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a sequence of looks (1 = match) and returns the state after each and the reports.
    fn run(looks: &str, raise_after: u32, clear_after: u32) -> (String, Vec<&'static str>) {
        let mut m = Machine::default();
        let mut states = String::new();
        let mut reports = Vec::new();
        for (t, c) in looks.chars().enumerate() {
            if let Some(ch) = m.step(c == '1', raise_after, clear_after, t as i64) {
                assert_eq!(m.since_ms, t as i64);
                if let Some(k) = ch.kind() {
                    reports.push(k);
                }
            }
            states.push(match m.state {
                State::Ok => 'o',
                State::Pending => 'p',
                State::Raised => 'R',
                State::Clearing => 'c',
            });
        }
        (states, reports)
    }

    #[test]
    fn hysteresis_table() {
        let cases = [
            // looks, raise_after, clear_after, states after each look, reports
            ("0000", 2, 2, "oooo", vec![]),
            ("1100", 2, 2, "pRco", vec!["raise", "clear"]),
            ("1010101", 2, 2, "popopop", vec![]),
            ("11101011", 2, 2, "pRRcRcRR", vec!["raise"]),
            ("110110", 2, 3, "pRcRRc", vec!["raise"]),
            ("1100011", 2, 3, "pRccopR", vec!["raise", "clear", "raise"]),
            ("10", 1, 1, "Ro", vec!["raise", "clear"]),
            ("111000", 3, 1, "ppRooo", vec!["raise", "clear"]),
            ("0011111100", 3, 2, "ooppRRRRco", vec!["raise", "clear"]),
        ];
        for (looks, r, c, want, reports) in cases {
            let (got, rep) = run(looks, r, c);
            assert_eq!(got, want, "{looks} raise_after={r} clear_after={c}");
            assert_eq!(rep, reports, "{looks} raise_after={r} clear_after={c}");
        }
    }

    #[test]
    fn words_round_trip() {
        for s in [State::Ok, State::Pending, State::Raised, State::Clearing] {
            assert_eq!(State::parse(s.word()), Some(s));
        }
        assert_eq!(
            [State::Ok, State::Pending, State::Raised, State::Clearing].map(State::metric),
            [0, 1, 2, 3]
        );
    }
}
