//! Retention inside the store: the byte budget before each write, the age limit, eviction
//! (rows first, files after), and the full disk — with the index reserve that lets SQLite record
//! an eviction when nothing else fits. The order of victims is [`retention::plan`]'s.

use std::fs;
use std::io;
use std::path::PathBuf;

use jiff::Timestamp;

use super::{
    is_db_full, Eviction, Inner, BUDGET_MARGIN, DISK_FULL_HEADROOM, EVICTION_BATCH, RESERVE_BYTES,
};
use crate::report::layout;
use crate::report::retention::{self, Candidate};
use crate::report::{durable, ReportError, ReportId, Result};
use crate::sys::tree::Tree;

impl Inner {
    /// Turns a failed file write into DiskFull (after evicting) or Io.
    pub(super) fn io_failure(
        &mut self,
        e: io::Error,
        op: &'static str,
        path: PathBuf,
        needed: u64,
    ) -> ReportError {
        if durable::is_disk_full(&e) {
            self.disk_full(path, needed)
        } else {
            ReportError::Io {
                op,
                path,
                source: e,
            }
        }
    }

    /// Turns a failed index write into DiskFull (after evicting) or Index.
    pub(super) fn db_failure(
        &mut self,
        e: rusqlite::Error,
        op: &'static str,
        path: PathBuf,
        needed: u64,
    ) -> ReportError {
        if is_db_full(&e) {
            self.disk_full(path, needed)
        } else {
            ReportError::Index {
                path: self.index_path(),
                op,
                source: e,
            }
        }
    }

    /// The disk is full: evict the oldest finished reports until the file system has room for
    /// the write plus headroom (or nothing is left), and say so.
    pub(super) fn disk_full(&mut self, path: PathBuf, needed: u64) -> ReportError {
        let mut total = Eviction::default();
        self.release_reserve();
        // Admission as in `make_room`: aim for the floor only where evicting can reach it, and
        // evict nothing when even an empty store could not take the write.
        let free = durable::free_bytes(&self.dir).unwrap_or(0);
        let reclaimable = self.reclaimable_bytes().unwrap_or(0);
        let bare = needed + DISK_FULL_HEADROOM + RESERVE_BYTES;
        let with_floor =
            needed + self.policy.min_free_bytes.max(DISK_FULL_HEADROOM) + RESERVE_BYTES;
        let target = if free + reclaimable >= with_floor {
            with_floor
        } else {
            bare
        };
        if free + reclaimable < needed {
            log::warn!(
                "store {}: disk full writing {} ({needed} bytes): more than evicting every \
                 finished report could free ({} bytes); nothing evicted",
                self.dir.display(),
                path.display(),
                free + reclaimable
            );
            return ReportError::DiskFull {
                path,
                needed,
                evicted: 0,
                freed: 0,
            };
        }
        loop {
            let free = durable::free_bytes(&self.dir).unwrap_or(0);
            if free >= target {
                break;
            }
            match self.evict(Timestamp::now(), None, target - free) {
                Ok(ev) if ev.evicted.is_empty() => break,
                Ok(ev) => {
                    total.freed_bytes += ev.freed_bytes;
                    total.evicted.extend(ev.evicted);
                }
                Err(e) => {
                    log::error!(
                        "store {}: evicting on a full disk failed: {e}",
                        self.dir.display()
                    );
                    break;
                }
            }
        }
        // Hold the reserve again only if that leaves room for the write being retried.
        if durable::free_bytes(&self.dir).unwrap_or(0) >= target {
            self.take_reserve();
        }
        log::warn!(
            "store {}: disk full writing {}; evicted {} report(s), {} bytes",
            self.dir.display(),
            path.display(),
            total.evicted.len(),
            total.freed_bytes
        );
        ReportError::DiskFull {
            path,
            needed,
            evicted: total.evicted.len(),
            freed: total.freed_bytes,
        }
    }

    pub(super) fn reserve_path(&self) -> PathBuf {
        self.dir.join(layout::RESERVE_FILE)
    }

    /// Makes sure the reserve file holds its space (best effort: on a disk already full it stays
    /// missing until evictions make room).
    pub(super) fn take_reserve(&mut self) {
        let path = self.reserve_path();
        if fs::metadata(&path).is_ok_and(|m| m.len() == RESERVE_BYTES) {
            return;
        }
        // Real zeros, not a sparse file: the point is that the blocks are allocated.
        if let Err(e) = crate::sys::fs::write_atomic(&path, &vec![0u8; RESERVE_BYTES as usize]) {
            self.warn_once(
                "reserve",
                format!(
                    "store {}: holding {RESERVE_BYTES} bytes in {} failed: {e}",
                    self.dir.display(),
                    path.display()
                ),
            );
        }
    }

