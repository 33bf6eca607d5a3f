//! The outbox: messages waiting to leave the board (MQTT, see `crate::publish`), kept in the
//! store's own SQLite so they share its durability.
//!
//! What flows in: a report's message, written by the [`OutboxHook`] in the same transaction that
//! closes the report (so a finished report and its message exist together or not at all), and
//! other messages ([`Store::outbox_push`]: answers, update transitions). What flows out: rows in
//! order of `seq` ([`Store::outbox_peek`]) to the publisher, which deletes each once the broker
//! acknowledged it ([`Store::outbox_ack`]).
//!
//! Bounds: a report's messages go with the report when retention evicts it (counted as dropped,
//! [`OutboxStats::dropped`]); messages tied to no report are capped at
//! [`MAX_DETACHED`] (the oldest go, counted as dropped). The store knows nothing of topics'
//! meaning: the hook (the publisher's) builds the payload from the finished report.

use std::sync::Arc;

use rusqlite::params;
use serde::Serialize;

use super::{Inner, Store};
use crate::report::{Report, ReportId, Result};

/// Messages tied to no report kept at most; beyond it the oldest are dropped.
pub const MAX_DETACHED: i64 = 10_000;

const OUTBOX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT NOT NULL,    -- relative to the publisher's prefix (`reports`, `answers/ID`)
    report_id  TEXT,             -- the report it is about; evicted with it
    payload    TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_report ON outbox (report_id);
";

/// A message to queue: a topic (relative to the publisher's prefix) and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: String,
    pub payload: String,
}

/// Builds the messages of a report that has just closed (complete or incomplete). Called under
/// the store's lock, inside the closing transaction: it must not call back into the store.
pub type OutboxHook = Arc<dyn Fn(&Report) -> Vec<OutboxMessage> + Send + Sync>;

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub topic: String,
    pub report_id: Option<String>,
    pub payload: String,
    pub created_ms: i64,
}

/// The outbox's state (status, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Messages waiting for the broker's acknowledgement.
    pub pending: u64,
    /// Age of the oldest waiting message, in ms (0 when none).
    pub oldest_age_ms: u64,
    /// Messages dropped since the store was opened: their report was evicted, or the detached
    /// cap was reached, before the broker took them.
    pub dropped: u64,
}

impl Store {
    /// Turns the outbox on: from now on every report that closes gets `hook`'s messages, written
    /// in the closing transaction.
    pub fn set_outbox_hook(&self, hook: OutboxHook) -> Result<()> {
        let mut inner = self.lock();
        inner.check_writable("the outbox")?;
        inner.ensure_outbox()?;
        inner.outbox_hook = Some(hook);
        // Reports a crash cut off were closed by recovery, before any hook: they get their
        // messages now (once: the next recovery does not see them open again).
        for id in inner.recovery.cut_off.clone() {
            let queued: i64 = inner
                .conn
                .query_row(
                    "SELECT COUNT(*) FROM outbox WHERE report_id = ?1",
                    [id.as_str()],
                    |r| r.get(0),
                )
                .map_err(inner.db_err("reading the outbox"))?;
            if queued == 0 && inner.get(&id).is_ok() {
                inner.queue_report_messages(&id)?;
            }
        }
        Ok(())
    }

    /// Queues a message (tied to a report or not).
    pub fn outbox_push(&self, msg: &OutboxMessage, report: Option<&ReportId>) -> Result<i64> {
        let mut inner = self.lock();
        inner.check_writable("the outbox")?;
        inner.ensure_outbox()?;
        let now = jiff::Timestamp::now().as_millisecond();
        inner
            .conn
            .execute(
                "INSERT INTO outbox (topic, report_id, payload, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![msg.topic, report.map(|r| r.as_str()), msg.payload, now],
            )
            .map_err(inner.db_err("queueing a message"))?;
        let seq = inner.conn.last_insert_rowid();
        if report.is_none() {
            let dropped = inner
                .conn
                .execute(
                    "DELETE FROM outbox WHERE report_id IS NULL AND seq <= (
                         SELECT seq FROM outbox WHERE report_id IS NULL ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
                    [MAX_DETACHED],
                )
                .map_err(inner.db_err("trimming the outbox"))?;
            inner.outbox_dropped += dropped as u64;
        }
        Ok(seq)
    }

