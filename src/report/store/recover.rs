//! Recovery, run by [`Store::open`](super::Store::open) before anything else: what a crash, a
//! power cut or a person with `rm` can leave behind, found and put right, and reported in a
//! [`RecoveryReport`].
//!
//! Every step is idempotent, so dying during recovery is fine too: the next open does it again.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;

use rusqlite::params;

use super::{Inner, MediaProblem, RecoveryReport};
use crate::report::layout::{self, TEMP_PREFIX};
use crate::report::{media, ReportError, ReportId, Result, CUT_OFF_REASON};
use crate::sys::tree::{Action, Tree};

impl Inner {
    pub(super) fn recover(&mut self) -> Result<()> {
        let mut rec = RecoveryReport {
            integrity: self.integrity_check()?,
            ..Default::default()
        };
        if !rec.integrity_ok() {
            log::error!(
                "report index {} failed its integrity check: {}",
                self.index_path().display(),
                rec.integrity.join("; ")
            );
        }
        let mut changed: HashSet<ReportId> = HashSet::new();

        // 1. Reports a previous run left open: check their media byte for byte (they are the
        //    ones a crash can have touched), then mark them cut off.
        let open =
            self.report_ids("SELECT id FROM reports WHERE status = 'open' ORDER BY created_ms")?;
        for id in &open {
            let problems = self.check_media(Some(id), true)?;
            self.drop_damaged(id, &problems, None)?;
            rec.media_fixed.extend(problems);
            self.conn
                .execute(
                    "UPDATE reports SET status = 'incomplete', reason = ?2 WHERE id = ?1",
                    params![id.as_str(), CUT_OFF_REASON],
                )
                .map_err(self.db_err("marking a report cut off"))?;
            log::warn!("report {id}: {CUT_OFF_REASON}; marked incomplete");
            changed.insert(id.clone());
        }
        rec.cut_off = open;

        // 2. Every other report: the file is there with its size (a full hash of months of
        //    media on every start would cost minutes on an SD card).
        let problems = self.check_media(None, false)?;
        let mut by_report: BTreeMap<ReportId, Vec<MediaProblem>> = BTreeMap::new();
        for p in problems {
            by_report.entry(p.report.clone()).or_default().push(p);
        }
        for (id, problems) in by_report {
            let reason = format!(
                "damaged: {} segment(s) lost their media file",
                problems.len()
            );
            self.drop_damaged(&id, &problems, Some(&reason))?;
            rec.media_fixed.extend(problems);
            changed.insert(id);
        }
        for p in &rec.media_fixed {
            log::warn!(
                "report {}: segment {} media {}: {}; row removed",
                p.report,
                p.index,
                p.path,
                p.problem
            );
        }

        // 3. Media files the index does not know, and temp files of interrupted writes.
        let known: HashSet<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT path FROM media")
                .map_err(self.db_err("listing media"))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(self.db_err("listing media"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(self.db_err("listing media"))?
        };
        // Only through handles that never follow a link (crate::sys::tree), and only files
        // whose names the store generates: anything else in its directories is left alone.
        let root = Tree::open(&self.dir, false)?;
        let media_stats =
            root.sub(layout::MEDIA_DIR, true)?
                .walk(layout::MEDIA_DIR, &mut |rel, _| {
                    let name = rel.rsplit('/').next().unwrap_or(rel);
                    if name.starts_with(TEMP_PREFIX) {
                        rec.temp_removed.push(rel.to_string());
                        Action::Remove
                    } else if known.contains(rel) {
                        Action::Keep
                    } else if layout::is_media_path(rel) {
                        rec.orphans_removed.push(rel.to_string());
                        Action::Remove
                    } else {
                        rec.foreign_kept.push(rel.to_string());
                        Action::Keep
                    }
                })?;
        rec.foreign_kept.extend(media_stats.foreign);

        // The store's own top-level files (the reserve) are written the same way.
        let root_temps = fs::read_dir(&self.dir)
            .map_err(|source| ReportError::Io {
                op: "listing",
                path: self.dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(TEMP_PREFIX));
        for name in root_temps {
            if root.remove_file(&name).unwrap_or(false) {
                rec.temp_removed.push(name);
            }
        }

        // 4. Pages of reports no longer in the index, temp pages; count what stays.
        let ids: HashSet<ReportId> = self
            .report_ids("SELECT id FROM reports")?
            .into_iter()
            .collect();
        let mut with_page: HashSet<ReportId> = HashSet::new();
        let mut html_bytes = 0;
        let html_stats =
            root.sub(layout::HTML_DIR, true)?
                .walk(layout::HTML_DIR, &mut |rel, size| {
                    let name = rel.rsplit('/').next().unwrap_or(rel);
                    if name.starts_with(TEMP_PREFIX) {
                        rec.temp_removed.push(rel.to_string());
                        return Action::Remove;
                    }
                    if rel == layout::INDEX_PAGE {
                        html_bytes += size;
                        return Action::Keep;
                    }
                    match layout::id_of_page(rel) {
                        Some(id) if ids.contains(&id) => {
                            html_bytes += size;
                            with_page.insert(id);
                            Action::Keep
                        }
                        Some(_) => {
                            rec.orphans_removed.push(rel.to_string());
                            Action::Remove
                        }
                        None => {
                            rec.foreign_kept.push(rel.to_string());
                            Action::Keep
                        }
                    }
                })?;
        rec.foreign_kept.extend(html_stats.foreign);
        if !rec.foreign_kept.is_empty() {
            log::warn!(
                "store {}: left alone {} file(s) it did not write (the store deletes only its own): {}",
                self.dir.display(),
                rec.foreign_kept.len(),
                rec.foreign_kept.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            );
        }
        for rel in rec.orphans_removed.iter().chain(&rec.temp_removed) {
            log::info!("store {}: removed leftover {rel}", self.dir.display());
        }

        self.media_bytes = self.sum_media_bytes()?;
        self.html_bytes = html_bytes;

        // 5. Pages: every report that changed or has none (a crash between finish and the page).
        let mut stale: Vec<ReportId> = ids
            .iter()
            .filter(|id| changed.contains(*id) || !with_page.contains(*id))
            .cloned()
            .collect();
        stale.sort();
        for id in &stale {
            if self.write_page_logged(id) {
                rec.pages_written += 1;
            }
        }
        // Once per start: evictions since the last close may have left it listing dead links.
        self.write_index_page_logged();
        self.recovery = rec;
        Ok(())
    }

    pub(super) fn report_ids(&self, sql: &str) -> Result<Vec<ReportId>> {
        let mut stmt = self
            .conn
            .prepare(sql)
            .map_err(self.db_err("listing reports"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.db_err("listing reports"))?;
        let mut out = Vec::new();
        for raw in rows {
            let raw = raw.map_err(self.db_err("listing reports"))?;
            out.push(ReportId::parse(&raw)?);
        }
        Ok(out)
    }

    /// Media rows whose file is missing or has the wrong size (and, with `hash`, wrong content),
    /// for one report or all.
    pub(super) fn check_media(
        &self,
        report: Option<&ReportId>,
        hash: bool,
    ) -> Result<Vec<MediaProblem>> {
        let mut stmt = self
            .conn
            .prepare("SELECT report_id, seq, path, bytes, sha256 FROM media WHERE ?1 IS NULL OR report_id = ?1")
            .map_err(self.db_err("listing media"))?;
        let rows = stmt
            .query_map([report.map(ReportId::as_str)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(self.db_err("listing media"))?;
        let mut problems = Vec::new();
        for row in rows {
            let (id, index, path, bytes, sha) = row.map_err(self.db_err("listing media"))?;
            let full = self.dir.join(&path);
            let problem = match fs::metadata(&full) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Some("missing".to_string()),
                Err(e) => Some(format!("unreadable: {e}")),
                Ok(m) if m.len() != bytes as u64 => {
                    Some(format!("{} bytes, expected {bytes}", m.len()))
                }
                Ok(_) if hash => match fs::read(&full) {
                    Ok(data) if media::sha256_hex(&data) == sha => None,
                    Ok(_) => Some("content does not match its sha256".to_string()),
                    Err(e) => Some(format!("unreadable: {e}")),
                },
                Ok(_) => None,
            };
            if let Some(problem) = problem {
                problems.push(MediaProblem {
                    report: ReportId::parse(&id)?,
                    index,
                    path,
                    problem,
                });
            }
        }
        Ok(problems)
    }

    /// Removes the segments whose media is damaged (rows and whatever file is left), keeping the
    /// report's byte count right; with `reason`, marks the report incomplete.
    pub(super) fn drop_damaged(
        &mut self,
        id: &ReportId,
        problems: &[MediaProblem],
        reason: Option<&str>,
    ) -> Result<()> {
        if problems.is_empty() {
            return Ok(());
        }
        let path = self.index_path();
        let err = |source| ReportError::Index {
            path: path.clone(),
            op: "removing damaged segments",
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        for p in problems {
            tx.execute(
                "DELETE FROM segments WHERE report_id = ?1 AND seq = ?2",
                params![id.as_str(), p.index],
            )
            .map_err(err)?;
        }
        tx.execute(
            "UPDATE reports SET media_bytes = (SELECT COALESCE(SUM(bytes), 0) FROM media WHERE report_id = ?1)
             WHERE id = ?1",
            [id.as_str()],
        )
        .map_err(err)?;
        if let Some(reason) = reason {
            tx.execute(
                "UPDATE reports SET status = 'incomplete',
                    reason = CASE WHEN reason IS NULL THEN ?2 ELSE reason || '; ' || ?2 END
                 WHERE id = ?1",
                params![id.as_str(), reason],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        let root = Tree::open(&self.dir, false)?;
        for p in problems.iter().filter(|p| layout::is_media_path(&p.path)) {
            let _ = root.remove_file(&p.path);
        }
        Ok(())
    }
}