    pub(super) fn release_reserve(&mut self) {
        match fs::remove_file(self.reserve_path()) {
            Ok(()) => log::info!(
                "store {}: disk full, released the index reserve",
                self.dir.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "store {}: releasing the reserve failed: {e}",
                self.dir.display()
            ),
        }
    }

    pub(super) fn index_bytes(&self) -> u64 {
        let size = |suffix: &str| {
            fs::metadata(self.dir.join(format!("{}{suffix}", layout::INDEX_FILE)))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        size("")
            + size("-wal")
            + fs::metadata(self.reserve_path())
                .map(|m| m.len())
                .unwrap_or(0)
    }

    pub(super) fn total_bytes(&self) -> u64 {
        self.media_bytes + self.html_bytes + self.index_bytes()
    }

    /// What evicting every finished report would give back: their media and pages. Open
    /// reports and the index stay whatever happens.
    pub(super) fn reclaimable_bytes(&self) -> Result<u64> {
        let media: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(SUM(media_bytes), 0) FROM reports WHERE status != 'open'",
                [],
                |r| r.get(0),
            )
            .map_err(self.db_err("summing finished reports"))?;
        let index_page = fs::metadata(self.dir.join(layout::INDEX_PAGE)).map_or(0, |m| m.len());
        Ok(media as u64 + self.html_bytes.saturating_sub(index_page))
    }

    /// Before writing `needed` bytes. Admission first: a write that could not fit even with every
    /// finished report evicted — over the byte budget, or over the file system's free space — is
    /// refused ([`ReportError::TooLarge`]) and nothing is evicted. Otherwise eviction frees what
    /// the write will use: the byte budget's deficit (with [`BUDGET_MARGIN`] for the index's own
    /// growth where old reports can give it), and the free-space floor's deficit where evicting
    /// can reach the floor at all (the floor is soft: when it cannot be met, the write is still
    /// tried if it fits).
    pub(super) fn make_room(&mut self, id: &ReportId, needed: u64) -> Result<()> {
        let reclaimable = self.reclaimable_bytes()?;
        if let Some(max) = self.policy.max_bytes {
            let fixed = self.total_bytes().saturating_sub(reclaimable);
            if fixed + needed > max {
                return Err(ReportError::TooLarge {
                    id: id.clone(),
                    store: self.dir.clone(),
                    needed,
                    room: max.saturating_sub(fixed),
                    limit: "the store's byte budget (store.max_bytes)",
                });
            }
        }
        let free = durable::free_bytes(&self.dir).ok();
        if let Some(free) = free {
            if needed > free + reclaimable {
                return Err(ReportError::TooLarge {
                    id: id.clone(),
                    store: self.dir.clone(),
                    needed,
                    room: free + reclaimable,
                    limit: "the file system's free space",
                });
            }
        }
        let floor_reachable =
            free.is_some_and(|free| free + reclaimable >= needed + self.policy.min_free_bytes);
        // Evicting writes to the index too (its WAL can grow while it fills up to its working
        // size), so check again after each round rather than trusting the sizes freed.
        loop {
            let mut deficit = 0;
            if let Some(max) = self.policy.max_bytes {
                deficit = (self.total_bytes() + needed + BUDGET_MARGIN).saturating_sub(max);
            }
            // A write that does not fit the disk at all is left to fail and go through
            // `disk_full`, which gives up the index reserve first so the eviction can be
            // recorded.
            if floor_reachable && self.policy.min_free_bytes > 0 {
                if let Ok(free) = durable::free_bytes(&self.dir) {
                    deficit =
                        deficit.max((needed + self.policy.min_free_bytes).saturating_sub(free));
                }
            }
            if deficit == 0
                || self
                    .evict(Timestamp::now(), None, deficit)?
                    .evicted
                    .is_empty()
            {
                break;
            }
        }
        if let Some(max) = self.policy.max_bytes {
            if self.total_bytes() + needed > max {
                return Err(ReportError::QuotaExceeded {
                    id: id.clone(),
                    store: self.dir.clone(),
                    needed,
                    quota: max,
                });
            }
        }
        Ok(())
    }