    /// Up to `limit` waiting messages with `seq > after`, oldest first.
    pub fn outbox_peek(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>> {
        let inner = self.lock();
        if !inner.outbox_ready {
            return Ok(Vec::new());
        }
        let mut stmt = inner
            .conn
            .prepare_cached(
                "SELECT seq, topic, report_id, payload, created_ms FROM outbox WHERE seq > ?1
                 ORDER BY seq LIMIT ?2",
            )
            .map_err(inner.db_err("reading the outbox"))?;
        let rows = stmt
            .query_map(params![after, limit as i64], |r| {
                Ok(OutboxRow {
                    seq: r.get(0)?,
                    topic: r.get(1)?,
                    report_id: r.get(2)?,
                    payload: r.get(3)?,
                    created_ms: r.get(4)?,
                })
            })
            .map_err(inner.db_err("reading the outbox"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(inner.db_err("reading the outbox"))
    }

    /// The broker took these messages: they leave the outbox.
    pub fn outbox_ack(&self, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let inner = self.lock();
        inner.check_writable("the outbox")?;
        let tx = inner
            .conn
            .unchecked_transaction()
            .map_err(inner.db_err("acknowledging messages"))?;
        let r = (|| {
            let mut stmt = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            for s in seqs {
                stmt.execute([s])?;
            }
            drop(stmt);
            tx.commit()
        })();
        r.map_err(inner.db_err("acknowledging messages"))
    }

    /// Waiting and dropped messages.
    pub fn outbox_stats(&self) -> Result<OutboxStats> {
        let inner = self.lock();
        if !inner.outbox_ready {
            return Ok(OutboxStats {
                dropped: inner.outbox_dropped,
                ..Default::default()
            });
        }
        let (pending, oldest): (i64, Option<i64>) = inner
            .conn
            .query_row("SELECT COUNT(*), MIN(created_ms) FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(inner.db_err("counting the outbox"))?;
        let now = jiff::Timestamp::now().as_millisecond();
        Ok(OutboxStats {
            pending: pending as u64,
            oldest_age_ms: oldest.map_or(0, |o| (now - o).max(0) as u64),
            dropped: inner.outbox_dropped,
        })
    }
}

impl Inner {
    /// Creates the table once (stores made before the outbox existed get it on first use; it is
    /// `IF NOT EXISTS`, so no schema version is needed for it).
    pub(super) fn ensure_outbox(&mut self) -> Result<()> {
        if !self.outbox_ready {
            self.conn
                .execute_batch(OUTBOX_SCHEMA)
                .map_err(self.db_err("creating the outbox"))?;
            self.outbox_ready = true;
        }
        Ok(())
    }

    /// Opens the table if a previous run made it (a store with waiting messages keeps them even
    /// when this run has no publisher yet).
    pub(super) fn detect_outbox(&mut self) -> Result<()> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
                [],
                |r| r.get(0),
            )
            .map_err(self.db_err("looking for the outbox"))?;
        self.outbox_ready = n > 0;
        Ok(())
    }

    /// Inside the closing transaction: the report's messages, if a hook is set.
    pub(super) fn queue_report_messages(&mut self, id: &ReportId) -> Result<()> {
        let Some(hook) = self.outbox_hook.clone() else {
            return Ok(());
        };
        let report = self.get(id)?;
        let now = jiff::Timestamp::now().as_millisecond();
        for m in hook(&report) {
            self.conn
                .execute(
                    "INSERT INTO outbox (topic, report_id, payload, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![m.topic, id.as_str(), m.payload, now],
                )
                .map_err(self.db_err("queueing a report's message"))?;
        }
        Ok(())
    }

    /// Before a report is evicted: its waiting messages go too, counted as dropped.
    pub(super) fn drop_report_messages(&mut self, id: &ReportId) -> Result<()> {
        if !self.outbox_ready {
            return Ok(());
        }
        let n = self
            .conn
            .execute("DELETE FROM outbox WHERE report_id = ?1", [id.as_str()])
            .map_err(self.db_err("dropping an evicted report's messages"))?;
        if n > 0 {
            log::warn!(
                "report {id}: evicted before its {n} message(s) reached the broker; dropped"
            );
        }
        self.outbox_dropped += n as u64;
        Ok(())
    }
}
