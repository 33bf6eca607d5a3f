//! Alert states and the reports of their raises and clears, in the store's own SQLite (schema
//! version 2), so a state survives kill -9 and a restart with the same durability as a report.
//!
//! What flows in: a rule's state after a look that changed it ([`Store::put_alert_state`]), or —
//! for a raise or a clear — with the report of the transition, in the transaction that closes
//! that report ([`ReportWriter::finish_alert`](super::ReportWriter::finish_alert)): the report,
//! its alert mark and the new state exist together or not at all. What flows out: every rule's
//! last state ([`Store::alert_states`]) and a report's alert mark ([`Store::alert_mark`]) for
//! its page. The store knows nothing of rules or their meaning; `crate::alerts` owns those.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Inner, Store};
use crate::report::{ReportId, Result};

/// Tables added by schema version 2.
pub(super) const ALERT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alert_states (
    camera      TEXT NOT NULL,
    rule        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('ok', 'pending', 'raised', 'clearing')),
    streak      INTEGER NOT NULL DEFAULT 0,
    severity    TEXT NOT NULL,
    since_ms    INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    last_answer TEXT,          -- the structured answer of the last look, as JSON
    report_id   TEXT,          -- the report of the last raise or clear
    PRIMARY KEY (camera, rule)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alert_marks (
    report_id TEXT PRIMARY KEY REFERENCES reports (id) ON DELETE CASCADE,
    camera    TEXT NOT NULL,
    rule      TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('raise', 'clear')),
    severity  TEXT NOT NULL,
    state     TEXT NOT NULL,
    answer    TEXT NOT NULL     -- the structured answer the transition was decided on, as JSON
) WITHOUT ROWID;
";

/// One rule's persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertStateRow {
    pub camera: String,
    pub rule: String,
    /// `ok`, `pending`, `raised` or `clearing`.
    pub state: String,
    pub streak: u32,
    pub severity: String,
    pub since_ms: i64,
    pub updated_ms: i64,
    pub last_answer: Option<String>,
    pub report_id: Option<String>,
}

/// What makes a report an alert's: which rule, raise or clear, and the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertMark {
    pub camera: String,
    pub rule: String,
    /// `raise` or `clear`.
    pub kind: String,
    pub severity: String,
    /// The state the transition entered (`raised`, `ok`).
    pub state: String,
    /// JSON.
    pub answer: String,
}

impl Store {
    /// Every rule's last persisted state (a store made before alerts has none).
    pub fn alert_states(&self) -> Result<Vec<AlertStateRow>> {
        let inner = self.lock();
        if !inner.has_table("alert_states")? {
            return Ok(Vec::new());
        }
        let mut stmt = inner
            .conn
            .prepare(
                "SELECT camera, rule, state, streak, severity, since_ms, updated_ms, last_answer,
                        report_id FROM alert_states ORDER BY camera, rule",
            )
            .map_err(inner.db_err("reading alert states"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AlertStateRow {
                    camera: r.get(0)?,
                    rule: r.get(1)?,
                    state: r.get(2)?,
                    streak: r.get(3)?,
                    severity: r.get(4)?,
                    since_ms: r.get(5)?,
                    updated_ms: r.get(6)?,
                    last_answer: r.get(7)?,
                    report_id: r.get(8)?,
                })
            })
            .map_err(inner.db_err("reading alert states"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(inner.db_err("reading alert states"))
    }

    /// Writes one rule's state (a change that is no report: ok → pending, raised → clearing, …).
    pub fn put_alert_state(&self, row: &AlertStateRow) -> Result<()> {
        let inner = self.lock();
        inner.check_writable("writing an alert state")?;
        inner.upsert_alert_state(row)
    }

    /// The alert mark of a report, if it is an alert's raise or clear.
    pub fn alert_mark(&self, id: &ReportId) -> Result<Option<AlertMark>> {
        self.lock().alert_mark(id)
    }
}

impl Inner {
    fn has_table(&self, name: &str) -> Result<bool> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(self.db_err("reading the schema"))?;
        Ok(n > 0)
    }

    pub(super) fn upsert_alert_state(&self, row: &AlertStateRow) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO alert_states (camera, rule, state, streak, severity, since_ms,
                                           updated_ms, last_answer, report_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (camera, rule) DO UPDATE SET state = ?3, streak = ?4, severity = ?5,
                     since_ms = ?6, updated_ms = ?7, last_answer = ?8, report_id = ?9",
                params![
                    row.camera,
                    row.rule,
                    row.state,
                    row.streak,
                    row.severity,
                    row.since_ms,
                    row.updated_ms,
                    row.last_answer,
                    row.report_id
                ],
            )
            .map_err(self.db_err("writing an alert state"))?;
        Ok(())
    }

    /// Inside a report's closing transaction: its mark and the rule's new state.
    pub(super) fn write_alert(
        &self,
        id: &ReportId,
        mark: &AlertMark,
        row: &AlertStateRow,
    ) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO alert_marks (report_id, camera, rule, kind, severity, state, answer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id.as_str(),
                    mark.camera,
                    mark.rule,
                    mark.kind,
                    mark.severity,
                    mark.state,
                    mark.answer
                ],
            )
            .map_err(self.db_err("writing an alert mark"))?;
        self.upsert_alert_state(row)
    }

    pub(super) fn alert_mark(&self, id: &ReportId) -> Result<Option<AlertMark>> {
        if !self.has_table("alert_marks")? {
            return Ok(None);
        }
        self.conn
            .query_row(
                "SELECT camera, rule, kind, severity, state, answer FROM alert_marks
                 WHERE report_id = ?1",
                [id.as_str()],
                |r| {
                    Ok(AlertMark {
                        camera: r.get(0)?,
                        rule: r.get(1)?,
                        kind: r.get(2)?,
                        severity: r.get(3)?,
                        state: r.get(4)?,
                        answer: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(self.db_err("reading an alert mark"))
    }
}
