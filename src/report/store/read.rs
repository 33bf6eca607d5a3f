//! Reading the index back: whole reports, listings, usage.

use rusqlite::{params, OptionalExtension};

use super::{ts, Inner, ListFilter, ReportSummary, Usage};
use crate::report::{
    durable, media, AudioSegment, ImageSegment, MediaRef, RegionSegment, Report, ReportError,
    ReportId, ReportMeta, ReportStats, ReportStatus, Result, Segment, TextSegment,
};

impl Inner {
    pub(super) fn get(&self, id: &ReportId) -> Result<Report> {
        let head = self
            .conn
            .query_row(
                "SELECT created_ms, finished_ms, status, reason, meta_json, stats_json, unknown_citations
                 FROM reports WHERE id = ?1",
                [id.as_str()],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, u32>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(self.db_err("reading a report"))?;
        let Some((created_ms, finished_ms, status, reason, meta_json, stats_json, unknown)) = head
        else {
            return Err(ReportError::NotFound {
                id: id.clone(),
                store: self.dir.clone(),
            });
        };
        let bad = |why: String| ReportError::BadRow {
            id: id.clone(),
            index: 0,
            path: self.index_path(),
            why,
        };
        let meta: ReportMeta =
            serde_json::from_str(&meta_json).map_err(|e| bad(format!("meta_json: {e}")))?;
        let stats: Option<ReportStats> = match stats_json {
            Some(s) => Some(serde_json::from_str(&s).map_err(|e| bad(format!("stats_json: {e}")))?),
            None => None,
        };
        let status = match status.as_str() {
            "open" => ReportStatus::Open,
            "complete" => ReportStatus::Complete,
            _ => ReportStatus::Incomplete {
                reason: reason.unwrap_or_else(|| "unknown".into()),
            },
        };
        Ok(Report {
            id: id.clone(),
            created_at: ts(created_ms),
            finished_at: finished_ms.map(ts),
            status,
            meta,
            stats,
            unknown_citations: unknown,
            segments: self.segments(id)?,
        })
    }

    pub(super) fn segments(&self, id: &ReportId) -> Result<Vec<Segment>> {
        // An index of version 1 or 2 (read beside the daemon that keeps it) has no region columns.
        let region_columns = if self.old_segments {
            "NULL, NULL"
        } else {
            "s.box, s.of_seq"
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT s.seq, s.kind, s.text, s.source, s.at_ms, s.token_start, s.token_end, s.time_ms,
                        s.frame_seq, s.width, s.height, s.sample_rate, s.samples, m.path, m.bytes, m.sha256,
                        {region_columns}
                 FROM segments s LEFT JOIN media m ON m.report_id = s.report_id AND m.seq = s.seq
                 WHERE s.report_id = ?1 ORDER BY s.seq"
            ))
            .map_err(self.db_err("reading segments"))?;
        let mut rows = stmt
            .query([id.as_str()])
            .map_err(self.db_err("reading segments"))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(self.db_err("reading segments"))? {
            let index: u32 = r.get(0).map_err(self.db_err("reading segments"))?;
            let segment = row_to_segment(r, index).map_err(|why| ReportError::BadRow {
                id: id.clone(),
                index,
                path: self.index_path(),
                why,
            })?;
            out.push(segment);
        }
        Ok(out)
    }