    pub(super) fn enforce_retention(&mut self) -> Result<Eviction> {
        let deficit = self
            .policy
            .max_bytes
            .map_or(0, |max| self.total_bytes().saturating_sub(max));
        let eviction = self.evict(Timestamp::now(), self.policy.max_age, deficit)?;
        if !eviction.evicted.is_empty() {
            self.write_index_page_logged();
        }
        // A reserve given up on a full disk is taken back once there is room for it.
        if !self.reserve_path().exists()
            && durable::free_bytes(&self.dir).unwrap_or(0) >= RESERVE_BYTES + DISK_FULL_HEADROOM
        {
            self.take_reserve();
        }
        Ok(eviction)
    }

    /// Evicts per [`retention::plan`], in batches of the oldest finished reports.
    pub(super) fn evict(
        &mut self,
        now: Timestamp,
        max_age: Option<std::time::Duration>,
        need: u64,
    ) -> Result<Eviction> {
        let mut out = Eviction::default();
        loop {
            let batch = self.oldest_finished(EVICTION_BATCH)?;
            let plan: Vec<ReportId> = retention::plan(
                &batch,
                now.as_millisecond(),
                max_age,
                need.saturating_sub(out.freed_bytes),
            )
            .into_iter()
            .map(|c| c.id.clone())
            .collect();
            for id in &plan {
                let freed = self.evict_one(id)?;
                out.freed_bytes += freed;
                self.evicted.reports += 1;
                self.evicted.bytes += freed;
            }
            let done = plan.len() < batch.len() || batch.is_empty();
            out.evicted.extend(plan);
            if done {
                break;
            }
        }
        // The index page is not rewritten here, per eviction: the report being written rewrites
        // it when it closes, the timer's `enforce_retention` and recovery do too.
        Ok(out)
    }

    pub(super) fn oldest_finished(&self, limit: usize) -> Result<Vec<Candidate>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, created_ms, media_bytes FROM reports WHERE status != 'open'
                 ORDER BY created_ms, id LIMIT ?1",
            )
            .map_err(self.db_err("listing old reports"))?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(self.db_err("listing old reports"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, created_ms, media_bytes) = row.map_err(self.db_err("listing old reports"))?;
            let id = ReportId::parse(&id)?;
            let page = fs::metadata(self.dir.join(layout::page_path(&id)))
                .map(|m| m.len())
                .unwrap_or(0);
            out.push(Candidate {
                id,
                created_ms,
                bytes: media_bytes as u64 + page,
                open: false,
            });
        }
        Ok(out)
    }

    /// Removes one report: rows first (one transaction), then its files. Returns bytes freed.
    pub(super) fn evict_one(&mut self, id: &ReportId) -> Result<u64> {
        let media_bytes: i64 = self
            .conn
            .query_row(
                "SELECT media_bytes FROM reports WHERE id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .map_err(self.db_err("evicting a report"))?;
        self.drop_report_messages(id)?;
        // On a full disk this delete has room in the WAL because `disk_full` released the
        // reserve first.
        self.conn
            .execute("DELETE FROM reports WHERE id = ?1", [id.as_str()])
            .map_err(self.db_err("evicting a report"))?;
        let page_rel = layout::page_path(id);
        let page = self.dir.join(&page_rel);
        let page_bytes = fs::metadata(&page).map(|m| m.len()).unwrap_or(0);
        // From here on nothing points at the files; if removing them fails or we die, recovery
        // sweeps them as orphans.
        // Through handles that never follow a link (crate::sys::tree), at generated paths only.
        // Each tree's own directory stays; its emptied date directories go.
        let removed = Tree::open(&self.dir, false).and_then(|root| {
            let media = root.sub(layout::MEDIA_DIR, false)?;
            media.remove_tree(below(&layout::media_dir(id), layout::MEDIA_DIR))?;
            let html = root.sub(layout::HTML_DIR, false)?;
            let page_below = below(&page_rel, layout::HTML_DIR);
            if html.remove_file(page_below)? {
                html.remove_empty_parents_of(page_below);
            }
            Ok(())
        });
        if let Err(e) = removed {
            self.warn_once(
                "media removal",
                format!("report {id}: removing its files failed: {e}"),
            );
        }
        self.media_bytes = self.media_bytes.saturating_sub(media_bytes as u64);
        self.html_bytes = self.html_bytes.saturating_sub(page_bytes);
        log::info!(
            "report {id}: evicted by retention ({} bytes)",
            media_bytes as u64 + page_bytes
        );
        Ok(media_bytes as u64 + page_bytes)
    }
}

/// `rel` (a store path) below its top directory `top` (`media/2026/…` → `2026/…`).
fn below<'a>(rel: &'a str, top: &str) -> &'a str {
    rel.strip_prefix(top)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(rel)
}
