//! Alerts: monitoring that decides. Per camera, rules (`[[cameras.alerts]]`, [`rules`]) ask the
//! model a question whose answer is held to a shape (a JSON schema, or yes/no), judge the
//! answer with the rule's `when` ([`expr`]), and move the rule's state machine ([`state`]).
//!
//! ```text
//! monitor (gate fired) ─▶ queue (Class::Alert, one request per camera and frame)
//!   ─▶ dispatcher ─▶ [`look::run`]: every rule of the camera on the same frame
//!        ─▶ worker (constrained ask) ─▶ judge ─▶ [`Alerts::apply`] ─▶ store (state, and for a
//!           raise or a clear a report `alert:NAME` with the frame and the answer)
//!        ─▶ events (broadcast: `GET /alerts/events`, the board, MQTT `alerts`)
//! ```
//! [`Alerts`] owns the rules and each rule's machine, shared by the dispatcher (writes) and the
//! API (reads). States are loaded from the store at start-up, so a raised alert is still raised
//! after kill -9. The events channel is a broadcast of 256: a subscriber that falls behind
//! misses events (it is told how many, and `GET /alerts` has the current states).

pub mod expr;
pub mod look;
pub mod rules;
pub mod state;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use crate::capture::config::CameraSettings;
use crate::report::AlertStateRow;
pub use rules::{AlertRule, Severity};
pub use state::{Change, Machine, State};

/// A change of a rule's state, as `GET /alerts/events` and MQTT carry it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    pub camera: String,
    pub rule: String,
    pub from: State,
    pub to: State,
    /// `raise`, `clear`, or null for the changes that are no report.
    pub kind: Option<&'static str>,
    pub severity: Severity,
    /// RFC 3339.
    pub at: String,
    pub at_ms: i64,
    /// The structured answer the change was decided on.
    pub answer: Value,
    /// The camera's sequence number of the frame it was decided on.
    pub frame_seq: u64,
    /// The report of a raise or a clear.
    pub report_id: Option<String>,
}

/// One rule as `GET /alerts` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertView {
    pub camera: String,
    pub rule: String,
    pub state: State,
    pub severity: Severity,
    pub question: String,
    pub when: String,
    /// RFC 3339; when the state was entered.
    pub since: String,
    pub since_ms: i64,
    pub last_answer: Option<Value>,
    /// The report of the last raise or clear.
    pub report_id: Option<String>,
}

struct Entry {
    rule: AlertRule,
    machine: Machine,
    last_answer: Option<Value>,
    report_id: Option<String>,
}

/// What a judged look did to a rule.
#[derive(Debug, Clone)]
pub struct Applied {
    pub change: Option<Change>,
    /// The row to persist (always: the streak or the answer may have changed).
    pub row: AlertStateRow,
    pub severity: Severity,
}

/// Every camera's rules and states; shared (`Arc`) by the dispatcher and the API.
pub struct Alerts {
    book: Mutex<BTreeMap<(String, String), Entry>>,
    events: tokio::sync::broadcast::Sender<AlertEvent>,
    /// Changes by (camera, rule, state entered), for metrics.
    transitions: Mutex<BTreeMap<(String, String, State), u64>>,
    /// Looks that evaluated a camera's rules.
    pub looks: AtomicU64,
    /// Answers that could not be judged (not JSON, not a choice, a failed run).
    pub errors: AtomicU64,
}

pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default()
}

pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Alerts {
    /// The rules of `cameras`, with the states `persisted` (from the store) where a rule of the
    /// same camera and name was there before.
    pub fn new(cameras: &[CameraSettings], persisted: &[AlertStateRow]) -> Alerts {
        let (events, _) = tokio::sync::broadcast::channel(256);
        let a = Alerts {
            book: Mutex::new(BTreeMap::new()),
            events,
            transitions: Mutex::new(BTreeMap::new()),
            looks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        };
        {
            let mut book = a.book.lock().expect("poisoned");
            for c in cameras {
                for r in &c.alerts {
                    let saved = persisted
                        .iter()
                        .find(|p| p.camera == c.name && p.rule == r.name);
                    let entry = Entry {
                        rule: r.clone(),
                        machine: saved
                            .map(|p| Machine {
                                state: State::parse(&p.state).unwrap_or_default(),
                                streak: p.streak,
                                since_ms: p.since_ms,
                            })
                            .unwrap_or(Machine {
                                since_ms: now_ms(),
                                ..Machine::default()
                            }),
                        last_answer: saved
                            .and_then(|p| p.last_answer.as_deref())
                            .and_then(|a| serde_json::from_str(a).ok()),
                        report_id: saved.and_then(|p| p.report_id.clone()),
                    };
                    book.insert((c.name.clone(), r.name.clone()), entry);
                }
            }
        }
        a
    }

    /// A reload: the new rules; a rule kept (same camera and name) keeps its state.
    pub fn configure(&self, cameras: &[CameraSettings]) {
        let mut book = self.book.lock().expect("poisoned");
        let mut old = std::mem::take(&mut *book);
        for c in cameras {
            for r in &c.alerts {
                let key = (c.name.clone(), r.name.clone());
                let entry = match old.remove(&key) {
                    Some(mut e) => {
                        e.rule = r.clone();
                        e
                    }
                    None => Entry {
                        rule: r.clone(),
                        machine: Machine {
                            since_ms: now_ms(),
                            ..Machine::default()
                        },
                        last_answer: None,
                        report_id: None,
                    },
                };
                book.insert(key, entry);
            }
        }
    }

    pub fn has_rules(&self, camera: &str) -> bool {
        self.book
            .lock()
            .expect("poisoned")
            .keys()
            .any(|(c, _)| c == camera)
    }

    /// Whether a rule of `camera` is pending or clearing: its next decision needs more looks.
    pub fn undecided(&self, camera: &str) -> bool {
        self.book
            .lock()
            .expect("poisoned")
            .iter()
            .any(|((c, _), e)| {
                c == camera && matches!(e.machine.state, State::Pending | State::Clearing)
            })
    }

    /// A camera's rules, in name order.
    pub fn rules(&self, camera: &str) -> Vec<AlertRule> {
        self.book
            .lock()
            .expect("poisoned")
            .iter()
            .filter(|((c, _), _)| c == camera)
            .map(|(_, e)| e.rule.clone())
            .collect()
    }

    /// Every rule's current state.
    pub fn snapshot(&self) -> Vec<AlertView> {
        self.book
            .lock()
            .expect("poisoned")
            .iter()
            .map(|((camera, rule), e)| AlertView {
                camera: camera.clone(),
                rule: rule.clone(),
                state: e.machine.state,
                severity: e.rule.severity,
                question: e.rule.question.clone(),
                when: e.rule.when_text.clone(),
                since: rfc3339(e.machine.since_ms),
                since_ms: e.machine.since_ms,
                last_answer: e.last_answer.clone(),
                report_id: e.report_id.clone(),
            })
            .collect()
    }

    /// Raised (or clearing) rules.
    pub fn raised(&self) -> u64 {
        self.book
            .lock()
            .expect("poisoned")
            .values()
            .filter(|e| e.machine.state.is_active())
            .count() as u64
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<AlertEvent> {
        self.events.subscribe()
    }

    /// Changes so far by (camera, rule, state entered).
    pub fn transitions(&self) -> BTreeMap<(String, String, State), u64> {
        self.transitions.lock().expect("poisoned").clone()
    }

    /// Moves a rule's machine by one judged look (`None`: the rule is gone, after a reload).
    /// Nothing is published yet: the caller persists [`Applied::row`] (with the report, for a
    /// raise or a clear) and then calls [`Alerts::committed`].
    pub fn apply(
        &self,
        camera: &str,
        rule: &str,
        matched: bool,
        answer: &Value,
        now_ms: i64,
    ) -> Option<Applied> {
        let mut book = self.book.lock().expect("poisoned");
        let e = book.get_mut(&(camera.to_string(), rule.to_string()))?;
        let mut m = e.machine;
        let change = m.step(matched, e.rule.raise_after, e.rule.clear_after, now_ms);
        Some(Applied {
            change,
            severity: e.rule.severity,
            row: AlertStateRow {
                camera: camera.into(),
                rule: rule.into(),
                state: m.state.word().into(),
                streak: m.streak,
                severity: e.rule.severity.word().into(),
                since_ms: m.since_ms,
                updated_ms: now_ms,
                last_answer: Some(answer.to_string()),
                report_id: e.report_id.clone(),
            },
        })
    }

    /// The persisted `applied` becomes the rule's state; its change (if any) is counted and
    /// broadcast. Returns the event sent.
    pub fn committed(
        &self,
        applied: &Applied,
        answer: Value,
        frame_seq: u64,
    ) -> Option<AlertEvent> {
        let row = &applied.row;
        {
            let mut book = self.book.lock().expect("poisoned");
            let e = book.get_mut(&(row.camera.clone(), row.rule.clone()))?;
            e.machine = Machine {
                state: State::parse(&row.state).unwrap_or_default(),
                streak: row.streak,
                since_ms: row.since_ms,
            };
            e.last_answer = Some(answer.clone());
            e.report_id = row.report_id.clone();
        }
        let ch = applied.change?;
        *self
            .transitions
            .lock()
            .expect("poisoned")
            .entry((row.camera.clone(), row.rule.clone(), ch.to))
            .or_default() += 1;
        let ev = AlertEvent {
            camera: row.camera.clone(),
            rule: row.rule.clone(),
            from: ch.from,
            to: ch.to,
            kind: ch.kind(),
            severity: applied.severity,
            at: rfc3339(row.updated_ms),
            at_ms: row.updated_ms,
            answer,
            frame_seq,
            report_id: ch.kind().and(row.report_id.clone()),
        };
        log::info!(
            "alert {}/{}: {} → {}{}",
            ev.camera,
            ev.rule,
            ch.from.word(),
            ch.to.word(),
            ev.report_id
                .as_deref()
                .map(|r| format!(" (report {r})"))
                .unwrap_or_default()
        );
        let _ = self.events.send(ev.clone());
        Some(ev)
    }

    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}