    pub(super) fn list(&self, filter: &ListFilter) -> Result<Vec<ReportSummary>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.id, r.created_ms, r.trigger, r.status, r.reason, r.media_bytes,
                        (SELECT COUNT(*) FROM segments s WHERE s.report_id = r.id),
                        (SELECT text FROM segments s WHERE s.report_id = r.id AND s.kind = 'text'
                         ORDER BY s.seq LIMIT 1),
                        (SELECT m.seq || ' ' || m.path FROM segments s JOIN media m
                           ON m.report_id = s.report_id AND m.seq = s.seq
                         WHERE s.report_id = r.id AND s.kind = 'image' ORDER BY s.seq LIMIT 1)
                 FROM reports r
                 WHERE (?1 IS NULL OR r.trigger = ?1 OR substr(r.trigger, 1, length(?1) + 1) = ?1 || ':')
                   AND (?2 IS NULL OR r.status = ?2)
                   AND (?4 IS NULL OR r.created_ms >= ?4)
                   AND (?5 IS NULL OR r.created_ms < ?5)
                   AND (?6 IS NULL OR EXISTS (SELECT 1 FROM json_each(r.meta_json, '$.cameras') c WHERE c.value = ?6))
                   AND (?7 IS NULL OR r.created_ms < ?7 OR (r.created_ms = ?7 AND r.id < ?8))
                 ORDER BY r.created_ms DESC, r.id DESC
                 LIMIT ?3",
            )
            .map_err(self.db_err("listing reports"))?;
        let limit = filter.limit.map_or(-1, |l| l as i64);
        let rows = stmt
            .query_map(
                params![
                    filter.trigger,
                    filter.status,
                    limit,
                    filter.since.map(|t| t.as_millisecond()),
                    filter.until.map(|t| t.as_millisecond()),
                    filter.camera,
                    filter.after.as_ref().map(|(t, _)| t.as_millisecond()),
                    filter.after.as_ref().map(|(_, id)| id.as_str()),
                ],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, u32>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, Option<String>>(8)?,
                    ))
                },
            )
            .map_err(self.db_err("listing reports"))?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                created_ms,
                trigger,
                status,
                reason,
                media_bytes,
                segments,
                first_sentence,
                image,
            ) = row.map_err(self.db_err("listing reports"))?;
            let (first_image, first_image_path) =
                match image.as_deref().and_then(|i| i.split_once(' ')) {
                    Some((n, p)) => (n.parse().ok(), Some(p.to_string())),
                    None => (None, None),
                };
            let status = match status.as_str() {
                "open" => ReportStatus::Open,
                "complete" => ReportStatus::Complete,
                _ => ReportStatus::Incomplete {
                    reason: reason.unwrap_or_default(),
                },
            };
            out.push(ReportSummary {
                id: ReportId::parse(&id)?,
                created_at: ts(created_ms),
                trigger,
                status,
                segments,
                first_sentence,
                media_bytes: media_bytes as u64,
                first_image,
                first_image_path,
            });
        }
        Ok(out)
    }

    pub(super) fn usage(&self) -> Result<Usage> {
        let (reports, open_reports, segments): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM reports), (SELECT COUNT(*) FROM reports WHERE status = 'open'),
                        (SELECT COUNT(*) FROM segments)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(self.db_err("measuring usage"))?;
        let index_bytes = self.index_bytes();
        Ok(Usage {
            reports: reports as u64,
            open_reports: open_reports as u64,
            segments: segments as u64,
            media_bytes: self.media_bytes,
            html_bytes: self.html_bytes,
            index_bytes,
            total_bytes: self.media_bytes + self.html_bytes + index_bytes,
            max_bytes: self.policy.max_bytes,
            fs_free_bytes: durable::free_bytes(&self.dir).ok(),
        })
    }
}

fn row_to_segment(r: &rusqlite::Row<'_>, index: u32) -> std::result::Result<Segment, String> {
    pub(super) fn col<T: rusqlite::types::FromSql>(
        r: &rusqlite::Row<'_>,
        i: usize,
        name: &str,
    ) -> std::result::Result<T, String> {
        r.get::<_, Option<T>>(i)
            .map_err(|e| format!("{name}: {e}"))?
            .ok_or_else(|| format!("{name} is missing"))
    }
    pub(super) fn opt<T: rusqlite::types::FromSql>(
        r: &rusqlite::Row<'_>,
        i: usize,
        name: &str,
    ) -> std::result::Result<Option<T>, String> {
        r.get::<_, Option<T>>(i).map_err(|e| format!("{name}: {e}"))
    }
    let media = || -> std::result::Result<MediaRef, String> {
        Ok(MediaRef {
            path: col(r, 13, "media path")?,
            bytes: col::<i64>(r, 14, "media bytes")? as u64,
            sha256: col(r, 15, "media sha256")?,
        })
    };
    let kind: String = col(r, 1, "kind")?;
    Ok(match kind.as_str() {
        "image" => Segment::Image(ImageSegment {
            index,
            camera: col(r, 3, "source")?,
            frame_seq: col::<i64>(r, 8, "frame_seq")? as u64,
            captured_at: ts(col(r, 7, "time_ms")?),
            width: col(r, 9, "width")?,
            height: col(r, 10, "height")?,
            media: media()?,
        }),
        "text" => {
            let span = match (
                opt::<i64>(r, 5, "token_start")?,
                opt::<i64>(r, 6, "token_end")?,
            ) {
                (Some(a), Some(b)) => Some((a as usize, b as usize)),
                _ => None,
            };
            Segment::Text(TextSegment {
                index,
                text: col(r, 2, "text")?,
                at: std::time::Duration::from_nanos(
                    (col::<f64>(r, 4, "at_ms")?.max(0.0) * 1e6).round() as u64,
                ),
                token_span: span,
            })
        }
        "audio" => {
            let rate: u32 = col(r, 11, "sample_rate")?;
            let samples: i64 = col(r, 12, "samples")?;
            Segment::Audio(AudioSegment {
                index,
                source: col(r, 3, "source")?,
                started_at: ts(col(r, 7, "time_ms")?),
                sample_rate: rate,
                duration: media::samples_duration(samples.max(0) as u64, rate),
                transcript: opt(r, 2, "text")?,
                media: media()?,
            })
        }
        "region" => {
            let raw: String = col(r, 16, "box")?;
            let bbox = crate::report::cite::parse_box(&raw)
                .map_err(|why| format!("box {raw:?}: {why}"))?;
            Segment::Region(RegionSegment {
                index,
                camera: col(r, 3, "source")?,
                frame_index: col(r, 17, "of_seq")?,
                frame_seq: col::<i64>(r, 8, "frame_seq")? as u64,
                bbox,
                width: col(r, 9, "width")?,
                height: col(r, 10, "height")?,
                media: media()?,
            })
        }
        other => return Err(format!("unknown kind {other:?}")),
    })
}
